"""AutoAttack wrapper checks on tiny MLPs trained in-test on separable 1x8x8 synthetic images.

Attack lists are cheap (custom subsets, capped Square queries, 32-64 examples) so each run takes
well under a second on a CPU.
"""

import itertools
import sys
from types import SimpleNamespace

import pyautoattack
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from core.errors import ConfigError
from attacks.gradient import PGD
from attacks.autoattack import STANDARD_ATTACKS, attack_plan, run_autoattack
from tiny_models import one_thread, trained  # noqa: F401 (one_thread is a fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def first_64(model_x_y):
    """The attacks run on 64 of the 256 training images: enough signal, a fraction of the time."""
    model, x, y = model_x_y
    return model, x[:64], y[:64]


@pytest.fixture(scope="module")
def multiclass():
    return first_64(trained(4))


@pytest.fixture(scope="module")
def binary():
    return first_64(trained(2))


@pytest.fixture(scope="module")
def three_class():
    return first_64(trained(3))


@pytest.fixture(scope="module")
def multilabel():
    return first_64(trained(3, multilabel=True))


def accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def test_not_weaker_than_our_pgd(multiclass):
    model, x, y = multiclass
    epsilon = 8 / 255
    x_adv, info = run_autoattack(model, x, y, epsilon, version="custom", attacks=["apgd-ce", "apgd-t"])
    pgd = accuracy(model, PGD(model, epsilon, seed=0)(x, y), y)
    assert info["robust_accuracy"] == accuracy(model, x_adv, y)
    assert info["clean_accuracy"] == accuracy(model, x, y)
    assert info["robust_accuracy"] <= pgd + 2 / len(y)
    assert info["robust_accuracy"] < info["clean_accuracy"] - 0.2
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv - x).abs().max() <= epsilon + 1e-6


def test_l2_threat_model(multiclass):
    model, x, y = multiclass
    x_adv, info = run_autoattack(model, x, y, 0.25, norm="L2", version="custom", attacks=["apgd-ce"])
    assert info["norm"] == "L2"
    assert (x_adv - x).flatten(1).norm(dim=1).max() <= 0.25 + 1e-5
    assert info["robust_accuracy"] < info["clean_accuracy"] - 0.2


def test_targeted_attacks_aim_at_every_other_class(multiclass):
    model, x, y = multiclass
    _, info = run_autoattack(model, x[:16], y[:16], 1 / 255, version="custom", attacks=["apgd-t", "fab-t"])
    ran = {attack["name"]: attack for attack in info["attacks"]}
    assert list(ran) == ["apgd-t", "fab-t"] and info["skipped"] == []
    assert ran["apgd-t"]["n_target_classes"] == 3
    assert ran["fab-t"]["n_target_classes"] == 3
    assert ran["apgd-t"]["n_attacked"] == 16
    assert info["num_classes"] == 4 and info["adaptations"] == []


def test_info_states_what_ran(multiclass):
    model, x, y = multiclass
    _, info = run_autoattack(model, x[:32], y[:32], 4 / 255, n_queries_square=20, seed=3)
    assert info["version"] == "standard" and info["planned"] == list(STANDARD_ATTACKS)
    assert [a["name"] for a in info["attacks"]] + info["skipped"] == list(STANDARD_ATTACKS)
    assert info["attacks"][0] == {"name": "apgd-ce", "n_iter": 100, "n_restarts": 1, "n_attacked": 32}
    square = [a for a in info["attacks"] if a["name"] == "square"]
    assert not square or square[0]["n_queries"] == 20
    assert info["epsilon"] == pytest.approx(4 / 255) and info["norm"] == "Linf"
    assert info["seed"] == 3 and info["n_examples"] == 32
    assert info["pyautoattack_version"] == pyautoattack.__version__


def test_binary_heads_drop_targeted_attacks(binary):
    model, x, y = binary
    x_adv, info = run_autoattack(model, x[:32], y[:32], 8 / 255, n_queries_square=50)
    assert info["num_classes"] == 2
    assert info["planned"] == [a["name"] for a in info["attacks"]] == ["apgd-ce", "fab", "square"]
    assert any("apgd-t dropped" in note for note in info["adaptations"])
    assert any("fab-t replaced by fab" in note for note in info["adaptations"])
    assert info["robust_accuracy"] == accuracy(model, x_adv, y[:32]) < info["clean_accuracy"]


def test_three_class_heads_swap_targeted_dlr_for_dlr(three_class):
    model, x, y = three_class
    _, info = run_autoattack(model, x[:32], y[:32], 4 / 255, n_queries_square=20)
    assert info["planned"] == ["apgd-ce", "apgd-dlr", "fab-t", "square"]
    assert info["attacks"][1]["name"] == "apgd-dlr" and info["attacks"][1]["n_attacked"] > 0
    assert not any("targeted DLR" in warning for warning in info["warnings"])


