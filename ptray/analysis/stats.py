"""Seed-stability statistics over per-seed results.

Pure functions (numpy + scipy.stats only; no Ray, no MLflow) so they can be
unit-tested against independent computations and reused on results that were
loaded back from any tracking store.

Conventions shared by every function here:

* Inputs are 1-D sequences of per-seed report-metric values (higher is
  better, e.g. accuracy). ``NaN`` (or ``None``/``inf``) marks a seed whose
  run failed or diverged and produced no usable value.
* Outputs are plain Python ``int``/``float`` values (or numpy arrays for
  curves) so a summary dict can be logged as metrics as-is. Statistics that are
  undefined for the data at hand (a std of one value, a test on a group of
  one) are ``nan`` rather than an exception: a sweep where most seeds failed
  must still be summarised.

Definition of a *failed seed* (used by :func:`summarize`): a seed is failed
if its run failed or diverged (non-finite value, or flagged in ``failed``)
OR, when the majority-class ``baseline`` accuracy of the report split is
given, its value is at or below that baseline, i.e. the prompt learned
nothing better than always predicting the most frequent label. This is the
degenerate-run criterion used in the fine-tuning stability literature
(e.g. Mosbach et al. 2021, Dodge et al. 2020), and it is why the summary
statistics are computed over the non-failed seeds only, with the failure rate
reported beside them.
"""

from __future__ import annotations

import inspect
import warnings
from collections import Counter
from typing import Iterable, Sequence

import numpy as np
from scipy import stats as _st

__all__ = [
    "CI_METHOD",
    "summarize",
    "failed_mask",
    "expected_max_performance",
    "compare",
    "majority_baseline",
]

#: Bootstrap CI method used throughout. Percentile rather than BCa because
#: BCa's jackknife acceleration is undefined/unstable for the handful of seeds
#: (and the ties, e.g. identical accuracies) typical of seed studies.
CI_METHOD = "percentile"

# Values within this distance above the majority baseline still count as "at"
# the baseline: accuracies computed as count/total in different places can
# differ in the last bits.
_BASELINE_ATOL = 1e-9

_NAN = float("nan")


def _as_1d_float(values: Iterable[float] | np.ndarray, name: str) -> np.ndarray:
    # dtype=float turns None into nan, which is how callers may mark failed seeds.
    arr = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D per-seed values, got shape {arr.shape}")
    return arr


def _f(x) -> float:
    """Plain Python float (numpy scalars do not survive every JSON/MLflow path)."""
    return float(x)


# scipy >= 1.15 takes ``rng``; older releases (pyproject allows >= 1.11) only
# ``random_state``. Either way the generator is seeded, so CIs are reproducible.
_BOOTSTRAP_RNG_KW = "rng" if "rng" in inspect.signature(_st.bootstrap).parameters else "random_state"


def _bootstrap_mean_ci(x: np.ndarray, n_boot: int, seed: int) -> tuple[float, float]:
    if x.size < 2:
        # A bootstrap of one value is a point, not an interval.
        return _NAN, _NAN
    res = _st.bootstrap(
        (x,),
        np.mean,
        n_resamples=int(n_boot),
        confidence_level=0.95,
        method=CI_METHOD,
        vectorized=True,
        axis=-1,
        **{_BOOTSTRAP_RNG_KW: np.random.default_rng(seed)},
    )
    return _f(res.confidence_interval.low), _f(res.confidence_interval.high)


