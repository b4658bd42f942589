"""Attacks on explanations (attacks/explanation.py) on a tiny ReLU CNN trained in-test on separable 1x8x8 images."""
import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import attacks.explanation as explanation
from attacks.explanation import (
    TargetedManipulation, TopKAttack, input_gradient_map, map_distance, softplus_relus, topk_count,
)
from core.errors import ConfigError
from tiny_models import one_thread  # noqa: F401 (a fixture)

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE = 8


def topk_share(a, b, k=0.1):
    """Share of a's top-k pixels among b's (written out here, independent of explanations.measures)."""
    count = topk_count(k, a[0].numel())
    top_a = a.flatten(1).topk(count, dim=1).indices
    top_b = b.flatten(1).topk(count, dim=1).indices
    return torch.tensor([len(set(p.tolist()) & set(q.tolist())) / count for p, q in zip(top_a, top_b)])


class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                                  nn.ReLU(), nn.Flatten(), nn.Linear(16 * SIZE * SIZE, 2))

    def forward(self, x):
        return self.body((x - 0.5) / 0.25)


@pytest.fixture(scope="module")
def trained():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(2, (128,), generator=g)
    patterns = torch.randn((2, 1, SIZE, SIZE), generator=g).sign()
    x = (0.5 + 0.05 * patterns[y] + 0.1 * torch.randn((128, 1, SIZE, SIZE), generator=g)).clamp(0, 1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = TinyCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(40):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    model.eval()
    assert (model(x).argmax(1) == y).float().mean() > 0.95
    return model, x[:64], model(x[:64]).argmax(1).detach()


def random_sign(x, eps, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (x + eps * (torch.randint(0, 2, x.shape, generator=g) * 2 - 1)).clamp(0, 1)


def random_l2(x, eps, seed=1):
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(x.shape, generator=g)
    return (x + eps * d / d.flatten(1).norm(dim=1).view(-1, 1, 1, 1)).clamp(0, 1)


@pytest.mark.parametrize("norm, eps, noise", [("linf", 8 / 255, random_sign), ("l2", 0.5, random_l2)])
def test_topk_attack_degrades_the_map_far_more_than_random_noise(trained, norm, eps, noise):
    model, x, c = trained
    result = TopKAttack(model, eps, norm=norm, steps=10).run(x, c)
    clean = input_gradient_map(model, x, c)
    attacked = topk_share(clean, input_gradient_map(model, result.x_adv, c))
    noisy = topk_share(clean, input_gradient_map(model, noise(x, eps), c))
    assert result.kept.float().mean() >= 0.9
    attacked = torch.where(result.kept, attacked, torch.ones_like(attacked))  # failed manipulations count as intact
    assert 1 - attacked.mean() > 2 * (1 - noisy.mean()), (attacked.mean(), noisy.mean())
    assert attacked.mean() < 0.75


def test_targeted_manipulation_moves_the_map_to_the_target_and_keeps_the_logits(trained):
    model, x, c = trained
    target = input_gradient_map(model, x.roll(1, 0), c.roll(1, 0))
    result = TargetedManipulation(model, 8 / 255, steps=10).run(x, target, c)
    before = map_distance(input_gradient_map(model, x, c), target)
    after = map_distance(input_gradient_map(model, result.x_adv, c), target)
    noisy = map_distance(input_gradient_map(model, random_sign(x, 8 / 255), c), target)
    assert after.mean() < 0.8 * before.mean() and after.mean() < 0.8 * noisy.mean(), (before.mean(), after.mean())
    assert result.kept.all()
    with torch.no_grad():
        assert torch.equal(model(result.x_adv).argmax(1), c)


@pytest.mark.parametrize("attack", ["topk", "targeted"])
@pytest.mark.parametrize("norm, eps", [("linf", 4 / 255), ("l2", 0.3)])
def test_the_perturbation_stays_in_the_threat_model(trained, attack, norm, eps):
    model, x, c = trained
    x = x.clone()
    x[0] = 1.0  # a saturated image: the [0, 1] clamp binds
    if attack == "topk":
        x_adv = TopKAttack(model, eps, norm=norm, steps=3)(x, c)
    else:
        x_adv = TargetedManipulation(model, eps, norm=norm, steps=3)(x, input_gradient_map(model, x.roll(1, 0), c), c)
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert size.max() <= eps + 1e-5 and size.max() > 0.5 * eps
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_zero_epsilon_returns_the_clean_images_and_the_attack_is_deterministic(trained):
    model, x, c = trained
    assert torch.equal(TopKAttack(model, 0)(x, c), x)
    first, second = TopKAttack(model, "4/255", steps=3).run(x, c), TopKAttack(model, "4/255", steps=3).run(x, c)
    assert torch.equal(first.x_adv, second.x_adv) and torch.equal(first.kept, second.kept)


def test_without_softplus_a_relu_network_gives_the_attack_no_gradient(trained, monkeypatch):
    """Why the softplus swap exists: a ReLU network's map has zero derivative in x, so the attack cannot move."""
    model, x, c = trained
    real = TopKAttack(model, 8 / 255, steps=3).run(x, c)
    assert real.relus_replaced == 2 and "Softplus(beta=10)" in real.describe()
    assert (real.x_adv != x).any()

    @contextlib.contextmanager
    def no_swap(model, beta=10.0):
        yield 0

    monkeypatch.setattr(explanation, "softplus_relus", no_swap)
    assert torch.equal(TopKAttack(model, 8 / 255, steps=3)(x, c), x)


def test_relus_and_training_modes_are_restored(trained):
    model, x, c = trained
    model.train()
    try:
        TopKAttack(model, "4/255", steps=2)(x, c)
        assert model.training and all(m.training for m in model.modules())
        assert sum(isinstance(m, nn.ReLU) for m in model.modules()) == 2
        assert not any(isinstance(m, nn.Softplus) for m in model.modules())
        with pytest.raises(RuntimeError):
            with softplus_relus(model, beta=5.0) as swapped:
                assert swapped == 2 and sum(isinstance(m, nn.Softplus) for m in model.modules()) == 2
                raise RuntimeError("boom")
        assert sum(isinstance(m, nn.ReLU) for m in model.modules()) == 2
    finally:
        model.eval()


@pytest.mark.parametrize("multilabel", [False, True])
def test_a_changed_prediction_is_a_failed_manipulation(trained, multilabel):
    """A budget so large the first step flips labels: `kept` must say which examples kept their prediction
    (multi-label: the set of labels with a positive logit)."""
    model, x, c = trained
    result = TopKAttack(model, 0.5, steps=1, multilabel=multilabel).run(x, c)
    with torch.no_grad():
        if multilabel:
            still = ((model(result.x_adv) > 0) == (model(x) > 0)).all(1)
        else:
            still = model(result.x_adv).argmax(1) == c
    assert torch.equal(result.kept, still)
    assert 0 < int(result.kept.sum()) < len(x)
    assert f"{int(still.sum())}/{len(x)}" in result.describe()


def test_input_gradient_map_is_differentiable_with_create_graph(trained):
    model, x, c = trained
    x = x[:4].clone().requires_grad_(True)
    with softplus_relus(model, 10.0):
        m = input_gradient_map(model, x, c[:4], create_graph=True)
        (g,) = torch.autograd.grad(m.sum(), x)
    assert m.shape == (4, SIZE, SIZE) and g.abs().sum() > 0


def test_bad_input_is_one_config_error(trained):
    model, x, c = trained
    with pytest.raises(ConfigError, match="epsilon"):
        TopKAttack(model, -0.1)
    with pytest.raises(ConfigError, match="larger than the image"):
        TopKAttack(model, "4/255", k=SIZE * SIZE + 1)(x, c)
    with pytest.raises(ConfigError, match="k "):
        TopKAttack(model, "4/255", k=1.5)
    with pytest.raises(ConfigError, match="beta"):
        TopKAttack(model, "4/255", beta=0)
    with pytest.raises(ConfigError, match="one class per example"):
        TopKAttack(model, "4/255")(x, torch.zeros(len(x), 2))
    with pytest.raises(ConfigError, match="target_map"):
        TargetedManipulation(model, "4/255")(x, torch.zeros(len(x), 3, 3), c)
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        TopKAttack(model, "4/255")(x + 2, c)
    with torch.inference_mode(), pytest.raises(ConfigError, match="inference_mode"):
        TopKAttack(model, "4/255")(x, c)


def test_a_vit_is_twice_differentiable_during_the_attack():
    """Fused attention kernels have no second derivative: the attack runs attention on the math kernel."""
    timm = pytest.importorskip("timm")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vit = timm.create_model("test_vit", img_size=16, patch_size=4, in_chans=1, num_classes=2).eval()
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    result = TopKAttack(vit, "8/255", steps=2, k=8).run(x)
    assert result.relus_replaced == 0 and "0 nn.ReLU" in result.describe()  # GELU is smooth already
    assert (result.x_adv != x).any()


@pytest.mark.parametrize("attack", ["topk", "targeted"])
def test_a_label_keeping_iterate_wins_over_a_lower_objective_that_changed_the_label(trained, attack):
    """With a fixed step the iterates do not depend on the number of steps, so the first iterate of a long attack is
    the whole of a one-step attack. Where that iterate kept the prediction, the long attack must return an iterate
    that keeps it too (and no worse an objective), even where a later iterate changed the label on a lower
    objective; `kept` must describe the images returned."""
    model, x, c = trained
    g = torch.Generator().manual_seed(2)
    target = torch.rand((len(x), SIZE, SIZE), generator=g)

    def run(steps):
        if attack == "topk":
            return TopKAttack(model, 0.5, alpha=0.06, steps=steps).run(x, c)
        return TargetedManipulation(model, 0.5, alpha=0.06, steps=steps, gamma=0.0).run(x, target, c)

    first, longer = run(1), run(8)
    with torch.no_grad():
        returned_keeps = model(longer.x_adv).argmax(1) == c
    assert torch.equal(longer.kept, returned_keeps)
    assert bool(first.kept.any())
    assert bool(longer.kept[first.kept].all()), "an iterate that changed the label was returned over one that kept it"
    assert bool((longer.objective[first.kept] <= first.objective[first.kept] + 1e-6).all())
