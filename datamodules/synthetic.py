"""Small synthetic npz files in the official MedMNIST format, with learnable structure, for tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .info import MULTILABEL, dataset_info, npz_name


def synthetic_arrays(flag: str, size: int, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n images whose class (or each label) sets the brightness of its own image region."""
    info = dataset_info(flag)
    rng = np.random.default_rng(seed)
    k = info.num_classes
    if info.task == MULTILABEL:
        labels = (rng.random((n, k)) < 0.3).astype(np.uint8)
    else:
        labels = rng.integers(0, k, size=(n, 1)).astype(np.uint8)
    images = rng.normal(90, 20, size=(n, size, size)).astype(np.float32)
    # Each class (label) owns a horizontal band; a present class brightens its band.
    bands = np.array_split(np.arange(size), k)
    for c, rows in enumerate(bands):
        on = labels[:, c] == 1 if info.task == MULTILABEL else labels[:, 0] == c
        images[np.ix_(on, rows)] += 90
    images = np.clip(images, 0, 255).astype(np.uint8)
    if info.n_channels == 3:
        images = np.repeat(images[..., None], 3, axis=-1)
        images[..., 1] //= 2
    return images, labels


def write_synthetic_npz(
    root: str | Path,
    flag: str,
    size: int = 28,
    n_train: int = 200,
    n_val: int = 60,
    n_test: int = 60,
    seed: int = 0,
    name: str | None = None,
) -> Path:
    """Write `root/<flag>[_size].npz` (the official layout and keys) and return its path."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for i, (split, n) in enumerate((("train", n_train), ("val", n_val), ("test", n_test))):
        images, labels = synthetic_arrays(flag, size, n, seed + i)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    path = root / (name or npz_name(dataset_info(flag).flag, size))
    np.savez_compressed(path, **arrays)
    return path
