"""Attack library checks on tiny MLPs trained in-test on separable 1x8x8 synthetic images."""

import pytest
import torch
import torch.nn.functional as F

from core.errors import ConfigError
from attacks.gradient import FGSM, PGD, default_loss
from tiny_models import one_thread, trained  # noqa: F401 (one_thread is a fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def multiclass():
    return trained(4)


@pytest.fixture(scope="module")
def binary():
    return trained(2)


@pytest.fixture(scope="module")
def multilabel():
    return trained(3, multilabel=True)


def accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def norms(delta, norm):
    flat = delta.flatten(1)
    return flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)


@pytest.mark.parametrize("attack", [FGSM, PGD])
def test_zero_epsilon_returns_the_clean_images(multiclass, attack):
    model, x, y = multiclass
    x_adv = attack(model, 0)(x, y)
    assert torch.equal(x_adv, x)
    assert accuracy(model, x_adv, y) == accuracy(model, x, y) > 0.95


def test_adversarial_accuracy_does_not_rise_with_epsilon(multiclass):
    model, x, y = multiclass
    grid = [0, 1, 2, 4, 8, 16, 32]
    accuracies = [accuracy(model, PGD(model, f"{k}/255", seed=0)(x, y), y) for k in grid]
    assert accuracies[0] == accuracy(model, x, y)
    assert all(later <= earlier for earlier, later in zip(accuracies, accuracies[1:])), accuracies
    assert accuracies[-1] < 0.1 < 0.9 < accuracies[0]


@pytest.mark.parametrize("norm, epsilon", [("linf", 8 / 255), ("linf", 12 / 255), ("l2", 0.25), ("l2", 0.4)])
def test_pgd_is_at_least_as_strong_as_fgsm(multiclass, norm, epsilon):
    model, x, y = multiclass
    pgd = accuracy(model, PGD(model, epsilon, norm=norm, seed=0)(x, y), y)
    fgsm = accuracy(model, FGSM(model, epsilon, norm=norm)(x, y), y)
    assert pgd <= fgsm < accuracy(model, x, y)


def test_one_pgd_step_without_random_start_is_at_least_fgsm(multiclass):
    model, x, y = multiclass
    one_step = PGD(model, 8 / 255, alpha=8 / 255, steps=1, random_start=False)(x, y)
    assert accuracy(model, one_step, y) <= accuracy(model, FGSM(model, 8 / 255)(x, y), y) < accuracy(model, x, y)


@pytest.mark.parametrize("norm, epsilon", [("linf", 16 / 255), ("l2", 0.5)])
def test_random_start_covers_the_ball(multiclass, norm, epsilon):
    model, x, y = multiclass
    x = torch.full_like(x, 0.5)  # the box does not bind, so the start is the raw draw
    start = PGD(model, epsilon, alpha=0, steps=1, norm=norm, seed=0)(x, y) - x
    size = norms(start, norm)
    assert size.max() <= epsilon + 1e-6
    if norm == "linf":
        assert start.min() < -0.95 * epsilon and start.max() > 0.95 * epsilon
        assert abs(start.mean().item()) < 0.02 * epsilon
    else:
        assert size.min() < 0.1 * epsilon and size.max() > 0.9 * epsilon
        assert abs((start > 0).float().mean().item() - 0.5) < 0.02


def saturated(x):
    """Images whose top half is exactly 0 or 1, so the [0, 1] box binds."""
    x = x.clone()
    x[..., :4, :] = (x[..., :4, :] > 0.5).float()
    return x


