"""Run reports: package versions and atomic JSON writes, so a crash never leaves half a report."""
from __future__ import annotations

import json
import os
import tempfile
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


def write_json_atomic(path: str | os.PathLike, data) -> Path:
    """Write JSON to a temporary file beside `path`, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2, sort_keys=False, default=str)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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
