"""Explanation robustness (explanations package): `val/expl_*@eps` each check and the report's `explanations`
section with `test/expl_*@eps`; off unless asked."""
from __future__ import annotations

import torch

from attacks.threat_model import epsilon_label, parse_epsilon
from core.checks import positive_int
from core.errors import ConfigError
from datamodules.info import MULTILABEL
from datamodules.tensors import fixed_subset, to_unit_range
from evaluation.evaluators.base import EvaluationRun, EvaluatorBase
from evaluation.evaluators.settings import ExplanationSettings
from lightning_modules.metrics import metric_key

ATTACK = ("top-k (Ghorbani et al. 2019) on the softplus network (every ReLU -> Softplus(beta=10)); an example whose "
          "label the attack changed counts as a kept map")


class ExplanationEvaluator(EvaluatorBase):
    """The `method` map under the top-k attack and under random noise at each of `epsilons` (the adversarial
    norm): on `samples` fixed validation images each check, on `test_samples` test images in the report."""

    def __init__(self, settings: ExplanationSettings, norm: str, batch_size: int = 256, seed: int = 0):
        self.settings, self.norm, self.batch_size, self.seed = settings, norm, batch_size, seed
        positive_int("explanation_samples", settings.samples)
        if settings.test_samples is not None:
            positive_int("explanation_test_samples", settings.test_samples)
        positive_int("explanation_steps", settings.steps)
        positive_int("explanation_test_steps", settings.test_steps)
        try:
            self.epsilons = [parse_epsilon(e, norm) for e in settings.epsilons]
        except ConfigError as err:
            raise ConfigError(f"explanation_epsilons: {err}") from None
        k = settings.k
        if isinstance(k, bool) or not (isinstance(k, int) and k >= 1 or isinstance(k, float) and 0 < k < 1):
            raise ConfigError(f"explanation_k is a number of pixels (an integer >= 1) or a share of the image in "
                              f"(0, 1), got {k!r}")
        if self.enabled:
            from explanations import METHODS

            if settings.method not in METHODS:
                raise ConfigError(f"unknown explanation method {settings.method!r}: choose from {', '.join(METHODS)}")
            if not self.epsilons:
                raise ConfigError("explanation_epsilons is empty: give at least one radius, e.g. [4/255]")

    @property
    def enabled(self) -> bool:
        return self.settings.epoch or self.settings.report

    def _keys(self, stage: str) -> set[str]:
        from explanations import EXPLANATION_METRICS

        return {metric_key(stage, "expl", name, eps) for eps in self.epsilons for name in EXPLANATION_METRICS}

    def keys(self, dm) -> dict[str, set[str]]:
        return {"val": self._keys("val") if self.settings.epoch else set(),
                "test": self._keys("test") if self.settings.report else set()}

    def check(self, model, dm) -> None:
        """Explanation settings that depend on the model or the images fail before training."""
        if not self.enabled:
            return
        pixels = dm.size * dm.size
        k = self.settings.k
        if isinstance(k, int) and k > pixels:
            raise ConfigError(f"explanation_k {k} is larger than the image ({dm.size} x {dm.size} = {pixels} pixels): "
                              "give fewer pixels or a share in (0, 1)")
        if self.settings.method == "gradcam":
            from explanations import last_conv_layer

            last_conv_layer(model)  # ConfigError for a model without a convolutional layer

    def measures(self, model, images, steps: int) -> dict[float, dict[str, torch.Tensor]]:
        """{epsilon: {measure: per-example values}} on uint8 or [0, 1] images, in batches of `batch_size`: the
        explained class is the model's prediction (multi-label heads: the top-scoring label)."""
        from explanations import explanation_robustness

        device = next(model.parameters()).device
        out = {}
        for eps in self.epsilons:
            parts = []
            for start in range(0, len(images), self.batch_size):
                x = to_unit_range(images[start : start + self.batch_size].to(device))
                parts.append(explanation_robustness(model, x, None, eps, method=self.settings.method,
                                                    norm=self.norm, k=self.settings.k, steps=steps,
                                                    seed=self.seed, reduce=False,
                                                    multilabel=getattr(model, "task", None) == MULTILABEL))
            out[eps] = {name: torch.cat([p[name].detach().float().cpu() for p in parts]) for name in parts[0]}
        return out

    def epoch_metrics(self, run: EvaluationRun) -> dict[str, float]:
        if not self.settings.epoch:
            return {}
        split = run.dm.split("val")
        index = fixed_subset(len(split), self.settings.samples, self.seed)
        measured = self.measures(run.model, split.images[index], self.settings.steps)
        return {metric_key("val", "expl", name, eps): float(values.mean())
                for eps, per_eps in measured.items() for name, values in per_eps.items()}

    def report_section(self, run: EvaluationRun, report: dict) -> None:
        """The report's `explanations` section: means and per-example values per epsilon."""
        if not self.settings.report:
            return
        split = run.dm.split("test")
        index = fixed_subset(len(split), self.settings.test_samples, self.seed)
        measured = self.measures(run.model, split.images[index], self.settings.test_steps)
        section = {}
        for eps, per_eps in measured.items():
            means = {name: float(values.mean()) for name, values in per_eps.items()}
            for name, value in means.items():
                run.log(metric_key("test", "expl", name, eps), value)
            section[epsilon_label(eps)] = {
                **means, "epsilon": eps, "norm": self.norm, "method": self.settings.method, "k": self.settings.k,
                "steps": self.settings.test_steps, "n_examples": len(index), "attack": ATTACK,
                "per_example": {name: [round(float(v), 5) for v in values] for name, values in per_eps.items()},
            }
        report["explanations"] = section
