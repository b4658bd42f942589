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


#: the most classes the positive control's orthogonal patterns cover (Walsh codes on 4 pixel-parity bits)
PATTERN_CLASSES = 15


def class_patterns(size: int, classes: int) -> np.ndarray:
    """The positive control's nonrobust patterns, one per class (classes x size x size, entries +-1). Two classes: a
    checkerboard and its negative (the sign is the class); more: mutually orthogonal Walsh patterns (the parity of
    a code's bits over row and column parities, bits 0 and 1 of each), so each is zero-mean and moving an image from
    one class's pattern to another's costs the same L2 for every pair (pattern_flip_l2)."""
    rows, cols = np.arange(size)[:, None], np.arange(size)[None, :]
    if classes == 2:
        checker = np.where((rows + cols) % 2 == 0, 1.0, -1.0)
        return np.stack([-checker, checker])
    if not 2 < classes <= PATTERN_CLASSES or size % 4:
        raise ValueError(f"the positive control's patterns cover 2 to {PATTERN_CLASSES} classes at a size divisible "
                         f"by 4; got {classes} classes at {size} px")
    bits = [rows % 2 + 0 * cols, cols % 2 + 0 * rows, (rows // 2) % 2 + 0 * cols, (cols // 2) % 2 + 0 * rows]
    out = []
    for code in range(1, classes + 1):
        parity = sum(bit for b, bit in enumerate(bits) if code >> b & 1) % 2
        out.append(np.where(parity == 0, 1.0, -1.0))
    return np.stack(out)


def pattern_flip_l2(amplitude: float, size: int, classes: int = 2) -> float:
    """The L2 norm that moves an image from one class's pattern at `amplitude` per pixel to another's: 2 * a * size
    for the two opposite checkerboards, a * size * sqrt(2) for orthogonal ones (they differ on half the pixels)."""
    return float(amplitude * size * (2.0 if classes == 2 else np.sqrt(2.0)))


def _bar_geometry(classes: int, size: int) -> tuple[int, int, int, int]:
    """(width, margin, band, room) of the positive control's bars: class c's bar is horizontal for even c and
    vertical for odd c, in the (c // 2)-th of ceil(C / 2) bands across the image (with two classes one band, the
    whole image less its margins); it starts at one of `room` offsets within its band."""
    margin = size // 8
    band = (size - 2 * margin) // -(-classes // 2)
    width = min(max(2, size // 4), band)
    return width, margin, band, band - width + 1


def _shape_masks(classes: int, size: int, starts: np.ndarray, bars: np.ndarray) -> np.ndarray:
    """One bar per image (N x size x size, 0/1), class `bars[i]`'s at offset `starts[i]` in its band."""
    width, margin, band, _ = _bar_geometry(classes, size)
    masks = np.zeros((len(bars), size, size))
    for i, (y, start) in enumerate(zip(bars, starts)):
        offset = margin + (y // 2) * band + start
        if y % 2 == 0:
            masks[i, offset:offset + width, margin:size - margin] = 1
        else:
            masks[i, margin:size - margin, offset:offset + width] = 1
    return masks


def positive_control_arrays(n: int, size: int = 16, amplitude: float = 4 / 255, pattern: bool = True,
                            shape_contrast: float = 0.5, noise: float = 6 / 255, seed: int = 0,
                            shape: bool = True, labels: np.ndarray | None = None,
                            shape_agreement: float = 1.0,
                            contrast_jitter: float = 0.0, classes: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """n grey uint8 images (N x size x size) of `classes` classes, MedMNIST layout, for the nonrobust-features positive
    control: the class is carried by a large shape (a bright bar, `shape_contrast` above the background: robust, far
    beyond a small L2 budget; with two classes horizontal for class 0 and vertical for class 1, with more in a band
    of its own, _shape_masks) and, with `pattern`, by a faint pattern of +-`amplitude` per pixel (class_patterns:
    nonrobust, an L2 perturbation of pattern_flip_l2 moves it to another class's). Gaussian pixel noise (sd `noise`)
    on top; labels N x 1 uint8 (random and balanced unless given). `shape=False` leaves the bar out (a probe of the
    pattern alone); `shape_agreement` is the share of images whose bar shows their class (the others show another
    class's, drawn uniformly); each bar's contrast is drawn from [1 - contrast_jitter, 1] x `shape_contrast`, so a
    small perturbation of the bar's contrast says nothing about its class."""
    rng = np.random.default_rng(seed)
    if labels is None:
        labels = rng.permutation(np.arange(n) % classes)
    labels = np.asarray(labels).reshape(-1)
    patterns = class_patterns(size, classes)
    images = np.full((n, size, size), 0.3, dtype=np.float64)
    if shape:
        starts = rng.integers(0, _bar_geometry(classes, size)[3], n)
        agree = rng.random(n) < shape_agreement
        if classes == 2:
            other = 1 - labels
        else:
            other = (labels + rng.integers(1, classes, n)) % classes
        bars = np.where(agree, labels, other)
        contrasts = shape_contrast * (1 - contrast_jitter * rng.random(n))
        images += contrasts[:, None, None] * _shape_masks(classes, size, starts, bars)
    if pattern:
        images += amplitude * patterns[labels]
    images += rng.normal(0.0, noise, images.shape)
    images = np.clip(np.rint(images * 255), 0, 255).astype(np.uint8)
    return images, labels.astype(np.uint8).reshape(-1, 1)


def write_positive_control_npz(root: str | Path, amplitude: float, n_train: int = 512, n_val: int = 128,
                               n_test: int = 256, seed: int = 0, flag: str = "pneumoniamnist", size: int = 28,
                               **arrays) -> Path:
    """The positive control's dataset written as `root/<flag>[_size].npz` in the official MedMNIST layout (a grey
    single-label flag: its classes are the control's), so the study reads it as it reads any dataset: each split
    drawn by positive_control_arrays with the pattern at `amplitude` per pixel (0: no pattern) and the other
    `arrays` settings (shape_contrast, noise, shape_agreement, contrast_jitter)."""
    info = dataset_info(flag)
    if info.task == MULTILABEL or info.n_channels != 1:
        raise ValueError(f"the positive control is a grey single-label dataset; {info.flag} is not")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, (split, n) in enumerate((("train", n_train), ("val", n_val), ("test", n_test))):
        images, labels = positive_control_arrays(n, size, amplitude, amplitude > 0, seed=seed * 10 + i,
                                                 classes=info.num_classes, **arrays)
        out[f"{split}_images"], out[f"{split}_labels"] = images, labels
    path = root / npz_name(info.flag, size)
    np.savez_compressed(path, **out)
    return path
