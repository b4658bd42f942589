"""Predictions cached beside a checkpoint, in one place: `CKPT_STEM.<what>.pt`, reused only while the checkpoint's
bytes (sha256), what was predicted (the caller's settings and its own version) and this format's version match.

Three callers keep their predictions here: the report's PGD per example (evaluation.runs.test_predictions), the
study measures (studies.measures) and the corruption drops (studies.corruption_drop). Files written before this
owner (keyed by path and mtime) do not match and are recomputed once: the same numbers, from the same checkpoint.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import torch

from core.errors import ConfigError
from core.files import atomic_write, file_digest

CACHE_FORMAT = 1  # the key's layout: {format, what, version, checkpoint_sha256, settings}


class PredictionCache:
    """`PredictionCache(ckpt, "study-measures", settings, version).get(compute)`: the cached mapping when its key
    matches, else `compute()`'s, stored atomically beside the checkpoint with its key under `"settings"`."""

    def __init__(self, checkpoint, what: str, settings: dict, version: int = 1):
        self.checkpoint = Path(checkpoint)
        if not self.checkpoint.is_file():
            raise ConfigError(f"no checkpoint {self.checkpoint} to predict with")
        if not what or "/" in what or "." in what:
            raise ConfigError(f"a prediction cache is named by a plain word, got {what!r}")
        self.what, self.settings, self.version = what, dict(settings), version

    @property
    def path(self) -> Path:
        return self.checkpoint.with_name(f"{self.checkpoint.stem}.{self.what}.pt")

    def key(self) -> dict:
        """What the cached predictions must have been made from (the checkpoint by content, not by path)."""
        return {"format": CACHE_FORMAT, "what": self.what, "version": self.version,
                "checkpoint_sha256": file_digest(self.checkpoint), "settings": self.settings}

    def load(self, key: Optional[dict] = None) -> Optional[dict]:
        """The cached mapping when it was made with this key (None when absent, unreadable or stale)."""
        if not self.path.exists():
            return None
        try:
            cached = torch.load(self.path, weights_only=False)
        except Exception:  # a file from another torch, or damaged: recompute rather than fail
            return None
        key = self.key() if key is None else key
        return cached if isinstance(cached, dict) and cached.get("settings") == key else None

    def get(self, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """The cached mapping, or `compute()`'s stored beside the checkpoint (its `settings` entry is the key)."""
        key = self.key()
        cached = self.load(key)
        if cached is not None:
            return cached
        out = {**compute(), "settings": key}
        with atomic_write(self.path, "wb") as handle:
            torch.save(out, handle)
        return out
