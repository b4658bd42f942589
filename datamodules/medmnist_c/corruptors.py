"""medmnistc's corruptions as this project runs them: protocol constants, registry access with fixes for
numpy 2 / opencv 5 / Pillow 13, per-chunk seeding and the corruption of one (corruption, severity) chunk.

See the package docstring for the protocols and the seeding scheme.
"""
from __future__ import annotations

import copy
import os
import random
import zlib
from contextlib import contextmanager
from importlib.metadata import version as _package_version
from io import BytesIO
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
from medmnistc.corruptions.filter import MotionBlur, MotionImage  # heavy: pulls in torchvision, wand
from medmnistc.corruptions.microscopy import StainDeposit
from medmnistc.corruptions.registry import CORRUPTIONS_DS
from PIL import Image

from core.errors import ConfigError
from ..info import check_size, dataset_info

SEVERITIES = (1, 2, 3, 4, 5)
CORRUPTION_SIZE = 224  # the size medmnistc's parameters are written for
PROTOCOL_NATIVE = "native224"
PROTOCOL_UPSAMPLE = "upsample224-corrupt-box"
PROTOCOL_OFFICIAL = "official224-corrupt-box"
SOURCES = ("upsample", "official224", "prebuilt")
SEEDING = "chunk-v1"  # SeedSequence([seed, crc32(corruption), severity]) per (corruption, severity)
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


def roundtrip(images: np.ndarray, size: int) -> np.ndarray:
    """`images` (uint8 N x h x w [x 3]) resampled exactly as the corrupted ones are, without a corruption: the
    clean reference of the resampling protocols, so BE/rBE do not mix resampling with corruption."""
    grey = images.ndim == 3
    out = np.empty((len(images), size, size) + (() if grey else (3,)), np.uint8)
    for index, image in enumerate(images):
        out[index] = from_corruption_output(np.asarray(to_corruption_input(image)), grey, size)
    return out


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
