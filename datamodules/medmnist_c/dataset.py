"""The in-memory MedMNIST-C test set: every (corruption, severity, test image) of one flag and size."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from core.errors import ConfigError, DataError
from ..info import MULTILABEL, DatasetInfo
from ..tensors import channels_first_view
from .corruptors import PROTOCOL_UPSAMPLE, SEVERITIES, roundtrip


class CorruptedTestSet(Dataset):
    """Every (corruption, severity, test image) of one flag and size, in memory as uint8 tensors.

    Item i -> (image float32 C x H x W in [0, 1], label, corruption index, severity 1..5), ordered corruption by
    corruption and severity-major within one, like the MedMNIST-C files. Labels follow the main loader: a class
    index (int64) for binary/multi-class/ordinal tasks, a float32 vector for multi-label ones.
    """

    def __init__(self, info: DatasetInfo, images: torch.Tensor, clean_images: torch.Tensor, labels: np.ndarray,
                 corruptions: Sequence[str], severities: Sequence[int], *, protocol: str, size: int,
                 as_rgb: bool = False, meta: dict | None = None, image_index: np.ndarray | None = None,
                 roundtrip_images: torch.Tensor | None = None):
        if images.shape[:3] != (len(corruptions), len(severities), len(labels)):
            raise DataError(f"corrupted images {tuple(images.shape)} do not fit {len(corruptions)} corruptions x "
                            f"{len(severities)} severities x {len(labels)} labels")
        self.info, self.protocol, self.size, self.as_rgb = info, protocol, size, as_rgb
        self.corruptions, self.severities = tuple(corruptions), tuple(severities)
        self.meta = dict(meta or {})
        if roundtrip_images is not None and roundtrip_images.shape != clean_images.shape:
            raise DataError(f"round-tripped clean images {tuple(roundtrip_images.shape)} do not fit the clean ones "
                            f"{tuple(clean_images.shape)}")
        self._images, self._clean, self._raw_labels = images, clean_images, labels
        self._roundtrip = roundtrip_images
        #: position of each image in the full test split (a subset keeps the original positions)
        self.image_index = np.arange(len(labels)) if image_index is None else np.asarray(image_index)
        raw = torch.from_numpy(np.ascontiguousarray(labels))
        self.labels = raw.float() if info.task == MULTILABEL else raw[:, 0].long()

    @classmethod
    def from_arrays(cls, info: DatasetInfo, corrupted: dict[str, np.ndarray], clean_images: np.ndarray,
                    labels: np.ndarray, *, protocol: str, size: int, as_rgb: bool = False,
                    meta: dict | None = None, roundtrip_images: np.ndarray | None = None) -> "CorruptedTestSet":
        """From {corruption: 5N x H x W [x 3] uint8} in the MedMNIST-C layout and the clean test split; under
        `upsample224-corrupt-box` the round-tripped clean images are made from the clean ones unless given."""
        n, rgb = len(labels), info.n_channels == 3
        side = clean_images.shape[1]
        images = torch.empty((len(corrupted), len(SEVERITIES), n, info.n_channels, side, side), dtype=torch.uint8)
        for k, stacked in enumerate(corrupted.values()):  # filled in place, no stacked intermediate copy
            severity_major = torch.from_numpy(stacked).reshape(len(SEVERITIES), n, *stacked.shape[1:])
            images[k] = channels_first_view(severity_major, rgb)
        clean = channels_first_view(torch.from_numpy(np.ascontiguousarray(clean_images)), rgb).contiguous()
        if roundtrip_images is None and protocol == PROTOCOL_UPSAMPLE:
            roundtrip_images = roundtrip(clean_images, size)
        if roundtrip_images is not None:
            roundtrip_images = channels_first_view(torch.from_numpy(np.ascontiguousarray(roundtrip_images)),
                                                   rgb).contiguous()
        return cls(info, images, clean, labels, list(corrupted), SEVERITIES, protocol=protocol, size=size,
                   as_rgb=as_rgb, meta=meta, roundtrip_images=roundtrip_images)

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

    def roundtrip_images(self) -> torch.Tensor | None:
        """uint8 N x C x H x W clean test images resampled like the corrupted ones (to 224 px and back), the
        reference of rBE under the resampling protocols; None under native224 (no resampling)."""
        return None if self._roundtrip is None else self._rgb(self._roundtrip)

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
                                image_index=self.image_index[keep_n],
                                roundtrip_images=None if self._roundtrip is None else self._roundtrip[index[2]])

    def _rgb(self, images: torch.Tensor) -> torch.Tensor:
        if self.as_rgb and images.shape[-3] == 1:
            return images.expand(*images.shape[:-3], 3, *images.shape[-2:])
        return images



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
