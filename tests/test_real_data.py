"""The README's headline runs on the real PneumoniaMNIST file (slow: minutes each; `pytest -m slow`)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _fit(config, root, out, *extra):
    args = [sys.executable, "train.py", "fit", "--config", f"configs/{config}.yaml", "--data.root", str(root),
            "--trainer.default_root_dir", str(out), "--trainer.enable_progress_bar", "false",
            "--trainer.callbacks.init_args.corruption_report", "false", *extra]
    result = subprocess.run(args, cwd=REPO, capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "offline"})
    assert result.returncode == 0, result.stderr[-3000:]
    (report,) = (out / "checkpoints").glob("best-*.robustness.json")
    return json.loads(report.read_text())


def test_erm_reaches_080_test_bacc_and_pgd_breaks_it(real_root, tmp_path):
    report = _fit("erm", real_root, tmp_path / "erm")
    assert report["clean"]["bacc"] >= 0.80
    assert report["pgd"]["4_255"]["bacc"] <= report["clean"]["bacc"] - 0.2


def test_pgd_at_holds_065_under_pgd_at_4_255(real_root, tmp_path):
    report = _fit("pgd_at", real_root, tmp_path / "pgd_at", "--trainer.max_epochs", "10",
                  "--model.init_args.steps", "5")
    assert report["pgd"]["4_255"]["bacc"] >= 0.65
