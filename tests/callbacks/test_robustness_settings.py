"""RobustnessCallback settings: what `corruptions` limits, and checks against the dataset when the run starts."""
from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest

from callbacks.robustness import RobustnessCallback
from core.errors import ConfigError
from datamodules.medmnist import MedMNISTDataModule
from lightning_modules.erm import ERM
from counting import CountingERM


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


@pytest.mark.parametrize("settings, message", [
    ({"corruptions": ["motion_blur"]}, "pneumoniamnist has no MedMNIST-C corruption motion_blur"),
    ({"autoattack_attacks": ["apgd-dlr", "apgd-t"]}, "no AutoAttack attack of ['apgd-dlr', 'apgd-t'] can run"),
])
def test_settings_that_cannot_apply_to_the_dataset_fail_before_training(synthetic_root, tmp_path, settings, message):
    root = synthetic_root("pneumoniamnist", n_train=16, n_val=8, n_test=8)
    dm = MedMNISTDataModule("pneumoniamnist", root=str(root), verify_md5=False, batch_size=8)
    callback = RobustnessCallback(corruption_cache=str(tmp_path / "cache"), **settings)
    CountingERM.steps = 0
    with pytest.raises(ConfigError) as info:
        _trainer(tmp_path, callback, max_epochs=1).fit(CountingERM(), datamodule=dm)
    assert message in str(info.value) and CountingERM.steps == 0


def test_the_erm_config_runs_unchanged_on_multilabel_chestmnist(synthetic_root, tmp_path, monkeypatch):
    """configs/erm.yaml asks for AutoAttack [apgd-ce, apgd-t]; on a multi-label head that list is adapted to the
    PGD-BCE fallback and recorded, instead of failing after training (train.py's main, in this process)."""
    import sys

    import train

    root = synthetic_root("chestmnist", n_train=32, n_val=16, n_test=16)
    out = tmp_path / "run"
    callback = "--trainer.callbacks.init_args."
    args = ["fit", "--config", "configs/erm.yaml", "--data.flag", "chestmnist", "--data.root", str(root),
            "--data.verify_md5", "false", "--data.batch_size", "16", "--trainer.max_epochs", "1",
            "--trainer.default_root_dir", str(out), "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", f"{callback}epsilons", "[4/255]", f"{callback}val_samples", "8",
            f"{callback}val_steps", "1", f"{callback}test_steps", "1", f"{callback}test_restarts", "1",
            f"{callback}autoattack_samples", "8",
            "--trainer.callbacks.init_args.autoattack.multilabel_steps", "2",
            "--trainer.callbacks.init_args.autoattack.multilabel_restarts", "1",
            f"{callback}corruptions", "[brightness_up]",
            f"{callback}corruption_val_samples", "8", f"{callback}corruption_report", "false"]
    monkeypatch.setattr(sys, "argv", ["train.py"])  # LightningCLI warns about pytest's own arguments
    monkeypatch.chdir(Path(train.__file__).parent)  # configs/erm.yaml as a user types it
    train.main(args)
    (report,) = (out / "checkpoints").glob("best-*.robustness.json")
    info = json.loads(report.read_text())["autoattack"]["4_255"]["info"]
    assert info["planned"] == ["pgd-bce"] and [a["name"] for a in info["attacks"]] == ["pgd-bce"]
    assert info["adaptations"][0].startswith("apgd-ce, apgd-t replaced by pgd-bce: multi-label")
