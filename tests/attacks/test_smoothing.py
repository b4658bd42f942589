"""Randomized smoothing (attacks/smoothing.py) against independent computations: scipy on the very noise draws the
model saw, a linear base classifier whose smoothed classifier and exact distance to its boundary are known in closed
form, and PGD on the smoothed classifier of a trained MLP, which must never flip a prediction inside its radius."""

import numpy as np
import pytest
import torch
from scipy.stats import beta, binomtest, norm
from torch import nn

from attacks.gradient import PGD
from attacks.smoothing import (
    ABSTAIN, MULTILABEL_TASK, SINGLE_LABEL_TASKS, Smooth, certified_metrics, check_settings, lower_confidence_bound,
)
from core.errors import ConfigError
from tiny_models import one_thread, trained  # noqa: F401 (one_thread is a fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

D = 16  # 1x4x4 images
SIGMA = 0.25


class LinearHead(nn.Module):
    """Logits x.flatten(1) @ W + b for 1x4x4 images; records every batch it sees (the noisy images) and its modes."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.weight, self.bias = weight, bias
        self.seen, self.modes = [], []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        self.modes.append((self.training, torch.is_grad_enabled()))
        return x.flatten(1) @ self.weight + self.bias


def unit_direction() -> torch.Tensor:
    signs = torch.randn(D, generator=torch.Generator().manual_seed(0)).sign()
    return signs / signs.norm()  # entries +-1/4


def binary_head(one_logit: bool = False) -> LinearHead:
    """Class 1 iff u . (x - 0.5) > 0: its smoothed classifier is the same half-space, at exact L2 distance |t| from
    the image 0.5 + t u, and class 1's probability under noise is Phi(t / sigma)."""
    u = unit_direction()
    score = torch.stack([torch.zeros(D), u], 1)
    weight = score[:, 1:] if one_logit else score
    return LinearHead(weight, -0.5 * weight.sum(0))


def three_class_head() -> LinearHead:
    """Class 0 far on the positive side of the binary boundary, 1 on the negative side, 2 (biased up) near it."""
    u = unit_direction()
    other = torch.randn(D, generator=torch.Generator().manual_seed(1))
    other = other - (other @ u) * u
    weight = torch.stack([3 * u, -3 * u, other / other.norm()], 1)
    return LinearHead(weight, -0.5 * weight.sum(0) + torch.tensor([0.0, 0.0, 1.0]))


def images_at(*t: float) -> torch.Tensor:
    """Images 0.5 + t u (signed L2 distance t from the binary head's boundary), inside [0, 1] for |t| <= 2."""
    return (0.5 + torch.tensor(t)[:, None] * unit_direction()).view(-1, 1, 4, 4)


def recorded_classes(model: LinearHead, start: int, stop: int) -> np.ndarray:
    """The base classifier's classes on the noisy images it saw, rows start:stop of all it was given."""
    seen = torch.cat(model.seen)[start:stop]
    logits = seen.flatten(1) @ model.weight + model.bias
    return (logits[:, 0] > 0).long().numpy() if logits.shape[1] == 1 else logits.argmax(1).numpy()


@pytest.mark.parametrize("head, classes", [(binary_head, 2), (three_class_head, 3)])
def test_certify_equals_scipy_on_the_same_noise_draws(head, classes):
    model, x = head(), images_at(0.3, -0.6, 0.05, 0.0)
    n0, n, alpha = 20, 200, 0.01
    cert = Smooth(model, classes, SIGMA, batch_size=64, seed=3).certify(x, n0=n0, n=n, alpha=alpha)
    seen = torch.cat(model.seen)
    assert len(seen) == len(x) * (n0 + n)  # nothing else was drawn; batches of 64 span images
    owners = np.concatenate([np.repeat(np.arange(len(x)), n0), np.repeat(np.arange(len(x)), n)])
    noise = seen - x[owners]
    assert noise.std().item() == pytest.approx(SIGMA, rel=0.05) and abs(noise.mean().item()) < 0.01
    assert seen.min() < 0 and seen.max() > 1  # not clamped to the pixel box
    selection = recorded_classes(model, 0, len(x) * n0).reshape(len(x), n0)
    estimation = recorded_classes(model, len(x) * n0, len(seen)).reshape(len(x), n)
    for i in range(len(x)):
        selected = np.bincount(selection[i], minlength=classes).argmax()
        k = int((estimation[i] == selected).sum())
        p_lower = beta.ppf(alpha, k, n - k + 1) if k else 0.0
        assert cert.selected[i] == selected and cert.count[i] == k
        assert cert.p_lower[i].item() == pytest.approx(p_lower, rel=1e-12, abs=1e-15)
        if p_lower < 0.5:
            assert cert.prediction[i] == ABSTAIN and cert.radius[i] == 0
        else:
            assert cert.prediction[i] == selected
            assert cert.radius[i].item() == pytest.approx(SIGMA * norm.ppf(p_lower), rel=1e-12)
    assert (cert.prediction != ABSTAIN).any() and (cert.prediction == ABSTAIN).any()


