"""The explanation-robustness study: config checks (one line, nothing written), the correlation with its bootstrap
interval, and a whole tiny study on synthetic data (train, test reports, results.csv/.md, both figures)."""
import csv
from pathlib import Path

import numpy as np
import pytest
import yaml

from core.errors import MedRobustError
from studies import framework
from studies.cli import main
from studies.explanations import CALLBACK, Study, correlation, load as load_study, masking_check

REPO = Path(__file__).resolve().parents[2]
QUICK = REPO / "configs" / "study" / "explanations_quick.yaml"


@pytest.fixture(autouse=True)
def at_repo(monkeypatch):
    monkeypatch.chdir(REPO)  # study configs name training configs relative to the repository


def test_shipped_configs_load_and_are_explanation_studies():
    for name in ("explanations_quick", "explanations"):
        path = REPO / "configs" / "study" / f"{name}.yaml"
        assert type(framework.load(path)) is Study  # its `study: explanations` key picks the study
        study = load_study(path)
        assert {"erm", "pgd_at", "expl_reg"} <= set(study.models) and study.compare["expl_reg"] == "erm"
        assert sum(name.startswith("trades") for name in study.models) >= 3


@pytest.mark.parametrize("overrides, message", [
    (["explanation.method=lime"], "unknown explanation method 'lime'"),
    (["explanation.k=785"], "explanation.k 785 is larger than the image (28 x 28 = 784 pixels)"),
    (["explanation.k=0"], "explanation.k"),
    (["epsilon=-4/255"], "epsilon"),
    (["epsilon=0"], "epsilon must be > 0"),
    (["explanation.stepz=3"], "unknown explanation key(s) stepz"),
    (["compare={expl_reg: nobody}"], "must both be models"),
    (["models={erm: {config: configs/erm.yaml}}"], "at least 3 models"),
    (["autoattack.samples=0"], "autoattack.samples must be a positive integer or null"),
    (["autoattack.square_queries=0"], "autoattack.square_queries"),
    (["autoattack.masking_margin=-0.1"], "autoattack.masking_margin"),
    (["autoattack.attacks=[pgd]"], "autoattack.attacks: unknown AutoAttack attacks"),
    (["autoattack.queries=10"], "unknown autoattack key(s) queries"),
    (["train={trainer.callbacks.init_args.autoattack: false}"], "the study sets AutoAttack in its own autoattack"),
])
def test_bad_study_configs_end_in_one_clear_error(overrides, message):
    with pytest.raises(MedRobustError) as err:
        load_study(QUICK, overrides)
    assert message in str(err.value)


@pytest.mark.parametrize("overrides, message", [
    (["explanation.method=lime"], "unknown explanation method 'lime'"),
    (["explanation.k=900"], "larger than the image"),
    (["epsilon=-1/255"], "epsilon"),
])
def test_cli_bad_input_is_one_line_exit_2_nothing_written(tmp_path, capsys, overrides, message):
    out = tmp_path / "out"
    args = ["reproduce", str(QUICK), "--out", str(out)]
    for item in overrides:
        args += ["--set", item]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not out.exists()


def test_correlation_and_its_bootstrap_interval():
    rng = np.random.default_rng(0)
    x = np.linspace(0.1, 0.9, 12)
    strong = correlation(list(x), list(2 * x + rng.normal(0, 0.01, 12)), n=300)
    assert strong["pearson"] > 0.99 and strong["pearson_ci"][0] > 0.9 and strong["n"] == 12
    unrelated = correlation(list(x), list((x - 0.5) ** 2), n=300)  # symmetric: r = 0
    assert unrelated["pearson_ci"][0] < 0 < unrelated["pearson_ci"][1]
    assert np.isnan(correlation([1, 2], [3, 4])["pearson"])  # two models: no correlation


def test_correlation_counts_models_not_seeds_and_has_a_fisher_z_interval():
    from evaluation.statistics import correlation_interval
    from studies.explanations import model_means

    rows = [{"model": m, "seed": s, "robust_bacc": x + 0.01 * s, "expl_topk": y - 0.01 * s}
            for m, x, y in (("a", 0.1, 0.2), ("b", 0.3, 0.5), ("c", 0.5, 0.4), ("d", 0.6, 0.8), ("e", 0.8, 0.7),
                            ("f", 0.9, 0.95)) for s in range(3)]
    means = model_means(rows, ("robust_bacc", "expl_topk"))
    assert [m["model"] for m in means] == list("abcdef") and means[1]["robust_bacc"] == pytest.approx(0.31)
    c = correlation([m["robust_bacc"] for m in means], [m["expl_topk"] for m in means])
    assert c["n"] == 6 and c["pearson_ci"] == pytest.approx(list(correlation_interval(c["pearson"], 6)))
    assert c["pearson_ci"][0] < 0.6 and 0 < c["spearman_p"] < 0.1  # six models: a wide interval, an exact test


