import numpy as np
import pytest
import torch

from core.errors import ConfigError, DataError
from datamodules.info import FLAGS_2D, MULTILABEL, dataset_info
from datamodules.medmnist import MedMNISTDataModule
from datamodules.synthetic import write_synthetic_npz
from datamodules.tensors import random_flip_crop, to_unit_range


def _module(root, flag, size=28, **kwargs):
    dm = MedMNISTDataModule(flag, size, root=str(root), verify_md5=False, batch_size=16, **kwargs)
    dm.setup()
    return dm


def _first_batch(dm, loader):
    batch = next(iter(loader))
    return dm.on_after_batch_transfer(batch, 0)


@pytest.mark.parametrize("flag", FLAGS_2D)
def test_every_flag_gives_unit_range_images_and_labels_of_its_kind(synthetic_root, flag):
    root = synthetic_root(flag, 28, n_train=40, n_val=10, n_test=10)
    dm = _module(root, flag)
    x, y = _first_batch(dm, dm.val_dataloader())
    info = dataset_info(flag)
    assert x.dtype == torch.float32 and x.shape == (10, info.n_channels, 28, 28)
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.5
    if info.task == MULTILABEL:
        assert y.dtype == torch.float32 and y.shape == (10, 14)
    else:
        assert y.dtype == torch.int64 and y.shape == (10,) and y.max() < info.num_classes
    assert dm.num_classes == info.num_classes and dm.task == info.task
    assert dm.ordinal == (flag == "retinamnist")


@pytest.mark.parametrize("size", [64, 128, 224])
def test_larger_sizes_load(synthetic_root, size):
    root = synthetic_root("bloodmnist", size, n_train=8, n_val=4, n_test=4)
    dm = _module(root, "bloodmnist", size)
    x, _ = _first_batch(dm, dm.test_dataloader())
    assert x.shape == (4, 3, size, size)


def test_as_rgb_repeats_grey_channels(synthetic_root):
    dm = _module(synthetic_root("breastmnist"), "breastmnist", as_rgb=True)
    x, _ = _first_batch(dm, dm.val_dataloader())
    assert dm.in_channels == 3 and x.shape[1] == 3
    assert torch.equal(x[:, 0], x[:, 2])


def test_real_pneumonia_split_sizes_and_md5(real_root):
    dm = MedMNISTDataModule("pneumoniamnist", 28, root=str(real_root))
    dm.prepare_data()
    dm.setup()
    assert [len(dm.split(s)) for s in ("train", "val", "test")] == [4708, 524, 624]
    assert dm.split("train").images.dtype == torch.uint8


def test_train_npz_replaces_only_the_training_split(synthetic_root, tmp_path):
    root = synthetic_root("breastmnist", n_train=30)
    other = write_synthetic_npz(tmp_path / "constructed", "breastmnist", n_train=12, seed=5, name="x.npz")
    dm = _module(root, "breastmnist", train_npz=str(other))
    assert len(dm.split("train")) == 12 and len(dm.split("val")) == 60
    with np.load(other) as npz:
        assert torch.equal(dm.split("train").images[:, 0], torch.from_numpy(npz["train_images"]))


def test_missing_train_npz_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="train_npz"):
        MedMNISTDataModule("breastmnist", train_npz=str(tmp_path / "nope.npz"))


def test_subsample_is_seeded_and_accepts_counts_and_fractions(synthetic_root):
    root = synthetic_root("breastmnist", n_train=100)
    a = _module(root, "breastmnist", subsample_train=20, subsample_seed=1).split("train").images
    b = _module(root, "breastmnist", subsample_train=20, subsample_seed=1).split("train").images
    c = _module(root, "breastmnist", subsample_train=20, subsample_seed=2).split("train").images
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert len(_module(root, "breastmnist", subsample_val=0.5).split("val")) == 30
    with pytest.raises(DataError, match="cannot keep"):
        _module(root, "breastmnist", subsample_train=1000)


def test_augmentation_keeps_shape_and_range_and_changes_images():
    torch.manual_seed(0)
    x = torch.rand(64, 3, 28, 28)
    out = random_flip_crop(x, padding=2)
    assert out.shape == x.shape and 0 <= out.min() and out.max() <= 1
    assert not torch.equal(out, x)
    unchanged = random_flip_crop(x, padding=0, hflip=False)
    assert torch.equal(unchanged, x)


def test_augmentation_only_in_training(synthetic_root):
    dm = _module(synthetic_root("breastmnist"), "breastmnist")
    batch = next(iter(dm.val_dataloader()))
    x, _ = dm.on_after_batch_transfer(batch, 0)  # no trainer attached: evaluation path
    assert torch.equal(x, batch[0].float() / 255)


