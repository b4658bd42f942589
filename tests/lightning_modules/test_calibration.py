"""Confidence and calibration measures against independent computations: ECE binned by hand in numpy and by
torchmetrics' metric classes, NLL against PyTorch's losses, Brier and the subsets against hand-worked numbers."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchmetrics.classification import BinaryCalibrationError, MulticlassCalibrationError

from core.errors import ConfigError
from lightning_modules.calibration import CONFIDENCE_METRICS, ConfidenceMetrics, confidence_measures


def hand_ece(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15, one_own_bin: bool = False) -> float:
    """Guo et al.'s ECE written out: sum over equal-width bins of |accuracy - mean confidence| * share of examples.
    Bins are ((m-1)/M, m/M] (Guo et al.); with `one_own_bin` they are [lo, hi) and 1.0 sits alone (torchmetrics)."""
    confidence, correct = np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=np.float64)
    if one_own_bin:
        index = np.where(confidence >= 1.0, n_bins, np.floor(confidence * n_bins).astype(int))
    else:
        index = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    total = 0.0
    for b in np.unique(index):
        members = index == b
        total += abs(correct[members].mean() - confidence[members].mean()) * members.mean()
    return float(total)


def random_probabilities(n: int, c: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(c, 0.7), size=n)
    targets = np.where(rng.random(n) < 0.6, probs.argmax(1), rng.integers(0, c, n))  # mostly right, some wrong
    return torch.from_numpy(probs).float(), torch.from_numpy(targets)


@pytest.mark.parametrize("classes, seed", [(2, 0), (3, 1), (7, 2)])
def test_ece_agrees_with_hand_binning_and_torchmetrics(classes, seed):
    probs, targets = random_probabilities(500, classes, seed)
    ours = confidence_measures(probs, targets, "binary" if classes == 2 else "multiclass")
    p = probs.double().numpy()
    confidence, correct = p.max(1), p.argmax(1) == targets.numpy()
    assert ours["ece"] == pytest.approx(hand_ece(confidence, correct), abs=1e-6)
    assert ours["ece"] == pytest.approx(float(MulticlassCalibrationError(classes, n_bins=15)(probs, targets)), abs=1e-6)
    for subset, keep in (("correct", correct), ("wrong", ~correct)):
        assert ours[f"ece_{subset}"] == pytest.approx(hand_ece(confidence[keep], correct[keep]), abs=1e-6)
        assert ours[f"conf_{subset}"] == pytest.approx(confidence[keep].mean(), abs=1e-6)
        assert ours[f"n_{subset}"] == keep.sum()
    assert ours["conf"] == pytest.approx(confidence.mean(), abs=1e-6)
    # NLL against PyTorch's loss on the log-probabilities; Brier written out over the classes
    assert ours["nll"] == pytest.approx(float(F.nll_loss(probs.double().log(), targets)), rel=1e-6)
    onehot = np.eye(classes)[targets.numpy()]
    assert ours["brier"] == pytest.approx(((p - onehot) ** 2).sum(1).mean(), rel=1e-6)


def test_three_examples_worked_by_hand():
    probs = torch.tensor([[0.72, 0.18, 0.10],   # class 0, right, confidence 0.72
                          [0.12, 0.58, 0.30],   # class 1, wrong (true 2), confidence 0.58
                          [0.26, 0.26, 0.48]])  # class 2, right, confidence 0.48
    targets = torch.tensor([0, 2, 2])
    out = confidence_measures(probs, targets, "multiclass")
    nll = [-math.log(0.72), -math.log(0.30), -math.log(0.48)]
    brier = [0.28**2 + 0.18**2 + 0.10**2, 0.12**2 + 0.58**2 + 0.70**2, 0.26**2 + 0.26**2 + 0.52**2]
    expected = {
        "conf": (0.72 + 0.58 + 0.48) / 3, "nll": sum(nll) / 3, "brier": sum(brier) / 3,
        # three different bins of 15, so ECE is the mean |right - confidence|
        "ece": (0.28 + 0.58 + 0.52) / 3,
        "conf_correct": 0.60, "nll_correct": (nll[0] + nll[2]) / 2, "brier_correct": (brier[0] + brier[2]) / 2,
        "ece_correct": 1 - 0.60,  # all right: each bin's gap is 1 - its confidence
        "conf_wrong": 0.58, "nll_wrong": nll[1], "brier_wrong": brier[1], "ece_wrong": 0.58,
        "n": 3, "n_correct": 2, "n_wrong": 1,
    }
    assert out == pytest.approx(expected, abs=1e-6)
    assert list(out)[:len(CONFIDENCE_METRICS)] == list(CONFIDENCE_METRICS)


def test_binary_brier_is_twice_the_squared_error_of_the_positive_probability():
    p1 = torch.tensor([0.9, 0.2, 0.65, 0.4])
    y = torch.tensor([1, 1, 0, 0])
    out = confidence_measures(torch.stack([1 - p1, p1], 1), y.view(-1, 1), "binary")  # MedMNIST's N x 1 labels
    assert out["brier"] == pytest.approx(float(2 * ((p1 - y) ** 2).mean()), abs=1e-6)
    assert out["nll"] == pytest.approx(float(F.binary_cross_entropy(p1, y.float())), rel=1e-6)
    assert (out["n_correct"], out["n_wrong"]) == (2, 2)


def test_multilabel_counts_every_label_decision():
    rng = np.random.default_rng(4)
    probs = torch.from_numpy(rng.random((60, 5))).float()
    labels = torch.from_numpy((rng.random((60, 5)) < 0.3).astype(np.float32))
    out = confidence_measures(probs, labels, "multilabel")
    p = probs.double().numpy()
    confidence = np.maximum(p, 1 - p).ravel()
    correct = ((p > 0.5) == (labels.numpy() > 0.5)).ravel()
    assert out["n"] == 300 and out["n_correct"] == correct.sum()
    assert out["ece"] == pytest.approx(hand_ece(confidence, correct), abs=1e-6)
    assert out["ece"] == pytest.approx(float(BinaryCalibrationError(n_bins=15)(torch.from_numpy(confidence).float(),
                                                                          torch.from_numpy(correct).long())), abs=1e-6)
    assert out["nll"] == pytest.approx(float(F.binary_cross_entropy(probs.double(), labels.double())), rel=1e-6)
    assert out["brier"] == pytest.approx(2 * float(((probs - labels) ** 2).mean()), rel=1e-5)


def test_torchmetrics_bins_are_left_closed_and_a_confidence_of_one_sits_alone():
    # confidences of exactly 1.0 (a saturated softmax) and 0.95: one bin for Guo et al., two for torchmetrics
    confidence = np.array([1.0, 1.0, 0.95, 0.95, 0.75])
    correct = np.array([1, 0, 1, 1, 0], dtype=bool)
    probs = torch.from_numpy(np.stack([confidence, 1 - confidence], 1)).float()
    targets = torch.from_numpy(np.where(correct, 0, 1))
    ours = confidence_measures(probs, targets, "binary", n_bins=10)["ece"]
    assert ours == pytest.approx(hand_ece(confidence, correct, 10, one_own_bin=True), abs=1e-6)
    assert ours != pytest.approx(hand_ece(confidence, correct, 10), abs=1e-3)  # Guo's right-closed bins differ here


def test_empty_subsets_are_nan_and_an_underflowed_probability_is_capped():
    out = confidence_measures(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1]), "binary")
    assert all(math.isnan(out[f"{m}_wrong"]) for m in ("conf", "ece", "nll", "brier")) and out["n_wrong"] == 0
    assert out["ece"] == pytest.approx(0.0) and out["nll"] == pytest.approx(0.0)
    wrong = confidence_measures(torch.tensor([[1.0, 0.0]]), torch.tensor([1]), "binary")
    assert wrong["nll"] == pytest.approx(-math.log(torch.finfo(torch.float32).tiny)) and wrong["brier"] == 2.0


def test_metric_updates_and_merged_shards_equal_the_whole():
    probs, targets = random_probabilities(90, 4, 7)
    whole = confidence_measures(probs, targets, "multiclass")
    first, second = ConfidenceMetrics("multiclass"), ConfidenceMetrics("multiclass")
    first.update(probs[:40], targets[:40])
    first.update(probs[40:60], targets[40:60])
    second.update(probs[60:], targets[60:])
    first.merge_state(second)  # what DDP's gather of the states does
    assert first.compute() == pytest.approx(whole)
    with pytest.warns(UserWarning, match="before the ``update``"):  # torchmetrics' own warning
        empty = ConfidenceMetrics("binary").compute()
    assert empty["n"] == 0 and math.isnan(empty["ece"])


def test_bad_input_is_a_config_error():
    with pytest.raises(ConfigError, match="predictions for"):
        confidence_measures(torch.full((3, 2), 0.5), torch.tensor([0, 1]), "binary")
    with pytest.raises(ConfigError, match="targets must lie"):
        confidence_measures(torch.full((2, 2), 0.5), torch.tensor([0, 2]), "binary")
    with pytest.raises(ConfigError, match="multi-label targets"):
        ConfidenceMetrics("multilabel").update(torch.full((2, 3), 0.5), torch.zeros(2, 2))
    with pytest.raises(ConfigError, match="n_bins"):
        confidence_measures(torch.full((2, 2), 0.5), torch.tensor([0, 1]), "binary", n_bins=0)


@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel"])
def test_ece_follows_its_n_bins_setting(task):
    """Each bin count groups these confidences differently, so an ECE that ignored `n_bins` (and used torchmetrics'
    default of 15, say) would miss the hand binning for every other count."""
    if task == "multilabel":
        rng = np.random.default_rng(13)
        probs = torch.from_numpy(rng.random((80, 3))).float()
        targets = (torch.from_numpy(rng.random((80, 3))).float() < probs).float()  # near calibrated: gaps of both signs
        p = probs.double().numpy()
        confidence = np.maximum(p, 1 - p).ravel()
        correct = ((p > 0.5) == (targets.numpy() > 0.5)).ravel()
    else:
        probs, targets = random_probabilities(300, 2 if task == "binary" else 5, 12)
        p = probs.double().numpy()
        confidence, correct = p.max(1), p.argmax(1) == targets.numpy()
    by_bins = {}
    for n_bins in (1, 3, 7, 15, 40):
        want = hand_ece(confidence, correct, n_bins, one_own_bin=True)
        by_bins[n_bins] = confidence_measures(probs, targets, task, n_bins=n_bins)["ece"]
        assert by_bins[n_bins] == pytest.approx(want, abs=1e-6), n_bins
        meter = ConfidenceMetrics(task, n_bins=n_bins)
        meter.update(probs, targets)
        assert meter.compute()["ece"] == pytest.approx(want, abs=1e-6), n_bins
    # torchmetrics' default (15) gives another number than every other count here: the check above can tell
    assert all(abs(value - by_bins[15]) > 1e-4 for n_bins, value in by_bins.items() if n_bins != 15)


def test_ddp_sync_concatenates_the_ranks_states():
    """What torchmetrics does at compute() under DDP, without processes: every state tensor is all-gathered (here a
    stand-in `dist_sync_fn` hands rank 0 what rank 1 sends) and reduced by its `dist_reduce_fx`. The per-example
    states must be concatenated (40 + 50 uneven examples in two updates each give the 90-example numbers); summed
    across ranks, they would not."""
    probs, targets = random_probabilities(90, 4, 8)
    whole = confidence_measures(probs, targets, "multiclass")
    sent = []

    def send(tensor, group=None):  # rank 1's side of the gather: what it contributes, in order
        sent.append(tensor)
        return [tensor]

    rank1 = ConfidenceMetrics("multiclass", dist_sync_fn=send, distributed_available_fn=lambda: True)
    rank1.update(probs[40:70], targets[40:70])
    rank1.update(probs[70:], targets[70:])
    rank1.compute()
    received = iter(sent)
    rank0 = ConfidenceMetrics("multiclass", dist_sync_fn=lambda tensor, group=None: [tensor, next(received)],
                              distributed_available_fn=lambda: True)
    rank0.update(probs[:25], targets[:25])
    rank0.update(probs[25:40], targets[25:40])
    synced = rank0.compute()
    assert synced["n"] == 90 and synced == pytest.approx(whole)
    assert len(rank0.probabilities) == 2  # unsynced after compute: rank 0 keeps accumulating its own shard