@pytest.mark.parametrize("head, classes", [(binary_head, 2), (three_class_head, 3)])
def test_predict_equals_a_two_sided_binomial_test_on_the_same_draws(head, classes):
    model, x = head(), images_at(0.3, -0.6, 0.02, 0.0, 0.08)
    n, alpha = 300, 0.05
    predictions = Smooth(model, classes, SIGMA, batch_size=100, seed=5).predict(x, n=n, alpha=alpha)
    drawn = recorded_classes(model, 0, len(x) * n).reshape(len(x), n)
    for i in range(len(x)):
        counts = np.bincount(drawn[i], minlength=classes)
        top, second = np.argsort(-counts, kind="stable")[:2]
        p_value = binomtest(int(counts[top]), int(counts[top] + counts[second]), 0.5).pvalue
        assert predictions[i] == (ABSTAIN if p_value > alpha else top)
    assert (predictions != ABSTAIN).any() and (predictions == ABSTAIN).any()


def test_the_lower_bound_covers_the_true_probability_where_a_normal_approximation_does_not():
    """200 images whose class probability under noise is exactly 0.99: a (1 - alpha) lower bound may exceed it on
    about alpha of them. A normal approximation (p_hat = 1 when all samples agree) or an ignored alpha exceeds it on
    about a third, and then certifies a radius beyond the exact distance to the smoothed boundary."""
    t = float(SIGMA * norm.ppf(0.99))
    model, x = binary_head(), images_at(*([t] * 200))
    alpha = 0.05
    cert = Smooth(model, 2, SIGMA, batch_size=2000, seed=0).certify(x, n0=10, n=100, alpha=alpha)
    assert (cert.count == 100).float().mean() > 0.25  # the draws that break a normal approximation occur
    over = (cert.p_lower > 0.99).float().mean().item()
    assert over <= 2 * alpha, over
    assert (cert.radius <= t + 1e-9).float().mean() >= 1 - 2 * alpha
    assert torch.isfinite(cert.radius).all() and (cert.radius > 0.5 * t).all()


def test_a_smaller_alpha_gives_a_smaller_radius_on_the_same_draws():
    model, x = binary_head(), images_at(0.2, 0.4, -0.5, 1.0)
    smooth = Smooth(model, 2, SIGMA, seed=7)
    strict, loose = (smooth.certify(x, n0=10, n=500, alpha=a) for a in (0.001, 0.1))
    assert torch.equal(strict.count, loose.count)  # alpha does not change the noise
    assert (strict.radius < loose.radius).all() and (strict.p_lower < loose.p_lower).all()
    k = strict.count.numpy()
    assert np.allclose(lower_confidence_bound(k, 500, 0.001), beta.ppf(0.001, k, 500 - k + 1))


def test_no_perturbation_inside_the_certified_radius_flips_the_linear_smoothed_classifier():
    """The smoothed linear classifier is the same half-space, so the exact worst perturbation of norm r moves the
    image r toward the boundary: inside the radius the smoothed prediction holds (or abstains at the very
    boundary), just beyond the exact distance it flips, so the check can fail."""
    t = torch.tensor([0.15, 0.4, 0.8, 1.2, -0.3, -0.9])
    model, x = binary_head(), images_at(*t.tolist())
    cert = Smooth(model, 2, SIGMA, seed=0).certify(x, n0=50, n=5000, alpha=0.001)
    assert (cert.prediction == (t > 0).long()).all()
    reachable = torch.clamp(t.abs(), max=SIGMA * norm.ppf(0.001 ** (1 / 5000)))  # n = 5000 certifies at most this
    assert (cert.radius <= t.abs()).all() and (cert.radius > 0.7 * reachable).all()  # sound, and not vacuous
    toward = -t.sign()[:, None] * unit_direction()
    inside = (x.flatten(1) + 0.999 * cert.radius.float()[:, None] * toward).view_as(x)
    beyond = (x.flatten(1) + (t.abs() + 0.4)[:, None] * toward).view_as(x)
    judge = Smooth(model, 2, SIGMA, seed=11)
    held = judge.predict(inside, n=4000, alpha=0.001)
    assert ((held == cert.prediction) | (held == ABSTAIN)).all(), held
    assert (judge.predict(beyond, n=4000, alpha=0.001) == 1 - cert.prediction).all()


