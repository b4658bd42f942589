"""The prediction cache beside a checkpoint and the run-folder layout: reuse only for the same checkpoint bytes,
the same settings and version; paths named in one place."""
from __future__ import annotations

import pytest

from core.errors import ConfigError
from evaluation.cache import PredictionCache
from evaluation.layout import RunLayout, StepLayout, report_beside


def test_predictions_are_reused_only_for_the_same_bytes_settings_and_version(tmp_path):
    ckpt = tmp_path / "checkpoints" / "best.ckpt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"weights")
    calls = []

    def compute():
        calls.append(1)
        return {"scores": [len(calls)]}

    first = PredictionCache(ckpt, "test-predictions", {"seed": 0}).get(compute)
    assert PredictionCache(ckpt, "test-predictions", {"seed": 0}).get(compute) == first and len(calls) == 1
    assert first["settings"]["checkpoint_sha256"] and (tmp_path / "checkpoints" / "best.test-predictions.pt").is_file()
    PredictionCache(ckpt, "test-predictions", {"seed": 1}).get(compute)  # other settings
    PredictionCache(ckpt, "test-predictions", {"seed": 1}, version=2).get(compute)  # another meaning
    ckpt.write_bytes(b"retrained")  # same path, other weights
    PredictionCache(ckpt, "test-predictions", {"seed": 1}, version=2).get(compute)
    assert len(calls) == 4
    with pytest.raises(ConfigError, match="no checkpoint"):
        PredictionCache(tmp_path / "missing.ckpt", "x", {})


def test_the_layout_names_every_path(tmp_path):
    run = RunLayout(tmp_path / "run")
    assert run.last_checkpoint == tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert report_beside(run.checkpoints / "best.ckpt") == run.checkpoints / "best.robustness.json"
    for version in (0, 2, 10):
        (run.root / "csv" / f"version_{version}").mkdir(parents=True)
        (run.root / "csv" / f"version_{version}" / "config.yaml").write_text(f"v: {version}\n")
    assert run.config_file().parent.name == "version_10" and RunLayout.of_checkpoint(run.checkpoints / "b.ckpt") == run
    moved = run.checkpoints / "best.ckpt"
    moved.parent.mkdir()
    moved.write_bytes(b"w")
    assert run.locate_checkpoint("/elsewhere/checkpoints/best.ckpt") == moved and run.locate_checkpoint(None) is None
    steps = StepLayout(tmp_path)
    assert steps.step("pneumoniamnist", 28, 1, StepLayout.trained_on("d_det")) == \
        tmp_path / "pneumoniamnist_28" / "seed_1" / "train_d_det"
    assert StepLayout.label("pneumoniamnist", 28, 1, "erm") == "pneumoniamnist_28/seed_1/erm"
