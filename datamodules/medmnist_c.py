"""MedMNIST-C corrupted test sets: generation with medmnistc's registry, on-disk cache, in-memory dataset, CLI.

Protocols (named in every cache file's metadata and in every score table):

* ``native224`` (size 224): the official 224 px test images are corrupted as published by medmnistc.
* ``upsample224-corrupt-box`` (sizes 28/64/128, default): each test image of the training size is upsampled to
  224 px (PIL bicubic), corrupted at 224 px with the registry's parameters, and resampled back with PIL BOX (area
  averaging; an exact 8 x 8 mean at 28 px). The registry's parameters are 224 px quantities, so this keeps their
  meaning; the price is that pixel-scale corruptions (noise, pixelate, small blurs) are largely averaged away.
* ``official224-corrupt-box`` (sizes 28/64/128 with ``source="official224"`` or ``"prebuilt"``): as above, but the
  224 px image is the official 224 px file's (or the official pre-built MedMNIST-C file is resampled).

Seeding differs from medmnistc's ``DatasetManager``, which runs one RNG stream through all corruptions in turn:
every (corruption, severity) chunk is seeded on its own from ``(seed, corruption, severity)`` (see ``chunk_seed``),
so one corruption can be built alone or in parallel with identical results. Within a chunk the semantics are the
reference's: ``random``/``np.random`` seeded like ``seed_everything``, the impulse-noise ``rng`` a
``np.random.default_rng`` of the same seed, images passed as RGB PIL images in test-set order, grey datasets
converted back with ``convert('L')``.

Cache layout (the MedMNIST-C one): ``{cache_root}/{flag}/{corruption}.npz`` at 28 px and
``{cache_root}/{flag}_{size}/{corruption}.npz`` otherwise, with ``test_images`` (5*N images, severity-major),
``test_labels`` (5*N x L) and ``meta`` (a JSON string: protocol, size, seed, medmnistc version, a hash of the
clean test set). A file whose metadata, shapes or labels disagree, or that cannot be read, is rebuilt.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import multiprocessing
import os
import random
import sys
import time
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import version as _package_version
from io import BytesIO
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np
import torch
from medmnistc.corruptions.filter import MotionBlur, MotionImage  # heavy: pulls in torchvision, wand
from medmnistc.corruptions.microscopy import StainDeposit
from medmnistc.corruptions.registry import CORRUPTIONS_DS
from PIL import Image
from torch.utils.data import Dataset

from .errors import ConfigError, DataError, MedRobustError
from .info import MULTILABEL, DatasetInfo, check_size, dataset_info
from .npz import load_split, locate

log = logging.getLogger(__name__)

SEVERITIES = (1, 2, 3, 4, 5)
CORRUPTION_SIZE = 224  # the size medmnistc's parameters are written for
PROTOCOL_NATIVE = "native224"
PROTOCOL_UPSAMPLE = "upsample224-corrupt-box"
PROTOCOL_OFFICIAL = "official224-corrupt-box"
SOURCES = ("upsample", "official224", "prebuilt")
SEEDING = "chunk-v1"  # SeedSequence([seed, crc32(corruption), severity]) per (corruption, severity)
CACHE_FORMAT = 1
DEFAULT_CACHE = "~/.medmnist-c"
MEDMNISTC_VERSION = _package_version("medmnistc")


def protocol_for(size: int, source: str = "upsample") -> str:
    """Name of the protocol that produces `size` px corrupted images from `source` images."""
    if source not in SOURCES:
        raise ConfigError(f"unknown MedMNIST-C source {source!r}: choose one of {', '.join(SOURCES)}")
    if check_size(size) == CORRUPTION_SIZE:
        return PROTOCOL_NATIVE
    return PROTOCOL_UPSAMPLE if source == "upsample" else PROTOCOL_OFFICIAL


# ---------------------------------------------------------------- medmnistc on numpy 2 / opencv 5 / Pillow 13


class MotionBlurCompat(MotionBlur):
    """medmnistc's MotionBlur with `np.frombuffer` for numpy 2's deprecated binary `np.fromstring`, and a
    greyscale test on ndim (the original compares the shape with (224, 224), which garbles grey images of any
    other size). Same RNG draws, same output where the original works."""

    def apply(self, img, severity=-1, augmentation=False):
        if augmentation:
            radius = np.random.uniform(low=self.severity_params[0][0], high=self.severity_params[-1][0], size=None)
            sigma = np.random.uniform(low=self.severity_params[0][1], high=self.severity_params[-1][1], size=None)
        else:
            radius, sigma = self.severity_params[severity]
        output = BytesIO()
        img.save(output, format="PNG")
        with MotionImage(blob=output.getvalue()) as wand_image:
            wand_image.motion_blur(radius=radius, sigma=sigma, angle=np.random.uniform(-45, 45))
            blob = wand_image.make_blob()
        decoded = cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_UNCHANGED)
        if decoded.ndim == 3:
            return np.clip(decoded[..., [2, 1, 0]], 0, 255).astype(np.uint8)  # BGR to RGB
        return np.clip(np.stack([decoded] * 3, axis=-1), 0, 255).astype(np.uint8)  # ImageMagick wrote grey


_COMPAT = {MotionBlur: MotionBlurCompat}
_INKS: dict[int, dict[str, np.ndarray]] = {}


def _process_inks() -> dict[str, np.ndarray]:
    """StainDeposit's ink masks, read once per process: medmnistc keeps an open NpzFile whose file offset a
    forked worker would share with its parent and sibling workers."""
    pid = os.getpid()
    if pid not in _INKS:
        import medmnistc

        with np.load(Path(medmnistc.__file__).parent / "assets" / "inks.npz", allow_pickle=True) as npz:
            _INKS.clear()
            _INKS[pid] = {key: npz[key] for key in npz.files}
    return _INKS[pid]


def corruption_names(flag: str) -> tuple[str, ...]:
    """The corruptions medmnistc designed for `flag`, in registry order."""
    return tuple(CORRUPTIONS_DS[dataset_info(flag).flag])


def make_corruptor(flag: str, corruption: str):
    """A private copy of the registry's corruptor for (flag, corruption), with this project's fixes applied."""
    registry = CORRUPTIONS_DS[dataset_info(flag).flag]
    if corruption not in registry:
        raise ConfigError(f"{flag} has no MedMNIST-C corruption {corruption!r}: choose from {', '.join(registry)}")
    original = registry[corruption]
    fixed = _COMPAT.get(type(original))
    instance = fixed(original.severity_params) if fixed else copy.copy(original)
    if isinstance(original, StainDeposit):
        instance._inks = _process_inks()
    return instance


# ---------------------------------------------------------------- seeding


def chunk_seed(seed: int, corruption: str, severity: int) -> int:
    """32-bit seed of one (corruption, severity) chunk, independent of every other chunk."""
    key = zlib.crc32(corruption.encode())
    return int(np.random.SeedSequence([int(seed), key, int(severity)]).generate_state(1)[0])


@contextmanager
def seeded_like_medmnistc(seed: int) -> Iterator[np.random.Generator]:
    """Seed `random` and `np.random` as medmnistc's `seed_everything` does and yield its impulse-noise `rng`;
    the global states are restored on exit. Torch is not seeded: no corruption draws from it."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed)
    try:
        yield np.random.default_rng(seed)
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


