"""Task-aware metrics: balanced accuracy (the headline), accuracy and AUROC, from torchmetrics.

Balanced accuracy has one definition everywhere (training logs, callbacks, MedMNIST-C scores): sklearn's
`balanced_accuracy_score`, the mean recall over the classes PRESENT in the targets. torchmetrics' macro
MulticlassAccuracy would count a class that is predicted but absent from the targets as recall 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassStatScores,
    MultilabelAccuracy,
    MultilabelAUROC,
    MultilabelStatScores,
)

from attacks.threat_model import epsilon_label, parse_epsilon
from core.errors import ConfigError
from datamodules.info import BINARY, MULTILABEL


def _present_class_mean(recalls: torch.Tensor, present: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Mean of `recalls` over the entries where `present` (classes seen in the targets); NaN if none was seen."""
    present = present.to(recalls.dtype)
    return (recalls.nan_to_num(0.0) * present).sum(dim) / present.sum(dim)


class BalancedAccuracy(MulticlassStatScores):
    """sklearn's balanced accuracy for single-label heads: mean of tp / (tp + fn) over the classes present in
    the targets. Updates take N x C probabilities (argmax; for 2-logit softmax heads argmax == p1 > 0.5) or N
    class predictions; the states are per-class sums, so DDP ranks and repeated updates merge exactly."""

    def __init__(self, num_classes: int, **kwargs):
        super().__init__(num_classes=num_classes, average=None, **kwargs)

    def compute(self) -> torch.Tensor:
        tp, _, _, fn = self._final_state()
        support = tp + fn
        return _present_class_mean(tp.double() / support, support > 0).float()


class MultilabelBalancedAccuracy(MultilabelStatScores):
    """Mean over labels of each label's balanced accuracy, as MedMNIST-C scores ChestMNIST: (sensitivity +
    specificity) / 2, or only the one defined when a label has no positives (or no negatives) in the targets,
    so each label follows the same present-classes definition as `BalancedAccuracy`."""

    def __init__(self, num_labels: int, threshold: float = 0.5, **kwargs):
        super().__init__(num_labels=num_labels, threshold=threshold, average=None, **kwargs)

    def compute(self) -> torch.Tensor:
        tp, fp, tn, fn = self._final_state()
        recalls = torch.stack([tp.double() / (tp + fn), tn.double() / (tn + fp)], dim=-1)
        present = torch.stack([tp + fn > 0, tn + fp > 0], dim=-1)
        return _present_class_mean(recalls, present).mean().float()


DEFAULT_THRESHOLD = 0.5


def task_balanced_accuracy(task: str, labels: np.ndarray, probabilities: np.ndarray,
                           threshold: float | Sequence[float] = DEFAULT_THRESHOLD) -> float:
    """Balanced accuracy of `probabilities` (N x C) against MedMNIST `labels` (N x 1, or N x L multi-label), by
    the project's one definition (lightning_modules.metrics): binary heads predict p1 > threshold (argmax at
    0.5), multi-label heads p > threshold per label, multi-class and ordinal heads the argmax."""
    labels, probabilities = np.asarray(labels), np.asarray(probabilities)
    if len(labels) != len(probabilities) or len(labels) == 0:
        raise ConfigError(f"{len(probabilities)} predictions for {len(labels)} labels")
    if task == MULTILABEL:
        thresholds = np.broadcast_to(np.asarray(threshold, dtype=np.float64), (labels.shape[1],))
        metric = MultilabelBalancedAccuracy(labels.shape[1])
        predictions = probabilities > thresholds
    else:
        metric = BalancedAccuracy(probabilities.shape[1])
        if task == BINARY:
            predictions = probabilities[:, -1] > float(threshold)
        else:
            predictions = np.argmax(probabilities, axis=-1)
        labels = labels.reshape(len(labels), -1)[:, 0]
    metric.update(torch.from_numpy(np.asarray(predictions, dtype=np.int64)),
                  torch.from_numpy(np.asarray(labels, dtype=np.int64)))
    return float(metric.compute())


