"""Checkpoints as input: read a Lightning checkpoint, check it against what a run expects, load it as its model.

The model class comes from the checkpoint itself: `medrobust_class` (written by ERM.on_save_checkpoint), else
LightningCLI's `_class_path` hyperparameter, else the most specific project class whose constructor takes every
saved hyperparameter. Hyperparameters of the flat constructor (old checkpoints: `arch`, `lr`, ...) are grouped
first (lightning_modules.settings). Every problem is one line: DataError for a missing or unreadable file,
ConfigError for a checkpoint of another dataset, class count, input channels, task or model class than the run's.
"""
from __future__ import annotations

import importlib
import inspect
import os
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from core.errors import ConfigError, DataError
from lightning_modules.settings import upgrade_init_args

CLASS_KEY = "medrobust_class"
MODULE_CLASSES = ("lightning_modules.erm.ERM", "lightning_modules.adversarial.PGDAT",
                  "lightning_modules.adversarial.TRADES", "lightning_modules.adversarial.FGSMRS",
                  "lightning_modules.explanation_regularized.ExplanationRegularized")
#: what `expect` may hold; the model facts are compared with the checkpoint's hyperparameters
EXPECTABLE = ("flag", "num_classes", "in_channels", "task", "model_class")


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """The checkpoint dict at `path`; DataError when the file is missing or is not a Lightning checkpoint."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"checkpoint {path} not found")
    try:
        # weights_only=False as Lightning itself loads checkpoints (its hyperparameters are pickled objects)
        checkpoint = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # a text file, a truncated zip, a foreign pickle: any of torch's loading errors
        detail = (str(err).strip().splitlines() or [""])[0][:200]
        raise DataError(f"{path} is not a readable checkpoint ({type(err).__name__}: {detail})") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), Mapping):
        raise DataError(f"{path} is not a Lightning checkpoint (it has no state_dict)")
    return checkpoint


def hyperparameters(checkpoint: dict) -> dict:
    """The model's constructor arguments saved in the checkpoint (LightningCLI's private `_` keys left out)."""
    return {k: v for k, v in dict(checkpoint.get("hyper_parameters") or {}).items() if not k.startswith("_")}


def class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _import(path: str) -> type:
    module, _, name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise DataError(f"the checkpoint's model class {path} cannot be imported") from None
    import lightning as L

    if not (isinstance(cls, type) and issubclass(cls, L.LightningModule)):
        raise DataError(f"the checkpoint's model class {path} is not a LightningModule")
    return cls


def _init_parameters(cls: type) -> set[str]:
    """Every named constructor argument of `cls`, following **kwargs up the class hierarchy."""
    names = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        parameters = inspect.signature(klass.__init__).parameters.values()
        names |= {p.name for p in parameters if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            break
    return names


def checkpoint_class(checkpoint: dict, path: str | os.PathLike = "the checkpoint") -> type:
    """The LightningModule class that wrote `checkpoint`."""
    stored = checkpoint.get(CLASS_KEY) or (checkpoint.get("hyper_parameters") or {}).get("_class_path")
    if stored:
        return _import(stored)
    # the class with the fewest constructor arguments that takes every saved one (ERM < PGDAT < TRADES), so
    # arguments added since the checkpoint was written (with defaults) do not matter
    saved = set(upgrade_init_args(hyperparameters(checkpoint)))  # a flat checkpoint's keys under their groups
    fits = sorted(((len(_init_parameters(cls)), class_path(cls), cls) for cls in map(_import, MODULE_CLASSES)
                   if saved <= _init_parameters(cls)), key=lambda fit: fit[:2])
    if not saved or not fits or (len(fits) > 1 and fits[0][0] == fits[1][0]):
        raise DataError(f"{path} does not say which model class wrote it, and its hyperparameters "
                        f"({', '.join(sorted(saved)) or 'none'}) do not single out one of {', '.join(MODULE_CLASSES)}")
    return fits[0][2]


def check_checkpoint(checkpoint: dict, expect: Mapping[str, Any], path: str | os.PathLike = "the checkpoint") -> None:
    """ConfigError when `checkpoint` is not what `expect` describes: `flag` (the dataset it was trained on, when
    recorded), `num_classes`, `in_channels`, `task`, `model_class` (a class, a class path or a bare class name)."""
    unknown = sorted(set(expect) - set(EXPECTABLE))
    if unknown:
        raise ConfigError(f"cannot check a checkpoint's {', '.join(unknown)}: choose from {', '.join(EXPECTABLE)}")
    saved, differ = hyperparameters(checkpoint), []
    dataset = (checkpoint.get("datamodule_hyper_parameters") or {}).get("flag")
    if expect.get("flag") is not None and dataset is not None and dataset != expect["flag"]:
        differ.append(f"dataset {dataset} (the run's: {expect['flag']})")
    for key, what in (("num_classes", "classes"), ("in_channels", "input channels"), ("task", "task")):
        if expect.get(key) is not None and key in saved and saved[key] != expect[key]:
            differ.append(f"{what} {saved[key]} (the run's: {expect[key]})")
    wanted = expect.get("model_class")
    if wanted is not None:
        wanted = class_path(wanted) if isinstance(wanted, type) else str(wanted)
        found = class_path(checkpoint_class(checkpoint, path))
        if found != wanted and found.rpartition(".")[2] != wanted:
            differ.append(f"model class {found} (the run's: {wanted})")
    if differ:
        raise ConfigError(f"checkpoint {path} does not fit this run: {'; '.join(differ)}")


def load_module(path: str | os.PathLike, expect: Optional[Mapping[str, Any]] = None, map_location: Any = "cpu"):
    """The checkpoint at `path` as its own LightningModule class, in eval mode, after checking it against `expect`
    (see check_checkpoint); one-line DataError/ConfigError otherwise."""
    checkpoint = read_checkpoint(path, map_location)
    if expect:
        check_checkpoint(checkpoint, expect, path)
    cls = checkpoint_class(checkpoint, path)
    try:
        model = cls(**upgrade_init_args(hyperparameters(checkpoint)))
        model.load_state_dict(checkpoint["state_dict"])
    except (TypeError, RuntimeError) as err:  # constructor arguments or weights that do not fit the class
        detail = (str(err).strip().splitlines() or [""])[0][:200]
        raise DataError(f"{path} cannot be loaded as {class_path(cls)} ({type(err).__name__}: {detail})") from None
    model.on_load_checkpoint(checkpoint)
    return model.eval()
