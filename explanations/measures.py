"""How much an explanation changes: map-vs-map similarities and robustness measures of an explainer.

Map-vs-map (each (N,) per example, maps (N, H, W)): top-k intersection and Spearman rank correlation (Ghorbani
et al. 2019), cosine similarity. Functions of (explainer, images, targets, epsilon): the similarities between the
clean maps and the maps under random noise of radius epsilon, and max-sensitivity (Yeh et al. 2019) through
`captum.metrics.sensitivity_max`. Every random draw is seeded; perturbed images are clamped to [0, 1].
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from attacks.explanation import topk_count
from attacks.gradient import _l2, attack_mode, autograd_ready
from attacks.threat_model import parse_epsilon, parse_norm
from core.checks import positive_int
from core.errors import ConfigError
from explanations.methods import explained_classes

SIMILARITIES = ("topk", "spearman", "cosine")


def _pair(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    if a.shape != b.shape or a.ndim != 3:
        raise ConfigError(f"maps must both have shape (N, H, W), got {tuple(a.shape)} and {tuple(b.shape)}")
    return a.detach().flatten(1).float(), b.detach().flatten(1).float()


def topk_intersection(a: Tensor, b: Tensor, k=0.1) -> Tensor:
    """Share of a's k most important pixels that are among b's k most important, per example, in [0, 1].
    k: a pixel count (int) or a share of the image's pixels (float in (0, 1])."""
    a, b = _pair(a, b)
    count = topk_count(k, a.shape[1])
    top_a = torch.zeros_like(a).scatter_(1, a.topk(count, dim=1).indices, 1.0)
    top_b = torch.zeros_like(b).scatter_(1, b.topk(count, dim=1).indices, 1.0)
    return (top_a * top_b).sum(1) / count


