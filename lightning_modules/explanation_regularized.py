"""Explanation-regularised training: flatten the input loss landscape with respect to the explanation loss.

Chen et al. (arXiv 2403.06013) train a model whose explanation loss (the distance between the saliency map of an
image and that of a nearby image) stays small over a neighbourhood of each input, and find that this moves
explanation robustness but not classification robustness. `ExplanationRegularized` adds that penalty to any of
the project's training losses (ERM, PGD-AT, TRADES: `base`):

    loss = base loss + expl_weight * D(map(x + delta), map(x)),   delta = argmax_{|delta| <= expl_epsilon} D(...)

where map is the input-gradient saliency of the explained class (|d logit / d x| summed over channels), D the mean
squared difference of the mean-normalised maps (attacks.explanation.map_distance), and delta found by `expl_steps`
signed-gradient steps from a random start in the ball (0 steps: the random start alone). ReLU networks have zero
second derivatives, so the penalty (and its inner maximisation) run on the softplus network (every nn.ReLU ->
nn.Softplus(softplus_beta), as Dombrowski et al. 2019 do); the worst neighbour is searched in eval mode, the
penalty is taken in the model's current mode (training: batch statistics, as TRADES' robust term).
"""
from __future__ import annotations

from typing import Optional

import torch

from attacks.explanation import input_gradient_map, map_distance, softplus_relus
from attacks.gradient import attack_mode, is_class_index
from attacks.threat_model import parse_epsilon
from core.errors import ConfigError
from .adversarial import PGDAT, TRADES, Epsilon
from .erm import ERM

BASES = ("erm", "pgd_at", "trades")


class ExplanationRegularized(TRADES):
    """ERM, PGD-AT or TRADES (`base`) plus `expl_weight` times the explanation loss at the worst point of an
    `expl_epsilon` ball around each training image (module docstring). `epsilon`, `steps`, `alpha` and `beta` are
    the base's adversarial settings (unused by ERM); the norm is shared."""

    def __init__(
        self,
        base: str = "erm",
        expl_weight: float = 1.0,
        expl_epsilon: Epsilon = "2/255",
        expl_steps: int = 1,
        softplus_beta: float = 10.0,
        epsilon: Epsilon = "4/255",
        beta: float = 6.0,
        alpha: Optional[Epsilon] = None,
        steps: int = 7,
        **kwargs,
    ):
        """
        Args:
            base: the classification loss: erm, pgd_at or trades.
            expl_weight: weight of the explanation penalty (0: the base alone).
            expl_epsilon: radius of the neighbourhood the explanation loss is flattened over (pixel units).
            expl_steps: signed-gradient steps that look for the worst neighbour (0: a random neighbour).
            softplus_beta: the Softplus that stands in for every ReLU in the penalty (larger: closer to ReLU).
        """
        if base not in BASES:
            raise ConfigError(f"unknown base {base!r} for explanation-regularised training: choose from {', '.join(BASES)}")
        self.train_inputs = "adv" if base == "pgd_at" else "clean"  # read by ERM.__init__ for the metric names
        super().__init__(epsilon=epsilon, beta=beta, alpha=alpha, steps=steps, **kwargs)
        if expl_weight < 0:
            raise ConfigError(f"expl_weight must be >= 0, got {expl_weight}")
        if isinstance(expl_steps, bool) or not isinstance(expl_steps, int) or expl_steps < 0:
            raise ConfigError(f"expl_steps must be an integer >= 0, got {expl_steps!r}")
        if not softplus_beta > 0:
            raise ConfigError(f"softplus_beta must be > 0, got {softplus_beta}")
        self.base = base
        self.expl_weight, self.expl_steps, self.softplus_beta = float(expl_weight), expl_steps, float(softplus_beta)
        self.expl_epsilon = parse_epsilon(expl_epsilon, self.norm)

    def base_loss(self, x, y):
        if self.base == "pgd_at":
            return PGDAT.training_loss(self, x, y)
        if self.base == "trades":
            return TRADES.training_loss(self, x, y)
        return ERM.training_loss(self, x, y)

    def training_loss(self, x, y):
        loss, logits = self.base_loss(x, y)
        if self.expl_weight == 0 or self.expl_epsilon == 0:
            return loss, logits
        classes = y if is_class_index(y, logits) else logits.detach().argmax(1)  # multi-label: the top label
        penalty = self.explanation_penalty(x, classes)
        if self._trainer is not None:
            self.log("train/expl_penalty", penalty.detach(), on_step=False, on_epoch=True, batch_size=len(x))
        return loss + self.expl_weight * penalty, logits

    def _project(self, delta: torch.Tensor) -> torch.Tensor:
        if self.norm == "linf":
            return delta.clamp(-self.expl_epsilon, self.expl_epsilon)
        norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (delta.ndim - 1))
        return delta * (self.expl_epsilon / norms).clamp(max=1.0)

    def _random_start(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm == "linf":
            return (torch.rand_like(x) * 2 - 1) * self.expl_epsilon
        direction = torch.randn_like(x)
        radius = torch.rand(len(x), device=x.device).view(-1, *[1] * (x.ndim - 1))
        return self._project(direction * 1e6) * radius

    def explanation_penalty(self, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Mean explanation loss D(map(x + delta), map(x)) at the worst neighbour found, differentiable in the
        parameters (second order through the saliency maps, on the softplus network). The neighbour is searched in
        eval mode; the penalty itself runs in the model's current mode, as TRADES' robust term does: an eval-mode
        penalty let training flatten the eval-mode network alone (BatchNorm's running statistics), which then
        predicted one class (measured on PneumoniaMNIST: validation balanced accuracy 0.500)."""
        with softplus_relus(self.model, self.softplus_beta):
            delta = self._random_start(x)
            if self.expl_steps:
                with attack_mode(self.model):
                    reference = input_gradient_map(self.model, x, classes).detach()
                    alpha = 2.5 * self.expl_epsilon / self.expl_steps
                    for _ in range(self.expl_steps):
                        delta.requires_grad_(True)
                        moved = input_gradient_map(self.model, (x + delta).clamp(0, 1), classes, create_graph=True)
                        (grad,) = torch.autograd.grad(map_distance(moved, reference).sum(), delta)
                        with torch.no_grad():
                            step = grad.sign() if self.norm == "linf" else grad / grad.flatten(1).norm(dim=1).clamp_min(
                                1e-12).view(-1, *[1] * (grad.ndim - 1))
                            delta = self._project(delta + alpha * step)
            with torch.enable_grad():
                clean = input_gradient_map(self.model, x, classes, create_graph=True)
                moved = input_gradient_map(self.model, (x + delta.detach()).clamp(0, 1), classes, create_graph=True)
            return map_distance(moved, clean).mean()
