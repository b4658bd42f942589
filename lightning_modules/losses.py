"""Loss terms: regularisers any training method (ERM, PGD-AT, TRADES, FGSM-RS) adds to its own loss through its
config, `loss_terms: [{class_path: lightning_modules.losses.ExplanationPenalty, init_args: {weight: 1.0}}]`.

The method's training step minimises its loss plus `weight * term.value(...)` of every term, and logs each value as
`train/NAME`.
"""
from __future__ import annotations

import importlib
from typing import Optional, Sequence, Union

import torch

from attacks.explanation import input_gradient_map, map_distance, softplus_relus
from attacks.gradient import attack_mode, is_class_index
from attacks.threat_model import parse_epsilon, parse_norm
from core.errors import ConfigError


class LossTerm:
    """A term added to a training method's loss: `weight * value(module, x, y, logits)`, logged as train/NAME."""

    name = "term"

    def __init__(self, weight: float = 1.0):
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
            raise ConfigError(f"{type(self).__name__} weight must be a number >= 0, got {weight!r}")
        self.weight = float(weight)

    def value(self, module, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> Optional[torch.Tensor]:
        """The unweighted term on one training batch (x, y, the method's logits); None when it is off."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


def build_loss_terms(terms: Optional[Sequence[Union[LossTerm, dict]]]) -> list[LossTerm]:
    """Loss terms from objects or their config form ({class_path, init_args}, as a checkpoint saved by LightningCLI
    keeps them); one ConfigError line for anything else."""
    built = []
    for term in terms or ():
        if isinstance(term, dict) and "class_path" in term:
            module, _, name = str(term["class_path"]).rpartition(".")
            try:
                cls = getattr(importlib.import_module(module), name)
            except (ImportError, AttributeError, ValueError):
                raise ConfigError(f"loss term class {term['class_path']} cannot be imported") from None
            term = cls(**(term.get("init_args") or {})) if isinstance(cls, type) and issubclass(cls, LossTerm) else cls
        if not isinstance(term, LossTerm):
            raise ConfigError(f"loss_terms holds {term!r}: each is {{class_path: lightning_modules.losses.NAME, "
                              "init_args: {...}}, NAME a LossTerm such as ExplanationPenalty")
        built.append(term)
    return built


class ExplanationPenalty(LossTerm):
    """The explanation loss flattened over an `epsilon` ball (Chen et al., arXiv 2403.06013):

        value = D(map(x + delta), map(x)),   delta = argmax_{|delta| <= epsilon} D(...)

    map is the input-gradient saliency of the explained class (|d logit / d x| summed over channels), D the mean
    squared difference of the mean-normalised maps (attacks.explanation.map_distance), and delta found by `steps`
    signed-gradient steps from a random start in the ball (0 steps: the random start alone). ReLU networks have zero
    second derivatives, so the penalty (and its inner maximisation) run on the softplus network (every nn.ReLU ->
    nn.Softplus(softplus_beta), as Dombrowski et al. 2019 do); the worst neighbour is searched in eval mode, the
    penalty is taken in the model's current mode (training: batch statistics, as TRADES' robust term).
    """

    name = "expl_penalty"

    def __init__(self, weight: float = 1.0, epsilon: Union[float, str] = "2/255", steps: int = 1,
                 softplus_beta: float = 10.0, norm: Optional[str] = None):
        """
        Args:
            weight: weight of the penalty (0: the method's loss alone).
            epsilon: radius of the neighbourhood the explanation loss is flattened over (pixel units, "2/255").
            steps: signed-gradient steps that look for the worst neighbour (0: a random neighbour).
            softplus_beta: the Softplus that stands in for every ReLU in the penalty (larger: closer to ReLU).
            norm: linf or l2; default: the training method's threat model (linf for ERM).
        """
        super().__init__(weight)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ConfigError(f"explanation penalty steps must be an integer >= 0, got {steps!r}")
        if isinstance(softplus_beta, bool) or not isinstance(softplus_beta, (int, float)) or not softplus_beta > 0:
            raise ConfigError(f"explanation penalty softplus_beta must be > 0, got {softplus_beta!r}")
        self.norm = None if norm is None else parse_norm(norm)
        self.epsilon = parse_epsilon(epsilon, self.norm or "linf")
        self.steps, self.softplus_beta = steps, float(softplus_beta)

    def value(self, module, x, y, logits):
        if self.weight == 0 or self.epsilon == 0:
            return None
        classes = y if is_class_index(y, logits) else logits.detach().argmax(1)  # multi-label: the top label
        return self.penalty(module.model, x, classes, self.norm or getattr(module, "norm", "linf"))

    def penalty(self, model: torch.nn.Module, x: torch.Tensor, classes: torch.Tensor, norm: str = "linf"):
        """Mean explanation loss D(map(x + delta), map(x)) at the worst neighbour found, differentiable in the
        parameters (second order through the saliency maps, on the softplus network). The neighbour is searched in
        eval mode; the penalty itself runs in the model's current mode, as TRADES' robust term does: an eval-mode
        penalty let training flatten the eval-mode network alone (BatchNorm's running statistics), which then
        predicted one class (measured on PneumoniaMNIST: validation balanced accuracy 0.500)."""
        with softplus_relus(model, self.softplus_beta):
            delta = self._random_start(x, norm)
            if self.steps:
                with attack_mode(model):
                    reference = input_gradient_map(model, x, classes).detach()
                    alpha = 2.5 * self.epsilon / self.steps
                    for _ in range(self.steps):
                        delta.requires_grad_(True)
                        moved = input_gradient_map(model, (x + delta).clamp(0, 1), classes, create_graph=True)
                        (grad,) = torch.autograd.grad(map_distance(moved, reference).sum(), delta)
                        with torch.no_grad():
                            step = grad.sign() if norm == "linf" else grad / _norms(grad)
                            delta = self._project(delta + alpha * step, norm)
            with torch.enable_grad():
                clean = input_gradient_map(model, x, classes, create_graph=True)
                moved = input_gradient_map(model, (x + delta.detach()).clamp(0, 1), classes, create_graph=True)
            return map_distance(moved, clean).mean()

    def _project(self, delta: torch.Tensor, norm: str) -> torch.Tensor:
        if norm == "linf":
            return delta.clamp(-self.epsilon, self.epsilon)
        return delta * (self.epsilon / _norms(delta)).clamp(max=1.0)

    def _random_start(self, x: torch.Tensor, norm: str) -> torch.Tensor:
        if norm == "linf":
            return (torch.rand_like(x) * 2 - 1) * self.epsilon
        direction = torch.randn_like(x)
        radius = torch.rand(len(x), device=x.device).view(-1, *[1] * (x.ndim - 1))
        return self._project(direction * 1e6, norm) * radius


def _norms(t: torch.Tensor) -> torch.Tensor:
    """Per-example L2 norms of a batch, shaped to broadcast against it (at least 1e-12)."""
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (t.ndim - 1))
