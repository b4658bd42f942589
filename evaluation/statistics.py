"""The project's interval statistics, one owner each: the bootstrap over test examples (and its paired form), the
interval over seeds, an interval for a correlation across models, and Holm's correction for several endpoints.

Which one a number needs follows from what varies when the experiment is repeated:

- over test examples (one trained model, the test split a sample of patients): `bootstrap`, `paired_bootstrap`;
- over seeds (the seed is the unit of replication: data order, construction and model redrawn together):
  `seed_interval`, a Student-t interval over the per-seed estimates. A percentile bootstrap of 3 seed values
  covers about 79% at a nominal 95% (a resample shrinks their variance by 2/3, and the tails are single seeds);
  tests/evaluation/test_statistics.py simulates both;
- across a handful of models: `correlation_interval` (Fisher z) and `spearman_permutation_p`;
- across several pre-registered endpoints: `holm`, on the p-values dual to those intervals (`seed_p_value`,
  `bootstrap_p_value`).
"""
from __future__ import annotations

import math
from itertools import permutations
from typing import Callable, Sequence, Union

import numpy as np

Seed = Union[int, Sequence[int], np.random.Generator]


# ---- over test examples ---------------------------------------------------------------------------------------
def resample_indices(n_examples: int, draws: int, seed: Seed = 0) -> list[np.ndarray]:
    """`draws` resamples of range(n_examples) with replacement. One `integers` call per draw, in order: cached and
    tested intervals depend on this stream. `seed` is numpy's (an int, a sequence of ints) or a Generator, whose
    stream then continues (two bootstraps in a row from one seed)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, n_examples, n_examples) for _ in range(draws)]


def percentile_interval(values, level: float = 0.95) -> tuple[float, float]:
    """The central `level` percentile interval of bootstrap draws. NaN-safe: a draw where the statistic is undefined
    (a resample holding one class) is left out; no defined draw gives (nan, nan)."""
    values = np.asarray(values, dtype=float)
    if not np.isfinite(values).any():
        return math.nan, math.nan
    tail = round((1 - level) * 50, 12)  # 2.5 for 95%, exactly
    low, high = np.nanpercentile(values, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap(statistic: Callable[[np.ndarray], float], n_examples: int, draws: int = 1000, seed: Seed = 0,
              level: float = 0.95) -> dict:
    """{'value': statistic(every example), 'low', 'high', 'draws'}: the percentile bootstrap over test examples.
    `statistic` takes an index array into the examples (for a model's metric: its score on those examples)."""
    value = float(statistic(np.arange(n_examples)))
    values = np.array([statistic(i) for i in resample_indices(n_examples, draws, seed)], dtype=float)
    low, high = percentile_interval(values, level)
    return {"value": value, "low": low, "high": high, "draws": values}


def paired_bootstrap(statistic_a: Callable[[np.ndarray], float], statistic_b: Callable[[np.ndarray], float],
                     n_examples: int, draws: int = 1000, seed: Seed = 0, level: float = 0.95) -> dict:
    """a - b on the same test examples (two models, or two settings of one): every draw resamples the examples once
    and scores both on it, so what the examples share cancels and the interval is that of the difference."""
    return bootstrap(lambda i: statistic_a(i) - statistic_b(i), n_examples, draws, seed, level)


# ---- over seeds -----------------------------------------------------------------------------------------------
def seed_interval(values, level: float = 0.95) -> dict:
    """{'mean', 'sd', 'low', 'high', 'seeds'}: mean of the per-seed estimates and the Student-t interval
    mean ± t(n - 1) · sd / √n, which keeps its coverage with 3 seeds where a normal quantile or a bootstrap over
    the seeds does not. Seeds without a value (None, NaN) are left out; with fewer than 2 left, the interval is
    (nan, nan): one seed says nothing about the spread over seeds. The test split is the same for every seed, so
    its own sampling error is not in this interval (the per-seed bootstrap over examples gives that part)."""
    from scipy import stats

    x = np.array([v for v in values if v is not None], dtype=float)
    x = x[np.isfinite(x)]
    n = len(x)
    if n == 0:
        return {"mean": math.nan, "sd": math.nan, "low": math.nan, "high": math.nan, "seeds": 0}
    mean = float(x.mean())
    if n < 2:
        return {"mean": mean, "sd": 0.0, "low": math.nan, "high": math.nan, "seeds": 1}
    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf((1 + level) / 2, n - 1)) * sd / math.sqrt(n)
    return {"mean": mean, "sd": sd, "low": mean - half, "high": mean + half, "seeds": n}



