"""LightningDataModule for every 2D MedMNIST dataset and size, held in memory as uint8 tensors
(a constructed `train_npz` may hold float32 images in [0, 1], kept as they are)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import lightning as L
from torch.utils.data import DataLoader

from core.checks import positive_int
from core.errors import ConfigError, DataError
from .info import check_size, dataset_info
from .npz import SPLITS, load_split, locate
from .tensors import (
    TensorPairDataset,
    collate_batch,
    random_flip_crop,
    subsample_indices,
    to_channels_first,
    to_targets,
    to_unit_range,
)


def default_root() -> str:
    """medmnist's own default folder (~/.medmnist), or $MEDMNIST_ROOT when set."""
    return os.environ.get("MEDMNIST_ROOT") or os.path.join(os.path.expanduser("~"), ".medmnist")


class MedMNISTDataModule(L.LightningDataModule):
    """One MedMNIST flag at one size; batches reach the model as float [0, 1] N x C x H x W.

    Labels keep their kind: class indices for binary, multi-class and ordinal tasks
    (`ordinal` is True for RetinaMNIST), a float vector for multi-label ChestMNIST.
    """

    def __init__(
        self,
        flag: str = "pneumoniamnist",
        size: int = 28,
        root: Optional[str] = None,
        download: bool = False,
        verify_md5: bool = True,
        as_rgb: bool = False,
        batch_size: int = 128,
        eval_batch_size: int = 512,
        augment: bool = True,
        crop_padding: Optional[int] = None,
        train_npz: Optional[str] = None,
        subsample_train: Optional[Union[int, float]] = None,
        subsample_val: Optional[Union[int, float]] = None,
        subsample_test: Optional[Union[int, float]] = None,
        subsample_seed: int = 0,
        num_workers: int = 0,
        keep_on_device: bool = False,
        resize: Optional[int] = None,
    ):
        """
        Args:
            flag: MedMNIST dataset, e.g. 'pneumoniamnist', 'chestmnist', 'retinamnist'.
            size: 28, 64, 128 or 224.
            root: folder holding the official npz files (default: medmnist's ~/.medmnist).
            download: fetch a missing file through `medmnist`.
            verify_md5: check the file against `medmnist.INFO` (off for custom files).
            as_rgb: repeat grey images to 3 channels (for RGB backbones).
            augment: random horizontal flip and small random crop on training batches.
            crop_padding: pixels of reflect padding for the crop (default size // 14: 2 px at 28).
            train_npz: replace the training split by this npz (same format, images uint8 or float32 in [0, 1];
                e.g. a constructed dataset).
            subsample_*: keep a seeded random subset of a split: a count (int) or fraction (float).
            keep_on_device: hold the splits (uint8) on the trainer's device, a GPU, and cut batches there: no
                host-to-device copy per batch. 28 px sets take a few MB, 224 px PathMNIST ~14 GB.
            resize: the model's input size, when it differs from `size` (e.g. 224 for a 224 px backbone on 28 px
                files). Batches are resized on their device by the model's first layer (train.py links this into
                `model.init_args.input_size`), so the DataModule still serves `size` px images: attacks perturb
                them and epsilon is measured on them, at every resize.
        """
        super().__init__()
        self.save_hyperparameters()
        self.info = dataset_info(flag)
        self.flag, self.size = self.info.flag, check_size(size)
        self.root = str(Path(root).expanduser()) if root else default_root()
        positive_int("batch_size", batch_size)
        positive_int("eval_batch_size", eval_batch_size)
        if train_npz is not None and not Path(train_npz).is_file():
            raise DataError(f"train_npz {train_npz} not found")
        self.crop_padding = self.size // 14 if crop_padding is None else int(crop_padding)
        self.resize = None if resize is None else positive_int("resize", resize)
        if keep_on_device and num_workers:
            raise ConfigError("keep_on_device needs num_workers=0: batches are cut on the device, not by workers")
        self._splits: dict[str, TensorPairDataset] = {}

    # What models and metrics need, known before any file is read (linked into the model by train.py).
    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    @property
    def in_channels(self) -> int:
        return 3 if self.hparams.as_rgb else self.info.n_channels

    @property
    def input_size(self) -> int:
        """The model's input size in pixels: `resize` when set, else the served images' `size`."""
        return self.resize or self.size

    @property
    def task(self) -> str:
        return self.info.task

    @property
    def ordinal(self) -> bool:
        return self.info.ordinal

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.info.class_names

    def npz_path(self) -> Path:
        return locate(self.root, self.flag, self.size, download=False, verify=self.hparams.verify_md5)

    def prepare_data(self) -> None:
        locate(self.root, self.flag, self.size, download=self.hparams.download, verify=self.hparams.verify_md5)

    def setup(self, stage: Optional[str] = None) -> None:
        if len(self._splits) < len(SPLITS):
            self._load_splits()
        if self.hparams.keep_on_device and self.trainer:
            device = self.trainer.strategy.root_device
            for name, split in self._splits.items():
                if split.images.device != device:
                    self._splits[name] = TensorPairDataset(split.images.to(device), split.targets.to(device))

    def _load_splits(self) -> None:
        path = self.npz_path()
        for split in SPLITS:
            if split == "train" and self.hparams.train_npz:
                images, labels = load_split(self.hparams.train_npz, "train", self.info, self.size, allow_float=True)
            else:
                images, labels = load_split(path, split, self.info, self.size)
            keep = subsample_indices(len(images), getattr(self.hparams, f"subsample_{split}"),
                                     self.hparams.subsample_seed)
            if keep is not None:
                images, labels = images[keep], labels[keep]
            self._splits[split] = TensorPairDataset(
                to_channels_first(images, self.hparams.as_rgb), to_targets(labels, self.task)
            )

    def split(self, name: str) -> TensorPairDataset:
        """The in-memory split ('train', 'val' or 'test'): images (uint8; float32 for a float train_npz) and
        targets, after setup."""
        if not self._splits:
            self.setup()
        return self._splits[name]

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        batch = self.hparams.batch_size if split == "train" else self.hparams.eval_batch_size
        return DataLoader(
            self.split(split),
            batch_size=batch,
            shuffle=shuffle,
            collate_fn=collate_batch,
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        images, targets = batch
        trainer = self.trainer
        if self.hparams.augment and trainer is not None and trainer.training:
            images = random_flip_crop(images, self.crop_padding)  # on uint8: a quarter of the bytes to move
        return to_unit_range(images), targets