def summarize(
    values: Sequence[float] | np.ndarray,
    failed: Sequence[bool] | np.ndarray | None = None,
    baseline: float | None = None,
    n_boot: int = 10000,
    seed: int = 0,
) -> dict:
    """Summarise one configuration's per-seed report metric.

    Args:
        values: per-seed metric values; NaN/None/inf for a failed or diverged seed.
        failed: optional boolean flags (same length) for seeds known to have
            failed even though they reported a value.
        baseline: majority-class accuracy of the report split; seeds at or
            below it count as failed (see module docstring).
        n_boot: bootstrap resamples for the CI of the mean.
        seed: seed of the bootstrap generator (same inputs -> same CI).

    Returns:
        dict with ``n_seeds``, ``n_ok``, ``n_failed``, ``failure_rate`` and,
        over the non-failed seeds, ``mean``, ``std`` (ddof=1), ``median``,
        ``iqr`` (Q3-Q1, ``scipy.stats.iqr``), ``min`` (worst seed), ``max``,
        ``ci95_low``/``ci95_high`` (95% percentile-bootstrap CI of the mean).
        With no successful seed every statistic is NaN; with one, ``std`` and
        the CI are NaN.
    """
    v = _as_1d_float(values, "values")
    bad = failed_mask(v, failed, baseline)
    ok = v[~bad]

    n_seeds = int(v.size)
    n_failed = int(bad.sum())
    out = {
        "n_seeds": n_seeds,
        "n_ok": int(ok.size),
        "n_failed": n_failed,
        "failure_rate": _f(n_failed / n_seeds) if n_seeds else _NAN,
    }
    if ok.size == 0:
        out.update(mean=_NAN, std=_NAN, median=_NAN, iqr=_NAN, min=_NAN, max=_NAN,
                   ci95_low=_NAN, ci95_high=_NAN)
        return out
    lo, hi = _bootstrap_mean_ci(ok, n_boot, seed)
    out.update(
        mean=_f(np.mean(ok)),
        std=_f(np.std(ok, ddof=1)) if ok.size > 1 else _NAN,
        median=_f(np.median(ok)),
        iqr=_f(_st.iqr(ok)),
        min=_f(np.min(ok)),
        max=_f(np.max(ok)),
        ci95_low=lo,
        ci95_high=hi,
    )
    return out


