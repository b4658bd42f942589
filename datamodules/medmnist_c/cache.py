"""MedMNIST-C cache files: folder layout, atomic writes and validated reads (`StaleCache` when not trusted).

See the package docstring for the layout and the metadata each file carries.
"""
from __future__ import annotations

import json
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from core.files import atomic_write

from ..info import check_size
from .corruptors import SEVERITIES

CACHE_FORMAT = 1
DEFAULT_CACHE = "~/.medmnist-c"


class StaleCache(Exception):
    """A cache file that must not be trusted; the message says why."""


def cache_dir(cache_root: str | os.PathLike, flag: str, size: int) -> Path:
    """`{cache_root}/{flag}` at 28 px (the MedMNIST-C layout), `{cache_root}/{flag}_{size}` otherwise."""
    name = flag if check_size(size) == 28 else f"{flag}_{size}"
    return Path(cache_root).expanduser() / name


def write_cache(path: Path, images: np.ndarray, labels: np.ndarray, meta: dict) -> None:
    """Write one corruption's npz atomically (core.files.atomic_write)."""
    with atomic_write(path, "wb") as handle:
        np.savez_compressed(handle, test_images=images, test_labels=labels, meta=np.array(json.dumps(meta)))


def read_cache(path: Path, meta: dict, image_shape: tuple[int, ...], labels: np.ndarray,
               copies: int = len(SEVERITIES)) -> np.ndarray:
    """`test_images` of a cache file that matches `meta`, the shapes and the `copies`-tiled `labels` (one copy per
    severity; 1 for the round-tripped clean set), else StaleCache."""
    try:
        with np.load(path) as npz:
            if set(npz.files) != {"test_images", "test_labels", "meta"}:
                raise StaleCache(f"keys {sorted(npz.files)}")
            found = json.loads(str(npz["meta"]))
            if found != meta:
                changed = sorted(k for k in set(found) | set(meta) if found.get(k) != meta.get(k))
                raise StaleCache(f"metadata differs in {', '.join(changed)}")
            images, stored_labels = npz["test_images"], npz["test_labels"]
    except FileNotFoundError:
        raise StaleCache("missing") from None
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as err:
        raise StaleCache(f"unreadable ({type(err).__name__}: {err})") from None
    want = (copies * len(labels), *image_shape)
    if images.dtype != np.uint8 or images.shape != want:
        raise StaleCache(f"images {images.dtype} {images.shape}, expected uint8 {want}")
    if stored_labels.shape != (want[0], labels.shape[1]) or not np.array_equal(stored_labels, _tiled(labels, copies)):
        raise StaleCache("labels differ from the clean test set")
    return images


def _tiled(labels: np.ndarray, copies: int = len(SEVERITIES)) -> np.ndarray:
    return np.tile(labels, (copies, 1))
