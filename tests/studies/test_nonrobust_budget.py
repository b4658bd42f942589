"""The nonrobust study's construction budget: `epsilon: auto` parsed and checked with the config, a fixed epsilon
kept exactly, and the budget with the source's assignment share in results.csv and results.md."""
import csv
from pathlib import Path

import pytest

from core.errors import ConfigError
from studies.nonrobust import load as load_study, result_row, write_results
from studies.nonrobust.config import construction_settings

REPO = Path(__file__).resolve().parents[2]
QUICK = REPO / "configs" / "study" / "quick.yaml"


@pytest.fixture(autouse=True)
def at_repo(monkeypatch):
    monkeypatch.chdir(REPO)


def test_epsilon_auto_is_parsed_with_its_search_and_a_fixed_epsilon_is_unchanged():
    study = load_study(QUICK, ["constructions.d_rand.epsilon=auto", "constructions.d_rand.step=null",
                               "constructions.d_rand.leakage=null",
                               "constructions.d_rand.search={grid: [1.0, 0.5, 2.0], target: 0.9, images: 128}"])
    settings, limit = construction_settings("d_rand", study.constructions["d_rand"], study.construction_defaults)
    assert settings.auto and settings.search.grid == (0.5, 1.0, 2.0) and settings.search.target == 0.9
    assert settings.search.images == 128 and settings.steps == 20 and limit == study.construction_defaults["limit"]
    fixed, _ = construction_settings("d_det", study.constructions["d_det"], study.construction_defaults)
    assert (fixed.epsilon, fixed.step, fixed.steps, fixed.scale, fixed.search) == (1.0, 0.2, 20, False, None)


@pytest.mark.parametrize("overrides, message", [
    (["constructions.d_rand.epsilon=auto"], "constructions.d_rand: with epsilon: auto the step follows"),
    (["constructions.d_rand.epsilon=auto", "constructions.d_rand.step=null", "constructions.d_rand.search.target=2",
      "constructions.d_rand.leakage=null"], "constructions.d_rand: search.target must lie in"),
    # quick.yaml's leakage model is trained at L2 1.0 before the search would pick another budget
    (["constructions.d_rand.epsilon=auto", "constructions.d_rand.step=null"],
     "constructions.d_rand: leakage: robust_l2 measures leakage at the budget it was trained at"),
    (["constructions.d_det.search={grid: [1.0]}"], "constructions.d_det: search picks the budget of epsilon: auto"),
    (["constructions.d_nr={source: erm, epsilon: auto}"], "constructions.d_nr: epsilon: auto picks the PGD budget"),
    (["constructions.d_rand.epsilon=-1"], "constructions.d_rand: epsilon must be a positive number"),
])
def test_bad_budgets_fail_when_the_config_is_read(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_study(QUICK, overrides)


def test_the_budget_and_the_sources_share_reach_results_csv_and_md(tmp_path):
    dataset = {"flag": "pneumoniamnist", "size": 28}
    measured = {"measures": {}, "diagnostics": {"train_acc_constructed": 1.0, "budget_l2": 2.0,
                                                "budget_search_assigned": 0.97, "source_assigned_relabelled": 0.964}}
    rows = [result_row(dataset, "d_rand", "constructed", 0, {"metrics": {"test/clean_bacc": 0.6}}, measured,
                       "d_rand")]
    write_results(rows, tmp_path)
    with open(tmp_path / "results.csv") as handle:
        row = next(csv.DictReader(handle))
    assert (row["budget_l2"], row["budget_search_assigned"], row["source_assigned_relabelled"]) == (
        "2.0", "0.97", "0.964")
    markdown = (tmp_path / "results.md").read_text()
    header = next(line for line in markdown.splitlines() if "L2 budget of the perturbation" in line)
    columns = [c.strip() for c in header.strip("|").split("|")]
    values = [c.strip() for c in next(line for line in markdown.splitlines()
                                      if line.startswith("| pneumoniamnist | d_rand | 1.000")).strip("|").split("|")]
    table = dict(zip(columns, values))
    assert table["L2 budget of the perturbation"] == "2.000"
    assert table["source assigns relabelled images to the new label"] == "0.964"
