"""constructions.build: the four kinds on a tiny ERM source, with independent checks of what each promises."""
import math

import numpy as np
import pytest
import torch

from constructions import Settings, build, load_source
from constructions.builder import _Penultimate
from core.errors import ConfigError
from datamodules.info import dataset_info
from datamodules.npz import load_split
from datamodules.tensors import to_channels_first, to_unit_range
from lightning_modules.models import features


def _data(root, flag):
    images, labels = load_split(root / f"{flag}.npz", "train", dataset_info(flag), 28)
    return to_unit_range(to_channels_first(images)), torch.from_numpy(labels[:, 0].astype(np.int64))


# Strong enough that the tiny model follows nearly every target: the synthetic classes differ by a bright band
# (L2 about 7 at 28 px), so epsilon 8 (L2, unscaled), 20 steps of 1.
STRONG = Settings(epsilon=8.0, step=1.0, steps=20, scale=False, batch_size=32)


@pytest.mark.parametrize("flag", ["breastmnist", "bloodmnist"])
@pytest.mark.parametrize("kind", ["d_rand", "d_det"])
def test_targeted_kinds_stay_in_the_ball_and_reach_their_new_labels(tiny, flag, kind):
    root, ckpt = tiny(flag)
    model = load_source(ckpt).model
    x, y = _data(root, flag)
    c = dataset_info(flag).num_classes
    out = build(kind, model, x, y, c, STRONG, seed=1, device="cpu", progress=False)
    assert out.images.dtype == torch.float32 and out.images.shape == x.shape
    assert out.images.min() >= 0 and out.images.max() <= 1
    norms = (out.images - x).flatten(1).norm(dim=1)
    assert (norms <= 8.0 + 1e-4).all() and norms.max() > 0.5  # per example inside the L2 ball, and moved
    if kind == "d_det":
        assert torch.equal(out.labels, (y + 1) % c)  # binary: the label flip
    else:
        assert out.labels.min() >= 0 and out.labels.max() < c and len(out.labels.unique()) > 1
    with torch.no_grad():
        predicted = model.eval()(out.images).argmax(1)
    assert (predicted == out.labels).float().mean() >= 0.9
    assert torch.equal(out.assigned, predicted == out.labels)
    changed = out.labels != y
    assert out.stats()["relabelled"] == int(changed.sum()) > 0
    assert out.stats()["assigned_share_relabelled"] == pytest.approx((predicted == out.labels)[changed].float().mean())
    with torch.no_grad():
        before = (model(x).argmax(1) == out.labels).float().mean()
    assert before < 0.9  # the attack did the work: the clean images mostly do not carry the new labels


def test_default_sizes_follow_ilyas_scaled_to_the_image():
    r = Settings().resolved("d_rand", (1, 28, 28))
    assert math.isclose(r["epsilon"], 0.5 * math.sqrt(784 / 3072))
    assert math.isclose(r["step"], 0.1 * math.sqrt(784 / 3072))
    assert r["steps"] == 100
    assert Settings().resolved("d_nr", (3, 32, 32)) == {"step": 0.1, "steps": 1000, "scale_factor": 1.0}
    assert Settings(epsilon=2, scale=False).resolved("d_det", (3, 64, 64))["epsilon"] == 2
    assert Settings(epsilon="128/255", step="0.2").epsilon == 128 / 255  # text as in YAML configs


