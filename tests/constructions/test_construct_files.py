"""Constructed npz files: MedMNIST format, sidecar, resuming, training on them, and one-line errors."""
import hashlib
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import constructions.builder as build_module
from constructions import Settings, construct_file, parts_path, sidecar_path
from constructions.cli import main
from core.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
FAST = Settings(epsilon=2.0, step=0.5, steps=3, scale=False, batch_size=16)


def _construct(tiny, flag, out, kind="d_rand", settings=FAST, **kwargs):
    root, ckpt = tiny(flag)
    return construct_file(kind, ckpt, flag, out, root=str(root), settings=settings, verify_md5=False,
                          device="cpu", progress=False, **kwargs)


@pytest.mark.parametrize("flag,kind", [("breastmnist", "d_det"), ("bloodmnist", "d_rand"), ("bloodmnist", "d_nr")])
def test_output_follows_the_medmnist_format_with_val_and_test_untouched(tiny, tmp_path, flag, kind):
    root, ckpt = tiny(flag)
    out = tmp_path / f"{kind}.npz"
    sidecar = _construct(tiny, flag, out, kind)
    with np.load(out) as made, np.load(root / f"{flag}.npz") as official:
        assert sorted(made.files) == sorted(official.files)
        for key in ("val_images", "val_labels", "test_images", "test_labels"):
            assert made[key].dtype == official[key].dtype and np.array_equal(made[key], official[key])
        images, labels = made["train_images"], made["train_labels"]
        original = official["train_images"]
        assert images.dtype == np.float32 and images.shape == original.shape  # N x H x W or N x H x W x 3
        assert images.min() >= 0 and images.max() <= 1 and not np.array_equal(images, original / np.float32(255))
        assert labels.shape == (64, 1) and labels.dtype == official["train_labels"].dtype
        if kind == "d_det":
            assert np.array_equal(labels, 1 - official["train_labels"])
        if kind == "d_nr":
            assert np.array_equal(labels, official["train_labels"])
    assert sidecar == json.loads(sidecar_path(out).read_text())
    assert sidecar["source"]["sha256"] == hashlib.sha256(Path(ckpt).read_bytes()).hexdigest()
    assert sidecar["kind"] == kind and sidecar["seed"] == 0 and sidecar["counts"]["train"] == 64
    assert sum(sidecar["counts"]["new_labels"]) == 64 and 0 <= sidecar["assigned_share"] <= 1
    assert sidecar["settings"]["steps"] == 3 and sidecar["versions"]["torch"] != "not installed"
    assert not parts_path(out).exists()  # the kept batches go once the npz is written


