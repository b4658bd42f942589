"""Task-aware metrics: balanced accuracy (the headline), accuracy and AUROC, from torchmetrics.

Balanced accuracy has one definition everywhere (training logs, callbacks, MedMNIST-C scores): sklearn's
`balanced_accuracy_score`, the mean recall over the classes PRESENT in the targets. torchmetrics' macro
MulticlassAccuracy would count a class that is predicted but absent from the targets as recall 0.
"""
from __future__ import annotations

from typing import Optional

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
from datamodules.info import MULTILABEL


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
# One grammar for logs, reports, the README and sweep objectives:
#     {stage}/{kind}_{metric}[@{condition}]
# stage: train | val | test; kind: clean | adv (PGD) | aa (AutoAttack) | corr (MedMNIST-C);
# metric: bacc | acc | auroc | loss | be | rbe; condition: the epsilon label for adv/aa ("4_255"),
# a corruption name for corr, "subset" for the fixed validation subset the callback attacks,
# "roundtrip" for clean images resampled like the corrupted ones.
STAGES = ("train", "val", "test")
KINDS = ("clean", "adv", "aa", "corr")


def metric_key(stage: str, kind: str, metric: str = "bacc", condition=None) -> str:
    """`val/adv_bacc@4_255` from ("val", "adv", "bacc", 4/255); a number or fraction condition is an epsilon."""
    if stage not in STAGES or kind not in KINDS:
        raise ConfigError(f"metric keys have a stage in {STAGES} and a kind in {KINDS}, got {stage!r}, {kind!r}")
    key = f"{stage}/{kind}_{metric}"
    if condition is None:
        return key
    if kind in ("adv", "aa"):
        condition = epsilon_label(condition)
    return f"{key}@{condition}"


def parse_metric_key(text: str, stage: Optional[str] = None) -> str:
    """The canonical key for what a user typed: `adv_bacc@4/255` (with `stage` given), `val/adv_bacc@eps=4/255`,
    `val/adv_bacc@4_255` all give `val/adv_bacc@4_255`; keys outside the grammar (`train/epsilon`) pass through."""
    text = str(text).strip()
    if "/" in text.split("@")[0]:
        stage, text = text.split("/", 1)
    base, _, condition = text.partition("@")
    kind, _, metric = base.partition("_")
    if stage is None:
        raise ConfigError(f"metric {text!r} needs a stage: write val/{text} or test/{text}")
    if kind not in KINDS or not metric:
        return f"{stage}/{text}"
    if not condition:
        return metric_key(stage, kind, metric)
    condition = condition.removeprefix("eps=")
    if kind in ("adv", "aa"):
        condition = parse_epsilon(condition, norm="l2")
    return metric_key(stage, kind, metric, condition)
