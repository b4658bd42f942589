"""The robustness evaluation's settings, one dataclass per evaluator: the ONE place their defaults live.

`RobustnessCallback(adversarial={...}, autoattack={...}, corruption={...}, explanation={...}, confidence={...})`
reads them; configs written for the flat callback (`epsilons`, `autoattack_samples`, `corruption_baseline`, ...) are
mapped into the groups by `LEGACY_KEYS` (`grouped`, `upgrade_init_args`, `upgrade_cli_args`).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

from core.config import settings_group, upgraded_cli_args
from core.errors import ConfigError
from datamodules.medmnist_c.cache import DEFAULT_CACHE
from lightning_modules.calibration import DEFAULT_BINS


@dataclass(frozen=True)
class AdversarialSettings:
    """PGD: the threat model, the per-epoch check on a fixed validation subset, and the test-time attack.

    epsilons: budgets in [0, 1] pixel units ("4/255" works); [] scores only clean and corrupted images.
    norm: linf or l2 (also AutoAttack's and the explanation attack's).
    val_samples: the fixed validation subset attacked each epoch (None: all); val_steps: its PGD steps (early stop).
    test_steps, test_restarts: PGD on the whole test split.
    """

    epsilons: Sequence[Union[float, str]] = ("4/255",)
    norm: str = "linf"
    val_samples: Optional[int] = 192
    val_steps: int = 5
    test_steps: int = 50
    test_restarts: int = 2


@dataclass(frozen=True)
class AutoAttackSettings:
    """AutoAttack at test time on `samples` test images (None: all), at each of the adversarial epsilons.

    version: 'custom' (the `attacks` list) or 'standard' (apgd-ce, apgd-t, fab-t, square; about 2 s per image on a
    CPU). square_queries: cap on Square's queries, when Square runs. multilabel_steps, multilabel_restarts: the
    PGD-BCE attack that replaces AutoAttack on multi-label heads (attacks.autoattack), whose losses are single-label.
    """

    enabled: bool = True
    version: str = "custom"
    attacks: Optional[Sequence[str]] = ("apgd-ce", "apgd-t")
    samples: Optional[int] = 500
    square_queries: Optional[int] = None
    multilabel_steps: int = 100
    multilabel_restarts: int = 5


@dataclass(frozen=True)
class CorruptionSettings:
    """MedMNIST-C: `val/corr_bacc` (and per corruption) each check on `val_samples` validation images (`epoch`), and
    the test report's table of balanced accuracy, BE and rBE over all severities (`report`; cached in `cache`).

    corruptions: the dataset's MedMNIST-C corruptions to use (None: all); severities: the per-epoch ones.
    baseline: a baseline model's robustness report or run folder: the report adds the mean corruption error against
    it (evaluation.mce) as `corruptions.mce`, logged as `test/corr_mce`; needs `report`.
    """

    epoch: bool = True
    report: bool = True
    corruptions: Optional[Sequence[str]] = None
    severities: Sequence[int] = (3,)
    val_samples: int = 64
    cache: str = DEFAULT_CACHE
    workers: Optional[int] = None
    baseline: Optional[str] = None


@dataclass(frozen=True)
class ExplanationSettings:
    """Explanation robustness (explanations package): the `method` map under the top-k attack (Ghorbani et al.,
    softplus network, `steps` steps, top `k` pixels: an integer or a share in (0, 1)) and under random noise, at each
    of `epsilons`. `epoch`: each check on `samples` fixed validation images; `report`: on `test_samples` test images
    (None: all) with `test_steps` attack steps."""

    epoch: bool = False
    report: bool = False
    method: str = "saliency"
    samples: int = 32
    epsilons: Sequence[Union[float, str]] = ("4/255",)
    steps: int = 5
    k: Union[int, float] = 0.1
    test_samples: Optional[int] = 200
    test_steps: int = 20


@dataclass(frozen=True)
class ConfidenceSettings:
    """Confidence and calibration (`conf`, `ece` with `bins` bins, `nll`, `brier`, each also `_correct` / `_wrong`) of
    every set the other evaluators score, from the probabilities they already have (no extra forward pass)."""

    enabled: bool = True
    bins: int = DEFAULT_BINS


@dataclass(frozen=True)
class CertifiedSettings:
    """Randomized smoothing's CERTIFY (Cohen et al. 2019; attacks.smoothing) at test time, off by default.

    sigma: the smoothing noise in [0, 1] pixel units (None: the model's noise_sigma). n0 selection and n estimation
    noise samples per image, alpha the failure probability, radii the L2 radii certified accuracy is read at.
    samples: the fixed, seeded test subset certified (None: all); batch_size: noisy images per forward pass.
    """

    enabled: bool = False
    sigma: Optional[float] = None
    n0: int = 100
    n: int = 1000
    alpha: float = 0.001
    radii: Sequence[float] = (0.0, 0.25, 0.5, 1.0)
    samples: Optional[int] = None
    batch_size: int = 1000


GROUPS: dict[str, type] = {"adversarial": AdversarialSettings, "autoattack": AutoAttackSettings,
                           "corruption": CorruptionSettings, "explanation": ExplanationSettings,
                           "confidence": ConfidenceSettings, "certified": CertifiedSettings}
#: settings every evaluator shares, kept at the top of the callback's init_args
SHARED = ("every_n_epochs", "batch_size", "seed")


@dataclass(frozen=True)
class RobustnessSettings:
    """Everything the RobustnessCallback does, grouped per evaluator."""

    adversarial: AdversarialSettings = field(default_factory=AdversarialSettings)
    autoattack: AutoAttackSettings = field(default_factory=AutoAttackSettings)
    corruption: CorruptionSettings = field(default_factory=CorruptionSettings)
    explanation: ExplanationSettings = field(default_factory=ExplanationSettings)
    confidence: ConfidenceSettings = field(default_factory=ConfidenceSettings)
    certified: CertifiedSettings = field(default_factory=CertifiedSettings)
    every_n_epochs: int = 1
    batch_size: int = 256
    seed: int = 0

    def flat(self) -> dict[str, Any]:
        """The settings under the flat callback's names (`epsilons`, `autoattack_samples`, ...): what readers of
        saved configs and earlier reports know them by. Sequences come back as lists."""
        out: dict[str, Any] = {name: getattr(self, name) for name in SHARED}
        for old, (group, name) in LEGACY_KEYS.items():
            value = getattr(getattr(self, group), name)
            out[old] = list(value) if isinstance(value, tuple) else value
        return out


#: the flat callback's keyword -> (group, field); `autoattack` and `confidence` were booleans (-> `enabled`)
LEGACY_KEYS: dict[str, tuple[str, str]] = {
    **{name: ("adversarial", name) for name in ("epsilons", "norm", "val_samples", "val_steps", "test_steps",
                                                 "test_restarts")},
    "autoattack": ("autoattack", "enabled"), "autoattack_version": ("autoattack", "version"),
    "autoattack_attacks": ("autoattack", "attacks"), "autoattack_samples": ("autoattack", "samples"),
    "square_queries": ("autoattack", "square_queries"),
    "corruption_epoch": ("corruption", "epoch"), "corruption_report": ("corruption", "report"),
    "corruptions": ("corruption", "corruptions"), "corruption_severities": ("corruption", "severities"),
    "corruption_val_samples": ("corruption", "val_samples"), "corruption_cache": ("corruption", "cache"),
    "corruption_workers": ("corruption", "workers"), "corruption_baseline": ("corruption", "baseline"),
    **{f"explanation_{name}": ("explanation", name) for name in ("epoch", "report", "method", "samples", "epsilons",
                                                                 "steps", "k", "test_samples", "test_steps")},
    "confidence": ("confidence", "enabled"), "confidence_bins": ("confidence", "bins"),
}


def _is_legacy(key: str, value: Any) -> bool:
    """A flat key; `autoattack` / `confidence` are flat only as booleans (as groups they are mappings)."""
    return key in LEGACY_KEYS and (key not in GROUPS or isinstance(value, (bool, str)))


def _group(name: str, value: Any) -> dict[str, Any]:
    return settings_group(GROUPS[name], name, value, "RobustnessCallback")


def _bool(text: Any) -> Any:
    return {"true": True, "false": False}.get(text.lower(), text) if isinstance(text, str) else text


def _refuse_unknown(init_args: dict[str, Any]) -> None:
    unknown = sorted(set(init_args) - set(GROUPS) - set(SHARED) - set(LEGACY_KEYS))
    if unknown:
        raise ConfigError(f"RobustnessCallback has no setting {', '.join(unknown)}: write it in its group "
                          f"({', '.join(GROUPS)}: {{...}}) or use one of {', '.join(SHARED)}")


def grouped(init_args: dict[str, Any], warn: bool = True) -> RobustnessSettings:
    """RobustnessSettings from the callback's keyword arguments: the groups, the shared settings and any flat keys of
    the earlier callback (a flat key overrides its group's field; a deprecation note names the grouped spelling)."""
    _refuse_unknown(init_args)
    groups = {name: _group(name, init_args.get(name)) for name in GROUPS if not _is_legacy(name, init_args.get(name))}
    groups.update({name: {} for name in GROUPS if name not in groups})
    flat = {key: value for key, value in init_args.items() if _is_legacy(key, value)}
    for key, value in flat.items():
        group, name = LEGACY_KEYS[key]
        groups[group][name] = _bool(value) if name == "enabled" else value
    if flat and warn:
        warnings.warn("RobustnessCallback flat settings are deprecated: write "
                      + ", ".join(f"{LEGACY_KEYS[k][0]}.{LEGACY_KEYS[k][1]}" for k in flat)
                      + f" instead of {', '.join(flat)}", DeprecationWarning, stacklevel=3)
    shared = {name: init_args[name] for name in SHARED if name in init_args}
    return RobustnessSettings(**{name: GROUPS[name](**groups[name]) for name in GROUPS}, **shared)


def is_robustness_callback(entry: Any) -> bool:
    """A `trainer.callbacks` entry of a LightningCLI config that is the RobustnessCallback."""
    return isinstance(entry, dict) and str(entry.get("class_path", "")).endswith("RobustnessCallback")


def upgrade_init_args(init_args: dict[str, Any]) -> dict[str, Any]:
    """A callback config's init_args with flat keys moved into their groups (grouped ones are returned as they are);
    a key the callback never had fails in one line."""
    _refuse_unknown(init_args)
    out = {key: value for key, value in init_args.items() if not _is_legacy(key, value)}
    for key, value in init_args.items():
        if _is_legacy(key, value):
            group, name = LEGACY_KEYS[key]
            node = out.get(group)
            out[group] = {**(node if isinstance(node, dict) else {}),
                          name: _bool(value) if name == "enabled" else value}
    return out


def upgrade_config(config: Any) -> tuple[Any, bool]:
    """(the LightningCLI config with every RobustnessCallback's flat keys grouped, whether anything changed)."""
    if not isinstance(config, dict):
        return config, False
    changed = False
    out = dict(config)
    for stage in (None, "fit", "validate", "test", "predict"):  # a config for the subcommand or the whole CLI
        node = out if stage is None else out.get(stage)
        trainer = node.get("trainer") if isinstance(node, dict) else None
        callbacks = trainer.get("callbacks") if isinstance(trainer, dict) else None
        entries = callbacks if isinstance(callbacks, list) else [callbacks]
        for i, entry in enumerate(entries):
            if is_robustness_callback(entry) and isinstance(entry.get("init_args"), dict):
                upgraded = upgrade_init_args(entry["init_args"])
                if upgraded != entry["init_args"]:
                    entries[i] = {**entry, "init_args": upgraded}
                    changed = True
        if changed and isinstance(trainer, dict):
            trainer["callbacks"] = entries if isinstance(callbacks, list) else entries[0]
    return out, changed


CLI_PREFIX = "--trainer.callbacks.init_args."


def upgrade_cli_args(args: Sequence[str]) -> list[str]:
    """`train.py` arguments with flat callback keys grouped: `--trainer.callbacks.init_args.epsilons X` becomes
    `--trainer.callbacks.init_args.adversarial.epsilons X`, and a `--config` file with flat keys is passed on as its
    grouped YAML text (the file itself is not touched)."""
    def rename(name: str, value: str) -> Optional[str]:
        if name in LEGACY_KEYS and (name not in GROUPS or _bool(value) in (True, False)):
            return ".".join(LEGACY_KEYS[name])
        return None

    return upgraded_cli_args(args, CLI_PREFIX, rename, upgrade_config, "RobustnessCallback flat settings")
