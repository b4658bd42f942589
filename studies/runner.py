"""What every study reproduction shares: its YAML with `--set` overrides loaded as its config dataclass
(core.config), training steps kept on disk and reused on a rerun, and the results table.

A study (studies.framework.Study: a config dataclass with `reproduce(out, log)`) loads through `load_study`;
`python -m studies reproduce CONFIG --out DIR` picks it by the config's `study:` key.
"""
from __future__ import annotations

import csv
import io
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from core.config import cli_value, load_dataclass, resolve_path
from core.errors import ConfigError
from core.files import write_json_atomic, write_text_atomic
from evaluation.layout import RunLayout
FLAT_SECTIONS = ("train", "overrides")  # their keys are dotted train.py keys, not nested mappings


@dataclass
class StudyConfig:
    """The keys every study config shares (its name, seeds, datasets, common `train` overrides, models); a study's
    config dataclass adds its own after them."""

    name: str = ""
    seeds: list[int] = field(default_factory=lambda: [0])
    datasets: list[dict] = field(default_factory=list)
    train: dict = field(default_factory=dict)
    models: dict[str, dict] = field(default_factory=dict)


def load_study(cls: type, path: str | Path, overrides: Optional[list[str]] = None):
    """A study config dataclass `cls` from its YAML and `key=value` overrides (core.config.load_dataclass: dotted
    keys, YAML values; below `train` and `overrides` the rest of the key is one dotted train.py key)."""
    return load_dataclass(cls, path, overrides or (), what="study", flat=FLAT_SECTIONS)


DATASET_KEYS = {"flag", "size", "root", "download", "verify_md5", "train"}


def check_datasets(datasets, extra_keys: frozenset = frozenset()) -> list[dict]:
    """A study's `datasets:` list, checked (a mapping per dataset with a known MedMNIST flag and known keys, the
    study's own `extra_keys` among them; roots resolved against the working folder or the repository)."""
    from datamodules.info import dataset_info

    if not datasets:
        raise ConfigError("the study needs at least one dataset: datasets: [{flag: pneumoniamnist, size: 28}]")
    for entry in datasets:
        if not isinstance(entry, dict) or "flag" not in entry:
            raise ConfigError(f"each dataset needs a flag, got {entry!r}")
        extra = sorted(set(entry) - DATASET_KEYS - extra_keys)
        if extra:
            raise ConfigError(f"unknown dataset key(s) {', '.join(extra)}: use "
                              f"{', '.join(sorted(DATASET_KEYS | extra_keys))}")
        if entry.get("root"):
            entry["root"] = str(resolve_path(entry["root"]))
        dataset_info(entry["flag"])
    return datasets


def check_seeds(seeds) -> list[int]:
    if not (isinstance(seeds, list) and seeds and all(isinstance(s, int) and not isinstance(s, bool)
                                                      for s in seeds)):
        raise ConfigError(f"seeds must be a non-empty list of integers, got {seeds!r}")
    return seeds


def check_training_spec(where: str, spec) -> None:
    if not isinstance(spec, dict) or "config" not in spec:
        raise ConfigError(f"{where} needs a training config: {{config: configs/erm.yaml, overrides: {{...}}}}")
    config = resolve_path(spec["config"])
    if not config.is_file():
        raise ConfigError(f"{where}.config {spec['config']} not found "
                          "(relative to the working folder or the repository)")
    spec["config"] = str(config)
    if not isinstance(spec.get("overrides") or {}, dict):
        raise ConfigError(f"{where}.overrides must be a mapping of train.py keys to values")


def done(step_dir: Path) -> Optional[dict]:
    try:
        return json.loads(RunLayout(step_dir).result.read_text())
    except (OSError, ValueError):
        return None


def train_step(step_dir: Path, spec: dict, common: dict, dataset: dict, seed: int,
               extra: Optional[dict] = None, corruptions: bool = False) -> dict:
    """One training run (fit, then test of its best checkpoint) with the study's `common` train.py overrides, or
    its stored result when already done with the same arguments (a finished step run with other settings is
    refused, not silently reused)."""
    overrides = {
        "data.flag": dataset["flag"], "data.size": dataset.get("size", 28),
        **({"data.root": dataset["root"]} if dataset.get("root") else {}),
        **{f"data.{key}": dataset[key] for key in ("download", "verify_md5") if key in dataset},
        "seed_everything": seed, "trainer.default_root_dir": str(step_dir),
        **common, **(dataset.get("train") or {}), **(spec.get("overrides") or {}), **(extra or {}),
    }
    if corruptions:
        overrides["trainer.callbacks.init_args.corruption_report"] = True
    args = ["fit", "--config", spec["config"]]
    for key, value in overrides.items():
        args += [f"--{key}", cli_value(value)]
    finished = done(step_dir)
    if finished is not None:
        previous = list(finished.get("args", args))
        if previous[-2:] == ["--ckpt_path", "last"]:  # the run had resumed from its own last.ckpt
            previous = previous[:-2]
        if previous != args:
            raise ConfigError(f"{step_dir} was trained with other settings than the config now asks for: delete that "
                              "folder to train it again, or use another --out")
        return finished
    import train

    if RunLayout(step_dir).last_checkpoint.is_file():
        args += ["--ckpt_path", "last"]  # an interrupted run resumes
    started = time.time()
    result = train.run(args)
    summary = {
        "metrics": result.metrics, "best_checkpoint": str(result.best_checkpoint) if result.best_checkpoint else None,
        "report": str(result.report) if result.report else None, "best_epoch": result.best_epoch,
        "seconds": round(time.time() - started, 1), "args": args,
    }
    write_json_atomic(RunLayout(step_dir).result, summary)
    return summary




def write_csv(rows: list[dict], path: Path) -> None:
    """Rows as CSV, columns in order of first appearance."""
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())


def mean_sd(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return float("nan"), float("nan")
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def cell(values: list[float]) -> str:
    mean, sd = mean_sd(values)
    if math.isnan(mean):
        return "-"
    return f"{mean:.3f}" + (f" ± {sd:.3f}" if len(values) > 1 else "")


