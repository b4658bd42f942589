"""Reading and checking MedMNIST npz files: MD5 against `INFO`, keys, shapes and label ranges."""
from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import numpy as np

from core.errors import DataError
from core.files import file_digest, write_text_atomic
from .info import DatasetInfo, MULTILABEL, dataset_info, download_url, expected_md5, npz_name

SPLITS = ("train", "val", "test")


def file_md5(path: str | os.PathLike) -> str:
    return file_digest(path, "md5")


def _stamp_path(path: Path) -> Path:
    """Where a passed check is remembered: a small cache file outside the (maybe read-only) data folder."""
    cache = Path(os.environ.get("MEDROBUST_CACHE") or Path.home() / ".cache" / "medrobust") / "md5"
    return cache / (hashlib.sha1(str(path.resolve()).encode()).hexdigest() + ".json")


def verify_md5(path: Path, expected: str) -> None:
    """Raise DataError unless the file's MD5 is `expected`; a stamp file caches a passed check."""
    stat = path.stat()
    key = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "md5": expected}
    stamp = _stamp_path(path)
    try:
        if json.loads(stamp.read_text()) == key:
            return
    except (OSError, ValueError):
        pass
    actual = file_md5(path)
    if actual != expected:
        raise DataError(
            f"{path} has MD5 {actual}, expected {expected}: the file is truncated or not the official "
            "release; delete it and download again (or pass verify_md5=False for a custom file)"
        )
    try:
        write_text_atomic(stamp, json.dumps(key))
    except OSError:
        pass  # a read-only data folder only costs a re-hash next time


def locate(root: str | os.PathLike, flag: str, size: int, download: bool = False, verify: bool = True) -> Path:
    """Path of the official npz for (flag, size) under root, downloading it through medmnist if asked."""
    info = dataset_info(flag)
    path = Path(root).expanduser() / npz_name(info.flag, size)
    if not path.exists() and download:
        _download(path, info.flag, size)
    if not path.exists():
        raise DataError(
            f"{path} not found: download {download_url(info.flag, size)} (MD5 {expected_md5(info.flag, size)}) "
            f"into {path.parent}, or set download=True"
        )
    if verify:
        verify_md5(path, expected_md5(info.flag, size))
    return path


def _download(path: Path, flag: str, size: int) -> None:
    import medmnist

    path.parent.mkdir(parents=True, exist_ok=True)
    cls = getattr(medmnist, medmnist.INFO[flag]["python_class"])
    try:
        cls(split="test", root=str(path.parent), size=size, download=True)
    except Exception as err:  # medmnist wraps every network failure in a bare RuntimeError
        raise DataError(
            f"could not download {path.name} ({str(err).strip().splitlines()[0]}): fetch "
            f"{download_url(flag, size)} by hand into {path.parent}"
        ) from None


def load_split(
    path: str | os.PathLike, split: str, info: DatasetInfo, size: int | None = None, allow_float: bool = False
):
    """(images N x H x W [x C], labels N x L) of one split, checked for shape and range.

    Images are uint8; with `allow_float` also float32 in [0, 1] (constructed datasets keep their perturbations)."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
    path = Path(path)
    try:
        with np.load(path) as npz:
            keys = set(npz.files)
            missing = {f"{split}_images", f"{split}_labels"} - keys
            if missing:
                raise DataError(f"{path} lacks {', '.join(sorted(missing))} (has {', '.join(sorted(keys))})")
            images, labels = npz[f"{split}_images"], npz[f"{split}_labels"]
    except DataError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise DataError(f"{path} is not a readable npz file ({err})") from None
    check_arrays(images, labels, info, size, where=f"{path.name}[{split}]", allow_float=allow_float)
    return images, labels


def check_arrays(
    images: np.ndarray, labels: np.ndarray, info: DatasetInfo, size: int | None, where: str, allow_float: bool = False
) -> None:
    """Raise DataError when images or labels do not fit the dataset's format (float32 images only if allowed)."""
    want_ndim = 3 if info.n_channels == 1 else 4
    dtypes = (np.uint8, np.float32) if allow_float else (np.uint8,)
    if images.dtype not in dtypes or images.ndim != want_ndim or images.shape[1] != images.shape[2]:
        raise DataError(
            f"{where}: images must be {' or '.join(np.dtype(d).name for d in dtypes)} "
            f"N x H x W{'' if info.n_channels == 1 else ' x 3'}, got {images.dtype} {tuple(images.shape)}"
        )
    if images.dtype == np.float32 and images.size:
        low, high = float(images.min()), float(images.max())
        if not (0.0 <= low and high <= 1.0):  # also catches NaN
            raise DataError(f"{where}: float32 images must lie in [0, 1], found [{low:.4g}, {high:.4g}]")
    if want_ndim == 4 and images.shape[3] != info.n_channels:
        raise DataError(f"{where}: expected {info.n_channels} channels, got {images.shape[3]}")
    if size is not None and images.shape[1] != size:
        raise DataError(f"{where}: images are {images.shape[1]} px, expected {size}")
    width = info.num_classes if info.task == MULTILABEL else 1
    if labels.ndim != 2 or labels.shape != (len(images), width):
        raise DataError(f"{where}: labels must be {len(images)} x {width}, got {tuple(labels.shape)}")
    high = 1 if info.task == MULTILABEL else info.num_classes - 1
    if labels.size and (labels.min() < 0 or labels.max() > high):
        raise DataError(f"{where}: labels must lie in [0, {high}], found [{labels.min()}, {labels.max()}]")
