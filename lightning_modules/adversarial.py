"""Adversarial training: PGD-AT (Madry et al. 2018), TRADES (Zhang et al. 2019), FGSM-RS (Wong et al. 2020).

Each is ERM with another `training_loss`; metrics, logging and optimizers are inherited.
Epsilons are in [0, 1] pixel units and accept text such as "8/255".
"""
from __future__ import annotations

import copy
from typing import Optional, Union

import torch
import torch.nn.functional as F

from core.checks import positive_int
from core.errors import ConfigError
from datamodules.info import MULTILABEL
from attacks.gradient import FGSM, PGD, attack_mode
from attacks.threat_model import parse_epsilon, parse_norm
from .erm import ERM
from .metrics import probabilities

Epsilon = Union[float, str]


class AdversarialTraining(ERM):
    """Shared threat model for adversarial training, with an optional linear epsilon warm-up."""

    def __init__(self, epsilon: Epsilon = "4/255", norm: str = "linf", warmup_epochs: int = 0, **kwargs):
        """
        Args:
            epsilon: training budget in [0, 1] pixel units ("8/255" works).
            norm: threat model, linf or l2.
            warmup_epochs: grow epsilon linearly from 0 over this many epochs (helps small datasets).
        """
        super().__init__(**kwargs)
        self.norm = parse_norm(norm)
        self.epsilon = parse_epsilon(epsilon, self.norm)
        if warmup_epochs < 0:
            raise ConfigError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
        self.warmup_epochs = warmup_epochs

    def current_epsilon(self) -> float:
        """The budget for this epoch: epsilon, scaled down linearly during warm-up."""
        if self.warmup_epochs and self.current_epoch < self.warmup_epochs:
            return self.epsilon * (self.current_epoch + 1) / (self.warmup_epochs + 1)
        return self.epsilon

    def on_train_epoch_start(self) -> None:
        self.log("train/epsilon", self.current_epsilon(), on_step=False, on_epoch=True)


class _PGDTraining(AdversarialTraining):
    """Adversarial training whose inner maximisation is PGD with `steps` steps of size `alpha`."""

    def __init__(self, alpha: Optional[Epsilon] = None, steps: int = 7, **kwargs):
        super().__init__(**kwargs)
        self.alpha = None if alpha is None else parse_epsilon(alpha, self.norm)
        self.steps = positive_int("PGD steps", steps)

    def inner_attack(self, x, y, loss=None):
        """PGD examples at this epoch's epsilon (the step size shrinks with epsilon during warm-up)."""
        eps = self.current_epsilon()
        if eps == 0:
            return x
        alpha = None if self.alpha is None else self.alpha * eps / self.epsilon
        return PGD(self.model, eps, alpha=alpha, steps=self.steps, norm=self.norm, loss=loss)(x, y)


class PGDAT(_PGDTraining):
    """Madry's PGD adversarial training: minimise the loss on PGD examples."""

    train_inputs = "adv"

    def __init__(self, epsilon: Epsilon = "4/255", alpha: Optional[Epsilon] = None, steps: int = 7, **kwargs):
        """alpha: PGD step size (default 2.5 * epsilon / steps); steps: PGD iterations per batch."""
        super().__init__(epsilon=epsilon, alpha=alpha, steps=steps, **kwargs)

    def training_loss(self, x, y):
        logits = self(self.inner_attack(x, y))
        return self.loss(logits, y), logits


def trades_divergence(logits_adv: torch.Tensor, logits_clean: torch.Tensor, task: str) -> torch.Tensor:
    """Per-example KL(p_clean || p_adv): over classes (softmax) or summed over labels (Bernoulli)."""
    if task == MULTILABEL:
        p = torch.sigmoid(logits_clean)
        log_p_adv, log_q_adv = F.logsigmoid(logits_adv), F.logsigmoid(-logits_adv)
        log_p, log_q = F.logsigmoid(logits_clean), F.logsigmoid(-logits_clean)
        return (p * (log_p - log_p_adv) + (1 - p) * (log_q - log_q_adv)).sum(1)
    return F.kl_div(F.log_softmax(logits_adv, 1), F.log_softmax(logits_clean, 1), reduction="none",
                    log_target=True).sum(1)


