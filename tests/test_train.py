"""train.py end to end, as a user runs it: fit, test, resume, and one-line errors."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_train(*args, timeout=300):
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "train.py", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env
    )


def fit_args(root, out, *extra, full_report=False):
    return [
        "fit", "--config", "configs/erm.yaml", "--data.flag", "breastmnist", "--data.root", str(root),
        "--data.verify_md5", "false", "--trainer.default_root_dir", str(out), "--trainer.enable_progress_bar",
        "false", "--trainer.enable_model_summary", "false",
        # keep the robustness callback cheap and its MedMNIST-C cache inside the test's folder
        "--trainer.callbacks.init_args.epsilons", "[4/255]",
        "--trainer.callbacks.init_args.test_steps", "5",
        "--trainer.callbacks.init_args.autoattack", str(full_report).lower(),
        "--trainer.callbacks.init_args.corruption_report", str(full_report).lower(),
        "--trainer.callbacks.init_args.autoattack_samples", "16",
        "--trainer.callbacks.init_args.corruptions", "[brightness_up]",
        "--trainer.callbacks.init_args.corruption_val_samples", "16",
        "--trainer.callbacks.init_args.corruption_cache", str(Path(out) / "medmnist-c"), *extra,
    ]


def logged_rows(out):
    rows = []
    for path in sorted((Path(out) / "csv").glob("version_*/metrics.csv")):
        with open(path) as handle:
            rows += list(csv.DictReader(handle))
    return rows


def test_fit_logs_stable_keys_checkpoints_and_tests(synthetic_root, tmp_path):
    root = synthetic_root("breastmnist", n_train=64, n_val=32, n_test=32)
    out = tmp_path / "run"
    result = run_train(*fit_args(root, out, "--trainer.max_epochs", "2", "--data.batch_size", "32", full_report=True))
    assert result.returncode == 0, result.stderr[-2000:]
    assert (out / "checkpoints" / "last.ckpt").exists()
    assert list((out / "checkpoints").glob("best-*.ckpt"))
    keys = set().union(*(row.keys() for row in logged_rows(out)))
    assert {"train/loss", "val/clean_bacc", "val/clean_acc", "val/clean_auroc", "test/clean_bacc",
            "val/adv_bacc@4_255", "val/corr_bacc", "test/aa_bacc@4_255", "test/corr_bacc"} <= keys
    (report,) = (out / "checkpoints").glob("best-*.robustness.json")
    assert json.loads(report.read_text())["corruptions"]["protocol"] == "upsample224-corrupt-box"


def test_test_subcommand_scores_a_checkpoint(synthetic_root, tmp_path):
    root = synthetic_root("breastmnist", n_train=32, n_val=16, n_test=16)
    out = tmp_path / "run"
    assert run_train(*fit_args(root, out, "--trainer.max_epochs", "1", "--test_after_fit", "false")).returncode == 0
    args = fit_args(root, out)
    args[0] = "test"
    result = run_train(*args, "--ckpt_path", str(out / "checkpoints" / "last.ckpt"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "test/clean_bacc" in result.stdout


def test_print_config_shows_overrides_and_accepts_any_key(tmp_path):
    result = run_train("fit", "--config", "configs/erm.yaml", "--data.flag", "dermamnist", "--model.init_args.lr",
                       "0.01", "--print_config")
    assert result.returncode == 0, result.stderr
    assert "flag: dermamnist" in result.stdout and "lr: 0.01" in result.stdout and "seed_everything: 0" in result.stdout


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--data.flag", "nosuchmnist"], "unknown MedMNIST flag 'nosuchmnist'"),
        (["--data.size", "32"], "unknown MedMNIST size 32"),
        (["--model.init_args.arch", "vgg"], "unknown architecture 'vgg'"),
    ],
)
def test_bad_config_is_one_line_and_nonzero(tmp_path, extra, message):
    result = run_train("fit", "--config", "configs/erm.yaml", "--trainer.default_root_dir", str(tmp_path), *extra)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"error: {result.stderr.split('error: ', 1)[1].strip()}"
    assert message in result.stderr and "Traceback" not in result.stderr


def test_truncated_and_wrong_md5_files_are_one_line_errors(real_root, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "breastmnist.npz").write_bytes((real_root / "breastmnist.npz").read_bytes()[:20000])
    base = ["fit", "--config", "configs/erm.yaml", "--data.flag", "breastmnist", "--data.root", str(data),
            "--trainer.default_root_dir", str(tmp_path / "run")]
    result = run_train(*base)
    assert result.returncode == 2 and "expected 750601b1f35ba3300ea97c75c52ff8f6" in result.stderr
    assert "Traceback" not in result.stderr
    result = run_train(*base, "--data.verify_md5", "false")
    assert result.returncode == 2 and "not a readable npz file" in result.stderr


def test_killed_run_resumes_from_last_checkpoint(synthetic_root, tmp_path):
    root = synthetic_root("breastmnist", n_train=64, n_val=16, n_test=16)
    out = tmp_path / "run"
    env = {**os.environ, "WANDB_MODE": "offline"}
    proc = subprocess.Popen(
        [sys.executable, "train.py", *fit_args(root, out, "--trainer.max_epochs", "1000", "--data.batch_size", "16")],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    last = out / "checkpoints" / "last.ckpt"
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not (last.exists() and len(logged_rows(out)) >= 4):
            time.sleep(0.5)
        assert last.exists(), "no last.ckpt before the kill"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    import torch

    saved_epoch = torch.load(last, map_location="cpu", weights_only=False)["epoch"]
    result = run_train(*fit_args(root, out, "--trainer.max_epochs", str(saved_epoch + 2), "--data.batch_size", "16",
                                 "--ckpt_path", "last", "--test_after_fit", "false"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"Restoring states from the checkpoint path at {last}" in result.stdout + result.stderr
    newest = sorted((out / "csv").glob("version_*"))[-1] / "metrics.csv"
    epochs = {int(row["epoch"]) for row in csv.DictReader(open(newest)) if row.get("epoch")}
    # `epoch` in a checkpoint is the last finished epoch: the resumed run trains only the next one
    assert epochs == {saved_epoch + 1}, (saved_epoch, epochs)
