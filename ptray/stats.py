"""Seed-stability statistics over per-seed results.

Pure functions (numpy + scipy.stats only; no Ray, no MLflow) so they can be
unit-tested against independent computations and reused on results that were
loaded back from any tracking store. They sit in the bottom layer
(docs/architecture.md): the results and MLflow layer aggregates seeds with
them, the report above it compares configs with them.

Conventions shared by every function here:

* Inputs are 1-D sequences of per-seed report-metric values (higher is
  better, e.g. accuracy). ``NaN`` (or ``None``/``inf``) marks a seed whose
  run failed: it crashed, diverged or never wrote a result, and has no score.
* Outputs are plain Python ``int``/``float`` values (or numpy arrays for
  curves) so a summary dict can be logged as metrics as-is. Statistics that are
  undefined for the data at hand are ``nan`` rather than an exception: a sweep
  where most seeds failed must still be summarised.

What the statistics are over (:func:`summarize`): every seed that finished,
whatever its score. A failed seed has no score: it is counted (``n_failed``),
never averaged. A finished seed at or below the majority-class baseline (its
prompt learned nothing better than always predicting the most frequent label)
is the instability a seed study measures: it stays in the statistics and is
also counted beside them (``n_at_majority``), as the "failed runs" of the
fine-tuning stability literature are reported beside the statistics over all
runs (Mosbach et al. 2021, Dodge et al. 2020). Statistics over the other
finished seeds alone are a secondary view, every key suffixed
``_nondegenerate``.

Small samples: with fewer than :data:`MIN_SEEDS` finished seeds on a side no
interval and no test is computed (``nan``). A test whose input is degenerate
(every seed of both groups scores the same, or lies equally far from its
group's centre) is ``nan`` too, where scipy would divide by zero and answer
p = 0.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from typing import Iterable, Sequence

import numpy as np
from scipy import stats as _st

__all__ = [
    "ALPHA",
    "CI_METHOD",
    "MAX_SEEDS",
    "MIN_SEEDS",
    "NONDEGENERATE",
    "POWER",
    "SUMMARY_STATISTICS",
    "at_or_below",
    "compare",
    "expected_max_performance",
    "majority_baseline",
    "seeds_to_detect_difference",
    "seeds_to_detect_std_ratio",
    "summarize",
]

#: Bootstrap CI method of the std ratio. Percentile rather than BCa because
#: BCa's jackknife acceleration is undefined/unstable for the handful of seeds
#: (and the ties, e.g. identical accuracies) typical of seed studies.
CI_METHOD = "percentile"

#: Fewest finished seeds per side for an interval or a test. A bootstrap of two
#: values, or a Levene test on two per group (each value is as far from the
#: pair's centre as the other: p = 0), says nothing about the population.
MIN_SEEDS = 3

#: Level of every test and interval (95%), and the power the seed counts of
#: :func:`seeds_to_detect_difference` / :func:`seeds_to_detect_std_ratio` aim at.
ALPHA = 0.05
POWER = 0.8

#: Power estimates search up to this many seeds per config; beyond: ``inf``.
MAX_SEEDS = 1000

#: The statistics :func:`summarize` gives over the finished seeds; with the
#: :data:`NONDEGENERATE` suffix, the same over those above the majority class.
SUMMARY_STATISTICS = ("mean", "std", "median", "iqr", "min", "max", "ci95_low", "ci95_high")
NONDEGENERATE = "_nondegenerate"

# Values within this distance above the majority baseline still count as "at"
# the baseline: accuracies computed as count/total in different places can
# differ in the last bits.
_BASELINE_ATOL = 1e-9

# Seeds whose values differ by less than this (relative) are tied: float noise
# must not turn a zero variance into a tiny one that a test divides by.
_TIE_RTOL = 1e-12

_NAN = float("nan")


def _as_1d_float(values: Iterable[float] | np.ndarray, name: str) -> np.ndarray:
    # dtype=float turns None into nan, which is how callers may mark failed seeds.
    arr = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D per-seed values, got shape {arr.shape}")
    return arr


def _flags(flags: Sequence[bool] | np.ndarray | None, like: np.ndarray, name: str) -> np.ndarray:
    if flags is None:
        return np.zeros(like.shape, dtype=bool)
    arr = np.asarray(flags, dtype=bool)
    if arr.shape != like.shape:
        raise ValueError(f"{name} has shape {arr.shape}, values has shape {like.shape}")
    return arr


def _f(x) -> float:
    """Plain Python float (numpy scalars do not survive every JSON/MLflow path)."""
    return float(x)


def _describe(x: np.ndarray) -> dict:
    """The :data:`SUMMARY_STATISTICS` of finished seeds' values.

    The CI of the mean is Student's t interval, from :data:`MIN_SEEDS` values. Not a percentile bootstrap: with a
    handful of seeds that is about the observed range (3 seeds: the range, which holds the mean of normal seeds 75% of
    the time, not 95%), while the t interval widens with the t quantile as a few seeds warrant.
    """
    if x.size == 0:
        return dict.fromkeys(SUMMARY_STATISTICS, _NAN)
    lo, hi = _NAN, _NAN
    if x.size >= MIN_SEEDS:
        ci = _quiet(_st.ttest_1samp, x, 0.0).confidence_interval(1 - ALPHA)  # tied seeds: a point, not an error
        lo, hi = _f(ci.low), _f(ci.high)
    return {
        "mean": _f(np.mean(x)),
        "std": _f(np.std(x, ddof=1)) if x.size > 1 else _NAN,
        "median": _f(np.median(x)),
        "iqr": _f(_st.iqr(x)),
        "min": _f(np.min(x)),
        "max": _f(np.max(x)),
        "ci95_low": lo,
        "ci95_high": hi,
    }


def summarize(
    values: Sequence[float] | np.ndarray,
    failed: Sequence[bool] | np.ndarray | None = None,
    at_majority: Sequence[bool] | np.ndarray | None = None,
) -> dict:
    """Summarise one configuration's per-seed report metric (see the module docstring for what counts).

    Args:
        values: per-seed metric values; NaN/None/inf for a failed seed.
        failed: optional boolean flags (same length) for seeds known to have
            failed even though they reported a value.
        at_majority: optional boolean flags (same length) for seeds that ended
            at or below the majority-class baseline (:func:`at_or_below` on
            their accuracy; one mask serves every metric of a seed). None when
            no baseline applies: then nothing is known to be degenerate and
            the majority counts and the secondary view are NaN.

    Returns:
        dict with ``n_seeds``, ``n_failed`` and ``failure_rate`` (failed seeds
        over all), ``n_ok`` (the finished seeds: the n of every statistic) and,
        over them, ``mean``, ``std`` (ddof=1), ``median``, ``iqr`` (Q3-Q1,
        ``scipy.stats.iqr``), ``min`` (worst seed), ``max``,
        ``ci95_low``/``ci95_high`` (95% t interval of the mean);
        ``n_at_majority`` and ``majority_rate`` (finished seeds at or below the
        majority class, over all seeds); ``n_nondegenerate`` and every
        statistic again with the ``_nondegenerate`` suffix, over the finished
        seeds above the majority class. With no finished seed every statistic
        is NaN; with one, ``std`` and the CI; with fewer than MIN_SEEDS, the CI.
    """
    v = _as_1d_float(values, "values")
    bad = ~np.isfinite(v) | _flags(failed, v, "failed")
    n_seeds, n_failed = int(v.size), int(bad.sum())
    out = {
        "n_seeds": n_seeds,
        "n_ok": n_seeds - n_failed,
        "n_failed": n_failed,
        "failure_rate": _f(n_failed / n_seeds) if n_seeds else _NAN,
        **_describe(v[~bad]),
    }
    if at_majority is None:
        out.update(n_at_majority=_NAN, majority_rate=_NAN, n_nondegenerate=_NAN,
                   **{k + NONDEGENERATE: _NAN for k in SUMMARY_STATISTICS})
        return out
    low = _flags(at_majority, v, "at_majority") & ~bad
    above = v[~bad & ~low]
    out.update(n_at_majority=int(low.sum()), majority_rate=_f(low.sum() / n_seeds) if n_seeds else _NAN,
               n_nondegenerate=int(above.size),
               **{k + NONDEGENERATE: x for k, x in _describe(above).items()})
    return out


def at_or_below(
    accuracy: Sequence[float] | np.ndarray,
    baseline: float | Sequence[float] | np.ndarray,
) -> np.ndarray:
    """Boolean mask of the seeds whose accuracy is at or below the majority-class ``baseline``.

    ``baseline`` is one majority-class accuracy for all seeds, or one per seed
    (seeds evaluated on different report subsets); a NaN on either side flags
    nothing (a failed seed has no accuracy to judge).
    """
    a = _as_1d_float(accuracy, "accuracy")
    with np.errstate(invalid="ignore"):
        return a <= np.asarray(baseline, dtype=float) + _BASELINE_ATOL


def expected_max_performance(
    values: Sequence[float] | np.ndarray,
    n_max: int | None = None,
    return_std: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Expected best score over ``n`` runs, for n = 1..n_max (Dodge et al. 2019).

    "Show Your Work" expected validation performance: treating the observed
    seeds as the empirical distribution and drawing ``n`` runs with
    replacement, with sorted values v_(1) <= ... <= v_(N),

        E[max_n] = sum_i v_(i) * ((i/N)^n - ((i-1)/N)^n)

    (the bracket is P(max of n draws = v_(i)); ties telescope correctly).
    It equals the mean at n=1, is non-decreasing in n and tends to the
    observed max.

    Non-finite values (failed seeds) are dropped. If failed runs should count
    against a configuration, substitute a value for them first (e.g. the
    majority baseline) - otherwise a config that often diverges looks as good
    as its survivors.

    Args:
        values: per-seed metric values.
        n_max: largest number of runs; defaults to the number of finite values.
            May exceed it (sampling is with replacement).
        return_std: also return the std of the max of n draws,
            sqrt(E[max_n^2] - E[max_n]^2), for a shaded band.

    Returns:
        array of length ``n_max`` (``E[max_1] .. E[max_n_max]``), or a tuple
        ``(expected, std)`` when ``return_std``. All-NaN if no finite value.
    """
    v = _as_1d_float(values, "values")
    v = np.sort(v[np.isfinite(v)])
    n_vals = v.size
    if n_max is None:
        n_max = n_vals
    n_max = int(n_max)
    if n_max < 0:
        raise ValueError(f"n_max must be >= 0, got {n_max}")
    if n_vals == 0:
        e = np.full(n_max, np.nan)
        return (e, e.copy()) if return_std else e
    n = np.arange(1, n_max + 1, dtype=float)[:, None]
    i = np.arange(1, n_vals + 1, dtype=float)[None, :]
    # weights[k, i] = P(max of n_k draws is the i-th order statistic)
    weights = (i / n_vals) ** n - ((i - 1) / n_vals) ** n
    e = weights @ v
    if not return_std:
        return e
    var = weights @ (v * v) - e * e
    return e, np.sqrt(np.clip(var, 0.0, None))  # clip: rounding can give -1e-17