class ExpectedSoftmax(nn.Module):
    """Log of the base model's softmax averaged over fixed noise draws: the smoothed classifier PGD can attack."""

    def __init__(self, model: nn.Module, sigma: float, draws: int = 64):
        super().__init__()
        self.model, self.sigma, self.draws = model, sigma, draws

    def forward(self, x):
        noise = torch.randn((self.draws, *x.shape[1:]), generator=torch.Generator().manual_seed(0))
        noisy = (x[:, None] + self.sigma * noise).flatten(0, 1)
        probabilities = self.model(noisy).softmax(1).view(len(x), self.draws, -1).mean(1)
        return probabilities.clamp_min(1e-12).log()


def test_pgd_on_the_smoothed_classifier_never_flips_a_certified_prediction_inside_its_radius():
    model, x, y = trained(2)
    x, sigma = x[:8], 0.12
    cert = Smooth(model, 2, sigma, seed=0).certify(x, n0=20, n=1000, alpha=0.001)
    certified = (cert.prediction != ABSTAIN).nonzero().flatten().tolist()
    assert len(certified) >= 4
    surrogate, judge, flipped_beyond = ExpectedSoftmax(model, sigma), Smooth(model, 2, sigma, seed=1), 0
    for i in certified:
        image, label = x[i:i + 1], cert.prediction[i:i + 1]
        inside = PGD(surrogate, cert.radius[i].item(), norm="l2", steps=20, seed=0)(image, label)
        assert judge.predict(inside, n=1000, alpha=0.001).item() in (label.item(), ABSTAIN)
        beyond = PGD(surrogate, 4.0, norm="l2", steps=20, seed=0)(image, label)
        flipped_beyond += judge.predict(beyond, n=1000, alpha=0.001).item() == 1 - label.item()
    assert flipped_beyond > 0  # the attack is strong enough to flip predictions further out


def test_abstains_at_the_boundary_and_not_for_a_constant_model():
    model, x = binary_head(), images_at(0.0, 0.0, 0.0)
    smooth = Smooth(model, 2, SIGMA, seed=0)
    cert = smooth.certify(x, n0=10, n=200, alpha=0.001)
    assert (cert.prediction == ABSTAIN).all() and (cert.radius == 0).all() and (cert.p_lower < 0.5).all()
    assert (smooth.predict(x, n=200, alpha=0.001) == ABSTAIN).all()
    constant = LinearHead(torch.zeros(D, 3), torch.tensor([0.0, 5.0, 0.0]))
    cert = Smooth(constant, 3, SIGMA).certify(x, n0=10, n=200, alpha=0.001)
    assert (cert.prediction == 1).all() and (cert.count == 200).all()
    assert torch.allclose(cert.radius, torch.tensor(SIGMA * norm.ppf(0.001 ** (1 / 200)), dtype=torch.float64))
    assert (Smooth(constant, 3, SIGMA).predict(x, n=200, alpha=0.001) == 1).all()


def test_a_one_logit_binary_head_certifies_like_its_two_logit_twin():
    x = images_at(0.3, -0.2, 0.05)
    one, two = (Smooth(binary_head(flag), 2, SIGMA, seed=2).certify(x, 10, 300, 0.01) for flag in (True, False))
    assert torch.equal(one.count, two.count) and torch.equal(one.prediction, two.prediction)


def test_seeded_calls_repeat_and_the_model_runs_in_eval_mode_without_autograd():
    model, x = binary_head(), images_at(0.1, -0.1)
    model.train()
    first, again = (Smooth(model, 2, SIGMA, seed=4).certify(x, 10, 100, 0.01) for _ in range(2))
    other = Smooth(model, 2, SIGMA, seed=5).certify(x, 10, 100, 0.01)
    assert torch.equal(first.count, again.count) and torch.equal(first.radius, again.radius)
    assert not torch.equal(torch.cat(model.seen[:2]), torch.cat(model.seen[-2:]))  # another seed, other noise
    assert not torch.equal(first.p_lower, other.p_lower)
    assert set(model.modes) == {(False, False)} and model.training
    Smooth(model, 2, SIGMA, seed=None).predict(x, 10, 0.01)