def test_every_model_is_tested_with_autoattack_at_the_study_epsilon():
    quick, full = load_study(QUICK), load_study(REPO / "configs" / "study" / "explanations.yaml")
    for study, queries in ((quick, 1000), (full, 5000)):
        overrides = study.callback_overrides()
        assert overrides[f"{CALLBACK}epsilons"] == ["4/255"] and study.autoattack["masking_margin"] == 0.02
        assert overrides[f"{CALLBACK}autoattack"] == {  # the callback's AutoAttackSettings group, as one mapping
            "enabled": True, "version": "custom", "attacks": ["apgd-ce", "apgd-t", "square"],  # binary: apgd-ce+square
            "samples": None, "square_queries": queries}  # samples None: the same test images as PGD
    assert load_study(QUICK, ["autoattack.samples=64"]).callback_overrides()[f"{CALLBACK}autoattack"]["samples"] == 64


def _row(model, seed, pgd, aa, expl, folder, autoattack=True):
    """A results row from a hand-made robustness report (no training), through result_row as the study reads it."""
    from evaluation.record import Provenance, ResultRecord, ScoredSet, write_record
    from studies.explanations import result_row

    label, eps = "4_255", 4 / 255
    record = ResultRecord(
        provenance=Provenance(dataset={"flag": "pneumoniamnist", "n_examples": 624}),
        clean=ScoredSet({"bacc": 0.9}), pgd={label: ScoredSet({"bacc": pgd}, {"epsilon": eps})},
        autoattack={label: ScoredSet({"bacc": aa}, {"epsilon": eps, "info": {"n_examples": 624,
                                                                              "planned": ["apgd-ce", "square"]}})}
        if autoattack else {},
        explanations={label: ScoredSet({"topk": expl, "topk_random": 0.9, "spearman": 0.5, "sensmax": 0.1,
                                        "kept": 1.0}, {"epsilon": eps, "n_examples": 64})})
    report = write_record(Path(folder) / f"{model}-{seed}.robustness.json", record)
    spec = {"config": "configs/expl_reg.yaml" if model.startswith("expl_reg") else "configs/erm.yaml"}
    return result_row({"flag": "pneumoniamnist"}, model, spec, seed, {"report": str(report)}, eps)


def test_masking_flag_when_pgd_exceeds_autoattack_by_more_than_the_margin():
    def row(model, seed, pgd, aa):
        return {"model": model, "seed": seed, "training": "erm", "adv_bacc": pgd, "aa_bacc": aa}

    rows = [row("masked", 0, 0.75, 0.5), row("masked", 1, 0.75, 0.5),  # PGD - AutoAttack = 0.25
            row("honest", 0, 0.625, 0.5), row("honest", 1, 0.5, 0.5),  # mean 0.0625
            row("odd", 0, 0.5, 0.625)]  # AutoAttack above PGD: unexpected, not masking
    check = {m["model"]: m for m in masking_check(rows, margin=0.125)}
    assert check["masked"]["flagged"] and check["masked"]["gap"] == 0.25 and check["masked"]["pgd"] == 0.75
    assert not check["honest"]["flagged"] and check["honest"]["max_seed_gap"] == 0.125
    assert not check["odd"]["flagged"] and check["odd"]["order"] == "AutoAttack above PGD"
    assert check["honest"]["order"] == "AutoAttack below PGD"
    assert not masking_check(rows, margin=0.25)[0]["flagged"]  # exactly the margin: not more than it


def test_a_model_without_an_autoattack_number_fails_in_one_line(tmp_path):
    erm = _row("erm", 0, 0.625, 0.5, 0.3, tmp_path)
    assert erm["aa_bacc"] == 0.5 and erm["adv_bacc"] == 0.625 and erm["pgd_minus_aa"] == 0.125
    assert erm["aa_attacks"] == "apgd-ce+square" and erm["robust_attack"] == "AutoAttack"
    with pytest.raises(MedRobustError) as err:
        _row("expl_reg", 1, 0.625, 0.5, 0.3, tmp_path, autoattack=False)
    assert "pneumoniamnist expl_reg seed 1" in str(err.value) and "has no AutoAttack number at 4/255" in str(err.value)
    assert len(str(err.value).splitlines()) == 1
    with pytest.raises(MedRobustError, match="expl_reg seed 1: no AutoAttack robust bacc"):
        masking_check([erm, {**erm, "model": "expl_reg", "seed": 1, "aa_bacc": None}], 0.02)


