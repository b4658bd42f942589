"""Randomized smoothing (Cohen, Rosenfeld & Kolter, ICML 2019): PREDICT with abstention, CERTIFY with a certified
L2 radius per image, and certified (balanced) accuracy at radii.

The smoothed classifier is g(x) = argmax_c P(f(x + e) = c), e ~ N(0, sigma^2 I), with f the base model's argmax.
CERTIFY returns a class and a radius r such that, with probability >= 1 - alpha over the noise, g predicts that
class at every x' with ||x' - x||_2 < r. Pixel contract as for every attack: images in [0, 1], sigma and radii in
the same pixel units.

Noise is added WITHOUT clamping to [0, 1]: the guarantee is about the Gaussian around x (clamping would be valid
too, as part of the base classifier f(clamp(z)), but it is not what Cohen et al.'s reference code certifies), and
a model trained with unclamped noise at sigma sees the same distribution when it is certified.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
from scipy.stats import beta, binomtest, norm
from torch import Tensor, nn

from attacks.gradient import check_pixels, eval_mode
from core.checks import positive_int
from core.errors import ConfigError

ABSTAIN = -1
DEFAULT_RADII = (0.0, 0.25, 0.5, 1.0)
# datamodules.info's task names (attacks may not import datamodules); tests check that they agree
SINGLE_LABEL_TASKS = ("binary", "multiclass", "ordinal")
MULTILABEL_TASK = "multilabel"


@dataclass(frozen=True)
class Certificate:
    """CERTIFY's answer per image (CPU tensors of length B): `prediction` is the class or ABSTAIN (-1), `radius`
    the certified L2 radius (0 where abstained), `selected` the class the n0 selection samples chose, `count` how
    many of the n estimation samples the base model gave it, `p_lower` the Clopper-Pearson lower bound of its
    probability."""

    prediction: Tensor
    radius: Tensor
    selected: Tensor
    count: Tensor
    p_lower: Tensor


@dataclass(frozen=True)
class CertifiedMetrics:
    """Certified accuracy and balanced accuracy at each radius of `radii`, the abstention rate, the example count."""

    radii: tuple[float, ...]
    accuracy: tuple[float, ...]
    balanced_accuracy: tuple[float, ...]
    abstention_rate: float
    examples: int


class Smooth:
    """The smoothed classifier of `model` (logits (B, num_classes), or one logit for a binary head) at noise sigma.

    Arguments: num_classes (>= 2), sigma (> 0, pixel units), batch_size (noisy images per forward pass, spread over
    several images), seed (a generator seeded on every call, so results are a deterministic function of the
    images; None: the global RNG), task (a DataModule task name; multi-label heads are refused).
    Example: ``Smooth(model, 2, 0.25).certify(x, n0=100, n=1000, alpha=0.001).radius``.
    """

    def __init__(self, model: nn.Module, num_classes: int, sigma: float, batch_size: int = 1000,
                 seed: Optional[int] = 0, task: str = "multiclass"):
        if task == MULTILABEL_TASK:
            raise ConfigError("randomized smoothing certifies single-label heads; multi-label is not supported")
        if task not in SINGLE_LABEL_TASKS:
            raise ConfigError(f"task must be one of {', '.join(SINGLE_LABEL_TASKS)}, got {task!r}")
        self.model = model
        self.num_classes = positive_int("num_classes", num_classes)
        if self.num_classes < 2:
            raise ConfigError(f"num_classes must be at least 2, got {num_classes!r}")
        self.sigma = _positive_float("sigma", sigma)
        self.batch_size = positive_int("batch_size", batch_size)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ConfigError(f"seed must be an integer or None, got {seed!r}")
        self.seed = seed

    def __repr__(self) -> str:
        return (f"Smooth(num_classes={self.num_classes}, sigma={self.sigma:g}, batch_size={self.batch_size}, "
                f"seed={self.seed})")

    def predict(self, x: Tensor, n: int, alpha: float) -> Tensor:
        """PREDICT: per image the top class of n noisy samples, or ABSTAIN when a two-sided binomial test between
        the top two counts has p-value > alpha (the returned class is wrong with probability <= alpha)."""
        n, alpha = positive_int("n", n), _probability("alpha", alpha)
        counts = self.sample_counts(x, [n], self._generator(x))[0]
        top2 = counts.topk(2, dim=1)
        predictions = top2.indices[:, 0].clone()
        for i, (n_a, n_b) in enumerate(top2.values.tolist()):
            if binomtest(n_a, n_a + n_b, 0.5).pvalue > alpha:
                predictions[i] = ABSTAIN
        return predictions

    def certify(self, x: Tensor, n0: int, n: int, alpha: float) -> Certificate:
        """CERTIFY: the class chosen by n0 selection samples, its one-sided (1 - alpha) Clopper-Pearson lower bound
        p_lower = Beta.ppf(alpha, k, n - k + 1) from n fresh samples, radius sigma * Phi^-1(p_lower); abstain when
        p_lower < 1/2."""
        n0, n, alpha = positive_int("n0", n0), positive_int("n", n), _probability("alpha", alpha)
        if n0 >= n:
            raise ConfigError(f"n0 (selection samples) must be smaller than n (estimation samples), got {n0} >= {n}")
        selection, estimation = self.sample_counts(x, [n0, n], self._generator(x))
        selected = selection.argmax(dim=1)
        count = estimation.gather(1, selected[:, None])[:, 0]
        p_lower = torch.from_numpy(lower_confidence_bound(count.numpy(), n, alpha))
        certified = p_lower >= 0.5
        radius = torch.where(certified, self.sigma * torch.from_numpy(norm.ppf(p_lower.numpy())), 0.0)
        prediction = torch.where(certified, selected, ABSTAIN)
        return Certificate(prediction, radius, selected, count, p_lower)

    def sample_counts(self, x: Tensor, draws: Sequence[int], generator: Optional[torch.Generator]) -> list[Tensor]:
        """Per entry k of `draws`, the (B, num_classes) counts of the base model's classes on k noisy copies of each
        image (CPU int64). Draws come in order: for each entry, image 0's k samples, then image 1's, ...; they are
        cut into forward passes of `batch_size` noisy images that may span several images."""
        if x.ndim < 2 or len(x) == 0:
            raise ConfigError(f"smoothing needs a non-empty batch of images (B, ...), got shape {tuple(x.shape)}")
        check_pixels(x)
        device = _device(self.model, x)
        x = x.detach().to(device)
        results = []
        with eval_mode(self.model), torch.no_grad():
            for k in draws:
                counts = torch.zeros(len(x), self.num_classes, dtype=torch.int64, device=device)
                for start in range(0, len(x) * k, self.batch_size):
                    owners = torch.arange(start, min(start + self.batch_size, len(x) * k), device=device) // k
                    images = x[owners]
                    classes = self._classes(self.model(gaussian_noise(images, self.sigma, generator)))
                    counts.index_put_((owners, classes), torch.ones_like(classes), accumulate=True)
                results.append(counts.cpu())
        return results

    def _classes(self, logits: Tensor) -> Tensor:
        """The base classifier f: argmax of the logits, or logit > 0 for a one-logit binary head."""
        if logits.ndim == 2 and logits.shape[1] == self.num_classes:
            return logits.argmax(dim=1)
        if logits.ndim == 2 and logits.shape[1] == 1 and self.num_classes == 2:
            return (logits[:, 0] > 0).long()
        raise ConfigError(f"the model returned logits of shape {tuple(logits.shape)}, expected (B, "
                          f"{self.num_classes}){' or (B, 1)' if self.num_classes == 2 else ''}")

    def _generator(self, x: Tensor) -> Optional[torch.Generator]:
        if self.seed is None:
            return None
        return torch.Generator(device=_device(self.model, x)).manual_seed(self.seed)


def gaussian_noise(x: Tensor, sigma: float, generator: Optional[torch.Generator] = None) -> Tensor:
    """x + sigma * N(0, I), unclamped, on x's device and dtype: the one noise of smoothing, drawn alike when a model is
    trained for it (ERM's noise_sigma) and when it is certified. sigma 0 returns x and draws nothing."""
    if sigma == 0:
        return x
    return x + sigma * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def noise_level(sigma) -> float:
    """A training noise sigma: a finite number >= 0 in pixel units (0: no noise); one ConfigError line otherwise."""
    if not _finite(sigma) or sigma < 0:
        raise ConfigError(f"noise_sigma must be a finite number >= 0 (pixel units; 0: no noise), got {sigma!r}")
    return float(sigma)


def lower_confidence_bound(count: np.ndarray, n: int, alpha: float) -> np.ndarray:
    """One-sided (1 - alpha) Clopper-Pearson lower bound of a binomial proportion from `count` successes in n
    trials: Beta.ppf(alpha, count, n - count + 1), and 0 for count = 0 (Cohen et al.'s proportion_confint(...,
    alpha=2 * alpha, method="beta")[0])."""
    count = np.asarray(count, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        bound = beta.ppf(alpha, count, n - count + 1)
    return np.where(count > 0, bound, 0.0)


def certified_metrics(labels, predictions, radii, radii_list: Sequence[float] = DEFAULT_RADII, *,
                      num_classes: int) -> CertifiedMetrics:
    """Certified accuracy and balanced accuracy at each radius in `radii_list`: an example counts as correct at r
    when it was not abstained, its prediction equals its label and its certified radius >= r. Balanced accuracy is
    the project's one definition (lightning_modules.metrics.BalancedAccuracy, sklearn's): the mean recall over the
    classes present in `labels`; it is written out here because attacks/ sits below lightning_modules/."""
    radii_list = _radius_list(radii_list)
    num_classes = positive_int("num_classes", num_classes)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    predictions = np.asarray(predictions, dtype=np.int64).reshape(-1)
    radii = np.asarray(radii, dtype=np.float64).reshape(-1)
    if not len(labels) == len(predictions) == len(radii) or len(labels) == 0:
        raise ConfigError(f"certified_metrics needs as many labels, predictions and radii (at least one), got "
                          f"{len(labels)}, {len(predictions)} and {len(radii)}")
    if min(labels.min(), predictions.min() + 1) < 0 or max(labels.max(), predictions.max()) >= num_classes:
        raise ConfigError(f"labels must be classes in [0, {num_classes}), predictions classes or {ABSTAIN} (abstain)")
    support = np.bincount(labels, minlength=num_classes)
    accuracy, balanced = [], []
    for r in radii_list:
        correct = (predictions == labels) & (radii >= r)
        recall = np.bincount(labels, weights=correct, minlength=num_classes)[support > 0] / support[support > 0]
        accuracy.append(float(correct.mean()))
        balanced.append(float(recall.mean()))
    return CertifiedMetrics(radii_list, tuple(accuracy), tuple(balanced), float((predictions == ABSTAIN).mean()),
                            len(labels))


def check_settings(sigma, n0: int, n: int, alpha, radii_list: Sequence[float] = DEFAULT_RADII) -> None:
    """Refuse impossible certification settings in one ConfigError line before any work (for a config loader)."""
    _positive_float("sigma", sigma)
    n0, n = positive_int("n0", n0), positive_int("n", n)
    if n0 >= n:
        raise ConfigError(f"n0 (selection samples) must be smaller than n (estimation samples), got {n0} >= {n}")
    _probability("alpha", alpha)
    _radius_list(radii_list)


def _radius_list(radii_list) -> tuple[float, ...]:
    values = tuple(radii_list) if isinstance(radii_list, (list, tuple)) else ()
    if not values or not all(_finite(r) and float(r) >= 0 for r in values):
        raise ConfigError(f"certified radii must be a non-empty list of numbers >= 0, got {radii_list!r}")
    return tuple(float(r) for r in values)


def _finite(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)


def _positive_float(name: str, value) -> float:
    if not _finite(value) or value <= 0:
        raise ConfigError(f"{name} must be a number > 0 (pixel units), got {value!r}")
    return float(value)


def _probability(name: str, value) -> float:
    if not _finite(value) or not 0 < value < 1:
        raise ConfigError(f"{name} must be a number in (0, 1), got {value!r}")
    return float(value)


def _device(model: nn.Module, x: Tensor) -> torch.device:
    parameter = next(model.parameters(), None)
    return x.device if parameter is None else parameter.device
