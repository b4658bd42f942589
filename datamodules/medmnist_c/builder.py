"""Building MedMNIST-C test sets: the checked build plan, parallel generation with a progress bar, loading of the
official pre-built files, and `build` / `load_corrupted`, which reuse valid cache files and (re)write the others.
"""
from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import hashlib
import logging
import multiprocessing
import os
import queue as queue_module
import threading
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np
import torch

from core.errors import ConfigError, DataError
from core.memory import freed_memory_kept, keep_freed_memory
from ..info import DatasetInfo, check_size, dataset_info
from ..npz import load_split, locate
from .cache import CACHE_FORMAT, DEFAULT_CACHE, StaleCache, _tiled, cache_dir, read_cache, write_cache
from .corruptors import (CORRUPTION_SIZE, MEDMNISTC_VERSION, PROTOCOL_NATIVE, SEEDING, SEVERITIES, corrupt_chunk,
                         corruption_names, protocol_for, resample_prebuilt, roundtrip)
from .dataset import CorruptedTestSet

log = logging.getLogger(__package__)  # "datamodules.medmnist_c", the name it logged under before the split


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
    _set_threads(1, 1, 1)  # for the pool process's life
    keep_freed_memory()
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
    with bar, freed_memory_kept():
        if processes <= 1:
            flag, images, seed, size = init
            chunks = ((name, sev, corrupt_chunk(flag, name, sev, images, seed, size)) for name, sev in tasks)
            yield from _collect(chunks, pending, bar, n)
            return
        pool = concurrent.futures.ProcessPoolExecutor(processes - 1, _pool_context(), initializer=_init_worker,
                                                      initargs=init)
        try:
            with one_thread():  # this process works beside its pool processes
                yield from _collect(_shared(tasks, pool, processes - 1, init), pending, bar, n)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _pool_context():
    """forkserver (not fork: forking a process whose torch threads hold locks can deadlock the workers); its server
    starts once per process and imports the corruption code once, so later pools start in milliseconds."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["__main__", __name__])  # no effect once the server runs
    return context


def _shared(tasks, pool, children: int, init) -> Iterator[tuple[str, int, np.ndarray]]:
    """(corruption, severity, images) as chunks complete, corrupted by `children` pool processes and by this one.

    A feeder thread hands the next task of the list to each idle child (its first submission blocks while the pool
    starts, seconds); this process takes the next task whenever it is free, so at the end nobody waits for more
    than one chunk. Each chunk is seeded on its own, so who made it does not change it."""
    flag, images, seed, size = init
    todo = collections.deque(tasks)
    finished: "queue_module.Queue" = queue_module.Queue()
    slots = threading.Semaphore(children)

    def done(future):
        finished.put(future)
        slots.release()

    def feed():
        while True:
            slots.acquire()
            try:
                task = todo.popleft()
            except IndexError:
                return
            try:
                pool.submit(_worker_chunk, task).add_done_callback(done)
            except RuntimeError:  # the pool broke or shut down: this process takes the remaining tasks
                todo.appendleft(task)
                return

    feeder = threading.Thread(target=feed, name="medmnist-c-feeder", daemon=True)
    feeder.start()
    try:
        for _ in range(len(tasks)):
            while True:
                try:  # a chunk from the pool if one is ready; wait for one only when no task is left here
                    future = finished.get(timeout=0.2) if not todo else finished.get_nowait()
                except queue_module.Empty:
                    future = None
                if future is not None:
                    yield _pool_chunk(future)
                    break
                try:
                    name, severity = todo.popleft()
                except IndexError:
                    continue
                yield name, severity, corrupt_chunk(flag, name, severity, images, seed, size)
                break
    finally:
        todo.clear()
        slots.release()  # wake the feeder so it sees the empty list and ends
        feeder.join()


def _pool_chunk(future: concurrent.futures.Future) -> tuple[str, int, np.ndarray]:
    try:
        return future.result()
    except concurrent.futures.process.BrokenProcessPool:
        raise DataError("a MedMNIST-C worker process died (out of memory?); rerun to build the corruptions "
                        "not yet in the cache (finished ones are kept)") from None


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """One thread for torch, OpenCV and ImageMagick inside the block, as each of one-per-core processes needs."""
    before = _thread_counts()
    _set_threads(1, 1, 1)
    try:
        yield
    finally:
        _set_threads(*before)


def _thread_counts() -> tuple[int, int, int]:
    from wand.resource import limits

    return torch.get_num_threads(), cv2.getNumThreads(), limits["thread"]


def _set_threads(torch_threads: int, cv2_threads: int, wand_threads: int) -> None:
    from wand.resource import limits

    torch.set_num_threads(torch_threads)
    cv2.setNumThreads(cv2_threads)
    limits["thread"] = wand_threads


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


ROUNDTRIP = "clean_roundtrip"  # cache file of the clean test set resampled like the corrupted images


def _roundtrip_clean(plan: _Plan, root, verify: bool) -> np.ndarray | None:
    """The clean test set resampled like the corrupted images (cached beside them); None under native224, and
    for pre-built files when the official 224 px file they were made from is not in `root`."""
    if plan.protocol == PROTOCOL_NATIVE:
        return None
    meta = {**plan.meta(ROUNDTRIP), "seed": None, "seeding": None, "severities": []}
    try:
        return read_cache(plan.path(ROUNDTRIP), meta, plan.image_shape, plan.clean_labels, copies=1)
    except StaleCache:
        pass
    source = plan.corruption_input
    if source is None:  # pre-built files were made from the official 224 px test images
        try:
            source, _ = load_split(locate(root, plan.info.flag, CORRUPTION_SIZE, verify=verify), "test", plan.info,
                                   CORRUPTION_SIZE)
        except DataError as why:
            log.warning("no round-tripped clean reference for pre-built MedMNIST-C (rBE uses the clean set): %s", why)
            return None
    images = roundtrip(source, plan.size)
    write_cache(plan.path(ROUNDTRIP), images, plan.clean_labels, meta)
    return images


def build(flag: str, size: int, root: str | os.PathLike, cache_root: str | os.PathLike = DEFAULT_CACHE, *,
          seed: int = 0, source: str = "upsample", prebuilt_root: str | os.PathLike | None = None,
          corruptions: Sequence[str] | None = None, workers: int | None = None, progress: bool = True,
          verify: bool = True) -> BuildReport:
    """Write (or reuse) the MedMNIST-C cache of `flag` at `size` px; `workers` processes (default: all cores)."""
    plan = _plan(flag, size, root, cache_root, seed, source, prebuilt_root, corruptions, verify)
    return _ensure(plan, workers, progress, keep=False)[0]


def load_corrupted(flag: str, size: int, root: str | os.PathLike, cache_root: str | os.PathLike = DEFAULT_CACHE, *,
                   seed: int = 0, source: str = "upsample", prebuilt_root: str | os.PathLike | None = None,
                   corruptions: Sequence[str] | None = None, as_rgb: bool = False, workers: int | None = None,
                   progress: bool = True, verify: bool = True) -> CorruptedTestSet:
    """The MedMNIST-C test set of `flag` at `size` px, building missing or stale cache files first."""
    plan = _plan(flag, size, root, cache_root, seed, source, prebuilt_root, corruptions, verify)
    _, arrays = _ensure(plan, workers, progress, keep=True)
    return CorruptedTestSet.from_arrays(plan.info, arrays, plan.clean_images, plan.clean_labels,
                                        protocol=plan.protocol, size=plan.size, as_rgb=as_rgb,
                                        meta={k: v for k, v in plan.meta("").items() if k != "corruption"},
                                        roundtrip_images=_roundtrip_clean(plan, root, verify))
