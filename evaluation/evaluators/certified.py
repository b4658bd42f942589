"""Certified robustness at test time: randomized smoothing's CERTIFY (attacks.smoothing) on a fixed, seeded test
subset, certified (balanced) accuracy at each radius, the abstention rate and each example's radius in the report."""
from __future__ import annotations

import time

from attacks.smoothing import Smooth, certified_metrics, check_settings
from core.checks import positive_int
from core.errors import ConfigError
from datamodules.info import MULTILABEL
from datamodules.tensors import fixed_subset, to_unit_range
from evaluation.evaluators.base import EvaluationRun, EvaluatorBase
from evaluation.evaluators.settings import CertifiedSettings
from lightning_modules.metrics import metric_key, radius_label

METRICS = {"bacc": "balanced_accuracy", "acc": "accuracy"}


class CertifiedEvaluator(EvaluatorBase):
    """`test/cert_{bacc,acc}@r0_5` per radius and `test/cert_abstain`, and the report's `certified` section, when
    `settings.enabled`. No per-epoch estimate: n noisy passes per image cost more than a training epoch on a
    validation subset of useful size (docs/certified.md)."""

    def __init__(self, settings: CertifiedSettings, seed: int = 0):
        self.settings, self.seed = settings, seed
        if not settings.enabled:
            return
        # sigma None is the model's noise_sigma, checked against the model in `check`; 1.0 stands in for it here
        check_settings(1.0 if settings.sigma is None else settings.sigma, settings.n0, settings.n, settings.alpha,
                       settings.radii)
        if settings.samples is not None:
            positive_int("certified samples", settings.samples)
        positive_int("certified batch_size", settings.batch_size)
        self.radii = tuple(float(r) for r in settings.radii)

    def keys(self, dm) -> dict[str, set[str]]:
        if not self.settings.enabled:
            return {"val": set(), "test": set()}
        test = {metric_key("test", "cert", metric, r) for r in self.radii for metric in METRICS}
        return {"val": set(), "test": test | {metric_key("test", "cert", "abstain")}}

    def sigma(self, model) -> float:
        """The smoothing noise: the setting, else the noise the model was trained with (noise_sigma)."""
        if self.settings.sigma is not None:
            return float(self.settings.sigma)
        sigma = float(getattr(model, "noise_sigma", 0.0) or 0.0)
        if sigma <= 0:
            raise ConfigError("certified.sigma is unset and the model was trained without noise (noise_sigma 0): "
                              "set certified.sigma or model noise_sigma > 0")
        return sigma

    def check(self, model, dm) -> None:
        if not self.settings.enabled:
            return
        if dm.task == MULTILABEL:
            raise ConfigError(f"certified robustness (randomized smoothing) needs a single-label head; {dm.flag} is "
                              "multi-label: set certified.enabled false")
        self.sigma(model)

    def report_section(self, run: EvaluationRun, report: dict) -> None:
        if not self.settings.enabled:
            return
        s, model, dm = self.settings, run.model, run.dm
        split = dm.split("test")
        index = fixed_subset(len(split), s.samples, self.seed)  # every rank certifies the same subset
        x = to_unit_range(split.images[index].to(run.device))
        labels = split.targets[index].reshape(len(index), -1)[:, 0].long()
        smooth = Smooth(model, dm.num_classes, self.sigma(model), batch_size=s.batch_size, seed=self.seed,
                        task=dm.task)
        started = time.time()
        certificate = smooth.certify(x, s.n0, s.n, s.alpha)
        seconds = time.time() - started
        scores = certified_metrics(labels, certificate.prediction, certificate.radius, self.radii,
                                   num_classes=dm.num_classes)
        report["certified"] = {
            "sigma": smooth.sigma, "n0": s.n0, "n": s.n, "alpha": s.alpha, "seed": self.seed,
            "n_examples": scores.examples, "abstention_rate": scores.abstention_rate,
            "radii": {radius_label(r): {"radius": r, "bacc": bacc, "acc": acc}
                      for r, bacc, acc in zip(scores.radii, scores.balanced_accuracy, scores.accuracy)},
            "seconds": round(seconds, 2), "seconds_per_image": round(seconds / scores.examples, 4),
            "per_example": {"index": index.tolist(), "label": labels.tolist(),
                            "prediction": certificate.prediction.tolist(), "radius": certificate.radius.tolist()},
        }
        for r, bacc, acc in zip(scores.radii, scores.balanced_accuracy, scores.accuracy):
            run.log(metric_key("test", "cert", "bacc", r), bacc)
            run.log(metric_key("test", "cert", "acc", r), acc)
        run.log(metric_key("test", "cert", "abstain"), scores.abstention_rate)