def test_results_table_has_autoattack_beside_pgd_and_the_claim_rests_on_autoattack(tmp_path, monkeypatch):
    from studies.explanations import results, write_results

    def paired(a, b, epsilon, n, seed):  # a hand-made paired difference: explanation moved, AutoAttack did not
        return {"expl": {"value": 0.2, "ci": [0.1, 0.3]}, "aa": {"value": 0.0, "ci": [-0.02, 0.02]},
                "adv": {"value": 0.05, "ci": [0.01, 0.09]}}

    monkeypatch.setattr(results, "paired_difference", paired)
    study = load_study(QUICK, ["autoattack.masking_margin=0.125"])
    models = (("erm", 0.5, 0.5, 0.2), ("pgd_at", 0.75, 0.7, 0.5), ("trades_1", 0.625, 0.6, 0.4),
              ("expl_reg", 0.875, 0.5, 0.6))  # expl_reg: PGD 0.375 above AutoAttack
    rows = [_row(m, seed, pgd + 0.01 * seed, aa, expl, tmp_path) for seed in (0, 1) for m, pgd, aa, expl in models]
    analysis = write_results(rows, study, tmp_path, figures=False)
    with open(tmp_path / "results.csv") as handle:
        table = list(csv.DictReader(handle))
    header = list(table[0])
    assert header.index("aa_bacc") == header.index("adv_bacc") + 1  # the AutoAttack column beside PGD's
    assert [r["seed"] for r in table] == ["0"] * 4 + ["1"] * 4 + ["all"] * 4
    summary = {r["model"]: r for r in table if r["seed"] == "all"}
    assert float(summary["expl_reg"]["aa_bacc"]) == 0.5
    assert float(summary["expl_reg"]["adv_bacc"]) == pytest.approx(0.88)
    assert float(summary["expl_reg"]["adv_bacc_low"]) < 0.88 < float(summary["expl_reg"]["adv_bacc_high"])
    assert summary["expl_reg"]["training"] == "expl_reg(erm)" and summary["expl_reg"]["n_seeds"] == "2"
    assert [m["model"] for m in analysis["pneumoniamnist"]["masking"] if m["flagged"]] == ["expl_reg"]
    text = (tmp_path / "results.md").read_text()
    assert "| robust bacc, PGD | robust bacc, AutoAttack (apgd-ce + square) |" in text
    assert "| expl_reg | 0.880 | 0.500 | +0.380 | +0.385 | **possible gradient masking** |" in text
    assert "The regularised model expl_reg: PGD 0.880, AutoAttack 0.500 (+0.380): **flagged" in text
    assert "| erm | 0.505 | 0.500 | +0.005 | +0.010 | - |" in text
    verdict = analysis["pneumoniamnist"]["compare"][0]["verdict"]
    assert verdict == "moved explanation robustness without classification robustness (on PGD alone: moved both)"
    assert "| +0.200 [+0.100, +0.300] | +0.000 [-0.020, +0.020] | +0.050 [+0.010, +0.090] |" in text


@pytest.mark.slow  # three train.py runs: ~45 CPU s
def test_tiny_study_end_to_end_on_synthetic_data(synthetic_root, tmp_path):
    root = synthetic_root("pneumoniamnist", n_train=48, n_val=16, n_test=24)
    config = yaml.safe_load(QUICK.read_text())
    config["datasets"] = [{"flag": "pneumoniamnist", "size": 28, "root": str(root), "verify_md5": False}]
    config["explanation"] = {"method": "saliency", "k": 40, "steps": 1, "samples": 6}
    config["examples"] = 2
    config["bootstrap"] = 20
    config["autoattack"]["square_queries"] = 20
    config["train"].update({"trainer.max_epochs": 1, "data.batch_size": 16, "trainer.callbacks.init_args.test_steps": 1,
                            "trainer.limit_val_batches": 1})
    del config["train"]["data.subsample_train"]
    config["models"] = {
        "erm": {"config": "configs/erm.yaml"},
        "trades_1": {"config": "configs/trades.yaml",
                     "overrides": {"model.init_args.beta": 1.0, "model.init_args.steps": 1}},
        "expl_reg": {"config": "configs/expl_reg.yaml", "overrides": {"model.init_args.expl_steps": 0}},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    out = tmp_path / "out"
    assert main(["reproduce", str(path), "--out", str(out)]) == 0
    with open(out / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["seed"] for r in rows] == ["0"] * 3 + ["all"] * 3 and rows[3]["aa_bacc"] == rows[0]["aa_bacc"]
    rows = rows[:3]
    assert [r["model"] for r in rows] == ["erm", "trades_1", "expl_reg"]
    assert all(r["aa_attacks"] == "apgd-ce+square" and r["aa_examples"] == "24" for r in rows)  # binary, whole split
    assert all(float(r["aa_bacc"]) == float(r["robust_bacc"]) for r in rows)
    assert [r["training"] for r in rows] == ["erm", "trades", "expl_reg(erm)"] and rows[1]["beta"] == "1.0"
    for row in rows:
        assert 0 <= float(row["expl_topk"]) <= 1 and 0 <= float(row["expl_topk_random"]) <= 1
        assert float(row["adv_bacc"]) <= float(row["clean_bacc"]) + 1e-9 and row["expl_examples"] == "6"
    text = (out / "results.md").read_text()
    assert "Pearson r =" in text and "Fisher z interval" in text and "each the mean over its seeds" in text
    assert "| expl_reg - erm (seed 0) |" in text and "softplus" in text.lower()
    assert "### PGD against AutoAttack" in text and "The regularised model expl_reg: PGD" in text
    compared = next(line for line in text.splitlines() if line.startswith("| expl_reg - erm (seed 0) |"))
    assert compared.split(" | ")[2] != "-"  # Δ AutoAttack bacc from the reports' per-example predictions
    assert (out / "expl_scatter.png").stat().st_size > 0 and (out / "expl_maps.png").stat().st_size > 0
