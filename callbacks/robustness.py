"""Clean and adversarial accuracy every epoch, and a full robustness report at test time: the callback composes
the evaluators of evaluation.evaluators (adversarial, AutoAttack, corruption, baseline comparison, explanation,
calibration, certified), each with its own settings group and the keys it logs, sharing one scoring loop."""
from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from attacks.threat_model import epsilon_label
from core.checks import positive_int
from core.errors import ConfigError
from evaluation.evaluators import (
    AdversarialEvaluator, AdversarialSettings, AutoAttackEvaluator, AutoAttackSettings, BaselineComparison,
    CalibrationEvaluator, CertifiedEvaluator, CertifiedSettings, ConfidenceSettings, CorruptionEvaluator,
    CorruptionSettings, EvaluationRun, ExplanationEvaluator, ExplanationSettings, RobustnessSettings, Scorer, grouped,
)
from evaluation.layout import RunLayout, report_beside
from evaluation.record import ResultRecord, merge_record, with_provenance, write_record
from evaluation.reports import package_versions, timestamp

#: the DataModule settings a test report records: where the images came from and which of them were scored
REPORT_DATAMODULE = ("root", "as_rgb", "resize", "train_npz", "subsample_test", "subsample_seed")


class RobustnessCallback(Callback):
    """Logs `val/adv_bacc@4_255` (and accuracy) on a fixed, seeded validation subset every
    `every_n_epochs`; at test time attacks the whole test split with PGD (restarts) and AutoAttack,
    logs `test/adv_bacc@4_255` and `test/aa_bacc@4_255`, and writes a JSON report next to the
    checkpoint. Works inside Lightning's no-grad/inference-mode loops: attacks re-enable autograd.
    """

    def __init__(
        self,
        adversarial: AdversarialSettings = AdversarialSettings(),
        autoattack: AutoAttackSettings = AutoAttackSettings(),
        corruption: CorruptionSettings = CorruptionSettings(),
        explanation: ExplanationSettings = ExplanationSettings(),
        confidence: ConfidenceSettings = ConfidenceSettings(),
        certified: CertifiedSettings = CertifiedSettings(),
        every_n_epochs: int = 1,
        batch_size: int = 256,
        seed: int = 0,
        **flat,
    ):
        """
        Args:
            adversarial: PGD each check and at test time (epsilons, norm, val_samples, val_steps, test_steps,
                test_restarts); evaluation.evaluators.settings documents every group and holds the defaults.
            autoattack: AutoAttack at test time (enabled, version, attacks, samples, square_queries).
            corruption: MedMNIST-C each check and in the report (epoch, report, corruptions, severities,
                val_samples, cache, workers), and `baseline`: a report to compute the mCE against.
            explanation: explanation robustness (epoch, report, method, samples, epsilons, steps, k, test_samples,
                test_steps); off by default.
            confidence: confidence and calibration of every scored set (enabled, bins); no extra forward pass.
            certified: randomized smoothing's certified accuracy at test time (enabled, sigma, n0, n, alpha, radii,
                samples, batch_size); off by default.
            every_n_epochs, batch_size, seed: shared by every evaluator (seed fixes subsets and random starts).
            flat: the earlier flat keywords (`epsilons`, `autoattack_samples`, `corruption_baseline`, ...), mapped
                into their groups by `evaluation.evaluators.settings.LEGACY_KEYS` (deprecated).
        """
        super().__init__()
        init_args = dict(adversarial=adversarial, autoattack=autoattack, corruption=corruption,
                         explanation=explanation, confidence=confidence, certified=certified,
                         every_n_epochs=every_n_epochs,
                         batch_size=batch_size, seed=seed)
        self.configure(grouped({**init_args, **flat}))
        self.report: Optional[dict] = None
        self.report_path: Optional[Path] = None

    def configure(self, settings: RobustnessSettings) -> None:
        """Builds the evaluators from `settings` (bad values fail here in one line)."""
        self.settings = settings
        self.adversarial = AdversarialEvaluator(settings.adversarial, settings.seed)
        positive_int("every_n_epochs", settings.every_n_epochs)
        self.autoattack = AutoAttackEvaluator(settings.autoattack, self.adversarial, settings.seed)
        self.corruption = CorruptionEvaluator(settings.corruption, settings.seed)
        self.explanation = ExplanationEvaluator(settings.explanation, self.adversarial.norm, settings.batch_size,
                                                settings.seed)
        scoring = [self.adversarial, self.autoattack, self.corruption]
        self.calibration = CalibrationEvaluator(settings.confidence, scoring)
        self.baseline = (BaselineComparison(settings.corruption.baseline, self.corruption)
                         if settings.corruption.baseline is not None else None)
        self.certified = CertifiedEvaluator(settings.certified, settings.seed)
        self.evaluators = [*scoring, *([self.baseline] if self.baseline else []), self.explanation, self.certified,
                           self.calibration]
        self.scorer = Scorer(settings.batch_size, self.calibration.bins)

    def reconfigure(self, **changes) -> None:
        """The same callback with some settings changed, grouped or flat (`epsilons=[...]`, `val_samples=64`)."""
        current = {name: asdict(getattr(self.settings, name)) for name in ("adversarial", "autoattack", "corruption",
                                                                         "explanation", "confidence",
                                                                         "certified")}
        shared = {name: getattr(self.settings, name) for name in ("every_n_epochs", "batch_size", "seed")}
        self.configure(grouped({**current, **shared, **changes}, warn=False))

    @property
    def norm(self) -> str:
        return self.adversarial.norm

    @property
    def epsilons(self) -> list[float]:
        return self.adversarial.epsilons

    @property
    def seed(self) -> int:
        return self.settings.seed

    # ---- settings against the dataset, when the run starts -------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Settings that depend on the dataset fail here, before any training, not after it: unknown corruptions
        for the flag, or an AutoAttack list that no attack of can run on this head (multi-label heads use the
        PGD-BCE fallback, binary heads the adapted list: both recorded in the report)."""
        self.check_settings(pl_module, self._datamodule(trainer))

    def check_settings(self, pl_module, dm) -> None:
        """The settings checks that need the model and the DataModule, callable before the Trainer starts (train.py
        calls it before fit, so a bad setting writes nothing); `setup` repeats them for other callers."""
        for evaluator in self.evaluators:
            evaluator.check(pl_module, dm)

    def logged_keys(self, dm) -> dict[str, set[str]]:
        """{'val': keys, 'test': keys}: every metric this callback will log for the DataModule `dm` (the union of its
        evaluators' keys), so sweeps and studies can check objectives and constraints before any training."""
        out: dict[str, set[str]] = {"val": set(), "test": set()}
        for evaluator in self.evaluators:
            for stage, keys in evaluator.keys(dm).items():
                out[stage].update(keys)
        return out

    def _run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> EvaluationRun:
        return EvaluationRun(pl_module, self._datamodule(trainer), self.scorer, trainer.global_rank, trainer.world_size)

    # ---- per-epoch validation check ------------------------------------------------------------
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.settings.every_n_epochs:
            return
        run = self._run(trainer, pl_module)
        logged = {}
        with torch.inference_mode(False):
            for evaluator in self.evaluators:
                logged.update(evaluator.epoch_metrics(run))
        for key, value in logged.items():
            pl_module.log(key, value, prog_bar=key.startswith("val/adv_bacc"), rank_zero_only=True)

    # ---- test-time report ------------------------------------------------------------------------
    def report_header(self, run: EvaluationRun, checkpoint) -> dict:
        """What a test report says it scored: checkpoint, model, dataset, DataModule settings, threat model, seed and
        versions (the one copy: the callback's report and a benchmark entry both start from it)."""
        dm, model = run.dm, run.model
        return {
            "checkpoint": checkpoint,
            "model": {"class": type(model).__name__, "hparams": dict(model.hparams)},
            "dataset": {"flag": dm.flag, "size": dm.size, "task": dm.task, "split": "test",
                        "n_examples": len(dm.split("test"))},
            "datamodule": {k: dm.hparams[k] for k in REPORT_DATAMODULE},
            "threat_model": {"norm": self.norm, "epsilons": self.epsilons,
                             "epsilon_labels": [epsilon_label(e) for e in self.epsilons]},
            "seed": self.seed,
            "versions": package_versions(),
        }

    def score_report(self, run: EvaluationRun, report: dict) -> dict:
        """`report` with every evaluator's section added, and `seconds` (the scoring before calibration)."""
        started = time.time()
        with torch.inference_mode(False):
            for evaluator in self.evaluators:
                if evaluator is self.calibration:
                    report["seconds"] = round(time.time() - started, 1)
                evaluator.report_section(run, report)
        return report

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        run = self._run(trainer, pl_module)
        dm = run.dm
        report = self.score_report(run, {"created": timestamp(), **self.report_header(run, trainer.ckpt_path)})
        self.report = report
        if trainer.is_global_zero:
            path = self._report_path(trainer)
            record = with_provenance(ResultRecord.from_dict(report), data_verified=bool(dm.hparams.get("verify_md5")))
            record = merge_record(path, record)
            self.report_path = write_record(path, record)
            self.report = record.to_dict()
            rank_zero_info(f"robustness report: {self.report_path}")

    @staticmethod
    def _datamodule(trainer: L.Trainer):
        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "split"):
            raise ConfigError("RobustnessCallback needs the MedMNISTDataModule (it reads its in-memory splits)")
        return dm

    @staticmethod
    def _report_path(trainer: L.Trainer) -> Path:
        if trainer.ckpt_path:
            return report_beside(trainer.ckpt_path)
        return RunLayout(trainer.default_root_dir).default_report
