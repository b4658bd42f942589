"""White-box attacks as small torchattacks-style callables: ``attack(x, y) -> x_adv``.

Threat model: models take images in [0, 1]; an adversarial image lies in the [0, 1] box and in the
L-inf or L2 ball of radius epsilon around x (up to float rounding). Attacks need no training loop.
"""

import contextlib
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.checks import positive_int
from core.errors import ConfigError
from attacks.threat_model import format_epsilon, parse_epsilon, parse_norm

Loss = Callable[[Tensor, Tensor], Tensor]
def is_class_index(y: Tensor, logits: Tensor) -> bool:
    """True when y holds one integer class per example for logits of shape (B, C)."""
    return (
        logits.ndim == 2
        and y.shape == logits.shape[:1]
        and not y.is_floating_point()
        and not y.is_complex()
        and y.dtype != torch.bool
    )


def default_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Per-example loss: cross-entropy for class indices (binary 2-logit, multi-class, ordinal heads),
    BCE-with-logits averaged over labels for float multi-hot targets shaped like the logits (multi-label)."""
    if is_class_index(y, logits):
        return F.cross_entropy(logits, y.long(), reduction="none")
    if y.is_floating_point() and y.shape == logits.shape:
        return F.binary_cross_entropy_with_logits(logits, y, reduction="none").flatten(1).mean(1)
    raise ConfigError(
        f"cannot pick a loss for logits of shape {tuple(logits.shape)} and targets of shape "
        f"{tuple(y.shape)} ({y.dtype}): use integer class indices of shape (B,) or float "
        f"multi-hot labels shaped like the logits, or pass loss="
    )


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """The model in eval mode; every module's own mode restored after (a training step may call an attack)."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


@contextlib.contextmanager
def attack_mode(model: nn.Module):
    """Run an attack with the model in eval mode and autograd on; restore every module's mode after."""
    if torch.is_inference_mode_enabled():
        raise ConfigError(
            "adversarial attacks need autograd but torch.inference_mode() is active; "
            "use Trainer(inference_mode=False)"
        )
    with eval_mode(model), torch.enable_grad():
        yield


def check_pixels(x: Tensor) -> None:
    """Reject inputs outside [0, 1]: budgets are in pixel units, so normalization belongs in the model."""
    if x.numel() == 0:
        return
    low, high = torch.aminmax(x.detach())
    if low < 0 or high > 1:
        raise ConfigError(
            f"attacks expect images in [0, 1] (put normalization inside the model), "
            f"got values in [{low.item():.4g}, {high.item():.4g}]"
        )


def autograd_ready(t: Tensor) -> Tensor:
    """Detach; copy tensors made under torch.inference_mode, which autograd cannot use."""
    return t.clone() if t.is_inference() else t.detach()


def _seeded_generator(seed: Optional[int], device: torch.device) -> Optional[torch.Generator]:
    """A fresh generator for seeded random starts; None (the global RNG) without a seed."""
    return None if seed is None else torch.Generator(device=device).manual_seed(seed)


def _l2(t: Tensor) -> Tensor:
    """Per-example L2 norm, shaped to broadcast against t."""
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.ndim - 1)))


