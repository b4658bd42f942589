"""The source model of a construction: a checkpoint written by train.py, loaded through evaluation.checkpoints and
checked against the dataset it is meant to rewrite."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from torch import nn

from attacks.threat_model import parse_epsilon
from core.errors import ConfigError
from core.files import file_digest
from datamodules.info import DatasetInfo
from evaluation.checkpoints import load_module, read_checkpoint
from lightning_modules.settings import setting


@dataclass
class Source:
    """A loaded checkpoint: the [0, 1]-input model (eval mode, CPU), its class and settings, what it was trained on."""

    path: Path
    sha256: str
    model: nn.Module
    module_class: str
    hparams: dict
    data_hparams: dict = field(default_factory=dict)

    @property
    def flag(self) -> Optional[str]:
        return self.data_hparams.get("flag")

    @property
    def size(self) -> Optional[int]:
        return self.data_hparams.get("size")

    @property
    def adversarial_norm(self) -> Optional[str]:
        """'l2' or 'linf' for an adversarially trained checkpoint (a positive training epsilon), else None."""
        try:
            positive = parse_epsilon(self.hparams.get("epsilon", 0), "l2") > 0
        except ConfigError:
            positive = False
        return str(self.hparams.get("norm", "linf")).lower() if positive else None

    @property
    def training(self) -> str:
        """'ERM', or e.g. 'PGDAT l2 0.5': the module class and its threat model when adversarially trained."""
        if self.adversarial_norm is None:
            return self.module_class
        return f"{self.module_class} {self.adversarial_norm} {self.hparams['epsilon']}"

    def summary(self) -> dict:
        return {"path": str(self.path), "sha256": self.sha256, "training": self.training,
                "arch": setting(self.hparams, "arch"), "flag": self.flag, "size": self.size}


def file_sha256(path: str | os.PathLike) -> str:
    return file_digest(path, "sha256")


def load_source(path: str | os.PathLike, info: Optional[DatasetInfo] = None, size: Optional[int] = None) -> Source:
    """The checkpoint's model; with `info` (and `size`), refused in one line when it was made for another dataset,
    class count, channel count, task or image size."""
    path = Path(path).expanduser()
    expect = None
    if info is not None:
        expect = {"flag": info.flag, "num_classes": info.num_classes, "in_channels": info.n_channels, "task": info.task}
    data_hparams = dict(read_checkpoint(path).get("datamodule_hyper_parameters") or {})
    module = load_module(path, expect)
    model = getattr(module, "model", None)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{path}: {type(module).__name__} holds no classifier as .model")
    source = Source(path, file_sha256(path), model.eval(), type(module).__name__, dict(module.hparams), data_hparams)
    if size is not None and source.size is not None and int(source.size) != int(size):
        raise ConfigError(f"checkpoint {path} was trained at {source.size} px, not {size} px")
    return source
