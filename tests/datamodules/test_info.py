import pytest
from medmnist import INFO

from core.errors import DataError
from datamodules.info import BINARY, FLAGS_2D, MULTICLASS, MULTILABEL, ORDINAL, dataset_info, npz_name


def test_all_twelve_2d_flags_are_known():
    assert len(FLAGS_2D) == 12
    assert not any(flag.endswith("3d") for flag in FLAGS_2D)


@pytest.mark.parametrize(
    "flag,task,classes,channels",
    [
        ("pneumoniamnist", BINARY, 2, 1),
        ("pathmnist", MULTICLASS, 9, 3),
        ("chestmnist", MULTILABEL, 14, 1),
        ("retinamnist", ORDINAL, 5, 3),
    ],
)
def test_info_is_read_from_medmnist(flag, task, classes, channels):
    info = dataset_info(flag)
    assert (info.task, info.num_classes, info.n_channels) == (task, classes, channels)
    assert info.class_names[0] == INFO[flag]["label"]["0"]
    assert info.ordinal == (task == ORDINAL)


def test_file_names_follow_medmnist():
    assert npz_name("breastmnist", 28) == "breastmnist.npz"
    assert npz_name("breastmnist", 224) == "breastmnist_224.npz"


@pytest.mark.parametrize("bad", ["mnist", "organmnist3d", ""])
def test_unknown_flag_is_one_clear_error(bad):
    with pytest.raises(DataError, match="unknown MedMNIST flag"):
        dataset_info(bad)


def test_unknown_size_is_one_clear_error():
    with pytest.raises(DataError, match="unknown MedMNIST size 32"):
        npz_name("breastmnist", 32)