def failed_mask(
    values: Sequence[float] | np.ndarray,
    failed: Sequence[bool] | np.ndarray | None = None,
    baseline: float | Sequence[float] | np.ndarray | None = None,
) -> np.ndarray:
    """Boolean mask of the failed seeds, by the definition in the module docstring.

    ``baseline`` is one majority-class accuracy for all seeds, or one per seed
    (seeds evaluated on different report subsets); a NaN baseline flags nothing.
    Callers with several metrics per seed compute the mask once on the
    accuracy and pass it as ``failed`` to :func:`summarize` for every metric,
    so all metrics agree on which seeds failed.
    """
    v = _as_1d_float(values, "values")
    bad = ~np.isfinite(v)
    if failed is not None:
        flags = np.asarray(failed, dtype=bool)
        if flags.shape != v.shape:
            raise ValueError(f"failed has shape {flags.shape}, values has shape {v.shape}")
        bad |= flags
    if baseline is not None:
        with np.errstate(invalid="ignore"):  # NaN values are already marked bad; NaN baselines compare False
            bad |= v <= np.asarray(baseline, dtype=float) + _BASELINE_ATOL
    return bad


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
    # Degenerate seed data (zero variance, identical groups) makes scipy emit
    # RuntimeWarnings and return nan/inf; that result is the signal we report,
    # so the warnings only add noise in sweep logs.
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        return fn(*args, **kwargs)


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
    if a.size < 2 or b.size < 2:
        return _NAN, _NAN
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
    """Compare configuration ``a`` against baseline ``b`` over seeds.

    Location: difference of means (a - b), Welch's t-test and the two-sided
    Mann-Whitney U test. Spread (the point of a seed-stability study):
    sd(a)/sd(b) with a 95% percentile-bootstrap CI (groups resampled
    independently, seeded), Brown-Forsythe (Levene centred on the median,
    robust to the skew failed-but-not-NaN seeds cause) and classic Levene
    (centred on the mean).

    With ``paired=True`` the arrays must be the same seeds in the same order
    (equal length); a seed is dropped from both if either value is NaN, and
    the paired t-test and Wilcoxon signed-rank test are added. Unpaired,
    NaNs are dropped from each group separately and the paired keys are NaN
    (the key set is the same either way, so results tabulate cleanly).

    Any test whose inputs are too small (fewer than 2 per group for t,
    Levene and the std ratio; no non-zero paired difference for Wilcoxon)
    gives NaN.

    Returns:
        dict of plain floats/ints: ``n_a``, ``n_b``, ``mean_a``, ``mean_b``,
        ``mean_diff``, ``std_a``, ``std_b``, ``welch_t``, ``welch_p``,
        ``mannwhitney_u``, ``mannwhitney_p``, ``std_ratio``,
        ``std_ratio_ci95_low``, ``std_ratio_ci95_high``,
        ``brown_forsythe_stat``, ``brown_forsythe_p``, ``levene_stat``,
        ``levene_p``, ``n_pairs``, ``paired_t``, ``paired_p``,
        ``wilcoxon_stat``, ``wilcoxon_p``.
    """
    xa = _as_1d_float(a, "a")
    xb = _as_1d_float(b, "b")
    if paired:
        if xa.shape != xb.shape:
            raise ValueError(
                f"paired comparison needs the same seeds in both arrays, got lengths {xa.size} and {xb.size}"
            )
        keep = np.isfinite(xa) & np.isfinite(xb)
        xa, xb = xa[keep], xb[keep]
    else:
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
        "std_a": std_a,
        "std_b": std_b,
    }

    two_each = na > 1 and nb > 1
    if two_each:
        r = _quiet(_st.ttest_ind, xa, xb, equal_var=False)
        out["welch_t"], out["welch_p"] = _f(r.statistic), _f(r.pvalue)
    else:
        out["welch_t"] = out["welch_p"] = _NAN

    if na and nb:
        r = _quiet(_st.mannwhitneyu, xa, xb, alternative="two-sided")
        out["mannwhitney_u"], out["mannwhitney_p"] = _f(r.statistic), _f(r.pvalue)
    else:
        out["mannwhitney_u"] = out["mannwhitney_p"] = _NAN

    out["std_ratio"] = _f(_std_ratio(std_a, std_b))
    out["std_ratio_ci95_low"], out["std_ratio_ci95_high"] = _bootstrap_std_ratio_ci(xa, xb, n_boot, seed)

    if two_each:
        bf = _quiet(_st.levene, xa, xb, center="median")
        lv = _quiet(_st.levene, xa, xb, center="mean")
        out["brown_forsythe_stat"], out["brown_forsythe_p"] = _f(bf.statistic), _f(bf.pvalue)
        out["levene_stat"], out["levene_p"] = _f(lv.statistic), _f(lv.pvalue)
    else:
        out["brown_forsythe_stat"] = out["brown_forsythe_p"] = _NAN
        out["levene_stat"] = out["levene_p"] = _NAN

    out["n_pairs"] = na if paired else 0
    out["paired_t"] = out["paired_p"] = _NAN
    out["wilcoxon_stat"] = out["wilcoxon_p"] = _NAN
    if paired:
        if na > 1:
            r = _quiet(_st.ttest_rel, xa, xb)
            out["paired_t"], out["paired_p"] = _f(r.statistic), _f(r.pvalue)
        diff = xa - xb
        # All-zero differences: the signed-rank test has nothing to rank.
        # scipy versions disagree (raise vs p=1), so report it as undefined.
        if np.any(diff != 0):
            r = _quiet(_st.wilcoxon, xa, xb)
            out["wilcoxon_stat"], out["wilcoxon_p"] = _f(r.statistic), _f(r.pvalue)
    return out


def majority_baseline(labels: Iterable) -> float:
    """Share of the most frequent label: the accuracy of always predicting it.

    Used as ``baseline`` in :func:`summarize` to flag degenerate seeds.
    Labels may be any hashable values (ints, strings).
    """
    counts = Counter(labels.tolist() if isinstance(labels, np.ndarray) else labels)
    total = sum(counts.values())
    if total == 0:
        raise ValueError("majority_baseline needs at least one label")
    return max(counts.values()) / total
