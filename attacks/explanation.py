"""Attacks on explanations: perturb an image within the threat model so its gradient map changes while the
model's prediction stays put (Ghorbani et al. 2019, "Interpretation of neural networks is fragile"; Dombrowski
et al. 2019, "Explanations can be manipulated and geometry is to blame").

The attacked map is the input-gradient saliency map (sum over channels of |d logit_c / d x|), computed here with
create_graph=True so the attack can differentiate through it (this floor cannot use `explanations/`). A ReLU
network's gradient map is piecewise constant in x (zero second derivatives), so during the attack's gradient
computations every `nn.ReLU` module is swapped for `nn.Softplus(beta)` (Dombrowski et al.) and restored after;
the label check and the choice of the returned iterate use the model as given. Both attacks start at x (no random
start: deterministic), take signed (L-inf) or unit-norm (L2) steps, project into the epsilon ball and [0, 1], and
return per example the best iterate: one that keeps the prediction first, then the lower objective. An example
for which no iterate kept the prediction is a failed manipulation: `ExplanationAttackResult.kept` is False.
"""
from __future__ import annotations

import contextlib
import math
from typing import NamedTuple, Optional

import torch
from torch import Tensor, nn

from attacks.gradient import Attack, attack_mode, autograd_ready, check_pixels
from core.checks import positive_int
from core.errors import ConfigError


class ExplanationAttackResult(NamedTuple):
    """What an explanation attack returns: the images, and per example whether the prediction was kept and the
    final objective on the model as given (lower is a stronger manipulation)."""

    x_adv: Tensor
    kept: Tensor
    objective: Tensor
    relus_replaced: int
    beta: float

    def describe(self) -> str:
        """One line for reports: how many examples kept their label, and the softplus replacement."""
        return (f"prediction kept for {int(self.kept.sum())}/{len(self.kept)} examples (the others are failed "
                f"manipulations); gradients taken with {self.relus_replaced} nn.ReLU module(s) replaced by "
                f"Softplus(beta={self.beta:g}) during the attack, restored after")


def topk_count(k, pixels: int) -> int:
    """Pixels in a top-k region: k itself for an integer, round(k * pixels) (at least 1) for a share in (0, 1]."""
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not math.isfinite(k) or k <= 0:
        raise ConfigError(f"k must be a positive number of pixels or a share of the image in (0, 1], got {k!r}")
    if isinstance(k, float):
        if k > 1:
            raise ConfigError(f"k as a share of the image must be in (0, 1], got {k!r} (pass an int for a pixel count)")
        return max(1, round(k * pixels))
    if k > pixels:
        raise ConfigError(f"k = {k} is larger than the image ({pixels} pixels)")
    return k


def input_gradient_map(model: nn.Module, x: Tensor, classes: Tensor, create_graph: bool = False) -> Tensor:
    """Saliency map (N, H, W): sum over channels of |d logit[class] / d x|. With create_graph=True the map is
    differentiable in x (and the model's parameters); x must then require grad or be a function of one that does."""
    if not x.requires_grad:
        x = x.detach().requires_grad_(True)
    return _saliency(model, x, classes, create_graph)[0]


def _saliency(model: nn.Module, x: Tensor, classes: Tensor, create_graph: bool) -> tuple[Tensor, Tensor]:
    """(gradient map (N, H, W), logits) of x, which requires grad. With create_graph, attention runs on PyTorch's
    math kernel: the fused scaled-dot-product kernels (a ViT's) have no second derivative."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    kernels = sdpa_kernel([SDPBackend.MATH]) if create_graph else contextlib.nullcontext()
    with torch.enable_grad(), kernels:
        logits = model(x)
        chosen = logits.float().gather(1, classes.view(-1, 1).long()).sum()
        (grad,) = torch.autograd.grad(chosen, x, create_graph=create_graph)
    return grad.abs().sum(1), logits


def normalized_map(m: Tensor) -> Tensor:
    """Each map divided by its mean, so maps of different scale compare (an all-zero map stays zero)."""
    return m / m.flatten(1).mean(1).clamp_min(1e-12).view(-1, 1, 1)


def map_distance(a: Tensor, b: Tensor) -> Tensor:
    """Per-example mean squared difference of the normalized maps (Dombrowski et al.'s map loss)."""
    return (normalized_map(a) - normalized_map(b)).pow(2).flatten(1).mean(1)


@contextlib.contextmanager
def softplus_relus(model: nn.Module, beta: float = 10.0):
    """Swap every nn.ReLU module of the model for nn.Softplus(beta) (a smooth ReLU with non-zero second
    derivatives) and put the originals back after; yields how many were swapped. Functional relu calls
    (F.relu in a forward) are not seen."""
    swapped = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.ReLU):
                swapped.append((parent, name, child))
    try:
        for parent, name, _ in swapped:
            setattr(parent, name, nn.Softplus(beta=beta))
        yield len(swapped)
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)


