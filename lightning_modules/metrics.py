"""Task-aware metrics: balanced accuracy (the headline), accuracy and AUROC, from torchmetrics."""
from __future__ import annotations

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
