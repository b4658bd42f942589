"""The positive control's interval over seeds is a Student-t interval: with 3 seeds its quantile is 4.303 (95%),
not the normal 1.960, and the control's verdicts are read from it."""
import math

import pytest

from studies import measures
from studies.nonrobust.leakage import NET
from studies.positive_control import failures, over_seeds, summarise

# Student t quantiles with 2 degrees of freedom, from the printed tables: t(0.975; 2), t(0.95; 2)
T_2 = {0.95: 4.302653, 0.90: 2.919986}


@pytest.mark.parametrize("level", sorted(T_2))
def test_three_seeds_give_the_hand_computed_t_interval(level):
    got = over_seeds([0.6, 0.7, 0.8], level)
    half = T_2[level] * 0.1 / math.sqrt(3)  # sd 0.1 over 3 seeds
    assert got["mean"] == pytest.approx(0.7) and got["sd"] == pytest.approx(0.1) and got["seeds"] == 3
    assert (got["low"], got["high"]) == pytest.approx((0.7 - half, 0.7 + half), abs=1e-5)
    assert got["values"] == pytest.approx([0.6, 0.7, 0.8])


def _rows(values):
    """Per-seed results rows of the D_rand model (each with an interval over test examples, unused over seeds)."""
    return [{"seed": s, "auroc": v, "auroc_low": v - 0.01, "auroc_high": v + 0.01, NET: v, f"{NET}_low": v - 0.01,
             f"{NET}_high": v + 0.01} for s, v in enumerate(values)]


def test_verdicts_over_three_seeds_are_read_from_the_t_interval():
    """Net AUROC 0.6, 0.7, 0.8 over 3 seeds: above chance under a normal quantile ([0.587, 0.813]), undecided under
    the t quantile ([0.452, 0.948]): a pattern arm with these numbers is not detected, and a control arm with them
    does not read as finding 1 (the per-seed intervals over test examples are not what is read)."""
    summary = summarise(_rows([0.6, 0.7, 0.8]), 0.95, over_seeds=True)
    half = T_2[0.95] * 0.1 / math.sqrt(3)
    assert (summary[NET]["low"], summary[NET]["high"]) == pytest.approx((0.7 - half, 0.7 + half), abs=1e-5)
    assert summary[NET]["verdict"] == summary["auroc"]["verdict"] == measures.UNDECIDED
    got = failures({0.0: {"summary": summary}, 2 / 255: {"summary": summary}}, 2 / 255)
    assert len(got) == 1 and "not seen where it is true" in got[0], got
    # one seed: the bootstrap interval over test examples is read instead
    one = summarise(_rows([0.7]), 0.95, over_seeds=False)
    assert (one[NET]["low"], one[NET]["high"]) == pytest.approx((0.69, 0.71)) and one[NET]["verdict"] == measures.HOLDS
