"""Corruption evaluators: MedMNIST-C each check and in the test report (evaluation.corruption owns the corrupted
sets), and the mean corruption error against a baseline model's report (evaluation.mce)."""
from __future__ import annotations

from typing import Any

from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from core.errors import ConfigError
from datamodules.medmnist_c import corruption_names
from evaluation.corruption import CorruptionEvaluation
from evaluation.corruption_scores import format_table
from evaluation.evaluators.base import EvaluationRun, EvaluatorBase, ScoredSet
from evaluation.evaluators.settings import CorruptionSettings
from lightning_modules.metrics import metric_key

TABLE_METRICS = ("bacc", "be", "rbe")


class CorruptionEvaluator(EvaluatorBase):
    """`val/corr_bacc` (and `@<corruption>`) each check (`epoch`); the report's `corruptions` table and
    `test/corr_{bacc,be,rbe}`, `test/clean_bacc@roundtrip` at test time (`report`, on rank zero)."""

    def __init__(self, settings: CorruptionSettings, seed: int = 0):
        self.settings, self.seed = settings, seed
        self.sets = CorruptionEvaluation(settings.corruptions, settings.severities, settings.val_samples,
                                         settings.cache, settings.workers, seed)

    @property
    def corruptions(self):
        """The chosen corruptions (None: all of the dataset's)."""
        return self.sets.corruptions

    def cache_spec(self) -> dict[str, Any]:
        """Where and how the report's corrupted test sets are cached (sweeps build them before the trials)."""
        return {"cache": self.sets.cache, "seed": self.sets.seed, "corruptions": self.sets.corruptions}

    def names(self, dm) -> list[str]:
        return self.corruptions or corruption_names(dm.flag)

    def keys(self, dm) -> dict[str, set[str]]:
        val, test = set(), set()
        if self.settings.epoch:
            val.add(metric_key("val", "corr", "bacc"))
            val.update(metric_key("val", "corr", "bacc", name) for name in self.names(dm))
        if self.settings.report:
            test.update(metric_key("test", "corr", metric) for metric in TABLE_METRICS)
            test.add(metric_key("test", "clean", "bacc", "roundtrip"))
        return {"val": val, "test": test}

    def scored_sets(self) -> dict[str, list[ScoredSet]]:
        return {"val": [("corr", None)] if self.settings.epoch else [],
                "test": [("corr", None)] if self.settings.report else []}

    def check(self, model, dm) -> None:
        if (self.settings.epoch or self.settings.report) and self.corruptions is not None:
            names = corruption_names(dm.flag)
            unknown = [name for name in self.corruptions if name not in names]
            if unknown:
                raise ConfigError(f"{dm.flag} has no MedMNIST-C corruption {', '.join(unknown)}: choose from "
                                  f"{', '.join(names)}")

    def epoch_metrics(self, run: EvaluationRun) -> dict[str, float]:
        """Its confidence measures (`val/corr_ece`, ...) come with it: evaluation.corruption pools the corrupted
        predictions of all corruptions in one meter."""
        if not self.settings.epoch:
            return {}
        return self.sets.epoch_metrics(run.model, run.dm, run.rank, run.world_size, run.scorer.confidence_bins)

    def report_section(self, run: EvaluationRun, report: dict) -> None:
        if not (self.settings.report and run.is_global_zero):
            return
        dm = run.dm
        table = self.sets.test_table(run.model, dm, run.scorer.confidence_bins)
        report["corruptions"] = table.to_dict()
        rank_zero_info(f"MedMNIST-C ({table.protocol}, {dm.flag} at {dm.size} px):\n{format_table(table)}")
        for metric, value in zip(TABLE_METRICS, (table.mean_bacc, table.mean_be, table.mean_rbe)):
            run.log(metric_key("test", "corr", metric), value)
        if table.roundtrip_bacc is not None:  # rBE's reference: clean images resampled like the corrupted
            run.log(metric_key("test", "clean", "bacc", "roundtrip"), table.roundtrip_bacc)


class BaselineComparison(EvaluatorBase):
    """The mean corruption error of this run's MedMNIST-C table against a baseline model's report or run folder
    (ImageNet-C's definition, evaluation.mce): the report's `corruptions.mce` and `test/corr_mce`."""

    def __init__(self, baseline: str, corruption: CorruptionEvaluator):
        if not corruption.settings.report:
            raise ConfigError("corruption_baseline needs corruption_report: true (mCE compares MedMNIST-C tables)")
        self.baseline, self.corruption = baseline, corruption

    def keys(self, dm) -> dict[str, set[str]]:
        return {"val": set(), "test": {metric_key("test", "corr", "mce")}}

    def check(self, model, dm) -> None:
        """A baseline that cannot serve fails before training: missing, another dataset or size, or lacking the
        corruptions this run scores (protocol and severities are compared with the test table)."""
        from evaluation.mce import load_report

        path, baseline = load_report(self.baseline, "corruption_baseline")
        table = baseline["corruptions"]
        if (table.get("flag"), table.get("size")) != (dm.flag, dm.size):
            raise ConfigError(f"corruption_baseline {path} is of {table.get('flag')} at {table.get('size')} px, this "
                              f"run of {dm.flag} at {dm.size} px")
        missing = [c for c in self.corruption.names(dm) if c not in table["bacc"]]
        if missing:
            raise ConfigError(f"corruption_baseline {path} has no scores for {', '.join(missing)}")

    def report_section(self, run: EvaluationRun, report: dict) -> None:
        """A baseline that turns out to differ in protocol or severities leaves the reason in the report instead of
        losing the report."""
        if "corruptions" not in report:
            return
        from evaluation.mce import load_report, mean_corruption_error

        try:
            path, baseline = load_report(self.baseline, "corruption_baseline")
            result = {**mean_corruption_error(report["corruptions"], baseline["corruptions"]), "baseline": str(path),
                      "baseline_checkpoint": baseline.get("checkpoint")}
        except ConfigError as err:
            rank_zero_warn(f"no mCE: {err}")
            report["corruptions"]["mce"] = {"error": str(err), "baseline": str(self.baseline)}
            return
        report["corruptions"]["mce"] = result
        run.log(metric_key("test", "corr", "mce"), result["mce"])
        rank_zero_info(f"mCE against {path}: {result['mce']:.3f}")
