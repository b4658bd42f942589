"""`python -m bench all` has the benchmark-protocol row: one evaluation against its parts run separately (goal <= 1x);
the smoke run (slow) measures both on a tiny checkpoint and counts the images through the model beside the time."""
from __future__ import annotations

import pytest

from bench import protocol_cost
from bench.__main__ import FIGURES, run_all


def test_the_protocol_row_is_registered_and_judged_on_the_time_ratio(monkeypatch, tmp_path):
    def measured(args):
        ratios = [0.7, 0.8, 0.9][: args.repeats]
        return {"figure": protocol_cost.figure(protocol_cost.NAME, ratios, 1.0, higher_is_better=False,
                                               details={"cpu_s": {"protocol": {"median": 1.0},
                                                                  "parts": {"median": 1.25}},
                                                        "images": {"protocol": 10, "parts": 12}})}

    monkeypatch.setattr(protocol_cost, "measure", measured)
    assert "protocol" in FIGURES
    (row,) = run_all(["protocol"], root=str(tmp_path), verify_md5=False, quick=True, smoke=False, workdir=tmp_path,
                     log=lambda line: None)
    assert row["name"] == protocol_cost.NAME and row["benchmark"] == "protocol"
    assert row["goal"] == "<= 1x" and row["ratio"] == 0.8 and row["met"] is True


@pytest.mark.slow
def test_protocol_cost_smoke_measures_both_variants():
    result = protocol_cost.measure(protocol_cost.parse_args(["--repeats", "1", "--warmup", "1"]))
    row = result["figure"]
    (round_,) = result["rounds"]
    assert row["ratio"] == pytest.approx(round_["protocol"]["cpu"] / round_["parts"]["cpu"])
    assert set(round_["parts"]["by_part"]) == set(protocol_cost.PARTS)
    assert all(part["cpu"] > 0 for part in round_["parts"]["by_part"].values())
    assert row["details"]["images"]["protocol"] > 0 and row["details"]["images"]["parts"] > 0
    assert isinstance(row["met"], bool)
