"""Explanation-regularised training (Chen et al., arXiv 2403.06013) as configs of the previous version write it.

The penalty itself is a loss term any training method adds (lightning_modules.losses.ExplanationPenalty, through
`loss_terms`). `ExplanationRegularized(base=..., expl_weight=..., ...)` builds that composed form: the registry's
`base` method (erm, pgd_at or trades) with an ExplanationPenalty of the `expl_*` settings, the norm shared with the
base. Its checkpoints record this class and its keys, so they reload as they were written.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Optional

from core.errors import ConfigError
from .adversarial import Epsilon
from .erm import ERM
from .losses import ExplanationPenalty
from .registry import method

PGD_SETTINGS = ("epsilon", "alpha", "steps", "norm", "warmup_epochs")
#: base method -> the adversarial settings its constructor takes (the others are kept in the hyperparameters only)
BASES = {"erm": (), "pgd_at": PGD_SETTINGS, "trades": (*PGD_SETTINGS, "beta")}


class _BuiltOnItsBase(type):
    """Calling ExplanationRegularized(base=..., ...) makes an instance of the class composed with the base method."""

    def __call__(cls, *args, base: str = "erm", **kwargs):
        if cls is ExplanationRegularized:
            if base not in BASES:
                raise ConfigError(f"unknown base {base!r} for explanation-regularised training: choose from "
                                  f"{', '.join(BASES)} (or add loss_terms: [ExplanationPenalty] to any method's "
                                  "config)")
            cls = _composed(method(base).module_class())
        return type.__call__(cls, *args, base=base, **kwargs)


class ExplanationRegularized(ERM, metaclass=_BuiltOnItsBase):
    """ERM, PGD-AT or TRADES (`base`) plus `expl_weight` times the explanation loss at the worst point of an
    `expl_epsilon` ball around each training image (lightning_modules.losses.ExplanationPenalty). `epsilon`,
    `steps`, `alpha`, `beta` and `warmup_epochs` are the base's adversarial settings (unused by ERM); the norm is
    shared. An instance is of the class that composes this one with the base method's class."""

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
        norm: str = "linf",
        warmup_epochs: int = 0,
        **kwargs,
    ):
        """
        Args:
            base: the training method: erm, pgd_at or trades.
            expl_weight, expl_epsilon, expl_steps, softplus_beta: the ExplanationPenalty's weight, epsilon, steps
                and softplus_beta.
        """
        try:
            penalty = ExplanationPenalty(weight=expl_weight, epsilon=expl_epsilon, steps=expl_steps,
                                         softplus_beta=softplus_beta, norm=norm)
        except ConfigError as err:
            raise ConfigError(f"expl_* settings: {err}") from None
        adversarial = dict(epsilon=epsilon, beta=beta, alpha=alpha, steps=steps, norm=norm, warmup_epochs=warmup_epochs)
        if kwargs.pop("loss_terms", None):
            raise ConfigError("ExplanationRegularized builds its loss term from the expl_* keys: for more terms, "
                              f"use the {base} config (configs/{base}.yaml) with loss_terms: [ExplanationPenalty, ...]")
        super().__init__(**{k: adversarial[k] for k in BASES[base]}, loss_terms=[penalty], **kwargs)
        self.hparams.pop("loss_terms", None)
        self.base = base


@lru_cache(maxsize=None)
def _composed(method_class: type) -> type:
    """ExplanationRegularized over `method_class`: that method's loss, this class's constructor and name (so a
    checkpoint records lightning_modules.explanation_regularized.ExplanationRegularized and reloads through it)."""
    return type(ExplanationRegularized.__name__, (ExplanationRegularized, method_class),
                {"__module__": __name__, "__qualname__": ExplanationRegularized.__qualname__})

