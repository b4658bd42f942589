"""Explanation robustness of a model on a batch, in one dict: the explanation attack against random noise of the
same radius, max-sensitivity, and the share of predictions kept (the figures behind the `expl_*` metric keys)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from attacks.explanation import TargetedManipulation, TopKAttack, input_gradient_map, topk_count
from attacks.gradient import attack_mode, autograd_ready
from attacks.threat_model import parse_epsilon, parse_norm
from core.checks import positive_int
from core.errors import ConfigError
from explanations.measures import SIMILARITIES, map_similarity, max_sensitivity, noise_similarity
from explanations.methods import Explainer, explained_classes

ATTACKS = ("topk", "targeted")
EXPLANATION_METRICS = (*SIMILARITIES, *(f"{name}_random" for name in SIMILARITIES), "sensmax", "kept", "kept_random")


def explanation_robustness(model: nn.Module, images: Tensor, targets: Optional[Tensor] = None, epsilon="4/255", *,
                           method: str = "saliency", norm: str = "linf", k=0.1, attack: str = "topk", steps: int = 10,
                           alpha=None, beta: float = 10.0, gamma: float = 1.0, samples: int = 8, seed: int = 0,
                           multilabel: Optional[bool] = None, reduce: bool = True,
                           explainer_options: Optional[dict] = None) -> dict:
    """How much `method`'s maps move under the explanation attack and under random noise, both of radius epsilon.

    The class explained is `explained_classes(model, images, targets)` (multi-label: the top-scoring label). The
    attack (attack="topk": Ghorbani et al.'s top-k region attack; "targeted": Dombrowski et al.'s manipulation
    towards the map of the next image in the batch) moves the input-gradient map, computed with ReLU replaced by
    Softplus(beta) during the attack; `method`'s maps on the model as given are then compared with the clean ones.
    An example whose prediction the attack changed is a failed manipulation: its similarities count as 1 (the map
    left intact); the same rule holds under the random noise. Keys: EXPLANATION_METRICS (topk, spearman, cosine
    under attack; the same with _random under random noise of the same radius (`random_perturbation`); sensmax:
    max-sensitivity over `samples` uniform draws; kept, kept_random: share of predictions kept), floats averaged
    over the examples with reduce=True, (N,) tensors otherwise. `steps`, `alpha`, `beta`, `gamma` are the
    attack's; `samples` max-sensitivity's draws; `explainer_options` go to `Explainer` (e.g. {"samples": 16} for
    SmoothGrad, {"steps": 32} for Integrated Gradients).
    """
    if attack not in ATTACKS:
        raise ConfigError(f"unknown explanation attack {attack!r}: choose one of {', '.join(ATTACKS)}")
    norm = parse_norm(norm)
    epsilon = parse_epsilon(epsilon, norm)
    samples = positive_int("samples", samples)
    topk_count(k, images[0, 0].numel() if images.ndim == 4 else 1)  # a bad k fails before any work
    if multilabel is None:
        multilabel = targets is not None and targets.is_floating_point() and targets.ndim == 2
    explainer = Explainer(model, method, seed=seed, **(explainer_options or {}))
    images = autograd_ready(images)
    classes = explained_classes(model, images, targets)
    clean_maps = explainer(images, classes)

    if attack == "topk":
        result = TopKAttack(model, epsilon, alpha=alpha, steps=steps, norm=norm, k=k, beta=beta,
                            multilabel=multilabel).run(images, classes)
    else:
        target_maps = _target_maps(model, images, classes)
        result = TargetedManipulation(model, epsilon, alpha=alpha, steps=steps, norm=norm, gamma=gamma, beta=beta,
                                      multilabel=multilabel).run(images, target_maps, classes)
    attacked = _failed_count_as_intact(map_similarity(clean_maps, explainer(result.x_adv, classes), k), result.kept)
    noisy = noise_similarity(explainer, images, classes, epsilon, norm=norm, k=k, seed=seed, multilabel=multilabel)
    kept_random = noisy.pop("kept")
    noisy = _failed_count_as_intact(noisy, kept_random)
    values = {**attacked, **{f"{name}_random": value for name, value in noisy.items()},
              "sensmax": max_sensitivity(explainer, images, classes, epsilon, norm=norm, samples=samples, seed=seed),
              "kept": result.kept.float(), "kept_random": kept_random.float()}
    if reduce:
        return {name: values[name].float().mean().item() for name in EXPLANATION_METRICS}
    return {name: values[name] for name in EXPLANATION_METRICS}


def _failed_count_as_intact(similarity: dict[str, Tensor], kept: Tensor) -> dict[str, Tensor]:
    return {name: torch.where(kept, value, torch.ones_like(value)) for name, value in similarity.items()}


def _target_maps(model: nn.Module, images: Tensor, classes: Tensor) -> Tensor:
    """Dombrowski et al.'s target: the gradient map of another image (the next one in the batch, for its class)."""
    if len(images) < 2:
        raise ConfigError("the targeted explanation attack takes its target maps from other images: pass at least 2")
    with attack_mode(model):
        return input_gradient_map(model, images.roll(1, 0), classes.roll(1, 0)).detach()
