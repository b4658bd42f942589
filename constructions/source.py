"""The source model of a construction: a Lightning checkpoint read back into a [0, 1]-input classifier, checked
against the dataset it is meant to rewrite. (A minimal loader: only what constructions need.)"""
from __future__ import annotations

import hashlib
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from attacks.threat_model import parse_epsilon
from core.errors import ConfigError
from datamodules.info import DatasetInfo
from lightning_modules.models import build_model


@dataclass
class Source:
    """A loaded checkpoint: the model (eval mode, CPU), what it was trained on, and how."""

    path: Path
    sha256: str
    model: nn.Module
    hparams: dict
    data_hparams: dict = field(default_factory=dict)

    @property
    def flag(self) -> Optional[str]:
        return self.data_hparams.get("flag")

    @property
    def size(self) -> Optional[int]:
        return self.data_hparams.get("size")

    @property
    def training(self) -> str:
        """'erm', or e.g. 'PGDAT l2 0.5': the module class and its threat model when adversarially trained."""
        name = str(self.hparams.get("_class_path", "")).rsplit(".", 1)[-1] or "unknown"
        if self.adversarial_norm is None:
            return "erm" if name in ("ERM", "unknown") else name
        return f"{name} {self.adversarial_norm} {self.hparams['epsilon']}"

    @property
    def adversarial_norm(self) -> Optional[str]:
        """'l2' or 'linf' for an adversarially trained checkpoint (a positive training epsilon), else None."""
        epsilon = self.hparams.get("epsilon")
        try:
            positive = epsilon is not None and _budget(epsilon) > 0
        except ValueError:
            positive = False
        return str(self.hparams.get("norm", "linf")).lower() if positive else None

    def summary(self) -> dict:
        return {"path": str(self.path), "sha256": self.sha256, "training": self.training,
                "arch": self.hparams.get("arch"), "flag": self.flag, "size": self.size}


def _budget(value) -> float:
    try:
        return parse_epsilon(value, "l2")
    except ConfigError as err:
        raise ValueError(str(err)) from None


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def load_source(path: str | os.PathLike) -> Source:
    """Read a checkpoint written by train.py (ERM, PGD-AT, TRADES, ...) into an eval-mode CPU model."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as err:
        raise ConfigError(f"{path} is not a readable checkpoint ({str(err).splitlines()[0] if str(err) else err})") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "hyper_parameters" not in checkpoint:
        raise ConfigError(f"{path} is not a Lightning checkpoint of this project (no state_dict / hyper_parameters)")
    hp = dict(checkpoint["hyper_parameters"])
    missing = [key for key in ("arch", "num_classes", "in_channels") if key not in hp]
    if missing:
        raise ConfigError(f"{path} lacks the model settings {', '.join(missing)}: not a checkpoint of this project")
    model = build_model(hp["arch"], hp["in_channels"], hp["num_classes"], hp.get("norm_mean", 0.5), hp.get("norm_std", 0.5))
    weights = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise ConfigError(f"{path}: weights do not fit a {hp['arch']} model ({str(err).splitlines()[0]})") from None
    return Source(path, file_sha256(path), model.eval(), hp, dict(checkpoint.get("datamodule_hyper_parameters") or {}))


def check_source(source: Source, info: DatasetInfo, size: int) -> None:
    """Refuse a source model made for another dataset, class count, channel count or image size."""
    hp, where = source.hparams, source.path.name
    if source.flag is not None and str(source.flag).lower() != info.flag:
        raise ConfigError(f"checkpoint {where} was trained on {source.flag}, not {info.flag}")
    if hp["num_classes"] != info.num_classes:
        raise ConfigError(f"checkpoint {where} has {hp['num_classes']} classes, {info.flag} has {info.num_classes}")
    if hp["in_channels"] != info.n_channels:
        raise ConfigError(f"checkpoint {where} takes {hp['in_channels']} channels, {info.flag} has {info.n_channels}")
    if source.size is not None and int(source.size) != int(size):
        raise ConfigError(f"checkpoint {where} was trained at {source.size} px, not {size} px")