def _float_train_npz(path, flag, n, size=28, seed=3):
    """A constructed-style file: float32 [0, 1] training images, uint8 labels."""
    from datamodules.synthetic import synthetic_arrays

    images, labels = synthetic_arrays(flag, size, n, seed)
    floats = (images.astype(np.float32) / 255 + np.float32(1e-3)).clip(0, 1)  # not a multiple of 1/255
    np.savez(path, train_images=floats, train_labels=labels)
    return path, floats, labels


@pytest.mark.parametrize("flag", ["breastmnist", "bloodmnist"])
def test_float32_train_npz_is_kept_as_floats_and_never_divided_by_255(synthetic_root, tmp_path, flag):
    root = synthetic_root(flag, n_train=30)
    path, floats, labels = _float_train_npz(tmp_path / "c.npz", flag, 20)
    dm = _module(root, flag, train_npz=str(path), augment=False)
    train = dm.split("train")
    assert train.images.dtype == torch.float32 and dm.split("val").images.dtype == torch.uint8
    x, y = dm.on_after_batch_transfer(train[list(range(20))], 0)
    expected = torch.from_numpy(floats)
    expected = expected.unsqueeze(1) if expected.ndim == 3 else expected.permute(0, 3, 1, 2)
    assert torch.equal(x, expected)  # unchanged: not divided by 255, not rounded to uint8 steps
    assert torch.equal(y, torch.from_numpy(labels).reshape(-1).long())


def test_float32_train_npz_is_augmented_within_its_own_values(synthetic_root, tmp_path):
    import types

    root = synthetic_root("breastmnist", n_train=30)
    path, floats, _ = _float_train_npz(tmp_path / "c.npz", "breastmnist", 16)
    dm = _module(root, "breastmnist", train_npz=str(path))
    dm.trainer = types.SimpleNamespace(training=True)  # the training path, without a Trainer
    batch = dm.split("train")[list(range(16))]
    torch.manual_seed(0)
    x, _ = dm.on_after_batch_transfer(batch, 0)
    assert x.dtype == torch.float32 and x.shape == (16, 1, 28, 28) and not torch.equal(x, batch[0])
    assert set(x.unique().tolist()) <= set(np.unique(floats).tolist())  # flips and crops move pixels only


def test_float32_train_npz_outside_unit_range_is_a_clear_error(synthetic_root, tmp_path):
    root = synthetic_root("breastmnist")
    path, floats, labels = _float_train_npz(tmp_path / "c.npz", "breastmnist", 8)
    np.savez(path, train_images=floats * 255, train_labels=labels)
    with pytest.raises(DataError, match=r"float32 images must lie in \[0, 1\]"):
        _module(root, "breastmnist", train_npz=str(path))


def test_augmenting_uint8_then_scaling_equals_scaling_then_augmenting():
    """The DataModule augments uint8 batches (a quarter of the bytes) before the [0, 1] conversion: same pixels."""
    x = torch.randint(0, 256, (16, 3, 28, 28), dtype=torch.uint8)
    torch.manual_seed(3)
    first = to_unit_range(random_flip_crop(x, 2))
    torch.manual_seed(3)
    assert torch.equal(first, random_flip_crop(to_unit_range(x), 2))


def test_keep_on_device_moves_the_splits_and_cuts_batches_there(synthetic_root):
    """Checked with the 'meta' device standing in for a GPU: every split moves, batches are cut on it."""
    from types import SimpleNamespace

    root = synthetic_root("breastmnist", n_train=40)
    dm = _module(root, "breastmnist", keep_on_device=True)
    dm.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("meta")), training=False)
    dm.setup("fit")
    for name in ("train", "val", "test"):
        split = dm.split(name)
        assert split.images.device.type == "meta" and split.targets.device.type == "meta"
    images, targets = next(iter(dm.train_dataloader()))
    assert images.device.type == "meta" and images.shape == (16, 1, 28, 28) and images.dtype == torch.uint8
    assert targets.shape == (16,)
    with pytest.raises(ConfigError, match="num_workers=0"):
        _module(root, "breastmnist", keep_on_device=True, num_workers=2)


def test_without_a_trainer_keep_on_device_leaves_the_splits_on_the_cpu(synthetic_root):
    root = synthetic_root("breastmnist", n_train=40)
    assert _module(root, "breastmnist", keep_on_device=True).split("train").images.device.type == "cpu"
