"""MedMNIST-C generation, cache, dataset and CLI: equality with medmnistc's own output, seeding, cache trust."""
from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules import medmnist_c as mc
from core.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[2]
REAL = REPO.parent / "shared" / "data" / "medmnist"
N_REAL = 12  # real test images per flag in the fast suite


def _write_npz(root: Path, name: str, test_images: np.ndarray, test_labels: np.ndarray) -> Path:
    """An official-format npz (train/val/test) whose train and val splits are slices of the test split."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / name
    np.savez(path, train_images=test_images[:2], train_labels=test_labels[:2], val_images=test_images[:2],
             val_labels=test_labels[:2], test_images=test_images, test_labels=test_labels)
    return path


def _real_subset(flag: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    path = REAL / f"{flag}.npz"
    if not path.exists():
        pytest.skip(f"real {path} not available")
    with np.load(path) as npz:
        return npz["test_images"][:n], npz["test_labels"][:n]


def _upsample(images: np.ndarray) -> np.ndarray:
    return np.stack([np.asarray(Image.fromarray(x).resize((224, 224), Image.Resampling.BICUBIC)) for x in images])


def _smooth_rgb(n: int, size: int, seed: int) -> np.ndarray:
    """Smooth colour images with structure (blurs, pixelation and JPEG have something to act on)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(n, 7, 7, 3), dtype=np.uint8)
    return np.stack([np.asarray(Image.fromarray(c).resize((size, size), Image.Resampling.BICUBIC)) for c in coarse])


def _reference(flag: str, corruption: str, images: np.ndarray, seed: int, grey: bool) -> np.ndarray:
    """medmnistc's own DatasetManager loop for one corruption, each severity seeded with our chunk seed."""
    from medmnistc.corruptions.registry import CORRUPTIONS_DS
    from medmnistc.utils.utils import seed_everything

    corruptor = CORRUPTIONS_DS[flag][corruption]
    out = []
    for severity in mc.SEVERITIES:
        rng = seed_everything(mc.chunk_seed(seed, corruption, severity))
        if corruption == "impulse_noise":
            corruptor.rng = rng
        for image in images:
            corrupted = corruptor.apply(Image.fromarray(image).convert("RGB"), severity - 1)
            if grey:
                corrupted = Image.fromarray(corrupted).convert("L")
            out.append(np.array(corrupted))
    return np.stack(out)


def _cached(cache: Path, flag: str, size: int, corruption: str) -> np.ndarray:
    with np.load(mc.cache_dir(cache, flag, size) / f"{corruption}.npz") as npz:
        return npz["test_images"]


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """Data folders: real 28 px subsets, their bicubic 224 px versions, and synthetic RGB/multi-label files."""
    root = tmp_path_factory.mktemp("medmnist")
    for flag in ("pneumoniamnist", "breastmnist"):
        images, labels = _real_subset(flag, N_REAL)
        _write_npz(root, f"{flag}.npz", images, labels)
        _write_npz(root, f"{flag}_224.npz", _upsample(images[:2]), labels[:2])
    rng = np.random.default_rng(7)
    for flag, classes in (("dermamnist", 7), ("pathmnist", 9)):
        _write_npz(root, f"{flag}_224.npz", _smooth_rgb(2, 224, 1), rng.integers(0, classes, (2, 1), dtype=np.uint8))
        _write_npz(root, f"{flag}.npz", _smooth_rgb(6, 28, 2), rng.integers(0, classes, (6, 1), dtype=np.uint8))
    chest = np.asarray(rng.integers(0, 256, (5, 28, 28)), np.uint8)
    _write_npz(root, "chestmnist.npz", chest, rng.integers(0, 2, (5, 14), dtype=np.uint8))
    return root


# ---------------------------------------------------------------- equality with medmnistc

