"""The one `--set key=value` grammar of every command (sweeps, studies) and how their config paths resolve."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from core.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def parse_assignment(text: str) -> tuple[str, Any]:
    """`key=value` from `--set`, the value read as YAML (`[0, 2/255]`, `3`, `true`); the key is dotted."""
    key, sep, value = str(text).partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set takes key=value (for example seeds=[0,1]), got {text!r}")
    try:
        return key.strip(), yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {key}: cannot read {value!r} as YAML ({first_line(err)})") from None


def resolve_path(text: str | Path) -> Path:
    """A relative path from the working folder when it exists there, else from the repository (so
    `configs/...` and `../shared/...` in a shipped config work from anywhere)."""
    path = Path(text).expanduser()
    if path.is_absolute() or path.exists() or not (REPO / path).exists():
        return path
    return REPO / path


def load_yaml_mapping(path: str | Path, what: str) -> dict:
    """A YAML file that must hold a mapping; one ConfigError line for a missing, broken or non-mapping file."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ConfigError(f"cannot read {what} {path}: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{what} {path} is not valid YAML: {first_line(err)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{what} {path} must be a mapping of keys")
    return raw


def cli_value(value: Any) -> str:
    """A value as LightningCLI reads it from the command line (lists and mappings as JSON)."""
    return value if isinstance(value, str) else json.dumps(value)


def first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]
