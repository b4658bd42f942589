"""`train.py test --ckpt_path P` with a checkpoint that cannot be this run's: one `error:` line before testing."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_train(*args, timeout=300):
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "train.py", *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Synthetic BreastMNIST and PneumoniaMNIST files; an ERM and a PGDAT checkpoint trained (1 epoch) on
    BreastMNIST, a 5-class ERM checkpoint saved without a DataModule, a text file and a truncated checkpoint."""
    import lightning as L
    import torch

    from datamodules.medmnist import MedMNISTDataModule
    from datamodules.synthetic import write_synthetic_npz
    from evaluation.checkpoints import CLASS_KEY
    from lightning_modules.adversarial import PGDAT
    from lightning_modules.erm import ERM

    tmp = tmp_path_factory.mktemp("train_checkpoints")
    for flag in ("breastmnist", "pneumoniamnist"):
        write_synthetic_npz(tmp / "data", flag, n_train=16, n_val=8, n_test=8)
    dm = MedMNISTDataModule("breastmnist", root=str(tmp / "data"), verify_md5=False, batch_size=8)
    for name, model in (("erm", ERM()), ("pgdat", PGDAT(steps=1))):
        trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, inference_mode=False, default_root_dir=str(tmp))
        trainer.fit(model, datamodule=dm)
        trainer.save_checkpoint(tmp / f"{name}.ckpt")
    five = ERM(num_classes=5, task="multiclass")
    torch.save({"state_dict": five.state_dict(), "hyper_parameters": dict(five.hparams),
                CLASS_KEY: "lightning_modules.erm.ERM"}, tmp / "five_classes.ckpt")
    (tmp / "notes.ckpt").write_text("these are notes, not weights\n")
    data = (tmp / "erm.ckpt").read_bytes()
    (tmp / "truncated.ckpt").write_bytes(data[: len(data) // 3])
    return tmp


def test_args(root: Path, out: Path, ckpt: Path, flag: str = "breastmnist") -> list:
    return ["test", "--config", "configs/erm.yaml", "--data.flag", flag, "--data.root", root,
            "--data.verify_md5", "false", "--trainer.default_root_dir", out, "--trainer.enable_progress_bar", "false",
            "--trainer.callbacks.init_args.epsilons", "[]", "--trainer.callbacks.init_args.autoattack", "false",
            "--trainer.callbacks.init_args.corruption_report", "false", "--ckpt_path", ckpt]


test_args.__test__ = False  # a helper, not a test


CASES = [
    ("missing.ckpt", "breastmnist", "missing.ckpt not found"),
    ("notes.ckpt", "breastmnist", "notes.ckpt is not a readable checkpoint"),
    ("truncated.ckpt", "breastmnist", "truncated.ckpt is not a readable checkpoint"),
    ("erm.ckpt", "pneumoniamnist", "dataset breastmnist (the run's: pneumoniamnist)"),
    ("five_classes.ckpt", "breastmnist", "classes 5 (the run's: 2)"),
    ("pgdat.ckpt", "breastmnist",
     "model class lightning_modules.adversarial.PGDAT (the run's: lightning_modules.erm.ERM)"),
]


@pytest.mark.parametrize("name, flag, message", CASES)
def test_a_checkpoint_that_cannot_be_this_runs_is_one_error_line(checkpoints, tmp_path, capsys, monkeypatch, name,
                                                                 flag, message):
    """train.main in this process (a subprocess per case would mostly time Python's start-up; one runs below)."""
    import train

    monkeypatch.setattr(sys, "argv", ["train.py"])  # LightningCLI warns about pytest's own arguments

    with pytest.raises(SystemExit) as exit_info:
        train.main([str(a) for a in test_args(checkpoints / "data", tmp_path / "run", checkpoints / name, flag)])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert lines[-1].startswith("error: ") and message in lines[-1], captured.err[-2000:]
    # refused before anything was built: no run folder, no restored checkpoint, no test loop
    assert not (tmp_path / "run").exists() and "Restoring states" not in captured.out + captured.err


def test_the_command_line_ends_in_the_error_line(checkpoints, tmp_path):
    result = run_train(*test_args(checkpoints / "data", tmp_path / "run", checkpoints / "truncated.ckpt"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ") and "truncated.ckpt" in result.stderr


@pytest.mark.slow
def test_the_right_checkpoint_passes_the_checks(checkpoints, tmp_path):
    result = run_train(*test_args(checkpoints / "data", tmp_path / "run", checkpoints / "erm.ckpt"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "test/clean_bacc" in result.stdout
