"""evaluation.statistics: intervals over seeds keep their coverage with 3, 5 and 10 seeds (and the percentile
bootstrap over 3 seed values does not), the bootstrap over examples and its paired form, Fisher z, the Spearman
permutation test and Holm's correction."""
import math

import numpy as np
import pytest

from evaluation.statistics import (
    bootstrap, correlation_interval, holm, paired_bootstrap, percentile_interval, resample_indices, seed_interval,
    spearman_permutation_p,
)

TRUE_EFFECT, SEED_SD, STUDIES = 0.70, 0.10, 4000  # 4,000 studies: coverage to about ±0.7 points (2 SE)


def simulated_studies(seeds: int, studies: int = STUDIES, seed: int = 0) -> np.ndarray:
    """studies x seeds per-seed estimates of a measure whose true value is TRUE_EFFECT (a seed's model, data order
    and construction redrawn: normal noise of sd SEED_SD around it)."""
    return np.random.default_rng([seed, seeds]).normal(TRUE_EFFECT, SEED_SD, (studies, seeds))


def coverage(intervals) -> float:
    """Share of (low, high) intervals that contain the true effect."""
    lows, highs = np.array(intervals, dtype=float).T
    return float(np.mean((lows <= TRUE_EFFECT) & (TRUE_EFFECT <= highs)))


def t_intervals(studies: np.ndarray) -> list[tuple[float, float]]:
    return [(s["low"], s["high"]) for s in map(seed_interval, studies)]


def seed_bootstrap_intervals(studies: np.ndarray, draws: int = 1000) -> list[tuple[float, float]]:
    """The study's former interval over seeds: a percentile bootstrap that resamples the seed values with
    replacement (draws x seeds picks, the draw's value the mean of the picked seeds), vectorised over studies."""
    rng = np.random.default_rng(1)
    n, seeds = studies.shape
    picks = rng.integers(0, seeds, (n, draws, seeds))
    means = np.take_along_axis(studies[:, None, :].repeat(draws, 1), picks, axis=2).mean(axis=2)
    return [percentile_interval(row) for row in means]


@pytest.mark.parametrize("seeds", [3, 5, 10])
def test_the_t_interval_over_seeds_keeps_its_coverage(seeds):
    assert 0.93 <= coverage(t_intervals(simulated_studies(seeds))) <= 0.97


def test_the_percentile_bootstrap_over_three_seeds_undercovers():
    """Why the t interval: resampling 3 values shrinks their variance by 2/3 and its tails are single seeds."""
    assert coverage(seed_bootstrap_intervals(simulated_studies(3))) < 0.88


def test_seed_interval_by_hand_and_with_too_few_seeds():
    got = seed_interval([0.6, 0.7, 0.8])
    half = 4.302652729911275 * 0.1 / math.sqrt(3)  # t(0.975, 2 dof) from tables
    assert got["mean"] == pytest.approx(0.7) and got["sd"] == pytest.approx(0.1) and got["seeds"] == 3
    assert (got["low"], got["high"]) == pytest.approx((0.7 - half, 0.7 + half))
    one = seed_interval([0.6, None, float("nan")])  # seeds without a value are left out
    assert one["mean"] == 0.6 and one["seeds"] == 1 and math.isnan(one["low"]) and math.isnan(one["high"])
    assert seed_interval([])["seeds"] == 0


def test_resamples_are_seeded_and_keep_their_stream():
    a, b = resample_indices(7, 3, seed=5), resample_indices(7, 3, seed=5)
    assert all((x == y).all() for x, y in zip(a, b)) and all(len(x) == 7 and x.max() < 7 for x in a)
    rng = np.random.default_rng(5)  # a Generator continues: two bootstraps in a row draw the stream in order
    first, second = resample_indices(7, 2, rng), resample_indices(7, 1, rng)
    assert all((x == y).all() for x, y in zip(first + second, a))


def test_bootstrap_over_examples_and_nan_draws():
    values = np.random.default_rng(0).normal(1.0, 1.0, 400)
    got = bootstrap(lambda i: values[i].mean(), len(values), draws=500, seed=0)
    assert got["value"] == pytest.approx(values.mean()) and len(got["draws"]) == 500
    se = values.std(ddof=1) / math.sqrt(len(values))
    assert got["high"] - got["low"] == pytest.approx(2 * 1.96 * se, rel=0.15)
    assert percentile_interval([np.nan, 1.0, 2.0, 3.0], 0.5) == pytest.approx((1.5, 2.5))  # NaN draws left out
    assert all(math.isnan(v) for v in percentile_interval([np.nan, np.nan]))