# ---------------------------------------------------------------- corrupting one chunk


def to_corruption_input(image: np.ndarray) -> Image.Image:
    """The RGB 224 px PIL image medmnistc corrupts: bicubic upsampling when `image` is smaller."""
    pil = Image.fromarray(image)
    if pil.size != (CORRUPTION_SIZE, CORRUPTION_SIZE):
        pil = pil.resize((CORRUPTION_SIZE, CORRUPTION_SIZE), Image.Resampling.BICUBIC)
    return pil.convert("RGB")


def from_corruption_output(corrupted: np.ndarray, grey: bool, size: int) -> np.ndarray:
    """A corrupted 224 px RGB array as a dataset image: 'L' for grey datasets, BOX-resampled to `size`."""
    corrupted = np.asarray(corrupted)
    if corrupted.dtype != np.uint8 or corrupted.shape != (CORRUPTION_SIZE, CORRUPTION_SIZE, 3):
        raise RuntimeError(f"medmnistc returned {corrupted.dtype} {corrupted.shape}, expected uint8 224 x 224 x 3")
    pil = Image.fromarray(corrupted)
    if grey:
        pil = pil.convert("L")
    if size != CORRUPTION_SIZE:
        pil = pil.resize((size, size), Image.Resampling.BOX)
    return np.asarray(pil)