class TRADES(_PGDTraining):
    """TRADES: clean loss + beta * KL(f(x) || f(x_adv)), x_adv maximising that KL inside the ball."""

    def __init__(
        self, epsilon: Epsilon = "4/255", beta: float = 6.0, alpha: Optional[Epsilon] = None, steps: int = 7, **kwargs
    ):
        """beta: weight of the robustness (KL) term; 6 is the paper's CIFAR-10 choice."""
        super().__init__(epsilon=epsilon, alpha=alpha, steps=steps, **kwargs)
        if beta < 0:
            raise ConfigError(f"TRADES beta must be >= 0, got {beta}")
        self.beta = beta

    def training_loss(self, x, y):
        with attack_mode(self.model), torch.no_grad():  # the attack's reference, in eval mode as in the paper
            clean_reference = self(x)
        x_adv = self.inner_attack(x, clean_reference, loss=lambda adv, ref: trades_divergence(adv, ref, self.task))
        logits = self(x)
        robust = trades_divergence(self(x_adv), logits, self.task).mean()
        return self.loss(logits, y) + self.beta * robust, logits


class FGSMRS(AdversarialTraining):
    """Fast adversarial training (Wong et al. 2020): FGSM from a random start, step 1.25 * epsilon.

    FGSM training can collapse ("catastrophic overfitting": PGD accuracy drops to ~0 within an
    epoch). A guard measures PGD accuracy on a fixed training subset after every epoch; when it
    falls by more than `guard_drop` below its best, the best weights are restored and training stops.
    """

    train_inputs = "adv"

    def __init__(
        self,
        epsilon: Epsilon = "4/255",
        alpha_ratio: float = 1.25,
        guard_samples: int = 256,
        guard_steps: int = 10,
        guard_drop: float = 0.2,
        **kwargs,
    ):
        """alpha_ratio: FGSM step / epsilon; guard_*: size, PGD steps and tolerated drop of the guard."""
        super().__init__(epsilon=epsilon, **kwargs)
        self.alpha_ratio = alpha_ratio
        self.guard_samples, self.guard_steps, self.guard_drop = guard_samples, guard_steps, guard_drop
        self._guard_batch = None
        self._best_guard = -1.0
        self._best_state = None

    def training_loss(self, x, y):
        eps = self.current_epsilon()
        if eps > 0:
            x_adv = FGSM(self.model, eps, norm=self.norm, alpha=self.alpha_ratio * eps, random_start=True)(x, y)
        else:
            x_adv = x
        logits = self(x_adv)
        return self.loss(logits, y), logits

    def training_step(self, batch, batch_idx):
        if self._guard_batch is None and self.guard_samples > 0:
            x, y = batch
            self._guard_batch = (x[: self.guard_samples].detach().clone(), y[: self.guard_samples].detach().clone())
        return super().training_step(batch, batch_idx)

    def on_train_epoch_end(self) -> None:
        if self._guard_batch is None or self.current_epsilon() == 0:
            return
        x, y = self._guard_batch
        # attacked and scored in eval mode: the guard must not move BatchNorm's running statistics
        with attack_mode(self.model):
            x_adv = PGD(self.model, self.current_epsilon(), steps=self.guard_steps, norm=self.norm, seed=0,
                        early_stop=True)(x, y)
            with torch.no_grad():
                accuracy = _accuracy(self(x_adv), y, self.task)
        # under DDP every rank guards its own batch: decide on the mean, so all ranks restore and stop together
        accuracy = float(self.trainer.strategy.reduce(torch.tensor(accuracy, device=x.device), reduce_op="mean"))
        self.log("train/guard_adv_acc", accuracy, on_epoch=True)
        if accuracy >= self._best_guard:
            self._best_guard = accuracy
            self._best_state = copy.deepcopy(self.model.state_dict())
        elif accuracy < self._best_guard - self.guard_drop:
            self.model.load_state_dict(self._best_state)
            self.log("train/catastrophic_overfitting", 1.0, on_epoch=True)
            self.print(
                f"catastrophic overfitting at epoch {self.current_epoch}: guard PGD accuracy {accuracy:.3f} "
                f"< best {self._best_guard:.3f} - {self.guard_drop}; restored the best weights and stopped"
            )
            self.trainer.should_stop = True


def _accuracy(logits: torch.Tensor, y: torch.Tensor, task: str) -> float:
    if task == MULTILABEL:
        return ((probabilities(logits, task) > 0.5).float() == y).float().mean().item()
    return (logits.argmax(1) == y).float().mean().item()
