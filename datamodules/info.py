"""Dataset facts read from `medmnist.INFO`: the 2D flags, sizes, task kinds, class names."""
from __future__ import annotations

from dataclasses import dataclass

from medmnist import INFO

from core.errors import DataError

SIZES = (28, 64, 128, 224)
#: Every 2D MedMNIST flag (the 3D volumes are out of scope).
FLAGS_2D = tuple(sorted(f for f in INFO if not f.endswith("3d")))

BINARY, MULTICLASS, MULTILABEL, ORDINAL = "binary", "multiclass", "multilabel", "ordinal"
_TASKS = {
    "binary-class": BINARY,
    "multi-class": MULTICLASS,
    "multi-label, binary-class": MULTILABEL,
    "ordinal-regression": ORDINAL,
}


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and its metrics need to know about one MedMNIST flag."""

    flag: str
    task: str  # one of BINARY, MULTICLASS, MULTILABEL, ORDINAL
    medmnist_task: str  # the task string as medmnist spells it
    class_names: tuple[str, ...]
    n_channels: int

    @property
    def num_classes(self) -> int:
        """Output units: classes for single-label tasks, labels for multi-label."""
        return len(self.class_names)

    @property
    def ordinal(self) -> bool:
        return self.task == ORDINAL


def check_size(size: int) -> int:
    if int(size) not in SIZES:
        raise DataError(f"unknown MedMNIST size {size!r}: choose one of {', '.join(map(str, SIZES))}")
    return int(size)


def dataset_info(flag: str) -> DatasetInfo:
    """Facts for `flag` (e.g. 'pneumoniamnist'), or a DataError naming the valid flags."""
    flag = str(flag).lower()
    if flag not in FLAGS_2D:
        raise DataError(f"unknown MedMNIST flag {flag!r}: choose one of {', '.join(FLAGS_2D)}")
    info = INFO[flag]
    names = tuple(info["label"][k] for k in sorted(info["label"], key=int))
    return DatasetInfo(flag, _TASKS[info["task"]], info["task"], names, int(info["n_channels"]))


def npz_name(flag: str, size: int) -> str:
    """File name medmnist uses: 'flag.npz' at 28 px, 'flag_64.npz' otherwise."""
    return f"{flag}.npz" if check_size(size) == 28 else f"{flag}_{size}.npz"


def expected_md5(flag: str, size: int) -> str:
    suffix = "" if check_size(size) == 28 else f"_{size}"
    return INFO[dataset_info(flag).flag][f"MD5{suffix}"]


def download_url(flag: str, size: int) -> str:
    suffix = "" if check_size(size) == 28 else f"_{size}"
    return INFO[dataset_info(flag).flag][f"url{suffix}"]