def test_certified_metrics_count_only_unabstained_correct_predictions_at_their_radius():
    from lightning_modules.metrics import BalancedAccuracy

    labels = [0, 0, 0, 1, 1, 2]
    predictions = [0, 0, ABSTAIN, 1, 0, 2]
    radii = [0.3, 0.6, 0.0, 1.2, 0.9, 0.1]
    metrics = certified_metrics(labels, predictions, radii, num_classes=4)
    assert metrics.radii == (0.0, 0.25, 0.5, 1.0) and metrics.examples == 6
    assert metrics.abstention_rate == pytest.approx(1 / 6)
    assert metrics.accuracy == pytest.approx((4 / 6, 3 / 6, 2 / 6, 1 / 6))
    assert metrics.balanced_accuracy == pytest.approx(((2 / 3 + 1 / 2 + 1) / 3, (2 / 3 + 1 / 2) / 3,
                                                        (1 / 3 + 1 / 2) / 3, (1 / 2) / 3))
    for r, value in zip(metrics.radii, metrics.balanced_accuracy):  # the project's definition, on hits and misses
        correct = (np.array(predictions) == labels) & (np.array(radii) >= r)
        scored = np.where(correct, labels, (np.array(labels) + 1) % 4)
        reference = BalancedAccuracy(4)
        reference.update(torch.tensor(scored), torch.tensor(labels))
        assert value == pytest.approx(float(reference.compute()))


def test_task_names_are_the_datamodules():
    from datamodules.info import BINARY, MULTICLASS, MULTILABEL, ORDINAL

    assert set(SINGLE_LABEL_TASKS) == {BINARY, MULTICLASS, ORDINAL} and MULTILABEL_TASK == MULTILABEL


@pytest.mark.parametrize("build, message", [
    (lambda m: Smooth(m, 2, 0.0), "sigma"),
    (lambda m: Smooth(m, 2, -0.25), "sigma"),
    (lambda m: Smooth(m, 2, float("nan")), "sigma"),
    (lambda m: Smooth(m, 1, 0.25), "num_classes"),
    (lambda m: Smooth(m, 2, 0.25, batch_size=0), "batch_size"),
    (lambda m: Smooth(m, 2, 0.25, task="multilabel"), "multi-label"),
    (lambda m: Smooth(m, 2, 0.25).certify(images_at(0.1), n0=100, n=100, alpha=0.001), "n0"),
    (lambda m: Smooth(m, 2, 0.25).certify(images_at(0.1), n0=0, n=100, alpha=0.001), "n0"),
    (lambda m: Smooth(m, 2, 0.25).certify(images_at(0.1), n0=10, n=0, alpha=0.001), "n must"),
    (lambda m: Smooth(m, 2, 0.25).certify(images_at(0.1), n0=10, n=100, alpha=0.0), "alpha"),
    (lambda m: Smooth(m, 2, 0.25).certify(images_at(0.1), n0=10, n=100, alpha=1.0), "alpha"),
    (lambda m: Smooth(m, 2, 0.25).predict(images_at(0.1), n=0, alpha=0.05), "n must"),
    (lambda m: Smooth(m, 2, 0.25).predict(images_at(0.1), n=10, alpha=1.5), "alpha"),
    (lambda m: Smooth(m, 2, 0.25).predict(images_at(0.1) + 1, n=10, alpha=0.05), "[0, 1]"),
    (lambda m: check_settings(0.25, 10, 100, 0.001, []), "radii"),
    (lambda m: check_settings(0.25, 10, 100, 0.001, [0.5, -1]), "radii"),
    (lambda m: check_settings(0, 10, 100, 0.001), "sigma"),
    (lambda m: check_settings(0.25, 100, 10, 0.001), "n0"),
    (lambda m: check_settings(0.25, 10, 100, 2), "alpha"),
    (lambda m: certified_metrics([0], [0], [0.5], [], num_classes=2), "radii"),
    (lambda m: certified_metrics([0, 1], [0], [0.5], num_classes=2), "as many"),
    (lambda m: certified_metrics([0, 2], [0, 1], [0.5, 0.5], num_classes=2), "classes"),
])
def test_bad_settings_end_in_one_config_error_line_before_any_work(build, message):
    model = binary_head()
    with pytest.raises(ConfigError) as error:
        build(model)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert model.seen == []


def test_logits_of_the_wrong_width_are_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"expected \(B, 3\)"):
        Smooth(binary_head(), 3, SIGMA).certify(images_at(0.1), 10, 100, 0.01)
    check_settings(0.25, 100, 100_000, 0.001)  # Cohen et al.'s settings pass
