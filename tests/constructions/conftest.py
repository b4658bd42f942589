"""Tiny ERM source models trained through Lightning on synthetic data, shared by the construction tests."""
from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from datamodules.medmnist import MedMNISTDataModule
from datamodules.synthetic import write_synthetic_npz
from lightning_modules.erm import ERM


def train_tiny(root: Path, flag: str, out: Path, module_cls=ERM, **module_kwargs) -> Path:
    """A small CNN trained for 32 steps (8 epochs of 16-image batches) on 64 synthetic training images, enough to use
    every class; returns the checkpoint path."""
    L.seed_everything(0, verbose=False)
    torch.set_num_threads(1)
    dm = MedMNISTDataModule(flag, 28, root=str(root), verify_md5=False, batch_size=16)
    model = module_cls(num_classes=dm.num_classes, in_channels=dm.in_channels, task=dm.task, lr=3e-3, **module_kwargs)
    trainer = L.Trainer(max_epochs=8, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, inference_mode=False, accelerator="cpu", limit_val_batches=0)
    trainer.fit(model, datamodule=dm)
    trainer.save_checkpoint(out)
    return out


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """tiny(flag) -> (data root, checkpoint) of an ERM small CNN on synthetic `flag` (64 / 32 / 32 images)."""
    made = {}

    def get(flag: str):
        if flag not in made:
            folder = tmp_path_factory.mktemp(flag)
            root = folder / "data"
            write_synthetic_npz(root, flag, 28, n_train=64, n_val=32, n_test=32)
            made[flag] = (root, train_tiny(root, flag, folder / "erm.ckpt"))
        return made[flag]

    return get


@pytest.fixture(scope="session")
def tiny_l2_robust(tiny, tmp_path_factory):
    """(data root, checkpoint) of a small CNN trained with L2 PGD-AT (epsilon 0.5, 2 steps) on synthetic breastmnist."""
    from lightning_modules.adversarial import PGDAT

    root, _ = tiny("breastmnist")
    ckpt = tmp_path_factory.mktemp("robust") / "at.ckpt"
    return root, train_tiny(root, "breastmnist", ckpt, PGDAT, epsilon=0.5, norm="l2", steps=2)
