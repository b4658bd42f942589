"""The seed entries' plan: every model of the config on each dataset and seed, BreastMNIST first, the baseline's first
seed evaluated as its own mCE baseline before the entries measured against it, the site built last."""
from __future__ import annotations

from pathlib import Path

import pytest

from benchmark import seed_entries
from core.errors import ConfigError


def test_the_plan_trains_then_evaluates_each_seed_model_against_the_baseline(tmp_path):
    config = seed_entries.read_config()
    steps = seed_entries.plan(tmp_path, "data", config)
    models, seeds = list(config["models"]), config["seeds"]
    assert len(steps) == 2 * len(models) * len(seeds) * len(config["datasets"]) + 1 and steps[-1].id == "build"
    assert config["datasets"][0] == "breastmnist" and steps[0].id == "train-erm-breastmnist-seed0"
    assert {"erm", "pgd_at", "trades", "fgsm_rs", "expl_reg", "lora"} <= set(models) and seeds == [0, 1, 2]
    by_id = {step.id: step.command for step in steps}
    own = by_id["evaluate-erm-breastmnist-seed0"]
    assert own[own.index("--baseline") + 1] == "self" and own[own.index("--protocol") + 1] == "breastmnist_28"
    other = by_id["evaluate-trades-pneumoniamnist-seed2"]
    baseline = Path(other[other.index("--baseline") + 1])
    assert baseline == tmp_path / "entries" / "pneumoniamnist" / "erm-pneumoniamnist-seed0.entry.json"
    assert [s.id for s in steps].index("evaluate-erm-pneumoniamnist-seed0") < \
        [s.id for s in steps].index("evaluate-trades-pneumoniamnist-seed2")
    train = by_id["train-fgsm_rs-breastmnist-seed1"]
    assert train[train.index("--seed_everything") + 1] == "1" and train[train.index("--config") + 1].endswith(
        "fgsm_rs.yaml")


def test_a_config_whose_baseline_is_not_a_model_is_refused(tmp_path):
    path = tmp_path / "seed.yaml"
    path.write_text("datasets: [breastmnist]\nsize: 28\nseeds: [0]\nbaseline: erm\nmodels: {trades: configs/x.yaml}\n")
    with pytest.raises(ConfigError, match="baseline 'erm' is not one of its models"):
        seed_entries.read_config(path)
