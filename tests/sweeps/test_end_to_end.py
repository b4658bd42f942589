"""Real sweeps on tiny synthetic data, as a user runs them (in the default suite, about two minutes on two
idle cores): `run --workers 2`, `status --json`, `report`, `select` with test-split intervals; and, on SQLite,
a worker SIGKILLed in the middle of real training, whose retry resumes from the trial's last.ckpt. The
pruner and Ctrl-C checks are slow-marked."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evaluation.runs import checkpoint_epoch
from sweeps import study as studies
from sweeps.spec import load_spec

from sweep_helpers import REPO, sweeps


def cli(capsys, *args) -> tuple[int, str, str]:
    """`python -m sweeps ARGS` in this process (status, report and select start no workers)."""
    from sweeps.cli import main

    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_run_status_report_select(tiny_sweep, tmp_path, capsys):
    corruptions = {"trainer.callbacks.init_args.corruption_report": True,  # run builds the MedMNIST-C cache first
                   "trainer.callbacks.init_args.corruptions": ["pixelate"],
                   "trainer.callbacks.init_args.corruption_cache": str(tmp_path / "medmnist-c")}
    path = tiny_sweep(epsilon=[0, "4/255"], seeds=[0], overrides=corruptions)
    result = sweeps("run", path, "--workers", "2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "building the cache" in result.stdout and list((tmp_path / "medmnist-c").rglob("*pixelate*"))
    assert result.stdout.count(" COMPLETE: ") == 2 and "2/2 points done" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr  # nothing failed, so no traceback
    logs = sorted((load_spec(path).study_dir / "workers").glob("worker_*.log"))
    assert len(logs) == 2 and sum("COMPLETE" in log.read_text() for log in logs) >= 1
    for log in logs:  # known third-party noise is filtered (core.quiet)
        assert "litlogger" not in log.read_text() and "LightningCLI's args" not in log.read_text()

    code, out, _ = cli(capsys, "status", path, "--json")
    assert code == 0
    status = json.loads(out)
    assert status["counts"]["done"] == 2 and status["counts"]["trials"] == 2
    for trial in status["trials"]:
        assert trial["state"] == "COMPLETE" and len(trial["values"]) == 2
        assert Path(trial["run_dir"]).name == f"trial_{trial['number']}"
        assert list(Path(trial["run_dir"]).glob("checkpoints/best-*.robustness.json"))
    trials = studies.load(load_spec(path)).trials
    assert all(t.user_attrs["test"]["test/adv_bacc@4_255"] >= 0 and "val/clean_bacc" in t.user_attrs["val"]
               for t in trials)
    assert all("test/corr_bacc" in t.user_attrs["test"] for t in trials)

    out = tmp_path / "report"
    code, text, err = cli(capsys, "report", path, "--out", out)
    assert code == 0, err
    assert "| train epsilon |" in text and (out / "curve.png").stat().st_size > 0 and (out / "pareto.png").exists()
    rows = list(csv.DictReader(open(out / "curve.csv")))
    assert [r["epsilon_label"] for r in rows] == ["0", "4/255"] and [r["seeds"] for r in rows] == ["1", "1"]
    assert {"val/clean_bacc", "test/clean_bacc", "val/adv_bacc@4_255", "test/adv_bacc@4_255"} <= set(rows[0])

    choice_file = tmp_path / "choice.json"
    code, text, err = cli(capsys, "select", path, "--min", "clean_bacc=0", "--maximize", "adv_bacc@4/255",
                          "--bootstrap", "200", "--json", choice_file)
    assert code == 0, err
    assert "chosen training epsilon:" in text and "95% bootstrap" in text
    choice = json.loads(choice_file.read_text())
    for key, ci in choice["test_intervals"].items():
        assert ci["low"] <= ci["value"] <= ci["high"], key
    # the recomputed per-example predictions reproduce the robustness report's test metrics
    for key in ("test/clean_bacc", "test/adv_bacc@4_255"):
        assert choice["test_intervals"][key]["value"] == pytest.approx(choice["test"][key], abs=1e-6), key
    assert Path(choice["checkpoint"]).is_file()
    assert list(Path(choice["checkpoint"]).parent.glob("*.test-predictions.pt"))  # cached for the next select

    code, text, _ = cli(capsys, "select", path, "--min", "clean_bacc=1.01")
    assert code == 1 and "no training epsilon meets the constraints" in text


def test_sigkilled_worker_resumes_its_trial_from_last_ckpt_on_sqlite(tiny_sweep, tmp_path):
    path = tiny_sweep(epsilon=["4/255"], seeds=[0], overrides={"trainer.max_epochs": 4},
                      storage=f"sqlite:///{tmp_path / 'runs' / 'tiny.db'}")
    spec = load_spec(path)
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "MEDROBUST_THREADS": "1"}
    worker = subprocess.Popen([sys.executable, "-m", "sweeps", "worker", str(path)], cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = spec.study_dir / "trial_0" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while time.time() < deadline and worker.poll() is None:
        if last.exists() and (checkpoint_epoch(last) or 0) >= 1:
            break
        time.sleep(0.5)
    assert worker.poll() is None, "the trial finished before it could be killed"
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    assert checkpoint_epoch(last) in (1, 2)

    result = sweeps("run", path)  # the same command again
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    trials = studies.load(spec).trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    retry = trials[1]
    assert retry.system_attrs["failed_trial"] == 0 and retry.user_attrs["resumed_from"] == str(last)
    assert retry.user_attrs["run_dir"] == str(spec.study_dir / "trial_0")
    versions = sorted(p.name for p in (spec.study_dir / "trial_0" / "csv").glob("version_*"))
    assert versions == ["version_0", "version_1"]  # the retry continued the killed run
    from evaluation.runs import logged_epochs

    epochs = logged_epochs(spec.study_dir / "trial_0")
    assert [int(e["epoch"]) for e in epochs if "val/clean_bacc" in e] == list(range(4))
    best = max((e for e in epochs if "val/clean_bacc" in e), key=lambda e: e["val/clean_bacc"])
    assert retry.user_attrs["val"]["val/clean_bacc"] == pytest.approx(best["val/clean_bacc"])
    assert retry.values[0] == pytest.approx(best["val/clean_bacc"])


@pytest.mark.slow
def test_single_objective_sampler_sweep_reports_to_the_pruner(tiny_sweep):
    """optuna-integration's Lightning pruning callback works with lightning 2.6: every epoch's objective
    reaches the trial's intermediate values (what the median pruner compares)."""
    path = tiny_sweep(epsilon={"low": 0, "high": "4/255"}, sampler="tpe", n_trials=2, pruner="median",
                      objectives={"val/adv_bacc@4/255": "maximize"}, overrides={"trainer.max_epochs": 2})
    result = sweeps("run", path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    trials = studies.load(load_spec(path)).trials
    assert len(trials) == 2 and all(t.state.name == "COMPLETE" for t in trials)
    for t in trials:
        assert sorted(t.intermediate_values) == [0, 1]
        assert t.values[0] == pytest.approx(t.user_attrs["val"]["val/adv_bacc@4_255"])


@pytest.mark.slow
def test_ctrl_c_fails_the_running_trial_and_the_next_run_resumes_it(tiny_sweep):
    path = tiny_sweep(epsilon=["4/255"], seeds=[0], overrides={"trainer.max_epochs": 6})
    spec = load_spec(path)
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "MEDROBUST_THREADS": "1"}
    run = subprocess.Popen([sys.executable, "-m", "sweeps", "run", str(path)], cwd=REPO, env=env, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    last = spec.study_dir / "trial_0" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while time.time() < deadline and run.poll() is None and not last.exists():
        time.sleep(0.2)
    assert run.poll() is None, "the trial finished before it could be interrupted"
    run.send_signal(signal.SIGINT)
    out, _ = run.communicate(timeout=300)
    assert run.returncode == 130, out[-3000:]
    trials = studies.load(spec).trials
    assert [t.state.name for t in trials] == ["FAIL"] and trials[0].user_attrs["failure"] == "interrupted"

    result = sweeps("run", path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    trials = studies.load(spec).trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    assert trials[1].user_attrs["resumed_from"] == str(last)
