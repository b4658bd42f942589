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
from studies.explanations import Study, correlation, load as load_study

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


@pytest.mark.slow  # three train.py runs: ~45 CPU s
def test_tiny_study_end_to_end_on_synthetic_data(synthetic_root, tmp_path):
    root = synthetic_root("pneumoniamnist", n_train=48, n_val=16, n_test=24)
    config = yaml.safe_load(QUICK.read_text())
    config["datasets"] = [{"flag": "pneumoniamnist", "size": 28, "root": str(root), "verify_md5": False}]
    config["explanation"] = {"method": "saliency", "k": 40, "steps": 1, "samples": 6}
    config["examples"] = 2
    config["bootstrap"] = 20
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
    assert [r["model"] for r in rows] == ["erm", "trades_1", "expl_reg"]
    assert [r["training"] for r in rows] == ["erm", "trades", "expl_reg(erm)"] and rows[1]["beta"] == "1.0"
    for row in rows:
        assert 0 <= float(row["expl_topk"]) <= 1 and 0 <= float(row["expl_topk_random"]) <= 1
        assert float(row["adv_bacc"]) <= float(row["clean_bacc"]) + 1e-9 and row["expl_examples"] == "6"
    text = (out / "results.md").read_text()
    assert "Pearson r =" in text and "Fisher z interval" in text and "each the mean over its seeds" in text
    assert "| expl_reg - erm (seed 0) |" in text and "softplus" in text.lower()
    assert (out / "expl_scatter.png").stat().st_size > 0 and (out / "expl_maps.png").stat().st_size > 0
