"""The training modules' settings, one frozen dataclass per concern: the ONE place their defaults live.

`ERM(network={...}, optimization={...}, finetuning={...}, ...)` reads them. Flat at the top of `init_args` stay the
facts train.py links from the DataModule (num_classes, in_channels, task, input_size) and what the training method
itself does to each batch: `noise_sigma`, `loss_terms` and a subclass's own keys (epsilon, steps, beta, ...), which
sweeps and studies set as `model.init_args.KEY`. Configs, command lines and checkpoints written for the flat
constructor (`arch`, `lr`, `finetune`, ...) are mapped into the groups by `LEGACY_KEYS` (`grouped`,
`upgrade_init_args`, `upgrade_cli_args`); `setting` and `flat_hparams` read hyperparameters of either shape.
"""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence, Union

from core.config import settings_group, upgraded_cli_args
from core.errors import ConfigError


@dataclass(frozen=True)
class NetworkSettings:
    """The classifier. arch: small_cnn, resnet18_28 (3x3 stem, no max-pool), resnet18, resnet50 or any timm model as
    timm/NAME. norm_mean, norm_std: the normalization layer inside the model (inputs stay in [0, 1]); None: 0.5 for the
    built-in archs, the backbone's own for timm ones. channels_last, compile: fast paths with no effect on results.
    model_kwargs: more keywords for timm.create_model (img_size, patch_size, drop_path_rate, ...)."""

    arch: str = "small_cnn"
    norm_mean: Union[float, Sequence[float], None] = None
    norm_std: Union[float, Sequence[float], None] = None
    channels_last: bool = False
    compile: bool = False
    model_kwargs: Optional[dict[str, Any]] = None


@dataclass(frozen=True)
class OptimizationSettings:
    """optimizer: adam, adamw or sgd, with lr, weight_decay and momentum (sgd, Nesterov); the learning rate is
    multiplied by lr_gamma at each of lr_milestones (fractions of max_epochs)."""

    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    lr_milestones: Sequence[float] = (0.5, 0.75)
    lr_gamma: float = 0.1


@dataclass(frozen=True)
class FinetuningSettings:
    """timm backbones only. pretrained: false, true (the published weights) or a weights file. mode: full, linear (only
    the classifier trains) or lora (PEFT LoRA adapters of lora_rank, lora_alpha (default: the rank) and lora_dropout on
    lora_targets: attention, conv or layer names; default attention when the backbone has it, else conv)."""

    pretrained: Union[bool, str] = False
    mode: str = "full"
    lora_rank: int = 8
    lora_alpha: Optional[float] = None
    lora_dropout: float = 0.0
    lora_targets: Optional[list[str]] = None


GROUPS: dict[str, type] = {"network": NetworkSettings, "optimization": OptimizationSettings,
                           "finetuning": FinetuningSettings}
#: the flat constructor's keyword -> (group, field); `finetune` was the fine-tuning mode
LEGACY_KEYS: dict[str, tuple[str, str]] = {
    **{name: ("network", name) for name in ("arch", "norm_mean", "norm_std", "channels_last", "compile",
                                            "model_kwargs")},
    **{name: ("optimization", name) for name in ("optimizer", "lr", "weight_decay", "momentum", "lr_milestones",
                                                 "lr_gamma")},
    "pretrained": ("finetuning", "pretrained"), "finetune": ("finetuning", "mode"),
    **{name: ("finetuning", name) for name in ("lora_rank", "lora_alpha", "lora_dropout", "lora_targets")},
}


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


@dataclass(frozen=True)
class ModuleSettings:
    """Every grouped setting of a training module."""

    network: NetworkSettings = field(default_factory=NetworkSettings)
    optimization: OptimizationSettings = field(default_factory=OptimizationSettings)
    finetuning: FinetuningSettings = field(default_factory=FinetuningSettings)

    def hparams(self) -> dict[str, dict[str, Any]]:
        """The groups as the module's hyperparameters keep them: plain dicts, sequences as lists (YAML-safe)."""
        return {name: {key: _plain(value) for key, value in dataclasses.asdict(getattr(self, name)).items()}
                for name in GROUPS}


def _group(name: str, value: Any) -> dict[str, Any]:
    return settings_group(GROUPS[name], name, value, "model")


