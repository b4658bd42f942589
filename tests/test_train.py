"""train.py end to end, as a user runs it: fit, test, resume, and one-line errors."""
import copy
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

import train

REPO = Path(__file__).resolve().parents[1]


def run_train(*args, timeout=300):
    """`python train.py ARGS` in a new process group; on a timeout the whole group (workers too) is killed."""
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "train.py", *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def main_in_process(args, capsys) -> tuple[int, str, str]:
    """train.main(args) in this process (no interpreter start-up): (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_:
        train.main(list(args))
        raise SystemExit(0)
    out, err = capsys.readouterr()
    return exit_.value.code or 0, out, err


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
    train.run(fit_args(root, out, "--trainer.max_epochs", "1", "--test_after_fit", "false"))
    args = fit_args(root, out)
    args[0] = "test"
    result = run_train(*args, "--ckpt_path", str(out / "checkpoints" / "last.ckpt"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "test/clean_bacc" in result.stdout


def test_print_config_shows_overrides_and_accepts_any_key(capsys):
    code, out, err = main_in_process(["fit", "--config", "configs/erm.yaml", "--data.flag", "dermamnist",
                                      "--model.init_args.lr", "0.01", "--print_config"], capsys)
    assert code == 0, err
    assert "flag: dermamnist" in out and "lr: 0.01" in out and "seed_everything: 0" in out


def _assert_one_error_line(code, err, message):
    assert code == 2
    assert err.strip().splitlines()[-1] == f"error: {err.split('error: ', 1)[1].strip()}"
    assert message in err and "Traceback" not in err


def test_bad_config_from_the_command_line_is_one_line_and_nonzero(tmp_path):
    result = run_train("fit", "--config", "configs/erm.yaml", "--trainer.default_root_dir", str(tmp_path),
                       "--data.flag", "nosuchmnist")
    _assert_one_error_line(result.returncode, result.stderr, "unknown MedMNIST flag 'nosuchmnist'")


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--data.flag", "nosuchmnist"], "unknown MedMNIST flag 'nosuchmnist'"),
        (["--data.size", "32"], "unknown MedMNIST size 32"),
        (["--model.init_args.arch", "vgg"], "unknown architecture 'vgg'"),
    ],
)
def test_bad_config_is_one_line_and_nonzero(tmp_path, capsys, extra, message):
    args = ["fit", "--config", "configs/erm.yaml", "--trainer.default_root_dir", str(tmp_path), *extra]
    _assert_one_error_line(*main_in_process(args, capsys)[::2], message)


def test_truncated_and_wrong_md5_files_are_one_line_errors(real_root, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "breastmnist.npz").write_bytes((real_root / "breastmnist.npz").read_bytes()[:20000])
    base = ["fit", "--config", "configs/erm.yaml", "--data.flag", "breastmnist", "--data.root", str(data),
            "--trainer.default_root_dir", str(tmp_path / "run")]
    _assert_one_error_line(*main_in_process(base, capsys)[::2], "expected 750601b1f35ba3300ea97c75c52ff8f6")
    _assert_one_error_line(*main_in_process([*base, "--data.verify_md5", "false"], capsys)[::2],
                           "not a readable npz file")


def test_killed_run_resumes_from_last_checkpoint(synthetic_root, tmp_path):
    root = synthetic_root("breastmnist", n_train=64, n_val=16, n_test=16)
    out = tmp_path / "run"
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
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
    saved_epoch = torch.load(last, map_location="cpu", weights_only=False)["epoch"]
    train.run(fit_args(root, out, "--trainer.max_epochs", str(saved_epoch + 2), "--data.batch_size", "16",
                       "--ckpt_path", "last", "--test_after_fit", "false"))
    newest = sorted((out / "csv").glob("version_*"))[-1] / "metrics.csv"
    epochs = {int(row["epoch"]) for row in csv.DictReader(open(newest)) if row.get("epoch")}
    # `epoch` in a checkpoint is the last finished epoch: the resumed run trains only the next one
    assert epochs == {saved_epoch + 1}, (saved_epoch, epochs)


class _StateAtTrainStart(Callback):
    """What the trainer holds when training starts (after a resume: what it restored)."""

    def on_train_start(self, trainer, module):
        self.global_step = trainer.global_step
        self.weights = copy.deepcopy(module.state_dict())
        self.optimizer = copy.deepcopy(trainer.optimizers[0].state_dict())


def test_resumed_run_continues_from_the_saved_weights_optimizer_and_step(synthetic_root, tmp_path):
    root = synthetic_root("breastmnist", n_train=64, n_val=16, n_test=16)
    out = tmp_path / "run"
    args = fit_args(root, out, "--data.batch_size", "16", "--test_after_fit", "false",
                    "--trainer.callbacks.init_args.corruption_epoch", "false")
    train.run([*args, "--trainer.max_epochs", "1"])
    last = out / "checkpoints" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=False)
    steps_per_epoch = saved["global_step"]
    assert steps_per_epoch == 4  # 64 images in batches of 16

    started = _StateAtTrainStart()
    train.run([*args, "--trainer.max_epochs", "2", "--ckpt_path", "last"], callbacks=[started])
    assert started.global_step == steps_per_epoch
    assert started.weights.keys() == saved["state_dict"].keys()
    for name, value in started.weights.items():
        assert torch.equal(value, saved["state_dict"][name]), name
    saved_adam = saved["optimizer_states"][0]["state"]
    assert started.optimizer["state"].keys() == saved_adam.keys()
    for index, state in started.optimizer["state"].items():  # Adam's step counts and moments, not fresh ones
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(state[key], saved_adam[index][key]), (index, key)

    resumed = torch.load(last, map_location="cpu", weights_only=False)
    assert resumed["global_step"] == 2 * steps_per_epoch  # one more epoch on top of the saved one, not two
    optimizer_steps = {float(state["step"]) for state in resumed["optimizer_states"][0]["state"].values()}
    assert optimizer_steps == {2.0 * steps_per_epoch}
    assert resumed["lr_schedulers"][0]["last_epoch"] == saved["lr_schedulers"][0]["last_epoch"] + 1


@pytest.mark.parametrize("extra, message", [
    (["--model.init_args.bogus", "1"], "Option 'bogus' is not accepted"),
    (["--trainer.max_epochs", "abc"], 'Parser key "trainer.max_epochs"'),
])
def test_argument_errors_are_one_line_without_the_usage(tmp_path, capsys, extra, message):
    args = ["fit", "--config", "configs/erm.yaml", "--trainer.default_root_dir", str(tmp_path), *extra]
    _assert_one_error_line(*main_in_process(args, capsys)[::2], message)


def test_a_broken_yaml_config_is_one_line(tmp_path, capsys):
    config = tmp_path / "broken.yaml"
    config.write_text("trainer: [\n")
    _assert_one_error_line(*main_in_process(["fit", "--config", str(config)], capsys)[::2], "Problems parsing config")