NATIVE_CASES = [
    ("pneumoniamnist", "gaussian_noise"), ("pneumoniamnist", "impulse_noise"), ("pneumoniamnist", "shot_noise"),
    ("pneumoniamnist", "pixelate"), ("pneumoniamnist", "jpeg_compression"), ("pneumoniamnist", "gaussian_blur"),
    ("pneumoniamnist", "brightness_up"), ("pneumoniamnist", "gamma_corr_down"),
    ("breastmnist", "motion_blur"), ("breastmnist", "speckle_noise"),
    ("dermamnist", "defocus_blur"), ("dermamnist", "characters"), ("dermamnist", "impulse_noise"),
    ("pathmnist", "saturate"), ("pathmnist", "stain_deposit"), ("pathmnist", "bubble"),
]


@pytest.mark.parametrize("flag,corruption", NATIVE_CASES)
def test_native224_equals_medmnistc_output(roots, tmp_path, flag, corruption):
    seed = 3
    report = mc.build(flag, 224, roots, tmp_path, seed=seed, corruptions=[corruption], workers=1, progress=False,
                      verify=False)
    assert report.protocol == mc.PROTOCOL_NATIVE and report.built == (corruption,)
    with np.load(roots / f"{flag}_224.npz") as npz:
        clean = npz["test_images"]
    expected = _reference(flag, corruption, clean, seed, grey=clean.ndim == 3)
    np.testing.assert_array_equal(_cached(tmp_path, flag, 224, corruption), expected)


def test_small_sizes_follow_upsample_corrupt_box_protocol(tmp_path):
    flag, corruptions, seed = "breastmnist", ["motion_blur", "speckle_noise", "brightness_down"], 5
    clean, labels = _real_subset(flag, 3)
    _write_npz(tmp_path / "data", f"{flag}.npz", clean, labels)
    report = mc.build(flag, 28, tmp_path / "data", tmp_path, seed=seed, corruptions=corruptions, workers=1,
                      progress=False, verify=False)
    assert report.protocol == mc.PROTOCOL_UPSAMPLE
    for corruption in corruptions:
        at_224 = _reference(flag, corruption, _upsample(clean), seed, grey=True)
        expected = np.stack([np.asarray(Image.fromarray(x).resize((28, 28), Image.Resampling.BOX)) for x in at_224])
        np.testing.assert_array_equal(_cached(tmp_path, flag, 28, corruption), expected)


def test_official224_source_corrupts_the_224_file(roots, tmp_path):
    flag, seed = "dermamnist", 2
    images_224, labels = _smooth_rgb(3, 224, 8), np.array([[0], [3], [6]], np.uint8)
    images_28 = np.stack([np.asarray(Image.fromarray(x).resize((28, 28), Image.Resampling.BOX)) for x in images_224])
    _write_npz(tmp_path / "data", "dermamnist_224.npz", images_224, labels)
    _write_npz(tmp_path / "data", "dermamnist.npz", images_28, labels)
    report = mc.build(flag, 28, tmp_path / "data", tmp_path / "cache", seed=seed, source="official224",
                      corruptions=["characters"], workers=1, progress=False, verify=False)
    assert report.protocol == mc.PROTOCOL_OFFICIAL
    expected = np.stack([np.asarray(Image.fromarray(x).resize((28, 28), Image.Resampling.BOX))
                         for x in _reference(flag, "characters", images_224, seed, grey=False)])
    np.testing.assert_array_equal(_cached(tmp_path / "cache", flag, 28, "characters"), expected)
    with pytest.raises(DataError, match="differ"):  # roots' 28 px file (6 images) and 224 px file (2) disagree
        mc.build(flag, 28, roots, tmp_path / "other", source="official224", corruptions=["pixelate"],
                 workers=1, progress=False, verify=False)


@pytest.fixture(scope="module")
def official_224(tmp_path_factory):
    """A 224 px pneumoniamnist file and the folder medmnistc's own DatasetManager generates from it."""
    from medmnistc.dataset_manager import DatasetManager

    base = tmp_path_factory.mktemp("official")
    images, labels = _real_subset("pneumoniamnist", 4)
    _write_npz(base / "data", "pneumoniamnist.npz", images, labels)
    _write_npz(base / "data", "pneumoniamnist_224.npz", _upsample(images), labels)
    state = (np.random.get_state(), torch.get_rng_state())
    DatasetManager(str(base / "data"), str(base / "medmnistc"), random_seed=0).create_dataset("pneumoniamnist")
    np.random.set_state(state[0])
    torch.set_rng_state(state[1])
    return base


