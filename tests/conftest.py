"""Shared fixtures: the real MedMNIST folder, synthetic npz files in the official format, and one tiny
trained ERM model (with its DataModule and checkpoint) for the tests that need a model that has learnt."""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REAL_ROOT = REPO.parent / "shared" / "data" / "medmnist"

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(scope="session")
def real_root() -> Path:
    """../shared/data/medmnist with the official breastmnist.npz and pneumoniamnist.npz."""
    if not (REAL_ROOT / "pneumoniamnist.npz").exists():
        pytest.skip(f"real MedMNIST files not found in {REAL_ROOT}")
    return REAL_ROOT


@pytest.fixture
def synthetic_root(tmp_path):
    """A factory: synthetic_root(flag, size=28, **kw) writes a synthetic npz and returns its folder."""
    from datamodules.synthetic import write_synthetic_npz

    def make(flag: str, size: int = 28, **kwargs) -> Path:
        write_synthetic_npz(tmp_path / "data", flag, size, **kwargs)
        return tmp_path / "data"

    return make


@dataclass(frozen=True)
class TinyERM:
    """An ERM small CNN fitted on synthetic BreastMNIST (256 / 64 / 64 images); do not train `model` further."""

    model: object  # lightning_modules.erm.ERM
    datamodule: object  # datamodules.medmnist.MedMNISTDataModule
    root: Path  # the folder with breastmnist.npz
    checkpoint: Path  # its weights as a Lightning checkpoint; tests that write beside it use `checkpoint_copy`

    def checkpoint_copy(self, folder: Path) -> Path:
        """The checkpoint copied into `folder`, so reports written beside it stay the calling test's own."""
        folder.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copy2(self.checkpoint, folder / self.checkpoint.name))


@pytest.fixture(scope="session")
def tiny_erm(tmp_path_factory) -> TinyERM:
    """One ERM model trained for 4 epochs (seed 0) on synthetic BreastMNIST, shared by the whole session."""
    import lightning as L

    from datamodules.medmnist import MedMNISTDataModule
    from datamodules.synthetic import write_synthetic_npz
    from lightning_modules.erm import ERM

    folder = tmp_path_factory.mktemp("tiny_erm")
    write_synthetic_npz(folder / "data", "breastmnist", 28, n_train=256, n_val=64, n_test=64)
    L.seed_everything(0, verbose=False)
    dm = MedMNISTDataModule("breastmnist", root=str(folder / "data"), verify_md5=False, batch_size=32, augment=False)
    model = ERM(lr=3e-3)
    trainer = L.Trainer(max_epochs=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, inference_mode=False, accelerator="cpu",
                        default_root_dir=str(folder))
    trainer.fit(model, datamodule=dm)
    checkpoint = folder / "erm.ckpt"
    trainer.save_checkpoint(checkpoint)
    return TinyERM(model.eval(), dm, folder / "data", checkpoint)