def _quiet(fn, *args, **kwargs):
    # Small or tied seed data makes scipy emit RuntimeWarnings (normal approximations, ties); the results that
    # matter are checked here, so the warnings only add noise in sweep logs.
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        return fn(*args, **kwargs)


def _constant(x: np.ndarray) -> bool:
    """All values tied (up to float noise)."""
    return bool(np.ptp(x) <= _TIE_RTOL * max(1.0, float(np.max(np.abs(x)))))


def _stat_p(result) -> tuple[float, float]:
    """(statistic, p) of a scipy test, or (nan, nan) where the statistic is not finite: it divided by zero."""
    stat, p = _f(result.statistic), _f(result.pvalue)
    return (stat, p) if math.isfinite(stat) else (_NAN, _NAN)


def _spread_test(a: np.ndarray, b: np.ndarray, center: str) -> tuple[float, float]:
    """Levene's test (``center="mean"``) or Brown-Forsythe's (``"median"``); (nan, nan) where undefined.

    The test weighs how far apart the groups' mean absolute deviations from their centres are against how those
    deviations vary within each group. When every seed of each group lies equally far from its centre (a group of
    tied values, or ties such as [0.4, 0.4, 0.6, 0.6]) nothing varies within the groups, and scipy divides by (up to
    float noise) zero and answers p = 0 for a difference it cannot measure.
    """
    centre = np.median if center == "median" else np.mean
    if all(_constant(np.abs(x - centre(x))) for x in (a, b)):
        return _NAN, _NAN
    return _stat_p(_quiet(_st.levene, a, b, center=center))


