"""Confidence and calibration of every set the other evaluators score (lightning_modules.calibration), from the
probabilities they already have: it adds no forward pass, it names and logs what the shared Scorer measured."""
from __future__ import annotations

from typing import Any, Sequence

from evaluation.evaluators.base import EvaluationRun, EvaluatorBase
from evaluation.evaluators.settings import ConfidenceSettings
from evaluation.record import ATTACK_KINDS
from lightning_modules.calibration import CONFIDENCE_METRICS
from lightning_modules.metrics import metric_key


class CalibrationEvaluator(EvaluatorBase):
    """`val/clean_ece@subset`, `val/adv_ece@eps`, `val/corr_ece`, `test/clean_ece`, `test/adv_ece@eps`,
    `test/aa_ece@eps`, `test/corr_ece`, ... (each measure of CONFIDENCE_METRICS) and the report's `confidence`."""

    def __init__(self, settings: ConfidenceSettings, scorers: Sequence[EvaluatorBase]):
        from core.checks import positive_int

        positive_int("confidence_bins", settings.bins)
        self.settings, self.scorers = settings, list(scorers)

    @property
    def bins(self):
        """The Scorer's confidence bins: None when confidence is off."""
        return self.settings.bins if self.settings.enabled else None

    def keys(self, dm) -> dict[str, set[str]]:
        if not self.settings.enabled:
            return {"val": set(), "test": set()}
        out: dict[str, set[str]] = {"val": set(), "test": set()}
        for evaluator in self.scorers:
            for stage, sets in evaluator.scored_sets().items():
                out[stage].update(metric_key(stage, kind, name, condition)
                                  for kind, condition in sets for name in CONFIDENCE_METRICS)
        return out

    def measures(self, stage: str, kind: str, scores: dict, condition: Any = None) -> dict[str, float]:
        """The confidence measures in `scores` under their metric keys ({} when confidence is off)."""
        if not self.settings.enabled:
            return {}
        return {metric_key(stage, kind, name, condition): scores[name] for name in CONFIDENCE_METRICS}

    def epoch_metrics(self, run: EvaluationRun) -> dict[str, float]:
        """Of the sets scored in this check (`run.scored`); the corrupted sets' come with the corruption metrics."""
        logged: dict[str, float] = {}
        for kind, condition, scores in run.scored:
            logged.update(self.measures("val", kind, scores, condition))
        return logged

    def report_section(self, run: EvaluationRun, report: dict) -> None:
        if not self.settings.enabled:
            return
        report["confidence"] = {"bins": self.settings.bins, "measures": list(CONFIDENCE_METRICS),
                                "definitions": "lightning_modules.calibration (top-label ECE by torchmetrics)"}
        logged = self.measures("test", "clean", report["clean"])
        for section, kind in ATTACK_KINDS.items():
            for scores in report[section].values():
                logged.update(self.measures("test", kind, scores, scores["epsilon"]))
        pooled = (report.get("corruptions") or {}).get("confidence") or {}
        if "all" in pooled:
            logged.update(self.measures("test", "corr", pooled["all"]))
        for key, value in logged.items():
            run.log(key, value)