DETERMINISTIC = ["pixelate", "jpeg_compression", "gaussian_blur", "brightness_up", "brightness_down",
                 "contrast_up", "contrast_down", "gamma_corr_up", "gamma_corr_down"]


def test_files_match_medmnistc_dataset_manager(official_224, tmp_path):
    """Layout (severity-major images, tiled labels) and conversions equal the reference generator's files; only
    the random corruptions differ, by design of the per-chunk seeding."""
    mc.build("pneumoniamnist", 224, official_224 / "data", tmp_path, corruptions=DETERMINISTIC, workers=1,
             progress=False, verify=False)
    for corruption in DETERMINISTIC:
        with np.load(official_224 / "medmnistc" / "pneumoniamnist" / f"{corruption}.npz") as ref, \
                np.load(mc.cache_dir(tmp_path, "pneumoniamnist", 224) / f"{corruption}.npz") as ours:
            np.testing.assert_array_equal(ours["test_images"], ref["test_images"])
            np.testing.assert_array_equal(ours["test_labels"], ref["test_labels"])


@pytest.mark.parametrize("size", [224, 28])
def test_prebuilt_files_are_loaded_and_resampled(official_224, tmp_path, size):
    corrupted = mc.load_corrupted("pneumoniamnist", size, official_224 / "data", tmp_path, source="prebuilt",
                                  prebuilt_root=official_224 / "medmnistc", progress=False, verify=False)
    assert corrupted.protocol == (mc.PROTOCOL_NATIVE if size == 224 else mc.PROTOCOL_OFFICIAL)
    assert corrupted.meta["source"] == "prebuilt" and corrupted.meta["seed"] is None
    for corruption in ("shot_noise", "pixelate"):
        with np.load(official_224 / "medmnistc" / "pneumoniamnist" / f"{corruption}.npz") as ref:
            expected = ref["test_images"]
        if size != 224:
            expected = np.stack([np.asarray(Image.fromarray(x).resize((size, size), Image.Resampling.BOX))
                                 for x in expected])
        ours = torch.cat([corrupted.images_for(corruption, s)[:, 0] for s in mc.SEVERITIES]).numpy()
        np.testing.assert_array_equal(ours, expected)


def test_prebuilt_with_wrong_labels_is_refused(official_224, tmp_path):
    data = tmp_path / "data"
    with np.load(official_224 / "data" / "pneumoniamnist.npz") as npz:
        _write_npz(data, "pneumoniamnist.npz", npz["test_images"], 1 - npz["test_labels"])
    with pytest.raises(DataError, match="test_labels do not match"):
        mc.build("pneumoniamnist", 28, data, tmp_path / "cache", source="prebuilt",
                 prebuilt_root=official_224 / "medmnistc", corruptions=["pixelate"], progress=False, verify=False)


def test_motion_blur_fix_equals_package_and_handles_small_grey():
    from medmnistc.corruptions.filter import MotionBlur

    params = [(5, 5), (9, 7), (9, 10), (13, 10), (17, 12)]
    grey = Image.fromarray(_upsample(_smooth_rgb(1, 28, 4)[..., 0])[0]).convert("RGB")
    colour = Image.fromarray(_smooth_rgb(1, 224, 5)[0])
    for image in (grey, colour):
        np.random.seed(11)
        expected = MotionBlur(params).apply(image, 3)
        np.random.seed(11)
        np.testing.assert_array_equal(mc.MotionBlurCompat(params).apply(image, 3), expected)
    small = Image.fromarray(_smooth_rgb(1, 28, 6)[0, ..., 0]).convert("RGB")
    assert mc.MotionBlurCompat(params).apply(small, 0).shape == (28, 28, 3)  # the package returns (28, 3)


