import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest

from callbacks.robustness import RobustnessCallback
from core.errors import ConfigError
from datamodules.medmnist import MedMNISTDataModule
from lightning_modules.erm import ERM

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """An ERM model fitted for a few epochs on synthetic BreastMNIST-format data, with its DataModule."""
    from datamodules.synthetic import write_synthetic_npz

    root = tmp_path_factory.mktemp("data")
    write_synthetic_npz(root, "breastmnist", n_train=256, n_val=64, n_test=64)
    L.seed_everything(0)
    dm = MedMNISTDataModule("breastmnist", root=str(root), verify_md5=False, batch_size=32, augment=False)
    model = ERM(lr=3e-3)
    trainer = L.Trainer(max_epochs=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(model, datamodule=dm)
    return model, dm


def _validate(model, dm, callback):
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[callback])
    trainer.validate(model, datamodule=dm, verbose=False)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


def test_epsilon_zero_equals_clean_and_accuracy_never_rises_with_epsilon(trained):
    model, dm = trained
    epsilons = [0, "2/255", "8/255", "32/255", "64/255"]
    metrics = _validate(model, dm, RobustnessCallback(epsilons=epsilons, val_samples=None, val_steps=10, corruption_epoch=False))
    assert metrics["val/clean_bacc@subset"] > 0.8
    assert metrics["val/adv_bacc@0"] == pytest.approx(metrics["val/clean_bacc@subset"])
    curve = [metrics[f"val/adv_bacc@{e}"] for e in ("0", "2_255", "8_255", "32_255", "64_255")]
    assert all(later <= earlier + 1e-9 for earlier, later in zip(curve, curve[1:])), curve
    assert curve[-1] < curve[0] - 0.3  # a large budget breaks a non-robust model


def test_validation_subset_is_fixed_and_seeded(trained):
    model, dm = trained
    first = _validate(model, dm, RobustnessCallback(epsilons=["8/255"], val_samples=32, seed=3, corruption_epoch=False))
    again = _validate(model, dm, RobustnessCallback(epsilons=["8/255"], val_samples=32, seed=3, corruption_epoch=False))
    assert first["val/adv_bacc@8_255"] == again["val/adv_bacc@8_255"]


def test_test_report_is_complete_and_not_stronger_than_clean(trained, tmp_path):
    model, dm = trained
    callback = RobustnessCallback(epsilons=["4/255", "16/255"], test_steps=10, test_restarts=2,
                                  autoattack_attacks=["apgd-ce"], autoattack_samples=32,
                                  corruption_report=False)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[callback],
                        default_root_dir=str(tmp_path))
    result = trainer.test(model, datamodule=dm, verbose=False)[0]
    report = json.loads((tmp_path / "robustness.json").read_text())
    assert report["threat_model"]["epsilons"] == pytest.approx([4 / 255, 16 / 255])
    assert report["dataset"] == {"flag": "breastmnist", "size": 28, "task": "binary", "split": "test", "n_examples": 64}
    assert report["seed"] == 0 and report["versions"]["torch"]
    for label in ("4_255", "16_255"):
        assert report["pgd"][label]["bacc"] <= report["clean"]["bacc"] + 1e-9
        assert result[f"test/adv_bacc@{label}"] == pytest.approx(report["pgd"][label]["bacc"])
        aa = report["autoattack"][label]
        assert aa["info"]["seed"] == 0 and "apgd-ce" in json.dumps(aa["info"])
        assert aa["bacc"] <= aa["clean_bacc_same_examples"] + 1e-9
    assert report["pgd"]["16_255"]["bacc"] <= report["pgd"]["4_255"]["bacc"] + 1e-9


def test_test_report_works_under_inference_mode(trained, tmp_path):
    model, dm = trained
    callback = RobustnessCallback(epsilons=["64/255"], test_steps=5, test_restarts=1, autoattack=False,
                                  corruption_report=False)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[callback],
                        default_root_dir=str(tmp_path), inference_mode=True)
    result = trainer.test(model, datamodule=dm, verbose=False)[0]
    assert result["test/adv_bacc@64_255"] < result["test/clean_bacc"] - 0.3


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="epsilon"):
        RobustnessCallback(epsilons=["300/255"])
    with pytest.raises(ConfigError, match="norm"):
        RobustnessCallback(norm="l1")
    with pytest.raises(ConfigError, match="AutoAttack"):
        RobustnessCallback(autoattack_attacks=["apgd-xx"])


def _metric_keys(out: Path) -> set[str]:
    keys = set()
    for path in (out / "csv").glob("version_*/metrics.csv"):
        with open(path) as handle:
            for row in csv.DictReader(handle):
                keys |= {k for k, v in row.items() if v not in ("", None)}
    return keys


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
    assert {"val/adv_bacc@4_255", "test/aa_bacc@4_255", "val/corr_bacc", "val/corr_bacc@brightness_up"} <= keys["single"]
    assert keys["ddp"] == keys["single"]


def test_corruption_accuracy_each_epoch_and_medmnist_c_table_in_the_report(trained, tmp_path):
    model, dm = trained
    callback = RobustnessCallback(epsilons=["4/255"], test_steps=2, test_restarts=1, autoattack=False,
                                  corruptions=["brightness_down", "contrast_down"], corruption_severities=[1, 5],
                                  corruption_val_samples=32, corruption_cache=str(tmp_path / "cache"))
    metrics = _validate(model, dm, callback)
    assert set(k for k in metrics if k.startswith("val/corr")) == {
        "val/corr_bacc", "val/corr_bacc@brightness_down", "val/corr_bacc@contrast_down"}
    assert metrics["val/corr_bacc"] == pytest.approx(
        (metrics["val/corr_bacc@brightness_down"] + metrics["val/corr_bacc@contrast_down"]) / 2)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[callback],
                        default_root_dir=str(tmp_path))
    result = trainer.test(model, datamodule=dm, verbose=False)[0]
    table = json.loads((tmp_path / "robustness.json").read_text())["corruptions"]
    assert table["protocol"] == "upsample224-corrupt-box" and table["flag"] == "breastmnist"
    assert set(table["bacc"]) == {"pixelate", "jpeg_compression", "speckle_noise", "motion_blur", "brightness_up",
                                  "brightness_down", "contrast_down"}
    assert all(len(per_severity) == 5 for per_severity in table["bacc"].values())
    assert result["test/corr_bacc"] == pytest.approx(table["mean_bacc"])
    assert list((tmp_path / "cache" / "breastmnist").glob("*.npz"))
