"""The positive control's synthetic data (datamodules.synthetic): with C classes, the class is carried by a bar of its
own (robust) and by one of C faint patterns (nonrobust) that a small L2 perturbation moves to another class's."""
import itertools

import numpy as np
import pytest

from datamodules.synthetic import (class_patterns, pattern_flip_l2, positive_control_arrays,
                                   write_positive_control_npz)


@pytest.mark.parametrize("classes", [4, 11, 15])
def test_more_than_two_classes_get_orthogonal_zero_mean_patterns(classes):
    patterns = class_patterns(28, classes).reshape(classes, -1)
    assert set(np.unique(patterns)) == {-1.0, 1.0}
    assert patterns.sum(axis=1) == pytest.approx(np.zeros(classes))
    assert patterns @ patterns.T == pytest.approx(np.eye(classes) * 28 * 28)


def test_two_classes_get_a_checkerboard_and_its_negative():
    negative, checker = class_patterns(28, 2)
    assert np.array_equal(negative, -checker) and checker[0, 0] == 1 and checker[0, 1] == -1


@pytest.mark.parametrize("classes, size", [(2, 28), (4, 28), (11, 64)])
def test_the_flip_cost_is_the_l2_distance_between_two_classes_patterns(classes, size):
    amplitude = 3 / 255
    patterns = amplitude * class_patterns(size, classes)
    for a, b in itertools.combinations(range(classes), 2):
        assert np.linalg.norm(patterns[a] - patterns[b]) == pytest.approx(pattern_flip_l2(amplitude, size, classes))


@pytest.mark.parametrize("classes, size", [(16, 28), (4, 30)])
def test_patterns_beyond_their_reach_are_refused(classes, size):
    with pytest.raises(ValueError, match="cover 2 to 15 classes at a size divisible by 4"):
        class_patterns(size, classes)


def _nearest_template(train: np.ndarray, train_y: np.ndarray, test: np.ndarray, classes: int) -> np.ndarray:
    """A nearest-class-mean classifier: how much of the class an image part carries."""
    flat = train.reshape(len(train), -1).astype(float)
    means = np.stack([flat[train_y == c].mean(axis=0) for c in range(classes)])
    return np.argmin(((test.reshape(len(test), -1)[:, None, :] - means[None]) ** 2).sum(-1), axis=1)


@pytest.mark.parametrize("classes", [4, 11])
def test_the_bar_alone_and_the_pattern_alone_each_carry_the_class(classes):
    kw = dict(size=28, noise=0.0, shape_agreement=1.0, classes=classes)
    bars, y = positive_control_arrays(400, amplitude=0.0, pattern=False, seed=1, **kw)
    bars_test, y_test = positive_control_arrays(200, amplitude=0.0, pattern=False, seed=2, **kw)
    assert np.array_equal(np.bincount(y.ravel(), minlength=classes), np.full(classes, 400 // classes) +
                          (np.arange(classes) < 400 % classes))
    assert (_nearest_template(bars, y.ravel(), bars_test, classes) == y_test.ravel()).mean() > 0.9
    pattern, _ = positive_control_arrays(classes, amplitude=8 / 255, shape=False, labels=np.arange(classes), **kw)
    centred = pattern.reshape(classes, -1).astype(float) - pattern.mean()
    assert np.array_equal(np.argmax(centred @ class_patterns(28, classes).reshape(classes, -1).T, axis=1),
                          np.arange(classes))


def test_shape_agreement_is_the_share_of_bars_that_show_their_own_class():
    kw = dict(size=28, noise=0.0, pattern=False, classes=4, amplitude=0.0)
    clean, y = positive_control_arrays(600, shape_agreement=1.0, seed=3, **kw)
    mixed, y_mixed = positive_control_arrays(600, shape_agreement=0.6, seed=3, **kw)
    shown = _nearest_template(clean, y.ravel(), mixed, 4)
    assert np.array_equal(y, y_mixed) and abs((shown == y_mixed.ravel()).mean() - 0.6) < 0.06


def test_the_written_file_takes_the_flags_classes(tmp_path):
    path = write_positive_control_npz(tmp_path, 4 / 255, n_train=64, n_val=32, n_test=32, flag="octmnist")
    with np.load(path) as data:
        assert path.name == "octmnist.npz" and data["train_images"].shape == (64, 28, 28)
        assert set(np.unique(data["train_labels"])) == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="grey single-label"):
        write_positive_control_npz(tmp_path, 4 / 255, flag="bloodmnist")
