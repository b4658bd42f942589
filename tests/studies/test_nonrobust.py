"""The study reproduction: config checks, and the tables and figures it writes from results rows."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from core.errors import MedRobustError
from studies.nonrobust import findings, load as load_study, result_row, write_results

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def at_repo(monkeypatch):
    monkeypatch.chdir(REPO)  # study configs name training configs relative to the repository


def test_shipped_study_configs_load():
    for name in ("quick", "paper", "causes"):
        study = load_study(REPO / "configs" / "study" / f"{name}.yaml")
        assert {"erm", "pgd_at"} <= set(study.models)
    scale = load_study(REPO / "configs" / "study" / "scale.yaml")
    quick = load_study(REPO / "configs" / "study" / "quick.yaml")
    # scale.yaml shares its erm step with the quick study (same --out trains it once)
    assert scale.train == quick.train and scale.models["erm"] == quick.models["erm"]
    assert scale.constructed_training == quick.constructed_training
    # each shipped config names its primary endpoints; paper.yaml reads finding 2 off a curve of four PGD-AT models
    assert quick.endpoints["declared"] and [e.measure for e in quick.endpoints["primary"]] == [
        "auroc_net_of_leakage", "auroc", "corr_bacc@all"]
    # D_rand's leakage is measured by an L2-robust model at the construction's own budget; finding 2 is also read
    # off a curve of PGD-AT models at matched clean accuracy
    assert all(quick.constructions[c]["leakage"] == "robust_l2" for c in ("d_rand", "d_det"))
    robust = quick.models["robust_l2"]["overrides"]
    assert robust["model.init_args.norm"] == "l2"
    assert robust["model.init_args.epsilon"] == quick.constructions["d_rand"]["epsilon"]
    assert quick.matched_accuracy == ["pgd_at_eps05", "pgd_at_eps1", "pgd_at", "pgd_at_eps8"]
    # each dataset trains the curve's points that bracket ERM there (a larger epsilon on PneumoniaMNIST, a smaller
    # one on BreastMNIST), and every model the constructions and finding 2 need
    pneumonia, breast = (list(quick.models_of(d)) for d in quick.datasets)
    assert pneumonia == ["erm", "pgd_at", "pgd_at_eps1", "pgd_at_eps8", "robust_l2"]
    assert breast == ["erm", "pgd_at", "pgd_at_eps05", "pgd_at_eps1", "robust_l2"]
    paper = load_study(REPO / "configs" / "study" / "paper.yaml")
    assert paper.matched_accuracy == ["pgd_at_eps1", "pgd_at_eps2", "pgd_at", "pgd_at_eps8"]
    assert set(scale.differences()) >= {"d_rand_all - d_rand_1000", "d_det_all - d_det_1000"}


@pytest.mark.parametrize("overrides, message", [
    (["datasets=[]"], "at least one dataset"),
    (["datasets=[{flag: nosuchmnist}]"], "nosuchmnist"),
    (["constructions.d_magic={source: erm}"], "unknown construction 'd_magic'"),
    (["constructions.d_rand={source: nobody}"], "must name one of the models"),
    (["seeds=[]"], "seeds must be a non-empty list"),
    (["bogus=1"], "unknown study key(s) bogus"),
    (["models.erm.config=configs/missing.yaml"], "not found"),
    (["datasets=[{flag: chestmnist}]"], "multi-label"),
    (["seeds"], "key=value"),
    (["recalibration.split=calibration"], "pneumoniamnist has no such split (its splits: train, val, test)"),
    (["recalibration.split=test"], "fit on the real validation split"),
    (["seeds=[0]", "statistics.interval=seeds_and_examples"], "needs at least 2 seeds, got 1"),
    (["statistics.bootstrap=10"], "at least 100 draws"),
    (["constructions.d_x={source: erm, reuse: d_rand}"], "unknown construction 'd_x'"),
    (["constructions.d_x={kind: d_rand, source: erm, reuse: d_nope}"], "must name a set built earlier"),
    (["endpoints.primary.d_det=bacc_vs_new_label"], "bacc_vs_new_label is D_det's check"),
    (["endpoints.primary={d_rand: corr_drop@all}"], "endpoints.primary.d_rand: unknown measure 'corr_drop@all'"),
    (["endpoints.correction=bonferroni"], "endpoints.correction must be one of holm, none"),
    (["matched_accuracy=[pgd_at]"], "at least two robust models"),
    (["matched_accuracy=[pgd_at, erm]"], "other than the standard model 'erm'"),
    (["comparisons={d_rand: d_nope}"], "comparisons.d_rand: 'd_nope' is not a model or constructed set"),
    (["datasets=[{flag: pneumoniamnist, models: [erm, pgd_at, nobody]}]"], "lists models of the study"),
    (["datasets=[{flag: pneumoniamnist, models: [erm, pgd_at, pgd_at_eps1]}]"], "leaves out robust_l2, which"),
    (["datasets=[{flag: pneumoniamnist, models: [erm, pgd_at_eps1, robust_l2]}]"], "leaves out pgd_at, which"),
    (["datasets=[{flag: pneumoniamnist, models: [erm, pgd_at, robust_l2]}]"], "fewer than two models of the"),
])
def test_bad_study_configs_end_in_one_clear_error(overrides, message):
    with pytest.raises(MedRobustError) as err:
        load_study(REPO / "configs" / "study" / "quick.yaml", overrides)
    assert message in str(err.value)


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    result = subprocess.run([sys.executable, "-m", "studies", "reproduce", str(bad), "--out", str(tmp_path / "out")],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "not valid YAML" in lines[0]
    assert not (tmp_path / "out").exists()


def _report(path: Path, clean: float, adv: dict, corr=None) -> str:
    import json

    report = {"clean": {"bacc": clean, "acc": clean},
              "pgd": {label: {"bacc": v, "epsilon": e} for label, (e, v) in adv.items()}}
    if corr:
        report["corruptions"] = {"mean_bacc": sum(corr.values()) / len(corr), "mean_be": 1.0, "mean_rbe": 0.5,
                                 "clean_bacc": clean, "roundtrip_bacc": clean - 0.01, "rbe_reference": "roundtrip",
                                 "corruption_bacc": corr}
    path.write_text(json.dumps(report))
    return str(path)


def test_results_tables_findings_and_figures(tmp_path):
    dataset = {"flag": "pneumoniamnist", "size": 28}
    adv = {"1_255": (1 / 255, 0.6), "4_255": (4 / 255, 0.2)}
    rows = [
        result_row(dataset, "erm", "real", 0, {"report": _report(tmp_path / "e.json", 0.85, adv,
                                                                  {"gaussian_noise": 0.80, "brightness_up": 0.70})}),
        result_row(dataset, "pgd_at", "real", 0, {"report": _report(tmp_path / "a.json", 0.80, adv,
                                                                     {"gaussian_noise": 0.79, "brightness_up": 0.78})}),
        result_row(dataset, "d_rand", "constructed", 0, {"metrics": {"test/clean_bacc": 0.64}}),
        result_row(dataset, "d_det", "constructed", 0, {"metrics": {"test/clean_bacc": 0.52}}),
    ]
    assert rows[0]["chance_bacc"] == 0.5 and rows[0]["adv_bacc@4_255"] == 0.2
    assert rows[1]["corr_delta@brightness_up"] == pytest.approx(0.78 - 0.79)
    write_results(rows, tmp_path)
    with open(tmp_path / "results.csv") as handle:
        written = list(csv.DictReader(handle))
    assert [r["model"] for r in written if r["seed"] != "all"] == ["erm", "pgd_at", "d_rand", "d_det"]
    # one summary row per cell over its seeds: here one seed, so a mean and no interval
    summary = [r for r in written if r["seed"] == "all"]
    assert [r["model"] for r in summary] == ["erm", "pgd_at", "d_rand", "d_det"] and summary[2]["clean_bacc"] == "0.64"
    markdown = (tmp_path / "results.md").read_text()
    assert "| d_rand | D_rand (nonrobust features only) | 0.640 |" in markdown
    assert "| brightness_up | 0.700 | 0.780 | +0.080 |" in markdown
    text = findings(rows)
    # without per-example measures there is no interval, so no verdict either way
    assert "d_rand: test balanced accuracy 0.640 vs chance 0.500 (+0.140); no per-example measures" in text
    assert "finding 1 undecided at this sample size" in text and "holds." not in text.split("ERM -> PGD-AT")[0]
    # point estimates alone give no interval, so finding 2 gets no verdict: they are stated as descriptive
    assert "MedMNIST-C 0.750 -> 0.785 (+0.035), chance 0.500: point estimates only (descriptive" in text
    for figure in ("constructed.png", "corruption.png", "robust_curve.png"):
        assert (tmp_path / figure).stat().st_size > 1000
    assert not (tmp_path / "matched_accuracy.png").exists()  # no curve of robust models, no figure


def test_matched_accuracy_figure_draws_each_datasets_curve(tmp_path):
    """The matched-accuracy figure is drawn from the curve's models each dataset trained (one panel each)."""
    from studies.nonrobust.figures import figures

    def row(dataset, model, seed, clean, corrupted):
        return {"dataset": dataset, "model": model, "seed": seed, "clean_bacc": clean, "corr_bacc": corrupted,
                "chance_bacc": 0.5}

    rows = [row(d, m, s, c - 0.01 * s, k) for d, models in (("pneumoniamnist", ("erm", "at1", "at4", "at8")),
                                                           ("breastmnist", ("erm", "at05", "at1", "at4")))
            for s in (0, 1) for m, c, k in zip(models, (0.80, 0.84, 0.82, 0.78), (0.70, 0.74, 0.75, 0.74))]
    figures(rows, tmp_path, roles={"standard": "erm", "robust": "at4"}, curve=["at05", "at1", "at4", "at8"])
    assert (tmp_path / "matched_accuracy.png").stat().st_size > 1000


