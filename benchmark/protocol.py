"""A benchmark protocol: the fixed settings every entry of one dataset and image size is evaluated under.

`benchmark/protocols/<flag>_<size>.yaml` holds a human `name` and the settings; the protocol's `version` is a hash of
the settings (any change, even of a screen tolerance, gives a new version), so entries of different versions never
share a table. `template(flag, size)` writes the settings for any dataset and size; `--quick` and `--set` change
them for a test or a try-out, and the entry says so (`standard: false`).
"""
from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml

from attacks.threat_model import NORMS, parse_epsilon
from core.config import apply_assignments, check_keys, load_yaml_mapping
from core.errors import ConfigError
from datamodules.info import check_size, dataset_info
from lightning_modules.calibration import DEFAULT_BINS

PROTOCOLS = Path(__file__).resolve().parent / "protocols"
#: the headline metric and the ones reported beside it, in every table and export
HEADLINE, BESIDE = "bacc", ("acc", "auroc")
#: what AutoAttack on this project's heads is (attacks.autoattack.attack_plan adapts the standard list per head)
AUTOATTACK_ADAPTATION = (
    "standard AutoAttack (apgd-ce, apgd-t, fab-t, square; 100 iterations, 5000 Square queries) adapted to the head by "
    "attacks.autoattack.attack_plan: binary heads run apgd-ce + fab + square (the DLR losses need >= 3 classes and "
    "fab-t's only target is the other class), 3-class heads apgd-ce + apgd-dlr + fab-t + square; targeted attacks try "
    "every other class; multi-label heads run PGD on the BCE loss instead (weaker; stated in each set's info)")

SECTIONS = ("flag", "size", "examples", "seed", "batch_size", "threat_models", "pgd", "autoattack", "corruption",
            "confidence", "screen")


def template(flag: str, size: int) -> dict[str, Any]:
    """The standard settings for a dataset and image size (the shipped protocols are this, written out)."""
    info = dataset_info(flag)
    return {
        "flag": info.flag, "size": check_size(size),
        "examples": None,  # the whole test split
        "seed": 0, "batch_size": 256,
        "threat_models": {"linf": ["1/255", "2/255", "4/255", "8/255"], "l2": [0.25, 0.5]},
        "pgd": {"steps": 100, "restarts": 5},
        "autoattack": {"version": "standard", "attacks": None, "square_queries": 5000},
        "corruption": {"corruptions": None},  # all of the dataset's MedMNIST-C corruptions, every severity
        "confidence": {"bins": DEFAULT_BINS},
        # gradient-masking screen: PGD (above) beside AutoAttack, and PGD at a budget where every image can reach
        # the grey image (L-inf 128/255): a model whose accuracy stays above chance there is flagged
        "screen": {"large_epsilon": "128/255", "large_steps": 50, "pgd_above_aa": 0.05, "aa_above_pgd": 0.0,
                   "chance_margin": 0.05},
    }


def quick_overrides(flag: str) -> list[str]:
    """`--quick`: few examples and steps, two epsilons, two corruptions (tests and try-outs; never standard)."""
    from datamodules.medmnist_c import corruption_names

    return ["examples=32", "threat_models.linf=[8/255]", "threat_models.l2=[0.5]", "pgd.steps=10", "pgd.restarts=1",
            "autoattack.version=custom", "autoattack.attacks=[apgd-ce, square]", "autoattack.square_queries=20",
            "screen.large_steps=10",
            f"corruption.corruptions=[{', '.join(corruption_names(flag)[:2])}]"]


