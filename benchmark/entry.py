"""A benchmark entry: a result record (evaluation.record) plus its `benchmark` block, one JSON file per evaluation.

The record's own sections hold the L-inf threat model (RobustBench's headline), the clean scores, MedMNIST-C and the
provenance; the block holds the entry's name, its protocol (name, version, settings, overrides), whether it is
standard, the other threat models' sections in the record's own form, the gradient-masking screen and the forward
passes. Wall time and the date live in a separate `<name>.timing.json`, so an entry's bytes depend only on the
checkpoint, the data and the protocol.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from core.errors import ConfigError
from core.files import write_json_atomic
from evaluation.record import ResultRecord, read_record, write_record
from lightning_modules.metrics import MetricKey

BLOCK = "benchmark"
ENTRY_VERSION = 1
ENTRY_SUFFIX = ".entry.json"
TIMING_SUFFIX = ".timing.json"
PRIMARY_NORM = "linf"


@dataclass
class Entry:
    """One evaluated checkpoint under one protocol (see the module docstring)."""

    record: ResultRecord

    def __post_init__(self):
        block = self.record.extra.get(BLOCK)
        if not isinstance(block, dict) or not {"name", "protocol"} <= set(block):
            raise ConfigError("a result record without a benchmark block (name, protocol) is not a benchmark entry: "
                              "make one with python -m benchmark evaluate")

    @property
    def block(self) -> dict[str, Any]:
        return self.record.extra[BLOCK]

    @property
    def name(self) -> str:
        return self.block["name"]

    @property
    def protocol(self) -> dict[str, Any]:
        return self.block["protocol"]

    @property
    def protocol_label(self) -> str:
        return f"{self.protocol['name']}@{self.protocol['version']}"

    @property
    def board_label(self) -> str:
        """The protocol label plus the mCE baseline (`pneumoniamnist_28@1a2b3c4d5e6f+mce-0badc0de`): what a board
        is keyed by, so entries whose mCE is measured against different baselines never share a table."""
        from benchmark.baseline import board_suffix

        return self.protocol_label + board_suffix(self.block.get("mce_baseline"))

    @property
    def standard(self) -> bool:
        return bool(self.protocol.get("standard"))

    @property
    def dataset(self) -> tuple[str, int]:
        return self.protocol["settings"]["flag"], self.protocol["settings"]["size"]

    def norms(self) -> list[str]:
        """The threat models, the record's own first."""
        return [self.record.threat_model["norm"], *self.block.get("threat_models", {})]

    def threat_record(self, norm: str) -> ResultRecord:
        """The record as seen under one threat model: the clean, corruption and provenance sections with that threat
        model's PGD and AutoAttack sets (the primary one is the record itself)."""
        if norm == self.record.threat_model.get("norm"):
            return self.record
        other = self.block.get("threat_models", {}).get(norm)
        if other is None:
            raise ConfigError(f"entry {self.name} has no {norm} threat model")
        data = {**self.record.to_dict(), **other}
        return ResultRecord.from_dict(data, f"entry {self.name} ({norm})")

    def metrics(self, norm: str = PRIMARY_NORM) -> dict[MetricKey, float]:
        """{MetricKey: value} under one threat model (record.metrics of threat_record)."""
        return self.threat_record(norm).metrics()

    @property
    def flags(self) -> list[str]:
        """The gradient-masking screen's findings (empty: nothing suspicious)."""
        return list((self.block.get("screen") or {}).get("flags") or [])


def entry_path(out, name: str) -> Path:
    return Path(out) / f"{name}{ENTRY_SUFFIX}"


def timing_path(out, name: str) -> Path:
    return Path(out) / f"{name}{TIMING_SUFFIX}"


def read_entry(path) -> Entry:
    """The entry at `path` (ConfigError: missing, not a record, or a record without the benchmark block)."""
    record = read_record(path)
    try:
        return Entry(record)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def write_entry(out, entry: Entry, timing: Optional[dict] = None) -> Path:
    """The entry as `OUT/<name>.entry.json` (and its timing beside it), written atomically."""
    path = write_record(entry_path(out, entry.name), entry.record)
    if timing is not None:
        write_json_atomic(timing_path(out, entry.name), timing)
    return path


def read_timing(path) -> dict:
    """The timing file beside an entry ({} when there is none)."""
    path = Path(str(path).removesuffix(ENTRY_SUFFIX) + TIMING_SUFFIX)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def collect_entries(paths) -> list[Entry]:
    """Entries from files and folders (every *.entry.json under a folder), sorted by name."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(path.rglob(f"*{ENTRY_SUFFIX}"))
        elif path.is_file():
            files.append(path)
        else:
            raise ConfigError(f"{path} is neither an entry file nor a folder of entries")
    if not files:
        raise ConfigError(f"no benchmark entries (*{ENTRY_SUFFIX}) in {', '.join(map(str, paths))}")
    return sorted((read_entry(f) for f in files), key=lambda e: e.name)
