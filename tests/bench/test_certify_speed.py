"""bench/certify_speed.py: the certification row of `python -m bench all` (smoke settings), its goal direction, equal
work in both variants, and bad settings ending in one `error:` line."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

from bench import certify_speed
from bench.__main__ import FIGURES, run_all

REPO = Path(__file__).resolve().parents[2]


def test_bench_all_gains_the_certification_row(tmp_path):
    assert "certify" in FIGURES
    (row,) = run_all(["certify"], root=str(tmp_path), verify_md5=False, quick=False, smoke=True, workdir=tmp_path,
                     log=lambda line: None)
    assert not row.get("status"), row  # measured, not a failed benchmark
    assert row["benchmark"] == "certify" and row["name"] == certify_speed.NAME and row["goal"] == ">= 0.9x"
    assert row["ratio"] > 0 and row["range"][0] <= row["ratio"] <= row["range"][1] and isinstance(row["met"], bool)
    assert set(row["details"]["seconds_per_image_median"]) == {"certify", "plain"}
    assert "n0=2, n=10" in row["details"]["settings"]


def test_the_row_is_met_only_at_0_9_or_above():
    result = {"arch": "small_cnn", "size": 28, "images": 2, "n0": 2, "n": 10, "sigma": 0.25, "batch_size": 8,
              "device": "cpu", "clock": "process CPU, 1 thread",
              "seconds_per_image": {v: {"median": 1.0} for v in certify_speed.VARIANTS}}
    assert certify_speed.rows({**result, "ratios": [0.95, 0.92, 1.0]})[0]["met"] is True
    assert certify_speed.rows({**result, "ratios": [0.85, 0.8, 0.95]})[0]["met"] is False


class Counting(nn.Module):
    def __init__(self):
        super().__init__()
        self.seen = 0

    def forward(self, x):
        self.seen += len(x)
        return x.flatten(1)[:, :2]


def test_both_variants_push_the_same_noisy_images_through_the_model():
    args = certify_speed.parse_args(["--n0", "5", "--n", "20", "--batch-size", "7", "--device", "cpu"])
    x, seen = torch.rand(3, 1, 4, 4), {}
    for name in certify_speed.VARIANTS:
        model = Counting()
        certify_speed.variants(model, x, args)[name]()
        seen[name] = model.seen
    assert seen == {"certify": 3 * 25, "plain": 3 * 25}


def test_bad_settings_end_in_one_error_line():
    result = subprocess.run([sys.executable, "-m", "bench.certify_speed", "--n0", "100", "--n", "10"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "n0" in lines[0], result.stderr