def corrupt_chunk(flag: str, corruption: str, severity: int, images: np.ndarray, seed: int, size: int) -> np.ndarray:
    """`images` (uint8 N x h x w [x 3], any size) under one (corruption, severity 1..5), as N x size x size [x 3]."""
    if severity not in SEVERITIES:
        raise ConfigError(f"severity must be one of {SEVERITIES}, got {severity!r}")
    grey = images.ndim == 3
    instance = make_corruptor(flag, corruption)
    out = np.empty((len(images), size, size) + (() if grey else (3,)), np.uint8)
    with seeded_like_medmnistc(chunk_seed(seed, corruption, severity)) as rng:
        instance.rng = rng  # only ImpulseNoise reads it, as DatasetManager sets it
        for index, image in enumerate(images):
            corrupted = instance.apply(to_corruption_input(image), severity - 1)
            out[index] = from_corruption_output(corrupted, grey, size)
    return out


def resample_prebuilt(images: np.ndarray, size: int) -> np.ndarray:
    """Official 224 px MedMNIST-C images BOX-resampled to `size` (the protocol's last step)."""
    if size == CORRUPTION_SIZE:
        return images
    return np.stack([np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BOX)) for image in images])


# ---------------------------------------------------------------- cache files


class StaleCache(Exception):
    """A cache file that must not be trusted; the message says why."""


def cache_dir(cache_root: str | os.PathLike, flag: str, size: int) -> Path:
    """`{cache_root}/{flag}` at 28 px (the MedMNIST-C layout), `{cache_root}/{flag}_{size}` otherwise."""
    name = flag if check_size(size) == 28 else f"{flag}_{size}"
    return Path(cache_root).expanduser() / name


