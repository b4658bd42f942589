"""RobustnessCallback under DDP: rank shards are disjoint and complete, and two CPU processes (gloo) give
exactly the single-process clean balanced accuracy."""
import copy
import csv
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from callbacks.robustness import RobustnessCallback
from evaluation.evaluators import EvaluationRun, Scorer
from datamodules.tensors import to_unit_range
from lightning_modules.models import classifier_layer

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("n", [0, 1, 7, 33, 64])
@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 8])
def test_shards_are_disjoint_and_complete(n, world_size):
    indices = torch.randperm(100, generator=torch.Generator().manual_seed(n))[:n]  # like fixed_subset's output
    shards = [EvaluationRun(None, None, Scorer(), rank, world_size).shard(indices) for rank in range(world_size)]
    together = torch.cat(shards)
    assert len(together) == n and len(set(together.tolist())) == n  # disjoint: no index in two shards
    assert set(together.tolist()) == set(indices.tolist())  # complete: every index in some shard
    assert max(map(len, shards)) - min(map(len, shards)) <= 1  # balanced, and no padding


def _validate(model, dm, **trainer_kwargs) -> dict[str, float]:
    # 33 of the 64 validation images: the callback's shards are uneven (17 and 16) under two processes
    callback = RobustnessCallback(epsilons=[], val_samples=33, corruption_epoch=False, corruption_report=False)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                        callbacks=[callback], **trainer_kwargs)
    trainer.validate(model, datamodule=dm, verbose=False)
    return {key: float(value) for key, value in trainer.callback_metrics.items()}


def _erring_model(tiny_erm):
    """The tiny ERM with its class-1 logit lowered by the median positive margin on the validation images: it misses
    about half of what it called class 1, so a dropped or doubled shard would move its balanced accuracy."""
    model = copy.deepcopy(tiny_erm.model).eval()
    with torch.no_grad():
        logits = model(to_unit_range(tiny_erm.datamodule.split("val").images))
        margins = logits[:, 1] - logits[:, 0]
        classifier_layer(model.model).bias[1] -= margins[margins > 0].median()
    return model


@pytest.mark.slow  # two spawned processes start torch and Lightning: about 40 s on 2 busy cores
def test_two_process_ddp_gives_exactly_the_single_process_clean_balanced_accuracy(tiny_erm, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    model = _erring_model(tiny_erm)
    single = _validate(model, tiny_erm.datamodule, devices=1)
    ddp = _validate(model, tiny_erm.datamodule, devices=2, strategy="ddp_spawn")
    for key in ("val/clean_bacc@subset", "val/clean_bacc"):  # the callback's 17 + 16 images; Lightning's 32 + 32
        assert 0.55 < single[key] < 0.95, (key, single[key])
        assert ddp[key] == single[key], key


def _metric_keys(out: Path) -> set[str]:
    keys = set()
    for path in (out / "csv").glob("version_*/metrics.csv"):
        with open(path) as handle:
            for row in csv.DictReader(handle):
                keys |= {k for k, v in row.items() if v not in ("", None)}
    return keys


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_logs_the_same_keys_as_one(synthetic_root, tmp_path):
    root = synthetic_root("breastmnist", n_train=64, n_val=32, n_test=32)
    keys = {}
    for name, extra in {"single": [], "ddp": ["--trainer.devices", "2", "--trainer.strategy", "ddp"]}.items():
        out = tmp_path / name
        args = [sys.executable, "train.py", "fit", "--config", "configs/pgd_at.yaml", "--data.flag", "breastmnist",
                "--data.root", str(root), "--data.verify_md5", "false", "--trainer.accelerator", "cpu",
                "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(out), "--data.batch_size", "16",
                "--trainer.enable_progress_bar", "false", "--model.init_args.steps", "2",
                "--trainer.callbacks.init_args.autoattack_samples", "16",
                "--trainer.callbacks.init_args.corruptions", "[brightness_up, contrast_down]",
                "--trainer.callbacks.init_args.corruption_val_samples", "16",
                "--trainer.callbacks.init_args.corruption_report", "false", *extra]
        env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
        result = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        keys[name] = _metric_keys(out)
        assert list((out / "checkpoints").glob("*.robustness.json"))
    assert {"val/adv_bacc@4_255", "test/aa_bacc@4_255", "val/corr_bacc",
            "val/corr_bacc@brightness_up"} <= keys["single"]
    assert keys["ddp"] == keys["single"]