def test_tiny_study_end_to_end_then_rerun_reuses_every_step(tmp_path):
    """ERM, PGD-AT and D_rand on synthetic BreastMNIST: every step runs (but a model the dataset's `models:` leaves
    out), results are written, a rerun trains nothing, and a rerun with other settings is refused rather than mixing
    old and new runs."""
    from datamodules.synthetic import write_synthetic_npz
    from studies.nonrobust import reproduce

    # data seed 7: with seed 0 the synthetic labels are the very draw D_rand makes at seed 0, which the
    # construction audit rightly refuses (D_rand's labels must equal the originals only at chance)
    write_synthetic_npz(tmp_path / "data", "breastmnist", 28, n_train=64, n_val=32, n_test=32, seed=7)
    overrides = [
        f"datasets=[{{flag: breastmnist, root: {tmp_path}/data, verify_md5: false, models: [erm, pgd_at]}}]",
        "models={erm: {config: configs/erm.yaml}, pgd_at: {config: configs/pgd_at.yaml}, "
        "not_here: {config: configs/erm.yaml}}", "matched_accuracy=[]",
        "models.pgd_at.overrides={model.init_args.steps: 1}",
        "constructions={d_rand: {source: erm, steps: 2}}", "construction_defaults.limit=32",
        "train.trainer.max_epochs=1", "train.trainer.callbacks.init_args.test_steps=1",
        "train.trainer.callbacks.init_args.epsilons=[2/255]", "seeds=[0]"]
    study = load_study(REPO / "configs" / "study" / "quick.yaml", overrides)
    log = []
    rows = reproduce(study, tmp_path / "out", log=log.append)
    assert [r["model"] for r in rows] == ["erm", "pgd_at", "d_rand"]
    assert all(0 <= r["clean_bacc"] <= 1 and "adv_bacc@2_255" in r for r in rows)
    base = tmp_path / "out" / "breastmnist_28" / "seed_0"
    assert (base / "constructed" / "d_rand.npz").is_file() and (base / "train_d_rand" / "result.json").is_file()
    # the model trained on D_rand is scored at its last epoch, not at the best real-validation bacc
    epochs = study.constructed_training["overrides"]["trainer.max_epochs"]
    assert json.loads((base / "train_d_rand" / "result.json").read_text())["best_epoch"] == epochs - 1 > 0
    assert {"results.csv", "results.md", "constructed.png"} <= {p.name for p in (tmp_path / "out").iterdir()}
    log.clear()
    again = reproduce(study, tmp_path / "out", log=log.append)
    assert again == rows and all("(reused)" in line for line in log), log
    changed = load_study(REPO / "configs" / "study" / "quick.yaml", [*overrides, "train.trainer.max_epochs=2"])
    with pytest.raises(MedRobustError, match="trained with other settings"):
        reproduce(changed, tmp_path / "out", log=log.append)


def test_autoattack_numbers_reach_the_results_table(tmp_path):
    """paper.yaml's headline robust numbers (standard AutoAttack) are tabulated beside PGD, per model and seed."""
    import json

    from studies.nonrobust import results_markdown

    rows = []
    for seed, aa in ((0, 0.40), (1, 0.44)):
        path = tmp_path / f"r{seed}.json"
        path.write_text(json.dumps({"clean": {"bacc": 0.8, "acc": 0.8},
                                    "pgd": {"8_255": {"bacc": 0.5, "epsilon": 8 / 255}},
                                    "autoattack": {"8_255": {"bacc": aa, "epsilon": 8 / 255}}}))
        rows.append(result_row({"flag": "pneumoniamnist"}, "pgd_at", "real", seed, {"report": str(path)}))
    assert rows[0]["aa_bacc@8_255"] == 0.40
    markdown = results_markdown(rows)
    assert "| clean | PGD 8/255 | AutoAttack 8/255 |" in markdown
    assert "| pneumoniamnist | pgd_at | 0.800 ± 0.000 | 0.500 ± 0.000 | 0.420 ± 0.028 |" in markdown
