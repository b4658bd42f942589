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
