"""The training methods: name -> LightningModule class and shipped config. The one table sweeps, studies, bench
and the explanation-regularised alias read (they sit on higher floors)."""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from core.errors import ConfigError


@dataclass(frozen=True)
class Method:
    """A training method: its name in sweeps and studies, its LightningModule and its shipped train.py config."""

    name: str
    title: str  # as tables and figures print it
    class_path: str
    config: str  # relative to the repository (core.config.resolve_path finds it from anywhere)

    def module_class(self) -> type:
        module, _, name = self.class_path.rpartition(".")
        return getattr(importlib.import_module(module), name)


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("erm", "ERM", "lightning_modules.erm.ERM", "configs/erm.yaml"),
    Method("pgd_at", "PGD-AT", "lightning_modules.adversarial.PGDAT", "configs/pgd_at.yaml"),
    Method("trades", "TRADES", "lightning_modules.adversarial.TRADES", "configs/trades.yaml"),
    Method("fgsm_rs", "FGSM-RS", "lightning_modules.adversarial.FGSMRS", "configs/fgsm_rs.yaml"),
    Method("expl_reg", "explanation-regularised", "lightning_modules.explanation_regularized.ExplanationRegularized",
           "configs/expl_reg.yaml"),
)}


def method(name: str, choices=None) -> Method:
    """The method called `name` (among `choices`, default all); one ConfigError line naming the known ones."""
    names = list(choices or METHODS)
    if name not in names:
        raise ConfigError(f"unknown method {name!r}: choose from {', '.join(names)}")
    return METHODS[name]


def method_of_class(class_path: str) -> str:
    """The method name of a model class path (full or its last part); the class name itself when unregistered."""
    last = str(class_path).rpartition(".")[2]
    for m in METHODS.values():
        if class_path == m.class_path or last == m.class_path.rpartition(".")[2]:
            return m.name
    return last