def test_attack_plan_follows_what_the_losses_can_compute():
    assert attack_plan(STANDARD_ATTACKS, 10) == (list(STANDARD_ATTACKS), [])
    assert attack_plan(STANDARD_ATTACKS, 4)[0] == list(STANDARD_ATTACKS)
    assert attack_plan(STANDARD_ATTACKS, 3)[0] == ["apgd-ce", "apgd-dlr", "fab-t", "square"]
    assert attack_plan(STANDARD_ATTACKS, 2)[0] == ["apgd-ce", "fab", "square"]
    assert attack_plan(["apgd-dlr", "apgd-t"], 3)[0] == ["apgd-dlr"]
    assert attack_plan(["apgd-dlr", "apgd-t"], 2) == ([], [
        "apgd-dlr dropped: the DLR loss needs >= 3 classes (C=2)",
        "apgd-t dropped: the targeted DLR loss needs >= 4 classes (C=2)",
    ])


def test_seeded_runs_are_reproducible_and_leave_the_global_rng_alone(multiclass, monkeypatch):
    model, x, y = multiclass
    clock = itertools.count(1e9, 1000.0)  # AutoAttack seeds from time.time() unless given a seed
    monkeypatch.setattr(pyautoattack.autoattack, "time", SimpleNamespace(time=lambda: next(clock)))
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first, _ = run_autoattack(model, x, y, 8 / 255, version="custom", attacks=["apgd-ce"], seed=1)
    assert torch.equal(torch.rand(3), expected_next)
    second, _ = run_autoattack(model, x, y, 8 / 255, version="custom", attacks=["apgd-ce"], seed=1)
    other, _ = run_autoattack(model, x, y, 8 / 255, version="custom", attacks=["apgd-ce"], seed=2)
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_quiet_unless_verbose(multiclass, capsys):
    model, x, y = multiclass
    run_autoattack(model, x[:16], y[:16], 4 / 255, version="custom", attacks=["apgd-ce"])
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    run_autoattack(model, x[:16], y[:16], 4 / 255, version="custom", attacks=["apgd-ce"], verbose=True)
    captured = capsys.readouterr()
    assert "apgd-ce" in captured.out + captured.err


def test_check_warnings_go_into_info_not_the_console(multiclass, capsys, caplog):
    model, x, y = multiclass
    probabilities = nn.Sequential(model, nn.Softmax(dim=1))
    _, info = run_autoattack(probabilities, x[:8], y[:8], 4 / 255, version="custom", attacks=["apgd-ce"])
    assert any("probability distribution" in warning for warning in info["warnings"])
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == "" and caplog.records == []


def test_keeps_an_active_tracer(multiclass):
    model, x, y = multiclass

    def tracer(frame, event, arg):  # stands in for coverage or a debugger
        return None

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        run_autoattack(model, x[:8], y[:8], 4 / 255, version="custom", attacks=["apgd-ce"])
        assert sys.gettrace() is tracer
    finally:
        sys.settrace(previous)


def test_restores_mode_and_leaves_parameters_untouched(multiclass):
    model, x, y = multiclass
    model.train()
    try:
        run_autoattack(model, x[:16], y[:16], 8 / 255, version="custom", attacks=["fab"])
        assert model.training
    finally:
        model.eval()
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def test_works_under_no_grad(multiclass):
    model, x, y = multiclass
    with torch.no_grad():
        _, info = run_autoattack(model, x, y, 8 / 255, version="custom", attacks=["apgd-ce"])
    assert info["robust_accuracy"] < info["clean_accuracy"] - 0.2


def test_multilabel_heads_use_the_documented_pgd_fallback(multilabel):
    model, x, y = multilabel
    x_adv, info = run_autoattack(model, x, y, 8 / 255, multilabel=True, multilabel_steps=10,
                                 multilabel_restarts=2)
    assert [a["name"] for a in info["attacks"]] == ["pgd-bce"]
    assert info["attacks"][0]["n_iter"] == 10 and info["attacks"][0]["n_restarts"] == 2
    assert "AutoAttack did not run" in info["adaptations"][0]
    def bce(inputs):
        return F.binary_cross_entropy_with_logits(model(inputs), y).item()

    with torch.no_grad():
        assert bce(x_adv) > 2 * bce(x)
    assert info["robust_label_accuracy"] < info["clean_label_accuracy"] - 0.2
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"version": "plus"}, "version"),
        ({"attacks": ["apgd-ce"]}, "version='custom'"),
        ({"version": "custom", "attacks": ["apgd-ce", "cw"]}, "unknown: cw"),
        ({"version": "custom"}, "needs attacks="),
        ({"num_classes": 10}, "outputs 4 logits"),
        ({"norm": "L1"}, "norm"),
        ({"seed": None}, "seed"),
        ({"multilabel": True}, "float multi-hot"),
    ],
)
def test_rejects_impossible_configurations(multiclass, kwargs, match):
    model, x, y = multiclass
    with pytest.raises(ConfigError, match=match):
        run_autoattack(model, x[:8], y[:8], 8 / 255, **kwargs)


def test_multi_hot_targets_need_multilabel(multilabel):
    model, x, y = multilabel
    with pytest.raises(ConfigError, match="multilabel=True"):
        run_autoattack(model, x[:8], y[:8], 8 / 255)
