"""Run reports: package versions, timestamps, and merging a new report into the one already on disk."""
from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

PACKAGES = ("medrobust", "torch", "lightning", "torchmetrics", "numpy", "medmnist", "medmnistc", "pyautoattack")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def timestamp() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def merge_report(path: str | os.PathLike, new: dict) -> dict:
    """`new` on top of the report already at `path` for the same checkpoint, so a later evaluation
    (say, corruptions only) adds to the attacks measured before instead of erasing them."""
    try:
        old = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return new
    if not new.get("checkpoint") or old.get("checkpoint") != new["checkpoint"]:
        return new
    merged = {**old, **new}
    for section in ("pgd", "autoattack"):
        merged[section] = {**old.get(section, {}), **new.get(section, {})}
    epsilons = {label: entry["epsilon"] for label, entry in merged["pgd"].items()}
    merged["threat_model"] = {**new["threat_model"], "epsilons": sorted(epsilons.values()),
                              "epsilon_labels": sorted(epsilons, key=epsilons.get)}
    return merged