def _std_ratio(sa: np.ndarray | float, sb: np.ndarray | float):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(sa, dtype=float) / np.asarray(sb, dtype=float)


def _bootstrap_std_ratio_ci(a: np.ndarray, b: np.ndarray, n_boot: int, seed: int) -> tuple[float, float]:
    """Percentile CI of sd(a)/sd(b), resampling each group independently.

    Done by hand rather than with ``scipy.stats.bootstrap`` because with a
    few seeds a resample is often constant: sd(b*)=0 gives inf (kept: the
    ratio is unbounded) and 0/0 gives nan (dropped: the ratio is undefined),
    and the quantiles are taken without interpolation so inf never turns
    into nan.
    """
    rng = np.random.default_rng(seed)
    ra = a[rng.integers(0, a.size, size=(int(n_boot), a.size))]
    rb = b[rng.integers(0, b.size, size=(int(n_boot), b.size))]
    ratios = _std_ratio(ra.std(axis=1, ddof=1), rb.std(axis=1, ddof=1))
    ratios = ratios[~np.isnan(ratios)]
    if ratios.size == 0:
        return _NAN, _NAN
    lo, hi = np.quantile(ratios, [0.025, 0.975], method="inverted_cdf")
    return _f(lo), _f(hi)


def compare(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    paired: bool = False,
    n_boot: int = 10000,
    seed: int = 0,
) -> dict:
    """Compare configuration ``a`` against baseline ``b`` over their finished seeds.

    Every finished (finite) seed of each side counts in the means and
    standard deviations, their difference and ratio, and the unpaired tests.
    Location: the difference of means (a - b), Welch's t-test with its 95% CI
    of that difference, and the two-sided Mann-Whitney U test. Spread (the
    point of a seed-stability study): sd(a)/sd(b) with a 95% percentile-
    bootstrap CI (groups resampled independently, seeded), Brown-Forsythe
    (Levene centred on the median, robust to the skew that degenerate seeds
    cause) and classic Levene (centred on the mean).

    With ``paired=True`` the arrays are the same seeds in the same order
    (equal length): the paired t-test and the Wilcoxon signed-rank test are
    added over the seeds finished on both sides (``n_pairs``), and the CI of
    the difference is the paired t-test's (of the mean paired difference, the
    difference of means when every seed finished on both sides). Unpaired,
    the paired keys are NaN (the key set is the same either way, so results
    tabulate cleanly).

    No test and no interval with fewer than MIN_SEEDS finished seeds on a
    side (pairs, for the paired tests and the paired CI); a test whose input
    is degenerate (see the module docstring) and a Wilcoxon test with no
    non-zero paired difference are NaN.

    Power: ``seeds_to_detect_mean`` is the number of seeds per config at which
    the t-test used (paired or Welch) would detect the observed standardised
    difference of means, ``seeds_to_detect_std`` the number at which an F
    test would detect the observed std ratio (ALPHA, POWER; see
    :func:`seeds_to_detect_difference`, :func:`seeds_to_detect_std_ratio`).

    Returns:
        dict of plain floats/ints: ``n_a``, ``n_b``, ``mean_a``, ``mean_b``,
        ``mean_diff``, ``mean_diff_ci95_low``, ``mean_diff_ci95_high``,
        ``std_a``, ``std_b``, ``welch_t``, ``welch_p``, ``mannwhitney_u``,
        ``mannwhitney_p``, ``std_ratio``, ``std_ratio_ci95_low``,
        ``std_ratio_ci95_high``, ``brown_forsythe_stat``,
        ``brown_forsythe_p``, ``levene_stat``, ``levene_p``, ``n_pairs``,
        ``paired_t``, ``paired_p``, ``wilcoxon_stat``, ``wilcoxon_p``,
        ``seeds_to_detect_mean``, ``seeds_to_detect_std``.
    """
    xa = _as_1d_float(a, "a")
    xb = _as_1d_float(b, "b")
    diff = np.empty(0)  # paired: the differences over the seeds finished on both sides
    if paired:
        if xa.shape != xb.shape:
            raise ValueError(
                f"paired comparison needs the same seeds in both arrays, got lengths {xa.size} and {xb.size}"
            )
        both = np.isfinite(xa) & np.isfinite(xb)
        diff = xa[both] - xb[both]
    xa, xb = xa[np.isfinite(xa)], xb[np.isfinite(xb)]
    na, nb = int(xa.size), int(xb.size)

    mean_a = _f(np.mean(xa)) if na else _NAN
    mean_b = _f(np.mean(xb)) if nb else _NAN
    std_a = _f(np.std(xa, ddof=1)) if na > 1 else _NAN
    std_b = _f(np.std(xb, ddof=1)) if nb > 1 else _NAN
    out = {
        "n_a": na,
        "n_b": nb,
        "mean_a": mean_a,
        "mean_b": mean_b,
        "mean_diff": mean_a - mean_b,
        "mean_diff_ci95_low": _NAN,
        "mean_diff_ci95_high": _NAN,
        "std_a": std_a,
        "std_b": std_b,
        "std_ratio": _f(_std_ratio(std_a, std_b)),
    }
    nan2 = (_NAN, _NAN)
    testable = min(na, nb) >= MIN_SEEDS
    # Welch's t is undefined when neither group varies (0/0, or a difference over a zero standard error).
    welch = _quiet(_st.ttest_ind, xa, xb, equal_var=False) if testable and not (
        _constant(xa) and _constant(xb)) else None
    out["welch_t"], out["welch_p"] = _stat_p(welch) if welch is not None else nan2
    out["mannwhitney_u"], out["mannwhitney_p"] = (
        _stat_p(_quiet(_st.mannwhitneyu, xa, xb, alternative="two-sided")) if testable else nan2)
    out["std_ratio_ci95_low"], out["std_ratio_ci95_high"] = (
        _bootstrap_std_ratio_ci(xa, xb, n_boot, seed) if testable else nan2)
    out["brown_forsythe_stat"], out["brown_forsythe_p"] = _spread_test(xa, xb, "median") if testable else nan2
    out["levene_stat"], out["levene_p"] = _spread_test(xa, xb, "mean") if testable else nan2

    out["n_pairs"] = int(diff.size)
    out["paired_t"] = out["paired_p"] = _NAN
    out["wilcoxon_stat"] = out["wilcoxon_p"] = _NAN
    paired_t = None
    if out["n_pairs"] >= MIN_SEEDS:
        if not _constant(diff):  # a constant difference has no standard error: t is undefined
            paired_t = _quiet(_st.ttest_1samp, diff, 0.0)
            out["paired_t"], out["paired_p"] = _stat_p(paired_t)
        # All-zero differences: the signed-rank test has nothing to rank.
        # scipy versions disagree (raise vs p=1), so report it as undefined.
        if np.any(diff != 0):
            out["wilcoxon_stat"], out["wilcoxon_p"] = _stat_p(_quiet(_st.wilcoxon, diff))

    location = paired_t if paired else welch
    if location is not None:
        ci = location.confidence_interval(1 - ALPHA)
        out["mean_diff_ci95_low"], out["mean_diff_ci95_high"] = _f(ci.low), _f(ci.high)
    if paired:
        effect = _f(np.mean(diff) / np.std(diff, ddof=1)) if paired_t is not None else _NAN
    else:
        effect = _f(out["mean_diff"] / math.sqrt((std_a ** 2 + std_b ** 2) / 2)) if welch is not None else _NAN
    out["seeds_to_detect_mean"] = seeds_to_detect_difference(effect, paired)
    out["seeds_to_detect_std"] = seeds_to_detect_std_ratio(out["std_ratio"]) if testable else _NAN
    return out


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of the p-values of a family of tests (several configs against one baseline): an
    adjusted p below ``alpha`` keeps the chance of any false detection in the family at most ``alpha``. Sorted
    ascending, the k-th smallest of m is multiplied by m - k + 1, capped at 1 and made monotone. ``nan`` (an
    undefined test) stays ``nan`` and is not counted in m. scipy.stats has no Holm (only Benjamini-Hochberg, which
    controls the false discovery rate instead)."""
    p = np.asarray([_f(x) for x in p_values], dtype=float)
    out = np.full(p.shape, _NAN)
    finite = np.flatnonzero(np.isfinite(p))
    order = finite[np.argsort(p[finite], kind="stable")]
    m = len(order)
    steps = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(steps)
    return [_f(x) for x in out]


def _smallest_n(n: np.ndarray, power_curve: np.ndarray, power: float) -> float:
    hit = np.flatnonzero(power_curve >= power)
    return _f(n[hit[0]]) if hit.size else math.inf


def seeds_to_detect_difference(effect_size: float, paired: bool, alpha: float = ALPHA, power: float = POWER) -> float:
    """Seeds per config at which a two-sided t-test at level ``alpha`` detects a true standardised difference of
    means ``effect_size`` with probability ``power`` (from MIN_SEEDS up).

    Paired: the paired t-test, effect = mean / sd of the paired differences (Cohen's d_z), noncentrality
    d_z sqrt(n) on n - 1 degrees of freedom. Unpaired: the two-sample t-test with n seeds per side, effect =
    difference / sqrt of the mean of the two variances (Cohen's d), noncentrality d sqrt(n / 2) on 2n - 2 degrees of
    freedom; Welch's test, which the comparison runs, has about that power at equal n. Power from the noncentral t
    distribution (``scipy.stats.nct``). ``inf`` if no n up to MAX_SEEDS reaches ``power`` (a zero effect never
    does), ``nan`` for an undefined effect.
    """
    d = abs(_f(effect_size))
    if not math.isfinite(d):
        return _NAN
    n = np.arange(MIN_SEEDS, MAX_SEEDS + 1)
    df, nc = (n - 1, d * np.sqrt(n)) if paired else (2 * n - 2, d * np.sqrt(n / 2))
    crit = _st.t.ppf(1 - alpha / 2, df)
    return _smallest_n(n, _st.nct.sf(crit, df, nc) + _st.nct.cdf(-crit, df, nc), power)


def seeds_to_detect_std_ratio(ratio: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """Seeds per config at which the two-sided F test of equal variances at level ``alpha`` detects a true ratio of
    standard deviations ``ratio`` with probability ``power`` (from MIN_SEEDS up).

    With n normal seeds per side, (s_a / s_b)^2 / ratio^2 follows F(n - 1, n - 1) (``scipy.stats.f``). The
    Brown-Forsythe test the comparison reports trades some of that power for robustness to non-normal seeds, so read
    the count as a lower bound. ``inf`` if no n up to MAX_SEEDS reaches ``power`` (a ratio of 1 never does), ``nan``
    for a ratio that is 0 (a config whose seeds all tie), infinite or undefined.
    """
    r2 = _f(ratio) ** 2
    if not (math.isfinite(r2) and r2 > 0):
        return _NAN
    n = np.arange(MIN_SEEDS, MAX_SEEDS + 1)
    df = n - 1
    lo, hi = _st.f.ppf(alpha / 2, df, df), _st.f.ppf(1 - alpha / 2, df, df)
    return _smallest_n(n, _st.f.sf(hi / r2, df, df) + _st.f.cdf(lo / r2, df, df), power)


def majority_baseline(labels: Iterable) -> float:
    """Share of the most frequent label: the accuracy of always predicting it.

    The ``baseline`` of :func:`at_or_below`, which flags degenerate seeds.
    Labels may be any hashable values (ints, strings).
    """
    counts = Counter(labels.tolist() if isinstance(labels, np.ndarray) else labels)
    total = sum(counts.values())
    if total == 0:
        raise ValueError("majority_baseline needs at least one label")
    return max(counts.values()) / total
