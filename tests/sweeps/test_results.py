"""Curve, Pareto front and selection on validation metrics."""
from __future__ import annotations

import numpy as np
import pytest

from core.errors import ConfigError
from sweeps import select as selection
from sweeps.results import curve, format_curve, pareto_front
from sweeps.spec import load_spec


def row(number, eps, seed, clean, adv, test_clean=0.8, state="COMPLETE"):
    return {"number": number, "state": state, "params": {"method": "pgd_at", "epsilon": eps}, "epsilon": eps,
            "seed": seed, "values": [clean, adv], "run_dir": f"runs/t/trial_{number}", "checkpoint": f"c{number}.ckpt",
            "report": None, "best_epoch": 0, "retry_of": None, "failure": None, "point": f"grid:{number}",
            "val": {"val/clean_bacc": clean, "val/adv_bacc@4_255": adv},
            "test": {"test/clean_bacc": test_clean, "test/adv_bacc@4_255": adv - 0.05}}


ROWS = [row(0, 0.0, 0, 0.90, 0.20), row(1, 0.0, 1, 0.88, 0.22), row(2, 4 / 255, 0, 0.86, 0.60),
        row(3, 4 / 255, 1, 0.84, 0.64), row(4, 8 / 255, 0, 0.80, 0.70), row(5, 8 / 255, 1, 0.0, 0.0, state="FAIL")]


@pytest.fixture
def spec(tiny_sweep):
    return load_spec(tiny_sweep(epsilon=[0, "4/255", "8/255"], seeds=[0, 1]))


def test_curve_averages_seeds_per_epsilon(spec):
    table = curve(ROWS, spec)
    assert [e["epsilon_label"] for e in table] == ["0", "4/255", "8/255"]
    assert [e["seeds"] for e in table] == [2, 2, 1]  # the failed trial is left out
    assert table[1]["val/clean_bacc"] == pytest.approx(0.85) and table[1]["val/clean_bacc:min"] == pytest.approx(0.84)
    assert table[0]["val/adv_bacc@4_255:std"] == pytest.approx(np.std([0.20, 0.22], ddof=1))
    text = format_curve(table, ["val/clean_bacc", "test/adv_bacc@4_255"])
    assert "| 4/255 | 2 | 0.850 ± 0.014 | 0.570 ± 0.028 |" in text


def test_pareto_front():
    points = [[0.9, 0.2], [0.85, 0.6], [0.8, 0.7], [0.8, 0.5], [0.7, 0.7]]
    assert pareto_front(points, ["maximize", "maximize"]) == [0, 1, 2]
    assert pareto_front(points, ["maximize", "minimize"]) == [0]


def test_select_uses_validation_means_and_constraints(spec):
    choice = selection.choose(ROWS, spec, [("val/clean_bacc", "min", 0.85)], ("val/adv_bacc@4_255", "maximize"))
    assert choice.point["epsilon_label"] == "4/255"  # 8/255 is more robust but fails the clean constraint
    assert choice.trial["number"] == 3  # the point's seed with the best validation robustness
    assert selection.choose(ROWS, spec, [("val/clean_bacc", "min", 0.95)], None) is None
    with pytest.raises(ConfigError, match="unknown metric val/corr_bacc"):
        selection.choose(ROWS, spec, [("val/corr_bacc", "min", 0.5)], None)
    with pytest.raises(ConfigError, match="select chooses on validation metrics"):
        selection.parse_constraint("test/clean_bacc=0.8", "min")
    assert selection.parse_constraint("adv_bacc@4/255=0.5", "min") == ("val/adv_bacc@4_255", "min", 0.5)
