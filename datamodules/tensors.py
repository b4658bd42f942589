"""In-memory image tensors (uint8, or float32 in [0, 1]): batched indexing, conversion to [0, 1] floats, tensor
augmentation."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from .info import MULTILABEL


def channels_first_view(images: torch.Tensor, rgb: bool) -> torch.Tensor:
    """... x H x W -> ... x 1 x H x W (grey) and ... x H x W x C -> ... x C x H x W (`rgb`), as views (no copy).

    Any number of leading dimensions (a batch, severities x batch, ...): whether the last axis holds channels is
    the caller's to say, since a grey ... x H x W stack cannot be told from a colour one by its shape alone."""
    return images.movedim(-1, -3) if rgb else images.unsqueeze(-3)


def to_channels_first(images: np.ndarray, as_rgb: bool = False) -> torch.Tensor:
    """N x H x W [x C] array to an N x C x H x W tensor of the same dtype (grey repeated to 3 if as_rgb)."""
    x = torch.from_numpy(np.ascontiguousarray(images))
    x = channels_first_view(x, rgb=x.ndim != 3)
    if as_rgb and x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x.contiguous()


def to_targets(labels: np.ndarray, task: str) -> torch.Tensor:
    """Class indices (long, N) for single-label tasks; a float N x L vector for multi-label."""
    y = torch.from_numpy(np.asarray(labels))
    return y.float() if task == MULTILABEL else y.reshape(-1).long()


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] to float32 [0, 1]: the pixel contract every model and attack shares; float images are
    already in [0, 1] and pass unchanged (never divided by 255)."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images


class TensorPairDataset(Dataset):
    """(images, targets) held in memory; `__getitems__` fetches a whole batch with one index op."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor):
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        self.images, self.targets = images, targets

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.images[index], self.targets[index]

    def __getitems__(self, indices: list[int]):
        # index_select: ~10x faster than images[index] on a CPU; the index goes where the images are
        index = torch.as_tensor(indices, dtype=torch.long, device=self.images.device)
        return self.images.index_select(0, index), self.targets.index_select(0, index)


def collate_batch(batch):
    """The dataset already returns a stacked batch."""
    return batch


def subsample_indices(n: int, keep: int | float | None, seed: int) -> np.ndarray | None:
    """Sorted indices of a seeded random subset: `keep` is a count (int) or a fraction (float)."""
    if keep is None:
        return None
    count = int(round(keep * n)) if isinstance(keep, float) else int(keep)
    if not 0 < count <= n:
        from core.errors import DataError

        raise DataError(f"cannot keep {keep!r} of {n} samples: give a count in [1, {n}] or a fraction in (0, 1]")
    return np.sort(np.random.default_rng(seed).permutation(n)[:count])


def fixed_subset(n: int, keep: int | None, seed: int) -> torch.Tensor:
    """Indices of a fixed, seeded subset of at most `keep` of n items (all of them when keep is None)."""
    picked = subsample_indices(n, min(keep or n, n), seed)
    return torch.arange(n) if picked is None else torch.as_tensor(picked)


def random_flip_crop(x: torch.Tensor, padding: int, hflip: bool = True) -> torch.Tensor:
    """Per-sample random horizontal flip and random crop after reflect padding, all on x's device.

    One gather with per-sample reflected row/column indices (no padded copy, no 4-D index tensors)."""
    n, c, h, w = x.shape
    if n == 0 or (not hflip and padding <= 0):
        return x
    device = x.device
    flip = torch.rand(n, device=device) < 0.5 if hflip else None
    rows = torch.arange(h, device=device).expand(n, h)
    cols = torch.arange(w, device=device).expand(n, w)
    if flip is not None:  # a flipped image reads its columns right to left (its shift mirrors too)
        cols = torch.where(flip.view(n, 1), cols.flip(1), cols)
    if padding > 0:
        dy = torch.randint(0, 2 * padding + 1, (n, 1), device=device) - padding
        dx = torch.randint(0, 2 * padding + 1, (n, 1), device=device) - padding
        if flip is not None:
            dx = torch.where(flip.view(n, 1), -dx, dx)
        rows = _reflect(rows + dy, h)
        cols = _reflect(cols + dx, w)
    index = (rows.unsqueeze(2) * w + cols.unsqueeze(1)).view(n, 1, h * w).expand(n, c, h * w)
    return x.reshape(n, c, h * w).gather(2, index).view(n, c, h, w)


def _reflect(index: torch.Tensor, length: int) -> torch.Tensor:
    """Indices in [-length + 1, 2 * length - 2] mirrored into [0, length) without repeating the edge (reflect
    padding)."""
    index = index.abs()
    return torch.where(index > length - 1, 2 * (length - 1) - index, index)