class Attack:
    """Shared threat model (norm ball of radius epsilon in [0, 1] pixel space) and loss."""

    def __init__(self, model: nn.Module, epsilon, norm: str = "linf", loss: Optional[Loss] = None):
        self.model = model
        self.norm = parse_norm(norm)
        self.epsilon = self.budget(epsilon)
        self.loss = default_loss if loss is None else loss

    def budget(self, value) -> float:
        """A radius or step size in pixel units: at most 1 for L-inf, any finite size for L2."""
        return parse_epsilon(value, self.norm)

    def __repr__(self) -> str:
        fields = {k: v for k, v in vars(self).items() if k not in ("model", "loss")}
        fields["epsilon"] = format_epsilon(self.epsilon)
        return f"{type(self).__name__}({', '.join(f'{k}={v}' for k, v in fields.items())})"

    def scored(self, x: Tensor, y: Tensor, target: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        """(x_adv, the model's eval-mode logits on x_adv, or None where the attack did not compute them):
        an evaluator that scores x_adv with `self.model` can skip its own forward pass."""
        with attack_mode(self.model):
            check_pixels(x)
            target = None if target is None else autograd_ready(target)
            x_adv, logits = self._perturb(autograd_ready(x), autograd_ready(y), target)
        return x_adv.detach(), logits

    def _run(self, x: Tensor, y: Tensor, target: Optional[Tensor]) -> Tensor:
        return self.scored(x, y, target)[0]

    def _perturb(self, x: Tensor, y: Tensor, target: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
        raise NotImplementedError

    def _objective(self, logits: Tensor, y: Tensor, target: Optional[Tensor]) -> Tensor:
        """Per-example value to maximise: the loss on y, or minus the loss toward target."""
        # float(): under autocast (bf16-mixed training) logits may be bf16; loss and comparisons stay in fp32
        loss = self.loss(logits.float(), y if target is None else target)
        if loss.shape != logits.shape[:1]:
            raise ConfigError(
                f"loss(logits, y) must return one value per example, shape ({logits.shape[0]},), "
                f"got {tuple(loss.shape)}"
            )
        return loss if target is None else -loss

    def _objective_and_grad(self, x_adv: Tensor, y: Tensor, target: Optional[Tensor]):
        """Logits, per-example objective and its gradient with respect to the input only."""
        x_adv = x_adv.detach().requires_grad_(True)
        logits = self.model(x_adv)
        objective = self._objective(logits, y, target)
        (grad,) = torch.autograd.grad(objective.sum(), x_adv)
        return logits.detach(), objective.detach(), grad

    def _random_start(self, x: Tensor, generator: Optional[torch.Generator]) -> Tensor:
        """Uniform point of the L-inf ball, or uniform direction and radius in the L2 ball."""
        if self.norm == "linf":
            noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            delta = (2 * noise - 1) * self.epsilon
        else:
            direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            radius_shape = (x.shape[0],) + (1,) * (x.ndim - 1)
            radius = torch.rand(radius_shape, generator=generator, device=x.device, dtype=x.dtype)
            delta = direction / _l2(direction).clamp_min(1e-12) * radius * self.epsilon
        return (x + delta).clamp(0.0, 1.0)

    def _step(self, x_adv: Tensor, grad: Tensor, step_size: float, x: Tensor, box: Optional[tuple]) -> Tensor:
        """One steepest-ascent step (gradient sign for L-inf, unit gradient for L2) projected back into the
        threat model; `box` is `_linf_box(x)`, computed once per attack."""
        if self.norm == "linf":
            return torch.add(x_adv, grad.sign(), alpha=step_size).clamp_(*box)
        return self._project(x_adv + step_size * grad / _l2(grad).clamp_min(1e-12), x)

    def _linf_box(self, x: Tensor) -> Optional[tuple[Tensor, Tensor]]:
        """For L-inf, the ball intersected with [0, 1] is a box: projecting is one clamp between these bounds."""
        if self.norm != "linf":
            return None
        return (x - self.epsilon).clamp_(min=0.0), (x + self.epsilon).clamp_(max=1.0)

    def _project(self, x_adv: Tensor, x: Tensor) -> Tensor:
        """Back into the epsilon ball around x, then into [0, 1] (which only shrinks the perturbation)."""
        delta = x_adv - x
        if self.norm == "linf":
            delta = delta.clamp(-self.epsilon, self.epsilon)
        else:
            delta = delta * (self.epsilon / _l2(delta).clamp_min(1e-12)).clamp(max=1.0)
        return (x + delta).clamp(0.0, 1.0)


class FGSM(Attack):
    """Fast gradient method: one step along the gradient sign (L-inf) or unit gradient (L2).

    With random_start=True and alpha=1.25 * epsilon it is FGSM-RS, the attack of fast adversarial
    training (Wong et al. 2020): a uniform start in the ball, one step, projection back.
    """

    def __init__(self, model: nn.Module, epsilon, norm: str = "linf", loss: Optional[Loss] = None,
                 alpha=None, random_start: bool = False, seed: Optional[int] = None):
        super().__init__(model, epsilon, norm=norm, loss=loss)
        self.alpha = self.epsilon if alpha is None else self.budget(alpha)
        self.random_start = bool(random_start)
        self.seed = seed

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        return self._run(x, y, None)

    def _perturb(self, x, y, target):
        start = x
        if self.random_start:
            start = self._random_start(x, _seeded_generator(self.seed, x.device))
        _, _, grad = self._objective_and_grad(start, y, target)
        return self._step(start, grad, self.alpha, x, self._linf_box(x)), None


class PGD(Attack):
    """Projected gradient descent (Madry et al., 2018) with random starts and restarts.

    Per example it returns the strongest iterate over all steps and restarts: a success
    (misclassified, or the target class reached) beats a failure, then the higher loss wins
    (multi-label targets have no success criterion: the highest loss wins).
    With a seed the random starts come from a generator seeded on every call, so the attack is a
    deterministic function of (x, y); leave seed=None in training so starts vary between batches.
    early_stop=True stops attacking an example once it is successfully attacked, as AutoAttack does: which examples
    succeed (so robust accuracy) is unchanged for models that score each example on its own (eval mode), the
    returned image is the first successful iterate rather than the highest-loss one, and the work shrinks as
    examples fall (for evaluations that count successes, not for training).
    """

    def __init__(
        self,
        model: nn.Module,
        epsilon,
        alpha=None,
        steps: int = 10,
        norm: str = "linf",
        random_start: bool = True,
        restarts: int = 1,
        targeted: bool = False,
        loss: Optional[Loss] = None,
        seed: Optional[int] = None,
        early_stop: bool = False,
    ):
        super().__init__(model, epsilon, norm=norm, loss=loss)
        self.steps = positive_int("steps", steps)
        self.restarts = positive_int("restarts", restarts)
        if self.restarts > 1 and not random_start:
            raise ConfigError("restarts > 1 need random_start=True (without it every restart is the same)")
        if alpha is None:
            self.alpha = 2.5 * self.epsilon / self.steps
        else:
            try:
                self.alpha = self.budget(alpha)
            except ConfigError:
                raise ConfigError(
                    f"alpha (step size) must be a non-negative number or a fraction like '2/255', got {alpha!r}"
                ) from None
        self.random_start = bool(random_start)
        self.targeted = bool(targeted)
        self.seed = seed
        self.early_stop = bool(early_stop)

    def __call__(self, x: Tensor, y: Tensor, target: Optional[Tensor] = None) -> Tensor:
        if self.targeted and target is None:
            raise ConfigError("targeted PGD needs target=: call attack(x, y, target=...)")
        if not self.targeted and target is not None:
            raise ConfigError("target= given to an untargeted PGD; construct it with targeted=True")
        return self._run(x, y, target)

    def _perturb(self, x, y, target):
        generator = _seeded_generator(self.seed, x.device)
        box = self._linf_box(x)
        strongest = _Strongest()
        for _ in range(self.restarts):
            start = self._random_start(x, generator) if self.random_start else x  # drawn for all: same stream
            rows = strongest.open_rows() if self.early_stop and strongest.x is not None else None  # None: all
            if rows is not None and rows.numel() == 0:
                break
            x_adv, x0, y0, t0, box0 = (_pick(t, rows) for t in (start, x, y, target, box))
            for step in range(self.steps + 1):
                if step < self.steps:
                    logits, objective, grad = self._objective_and_grad(x_adv, y0, t0)
                else:  # the last iterate is scored, not differentiated
                    with torch.no_grad():
                        logits = self.model(x_adv)
                    objective = self._objective(logits, y0, t0)
                success = self._success(logits, y0, t0)
                strongest.update(rows, x_adv, logits, success, objective)
                if step == self.steps:
                    break
                if self.early_stop and success.any():
                    keep = ~success
                    if not keep.any():
                        break
                    rows = _pick(torch.arange(len(x), device=x.device), rows)[keep]
                    x_adv, grad, x0, y0, t0, box0 = (_pick(t, keep) for t in (x_adv, grad, x0, y0, t0, box0))
                x_adv = self._step(x_adv, grad, self.alpha, x0, box0)
        return strongest.x, strongest.logits

    @staticmethod
    def _success(logits: Tensor, y: Tensor, target: Optional[Tensor]) -> Tensor:
        """Per example: target reached (targeted) or misclassified; always False for multi-label."""
        labels = y if target is None else target
        if not is_class_index(labels, logits):
            return torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)
        hit = logits.argmax(dim=1) == labels
        return hit if target is not None else ~hit


def _pick(t, rows: Optional[Tensor]):
    """t[rows] for a tensor (a pair of tensors, None), or t itself when rows is None (every example)."""
    if rows is None or t is None:
        return t
    if isinstance(t, tuple):
        return tuple(part[rows] for part in t)
    return t[rows]


class _Strongest:
    """Per example, the most successful perturbation so far and its logits: success first, then the higher objective."""

    def __init__(self):
        self.x = None

    def open_rows(self) -> Tensor:
        """Indices of the examples not yet successfully attacked."""
        return (~self.success).nonzero().flatten()

    def update(self, rows: Optional[Tensor], x_adv: Tensor, logits: Tensor, success: Tensor, objective: Tensor) -> None:
        """Fold in iterates of the examples `rows` (None: all of them, in order)."""
        x_adv, logits = x_adv.detach(), logits.detach()
        if self.x is None:
            self.x, self.logits, self.success, self.objective = x_adv.clone(), logits.clone(), success, objective
            return
        if rows is None:
            better = (success & ~self.success) | ((success == self.success) & (objective > self.objective))
            self.x = torch.where(better.view(-1, *([1] * (x_adv.ndim - 1))), x_adv, self.x)
            self.logits = torch.where(better.view(-1, *([1] * (logits.ndim - 1))), logits, self.logits)
            self.success = self.success | success
            self.objective = torch.where(better, objective, self.objective)
            return
        held, score = self.success[rows], self.objective[rows]
        better = (success & ~held) | ((success == held) & (objective > score))
        chosen = rows[better]
        self.x[chosen] = x_adv[better]
        self.logits[chosen] = logits[better]
        self.objective[chosen] = objective[better]
        self.success[rows] = held | success