def seed_p_value(values, null: float = 0.0) -> float:
    """Two-sided p-value of the one-sample Student t test over per-seed estimates against `null` (chance, or 0 for
    a paired difference): the test dual to `seed_interval` (p <= 1 - level exactly when that interval excludes
    `null`), so Holm's correction can be applied to it. NaN with fewer than 2 seeds; with no spread over seeds, 0
    when every seed differs from `null` and 1 when every seed equals it."""
    from scipy import stats

    x = np.array([v for v in values if v is not None], dtype=float)
    x = x[np.isfinite(x)]
    if len(x) < 2:
        return math.nan
    if float(x.std(ddof=1)) == 0.0:
        return 1.0 if float(x.mean()) == null else 0.0
    return float(stats.ttest_1samp(x, null).pvalue)


def bootstrap_p_value(draws, null: float = 0.0) -> float:
    """Two-sided p-value of bootstrap draws against `null`: twice the smaller share of draws on either side of it,
    counted as (k + 1) / (B + 1) so that B draws never give p = 0 (Davison and Hinkley 1997, eq. 4.11), capped at 1;
    the test dual to `percentile_interval` (p < 1 - level about when that interval excludes `null`). For a one-seed
    study, whose interval is over test examples. NaN when no draw is defined."""
    x = np.asarray(draws, dtype=float)
    x = x[np.isfinite(x)]
    if not len(x):
        return math.nan
    tail = min(np.sum(x <= null), np.sum(x >= null))
    return float(min(1.0, 2 * (tail + 1) / (len(x) + 1)))

# ---- across models --------------------------------------------------------------------------------------------
def correlation_interval(r: float, n: int, level: float = 0.95, spearman: bool = False) -> tuple[float, float]:
    """Fisher z interval of a correlation over n independent pairs: tanh(atanh r ± z · se), se = 1 / √(n - 3)
    (Spearman: √(1.06 / (n - 3)), Fieller, Hartley and Pearson 1957). A bootstrap over 6 models resamples 3 or fewer
    distinct ones a quarter of the time and is far too narrow; (nan, nan) for n <= 3 or an undefined r."""
    from scipy import stats

    if n <= 3 or not math.isfinite(r):
        return math.nan, math.nan
    if abs(r) >= 1:
        return float(r), float(r)
    se = math.sqrt((1.06 if spearman else 1.0) / (n - 3))
    z, q = math.atanh(r), float(stats.norm.ppf((1 + level) / 2))
    return math.tanh(z - q * se), math.tanh(z + q * se)


def spearman_permutation_p(x, y, draws: int = 10000, seed: int = 0) -> float:
    """Two-sided p-value of Spearman's rho against no association, by permuting y: every permutation when there are
    at most `draws` of them (exact, for up to 7 models at the default), else `draws` random ones (with the observed
    one counted, so p > 0). Makes no assumption of normality, which a handful of models cannot check."""
    from scipy.stats import rankdata

    rx, ry = rankdata(np.asarray(x, dtype=float)), rankdata(np.asarray(y, dtype=float))
    rx, ry = rx - rx.mean(), ry - ry.mean()
    scale = math.sqrt((rx ** 2).sum() * (ry ** 2).sum())
    if scale == 0:
        return math.nan
    observed = abs(rx @ ry) / scale
    if math.factorial(len(rx)) <= draws:
        orders = np.array(list(permutations(range(len(ry)))))
        rhos = np.abs(ry[orders] @ rx) / scale
        return float(np.mean(rhos >= observed - 1e-12))
    rng = np.random.default_rng(seed)
    orders = np.argsort(rng.random((draws, len(ry))), axis=1)
    rhos = np.abs(ry[orders] @ rx) / scale
    return float((1 + np.sum(rhos >= observed - 1e-12)) / (draws + 1))


# ---- across endpoints -----------------------------------------------------------------------------------------
def holm(pvalues) -> list[float]:
    """Holm's step-down adjusted p-values (same order as given; NaN stays NaN and is not counted): an endpoint is
    rejected at family-wise level alpha when its adjusted p is <= alpha. Controls the chance of any false verdict
    across the study's primary endpoints without assuming they are independent."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(len(p), math.nan)
    finite = np.flatnonzero(np.isfinite(p))
    m = len(finite)
    order = finite[np.argsort(p[finite], kind="stable")]
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        out[index] = running
    return out.tolist()

