"""Smoke tests of the bench scripts on synthetic npz files: they run, write the JSON they promise,
end bad input in one `error:` line with exit code 2, and crosscheck passes an honest report and fails
an overstated one. Most of the time goes to starting Python with torch and Lightning."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run(script: str, *args, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "bench" / script), *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def pneumonia_root(tmp_path_factory) -> Path:
    from datamodules.synthetic import write_synthetic_npz

    root = tmp_path_factory.mktemp("pneumonia")
    # medmnist.PneumoniaMNIST (the baseline) insists on the official split sizes
    write_synthetic_npz(root, "pneumoniamnist", n_train=4708, n_val=524, n_test=624)
    return root


def test_data_loading_writes_both_variants_and_a_ratio(pneumonia_root, tmp_path):
    out = tmp_path / "data.json"
    result = run("data_loading.py", "--root", pneumonia_root, "--no-verify-md5", "--repeats", 1, "--warmup", 0,
                 "--batches", 2, "--batch-size", 16, "--threads", 1, "--json", out)
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert data["images_per_epoch"] == {"medrobust": 32, "torchvision": 32}
    (run_,) = data["runs"]
    assert run_["torch_threads"] == 1
    assert set(run_["variants"]) == {"medrobust", "torchvision"}
    assert run_["variants"]["medrobust"]["images_per_s"]["median"] > 0
    assert run_["ratio_a_over_b"]["median"] > 0
    assert "ratio (a)/(b)" in result.stdout


def test_attacks_times_each_and_reports_strength(pneumonia_root, tmp_path):
    out = tmp_path / "attacks.json"
    result = run("attack_speed.py", "--root", pneumonia_root, "--no-verify-md5", "--repeats", 1, "--warmup", 0,
                 "--batch-size", 8, "--steps", 2, "--train-epochs", 0, "--strength-eps", "8/255", "--threads", 1,
                 "--json", out)
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    (run_,) = data["runs"]
    assert set(run_["seconds"]) == {"medrobust", "medrobust_early_stop", "torchattacks"}
    assert run_["ratio_ours_over_theirs"]["median"] > 0 and run_["early_stop_ratio_ours_over_theirs"]["median"] > 0
    (row,) = data["strength"]
    for variant in ("medrobust", "medrobust_early_stop", "torchattacks"):
        assert 0 <= row[variant]["robust_acc"] <= 1
        assert row[variant]["max_linf"] <= 8 / 255 + 1e-6
    assert "best iterate" in result.stdout


@pytest.mark.parametrize("script, args, message", [
    ("data_loading.py", ["--root", "/no/such/folder"], "not found"),
    ("attack_speed.py", ["--repeats", "0"], "positive integer"),
    ("crosscheck.py", ["--ckpt", "/no/such.ckpt", "--root", "."], "checkpoint /no/such.ckpt not found"),
])
def test_bad_input_ends_in_one_error_line(script, args, message):
    result = run(script, *args, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr


@pytest.fixture(scope="module")
def honest_report(tiny_erm, tmp_path_factory):
    """The session's tiny ERM checkpoint (tests/conftest.py), copied, and its robustness report (PGD only)."""
    import lightning as L

    from callbacks.robustness import RobustnessCallback

    ckpt = tiny_erm.checkpoint_copy(tmp_path_factory.mktemp("crosscheck"))
    callback = RobustnessCallback(epsilons=["2/255"], test_steps=5, test_restarts=1, autoattack=False,
                                  corruption_epoch=False, corruption_report=False)
    tester = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, inference_mode=False,
                       callbacks=[callback], default_root_dir=str(ckpt.parent))
    tester.test(tiny_erm.model, datamodule=tiny_erm.datamodule, ckpt_path=str(ckpt), verbose=False)
    assert ckpt.with_name("erm.robustness.json").is_file()
    return tiny_erm.root, ckpt


def crosscheck(*args) -> int:
    """bench/crosscheck.py's main in this process (the subprocess start-up is what makes tests slow)."""

    from bench.crosscheck import main

    return main([str(a) for a in args])


def test_crosscheck_accepts_an_honest_report(honest_report, tmp_path, capsys):
    root, ckpt = honest_report
    out = tmp_path / "crosscheck.json"
    assert crosscheck("--ckpt", ckpt, "--root", root, "--no-verify-md5", "--steps", 5, "--restarts", 2,
                      "--json", out) == 0
    assert "PASS" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["passed"] and data["model_class"] == "ERM"
    (row,) = data["epsilons"]
    assert row["label"] == "2_255" and row["report_pgd_bacc"] is not None and row["ok"]
    assert data["clean"]["bacc"] == pytest.approx(data["clean"]["report_bacc"], abs=1e-6)


def test_crosscheck_flags_overstated_reports_and_refuses_others(honest_report, tmp_path, capsys):
    root, ckpt = honest_report
    report = json.loads(ckpt.with_name("erm.robustness.json").read_text())
    report["threat_model"]["epsilons"] = [0.5]  # claims perfect robustness at a budget that breaks any model
    report["pgd"] = {"0.5": {"bacc": 1.0}}
    overstated = tmp_path / "overstated.json"
    overstated.write_text(json.dumps(report))
    args = ["--ckpt", ckpt, "--root", root, "--no-verify-md5", "--steps", 5, "--restarts", 1]
    assert crosscheck(*args, "--report", overstated) == 1
    assert "FAIL" in capsys.readouterr().out
    from bench.common import BenchError

    report["model"]["hparams"]["lr"] = 0.5  # the report of another run
    other_run = tmp_path / "other_run.json"
    other_run.write_text(json.dumps(report))
    with pytest.raises(BenchError, match="not the model the report scored: lr"):
        crosscheck(*args, "--report", other_run)
    report["dataset"]["task"] = "multilabel"
    multilabel = tmp_path / "multilabel.json"
    multilabel.write_text(json.dumps(report))
    assert crosscheck(*args, "--report", multilabel) == 2
    assert "error: multi-label reports" in capsys.readouterr().err
