"""Shared fixtures: the real MedMNIST folder and synthetic npz files in the official format."""
from __future__ import annotations

import os
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
