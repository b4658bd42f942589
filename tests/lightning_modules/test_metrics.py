"""One balanced-accuracy definition (sklearn's: mean recall over the classes present in the targets)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassAccuracy

from lightning_modules.metrics import task_balanced_accuracy
from core.errors import ConfigError
from lightning_modules.metrics import BalancedAccuracy, MultilabelBalancedAccuracy, make_metrics

# 3 classes; class 2 never occurs in the targets but is predicted twice.
TARGETS = torch.tensor([0, 0, 0, 1, 1, 1, 1])
PREDICTIONS = torch.tensor([0, 2, 0, 1, 2, 1, 0])
# recall(0) = 2/3, recall(1) = 2/4, class 2 absent: (2/3 + 1/2) / 2
EXPECTED = (2 / 3 + 1 / 2) / 2


def _probabilities(predictions: torch.Tensor, num_classes: int = 3) -> torch.Tensor:
    return torch.nn.functional.one_hot(predictions, num_classes).float() * 0.8 + 0.2 / num_classes


def test_absent_but_predicted_class_is_skipped_by_hand():
    assert BalancedAccuracy(3)(PREDICTIONS, TARGETS).item() == pytest.approx(EXPECTED)
    assert make_metrics("multiclass", 3)(_probabilities(PREDICTIONS), TARGETS)["bacc"].item() == pytest.approx(EXPECTED)
    # torchmetrics' macro accuracy counts class 2 as recall 0: the disagreement this metric removes
    macro = MulticlassAccuracy(3, average="macro")(PREDICTIONS, TARGETS).item()
    assert macro == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
    # the MedMNIST-C scores use the same definition
    labels = TARGETS.numpy().reshape(-1, 1)
    assert task_balanced_accuracy("multiclass", labels, _probabilities(PREDICTIONS).numpy()) == pytest.approx(EXPECTED)


def test_merged_shards_and_repeated_updates_equal_the_whole():
    whole = BalancedAccuracy(3)(PREDICTIONS, TARGETS).item()
    first, second = BalancedAccuracy(3), BalancedAccuracy(3)
    first.update(PREDICTIONS[:3], TARGETS[:3])  # class 1 is absent from this shard, present in the other
    second.update(PREDICTIONS[3:], TARGETS[3:])
    assert first.clone().compute().item() == pytest.approx(2 / 3)  # class 0 alone (clone: compute caches)
    first.merge_state(second)  # what DDP's sum-reduction of the states does
    assert first.compute().item() == pytest.approx(whole)
    twice = BalancedAccuracy(3)
    twice.update(PREDICTIONS[:3], TARGETS[:3])
    twice.update(PREDICTIONS[3:], TARGETS[3:])
    assert twice.compute().item() == pytest.approx(whole) == pytest.approx(EXPECTED)


def test_matches_sklearn_on_random_labels():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for trial in range(30):
        n_true, n_pred = rng.integers(1, 6), rng.integers(1, 6)  # predictions may hold classes absent from targets
        y_true, y_pred = rng.integers(0, n_true, 40), rng.integers(0, n_pred, 40)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sklearn warns when y_pred holds classes absent from y_true
            expected = sklearn_metrics.balanced_accuracy_score(y_true, y_pred)
        ours = BalancedAccuracy(5)(torch.from_numpy(y_pred), torch.from_numpy(y_true)).item()
        assert ours == pytest.approx(expected, abs=1e-6), trial


def test_binary_threshold_and_argmax_agree():
    probs = np.array([[0.7, 0.3], [0.5, 0.5], [0.2, 0.8], [0.45, 0.55]])
    labels = np.array([[0], [1], [1], [0]])
    # argmax and p1 > 0.5 both predict 0, 0, 1, 1: recall(0) = 1/2, recall(1) = 1/2
    assert task_balanced_accuracy("binary", labels, probs) == pytest.approx(0.5)
    assert make_metrics("binary", 2)(torch.tensor(probs).float(), torch.tensor(labels[:, 0]))["bacc"].item() == 0.5
    # a lower threshold flips example 2: recall(1) = 1
    assert task_balanced_accuracy("binary", labels, probs, threshold=0.4) == pytest.approx(0.75)


def test_multilabel_label_without_positives_counts_only_its_specificity():
    target = torch.tensor([[1, 0], [1, 0], [0, 0], [0, 0]])
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.1, 0.6], [0.3, 0.2]])
    # label 0: sensitivity 1/2, specificity 2/2 -> 3/4; label 1 has no positives: specificity 2/4
    assert MultilabelBalancedAccuracy(2)(probs, target).item() == pytest.approx((3 / 4 + 2 / 4) / 2)


def test_metric_key_parses_and_formats_every_part():
    from lightning_modules.metrics import MetricKey

    key = MetricKey.parse("val/adv_bacc@4/255")
    assert (key.stage, key.kind, key.metric, key.condition) == ("val", "adv", "bacc", "4_255")
    assert key.epsilon == pytest.approx(4 / 255) and str(key) == "val/adv_bacc@4_255"
    assert MetricKey.parse("adv_acc@eps=8/255", stage="test") == MetricKey("test", "adv", "acc", 8 / 255)
    assert str(MetricKey.parse("test/corr_bacc@gaussian_noise")) == "test/corr_bacc@gaussian_noise"
    assert MetricKey.parse("test/corr_bacc@gaussian_noise").epsilon is None
    assert str(MetricKey("test", "expl", "topk", "2/255")) == "test/expl_topk@2_255"
    assert str(MetricKey.parse("val/clean_bacc@subset")) == "val/clean_bacc@subset"
    for outside in ("train/epsilon", "epoch", "val/unknown_metric", "train/loss"):
        assert MetricKey.try_parse(outside) is None, outside
    with pytest.raises(ConfigError, match="needs a stage"):
        MetricKey.try_parse("adv_bacc@4/255")
    with pytest.raises(ConfigError, match="not a metric key"):
        MetricKey.parse("val/epsilon")


def test_metric_keys_sort_by_stage_kind_then_epsilon():
    from lightning_modules.metrics import MetricKey

    keys = ["test/clean_bacc", "val/adv_bacc@8_255", "val/corr_bacc", "val/adv_bacc@2_255", "val/clean_bacc",
            "val/aa_bacc@4_255"]
    ordered = [str(k) for k in sorted(map(MetricKey.parse, keys), key=MetricKey.sort_key)]
    assert ordered == ["val/clean_bacc", "val/adv_bacc@2_255", "val/adv_bacc@8_255", "val/aa_bacc@4_255",
                       "val/corr_bacc", "test/clean_bacc"]