def make_metrics(task: str, num_classes: int) -> MetricCollection:
    """{'bacc', 'acc', 'auroc'} for a task; updates take probabilities from `probabilities()`."""
    if task == MULTILABEL:
        return MetricCollection(
            {
                "bacc": MultilabelBalancedAccuracy(num_classes),
                "acc": MultilabelAccuracy(num_classes, average="micro"),
                "auroc": MultilabelAUROC(num_classes, average="macro"),
            }
        )
    # Binary heads have two logits, so one multi-class code path serves every single-label task.
    return MetricCollection(
        {
            "bacc": BalancedAccuracy(num_classes),
            "acc": MulticlassAccuracy(num_classes, average="micro"),
            "auroc": MulticlassAUROC(num_classes, average="macro"),
        }
    )


def probabilities(logits: torch.Tensor, task: str) -> torch.Tensor:
    """Sigmoid for multi-label heads, softmax otherwise (explicit, so metrics never guess)."""
    return torch.sigmoid(logits) if task == MULTILABEL else F.softmax(logits, dim=-1)


def task_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits for float multi-label targets, cross-entropy for class indices."""
    if target.is_floating_point():
        return F.binary_cross_entropy_with_logits(logits, target)
    return F.cross_entropy(logits, target)


# ---- metric keys -------------------------------------------------------------------------------
# One grammar for logs, reports, the README, sweep objectives, select constraints and study tables:
#     {stage}/{kind}_{metric}[@{condition}]
# stage: train | val | test; kind: clean | adv (PGD) | aa (AutoAttack) | corr (MedMNIST-C) | expl (explanations)
# | cert (randomized smoothing's certified L2 radius); metric: bacc | acc | auroc | loss | be | rbe | abstain | ...;
# condition: the epsilon label for adv/aa/expl ("4_255"), the radius label for cert ("r" and the radius with "_"
# for its decimal point: r0, r0_25, r0_5, r1; `radius_label`), a corruption name for corr, "subset" for the fixed
# validation subset the callback attacks, "roundtrip" for clean images resampled like the corrupted ones.
# `MetricKey` is the one parser and formatter: no caller splits key strings itself.
STAGES = ("train", "val", "test")
KINDS = ("clean", "adv", "aa", "corr", "expl", "cert")
EPSILON_KINDS = ("adv", "aa", "expl")
RADIUS_KINDS = ("cert",)
KIND_ORDER = {kind: i for i, kind in enumerate(KINDS)}


@dataclass(frozen=True)
class MetricKey:
    """A parsed metric key: `MetricKey.parse("val/adv_bacc@4_255")` has stage "val", kind "adv", metric "bacc"
    and condition "4_255"; `str(key)` formats it back. Epsilon conditions are kept as canonical labels."""

    stage: str
    kind: str
    metric: str = "bacc"
    condition: Optional[str] = None

    def __post_init__(self):
        if self.stage not in STAGES or self.kind not in KINDS:
            raise ConfigError(f"metric keys have a stage in {STAGES} and a kind in {KINDS}, "
                              f"got {self.stage!r}, {self.kind!r}")
        if not self.metric:
            raise ConfigError(f"metric key {self.stage}/{self.kind}_ needs a metric name (bacc, acc, auroc, ...)")
        if self.condition is not None:
            object.__setattr__(self, "condition", _condition(self.kind, self.condition))

    def __str__(self) -> str:
        base = f"{self.stage}/{self.kind}_{self.metric}"
        return base if self.condition is None else f"{base}@{self.condition}"

    @classmethod
    def parse(cls, text, stage: Optional[str] = None) -> "MetricKey":
        """`val/adv_bacc@4_255`, `val/adv_bacc@4/255`, `val/adv_bacc@eps=4/255`, or `adv_bacc@4/255` with `stage`
        given; ConfigError for text outside the grammar (see `MetricKey.try_parse` for keys that may be)."""
        key = cls.try_parse(text, stage)
        if key is None:
            raise ConfigError(f"{text!r} is not a metric key: write STAGE/KIND_METRIC[@CONDITION] with a stage in "
                              f"{STAGES} and a kind in {KINDS} (for example val/adv_bacc@4/255)")
        return key

    @classmethod
    def try_parse(cls, text, stage: Optional[str] = None) -> Optional["MetricKey"]:
        """The parsed key, or None for keys outside the grammar (`train/epsilon`, `epoch`)."""
        if isinstance(text, MetricKey):
            return text
        text = str(text).strip()
        head, at, condition = text.partition("@")
        if "/" in head:
            stage, head = head.split("/", 1)
        elif stage is None:
            if head.partition("_")[0] in KINDS:
                raise ConfigError(f"metric {text!r} needs a stage: write val/{text} or test/{text}")
            return None
        kind, _, metric = head.partition("_")
        if stage not in STAGES or kind not in KINDS or not metric or (at and not condition):
            return None
        return cls(stage, kind, metric, _condition(kind, condition) if at else None)

    @property
    def epsilon(self) -> Optional[float]:
        """The epsilon of an adv/aa/expl key (None otherwise or without a condition)."""
        if self.kind in EPSILON_KINDS and self.condition is not None:
            return parse_epsilon(self.condition, norm="l2")
        return None

    @property
    def radius(self) -> Optional[float]:
        """The certified L2 radius of a cert key (None otherwise or without a condition)."""
        if self.kind in RADIUS_KINDS and self.condition is not None:
            return parse_radius(self.condition)
        return None

    def unstaged(self) -> str:
        """The key without its stage (`adv_bacc@4_255`), as study tables name their columns; `MetricKey.parse(text,
        stage)` reads it back."""
        return str(self).split("/", 1)[1]

    def with_stage(self, stage: str) -> "MetricKey":
        return MetricKey(stage, self.kind, self.metric, self.condition)

    def sort_key(self) -> tuple:
        """Validation before test, then clean, adv, aa, corr, expl, cert; epsilons and radii in increasing order."""
        level = self.epsilon if self.epsilon is not None else self.radius
        return (STAGES.index(self.stage), KIND_ORDER[self.kind], self.metric != "bacc", self.metric,
                level if level is not None else -1.0, self.condition or "")


def radius_label(radius) -> str:
    """A certified radius as cert keys name it: 0.5 -> "r0_5", 0.25 -> "r0_25", 1 -> "r1" (no dot or slash, which
    loggers read as separators); `parse_radius` reads it back, also from "0.5", "r0.5" or "0_5"."""
    return "r" + f"{parse_radius(radius):g}".replace(".", "_")


def parse_radius(value) -> float:
    """A certified L2 radius (a finite number >= 0) from a number or a label; one ConfigError line otherwise."""
    number = value
    if isinstance(value, str):
        try:
            number = float(value.strip().removeprefix("r").replace("_", "."))
        except ValueError:
            number = None
    if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number) or number < 0:
        raise ConfigError(f"a certified radius is a number >= 0 or a label like r0_5, got {value!r}")
    return float(number)


def _condition(kind: str, condition) -> str:
    """The canonical condition: an epsilon label (`4_255`) for adv/aa/expl keys, a radius label (`r0_5`) for cert
    keys, the text otherwise."""
    if kind in RADIUS_KINDS:
        return radius_label(condition)
    if kind in EPSILON_KINDS:
        if isinstance(condition, str):
            condition = condition.removeprefix("eps=")
            condition = parse_epsilon(condition, norm="l2")
        return epsilon_label(condition)
    return str(condition)


def metric_key(stage: str, kind: str, metric: str = "bacc", condition=None) -> str:
    """`val/adv_bacc@4_255` from ("val", "adv", "bacc", 4/255); a number or fraction condition is an epsilon."""
    return str(MetricKey(stage, kind, metric, None if condition is None else _condition(kind, condition)))


def parse_metric_key(text: str, stage: Optional[str] = None) -> str:
    """The canonical key for what a user typed: `adv_bacc@4/255` (with `stage` given), `val/adv_bacc@eps=4/255`,
    `val/adv_bacc@4_255` all give `val/adv_bacc@4_255`; keys outside the grammar (`train/epsilon`) pass through."""
    key = MetricKey.try_parse(text, stage)
    if key is not None:
        return str(key)
    text = str(text).strip()
    if "/" in text.split("@")[0]:
        return text
    if stage is None:
        raise ConfigError(f"metric {text!r} needs a stage: write val/{text} or test/{text}")
    return f"{stage}/{text}"
