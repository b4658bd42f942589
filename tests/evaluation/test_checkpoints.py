"""evaluation.checkpoints: a checkpoint loads as its own class from the file alone; bad files are one-line errors."""
from __future__ import annotations

import lightning as L
import pytest
import torch

from core.errors import ConfigError, DataError
from datamodules.medmnist import MedMNISTDataModule
from evaluation.checkpoints import CLASS_KEY, check_checkpoint, load_module, read_checkpoint
from lightning_modules.adversarial import PGDAT, TRADES
from lightning_modules.erm import ERM
from lightning_modules.settings import flat_hparams


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Checkpoints of a 1-epoch PGDAT and an untrained TRADES (saved by a Trainer) on synthetic BreastMNIST."""
    from datamodules.synthetic import write_synthetic_npz

    tmp = tmp_path_factory.mktemp("checkpoints")
    write_synthetic_npz(tmp, "breastmnist", n_train=16, n_val=8, n_test=8)
    dm = MedMNISTDataModule("breastmnist", root=str(tmp), verify_md5=False, batch_size=8)
    L.seed_everything(0)
    model = PGDAT(steps=1, epsilon="2/255", lr=3e-3)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, inference_mode=False, default_root_dir=str(tmp))
    trainer.fit(model, datamodule=dm)
    trainer.save_checkpoint(tmp / "pgdat.ckpt")
    return tmp, model


def test_a_checkpoint_loads_as_its_own_class_with_its_weights(saved):
    tmp, trained = saved
    loaded = load_module(tmp / "pgdat.ckpt", {"flag": "breastmnist", "num_classes": 2, "in_channels": 1,
                                               "task": "binary", "model_class": "PGDAT"})
    assert type(loaded) is PGDAT and not loaded.training
    assert loaded.steps == 1 and loaded.epsilon == pytest.approx(2 / 255)
    for name, value in trained.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name


def test_checkpoints_without_the_class_record_fall_back_to_the_saved_hyperparameters(saved, tmp_path):
    tmp, _ = saved
    checkpoint = torch.load(tmp / "pgdat.ckpt", weights_only=False)
    assert checkpoint[CLASS_KEY] == "lightning_modules.adversarial.PGDAT"
    del checkpoint[CLASS_KEY]
    torch.save(checkpoint, tmp_path / "legacy.ckpt")
    assert type(load_module(tmp_path / "legacy.ckpt")) is PGDAT  # not ERM, whose arguments PGDAT's include
    trades = TRADES(beta=1.0)
    torch.save({"state_dict": trades.state_dict(), "hyper_parameters": dict(trades.hparams)}, tmp_path / "t.ckpt")
    assert type(load_module(tmp_path / "t.ckpt")) is TRADES and load_module(tmp_path / "t.ckpt").beta == 1.0
    erm = ERM()
    # written by the flat constructor, before an argument was added
    old = {k: v for k, v in flat_hparams(erm.hparams).items() if k != "norm_std"}
    torch.save({"state_dict": erm.state_dict(), "hyper_parameters": old}, tmp_path / "old.ckpt")
    assert type(load_module(tmp_path / "old.ckpt")) is ERM
    # LightningCLI's `_class_path` is read too
    erm = ERM()
    torch.save({"state_dict": erm.state_dict(), "hyper_parameters": {**erm.hparams, "_class_path":
                "lightning_modules.erm.ERM"}}, tmp_path / "cli.ckpt")
    assert type(load_module(tmp_path / "cli.ckpt")) is ERM


def test_bad_files_are_one_line_data_errors(saved, tmp_path):
    tmp, _ = saved
    with pytest.raises(DataError, match="not found"):
        read_checkpoint(tmp_path / "missing.ckpt")
    (tmp_path / "notes.txt").write_text("not a checkpoint\n")
    with pytest.raises(DataError, match="not a readable checkpoint"):
        load_module(tmp_path / "notes.txt")
    data = (tmp / "pgdat.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="not a readable checkpoint"):
        load_module(tmp_path / "cut.ckpt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(DataError, match="not a Lightning checkpoint"):
        load_module(tmp_path / "plain.pt")


@pytest.mark.parametrize("expect, message", [
    ({"flag": "pneumoniamnist"}, "dataset breastmnist (the run's: pneumoniamnist)"),
    ({"num_classes": 7}, "classes 2 (the run's: 7)"),
    ({"in_channels": 3}, "input channels 1 (the run's: 3)"),
    ({"task": "multilabel"}, "task binary (the run's: multilabel)"),
    ({"model_class": ERM}, "model class lightning_modules.adversarial.PGDAT (the run's: lightning_modules.erm.ERM)"),
    ({"model_class": "TRADES"}, "model class lightning_modules.adversarial.PGDAT (the run's: TRADES)"),
])
def test_a_checkpoint_of_another_run_is_a_config_error(saved, expect, message):
    tmp, _ = saved
    checkpoint = read_checkpoint(tmp / "pgdat.ckpt")
    with pytest.raises(ConfigError, match="does not fit this run") as info:
        check_checkpoint(checkpoint, expect, tmp / "pgdat.ckpt")
    assert message in str(info.value) and "\n" not in str(info.value)
    check_checkpoint(checkpoint, {"flag": "breastmnist", "num_classes": 2, "model_class": PGDAT})  # the right run