def average_ranks(values: Tensor) -> Tensor:
    """Ranks (0-based) of each row's entries, ties sharing their average rank (as scipy.stats.rankdata)."""
    n, m = values.shape
    sorted_values, order = values.sort(dim=1)
    new_group = torch.ones_like(sorted_values, dtype=torch.bool)
    new_group[:, 1:] = sorted_values[:, 1:] != sorted_values[:, :-1]
    group = new_group.long().cumsum(1) - 1 + torch.arange(n, device=values.device).view(-1, 1) * m  # unique per row
    positions = torch.arange(m, device=values.device, dtype=values.dtype).expand(n, m).reshape(-1)
    mean_rank = torch.zeros(n * m, device=values.device, dtype=values.dtype)
    mean_rank.scatter_reduce_(0, group.reshape(-1), positions, reduce="mean", include_self=False)
    ranks = torch.empty_like(values)
    ranks.scatter_(1, order, mean_rank[group])
    return ranks


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation over pixels per example (ties get average ranks); 0 when a map is constant."""
    a, b = _pair(a, b)
    return cosine_rows(_centred(average_ranks(a.double())), _centred(average_ranks(b.double()))).float()


def cosine(a: Tensor, b: Tensor) -> Tensor:
    """Cosine similarity of the flattened maps per example (0 when a map is all zero)."""
    return cosine_rows(*_pair(a, b))


def cosine_rows(a: Tensor, b: Tensor) -> Tensor:
    norms = a.norm(dim=1) * b.norm(dim=1)
    return torch.where(norms > 0, (a * b).sum(1) / norms.clamp_min(1e-30), torch.zeros_like(norms))


def _centred(t: Tensor) -> Tensor:
    return t - t.mean(1, keepdim=True)


def map_similarity(a: Tensor, b: Tensor, k=0.1) -> dict[str, Tensor]:
    """{"topk", "spearman", "cosine"}: each (N,), map a against map b."""
    return {"topk": topk_intersection(a, b, k), "spearman": spearman(a, b), "cosine": cosine(a, b)}


def random_perturbation(images: Tensor, epsilon, norm: str = "linf", seed: int = 0) -> Tensor:
    """Random noise of radius epsilon, the comparison for an attack of the same budget: a random sign
    (+-epsilon per pixel, a corner of the L-inf ball) or a random direction of L2 norm epsilon; clamped to [0, 1]."""
    norm = parse_norm(norm)
    epsilon = parse_epsilon(epsilon, norm)
    generator = torch.Generator(device=images.device).manual_seed(seed)
    if norm == "linf":
        delta = torch.randint(0, 2, images.shape, generator=generator, device=images.device).to(images.dtype) * 2 - 1
        delta = delta * epsilon
    else:
        delta = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
        delta = delta / _l2(delta).clamp_min(1e-12) * epsilon
    return (autograd_ready(images) + delta).clamp(0.0, 1.0)


def uniform_ball(images: Tensor, epsilon: float, norm: str, generator: torch.Generator) -> Tensor:
    """A uniform draw from the epsilon ball around each image (L-inf: a uniform cube; L2: uniform in the ball),
    clamped to [0, 1]."""
    shape, device, dtype = images.shape, images.device, images.dtype
    if norm == "linf":
        delta = (torch.rand(shape, generator=generator, device=device, dtype=dtype) * 2 - 1) * epsilon
    else:
        direction = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        dims = images[0].numel()
        radius = torch.rand((shape[0],) + (1,) * (len(shape) - 1), generator=generator, device=device, dtype=dtype)
        delta = direction / _l2(direction).clamp_min(1e-12) * radius.pow(1 / dims) * epsilon
    return (images + delta).clamp(0.0, 1.0)


def _predicted(explainer, images: Tensor, multilabel: bool) -> Tensor:
    with attack_mode(explainer.model), torch.no_grad():
        logits = explainer.model(autograd_ready(images)).float()
    return logits > 0 if multilabel else logits.argmax(1)


def noise_similarity(explainer, images: Tensor, targets: Optional[Tensor], epsilon, norm: str = "linf", k=0.1,
                     seed: int = 0, multilabel: bool = False) -> dict[str, Tensor]:
    """Clean maps against the maps under `random_perturbation` of radius epsilon: map_similarity's keys, each (N,),
    and "kept" (bool (N,)): the model's prediction unchanged by the noise. targets as `explained_classes` reads them
    (None or multi-label: the top-scoring class of the clean image, explained on both)."""
    targets = explained_classes(explainer.model, images, targets)
    noisy = random_perturbation(images, epsilon, norm, seed)
    clean_maps, noisy_maps = explainer(images, targets), explainer(noisy, targets)
    kept = _predicted(explainer, images, multilabel) == _predicted(explainer, noisy, multilabel)
    return {**map_similarity(clean_maps, noisy_maps, k), "kept": kept.all(1) if multilabel else kept}


def max_sensitivity(explainer: Callable[[Tensor, Optional[Tensor]], Tensor], images: Tensor, targets: Optional[Tensor],
                    epsilon, norm: str = "linf", samples: int = 8, seed: int = 0) -> Tensor:
    """Max-sensitivity (Yeh et al. 2019) per example: over `samples` uniform draws x' from the epsilon ball
    (clamped to [0, 1]), the largest ||map(x') - map(x)||_F / ||map(x)||_F (captum.metrics.sensitivity_max)."""
    from captum.metrics import sensitivity_max

    norm = parse_norm(norm)
    epsilon = parse_epsilon(epsilon, norm)
    samples = positive_int("samples", samples)
    images = autograd_ready(images)
    if targets is None or targets.ndim != 1:
        targets = explained_classes(explainer.model, images, targets)
    generator = torch.Generator(device=images.device).manual_seed(seed)

    def perturb(inputs: Tensor, radius: float) -> Tensor:
        return uniform_ball(inputs, radius, norm, generator)

    def explain(inputs, target: Tensor) -> tuple[Tensor]:  # captum passes and expects tuples of tensors
        return (explainer(inputs[0] if isinstance(inputs, tuple) else inputs, target),)

    return sensitivity_max(explain, images, perturb_func=perturb, perturb_radius=epsilon,
                           n_perturb_samples=samples, target=autograd_ready(targets)).detach()
