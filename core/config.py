"""The one `--set key=value` grammar of every command (sweeps, studies), the one way it is applied to a config
mapping, the one loader of config dataclasses (study configs), and how their config paths resolve."""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, Collection, Iterable, Optional, TypeVar

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


def set_key(raw: dict, key: str, value: Any, flat: Collection[str] = (),
            as_mapping: Optional[Callable[[str, Any], dict]] = None) -> None:
    """Set a dotted `key` in a config mapping, creating mappings on the way; below a section named in `flat` the
    rest of the key is one dotted key (train.py's `model.init_args.steps`). A scalar on the way is turned into a
    mapping by `as_mapping(name, value)` (a sampler name into {type: name}), else refused in one line."""
    node, parts = raw, key.split(".")
    while len(parts) > 1:
        part = parts.pop(0)
        child = node.get(part)
        if child is None:
            child = {}
        elif not isinstance(child, dict):
            if as_mapping is None:
                raise ConfigError(f"--set {key}: {part!r} is not a mapping; set it whole: --set {part}=VALUE")
            child = as_mapping(part, child)
        node[part] = dict(child)
        node = node[part]
        if part in flat:
            parts = [".".join(parts)]
    node[parts[0]] = value


def apply_assignments(raw: dict, assignments: Iterable[str], flat: Collection[str] = (),
                      as_mapping: Optional[Callable[[str, Any], dict]] = None) -> dict:
    """`--set key=value` overrides (parse_assignment's grammar) applied to a config mapping by set_key."""
    for text in assignments or ():
        set_key(raw, *parse_assignment(text), flat=flat, as_mapping=as_mapping)
    return raw


def check_keys(raw: dict, known: Iterable[str], what: str) -> None:
    """One ConfigError line for keys of `raw` outside `known`, naming the known ones."""
    known = list(known)
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(f"unknown {what} key(s) {', '.join(map(str, unknown))}: "
                          f"the keys are {', '.join(sorted(known))}")


Config = TypeVar("Config")


def load_dataclass(cls: type[Config], path: str | Path, assignments: Iterable[str] = (), *, what: str,
                   flat: Collection[str] = (), selector: str = "study") -> Config:
    """A config dataclass from a YAML mapping plus `--set` overrides: the file's keys are the dataclass's fields
    (`source`, the file, is filled in; `selector` names the loader and is dropped); unknown keys fail in one line
    naming the known ones; the dataclass checks its values (__post_init__)."""
    path = Path(path)
    raw = apply_assignments(load_yaml_mapping(path, what), assignments, flat)
    names = [f.name for f in fields(cls) if f.init and f.name != "source"]
    check_keys(raw, [selector, *names], what)
    given = {key: value for key, value in raw.items() if key != selector}
    if "source" in {f.name for f in fields(cls)}:
        given["source"] = path
    return cls(**given)


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


def upgraded_config_arg(value: str, upgrade: Callable[[Any], tuple[Any, bool]], what: str) -> str:
    """A train.py `--config` value (a file or YAML text) as given, or as YAML text when `upgrade` (a config ->
    (config, changed)) rewrote the deprecated `what` in it; the file itself is not touched."""
    import warnings

    try:
        text = value if "\n" in value else (Path(value).read_text() if Path(value).is_file() else None)
        raw = yaml.safe_load(text) if text is not None else None
    except (OSError, ValueError, yaml.YAMLError):
        return value  # jsonargparse reports the file's own problem
    config, changed = upgrade(raw)
    if not changed:
        return value
    warnings.warn(f"{value if text is not value else 'the config'}: {what} are deprecated; `train.py ... "
                  "--print_config` prints the grouped form", DeprecationWarning, stacklevel=3)
    return yaml.safe_dump(config, sort_keys=False)


def settings_group(cls: type, name: str, value: Any, owner: str) -> dict[str, Any]:
    """A settings group given as its dataclass `cls`, a mapping or None, as a dict of its fields; a value of another
    kind or an unknown field fails in one line naming `owner` (the model, the RobustnessCallback)."""
    names = [f.name for f in dataclasses.fields(cls)]
    if value is None:
        return {}
    if isinstance(value, cls):
        return dataclasses.asdict(value)
    if not isinstance(value, Mapping):
        raise ConfigError(f"{owner} {name}: a mapping of {', '.join(names)}, got {value!r}")
    unknown = sorted(set(value) - set(names))
    if unknown:
        raise ConfigError(f"{owner} {name} has no setting {', '.join(unknown)}: choose from {', '.join(names)}")
    return dict(value)


def upgraded_cli_args(args: Sequence[str], prefix: str, rename: Callable[[str, str], Optional[str]],
                      upgrade: Callable[[Any], tuple[Any, bool]], what: str) -> list[str]:
    """train.py arguments with deprecated keys rewritten: `PREFIX+NAME VALUE` (or `=VALUE`) becomes `PREFIX+NEW VALUE`
    where `rename(NAME, VALUE)` gives NEW (None: kept), and a `--config` value passes through
    `upgraded_config_arg(value, upgrade, what)`."""
    out: list[str] = []
    args = list(args)
    i = 0
    while i < len(args):
        key, eq, inline = args[i].partition("=")
        value = inline if eq else (args[i + 1] if i + 1 < len(args) else None)
        step = 1 if eq else 2
        new = rename(key[len(prefix):], value) if key.startswith(prefix) and value is not None else None
        if new is not None:
            out += [f"{prefix}{new}", value]
        elif key in ("--config", "-c") and value is not None:
            out += [key, upgraded_config_arg(value, upgrade, what)]
        else:
            out.append(args[i])
            step = 1
        i += step
    return out


def cli_value(value: Any) -> str:
    """A value as LightningCLI reads it from the command line (lists and mappings as JSON)."""
    return value if isinstance(value, str) else json.dumps(value)


def first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]