@pytest.mark.parametrize("norm, epsilon", [("linf", 16 / 255), ("l2", 1.0)])
@pytest.mark.parametrize(
    "make",
    [
        lambda m, e, n: FGSM(m, e, norm=n),
        lambda m, e, n: FGSM(m, e, norm=n, alpha=1.25 * e, random_start=True, seed=0),
        lambda m, e, n: PGD(m, e, norm=n, seed=0),
        lambda m, e, n: PGD(m, e, norm=n, restarts=3, alpha=e / 2, seed=0),
        lambda m, e, n: PGD(m, e, norm=n, random_start=False, steps=5),
    ],
    ids=["fgsm", "fgsm-rs", "pgd", "pgd-restarts", "pgd-no-random-start"],
)
def test_adversarial_images_stay_in_the_box_and_the_ball(multiclass, make, norm, epsilon):
    model, x, y = multiclass
    x = saturated(x)
    x_adv = make(model, epsilon, norm)(x, y)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    size = norms(x_adv - x, norm)
    assert size.max() <= epsilon + 1e-6
    assert size.max() >= 0.5 * epsilon  # the attack did move the images


@pytest.mark.parametrize("norm, epsilon", [("linf", 32 / 255), ("l2", 1.0)])
def test_targeted_images_stay_in_the_box_and_the_ball(multiclass, norm, epsilon):
    model, x, y = multiclass
    x = saturated(x)
    x_adv = PGD(model, epsilon, norm=norm, targeted=True, seed=0)(x, y, target=(y + 1) % 4)
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert norms(x_adv - x, norm).max() <= epsilon + 1e-6


def test_restarts_are_never_weaker_than_one_run(multiclass):
    model, x, y = multiclass
    one = PGD(model, 8 / 255, steps=5, seed=3)(x, y)
    several = PGD(model, 8 / 255, steps=5, restarts=4, seed=3)(x, y)
    with torch.no_grad():
        logits_one, logits_several = model(one), model(several)
    fooled_one, fooled_several = logits_one.argmax(1) != y, logits_several.argmax(1) != y
    assert fooled_several.sum() >= fooled_one.sum() > 0
    assert not (fooled_one & ~fooled_several).any()
    robust = ~fooled_one & ~fooled_several
    loss_one = F.cross_entropy(logits_one, y, reduction="none")[robust]
    loss_several = F.cross_entropy(logits_several, y, reduction="none")[robust]
    assert (loss_several >= loss_one - 1e-6).all()


@pytest.mark.parametrize("restarts, targeted", [(1, False), (3, False), (2, True)])
def test_early_stop_finds_the_same_successes_with_less_work(multiclass, restarts, targeted):
    model, x, y = multiclass
    target = (y + 1) % 4 if targeted else None

    def run(early_stop):
        attack = PGD(model, 10 / 255, steps=6, restarts=restarts, targeted=targeted, seed=4, early_stop=early_stop)
        seen = []
        handle = model.register_forward_hook(lambda module, inputs, out: seen.append(len(inputs[0])))
        try:
            x_adv, logits = attack.scored(x, y, target)
        finally:
            handle.remove()
        return x_adv, logits, sum(seen)

    full, full_logits, full_work = run(False)
    early, early_logits, early_work = run(True)

    def hit(logits):
        return logits.argmax(1) == target if targeted else logits.argmax(1) != y
    assert 0 < hit(full_logits).sum() < len(y)
    assert torch.equal(hit(full_logits), hit(early_logits))
    assert early_work < full_work
    with torch.no_grad():
        torch.testing.assert_close(model(early), early_logits)  # the logits belong to the returned images
    assert norms(early - x, "linf").max() <= 10 / 255 + 1e-6 and early.min() >= 0 and early.max() <= 1
    survivors = ~hit(full_logits)  # never successful: both attacks keep the same highest-loss iterate
    torch.testing.assert_close(early[survivors], full[survivors])


def test_early_stop_leaves_the_callers_images_alone(multiclass):
    model, x, y = multiclass
    before = x.clone()
    PGD(model, 8 / 255, steps=3, random_start=False, early_stop=True)(x, y)
    assert torch.equal(x, before)


