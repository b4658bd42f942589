"""What a result record stamps on itself: package versions and the time (evaluation.record owns the record)."""
from __future__ import annotations

from datetime import datetime, timezone
from importlib import metadata

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
