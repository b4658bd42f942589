"""Exports read back: RobustBench's model_info fields and a Hugging Face model card whose model-index block has a
task, a dataset with its split and metrics with type and value, all equal to the entry's numbers."""
from __future__ import annotations

import json

import pytest
import yaml

from benchmark.cli import main
from benchmark.entry import read_entry
from benchmark.screen import masking_screen
from lightning_modules.metrics import MetricKey

ROBUSTBENCH = {"name", "architecture", "eps", "clean_acc", "additional_data", "number_forward_passes"}


def test_model_info_and_model_card_read_back(quick_entry, tmp_path):
    assert main(["export", str(quick_entry.path), "--out", str(tmp_path)]) == 0
    entry = read_entry(quick_entry.path)
    linf, l2 = entry.metrics("linf"), entry.metrics("l2")
    folder = tmp_path / "model_info" / "breastmnist_28"
    info = json.loads((folder / "Linf" / "tiny-erm.json").read_text())
    assert ROBUSTBENCH | {"autoattack_acc"} <= set(info) and info["eps"] == "8/255"
    assert info["name"] == "tiny-erm" and info["architecture"] == "small_cnn" and info["additional_data"] is False
    assert info["number_forward_passes"] == 1
    assert float(info["clean_acc"]) == pytest.approx(100 * linf[MetricKey("test", "clean", "acc")], abs=0.005)
    assert float(info["autoattack_acc"]) == pytest.approx(100 * linf[MetricKey("test", "aa", "acc", "8_255")], abs=5e-3)
    assert info["medrobust"]["autoattack_bacc"] == linf[MetricKey("test", "aa", "bacc", "8_255")]
    assert info["medrobust"]["protocol"] == entry.protocol_label and info["footnote"].startswith("non-standard")
    info_l2 = json.loads((folder / "L2" / "tiny-erm.json").read_text())
    assert info_l2["eps"] == "0.5"
    assert info_l2["medrobust"]["autoattack_bacc"] == l2[MetricKey("test", "aa", "bacc", "0.5")]
    corruptions = json.loads((folder / "corruptions" / "tiny-erm.json").read_text())
    corr_bacc = linf[MetricKey("test", "corr", "bacc")]
    assert float(corruptions["corruptions_acc"]) == pytest.approx(100 * corr_bacc, abs=5e-3)

    card = (tmp_path / "model_cards" / "tiny-erm" / "README.md").read_text()
    assert card.startswith("---\n")
    front = yaml.safe_load(card.split("---\n")[1])
    (model,) = front["model-index"]
    assert model["name"] == "tiny-erm"
    (result,) = model["results"]
    assert result["task"]["type"] == "image-classification"
    assert result["dataset"]["type"] == "medmnist/breastmnist" and result["dataset"]["split"] == "test"
    assert result["dataset"]["name"]
    values = {m["name"]: m for m in result["metrics"]}
    assert all({"type", "value", "name"} <= set(m) and isinstance(m["value"], float) for m in result["metrics"])
    assert values["clean balanced_accuracy"]["value"] == round(linf[MetricKey("test", "clean", "bacc")], 4)
    l2_bacc = l2[MetricKey("test", "aa", "bacc", "0.5")]
    assert values["AutoAttack balanced_accuracy L2 0.5"]["value"] == round(l2_bacc, 4)


SETTINGS = {"pgd_above_aa": 0.05, "aa_above_pgd": 0.0, "chance_margin": 0.05}


def _threats(pgd: float, aa: float) -> dict:
    return {"linf": {"pgd": {"8_255": {"bacc": pgd}}, "autoattack": {"8_255": {"bacc": aa}}}}


@pytest.mark.parametrize("pgd, aa, large, flagged", [
    (0.60, 0.58, 0.40, []),
    (0.70, 0.50, 0.40, ["PGD is 0.2000 above AutoAttack"]),
    (0.50, 0.52, 0.40, ["AutoAttack is 0.0200 above PGD"]),
    (0.60, 0.58, 0.80, ["above chance 0.5000"]),
])
def test_the_gradient_masking_screen_flags(pgd, aa, large, flagged):
    screen = masking_screen(_threats(pgd, aa), {"label": "128_255", "bacc": large}, 0.5, SETTINGS)
    assert len(screen["flags"]) == len(flagged)
    for flag, says in zip(screen["flags"], flagged):
        assert says in flag
