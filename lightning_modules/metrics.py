"""Task-aware metrics: balanced accuracy (the headline), accuracy and AUROC, from torchmetrics."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MultilabelAccuracy,
    MultilabelAUROC,
    MultilabelStatScores,
)

from attacks.threat_model import epsilon_label, parse_epsilon
from core.errors import ConfigError
from datamodules.info import MULTILABEL


class MultilabelBalancedAccuracy(MultilabelStatScores):
    """Mean over labels of (sensitivity + specificity) / 2, as MedMNIST-C scores ChestMNIST."""

    def __init__(self, num_labels: int, threshold: float = 0.5, **kwargs):
        super().__init__(num_labels=num_labels, threshold=threshold, average=None, **kwargs)

    def compute(self) -> torch.Tensor:
        tp, fp, tn, fn = self._final_state()
        sensitivity = tp / (tp + fn).clamp(min=1)
        specificity = tn / (tn + fp).clamp(min=1)
        return ((sensitivity + specificity) / 2).float().mean()


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
    # Binary heads have two logits, so one multi-class code path serves every single-label task;
    # macro-averaged recall is balanced accuracy.
    return MetricCollection(
        {
            "bacc": MulticlassAccuracy(num_classes, average="macro"),
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