# ---------------------------------------------------------------- seeding


def test_same_seed_same_images_other_seed_other_noise(roots, tmp_path):
    names = ["impulse_noise", "shot_noise", "contrast_up"]
    for cache, seed in (("a", 0), ("b", 0), ("c", 1)):
        mc.build("pneumoniamnist", 28, roots, tmp_path / cache, seed=seed, corruptions=names, workers=1,
                 progress=False, verify=False)
    for name in names:
        a, b, c = (_cached(tmp_path / cache, "pneumoniamnist", 28, name) for cache in "abc")
        np.testing.assert_array_equal(a, b)
        if name == "contrast_up":
            np.testing.assert_array_equal(a, c)  # deterministic corruption: the seed does not matter
        else:
            assert not np.array_equal(a, c)


def test_chunks_are_independent_of_order_and_workers(roots, tmp_path):
    """With 2 workers this process and a pool process share the chunks; each chunk is the same whoever made it."""
    names = ["impulse_noise", "shot_noise", "contrast_down"]
    mc.build("pneumoniamnist", 28, roots, tmp_path / "all", corruptions=names, workers=2, progress=False,
             verify=False)
    for name in names:
        mc.build("pneumoniamnist", 28, roots, tmp_path / name, corruptions=[name], workers=1, progress=False,
                 verify=False)
        np.testing.assert_array_equal(_cached(tmp_path / "all", "pneumoniamnist", 28, name),
                                      _cached(tmp_path / name, "pneumoniamnist", 28, name))


def test_the_building_process_and_its_pool_share_the_work(monkeypatch):
    """The parallel build runs chunks here while the pool starts, and the pool runs the others."""
    from datamodules.medmnist_c import builder

    here = []
    real = builder.corrupt_chunk
    monkeypatch.setattr(builder, "corrupt_chunk", lambda flag, name, sev, *rest: here.append((name, sev)) or
                        real(flag, name, sev, *rest))
    tasks = [(name, severity) for name in ("impulse_noise", "shot_noise") for severity in mc.SEVERITIES]
    init = ("pneumoniamnist", np.zeros((4, 28, 28), np.uint8), 0, 28)
    with concurrent.futures.ProcessPoolExecutor(1, multiprocessing.get_context("forkserver"),
                                                initializer=builder._init_worker, initargs=init) as pool:
        done = [(name, severity) for name, severity, _ in builder._shared(tasks, pool, 1, init)]
    assert sorted(done) == sorted(tasks)
    assert here and set(here) < set(tasks)  # both made some chunks


def test_chunk_seeds_differ_and_global_rng_is_restored():
    seeds = {mc.chunk_seed(0, c, s) for c in ("gaussian_noise", "shot_noise") for s in mc.SEVERITIES}
    assert len(seeds) == 10 and mc.chunk_seed(0, "shot_noise", 2) != mc.chunk_seed(1, "shot_noise", 2)
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    mc.corrupt_chunk("pneumoniamnist", "gaussian_noise", 2, np.zeros((2, 28, 28), np.uint8), 0, 28)
    assert np.random.rand() == expected


# ---------------------------------------------------------------- cache


def test_second_build_reuses_cache_without_recomputing(roots, tmp_path, monkeypatch):
    names = ["brightness_up", "speckle_noise"]
    first = mc.build("breastmnist", 28, roots, tmp_path, corruptions=names, workers=1, progress=False, verify=False)
    assert first.built == tuple(names) and first.reused == ()
    folder = mc.cache_dir(tmp_path, "breastmnist", 28)
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}

    def forbidden(*args, **kwargs):
        raise AssertionError("a valid cache file was recomputed")

    monkeypatch.setattr(mc.builder, "corrupt_chunk", forbidden)  # where build looks it up
    second = mc.build("breastmnist", 28, roots, tmp_path, corruptions=names, workers=1, progress=False, verify=False)
    assert second.built == () and second.reused == tuple(names)
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == stamps