def write_cache(path: Path, images: np.ndarray, labels: np.ndarray, meta: dict) -> None:
    """Write one corruption's npz atomically: a temporary file in the same folder, then os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, test_images=images, test_labels=labels, meta=np.array(json.dumps(meta)))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_cache(path: Path, meta: dict, image_shape: tuple[int, ...], labels: np.ndarray) -> np.ndarray:
    """`test_images` of a cache file that matches `meta`, the shapes and the 5x-tiled `labels`, else StaleCache."""
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
    want = (len(SEVERITIES) * len(labels), *image_shape)
    if images.dtype != np.uint8 or images.shape != want:
        raise StaleCache(f"images {images.dtype} {images.shape}, expected uint8 {want}")
    if stored_labels.shape != (want[0], labels.shape[1]) or not np.array_equal(stored_labels, _tiled(labels)):
        raise StaleCache("labels differ from the clean test set")
    return images


def _tiled(labels: np.ndarray) -> np.ndarray:
    return np.tile(labels, (len(SEVERITIES), 1))


# ---------------------------------------------------------------- what to build


@dataclass(frozen=True)
class _Plan:
    """Everything a build needs, resolved and checked once."""

    info: DatasetInfo
    size: int
    source: str
    protocol: str
    seed: int | None
    clean_images: np.ndarray
    clean_labels: np.ndarray
    corruption_input: np.ndarray | None  # images handed to the corruptions; None when loading pre-built files
    prebuilt_dir: Path | None
    folder: Path
    corruptions: tuple[str, ...]
    clean_sha256: str = field(repr=False)

    @property
    def image_shape(self) -> tuple[int, ...]:
        return self.clean_images.shape[1:]

    def meta(self, corruption: str) -> dict:
        return {
            "format": CACHE_FORMAT, "flag": self.info.flag, "corruption": corruption, "size": self.size,
            "protocol": self.protocol, "source": self.source, "seed": self.seed,
            "seeding": SEEDING if self.source != "prebuilt" else None, "medmnistc": MEDMNISTC_VERSION,
            "n_images": len(self.clean_labels), "severities": list(SEVERITIES), "clean_sha256": self.clean_sha256,
        }

    def path(self, corruption: str) -> Path:
        return self.folder / f"{corruption}.npz"


def _fingerprint(images: np.ndarray, labels: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in (images, labels):
        digest.update(str((array.dtype.str, array.shape)).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _plan(flag, size, root, cache_root, seed, source, prebuilt_root, corruptions, verify) -> _Plan:
    info = dataset_info(flag)
    size = check_size(size)
    protocol = protocol_for(size, source)
    if size == CORRUPTION_SIZE and source == "upsample":
        source = "official224"  # at 224 px the test images are the official ones: one cache for both names
    if source != "prebuilt" and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
        raise ConfigError(f"MedMNIST-C seed must be a non-negative integer, got {seed!r}")
    if (source == "prebuilt") != (prebuilt_root is not None):
        raise ConfigError("give prebuilt_root exactly when source='prebuilt' (the official MedMNIST-C folder)")
    all_names = corruption_names(info.flag)
    names = all_names if corruptions is None else tuple(corruptions)
    unknown = [name for name in names if name not in all_names]
    if unknown or not names:
        raise ConfigError(f"{info.flag} has no MedMNIST-C corruption {', '.join(unknown) or '(none given)'}: "
                          f"choose from {', '.join(all_names)}")
    clean_images, clean_labels = load_split(locate(root, info.flag, size, verify=verify), "test", info, size)
    folder = cache_dir(cache_root, info.flag, size)
    corruption_input, prebuilt_dir = clean_images, None
    if source == "official224" and size != CORRUPTION_SIZE:
        corruption_input, labels_224 = load_split(locate(root, info.flag, CORRUPTION_SIZE, verify=verify), "test",
                                                  info, CORRUPTION_SIZE)
        if not np.array_equal(labels_224, clean_labels):
            raise DataError(f"the 224 px and {size} px {info.flag} test sets differ in their labels")
    if source == "prebuilt":
        corruption_input, seed = None, None
        prebuilt_dir = Path(prebuilt_root).expanduser() / info.flag
        if prebuilt_dir.resolve() == folder.resolve():
            raise ConfigError(f"the cache folder {folder} is the pre-built MedMNIST-C folder: choose another cache")
    return _Plan(info, size, source, protocol, None if seed is None else int(seed), clean_images, clean_labels,
                 corruption_input, prebuilt_dir, folder, names, _fingerprint(clean_images, clean_labels))


# ---------------------------------------------------------------- building


@dataclass(frozen=True)
class BuildReport:
    """What a build did: which corruption files it wrote and which valid ones it reused."""

    flag: str
    size: int
    protocol: str
    folder: Path
    built: tuple[str, ...]
    reused: tuple[str, ...]
    seconds: float


_WORKER: dict = {}


def _init_worker(flag: str, images: np.ndarray, seed: int, size: int) -> None:
    from wand.resource import limits

    torch.set_num_threads(1)  # one process per core: no thread pools on top
    cv2.setNumThreads(1)
    limits["thread"] = 1
    _WORKER.update(flag=flag, images=images, seed=seed, size=size)


def _worker_chunk(task: tuple[str, int]) -> tuple[str, int, np.ndarray]:
    corruption, severity = task
    w = _WORKER
    return corruption, severity, corrupt_chunk(w["flag"], corruption, severity, w["images"], w["seed"], w["size"])


def _generate(plan: _Plan, names: Sequence[str], workers: int, progress: bool) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (corruption, 5N images) as each corruption's five severity chunks complete."""
    from tqdm.auto import tqdm

    tasks = [(name, severity) for name in names for severity in SEVERITIES]
    init = (plan.info.flag, plan.corruption_input, plan.seed, plan.size)
    pending: dict[str, dict[int, np.ndarray]] = {name: {} for name in names}
    n = len(plan.clean_labels)
    bar = tqdm(total=len(tasks) * n, unit="img", desc=f"MedMNIST-C {plan.info.flag} {plan.size}px",
               disable=not progress, dynamic_ncols=True)
    processes = min(workers, len(tasks))
    with bar:
        if processes <= 1:
            flag, images, seed, size = init
            chunks = ((name, sev, corrupt_chunk(flag, name, sev, images, seed, size)) for name, sev in tasks)
            yield from _collect(chunks, pending, bar, n)
            return
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        with multiprocessing.get_context(method).Pool(processes, _init_worker, init) as pool:
            yield from _collect(pool.imap_unordered(_worker_chunk, tasks), pending, bar, n)


def _collect(chunks, pending, bar, n) -> Iterator[tuple[str, np.ndarray]]:
    for name, severity, images in chunks:
        pending[name][severity] = images
        bar.update(n)
        if len(pending[name]) == len(SEVERITIES):
            done = pending.pop(name)
            yield name, np.concatenate([done[severity] for severity in SEVERITIES])


