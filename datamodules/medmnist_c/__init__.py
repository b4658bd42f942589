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
Under the resampling protocols ``clean_roundtrip.npz`` holds the clean test set resampled like the corrupted
images without a corruption (``roundtrip``): the clean reference of rBE.

Modules: ``corruptors`` (protocol constants, medmnistc registry access and fixes, seeding, one chunk's corruption),
``cache`` (cache paths, atomic writes, validated reads), ``dataset`` (``CorruptedTestSet``), ``builder`` (build
plan, parallel generation, pre-built files, ``build`` / ``load_corrupted``) and ``cli`` (``python -m
datamodules.medmnist_c build ...``). Everything public is re-exported here.
"""
from __future__ import annotations

from .builder import BuildReport, build, load_corrupted
from .cache import CACHE_FORMAT, DEFAULT_CACHE, StaleCache, cache_dir, read_cache, write_cache
from .cli import main
from .corruptors import (CORRUPTION_SIZE, MEDMNISTC_VERSION, PROTOCOL_NATIVE, PROTOCOL_OFFICIAL, PROTOCOL_UPSAMPLE,
                         SEEDING, SEVERITIES, SOURCES, MotionBlurCompat, chunk_seed, corrupt_chunk, corruption_names,
                         from_corruption_output, make_corruptor, protocol_for, resample_prebuilt,
                         roundtrip, seeded_like_medmnistc, to_corruption_input)
from .dataset import CorruptedTestSet

__all__ = [
    "BuildReport", "CACHE_FORMAT", "CORRUPTION_SIZE", "CorruptedTestSet", "DEFAULT_CACHE", "MEDMNISTC_VERSION",
    "MotionBlurCompat", "PROTOCOL_NATIVE", "PROTOCOL_OFFICIAL", "PROTOCOL_UPSAMPLE", "SEEDING", "SEVERITIES",
    "SOURCES", "StaleCache", "build", "cache_dir", "chunk_seed", "corrupt_chunk", "corruption_names",
    "from_corruption_output", "load_corrupted", "main", "make_corruptor", "protocol_for", "read_cache",
    "resample_prebuilt", "roundtrip", "seeded_like_medmnistc", "to_corruption_input", "write_cache",
]
