"""The positive control's interval over seeds is a Student-t interval: with 3 seeds its quantile is 4.303 (95%),
not the normal 1.960, and the control's verdicts (and its paired gain over the control arm) are read from it."""
import math

import pytest

from studies import measures
from studies.positive_control import failures, over_seeds, pattern_gain

# Student t quantiles with 2 degrees of freedom, from the printed tables: t(0.975; 2), t(0.95; 2)
T_2 = {0.95: 4.302653, 0.90: 2.919986}


@pytest.mark.parametrize("level", sorted(T_2))
def test_three_seeds_give_the_hand_computed_t_interval(level):
    got = over_seeds([0.6, 0.7, 0.8], level)
    half = T_2[level] * 0.1 / math.sqrt(3)  # sd 0.1 over 3 seeds
    assert got["mean"] == pytest.approx(0.7) and got["sd"] == pytest.approx(0.1) and got["seeds"] == 3
    assert (got["low"], got["high"]) == pytest.approx((0.7 - half, 0.7 + half), abs=1e-5)
    assert got["values"] == pytest.approx([0.6, 0.7, 0.8])


def _arm(test, probe):
    seeds = [{"seed": s, "d_rand": {"construction": {}}} for s in range(len(test))]
    return {"seeds": seeds, "level": 0.95, "n_train": 512,
            "summary": {"test": over_seeds(test, 0.95), "pattern_only": over_seeds(probe, 0.95),
                        "bar_only": over_seeds([0.5] * len(test), 0.95)}}


def test_verdicts_over_three_seeds_are_read_from_the_t_interval():
    """AUROC 0.6, 0.7, 0.8 over 3 seeds: above chance under a normal quantile ([0.587, 0.813]), undecided under the
    t quantile ([0.452, 0.948]); the same for a paired gain of 0.05, 0.15, 0.25 over the control arm."""
    assert over_seeds([0.6, 0.7, 0.8], 0.95)["verdict"] == measures.UNDECIDED
    arms = {"pattern": _arm([0.6, 0.7, 0.8], [0.95, 0.97, 0.99]), "control": _arm([0.55, 0.55, 0.55], [0.5] * 3)}
    gain = pattern_gain(arms)
    assert gain["mean"] == pytest.approx(0.15) and gain["low"] == pytest.approx(0.15 - T_2[0.95] * 0.1 / math.sqrt(3),
                                                                                  abs=1e-5)
    got = failures(arms)
    assert len(got) == 2, got
    assert any("test AUROC" in f and "not above chance" in f for f in got)
    assert any("does not come from the nonrobust pattern" in f for f in got)
