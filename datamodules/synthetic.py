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


def positive_control_arrays(n: int, size: int = 16, amplitude: float = 4 / 255, pattern: bool = True,
                            shape_contrast: float = 0.5, noise: float = 6 / 255, seed: int = 0,
                            shape: bool = True, labels: np.ndarray | None = None,
                            shape_agreement: float = 1.0,
                            contrast_jitter: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """n grey uint8 images (N x size x size) of two classes, MedMNIST layout, for the nonrobust-features positive
    control: the class is carried by a large shape (a bright bar, horizontal for class 0 and vertical for class 1,
    `shape_contrast` above the background: robust, far beyond a small L2 budget) and, with `pattern`, by a faint
    checkerboard of +-`amplitude` per pixel whose sign is the class (nonrobust: an L2 perturbation of
    2 * amplitude * size flips it). Gaussian pixel noise (sd `noise`) on top; labels N x 1 uint8 (random and
    balanced unless given). `shape=False` leaves the bar out (a probe of the pattern alone); `shape_agreement` is the
    share of images whose bar shows their class (the others show the other class's bar); each bar's contrast is
    drawn from [1 - contrast_jitter, 1] x `shape_contrast`, so a small perturbation of the bar's contrast says
    nothing about its class."""
    rng = np.random.default_rng(seed)
    if labels is None:
        labels = rng.permutation(np.arange(n) % 2)
    labels = np.asarray(labels).reshape(-1)
    images = np.full((n, size, size), 0.3, dtype=np.float64)
    width, margin = max(2, size // 4), size // 8
    if shape:
        starts = rng.integers(margin, size - margin - width + 1, n)
        bars = np.where(rng.random(n) < shape_agreement, labels, 1 - labels)
        contrasts = shape_contrast * (1 - contrast_jitter * rng.random(n))
        for i, (y, start, contrast) in enumerate(zip(bars, starts, contrasts)):
            if y == 0:
                images[i, start:start + width, margin:size - margin] += contrast
            else:
                images[i, margin:size - margin, start:start + width] += contrast
    if pattern:
        checker = np.where(np.add.outer(np.arange(size), np.arange(size)) % 2 == 0, 1.0, -1.0)
        images += amplitude * checker[None] * np.where(labels == 1, 1.0, -1.0)[:, None, None]
    images += rng.normal(0.0, noise, images.shape)
    images = np.clip(np.rint(images * 255), 0, 255).astype(np.uint8)
    return images, labels.astype(np.uint8).reshape(-1, 1)


def write_positive_control_npz(root: str | Path, amplitude: float, n_train: int = 512, n_val: int = 128,
                               n_test: int = 256, seed: int = 0, flag: str = "pneumoniamnist", size: int = 28,
                               **arrays) -> Path:
    """The positive control's dataset written as `root/<flag>[_size].npz` in the official MedMNIST layout (a binary
    grey flag), so the study reads it as it reads any dataset: each split drawn by positive_control_arrays with the
    pattern at `amplitude` per pixel (0: no pattern) and the other `arrays` settings (shape_contrast, noise,
    shape_agreement, contrast_jitter)."""
    info = dataset_info(flag)
    if info.task == MULTILABEL or info.num_classes != 2 or info.n_channels != 1:
        raise ValueError(f"the positive control is a binary grey dataset; {info.flag} is not")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, (split, n) in enumerate((("train", n_train), ("val", n_val), ("test", n_test))):
        images, labels = positive_control_arrays(n, size, amplitude, amplitude > 0, seed=seed * 10 + i, **arrays)
        out[f"{split}_images"], out[f"{split}_labels"] = images, labels
    path = root / npz_name(info.flag, size)
    np.savez_compressed(path, **out)
    return path