def grouped(groups: Mapping[str, Any], flat: Mapping[str, Any], owner: str = "the model",
            warn: bool = True) -> ModuleSettings:
    """ModuleSettings from the groups (dataclasses, mappings or None) and flat keys of the earlier constructor (a flat
    key overrides its group's field, as a checkpoint's saved hyperparameters override a config's); any other key
    fails in one line naming `owner`."""
    unknown = sorted(set(flat) - set(LEGACY_KEYS))
    if unknown:
        raise ConfigError(f"{owner} has no setting {', '.join(unknown)}: write it in its group "
                          f"({', '.join(GROUPS)}: {{...}}) or check its spelling")
    fields = {name: _group(name, groups.get(name)) for name in GROUPS}
    for key, value in flat.items():
        group, name = LEGACY_KEYS[key]
        fields[group][name] = value
    if flat and warn:
        warnings.warn(f"{owner}: flat settings are deprecated: write {_spelling(flat)} instead of {', '.join(flat)}",
                      DeprecationWarning, stacklevel=3)
    return ModuleSettings(**{name: GROUPS[name](**fields[name]) for name in GROUPS})


def _spelling(keys) -> str:
    return ", ".join(".".join(LEGACY_KEYS[key]) for key in keys)


def setting(hparams: Mapping[str, Any], name: str, default: Any = None) -> Any:
    """The value of `name` (a top-level key, or a flat key of the earlier constructor such as arch, lr or pretrained)
    in a module's hparams or a checkpoint's hyper_parameters, grouped or flat: callers need not know the nesting."""
    if name in hparams:
        return hparams[name]
    if name in LEGACY_KEYS:
        group, key = LEGACY_KEYS[name]
        node = hparams.get(group)
        if isinstance(node, Mapping) and key in node:
            return node[key]
        if dataclasses.is_dataclass(node):
            return getattr(node, key)
    return default


def flat_hparams(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """Hyperparameters of either shape under the flat constructor's names (the groups spread out; a top-level flat key
    wins over its group's field, as in `grouped`): old and new checkpoints and reports compare key by key."""
    out: dict[str, Any] = {}
    for key, (group, name) in LEGACY_KEYS.items():
        node = hparams.get(group)
        if isinstance(node, Mapping) and name in node:
            out[key] = node[name]
    out.update({key: value for key, value in hparams.items() if key not in GROUPS})
    return out


def upgrade_init_args(init_args: Mapping[str, Any]) -> dict[str, Any]:
    """A model config's init_args with flat keys moved into their groups (other keys are returned as they are); a
    flat key whose group sets the same field to another value fails in one line."""
    out = {key: value for key, value in init_args.items() if key not in LEGACY_KEYS}
    for key, value in init_args.items():
        if key not in LEGACY_KEYS:
            continue
        group, name = LEGACY_KEYS[key]
        node = out.get(group)
        node = dict(node) if isinstance(node, Mapping) else {}
        if name in node and node[name] != value:
            raise ConfigError(f"model init_args set {key}: {value!r} and {group}.{name}: {node[name]!r}: keep only "
                              f"{group}.{name}")
        out[group] = {**node, name: value}
    return out


def upgrade_config(config: Any) -> tuple[Any, bool]:
    """(the LightningCLI config with the model's flat keys grouped, whether anything changed)."""
    if not isinstance(config, dict):
        return config, False
    out, changed = dict(config), False
    for stage in (None, "fit", "validate", "test", "predict"):  # a config for the subcommand or the whole CLI
        node = out if stage is None else out.get(stage)
        model = node.get("model") if isinstance(node, dict) else None
        if isinstance(model, dict) and isinstance(model.get("init_args"), dict):
            upgraded = upgrade_init_args(model["init_args"])
            if upgraded != model["init_args"]:
                node["model"] = {**model, "init_args": upgraded}
                changed = True
    return out, changed


CLI_PREFIX = "--model.init_args."


def upgrade_cli_args(args: Sequence[str]) -> list[str]:
    """`train.py` arguments with the model's flat keys grouped: `--model.init_args.lr X` becomes
    `--model.init_args.optimization.lr X`, and a `--config` (a file or YAML text) with flat model keys is passed on
    as its grouped YAML text (the file itself is not touched)."""
    def rename(name: str, value: str) -> Optional[str]:
        return ".".join(LEGACY_KEYS[name]) if name in LEGACY_KEYS else None

    return upgraded_cli_args(args, CLI_PREFIX, rename, upgrade_config, "flat model settings")