def _predictions(logits: Tensor, multilabel: bool) -> Tensor:
    return logits > 0 if multilabel else logits.argmax(1)


def _same(a: Tensor, b: Tensor, multilabel: bool) -> Tensor:
    return (a == b).all(1) if multilabel else a == b


class _ExplanationAttack(Attack):
    """Shared loop: signed / unit-norm descent on a map objective, best label-keeping iterate per example."""

    def __init__(self, model: nn.Module, epsilon, alpha=None, steps: int = 10, norm: str = "linf",
                 beta: float = 10.0, multilabel: bool = False):
        super().__init__(model, epsilon, norm=norm)
        self.steps = positive_int("steps", steps)
        self.alpha = 2.5 * self.epsilon / self.steps if alpha is None else self.budget(alpha)
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta) or beta <= 0:
            raise ConfigError(f"beta (softplus sharpness) must be a positive number, got {beta!r}")
        self.beta = float(beta)
        self.multilabel = bool(multilabel)

    def _objective(self, maps: Tensor, logits: Tensor, state: dict) -> Tensor:
        """Per-example value to minimise."""
        raise NotImplementedError

    def _setup(self, x: Tensor, classes: Tensor, logits: Tensor, state: dict) -> None:
        """Fill `state` from the clean images (maps of the model as given)."""

    def _attack(self, x: Tensor, classes: Optional[Tensor], state: dict) -> ExplanationAttackResult:
        with attack_mode(self.model):
            check_pixels(x)
            x = autograd_ready(x)
            with torch.no_grad():
                clean_logits = self.model(x).float()
            if classes is None:
                classes = clean_logits.argmax(1)
            classes = self._check_classes(autograd_ready(classes), clean_logits)
            prediction = _predictions(clean_logits, self.multilabel)
            self._setup(x, classes, clean_logits, state)
            box = self._linf_box(x)
            best_x, best_kept, best_objective = x.clone(), None, None
            x_adv = x
            replaced = 0
            for step in range(self.steps + 1):
                if step > 0:  # score the iterate on the model as given: prediction kept, objective
                    maps, logits = _saliency(self.model, x_adv.detach().requires_grad_(True), classes, False)
                    logits = logits.detach().float()
                    objective = self._objective(maps, logits, state).detach()
                    kept = _same(_predictions(logits, self.multilabel), prediction, self.multilabel)
                    if best_kept is None:
                        better = torch.ones_like(kept)
                    else:
                        better = (kept & ~best_kept) | ((kept == best_kept) & (objective < best_objective))
                    best_x = torch.where(better.view(-1, 1, 1, 1), x_adv.detach(), best_x)
                    best_kept = kept if best_kept is None else torch.where(better, kept, best_kept)
                    best_objective = (objective if best_objective is None
                                      else torch.where(better, objective, best_objective))
                if step == self.steps:
                    break
                with softplus_relus(self.model, self.beta) as swapped:
                    replaced = swapped
                    x_req = x_adv.detach().requires_grad_(True)
                    maps, logits = _saliency(self.model, x_req, classes, True)
                    (grad,) = torch.autograd.grad(self._objective(maps, logits.float(), state).sum(), x_req)
                x_adv = self._step(x_adv.detach(), -grad, self.alpha, x, box)
        return ExplanationAttackResult(best_x.detach(), best_kept, best_objective, replaced, self.beta)

    def _check_classes(self, classes: Tensor, logits: Tensor) -> Tensor:
        if classes.shape != logits.shape[:1] or classes.is_floating_point() or classes.dtype == torch.bool:
            raise ConfigError(
                f"an explanation attack explains one class per example: pass integer class indices of shape "
                f"({logits.shape[0]},) (for a multi-label head, the label to explain), got {tuple(classes.shape)} "
                f"{classes.dtype}")
        if classes.numel() and (classes.min() < 0 or classes.max() >= logits.shape[1]):
            raise ConfigError(f"class indices must lie in [0, {logits.shape[1] - 1}]")
        return classes.long()

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + ", ReLU->Softplus during the attack)"