@pytest.mark.parametrize("kind, flag", [("d_nr", "breastmnist"), ("d_nr", "bloodmnist"), ("d_r", "breastmnist")])
def test_representation_matching_gets_closer_to_its_targets(tiny, tiny_l2_robust, kind, flag):
    """D_NR from the standard source and D_R from the L2-robust one: the same matching, the same checks."""
    root, ckpt = tiny_l2_robust if kind == "d_r" else tiny(flag)
    model = load_source(ckpt).model
    x, y = _data(root, flag)
    out = build(kind, model, x, y, dataset_info(flag).num_classes, Settings(step=0.5, steps=20, scale=False,
                batch_size=32), seed=0, device="cpu", progress=False)
    assert torch.equal(out.labels, y)  # labelled as the image whose representation is matched
    assert out.images.min() >= 0 and out.images.max() <= 1
    with torch.no_grad():
        target = features(model, x)
        end = (features(model, out.images) - target).norm(dim=1)
    start = out.distances["representation_start"]
    assert torch.allclose(end, out.distances["representation_end"], atol=1e-4)
    assert (end <= start + 1e-4).all() and end.mean() < 0.6 * start.mean()  # the best iterate is kept
    assert (end < start).float().mean() > 0.8
    # Each image started from another training image, not from the one it matches.
    assert ((out.images - x).flatten(1).norm(dim=1) > 1.0).float().mean() > 0.9


def test_d_rand_labels_are_uniform_and_independent_of_the_original_labels():
    """Ilyas et al.'s D_rand: each new label t ~ Uniform(C), drawn without looking at the original label. On 4,000
    images whose original labels are far from uniform, the new labels agree with the originals about 1/C of the
    time, their counts are uniform and the (original, new) table shows no dependence (chi-square tests). The labels
    do not depend on the source model, so a linear one keeps the attack cheap."""
    from scipy.stats import chi2_contingency, chisquare

    c, n = 8, 4000
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, c))
    rng = np.random.default_rng(0)
    y = torch.from_numpy(rng.choice(c, n, p=[0.35, 0.25, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05]))
    x = torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    out = build("d_rand", model, x, y, c, Settings(steps=1, batch_size=1000), seed=3, device="cpu", progress=False)
    assert torch.equal(out.original_labels, y)
    agreement = (out.labels == y).float().mean().item()
    assert abs(agreement - 1 / c) < 4 * math.sqrt(1 / c * (1 - 1 / c) / n)  # 1/8 +- 0.021
    counts = torch.bincount(out.labels, minlength=c).numpy()
    assert chisquare(counts).pvalue > 0.001
    table = np.zeros((c, c))
    np.add.at(table, (y.numpy(), out.labels.numpy()), 1)
    assert chi2_contingency(table).pvalue > 0.001


def test_results_do_not_depend_on_batch_size(tiny):
    root, ckpt = tiny("breastmnist")
    model = load_source(ckpt).model
    x, y = _data(root, "breastmnist")
    a = build("d_rand", model, x, y, 2, Settings(steps=3, batch_size=64), seed=4, device="cpu", progress=False)
    b = build("d_rand", model, x, y, 2, Settings(steps=3, batch_size=16), seed=4, device="cpu", progress=False)
    c = build("d_rand", model, x, y, 2, Settings(steps=3, batch_size=16), seed=5, device="cpu", progress=False)
    assert torch.equal(a.labels, b.labels) and torch.allclose(a.images, b.images, atol=1e-5)
    assert not torch.equal(a.labels, c.labels)


def test_bad_settings_and_labels_are_config_errors(tiny):
    root, ckpt = tiny("breastmnist")
    model = load_source(ckpt).model
    x, y = _data(root, "breastmnist")
    for bad in ({"epsilon": 0}, {"epsilon": -1}, {"step": float("nan")}, {"steps": 0}, {"batch_size": 0}):
        with pytest.raises(ConfigError):
            Settings(**bad)
    with pytest.raises(ConfigError, match="unknown construction kind"):
        build("d_foo", model, x, y, 2, progress=False)
    with pytest.raises(ConfigError, match="multi-label"):
        build("d_rand", model, x, torch.zeros(len(x), 3), 2, progress=False)


def test_the_feature_module_is_the_models_penultimate_layer(tiny):
    _, ckpt = tiny("bloodmnist")
    model = load_source(ckpt).model
    x = torch.rand(2, 3, 28, 28)
    with torch.no_grad():
        assert torch.equal(_Penultimate(model)(x), features(model, x))