def test_seeded_pgd_is_reproducible_and_unseeded_follows_the_global_rng(multiclass):
    model, x, y = multiclass
    first = PGD(model, 8 / 255, seed=11)(x, y)
    assert torch.equal(first, PGD(model, 8 / 255, seed=11)(x, y))
    assert not torch.equal(first, PGD(model, 8 / 255, seed=12)(x, y))
    unseeded = PGD(model, 8 / 255)
    torch.manual_seed(5)
    a = unseeded(x, y)
    torch.manual_seed(5)
    b = unseeded(x, y)
    c = unseeded(x, y)
    assert torch.equal(a, b) and not torch.equal(b, c)


def test_model_is_attacked_in_eval_mode_and_every_module_mode_is_restored(multiclass):
    model, x, y = multiclass
    model.train()
    model.body[1].eval()
    try:
        model.modes_seen.clear()
        PGD(model, 4 / 255, steps=3)(x, y)
        assert model.modes_seen and not any(model.modes_seen)
        assert model.training and model.body[0].training and not model.body[1].training

        def failing_loss(logits, target):
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError, match="boom"):
            FGSM(model, 4 / 255, loss=failing_loss)(x, y)
        assert model.training and model.body[0].training and not model.body[1].training
    finally:
        model.eval()


def test_no_gradients_are_left_on_model_parameters(multiclass):
    model, x, y = multiclass
    assert all(p.grad is None for p in model.parameters())
    PGD(model, 8 / 255, steps=3)(x, y)
    FGSM(model, 8 / 255)(x, y)
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())


def test_attacks_work_under_no_grad(multiclass):
    model, x, y = multiclass
    with torch.no_grad():
        x_pgd = PGD(model, 8 / 255, seed=0)(x, y)
        x_fgsm = FGSM(model, 8 / 255)(x, y)
    assert not x_pgd.requires_grad and not x_fgsm.requires_grad
    clean = accuracy(model, x, y)
    assert accuracy(model, x_pgd, y) < clean - 0.2
    assert accuracy(model, x_fgsm, y) < clean - 0.2


def test_inference_mode_is_refused_with_a_hint(multiclass):
    model, x, y = multiclass
    with torch.inference_mode(), pytest.raises(ConfigError, match=r"Trainer\(inference_mode=False\)"):
        PGD(model, 8 / 255)(x, y)


def test_tensors_made_under_inference_mode_can_be_attacked_later(multiclass):
    model, x, y = multiclass
    with torch.inference_mode():
        x_inference, y_inference = x.clone(), y.clone()
    assert x_inference.is_inference()
    expected = PGD(model, 8 / 255, seed=0)(x, y)
    assert torch.equal(PGD(model, 8 / 255, seed=0)(x_inference, y_inference), expected)
    assert torch.equal(FGSM(model, 8 / 255)(x_inference, y_inference), FGSM(model, 8 / 255)(x, y))


def mean_bce(logits, y):
    return F.binary_cross_entropy_with_logits(logits, y, reduction="none").mean(1)


def test_multilabel_heads_are_attacked_with_bce(multilabel):
    model, x, y = multilabel
    x_adv = PGD(model, 8 / 255, seed=0)(x, y)
    assert torch.equal(x_adv, PGD(model, 8 / 255, seed=0, loss=mean_bce)(x, y))
    with torch.no_grad():
        clean_logits, adv_logits = model(x), model(x_adv)
    assert mean_bce(adv_logits, y).mean() > 2 * mean_bce(clean_logits, y).mean()
    def label_accuracy(logits):
        return ((logits > 0) == (y > 0.5)).float().mean().item()

    assert label_accuracy(adv_logits) < label_accuracy(clean_logits) - 0.2
    assert norms(x_adv - x, "linf").max() <= 8 / 255 + 1e-6


def test_binary_two_logit_heads_are_attacked_with_cross_entropy(binary):
    model, x, y = binary
    assert torch.equal(PGD(model, 0)(x, y), x)
    x_adv = PGD(model, 16 / 255, seed=0)(x, y)
    def ce(logits, target):
        return F.cross_entropy(logits, target, reduction="none")

    assert torch.equal(x_adv, PGD(model, 16 / 255, seed=0, loss=ce)(x, y))
    assert accuracy(model, x_adv, y) < accuracy(model, x, y) - 0.5