def _damage(path: Path, how: str) -> None:
    with np.load(path) as npz:
        images, labels, meta = npz["test_images"], npz["test_labels"], json.loads(str(npz["meta"]))
    if how == "garbage":
        path.write_bytes(os.urandom(2000))
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "meta":
        mc.write_cache(path, images, labels, {**meta, "seed": meta["seed"] + 1})
    elif how == "protocol":
        mc.write_cache(path, images, labels, {**meta, "protocol": mc.PROTOCOL_NATIVE})
    elif how == "shape":
        mc.write_cache(path, images[:-1], labels[:-1], meta)
    elif how == "labels":
        mc.write_cache(path, images, 1 - labels, meta)
    elif how == "no_meta":
        np.savez_compressed(path, test_images=images, test_labels=labels)


@pytest.fixture(scope="module")
def good_cache(roots, tmp_path_factory):
    cache = tmp_path_factory.mktemp("good")
    mc.build("breastmnist", 28, roots, cache, corruptions=CACHE_NAMES, workers=1, progress=False, verify=False)
    return cache


CACHE_NAMES = ["brightness_up", "speckle_noise"]


@pytest.mark.parametrize("how", ["garbage", "truncated", "meta", "protocol", "shape", "labels", "no_meta"])
def test_damaged_cache_file_is_rebuilt(roots, good_cache, tmp_path, how):
    shutil.copytree(good_cache, tmp_path, dirs_exist_ok=True)
    path = mc.cache_dir(tmp_path, "breastmnist", 28) / "speckle_noise.npz"
    good = _cached(tmp_path, "breastmnist", 28, "speckle_noise")
    _damage(path, how)
    report = mc.build("breastmnist", 28, roots, tmp_path, corruptions=CACHE_NAMES, workers=1, progress=False,
                      verify=False)
    assert report.built == ("speckle_noise",) and report.reused == ("brightness_up",)
    np.testing.assert_array_equal(_cached(tmp_path, "breastmnist", 28, "speckle_noise"), good)


def test_cache_of_another_test_set_is_not_trusted(roots, tmp_path):
    mc.build("breastmnist", 28, roots, tmp_path / "cache", corruptions=["pixelate"], workers=1, progress=False,
             verify=False)
    images, labels = _real_subset("breastmnist", N_REAL)
    _write_npz(tmp_path / "other", "breastmnist.npz", images[::-1].copy(), labels[::-1].copy())
    report = mc.build("breastmnist", 28, tmp_path / "other", tmp_path / "cache", corruptions=["pixelate"],
                      workers=1, progress=False, verify=False)
    assert report.built == ("pixelate",)


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "x.npz"
    mc.write_cache(path, np.zeros((5, 2, 2), np.uint8), np.zeros((5, 1), np.uint8), {"a": 1})
    before = path.read_bytes()

    def crash(handle, **arrays):
        handle.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez_compressed", crash)
    with pytest.raises(OSError):
        mc.write_cache(path, np.ones((5, 2, 2), np.uint8), np.zeros((5, 1), np.uint8), {"a": 2})
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["x.npz"]


def test_sizes_use_separate_folders(tmp_path):
    assert mc.cache_dir(tmp_path, "pneumoniamnist", 28) == tmp_path / "pneumoniamnist"
    assert mc.cache_dir(tmp_path, "pneumoniamnist", 64) == tmp_path / "pneumoniamnist_64"


# ---------------------------------------------------------------- real data, dataset and subsets


@pytest.fixture(scope="module")
def pneumonia(roots, tmp_path_factory):
    """All 13 corruptions of the real PneumoniaMNIST subset at 28 px, built with two workers."""
    cache = tmp_path_factory.mktemp("cache")
    return mc.load_corrupted("pneumoniamnist", 28, roots, cache, workers=2, progress=False, verify=False)