def test_paired_bootstrap_cancels_what_the_examples_share():
    rng = np.random.default_rng(0)
    difficulty = rng.normal(0, 1, 300)  # shared by both models: large between examples
    a, b = difficulty + 0.2 + rng.normal(0, 0.05, 300), difficulty + rng.normal(0, 0.05, 300)
    paired = paired_bootstrap(lambda i: a[i].mean(), lambda i: b[i].mean(), 300, draws=400, seed=1)
    assert paired["value"] == pytest.approx(a.mean() - b.mean())
    assert 0.18 < paired["low"] < 0.2 < paired["high"] < 0.22  # narrow: the examples' difficulty cancels
    unpaired_a = bootstrap(lambda i: a[i].mean(), 300, 400, seed=1)
    unpaired_b = bootstrap(lambda i: b[i].mean(), 300, 400, seed=2)
    unpaired = unpaired_a["draws"] - unpaired_b["draws"]
    assert np.ptp(percentile_interval(unpaired)) > 5 * (paired["high"] - paired["low"])


def test_fisher_z_interval_by_hand():
    # r = 0.8 over 10 models: z = atanh(0.8) = 1.098612, se = 1 / sqrt(7) = 0.377964, 1.959964 * se = 0.740794
    assert correlation_interval(0.8, 10) == pytest.approx((math.tanh(0.357818), math.tanh(1.839406)), abs=1e-5)
    assert correlation_interval(0.8, 10) == pytest.approx((0.34329, 0.95074), abs=1e-4)
    # the explanation study's case: r = 0.96 over 6 models is about [0.69, 1.00], not a bootstrap's [0.91, 1.00]
    low, high = correlation_interval(0.96, 6)
    assert 0.6 < low < 0.75 and high > 0.99
    spearman = correlation_interval(0.8, 10, spearman=True)
    assert spearman[0] < 0.34329 and spearman[1] > 0.95074  # Fieller's wider standard error
    assert all(math.isnan(v) for v in correlation_interval(0.9, 3))


def test_spearman_permutation_p():
    x = np.arange(6.0)
    assert spearman_permutation_p(x, x) == pytest.approx(2 / math.factorial(6))  # exact: only +-1 as extreme
    assert spearman_permutation_p(x, x[::-1]) == pytest.approx(2 / math.factorial(6))
    assert spearman_permutation_p(x, [0, 5, 1, 4, 2, 3]) > 0.5
    many = np.arange(12.0)
    assert spearman_permutation_p(many, many, draws=2000) == pytest.approx(1 / 2001)  # sampled: observed counted
    assert math.isnan(spearman_permutation_p(x, np.ones(6)))


def test_holm_by_hand():
    # sorted 0.01, 0.02, 0.03, 0.04 (m = 4): 4 * 0.01 = 0.04, 3 * 0.02 = 0.06, 2 * 0.03 = 0.06, 1 * 0.04 = 0.04 -> 0.06
    assert holm([0.03, 0.01, 0.04, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    got = holm([0.01, float("nan"), 0.04])
    assert got[0] == pytest.approx(0.02) and math.isnan(got[1]) and got[2] == pytest.approx(0.04)


def test_holm_agrees_with_statsmodels():
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    p = np.random.default_rng(0).uniform(0, 0.1, 9)
    assert holm(p) == pytest.approx(multitest.multipletests(p, method="holm")[1])


def test_bootstrap_p_value_counts_the_observed_sample_and_is_never_zero():
    """(k + 1) / (B + 1) per tail: 999 draws all above the null give p = 2 / 1000, not 0 (a reported p = 0 would
    claim more than 999 resamples can show); draws straddling the null give the two-sided share."""
    from evaluation.statistics import bootstrap_p_value

    assert bootstrap_p_value(np.linspace(0.6, 0.9, 999), 0.5) == pytest.approx(2 / 1000)
    assert bootstrap_p_value(np.arange(-49.0, 50.0), 0.0) == pytest.approx(1.0)  # 49 + 1 below, 49 + 1 above
    assert bootstrap_p_value(np.concatenate([np.full(9, -1.0), np.full(90, 1.0)]), 0.0) == pytest.approx(0.2)
    assert math.isnan(bootstrap_p_value([math.nan], 0.0))
