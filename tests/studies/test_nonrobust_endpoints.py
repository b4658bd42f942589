"""Pre-registered primary endpoints: verdicts for them alone, Holm-adjusted; everything else descriptive; finding 2
at matched clean accuracy; D_det against (y + 1) mod C; a bad endpoint is one error line. Pure functions of
hand-made per-seed numbers, but for the D_det labels (one tiny model) and the CLI line."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from studies import corruption_drop, measures
from studies.nonrobust import cell_statistics, findings, load as load_study, result_row
from studies.nonrobust import endpoints as ep
from studies.nonrobust.results import matched_accuracy

REPO = Path(__file__).resolve().parents[2]
FINDING_1 = "finding 1 (nonrobust features alone are useful)"


@pytest.fixture(autouse=True)
def at_repo(monkeypatch):
    monkeypatch.chdir(REPO)


def _per_seed(**values):
    """Per-seed measures as studies.measures.draws gives them, one dict per seed ({measure: value, draws})."""
    seeds = len(next(iter(values.values())))
    return [{m: {"value": v[s], "draws": np.full(20, v[s])} for m, v in values.items()} for s in range(seeds)]


def _rows(flag, models, seeds=5):
    return [result_row({"flag": flag}, m, "constructed", s, {"metrics": {"test/clean_bacc": 0.6}})
            for m in models for s in range(seeds)]


def test_holm_adjusted_verdict_differs_from_the_unadjusted_one():
    """Two endpoints whose unadjusted intervals both lie just above chance (p about 0.040 and 0.047): alone, each
    holds; Holm over the two doubles the smaller p-value past 0.05 (and the larger keeps it), so both are undecided."""
    draws = {("pneumoniamnist", "d_rand"): _per_seed(auroc=[0.50, 0.54, 0.56, 0.58, 0.62]),
             ("pneumoniamnist", "d_det"): _per_seed(auroc=[0.50, 0.525, 0.55, 0.575, 0.60])}
    cells = cell_statistics(draws)
    for model in ("d_rand", "d_det"):
        c = cells[("pneumoniamnist", model)]["auroc"]
        assert measures.verdict(c["low"], c["high"], 0.5) == measures.HOLDS  # the unadjusted interval
    rows = _rows("pneumoniamnist", ("d_rand", "d_det"))
    plan = ep.check_endpoints(None, {"d_rand": "d_rand", "d_det": "d_det"}, {}, None)
    adjusted = ep.evaluate(plan, ["pneumoniamnist"], {"pneumoniamnist": 2}, cells, {}, 0.95)
    assert all(r["p"] < 0.05 < r["p_adjusted"] for r in adjusted), adjusted
    assert [r["verdict"] for r in adjusted] == [measures.UNDECIDED, measures.UNDECIDED]
    unadjusted = ep.evaluate(dict(plan, correction="none"), ["pneumoniamnist"], {"pneumoniamnist": 2}, cells, {}, 0.95)
    assert [r["verdict"] for r in unadjusted] == [measures.HOLDS, measures.HOLDS]
    text = findings(rows, cells)
    assert "pneumoniamnist, d_det (5 seeds): test AUROC (threshold-free)" in text
    assert text.count(f"**{FINDING_1} undecided at this sample size**") == 2 and "holds**" not in text
    assert "Holm's correction across the 2 measured endpoints" in text
    assert "the defaults (the config names none)" in text


def test_a_measure_not_named_primary_is_descriptive():
    """The config names D_rand's recalibrated balanced accuracy (4 classes: chance 0.25) as its one primary endpoint:
    it gets the verdict, judged against 1 / C; D_rand's AUROC and everything about D_det are descriptive."""
    study = load_study(REPO / "configs" / "study" / "quick.yaml", ["endpoints.primary={d_rand: bacc_recal}"])
    draws = {("octmnist", "d_rand"): _per_seed(auroc=[0.80, 0.82, 0.81], bacc_recal=[0.34, 0.36, 0.35]),
             ("octmnist", "d_det"): _per_seed(auroc=[0.70, 0.72, 0.71])}
    cells = cell_statistics(draws, study)
    text = findings(_rows("octmnist", ("d_rand", "d_det"), 3), cells, {}, None, study)
    primary, descriptive = text.split("### octmnist: descriptive")
    assert "named in the config (`endpoints.primary`)" in primary
    assert ("d_rand (3 seeds): test balanced accuracy, bias fitted on the real validation split 0.350 ± 0.010 "
            "[0.325, 0.375] vs chance 0.250" in primary and f"**{FINDING_1} holds**" in primary), primary
    assert "AUROC" not in primary and "d_det" not in primary and primary.count("**") == 2
    assert "d_rand (3 seeds, descriptive, unadjusted intervals): AUROC 0.810" in descriptive
    assert "d_det (3 seeds, descriptive" in descriptive and "**" not in descriptive