def test_targeted_pgd_moves_predictions_to_the_target(multiclass):
    model, x, y = multiclass
    target = (y + 1) % 4
    x_targeted = PGD(model, 32 / 255, steps=20, targeted=True, seed=0)(x, y, target=target)
    x_untargeted = PGD(model, 32 / 255, steps=20, seed=0)(x, y)
    with torch.no_grad():
        hit_targeted = (model(x_targeted).argmax(1) == target).float().mean()
        hit_untargeted = (model(x_untargeted).argmax(1) == target).float().mean()
    assert hit_targeted > 0.9
    assert hit_untargeted < hit_targeted - 0.3


def test_a_custom_loss_drives_the_attack(multiclass):
    model, x, y = multiclass
    with torch.no_grad():
        clean_probs = model(x).softmax(1)

    def kl_to_clean(logits, probs):  # TRADES' robustness term
        return F.kl_div(logits.log_softmax(1), probs, reduction="none").sum(1)

    x_adv = PGD(model, 8 / 255, seed=0, loss=kl_to_clean)(x, clean_probs)
    with torch.no_grad():
        kl = kl_to_clean(model(x_adv), clean_probs)
    assert kl.mean() > 0.1
    with pytest.raises(ConfigError, match="one value per example"):
        PGD(model, 8 / 255, loss=lambda logits, t: F.cross_entropy(logits, t))(x, y)


@pytest.mark.parametrize("norm, epsilon, alpha", [("linf", 8 / 255, 2 / 255), ("l2", 0.25, 0.05)])
def test_not_weaker_than_torchattacks_pgd(multiclass, norm, epsilon, alpha):
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = multiclass
    reference = (torchattacks.PGD if norm == "linf" else torchattacks.PGDL2)(
        model, eps=epsilon, alpha=alpha, steps=10, random_start=True
    )
    torch.manual_seed(0)
    theirs = accuracy(model, reference(x, y), y)
    ours = accuracy(model, PGD(model, epsilon, alpha=alpha, steps=10, norm=norm, seed=0)(x, y), y)
    assert theirs < accuracy(model, x, y) - 0.2  # the comparison happens where attacks matter
    assert ours <= theirs + 0.02


def test_pixels_outside_the_unit_interval_are_rejected(multiclass):
    model, x, y = multiclass
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        PGD(model, 8 / 255)((x - 0.5) / 0.25, y)


def test_default_loss_needs_class_indices_or_multi_hot_targets():
    logits = torch.zeros(5, 3)
    assert default_loss(logits, torch.zeros(5, dtype=torch.long)).shape == (5,)
    assert default_loss(logits, torch.zeros(5, 3)).shape == (5,)
    for bad in (torch.zeros(5, 1, dtype=torch.long), torch.zeros(5), torch.zeros(5, dtype=torch.bool)):
        with pytest.raises(ConfigError, match="cannot pick a loss"):
            default_loss(logits, bad)


def test_pgd_defaults_and_validation(multiclass):
    model, x, y = multiclass
    pgd = PGD(model, "8/255", steps=4)
    assert pgd.alpha == pytest.approx(2.5 * (8 / 255) / 4)
    assert PGD(model, 8 / 255, alpha="2/255").alpha == pytest.approx(2 / 255)
    for kwargs in ({"restarts": 2, "random_start": False}, {"norm": "l1"}, {"steps": 0}, {"restarts": 1.5},
                   {"alpha": -1}):
        with pytest.raises(ConfigError):
            PGD(model, 8 / 255, **kwargs)
    with pytest.raises(ConfigError, match="target="):
        PGD(model, 8 / 255, targeted=True)(x, y)
    with pytest.raises(ConfigError, match="targeted=True"):
        PGD(model, 8 / 255)(x, y, target=y)
