"""Run `python -m sweeps` as a user does, from the repository root, one thread per process."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def sweeps(*args, timeout=600, env=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "MEDROBUST_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "sweeps", *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env)
