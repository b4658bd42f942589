"""Confidence and calibration of probabilistic predictions: mean max-probability, expected calibration error,
negative log-likelihood and Brier score, over all predictions and over the correct and the wrong ones separately.

Every prediction is read as a categorical distribution over K outcomes:
- single-label heads (binary with two logits, multi-class, ordinal): the N x C softmax, one decision per image;
- multi-label heads: each label's sigmoid p as the two-outcome distribution (1 - p, p), one decision per label and
  image (N * L decisions).
On these decisions, with the predicted outcome the argmax (for two outcomes: p1 > 0.5, the project's default
threshold) and the confidence its probability:
    conf   mean confidence (mean max-probability)
    ece    expected calibration error, torchmetrics' top-label ECE with `n_bins` equal-width bins (L1):
           `multiclass_calibration_error` for single-label heads, `binary_calibration_error` on (confidence,
           correct) for multi-label decisions, which is the same top-label quantity. torchmetrics' bins are
           [lo, hi), and a confidence of exactly 1.0 forms a bin of its own.
    nll    mean -log p(true outcome); a probability that underflowed to 0 counts as float32's smallest normal
           number, so one example adds at most -log(1.18e-38) = 87.3
    brier  mean over decisions of sum_k (p_k - [k == true])^2, Brier's multi-category score (0 to 2; for two
           outcomes it is twice the familiar (p1 - y)^2)
and the same four with `_correct` / `_wrong` (`conf_wrong`, `ece_correct`, ...) over the decisions that were right or
wrong; a subset without decisions gives NaN. The counts come along as `n`, `n_correct`, `n_wrong`.

`ConfidenceMetrics` is a torchmetrics Metric (per-example states concatenated across DDP ranks), so it is fed the
probabilities the scoring loop already has: it adds no forward pass.
"""
from __future__ import annotations

import math
from typing import Union

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.functional.classification import binary_calibration_error, multiclass_calibration_error
from torchmetrics.utilities import dim_zero_cat

from core.checks import positive_int
from core.errors import ConfigError
from datamodules.info import MULTILABEL

MEASURES = ("conf", "ece", "nll", "brier")
SUBSETS = ("correct", "wrong")
# every measure name, in report order: conf, ece, nll, brier, conf_correct, ..., brier_wrong
CONFIDENCE_METRICS = MEASURES + tuple(f"{m}_{s}" for s in SUBSETS for m in MEASURES)
COUNTS = ("n", "n_correct", "n_wrong")
DEFAULT_BINS = 15
_TINY = torch.finfo(torch.float32).tiny

Array = Union[torch.Tensor, np.ndarray]


def decisions(probabilities: Array, targets: Array, task: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(D x K probabilities, D true outcomes): one row per image for single-label heads (targets of shape N or
    N x 1), one two-outcome row (1 - p, p) per image and label for multi-label heads (targets N x L of 0/1)."""
    probs = torch.as_tensor(probabilities).detach().cpu().double()
    labels = torch.as_tensor(targets).detach().cpu()
    if probs.ndim != 2:
        raise ConfigError(f"probabilities must be N x C, got shape {tuple(probs.shape)}")
    if task == MULTILABEL:
        if tuple(labels.shape) != tuple(probs.shape):
            raise ConfigError(f"multi-label targets must be N x L like the probabilities {tuple(probs.shape)}, "
                              f"got {tuple(labels.shape)}")
        flat = probs.reshape(-1)
        return torch.stack([1.0 - flat, flat], dim=1), labels.reshape(-1).round().long()
    if labels.ndim > 1:
        labels = labels.reshape(len(labels), -1)[:, 0]
    if len(labels) != len(probs):
        raise ConfigError(f"{len(probs)} predictions for {len(labels)} targets")
    return probs, labels.long()


def confidence_measures(probabilities: Array, targets: Array, task: str,
                        n_bins: int = DEFAULT_BINS) -> dict[str, float]:
    """{conf, ece, nll, brier, conf_correct, ..., brier_wrong, n, n_correct, n_wrong} of probabilities (N x C, from
    `lightning_modules.metrics.probabilities`) against targets (class indices, or N x L multi-hot labels)."""
    positive_int("n_bins", n_bins)
    dist, labels = decisions(probabilities, targets, task)
    if len(labels) and (labels.min() < 0 or labels.max() >= dist.shape[1]):
        raise ConfigError(f"targets must lie in 0..{dist.shape[1] - 1}, got {int(labels.min())}..{int(labels.max())}")
    confidence, predicted = dist.max(dim=1)
    correct = predicted == labels
    truth = dist.gather(1, labels.view(-1, 1)).view(-1) if len(labels) else dist.new_zeros(0)
    nll = -truth.clamp_min(_TINY).log()
    brier = (dist - torch.nn.functional.one_hot(labels, dist.shape[1]).double()).pow(2).sum(dim=1)
    out: dict[str, float] = {}
    for subset, keep in (("", torch.ones_like(correct)), ("correct", correct), ("wrong", ~correct)):
        suffix = f"_{subset}" if subset else ""
        if not keep.any():
            out.update({f"{m}{suffix}": math.nan for m in MEASURES})
            continue
        if task == MULTILABEL:
            ece = binary_calibration_error(confidence[keep].float(), correct[keep].long(), n_bins=n_bins)
        else:
            ece = multiclass_calibration_error(dist[keep].float(), labels[keep], num_classes=dist.shape[1],
                                               n_bins=n_bins)
        out[f"conf{suffix}"] = float(confidence[keep].mean())
        out[f"ece{suffix}"] = float(ece)
        out[f"nll{suffix}"] = float(nll[keep].mean())
        out[f"brier{suffix}"] = float(brier[keep].mean())
    n_correct = int(correct.sum())
    out.update(n=len(labels), n_correct=n_correct, n_wrong=len(labels) - n_correct)
    return {name: out[name] for name in CONFIDENCE_METRICS + COUNTS}


class ConfidenceMetrics(Metric):
    """`confidence_measures` as a torchmetrics Metric: `update(probabilities, targets)` any number of times (the
    scoring loop's probabilities), `compute()` the dict over everything seen, on all DDP ranks together."""

    full_state_update = False

    def __init__(self, task: str, n_bins: int = DEFAULT_BINS, **kwargs):
        super().__init__(**kwargs)
        self.task, self.n_bins = task, positive_int("n_bins", n_bins)
        self.add_state("probabilities", default=[], dist_reduce_fx="cat")
        self.add_state("targets", default=[], dist_reduce_fx="cat")

    def update(self, probabilities: torch.Tensor, targets: torch.Tensor) -> None:
        decisions(probabilities, targets, self.task)  # a shape error shows at the update that made it
        self.probabilities.append(torch.as_tensor(probabilities).detach().cpu().double())
        self.targets.append(torch.as_tensor(targets).detach().cpu().reshape(len(probabilities), -1))

    def compute(self) -> dict[str, float]:
        if isinstance(self.probabilities, list) and not self.probabilities:  # after a DDP sync: one tensor
            return {**{name: math.nan for name in CONFIDENCE_METRICS}, "n": 0, "n_correct": 0, "n_wrong": 0}
        return confidence_measures(dim_zero_cat(self.probabilities), dim_zero_cat(self.targets), self.task, self.n_bins)
