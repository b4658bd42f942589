"""RobustnessCallback settings: what `corruptions` limits, and checks against the dataset when the run starts."""
from __future__ import annotations

import json

import lightning as L
import pytest

from callbacks.robustness import RobustnessCallback
from datamodules.medmnist import MedMNISTDataModule
from lightning_modules.erm import ERM


def _trainer(tmp_path, callback, **kwargs) -> L.Trainer:
    return L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[callback],
                     default_root_dir=str(tmp_path), enable_checkpointing=False, **kwargs)


def test_corruptions_limit_the_test_table_too(synthetic_root, tmp_path):
    root = synthetic_root("breastmnist", n_train=16, n_val=16, n_test=12)
    dm = MedMNISTDataModule("breastmnist", root=str(root), verify_md5=False, batch_size=16)
    callback = RobustnessCallback(epsilons=[], autoattack=False, corruption_epoch=False,
                                  corruptions=["brightness_up"], corruption_cache=str(tmp_path / "cache"))
    result = _trainer(tmp_path, callback).test(ERM(), datamodule=dm, verbose=False)[0]
    table = json.loads((tmp_path / "robustness.json").read_text())["corruptions"]
    assert list(table["bacc"]) == ["brightness_up"] and len(table["bacc"]["brightness_up"]) == 5
    # 28 px: the rBE reference is the round-tripped clean test set, logged beside the clean one
    assert table["rbe_reference"] == "roundtrip"
    assert result["test/clean_bacc@roundtrip"] == pytest.approx(table["roundtrip_bacc"])
    assert sorted(path.name for path in (tmp_path / "cache" / "breastmnist").glob("*.npz")) == [
        "brightness_up.npz", "clean_roundtrip.npz"]