def _load_prebuilt(plan: _Plan, name: str) -> np.ndarray:
    """One official MedMNIST-C file, checked against the clean test set and resampled to the plan's size."""
    path = plan.prebuilt_dir / f"{name}.npz"
    if not path.exists():
        raise DataError(f"{path} not found: the pre-built MedMNIST-C folder lacks {name} for {plan.info.flag}")
    try:
        with np.load(path) as npz:
            images, labels = npz["test_images"], npz["test_labels"]
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as err:
        raise DataError(f"{path} is not a readable MedMNIST-C file ({type(err).__name__}: {err})") from None
    grey = plan.info.n_channels == 1
    want = (len(SEVERITIES) * len(plan.clean_labels), CORRUPTION_SIZE, CORRUPTION_SIZE) + (() if grey else (3,))
    if images.dtype != np.uint8 or images.shape != want:
        raise DataError(f"{path}: test_images must be uint8 {want} (224 px, 5 severities), got "
                        f"{images.dtype} {images.shape}")
    if labels.shape != (want[0], plan.clean_labels.shape[1]) or not np.array_equal(labels, _tiled(plan.clean_labels)):
        raise DataError(f"{path}: test_labels do not match the {plan.size} px {plan.info.flag} test set")
    return resample_prebuilt(images, plan.size)


def _ensure(plan: _Plan, workers: int | None, progress: bool, keep: bool):
    """Reuse valid cache files, (re)build the others; returns (report, {corruption: 5N images} if keep)."""
    workers = (os.cpu_count() or 1) if workers is None else workers
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be a positive integer, got {workers!r}")
    started = time.perf_counter()
    arrays: dict[str, np.ndarray] = {}
    missing = []
    for name in plan.corruptions:
        try:
            images = read_cache(plan.path(name), plan.meta(name), plan.image_shape, plan.clean_labels)
        except StaleCache as why:
            if plan.path(name).exists():
                log.warning("rebuilding MedMNIST-C cache %s: %s", plan.path(name), why)
            missing.append(name)
            continue
        if keep:
            arrays[name] = images
    if plan.source == "prebuilt":
        produced = ((name, _load_prebuilt(plan, name)) for name in missing)
    else:
        produced = _generate(plan, missing, workers, progress) if missing else iter(())
    labels = _tiled(plan.clean_labels)
    for name, images in produced:
        write_cache(plan.path(name), images, labels, plan.meta(name))
        if keep:
            arrays[name] = images
    report = BuildReport(plan.info.flag, plan.size, plan.protocol, plan.folder, tuple(missing),
                         tuple(name for name in plan.corruptions if name not in missing),
                         time.perf_counter() - started)
    return report, {name: arrays[name] for name in plan.corruptions} if keep else None


def build(flag: str, size: int, root: str | os.PathLike, cache_root: str | os.PathLike = DEFAULT_CACHE, *,
          seed: int = 0, source: str = "upsample", prebuilt_root: str | os.PathLike | None = None,
          corruptions: Sequence[str] | None = None, workers: int | None = None, progress: bool = True,
          verify: bool = True) -> BuildReport:
    """Write (or reuse) the MedMNIST-C cache of `flag` at `size` px; `workers` processes (default: all cores)."""
    plan = _plan(flag, size, root, cache_root, seed, source, prebuilt_root, corruptions, verify)
    return _ensure(plan, workers, progress, keep=False)[0]


# ---------------------------------------------------------------- dataset