def test_real_subset_has_every_corruption_and_severity(pneumonia, roots):
    with np.load(roots / "pneumoniamnist.npz") as npz:
        clean, labels = npz["test_images"], npz["test_labels"]
    assert pneumonia.corruptions == mc.corruption_names("pneumoniamnist") and len(pneumonia.corruptions) == 13
    assert len(pneumonia) == 13 * 5 * N_REAL and pneumonia.protocol == mc.PROTOCOL_UPSAMPLE
    np.testing.assert_array_equal(pneumonia.clean_images()[:, 0].numpy(), clean)
    np.testing.assert_array_equal(pneumonia.labels.numpy(), labels[:, 0])
    for corruption in pneumonia.corruptions:
        change = [np.abs(pneumonia.images_for(corruption, s).float() - torch.from_numpy(clean)[:, None]).mean()
                  for s in mc.SEVERITIES]
        assert change[-1] > 0, corruption
        if corruption.startswith(("brightness", "contrast", "gamma")):
            assert all(a < b for a, b in zip(change, change[1:])), (corruption, change)


def test_items_match_batched_access_and_severity_major_files(pneumonia):
    n = pneumonia.n_images
    k, s, i = 4, 3, 7
    image, label, corruption, severity = pneumonia[(k * 5 + (s - 1)) * n + i]
    assert (corruption, severity) == (k, s) and image.dtype == torch.float32 and image.shape == (1, 28, 28)
    assert label.dtype == torch.int64 and label == pneumonia.labels[i]
    torch.testing.assert_close(image, pneumonia.images_for(pneumonia.corruptions[k], s)[i].float() / 255)
    batch = next(iter(torch.utils.data.DataLoader(pneumonia, batch_size=6)))
    assert batch[0].shape == (6, 1, 28, 28) and batch[1].dtype == torch.int64 and batch[3].tolist() == [1] * 6


def test_as_rgb_repeats_grey_channels(pneumonia):
    rgb = mc.CorruptedTestSet(pneumonia.info, pneumonia._images, pneumonia._clean, pneumonia.raw_labels,
                              pneumonia.corruptions, pneumonia.severities, protocol=pneumonia.protocol, size=28,
                              as_rgb=True)
    grey = pneumonia.images_for("pixelate", 2)
    assert rgb.images_for("pixelate", 2).shape == (N_REAL, 3, 28, 28) and rgb[0][0].shape == (3, 28, 28)
    assert torch.equal(rgb.images_for("pixelate", 2), grey.expand(-1, 3, -1, -1))


def test_rgb_and_multilabel_datasets(roots, tmp_path):
    derma = mc.load_corrupted("dermamnist", 28, roots, tmp_path, corruptions=["black_corner"], workers=1,
                              progress=False, verify=False)
    stored = _cached(tmp_path, "dermamnist", 28, "black_corner")  # 5N x 28 x 28 x 3
    assert torch.equal(derma.images_for("black_corner", 2), torch.from_numpy(stored[6:12]).permute(0, 3, 1, 2))
    chest = mc.load_corrupted("chestmnist", 28, roots, tmp_path, corruptions=["brightness_up"], workers=1,
                              progress=False, verify=False)
    _, label, _, _ = chest[3]
    assert label.dtype == torch.float32 and label.shape == (14,)
    with np.load(roots / "chestmnist.npz") as npz:
        np.testing.assert_array_equal(label.numpy(), npz["test_labels"][3])


def test_subset_is_fixed_by_seed_and_consistent(pneumonia):
    a = pneumonia.subset(n=10, corruptions=3, severities=2, seed=4)
    b = pneumonia.subset(n=10, corruptions=3, severities=2, seed=4)
    c = pneumonia.subset(n=10, corruptions=3, severities=2, seed=5)
    assert (a.corruptions, a.severities) == (b.corruptions, b.severities) and len(a) == 3 * 2 * 10
    assert torch.equal(a.clean_images(), b.clean_images())
    assert (a.corruptions, a.severities, a.labels.tolist()) != (c.corruptions, c.severities, c.labels.tolist()) \
        or not torch.equal(a.clean_images(), c.clean_images())
    named = pneumonia.subset(n=5, corruptions=["shot_noise"], severities=[5], seed=0)
    keep = named.image_index
    assert len(set(keep.tolist())) == 5
    assert torch.equal(named.clean_images(), pneumonia.clean_images()[keep])
    assert torch.equal(named.images_for("shot_noise", 5), pneumonia.images_for("shot_noise", 5)[keep])
    assert torch.equal(named.labels, pneumonia.labels[keep])
    with pytest.raises(ConfigError):
        pneumonia.subset(n=0)
    with pytest.raises(ConfigError):
        pneumonia.subset(corruptions=["no_such"])