def test_resume_after_interruption_gives_identical_output(tiny, tmp_path, monkeypatch):
    whole = tmp_path / "whole.npz"
    _construct(tiny, "breastmnist", whole, "d_nr")
    out = tmp_path / "resumed.npz"
    original, calls = build_module._construct_batch, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(build_module, "_construct_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _construct(tiny, "breastmnist", out, "d_nr")
    assert not out.exists() and not sidecar_path(out).exists()
    assert sorted(p.name for p in parts_path(out).glob("batch_*.npz")) == ["batch_000000.npz", "batch_000001.npz"]
    assert not list(parts_path(out).glob(".*tmp"))
    calls.clear()
    sidecar = _construct(tiny, "breastmnist", out, "d_nr")
    assert len(calls) == 2 and sidecar["build"]["batches_reused"] == 2  # only the two missing batches ran
    with np.load(whole) as a, np.load(out) as b:
        for key in a.files:
            assert np.array_equal(a[key], b[key]), key


def test_kept_batches_of_another_build_are_refused(tiny, tmp_path, monkeypatch):
    out = tmp_path / "x.npz"
    monkeypatch.setattr(build_module, "_construct_batch", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        _construct(tiny, "breastmnist", out)
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="holds batches of a different build"):
        _construct(tiny, "breastmnist", out, seed=1)
    _construct(tiny, "breastmnist", out, seed=1, overwrite=True)
    assert out.exists()


def test_train_py_trains_on_the_constructed_set(tiny, tmp_path):
    import train

    root, _ = tiny("breastmnist")
    out = tmp_path / "d_det.npz"
    _construct(tiny, "breastmnist", out, "d_det")
    result = train.run([
        "fit", "--config", "configs/erm.yaml", "--data.flag", "breastmnist", "--data.root", str(root),
        "--data.train_npz", str(out), "--data.verify_md5", "false", "--data.batch_size", "32",
        "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(tmp_path / "run"),
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.callbacks.init_args.epsilons", "[4/255]", "--trainer.callbacks.init_args.test_steps", "2",
        "--trainer.callbacks.init_args.val_samples", "16", "--trainer.callbacks.init_args.autoattack", "false",
        "--trainer.callbacks.init_args.corruption_report", "false",
        "--trainer.callbacks.init_args.corruptions", "[brightness_up]",
        "--trainer.callbacks.init_args.corruption_val_samples", "8",
        "--trainer.callbacks.init_args.corruption_cache", str(tmp_path / "medmnist-c"),
    ])
    assert result.best_checkpoint is not None and result.best_checkpoint.exists()
    assert "test/clean_bacc" in result.metrics and "val/clean_bacc" in result.metrics


def test_d_r_warns_unless_the_source_is_l2_robust_and_d_nr_unless_standard(tiny, tiny_l2_robust, tmp_path):
    root, robust = tiny_l2_robust
    with pytest.warns(UserWarning, match="d_r expects an L2 adversarially trained source, but erm.ckpt is ERM"):
        _construct(tiny, "breastmnist", tmp_path / "r.npz", "d_r", limit=8)
    kwargs = dict(root=str(root), settings=FAST, verify_md5=False, device="cpu", progress=False, limit=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        sidecar = construct_file("d_r", robust, "breastmnist", tmp_path / "r2.npz", **kwargs)
    assert sidecar["source"]["training"] == "PGDAT l2 0.5"
    with pytest.warns(UserWarning, match="d_nr expects a standard"):
        construct_file("d_nr", robust, "breastmnist", tmp_path / "nr.npz", **kwargs)


def _cli(capsys, *argv):
    try:
        code = main(list(argv))
    except SystemExit as stop:
        code = stop.code
    return code, capsys.readouterr()


def _args(tiny, flag, out, *extra, ckpt_flag=None):
    root, _ = tiny(flag)
    _, ckpt = tiny(ckpt_flag or flag)
    return ["construct", "--kind", "d_rand", "--ckpt", str(ckpt), "--flag", flag, "--root", str(root),
            "--out", str(out), "--steps", "2", "--limit", "16", "--no-verify-md5", "--no-progress",
            "--device", "cpu", *extra]


@pytest.mark.parametrize("change,message", [
    (["--kind", "d_foo"], "unknown construction kind 'd_foo'"),
    (["--epsilon", "0"], "epsilon must be a positive number"),
    (["--epsilon", "-0.5"], "epsilon must be a positive number"),
    (["--epsilon", "big"], "epsilon must be a positive number, got 'big'"),
    (["--step", "nan"], "step must be a positive number"),
    (["--batch-size", "x"], "argument --batch-size: invalid int value"),
    (["--steps", "0"], "steps must be a positive integer"),
    (["--ckpt-flag"], "does not fit this run: dataset bloodmnist (the run's: breastmnist)"),
    (["--ckpt", "nope.ckpt"], "checkpoint nope.ckpt not found"),
    (["--flag", "chestmnist"], "chestmnist is multi-label"),
    (["--size", "64"], "was trained at 28 px, not 64 px"),
])
def test_bad_input_is_one_error_line_and_exit_2(tiny, tmp_path, capsys, change, message):
    args = _args(tiny, "breastmnist", tmp_path / "x.npz", ckpt_flag="bloodmnist" if "--ckpt-flag" in change else None)
    if change[0] != "--ckpt-flag":
        args += change
    code, captured = _cli(capsys, *args)
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], captured.err
    assert not list(tmp_path.glob("x.*"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_cuda_without_a_gpu_is_one_error_line(tiny, tmp_path, capsys):
    code, captured = _cli(capsys, *_args(tiny, "breastmnist", tmp_path / "x.npz", "--device", "cuda"))
    assert code == 2 and captured.err.strip() == "error: device cuda asked for, but no CUDA GPU is available"


def test_existing_output_is_refused_unless_overwrite(tiny, tmp_path, capsys):
    out = tmp_path / "x.npz"
    code, captured = _cli(capsys, *_args(tiny, "breastmnist", out))
    assert code == 0 and "assigned to their new label" in captured.out
    before = out.read_bytes()
    code, captured = _cli(capsys, *_args(tiny, "breastmnist", out, "--seed", "3"))
    assert code == 2 and captured.err.strip() == f"error: {out} exists: pass --overwrite to replace it"
    assert out.read_bytes() == before
    code, _ = _cli(capsys, *_args(tiny, "breastmnist", out, "--seed", "3", "--overwrite"))
    assert code == 0 and out.read_bytes() != before and json.loads(sidecar_path(out).read_text())["seed"] == 3


@pytest.mark.slow  # a fresh interpreter importing torch and lightning: 10-30 s on a shared CPU
def test_module_entry_point_has_help():
    result = subprocess.run([sys.executable, "-m", "constructions", "construct", "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "--kind" in result.stdout and "--overwrite" in result.stdout