@dataclass(frozen=True)
class Protocol:
    """A named, versioned protocol; `settings` are checked on construction (one ConfigError line)."""

    name: str
    settings: dict[str, Any]
    overrides: tuple[str, ...] = ()
    source: Optional[Path] = field(default=None, compare=False)

    def __post_init__(self):
        check_settings(self.settings, self.name)

    @property
    def version(self) -> str:
        """12 hex digits of the SHA-256 of the settings in canonical JSON."""
        text = json.dumps(self.settings, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    @property
    def label(self) -> str:
        """`pneumoniamnist_28@1a2b3c4d5e6f`: the key of a leaderboard table."""
        return f"{self.name}@{self.version}"

    @property
    def standard(self) -> bool:
        return not self.overrides

    @property
    def flag(self) -> str:
        return self.settings["flag"]

    @property
    def size(self) -> int:
        return self.settings["size"]

    def epsilons(self, norm: str) -> list[float]:
        return [parse_epsilon(e, norm) for e in self.settings["threat_models"].get(norm) or []]

    @property
    def norms(self) -> list[str]:
        return [norm for norm in NORMS if self.settings["threat_models"].get(norm)]

    def with_overrides(self, assignments: Iterable[str]) -> "Protocol":
        """The protocol with `key=value` changes (core.config's --set grammar): a non-standard protocol whose
        version is that of the changed settings."""
        assignments = list(assignments)
        if not assignments:
            return self
        settings = apply_assignments(copy.deepcopy(self.settings), assignments)
        return Protocol(self.name, settings, (*self.overrides, *assignments), self.source)

    def to_dict(self) -> dict[str, Any]:
        """What an entry stores of its protocol."""
        return {"name": self.name, "version": self.version, "standard": self.standard,
                "overrides": list(self.overrides), "settings": self.settings, "headline": HEADLINE,
                "beside": list(BESIDE), "autoattack_adaptation": AUTOATTACK_ADAPTATION}


def check_settings(settings: dict, name: str) -> None:
    """ConfigError for settings a protocol cannot have (unknown keys, bad epsilons, counts, tolerances)."""
    if not isinstance(settings, dict):
        raise ConfigError(f"protocol {name}: settings must be a mapping")
    check_keys(settings, SECTIONS, f"protocol {name}")
    missing = [key for key in SECTIONS if key not in settings]
    if missing:
        raise ConfigError(f"protocol {name} lacks {', '.join(missing)}")
    dataset_info(settings["flag"])
    check_size(settings["size"])
    threat_models = settings["threat_models"]
    if not isinstance(threat_models, dict) or not threat_models:
        raise ConfigError(f"protocol {name}: threat_models maps linf / l2 to epsilon lists")
    check_keys(threat_models, NORMS, f"protocol {name} threat_models")
    for norm, epsilons in threat_models.items():
        if not isinstance(epsilons, list):
            raise ConfigError(f"protocol {name}: threat_models.{norm} must be a list of epsilons")
        for eps in epsilons:
            parse_epsilon(eps, norm)
    nested = {"pgd": ("steps", "restarts"), "autoattack": ("version", "attacks", "square_queries"),
              "corruption": ("corruptions",), "confidence": ("bins",),
              "screen": ("large_epsilon", "large_steps", "pgd_above_aa", "aa_above_pgd", "chance_margin")}
    for section, keys in nested.items():
        if not isinstance(settings[section], dict):
            raise ConfigError(f"protocol {name}: {section} must be a mapping of {', '.join(keys)}")
        check_keys(settings[section], keys, f"protocol {name} {section}")
    counts = [("examples", settings["examples"]), ("seed", settings["seed"]), ("batch_size", settings["batch_size"]),
              ("pgd.steps", settings["pgd"]["steps"]), ("pgd.restarts", settings["pgd"]["restarts"]),
              ("confidence.bins", settings["confidence"]["bins"]),
              ("screen.large_steps", settings["screen"]["large_steps"]),
              ("autoattack.square_queries", settings["autoattack"]["square_queries"])]
    for key, value in counts:
        low = 0 if key == "seed" else 1
        if value is None and key in ("examples", "autoattack.square_queries"):
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"protocol {name}: {key} must be an integer >= {low}, got {value!r}")
    parse_epsilon(settings["screen"]["large_epsilon"], "linf")
    _check_autoattack(settings["autoattack"], name)
    for key in ("pgd_above_aa", "aa_above_pgd", "chance_margin"):
        value = settings["screen"][key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ConfigError(f"protocol {name}: screen.{key} must be a number in [0, 1], got {value!r}")


def _check_autoattack(autoattack: dict, name: str) -> None:
    from attacks.autoattack import AUTOATTACK_ATTACKS, VERSIONS

    version, attacks = autoattack["version"], autoattack["attacks"]
    if version not in VERSIONS:
        raise ConfigError(f"protocol {name}: autoattack.version must be one of {', '.join(VERSIONS)}, got {version!r}")
    if version == "standard" and attacks is not None:
        raise ConfigError(f"protocol {name}: autoattack.attacks must be null for the standard version")
    if version == "custom" and (not isinstance(attacks, list) or not attacks or
                                not set(attacks) <= set(AUTOATTACK_ATTACKS)):
        raise ConfigError(f"protocol {name}: autoattack.version custom needs attacks, a list from "
                          f"{', '.join(AUTOATTACK_ATTACKS)}; got {attacks!r}")


# ---- the shipped protocols --------------------------------------------------------------------------------------
def protocol_files() -> list[Path]:
    return sorted(PROTOCOLS.glob("*.yaml"))


def read_protocol(path) -> Protocol:
    """The protocol in a YAML file: `name` plus the settings."""
    raw = load_yaml_mapping(Path(path), "protocol")
    name = raw.pop("name", None)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"protocol {path} needs a name")
    return Protocol(name, raw, source=Path(path))


def load_protocol(spec: str) -> Protocol:
    """A protocol by name (`pneumoniamnist_28`), by name and version (`pneumoniamnist_28@1a2b3c4d5e6f`: refused
    when the shipped protocol's settings have another version), or by the path of a YAML file."""
    text, _, version = str(spec).partition("@")
    path = Path(text)
    if not (path.suffix in (".yaml", ".yml") and path.is_file()):
        path = PROTOCOLS / f"{text}.yaml"
    if not path.is_file():
        known = ", ".join(p.stem for p in protocol_files())
        raise ConfigError(f"unknown protocol {text!r}: the protocols are {known} (python -m benchmark protocols; "
                          "python -m benchmark protocols --new FLAG SIZE writes one for another dataset or size)")
    protocol = read_protocol(path)
    if version and version != protocol.version:
        raise ConfigError(f"protocol {protocol.name} has version {protocol.version}, not {version}: its settings "
                          "changed since; evaluate under the current version (or check out the release of that one)")
    return protocol


def protocol_text(flag: str, size: int) -> str:
    """The YAML of the template protocol for a dataset and size, as the shipped files are written."""
    settings = template(flag, size)
    header = ("# A medrobust benchmark protocol (benchmark/protocol.py). Its version is the hash of every setting\n"
              "# below `name`: change any of them and entries of the old and new version no longer share a table.\n")
    return header + yaml.safe_dump({"name": f"{settings['flag']}_{settings['size']}", **settings}, sort_keys=False)
