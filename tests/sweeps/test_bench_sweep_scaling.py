"""bench/sweep_scaling.py: one-line errors, and a tiny run (1 and 2 workers on the synthetic sweep) with its JSON."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sweep_helpers import REPO


def bench(*args, timeout=900):
    return subprocess.run([sys.executable, "bench/sweep_scaling.py", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def test_bad_arguments_are_one_line_errors(tmp_path):
    result = bench("--sweep", tmp_path / "missing.yaml")
    assert result.returncode == 2 and result.stderr.strip() == f"error: sweep {tmp_path / 'missing.yaml'} not found"
    result = bench("--workers", "0")
    assert result.returncode == 2 and result.stderr.startswith("error: ")
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_tiny_scaling_run_writes_its_ratio(tiny_sweep, tmp_path):
    path = tiny_sweep(epsilon=["2/255", "4/255"])
    out = tmp_path / "scaling.json"
    result = bench("--sweep", path, "--full", "--out", tmp_path / "studies", "--json", out)
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads(out.read_text())
    assert set(data["seconds"]) == {"1", "2"} and data["ratios"]["1/2"]["median"] > 0
    assert "time ratio 1/2 workers" in result.stdout
