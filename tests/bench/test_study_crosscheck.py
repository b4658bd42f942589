"""bench/study_crosscheck.py on a tiny real study out folder: the independent recomputation agrees with the study's
results.csv (to float precision, the same definitions on the same images), a tampered number fails naming its row,
and bad input ends in one `error:` line with exit code 2. The study (ERM, D_rand, D_det on a binary and an 8-class
synthetic set with label noise and a brightness shift between train and val/test, so AdaBN moves the numbers) takes
about 15 s on one core; each check after it a few seconds (in-process, as tests/bench/test_bench_smoke.py runs
crosscheck.py)."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


def _harder_npz(root: Path, flag: str, n: tuple[int, int, int]) -> None:
    """A synthetic npz with 30 % of the labels redrawn and val/test images 40 grey levels brighter than train."""
    from datamodules.synthetic import write_synthetic_npz

    # data seed 7: at seed 0 the synthetic labels share D_rand's seed-0 draw, which the construction audit refuses
    path = write_synthetic_npz(root, flag, 28, n_train=n[0], n_val=n[1], n_test=n[2], seed=7)
    rng = np.random.default_rng(1)
    arrays = dict(np.load(path))
    k = int(arrays["train_labels"].max()) + 1
    for split in ("train", "val", "test"):
        labels = arrays[f"{split}_labels"]
        noisy = rng.random(len(labels)) < 0.3
        labels[noisy, 0] = rng.integers(0, k, noisy.sum())
        if split != "train":
            arrays[f"{split}_images"] = np.clip(arrays[f"{split}_images"].astype(int) + 40, 0, 255).astype(np.uint8)
    np.savez_compressed(path, **arrays)


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> tuple[Path, Path]:
    """(out folder, data root) of a finished tiny study: BreastMNIST (binary) and BloodMNIST (8 classes, RGB)."""
    from studies.nonrobust import load, reproduce

    tmp = tmp_path_factory.mktemp("study_crosscheck")
    _harder_npz(tmp / "data", "breastmnist", (64, 48, 48))
    _harder_npz(tmp / "data", "bloodmnist", (64, 48, 64))
    overrides = [
        f"datasets=[{{flag: breastmnist, root: {tmp}/data, verify_md5: false}}, "
        f"{{flag: bloodmnist, root: {tmp}/data, verify_md5: false}}]",
        "models={erm: {config: configs/erm.yaml}}", "matched_accuracy=[]",
        "constructions={d_rand: {source: erm, steps: 2}, d_det: {source: erm, steps: 2}}",
        "construction_defaults.limit=32",
        "constructed_training.overrides={data.augment: false, trainer.max_epochs: 2}",
        "train.trainer.max_epochs=2", "train.trainer.callbacks.init_args.test_steps=1",
        "train.trainer.callbacks.init_args.epsilons=[2/255]", "seeds=[0]", "statistics.bootstrap=100"]
    reproduce(load(REPO / "configs" / "study" / "quick.yaml", overrides), tmp / "out", log=lambda line: None)
    return tmp / "out", tmp / "data"


def check(*args) -> int:
    from bench.study_crosscheck import main

    return main([str(a) for a in args])


def test_independent_numbers_agree_with_the_study(study, tmp_path, capsys):
    out, root = study
    report = tmp_path / "check.json"
    assert check("--out", out, "--root", root, "--json", report) == 0
    assert "PASS" in capsys.readouterr().out
    data = json.loads(report.read_text())
    assert data["passed"] and not data["skipped"]
    rows = {r["row"]: {m["measure"]: m for m in r["measures"]} for r in data["rows"]}
    models = ("erm", "d_rand", "d_det")
    assert set(rows) == {f"{d}_28/seed_0/{m}" for d in ("breastmnist", "bloodmnist") for m in models}
    for label, measures in rows.items():
        expected = {"clean_bacc", "bacc", "auroc", "bacc_adabn", "auroc_adabn"}
        expected |= {"bacc_recal"} if label.startswith("breast") else set()
        expected |= {"bacc_vs_new_label"} if label.endswith("d_det") else set()
        assert {m for m, e in measures.items() if e["difference"] is not None} == expected, label
        for name in expected:
            # the same definitions on the same images: equal up to float32 rounding (recal: up to its tolerance)
            tolerance = 0.03 if name == "bacc_recal" else 1e-5
            assert abs(measures[name]["difference"]) <= tolerance, (label, measures[name])
        if label.startswith("blood"):
            assert measures["bacc_recal"]["status"].startswith("skipped: multi-class")
    # the fixture is sensitive to AdaBN: the brightness shift puts the default rule at chance, AdaBN lifts it
    erm = rows["breastmnist_28/seed_0/erm"]
    assert erm["bacc_adabn"]["independent"] - erm["bacc"]["independent"] > 0.1


def test_a_tampered_number_fails_and_names_its_row(study, tmp_path, capsys):
    out, root = study
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    with open(copy / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    (row,) = [r for r in rows if r["dataset"] == "breastmnist" and r["model"] == "d_rand" and r["seed"] != "all"]
    row["auroc"] = str(float(row["auroc"]) + 0.05)
    with open(copy / "results.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert check("--out", copy, "--root", root, "--rows", "d_rand", "--json", tmp_path / "check.json") == 1
    printed = capsys.readouterr().out
    fails = [line for line in printed.splitlines() if line.startswith("FAIL")]
    assert fails == ["FAIL: breastmnist_28/seed_0/d_rand auroc: the study's value differs from the independent one "
                     "by -0.0500"], printed
    data = json.loads((tmp_path / "check.json").read_text())
    assert [r["row"] for r in data["rows"]] == ["breastmnist_28/seed_0/d_rand", "bloodmnist_28/seed_0/d_rand"]
    assert data["failures"] == [{"row": "breastmnist_28/seed_0/d_rand", "measure": "auroc",
                                 "difference": pytest.approx(-0.05, abs=1e-6)}]


@pytest.mark.parametrize("case, message", [
    ("missing", "study out folder"),
    ("empty", "has no results.csv"),
    ("no checkpoints", "has a checkpoint to recompute"),
    ("no such rows", "no row of"),
])
def test_bad_input_is_one_error_line_and_exit_2(study, tmp_path, capsys, case, message):
    from bench.common import run_main
    from bench.study_crosscheck import main

    out, root = study
    folder = tmp_path / "out"
    args = ["--out", str(folder), "--root", str(root)]
    if case == "empty":
        folder.mkdir()
    elif case == "no checkpoints":  # a results.csv without the study's run folders beside it
        folder.mkdir()
        shutil.copy(out / "results.csv", folder / "results.csv")
    elif case == "no such rows":
        args = ["--out", str(out), "--root", str(root), "--rows", "d_nothing"]
    with pytest.raises(SystemExit) as exit_:
        run_main(lambda: main(args))
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
