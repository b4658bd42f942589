import shutil

import numpy as np
import pytest

from core.errors import DataError
from datamodules.info import dataset_info
from datamodules.npz import load_split, locate


def test_real_file_passes_md5_and_loads(real_root):
    path = locate(real_root, "breastmnist", 28)
    images, labels = load_split(path, "test", dataset_info("breastmnist"), 28)
    assert images.shape == (156, 28, 28) and labels.shape == (156, 1)


def test_wrong_md5_is_rejected_and_names_both_hashes(real_root, tmp_path):
    copy = tmp_path / "breastmnist.npz"
    shutil.copy(real_root / "breastmnist.npz", copy)
    with open(copy, "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(DataError, match="expected 750601b1f35ba3300ea97c75c52ff8f6"):
        locate(tmp_path, "breastmnist", 28)


def test_md5_stamp_is_invalidated_when_the_file_changes(real_root, tmp_path):
    copy = tmp_path / "breastmnist.npz"
    shutil.copy(real_root / "breastmnist.npz", copy)
    from datamodules.npz import _stamp_path

    locate(tmp_path, "breastmnist", 28)
    assert _stamp_path(copy).exists() and not (tmp_path / "breastmnist.npz.md5ok").exists()
    copy.write_bytes(copy.read_bytes()[:-10])
    with pytest.raises(DataError, match="MD5"):
        locate(tmp_path, "breastmnist", 28)


def test_missing_file_names_file_md5_and_folder(tmp_path):
    with pytest.raises(DataError) as err:
        locate(tmp_path, "dermamnist", 64)
    message = str(err.value)
    assert "dermamnist_64.npz" in message and "MD5" in message and str(tmp_path) in message


def test_missing_download_server_is_a_clear_error(tmp_path, monkeypatch):
    import medmnist

    def offline(*args, **kwargs):
        raise RuntimeError("Automatic download failed!")

    monkeypatch.setattr(medmnist, "BreastMNIST", offline)
    with pytest.raises(DataError, match="could not download breastmnist.npz"):
        locate(tmp_path, "breastmnist", 28, download=True)


def test_truncated_file_is_a_clear_error(real_root, tmp_path):
    bad = tmp_path / "breastmnist.npz"
    bad.write_bytes((real_root / "breastmnist.npz").read_bytes()[:5000])
    with pytest.raises(DataError, match="not a readable npz"):
        load_split(bad, "train", dataset_info("breastmnist"), 28)


def _write(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_missing_keys_wrong_shapes_and_labels_out_of_range(tmp_path):
    info = dataset_info("breastmnist")
    ok_images, ok_labels = np.zeros((4, 28, 28), np.uint8), np.zeros((4, 1), np.uint8)
    path = _write(tmp_path / "a.npz", train_images=ok_images)
    with pytest.raises(DataError, match="lacks train_labels"):
        load_split(path, "train", info, 28)
    path = _write(tmp_path / "b.npz", train_images=np.zeros((4, 28, 28, 3), np.uint8), train_labels=ok_labels)
    with pytest.raises(DataError, match="images must be uint8"):
        load_split(path, "train", info, 28)
    path = _write(tmp_path / "c.npz", train_images=ok_images, train_labels=np.full((4, 1), 2, np.uint8))
    with pytest.raises(DataError, match=r"labels must lie in \[0, 1\]"):
        load_split(path, "train", info, 28)
    path = _write(tmp_path / "d.npz", train_images=ok_images, train_labels=np.zeros((3, 1), np.uint8))
    with pytest.raises(DataError, match="labels must be 4 x 1"):
        load_split(path, "train", info, 28)
    path = _write(tmp_path / "e.npz", train_images=ok_images, train_labels=ok_labels)
    with pytest.raises(DataError, match="28 px, expected 64"):
        load_split(path, "train", info, 64)
    assert load_split(path, "train", info, 28)[0].shape == (4, 28, 28)


def test_float32_images_only_where_allowed_and_only_in_unit_range(tmp_path):
    info = dataset_info("breastmnist")
    labels = np.zeros((4, 1), np.uint8)
    floats = np.random.default_rng(0).random((4, 28, 28)).astype(np.float32)
    path = _write(tmp_path / "f.npz", train_images=floats, train_labels=labels)
    with pytest.raises(DataError, match="images must be uint8 N x H x W, got float32"):
        load_split(path, "train", info, 28)  # official files stay uint8
    images, _ = load_split(path, "train", info, 28, allow_float=True)
    assert images.dtype == np.float32 and np.array_equal(images, floats)
    path = _write(tmp_path / "g.npz", train_images=floats * 2, train_labels=labels)
    with pytest.raises(DataError, match=r"float32 images must lie in \[0, 1\]"):
        load_split(path, "train", info, 28, allow_float=True)
    nan = floats.copy()
    nan[0, 0, 0] = np.nan
    path = _write(tmp_path / "h.npz", train_images=nan, train_labels=labels)
    with pytest.raises(DataError, match=r"must lie in \[0, 1\]"):
        load_split(path, "train", info, 28, allow_float=True)
    path = _write(tmp_path / "i.npz", train_images=floats.astype(np.float64), train_labels=labels)
    with pytest.raises(DataError, match="uint8 or float32"):
        load_split(path, "train", info, 28, allow_float=True)
