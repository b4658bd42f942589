"""The study framework: every study kind is a Study that `python -m studies` loads and runs, and the nonrobust study's
model roles come from its config."""
from pathlib import Path

import pytest

from core.errors import ConfigError
from studies import framework
from studies.nonrobust import DIFFERENCE, corruption_cells, findings, load, result_row

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def at_repo(monkeypatch):
    monkeypatch.chdir(REPO)


@pytest.mark.parametrize("config", ["quick", "explanations_quick", "positive_control"])
def test_each_shipped_kind_loads_as_a_study(config):
    study = framework.load(REPO / "configs" / "study" / f"{config}.yaml")
    assert isinstance(study, framework.Study) and study.DESCRIPTION and study.name == config


def test_an_unknown_kind_is_one_line(tmp_path):
    config = tmp_path / "s.yaml"
    config.write_text("study: nosuch\n")
    with pytest.raises(ConfigError, match="unknown study 'nosuch'.*choose from nonrobust_features"):
        framework.load(config)


def test_roles_default_to_erm_and_pgd_at_and_are_checked():
    quick = REPO / "configs" / "study" / "quick.yaml"
    assert load(quick).roles == {"standard": "erm", "robust": "pgd_at"}
    assert load(quick, ["roles={robust: erm}"]).roles == {"standard": "erm", "robust": "erm"}
    with pytest.raises(ConfigError, match="roles.robust must name one of the models"):
        load(quick, ["roles={robust: nobody}"])
    with pytest.raises(ConfigError, match="roles takes standard, robust"):
        load(quick, ["roles={victim: erm}"])


def test_finding_2_compares_the_models_the_roles_name():
    """Named roles pick the pair finding 2 compares: with standard=base and robust=tough, the text names them."""
    dataset = {"flag": "pneumoniamnist", "size": 28}
    rows = [result_row(dataset, m, "real", 0, {"metrics": {"test/clean_bacc": c}}) for m, c in
            (("base", 0.9), ("tough", 0.8), ("erm", 0.7), ("pgd_at", 0.6))]
    for row, corr in zip(rows, (0.5, 0.7, 0.1, 0.2)):
        row["corr_bacc"] = corr
    text = findings(rows, roles={"standard": "base", "robust": "tough"})
    assert "base -> tough: clean 0.900 -> 0.800" in text and "point estimates only (descriptive" in text
    assert "ERM -> PGD-AT: clean 0.700 -> 0.600" in findings(rows)
    assert DIFFERENCE == "pgd_at - erm" and corruption_cells({}) == {}


def test_dataset_option_runs_one_of_the_configs_datasets_as_the_config_gives_it(tmp_path, monkeypatch, capsys):
    """`--dataset breastmnist` runs the config's own BreastMNIST entry (its epochs and models), nothing else; a flag
    the config lacks is one error line."""
    from studies import cli
    from studies.nonrobust.config import Study

    ran = []
    monkeypatch.setattr(Study, "reproduce", lambda study, out, log: ran.append(study.datasets) or [])
    cli.reproduce(REPO / "configs" / "study" / "quick.yaml", tmp_path, datasets=["BreastMNIST"])
    [[entry]] = ran
    assert entry["flag"] == "breastmnist" and entry["train"] == {"trainer.max_epochs": 30}
    assert "pgd_at_eps05" in entry["models"] and "pgd_at_eps8" not in entry["models"]
    assert cli.main(["reproduce", str(REPO / "configs/study/quick.yaml"), "--out", str(tmp_path), "--dataset",
                     "octmnist"]) == 2
    assert capsys.readouterr().err.strip() == ("error: --dataset octmnist: not among the config's datasets "
                                               "(breastmnist, pneumoniamnist)")