# ---------------------------------------------------------------- errors and CLI


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(flag="nomnist"), DataError, "unknown MedMNIST flag"),
    (dict(size=32), DataError, "unknown MedMNIST size"),
    (dict(flag="octmnist"), DataError, "not found"),
    (dict(corruptions=["defocus_blur"]), ConfigError, "no MedMNIST-C corruption"),
    (dict(seed=-1), ConfigError, "seed"),
    (dict(workers=0), ConfigError, "workers"),
    (dict(source="prebuilt"), ConfigError, "prebuilt_root"),
    (dict(source="magic"), ConfigError, "unknown MedMNIST-C source"),
])
def test_bad_input_is_one_clear_error(roots, tmp_path, kwargs, error, match):
    args = dict(flag="breastmnist", size=28, corruptions=["pixelate"], workers=1)
    args.update(kwargs)
    with pytest.raises(error, match=match) as raised:
        mc.build(args.pop("flag"), args.pop("size"), roots, tmp_path, progress=False, verify=False, **args)
    assert "\n" not in str(raised.value)


def test_cli_errors_exit_non_zero_with_one_line(roots, tmp_path, capsys):
    assert mc.main(["build", "--flag", "nomnist", "--root", str(roots), "--cache", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown MedMNIST flag") and "\n" not in err
    assert mc.main(["build", "--flag", "octmnist", "--size", "64", "--root", str(roots), "--cache",
                    str(tmp_path)]) == 2
    assert "octmnist_64.npz not found" in capsys.readouterr().err


def test_cli_builds_with_workers(roots, tmp_path, capsys):
    assert mc.main(["build", "--flag", "breastmnist", "--size", "28", "--root", str(roots), "--cache", str(tmp_path),
                    "--workers", "2", "--no-verify", "--quiet", "--corruptions", "brightness_up,contrast_down"]) == 0
    out = capsys.readouterr().out
    assert "built 2, reused 0" in out and mc.PROTOCOL_UPSAMPLE in out
    assert sorted(p.name for p in (tmp_path / "breastmnist").iterdir()) == ["brightness_up.npz", "contrast_down.npz"]


@pytest.mark.slow
def test_cli_module_entry_point(roots, tmp_path):
    command = [sys.executable, "-m", "datamodules.medmnist_c", "build", "--flag", "breastmnist", "--root", str(roots),
               "--cache", str(tmp_path), "--workers", "2", "--no-verify", "--quiet", "--corruptions", "pixelate"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "built 1, reused 0" in result.stdout
    bad = subprocess.run(command[:4] + ["--flag", "nomnist"] + command[6:], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: unknown MedMNIST flag")
    assert len(bad.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------- full real build


@pytest.mark.slow
@pytest.mark.parametrize("flag,n_test", [("breastmnist", 156), ("pneumoniamnist", 624)])
def test_full_real_build_and_reuse(tmp_path, flag, n_test):
    if not (REAL / f"{flag}.npz").exists():
        pytest.skip("real data not available")
    first = mc.build(flag, 28, REAL, tmp_path, progress=False)
    assert first.built == mc.corruption_names(flag)
    corrupted = mc.load_corrupted(flag, 28, REAL, tmp_path, progress=False)
    assert len(corrupted) == len(first.built) * 5 * n_test
    assert mc.build(flag, 28, REAL, tmp_path, progress=False).reused == mc.corruption_names(flag)