class CorruptedTestSet(Dataset):
    """Every (corruption, severity, test image) of one flag and size, in memory as uint8 tensors.

    Item i -> (image float32 C x H x W in [0, 1], label, corruption index, severity 1..5), ordered corruption by
    corruption and severity-major within one, like the MedMNIST-C files. Labels follow the main loader: a class
    index (int64) for binary/multi-class/ordinal tasks, a float32 vector for multi-label ones.
    """

    def __init__(self, info: DatasetInfo, images: torch.Tensor, clean_images: torch.Tensor, labels: np.ndarray,
                 corruptions: Sequence[str], severities: Sequence[int], *, protocol: str, size: int,
                 as_rgb: bool = False, meta: dict | None = None, image_index: np.ndarray | None = None):
        if images.shape[:3] != (len(corruptions), len(severities), len(labels)):
            raise DataError(f"corrupted images {tuple(images.shape)} do not fit {len(corruptions)} corruptions x "
                            f"{len(severities)} severities x {len(labels)} labels")
        self.info, self.protocol, self.size, self.as_rgb = info, protocol, size, as_rgb
        self.corruptions, self.severities = tuple(corruptions), tuple(severities)
        self.meta = dict(meta or {})
        self._images, self._clean, self._raw_labels = images, clean_images, labels
        #: position of each image in the full test split (a subset keeps the original positions)
        self.image_index = np.arange(len(labels)) if image_index is None else np.asarray(image_index)
        raw = torch.from_numpy(np.ascontiguousarray(labels))
        self.labels = raw.float() if info.task == MULTILABEL else raw[:, 0].long()

    @classmethod
    def from_arrays(cls, info: DatasetInfo, corrupted: dict[str, np.ndarray], clean_images: np.ndarray,
                    labels: np.ndarray, *, protocol: str, size: int, as_rgb: bool = False,
                    meta: dict | None = None) -> "CorruptedTestSet":
        """From {corruption: 5N x H x W [x 3] uint8} in the MedMNIST-C layout and the clean test split."""
        n, rgb = len(labels), info.n_channels == 3
        side = clean_images.shape[1]
        images = torch.empty((len(corrupted), len(SEVERITIES), n, info.n_channels, side, side), dtype=torch.uint8)
        for k, stacked in enumerate(corrupted.values()):  # filled in place, no stacked intermediate copy
            images[k] = _channels_first(torch.from_numpy(stacked).reshape(len(SEVERITIES), n, *stacked.shape[1:]), rgb)
        clean = _channels_first(torch.from_numpy(np.ascontiguousarray(clean_images)), rgb).contiguous()
        return cls(info, images, clean, labels, list(corrupted),
                   SEVERITIES, protocol=protocol, size=size, as_rgb=as_rgb, meta=meta)

    @property
    def raw_labels(self) -> np.ndarray:
        """Labels as MedMNIST stores them: uint8 N x 1, or N x L for multi-label tasks."""
        return self._raw_labels

    @property
    def n_images(self) -> int:
        return len(self._raw_labels)

    @property
    def channels(self) -> int:
        return 3 if self.as_rgb else self.info.n_channels

    def __len__(self) -> int:
        return len(self.corruptions) * len(self.severities) * self.n_images

    def __getitem__(self, index: int):
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} corrupted images")
        index %= len(self)
        per_corruption = len(self.severities) * self.n_images
        k, rest = divmod(index, per_corruption)
        s, n = divmod(rest, self.n_images)
        image = self._rgb(self._images[k, s, n]).float().div_(255)
        return image, self.labels[n], k, self.severities[s]

    def images_for(self, corruption: str | int, severity: int) -> torch.Tensor:
        """uint8 N x C x H x W images of one corruption (name or index) at one severity (1..5)."""
        k = self.corruptions.index(corruption) if isinstance(corruption, str) else int(corruption)
        if severity not in self.severities:
            raise ConfigError(f"severity {severity!r} not in this set: {self.severities}")
        return self._rgb(self._images[k, self.severities.index(severity)])

    def clean_images(self) -> torch.Tensor:
        """uint8 N x C x H x W clean test images the corrupted ones were made from."""
        return self._rgb(self._clean)

    def subset(self, n: int | None = None, corruptions: int | Sequence[str] | None = None,
               severities: int | Sequence[int] | None = None, seed: int = 0) -> "CorruptedTestSet":
        """A fixed, seeded subset (e.g. for per-epoch evaluation): `n` test images, some corruptions (names or
        a count drawn at random) and severities (values or a count drawn at random); the same seed gives the same
        subset."""
        rng = np.random.default_rng(seed)
        keep_k = _choose(rng, len(self.corruptions), corruptions, self.corruptions, "corruption")
        keep_s = _choose(rng, len(self.severities), severities, self.severities, "severity")
        if n is None:
            keep_n = np.arange(self.n_images)
        elif isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 0 < n <= self.n_images:
            raise ConfigError(f"subset size must be an integer in [1, {self.n_images}], got {n!r}")
        else:
            keep_n = np.sort(rng.choice(self.n_images, size=int(n), replace=False))
        index = (torch.as_tensor(keep_k), torch.as_tensor(keep_s), torch.as_tensor(keep_n))
        images = self._images[index[0]][:, index[1]][:, :, index[2]]
        return CorruptedTestSet(self.info, images, self._clean[index[2]], self._raw_labels[keep_n],
                                [self.corruptions[k] for k in keep_k], [self.severities[s] for s in keep_s],
                                protocol=self.protocol, size=self.size, as_rgb=self.as_rgb,
                                meta={**self.meta, "subset": {"n": n, "seed": seed}},
                                image_index=self.image_index[keep_n])

    def _rgb(self, images: torch.Tensor) -> torch.Tensor:
        if self.as_rgb and images.shape[-3] == 1:
            return images.expand(*images.shape[:-3], 3, *images.shape[-2:])
        return images


