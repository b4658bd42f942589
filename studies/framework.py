"""What a study is: a config dataclass (its YAML's keys are its fields, checked when it is built; loaded by
`load`, core.config.load_dataclass underneath) that reproduces itself into an out folder: its steps kept on disk
in evaluation.layout.StepLayout folders and reused on a rerun, then a results table, figures and a verdict per
pre-registered finding. `python -m studies reproduce CONFIG --out DIR` picks the study by the config's `study:` key
(KINDS) and calls its `reproduce`."""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable, ClassVar, Optional, Protocol, Sequence, runtime_checkable

from core.config import load_yaml_mapping
from core.errors import ConfigError

from .runner import load_study

Log = Callable[[str], None]


@runtime_checkable
class Study(Protocol):
    """A study config that runs itself: `reproduce` trains (or reuses) every step under `out`, writes
    results.csv, results.md (tables and verdicts) and the figures, and returns the results rows."""

    DESCRIPTION: ClassVar[str]  # one line: what the study reproduces
    name: str
    source: Path  # the YAML it was loaded from

    def reproduce(self, out: Path, log: Log = print) -> list[dict]: ...


#: study kind (the config's `study:` key) -> "module:ConfigClass" of its Study
KINDS = {"nonrobust_features": "studies.nonrobust:Study", "explanations": "studies.explanations:Study",
         "positive_control": "studies.positive_control:Study"}
DEFAULT_KIND = "nonrobust_features"


def study_class(kind: str, where: str = "") -> type:
    """The config class of a study kind (one ConfigError line for an unknown one)."""
    if kind not in KINDS:
        raise ConfigError(f"unknown study {kind!r}{f' in {where}' if where else ''}: choose from {', '.join(KINDS)}")
    module, name = KINDS[kind].split(":")
    return getattr(importlib.import_module(module), name)


def load(config: str | Path, overrides: Optional[Sequence[str]] = None) -> Study:
    """A study config, its kind named by its `study:` key, with `--set key=value` overrides, checked."""
    kind = load_yaml_mapping(Path(config), "study config").get("study", DEFAULT_KIND)
    return load_study(study_class(kind, str(config)), config, list(overrides or ()))
