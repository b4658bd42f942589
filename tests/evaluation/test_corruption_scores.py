"""MedMNIST-C scores: balanced accuracy as sklearn's, BE/rBE as medmnistc's Evaluator, batched model inference."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from core.errors import ConfigError
from datamodules.info import dataset_info
from datamodules.medmnist_c import CorruptedTestSet, PROTOCOL_UPSAMPLE, SEVERITIES, corruption_names
from evaluation.corruption_scores import (
    corruption_scores,
    format_table,
    scores_from_probabilities,
    task_balanced_accuracy,
)


def _labels(flag: str, n: int, rng) -> np.ndarray:
    info = dataset_info(flag)
    if info.task == "multilabel":
        return rng.integers(0, 2, (n, info.num_classes), dtype=np.uint8)
    return rng.integers(0, info.num_classes, (n, 1), dtype=np.uint8)


def _probabilities(flag: str, labels: np.ndarray, rng, signal: float) -> np.ndarray:
    """Noisy probabilities that lean towards the labels by `signal` (so scores are neither 0 nor 1)."""
    info = dataset_info(flag)
    if info.task == "multilabel":
        return np.clip(0.5 + (labels - 0.5) * signal + rng.normal(0, 0.25, labels.shape), 0, 1)
    logits = rng.normal(size=(len(labels), info.num_classes))
    logits[np.arange(len(labels)), labels[:, 0]] += 4 * signal
    exp = np.exp(logits)
    return exp / exp.sum(1, keepdims=True)


@pytest.mark.parametrize("flag,threshold", [
    ("breastmnist", 0.5), ("pneumoniamnist", 0.3), ("dermamnist", 0.5), ("retinamnist", 0.5), ("chestmnist", 0.5),
])
def test_be_and_rbe_match_medmnistc_evaluator(tmp_path, flag, threshold):
    from medmnistc.eval import Evaluator

    info, rng = dataset_info(flag), np.random.default_rng(1)
    labels = _labels(flag, 60, rng)
    names = corruption_names(flag)
    clean = _probabilities(flag, labels, rng, 0.6)
    stacked = {c: np.concatenate([_probabilities(flag, labels, rng, 0.6 - 0.1 * s) for s in SEVERITIES])
               for c in names}
    evaluator = Evaluator(flag, labels, list(names), str(tmp_path), "test", info.medmnist_task)
    reference_threshold = [threshold] * info.num_classes if info.task == "multilabel" else threshold
    for corruption, probabilities in stacked.items():
        evaluator.evaluate(probabilities, corruption, reference_threshold)
    evaluator.evaluate_clean(clean, reference_threshold)
    evaluator.output_log = {}
    evaluator.populate_summary()
    reference = evaluator.output_log

    ours = scores_from_probabilities(info, labels, clean, stacked, protocol=PROTOCOL_UPSAMPLE, size=28,
                                     threshold=threshold)
    # torchmetrics returns float32
    assert ours.clean_bacc == pytest.approx(1 - reference["metrics"]["clean_score"], abs=1e-6)
    for corruption in names:
        assert ours.corruption_bacc[corruption] == pytest.approx(1 - reference["raw_scores"][corruption], abs=1e-6)
        assert ours.be[corruption] == pytest.approx(reference["be_scores"][corruption], rel=1e-5)
        assert ours.rbe[corruption] == pytest.approx(reference["rbe_scores"][corruption], rel=1e-5)
    assert ours.mean_be == pytest.approx(reference["metrics"]["be"], rel=1e-5)
    assert ours.mean_rbe == pytest.approx(reference["metrics"]["rbe"], rel=1e-5)
    assert len(set(ours.be.values())) > 1  # the table is not degenerate


def _corrupted_set(flag: str, n: int, seed: int, as_rgb: bool = False, encode_label: bool = False) -> CorruptedTestSet:
    """A synthetic set; with `encode_label` every image's mean brightness reveals its label."""
    info, rng = dataset_info(flag), np.random.default_rng(seed)
    labels = _labels(flag, n, rng)
    shape = (n, 28, 28) if info.n_channels == 1 else (n, 28, 28, 3)

    def images(count: int) -> np.ndarray:
        base = rng.integers(0, 256, (count,) + shape[1:], dtype=np.uint8)
        if encode_label:
            level = np.tile(labels[:, 0], count // n) * 200 + 20
            base = np.clip(base // 8 + level.reshape((-1,) + (1,) * (len(shape) - 1)), 0, 255).astype(np.uint8)
        return base

    corrupted = {c: images(5 * n) for c in corruption_names(flag)[:3]}
    return CorruptedTestSet.from_arrays(info, corrupted, images(n), labels, protocol=PROTOCOL_UPSAMPLE, size=28,
                                        as_rgb=as_rgb)


class _Model(torch.nn.Module):
    def __init__(self, channels: int, outputs: int):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(0.5),
                                       torch.nn.Linear(channels * 784, outputs))
        self.calls = 0

    def forward(self, x):
        assert x.dtype == torch.float32 and 0 <= float(x.min()) and float(x.max()) <= 1
        self.calls += 1
        return self.net(x)


def test_scores_run_the_model_in_eval_mode_batched():
    corrupted = _corrupted_set("breastmnist", 30, 2, as_rgb=True)
    model = _Model(3, 2).train()
    result = corruption_scores(model, corrupted, batch_size=7)
    assert model.training and all(p.grad is None for p in model.parameters())
    assert model.calls == (2 + 3 * 5) * 5  # ceil(30 / 7) batches for the clean, round-tripped clean and every chunk

    model.eval()
    with torch.no_grad():
        def probs(images):
            return torch.softmax(model(images.float() / 255), 1).double().numpy()

        clean, resampled = probs(corrupted.clean_images()), probs(corrupted.roundtrip_images())
        stacked = {c: np.concatenate([probs(corrupted.images_for(c, s)) for s in SEVERITIES])
                   for c in corrupted.corruptions}
    expected = scores_from_probabilities(corrupted.info, corrupted.raw_labels, clean, stacked,
                                         protocol=PROTOCOL_UPSAMPLE, size=28,
                                         roundtrip_probabilities=resampled)
    assert result == expected and result.rbe_reference == "roundtrip"
    assert result.protocol == PROTOCOL_UPSAMPLE and tuple(result.bacc) == corrupted.corruptions


def test_perfect_model_scores_zero_error():
    corrupted = _corrupted_set("pneumoniamnist", 20, 3, encode_label=True)

    class Brightness(torch.nn.Module):
        def forward(self, x):
            z = (x.mean((1, 2, 3)) - 0.45) * 50
            return torch.stack([-z, z], 1)

    result = corruption_scores(Brightness(), corrupted)
    assert result.clean_bacc == 1.0 and result.mean_bacc == 1.0
    assert result.mean_be == 0.0 and result.mean_rbe == 0.0


def test_multilabel_and_subset():
    corrupted = _corrupted_set("chestmnist", 16, 5).subset(n=12, severities=[1, 4], seed=0)
    result = corruption_scores(_Model(1, 14), corrupted, batch_size=5)
    assert result.severities == (1, 4) and all(len(v) == 2 for v in result.bacc.values())
    assert 0 <= result.clean_bacc <= 1 and np.isfinite(result.mean_rbe)


def test_wrong_model_width_is_a_config_error():
    with pytest.raises(ConfigError, match="logits"):
        corruption_scores(_Model(1, 3), _corrupted_set("breastmnist", 8, 6))


def test_format_table_lists_every_corruption_and_the_means():
    corrupted = _corrupted_set("dermamnist", 14, 7)
    result = corruption_scores(_Model(3, 7), corrupted)
    table = format_table(result)
    lines = table.splitlines()
    assert PROTOCOL_UPSAMPLE in lines[0] and "dermamnist" in lines[0]
    assert len(lines) == 4 + len(result.bacc) + 2
    for corruption in result.bacc:
        row = next(line for line in lines if line.startswith(corruption))
        assert f"{result.be[corruption]:.3f}" in row and f"{result.rbe[corruption]:.3f}" in row
    assert lines[-1].startswith("mean") and f"{result.mean_be:.3f}" in lines[-1]
    assert task_balanced_accuracy("multiclass", corrupted.raw_labels, np.eye(7)[corrupted.raw_labels[:, 0]]) == 1.0


# ---------------------------------------------------------------- the round-tripped clean reference of rBE


def test_rbe_is_measured_from_the_round_tripped_clean_images():
    """Corrupted images that are only the round trip (no corruption) have rBE exactly 0, whatever the clean score."""
    from datamodules.medmnist_c import roundtrip

    info, rng = dataset_info("breastmnist"), np.random.default_rng(9)
    labels = _labels("breastmnist", 40, rng)
    clean = rng.integers(0, 256, (40, 28, 28), dtype=np.uint8)
    resampled = roundtrip(clean, 28)
    assert not np.array_equal(resampled, clean)  # bicubic up, BOX down is not the identity
    corrupted = CorruptedTestSet.from_arrays(info, {c: np.tile(resampled, (5, 1, 1)) for c in corruption_names(
        "breastmnist")[:2]}, clean, labels, protocol=PROTOCOL_UPSAMPLE, size=28)
    np.testing.assert_array_equal(corrupted.roundtrip_images()[:, 0].numpy(), resampled)
    result = corruption_scores(_Model(1, 2), corrupted)
    assert result.rbe_reference == "roundtrip" and result.roundtrip_bacc == result.mean_bacc
    assert result.clean_bacc != result.roundtrip_bacc  # the model sees the resampling: a clean reference would not do
    assert all(value == 0.0 for value in result.rbe.values())
    assert "round-tripped clean" in format_table(result)
    assert corrupted.subset(n=10, seed=1).roundtrip_images().shape == (10, 1, 28, 28)


def test_load_corrupted_builds_and_caches_the_round_trip(tmp_path, monkeypatch):
    from PIL import Image

    import datamodules.medmnist_c.builder as builder
    from datamodules.medmnist_c import PROTOCOL_OFFICIAL, load_corrupted
    from datamodules.npz import load_split
    from datamodules.synthetic import write_synthetic_npz

    info = dataset_info("pneumoniamnist")
    write_synthetic_npz(tmp_path / "data", "pneumoniamnist", 28, n_train=4, n_val=4, n_test=6)
    write_synthetic_npz(tmp_path / "data", "pneumoniamnist", 224, n_train=4, n_val=4, n_test=6)
    kwargs = dict(corruptions=["brightness_up"], workers=1, progress=False, verify=False)
    corrupted = load_corrupted("pneumoniamnist", 28, tmp_path / "data", tmp_path / "cache", **kwargs)
    clean, _ = load_split(tmp_path / "data" / "pneumoniamnist.npz", "test", info, 28)
    expected = np.stack([np.asarray(Image.fromarray(x).resize((224, 224), Image.Resampling.BICUBIC).convert("RGB")
                                    .convert("L").resize((28, 28), Image.Resampling.BOX)) for x in clean])
    np.testing.assert_array_equal(corrupted.roundtrip_images()[:, 0].numpy(), expected)
    assert (tmp_path / "cache" / "pneumoniamnist" / "clean_roundtrip.npz").exists()

    def refuse(*args):
        raise AssertionError("the round trip was recomputed instead of read from the cache")

    monkeypatch.setattr(builder, "roundtrip", refuse)
    again = load_corrupted("pneumoniamnist", 28, tmp_path / "data", tmp_path / "cache", **kwargs)
    assert torch.equal(again.roundtrip_images(), corrupted.roundtrip_images())
    monkeypatch.undo()

    # official224-corrupt-box: the corrupted images come from the 224 px file, so does the reference
    official = load_corrupted("pneumoniamnist", 28, tmp_path / "data", tmp_path / "official", source="official224",
                              **kwargs)
    images_224, _ = load_split(tmp_path / "data" / "pneumoniamnist_224.npz", "test", info, 224)
    boxed = np.stack([np.asarray(Image.fromarray(x).resize((28, 28), Image.Resampling.BOX)) for x in images_224])
    assert official.protocol == PROTOCOL_OFFICIAL
    np.testing.assert_array_equal(official.roundtrip_images()[:, 0].numpy(), boxed)