def test_matched_clean_accuracy_is_read_off_the_curve_or_not_reachable():
    curve = [(0.80, 0.60), (0.70, 0.66), (0.60, 0.70)]  # clean falls and corrupted rises with epsilon
    assert corruption_drop.at_matched_clean(curve, 0.75) == pytest.approx(0.63)
    assert corruption_drop.at_matched_clean(curve, 0.62) == pytest.approx(0.692)
    assert corruption_drop.at_matched_clean(curve, 0.70) == pytest.approx(0.66)
    assert corruption_drop.at_matched_clean(curve, 0.85) is None  # above the curve's range: not reachable
    assert corruption_drop.at_matched_clean(curve, 0.5) is None

    def row(model, seed, clean, corrupted):
        return {"dataset": "breastmnist", "model": model, "seed": seed, "clean_bacc": clean, "corr_bacc": corrupted}

    rows = [row("erm", s, c, 0.55) for s, c in ((0, 0.75), (1, 0.78), (2, 0.90))]
    rows += [row(m, s, c, k) for s in (0, 1, 2) for m, (c, k) in zip(("at1", "at4", "at8"), curve)]
    got = matched_accuracy(rows, "breastmnist", "erm", ["at1", "at4", "at8"], 0.95)
    assert got["per_seed"][0] == pytest.approx(0.63 - 0.55) and got["per_seed"][1] == pytest.approx(0.612 - 0.55)
    assert got["per_seed"][2] is None and got["cell"]["seeds"] == 2  # ERM's 0.90 lies above the curve
    unreachable = matched_accuracy([r for r in rows if r["seed"] == 2], "breastmnist", "erm", ["at1", "at4", "at8"],
                                   0.95)
    from studies.nonrobust.findings import matched_sentence

    roles = {"standard": "erm", "robust": "at4"}
    assert "not reachable at seed 2" in matched_sentence(got, roles)[0]
    assert "not reachable (ERM's clean balanced accuracy lies outside the curve's range at every seed)" in \
        matched_sentence(unreachable, roles)[0]


def test_matched_clean_accuracy_reads_the_curve_a_dataset_trained():
    """A dataset whose `models:` leaves out a point of the curve is read off the points it has, and says which."""
    def row(model, seed, clean, corrupted):
        return {"dataset": "pneumoniamnist", "model": model, "seed": seed, "clean_bacc": clean, "corr_bacc": corrupted}

    rows = [row("erm", 0, 0.78, 0.70), row("at1", 0, 0.84, 0.74), row("at4", 0, 0.82, 0.75), row("at8", 0, 0.76, 0.73)]
    got = matched_accuracy(rows, "pneumoniamnist", "erm", ["at05", "at1", "at4", "at8"], 0.95)
    assert got["curve"] == ["at1", "at4", "at8"]  # at05 was not trained here; ERM's 0.78 lies between at4 and at8
    assert got["per_seed"][0] == pytest.approx(0.75 + (0.78 - 0.82) / (0.76 - 0.82) * (0.73 - 0.75) - 0.70)
    from studies.nonrobust.findings import matched_sentence

    assert "the curve of at1, at4, at8 (increasing" in matched_sentence(got, {"standard": "erm", "robust": "at4"})[0]


def test_d_det_against_the_next_label_is_evidence_only_with_more_than_two_classes():
    """C = 4: bacc against (y + 1) mod 4 is read against chance 0.25; C = 2: results say it is 1 - bacc."""
    cells4 = cell_statistics({("octmnist", "d_det"): _per_seed(auroc=[0.7, 0.72, 0.71],
                                                               bacc_vs_new_label=[0.24, 0.26, 0.25])})
    text4 = findings(_rows("octmnist", ("d_det",), 3), cells4)
    assert "Against the D_det label (y + 1) mod 4: bacc 0.250 ± 0.010 [0.225, 0.275] vs chance 0.250" in text4
    assert "1 - balanced accuracy" not in text4
    cells2 = cell_statistics({("pneumoniamnist", "d_det"): _per_seed(auroc=[0.7, 0.72, 0.71],
                                                                     bacc_vs_new_label=[0.49, 0.51, 0.50])})
    text2 = findings(_rows("pneumoniamnist", ("d_det",), 3), cells2)
    assert "is 1 - balanced accuracy against the real one" in text2 and "(y + 1) mod 2 = 1 - y" in text2


def test_d_det_is_scored_against_y_plus_one_mod_c(tmp_path):
    """The measurement itself: a 4-class D_det model's new targets are (y + 1) mod 4 of the real test labels."""
    import lightning as L
    import torch
    import yaml

    from datamodules.medmnist import MedMNISTDataModule
    from datamodules.synthetic import write_synthetic_npz
    from lightning_modules.erm import ERM

    data = {"flag": "octmnist", "root": str(tmp_path / "data"), "verify_md5": False, "batch_size": 16,
            "augment": False}
    write_synthetic_npz(tmp_path / "data", "octmnist", 28, n_train=16, n_val=16, n_test=24)
    L.seed_everything(0, verbose=False)
    model = ERM(num_classes=4, task="multiclass")
    dm = MedMNISTDataModule(**data)
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", default_root_dir=str(tmp_path),
                        limit_val_batches=0)
    trainer.fit(model, datamodule=dm)
    run_dir = tmp_path / "run"
    (run_dir / "csv" / "version_0").mkdir(parents=True)
    (run_dir / "csv" / "version_0" / "config.yaml").write_text(yaml.safe_dump({"data": data}))
    trainer.save_checkpoint(run_dir / "last.ckpt")
    got = measures.model_predictions(run_dir, run_dir / "last.ckpt", kind="d_det")
    y = dm.split("test").targets.reshape(-1).long()
    assert len(set(y.tolist())) > 2 and torch.equal(got["new_targets"], (y + 1) % 4)


def test_a_bad_endpoint_is_one_error_line_before_any_training(tmp_path):
    """(Other bad endpoint settings: tests/studies/test_nonrobust.py, through the same config check.)"""
    message = "endpoints.primary.d_rand: unknown measure 'aurocc' (choose from bacc, auroc"
    result = subprocess.run([sys.executable, "-m", "studies", "reproduce", "configs/study/quick.yaml", "--out",
                             str(tmp_path / "out"), "--set", "endpoints.primary.d_rand=aurocc"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: {message}"), result.stderr
    assert not (tmp_path / "out").exists()