def _channels_first(images: torch.Tensor, rgb: bool) -> torch.Tensor:
    """... x H x W -> ... x 1 x H x W (grey) and ... x H x W x 3 -> ... x 3 x H x W (RGB), as views."""
    return images.movedim(-1, -3) if rgb else images.unsqueeze(-3)


def _choose(rng, total: int, wanted, names: Sequence, what: str) -> list[int]:
    if wanted is None:
        return list(range(total))
    if isinstance(wanted, (int, np.integer)) and not isinstance(wanted, bool):
        if not 0 < wanted <= total:
            raise ConfigError(f"number of {what} values must lie in [1, {total}], got {wanted}")
        return sorted(rng.choice(total, size=int(wanted), replace=False).tolist())
    unknown = [value for value in wanted if value not in names]
    if unknown or not wanted:
        raise ConfigError(f"unknown {what} {unknown or wanted!r}: choose from {', '.join(map(str, names))}")
    return [list(names).index(value) for value in wanted]


def load_corrupted(flag: str, size: int, root: str | os.PathLike, cache_root: str | os.PathLike = DEFAULT_CACHE, *,
                   seed: int = 0, source: str = "upsample", prebuilt_root: str | os.PathLike | None = None,
                   corruptions: Sequence[str] | None = None, as_rgb: bool = False, workers: int | None = None,
                   progress: bool = True, verify: bool = True) -> CorruptedTestSet:
    """The MedMNIST-C test set of `flag` at `size` px, building missing or stale cache files first."""
    plan = _plan(flag, size, root, cache_root, seed, source, prebuilt_root, corruptions, verify)
    _, arrays = _ensure(plan, workers, progress, keep=True)
    return CorruptedTestSet.from_arrays(plan.info, arrays, plan.clean_images, plan.clean_labels,
                                        protocol=plan.protocol, size=plan.size, as_rgb=as_rgb,
                                        meta={k: v for k, v in plan.meta("").items() if k != "corruption"})


# ---------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m datamodules.medmnist_c", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    b = commands.add_parser("build", help="prebuild the MedMNIST-C cache of one dataset and size")
    b.add_argument("--flag", required=True, help="MedMNIST 2D flag, e.g. pneumoniamnist")
    b.add_argument("--size", type=int, default=28, help="image size: 28, 64, 128 or 224 (default 28)")
    b.add_argument("--root", required=True, help="folder with the official MedMNIST npz files")
    b.add_argument("--cache", default=DEFAULT_CACHE, help=f"cache folder (default {DEFAULT_CACHE})")
    b.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    b.add_argument("--seed", type=int, default=0, help="generation seed (default 0)")
    b.add_argument("--source", choices=SOURCES, default="upsample",
                   help="upsample the size-px test images (default), use the official 224 px file, or resample "
                        "official pre-built MedMNIST-C files (--prebuilt)")
    b.add_argument("--prebuilt", default=None, help="folder of official MedMNIST-C files ({folder}/{flag}/*.npz)")
    b.add_argument("--corruptions", default=None, help="comma-separated subset (default: all of the flag's)")
    b.add_argument("--no-verify", action="store_true", help="skip the MD5 check of the clean files")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    source = "prebuilt" if args.prebuilt is not None and args.source == "upsample" else args.source
    try:
        report = build(args.flag, args.size, args.root, args.cache, seed=args.seed, source=source,
                       prebuilt_root=args.prebuilt,
                       corruptions=args.corruptions.split(",") if args.corruptions else None,
                       workers=args.workers, progress=not args.quiet, verify=not args.no_verify)
    except MedRobustError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{report.flag} {report.size}px ({report.protocol}): built {len(report.built)}, reused "
          f"{len(report.reused)} corruptions in {report.seconds:.1f} s -> {report.folder}")
    return 0


if __name__ == "__main__":
    from datamodules.medmnist_c import main as _main  # workers then pickle functions under the importable name

    raise SystemExit(_main())
