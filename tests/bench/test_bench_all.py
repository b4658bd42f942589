"""`python -m bench all`: it runs, writes bench.json / bench.md with one entry per figure, refuses bad input in one
line; and the fast paths it calls for (fp32 attack loss under autocast, channels_last / compile switches)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


def bench(*args, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    return subprocess.run([sys.executable, "-m", "bench", *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.mark.slow
def test_bench_all_smoke_writes_every_requested_figure(real_root, tmp_path):
    result = bench("all", "--smoke", "--only", "data,overhead,gpu", "--root", real_root, "--out", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["mode"] == "smoke"
    assert {"cpu", "cores", "torch"} <= set(data["machine"])
    figures = data["figures"]
    for row in figures:
        assert {"name", "ratio", "range", "goal", "met"} <= set(row), row
    measured = [r for r in figures if r["benchmark"] in ("data", "overhead")]
    names = [r["name"] for r in measured]
    assert any("data path" in n for n in names)
    assert any("ERM" in n for n in names) and any("PGD-AT" in n for n in names)
    for row in measured:
        assert row["ratio"] > 0 and row["range"][0] <= row["ratio"] <= row["range"][1]
        assert isinstance(row["met"], bool)
    gpu_rows = [r for r in figures if r["benchmark"] == "gpu"]
    assert gpu_rows
    if not torch.cuda.is_available():
        assert all(r["status"] == "no GPU" and r["met"] is None and r["ratio"] is None for r in gpu_rows)
    markdown = (tmp_path / "bench.md").read_text()
    assert all(r["name"] in markdown for r in figures)
    assert "figure" in result.stdout and "met" in result.stdout


def test_bench_all_rejects_unknown_figure_in_one_line(tmp_path):
    # an existing --root, so that the test does not depend on ../shared beside the clone
    result = bench("all", "--only", "data,nonsense", "--root", tmp_path, "--out", tmp_path, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("error: ")
    assert "nonsense" in result.stderr


def test_figure_goal_direction():
    from bench.common import figure

    faster = figure("x", [1.2, 0.9, 1.0], 0.95)
    assert faster["ratio"] == 1.0 and faster["range"] == [0.9, 1.2] and faster["met"] is True
    assert figure("x", [0.5, 0.6], 0.95)["met"] is False
    assert figure("share", [0.08, 0.12, 0.09], 0.10, higher_is_better=False)["met"] is True
    assert figure("share", [0.2], 0.10, higher_is_better=False)["met"] is False


def test_attack_loss_stays_fp32_under_autocast():
    from attacks.gradient import PGD

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    x, y = torch.rand(4, 3, 2, 2), torch.tensor([0, 1, 2, 1])
    attack = PGD(model, 8 / 255, steps=2)
    bf16_logits = model(x).to(torch.bfloat16)
    assert attack._objective(bf16_logits, y, None).dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x_adv = attack(x, y)
    assert x_adv.dtype == torch.float32
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6 and 0 <= x_adv.min() and x_adv.max() <= 1


def test_erm_fast_path_switches_keep_checkpoint_keys():
    from lightning_modules.erm import ERM

    plain, fast = ERM(), ERM(channels_last=True, compile=True)
    fast.configure_model()
    fast.configure_model()  # idempotent: Lightning may call it for fit and test
    def wide_conv(module):  # with one input channel both memory formats coincide
        return next(m for m in module.model.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1)

    assert wide_conv(fast).weight.is_contiguous(memory_format=torch.channels_last)
    assert not wide_conv(plain).weight.is_contiguous(memory_format=torch.channels_last)
    assert "forward" in vars(fast.model) and "forward" not in vars(plain.model)
    assert list(fast.state_dict()) == list(plain.state_dict())