class TopKAttack(_ExplanationAttack):
    """Untargeted top-k region attack (Ghorbani et al. 2019): move the gradient map's mass off the clean map's
    top-k pixels, keeping the prediction. Objective (minimised): the share of the map on that region."""

    def __init__(self, model: nn.Module, epsilon, alpha=None, steps: int = 10, norm: str = "linf", k=0.1,
                 beta: float = 10.0, multilabel: bool = False):
        super().__init__(model, epsilon, alpha=alpha, steps=steps, norm=norm, beta=beta, multilabel=multilabel)
        topk_count(k, 1 if isinstance(k, float) else k)  # validates the type now; the size is checked per image
        self.k = k

    def __call__(self, x: Tensor, classes: Optional[Tensor] = None) -> Tensor:
        return self.run(x, classes).x_adv

    def run(self, x: Tensor, classes: Optional[Tensor] = None) -> ExplanationAttackResult:
        return self._attack(x, classes, {})

    def _setup(self, x, classes, logits, state):
        clean = input_gradient_map(self.model, x, classes)
        flat = clean.flatten(1)
        region = torch.zeros_like(flat)
        region.scatter_(1, flat.topk(topk_count(self.k, flat.shape[1]), dim=1).indices, 1.0)
        state["region"] = region

    def _objective(self, maps, logits, state):
        flat = maps.flatten(1)
        return (flat * state["region"]).sum(1) / flat.sum(1).clamp_min(1e-12)


class TargetedManipulation(_ExplanationAttack):
    """Targeted manipulation (Dombrowski et al. 2019): bring the gradient map close to a target map while the
    output stays put. Objective (minimised): map_distance(map, target) + gamma * the squared change of the output
    probabilities (softmax, or sigmoid per label for multi-label)."""

    def __init__(self, model: nn.Module, epsilon, alpha=None, steps: int = 10, norm: str = "linf",
                 gamma: float = 1.0, beta: float = 10.0, multilabel: bool = False):
        super().__init__(model, epsilon, alpha=alpha, steps=steps, norm=norm, beta=beta, multilabel=multilabel)
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not math.isfinite(gamma) or gamma < 0:
            raise ConfigError(f"gamma (weight of the output term) must be a number >= 0, got {gamma!r}")
        self.gamma = float(gamma)

    def __call__(self, x: Tensor, target_map: Tensor, classes: Optional[Tensor] = None) -> Tensor:
        return self.run(x, target_map, classes).x_adv

    def run(self, x: Tensor, target_map: Tensor, classes: Optional[Tensor] = None) -> ExplanationAttackResult:
        if target_map.shape != (x.shape[0], *x.shape[2:]):
            raise ConfigError(f"target_map must have shape (N, H, W) = {(x.shape[0], *x.shape[2:])}, "
                              f"got {tuple(target_map.shape)}")
        return self._attack(x, classes, {"target": autograd_ready(target_map).float()})

    def _setup(self, x, classes, logits, state):
        state["outputs"] = self._outputs(logits)

    def _outputs(self, logits: Tensor) -> Tensor:
        """The outputs kept put: probabilities (softmax; sigmoid per label for multi-label), so gamma is free of
        the logits' scale."""
        return logits.sigmoid() if self.multilabel else logits.softmax(1)

    def _objective(self, maps, logits, state):
        change = (self._outputs(logits) - state["outputs"]).pow(2).sum(1)
        return map_distance(maps, state["target"]) + self.gamma * change
