"""Every statistic in ptray.analysis.stats against an independent numpy/scipy computation."""

import math

import numpy as np
import pytest
from scipy import stats as st

from ptray.analysis.stats import (
    compare,
    expected_max_performance,
    majority_baseline,
    summarize,
)

VALUES = np.array([0.81, 0.84, 0.79, 0.88, 0.83, 0.86, 0.80, 0.85])
N_BOOT = 2000  # enough for the checks, keeps the suite fast


# --------------------------------------------------------------------- summarize


def test_summarize_matches_numpy_and_scipy():
    s = summarize(VALUES, n_boot=N_BOOT)
    assert s["n_seeds"] == 8 and s["n_ok"] == 8 and s["n_failed"] == 0
    assert s["failure_rate"] == 0.0
    assert s["mean"] == pytest.approx(np.mean(VALUES))
    assert s["std"] == pytest.approx(np.std(VALUES, ddof=1))
    assert s["median"] == pytest.approx(np.median(VALUES))
    q75, q25 = np.percentile(VALUES, [75, 25])
    assert s["iqr"] == pytest.approx(q75 - q25)
    assert s["min"] == pytest.approx(VALUES.min())
    assert s["max"] == pytest.approx(VALUES.max())
    # Plain Python numbers, loggable as metrics.
    assert all(type(v) in (int, float) for v in s.values())


def test_summarize_bootstrap_ci_contains_mean_is_seeded_and_matches_scipy():
    a = summarize(VALUES, n_boot=N_BOOT, seed=3)
    b = summarize(VALUES, n_boot=N_BOOT, seed=3)
    c = summarize(VALUES, n_boot=N_BOOT, seed=4)
    assert a["ci95_low"] < a["mean"] < a["ci95_high"]
    assert (a["ci95_low"], a["ci95_high"]) == (b["ci95_low"], b["ci95_high"])
    assert (a["ci95_low"], a["ci95_high"]) != (c["ci95_low"], c["ci95_high"])
    # Independent percentile bootstrap with numpy: endpoints agree within MC noise.
    rng = np.random.default_rng(123)
    means = VALUES[rng.integers(0, VALUES.size, size=(20000, VALUES.size))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    assert a["ci95_low"] == pytest.approx(lo, abs=0.003)
    assert a["ci95_high"] == pytest.approx(hi, abs=0.003)
    # The CI is narrower than the raw spread of seeds (it is a CI of the mean).
    assert a["ci95_high"] - a["ci95_low"] < VALUES.max() - VALUES.min()


def test_summarize_nan_seeds_are_failed_and_excluded():
    v = np.array([0.8, np.nan, 0.9, 0.7, np.nan])
    s = summarize(v, n_boot=N_BOOT)
    ok = np.array([0.8, 0.9, 0.7])
    assert s["n_seeds"] == 5 and s["n_failed"] == 2 and s["n_ok"] == 3
    assert s["failure_rate"] == pytest.approx(0.4)
    assert s["mean"] == pytest.approx(ok.mean())
    assert s["std"] == pytest.approx(ok.std(ddof=1))
    assert s["min"] == pytest.approx(0.7)


def test_summarize_none_and_inf_count_as_failed():
    s = summarize([0.8, None, float("inf"), 0.9], n_boot=N_BOOT)
    assert s["n_failed"] == 2
    assert s["mean"] == pytest.approx(0.85)


def test_summarize_failed_flags():
    s = summarize([0.8, 0.9, 0.7, 0.6], failed=[False, True, False, False], n_boot=N_BOOT)
    assert s["n_failed"] == 1
    assert s["mean"] == pytest.approx(np.mean([0.8, 0.7, 0.6]))
    with pytest.raises(ValueError):
        summarize([0.8, 0.9], failed=[True])


def test_summarize_baseline_rule_at_or_below_is_failed():
    # Baseline 0.5: 0.5 (at, computed the float-noisy way) and 0.49 fail; 0.51 does not.
    at_baseline = 436 / 872 + 1e-12
    v = [0.9, at_baseline, 0.49, 0.51, np.nan, 0.85]
    s = summarize(v, baseline=0.5, n_boot=N_BOOT)
    assert s["n_failed"] == 3
    assert s["failure_rate"] == pytest.approx(3 / 6)
    ok = np.array([0.9, 0.51, 0.85])
    assert s["mean"] == pytest.approx(ok.mean())
    assert s["min"] == pytest.approx(0.51)
    # Without the baseline only the NaN fails.
    assert summarize(v, n_boot=N_BOOT)["n_failed"] == 1


def test_summarize_one_successful_seed():
    s = summarize([np.nan, 0.7, np.nan], n_boot=N_BOOT)
    assert s["n_ok"] == 1 and s["n_failed"] == 2
    assert s["mean"] == s["median"] == s["min"] == s["max"] == pytest.approx(0.7)
    assert s["iqr"] == 0.0
    assert math.isnan(s["std"])
    assert math.isnan(s["ci95_low"]) and math.isnan(s["ci95_high"])


def test_summarize_zero_successful_seeds_and_empty():
    s = summarize([np.nan, 0.4], baseline=0.5, n_boot=N_BOOT)
    assert s["n_ok"] == 0 and s["failure_rate"] == 1.0
    for k in ("mean", "std", "median", "iqr", "min", "max", "ci95_low", "ci95_high"):
        assert math.isnan(s[k]), k
    e = summarize([], n_boot=N_BOOT)
    assert e["n_seeds"] == 0 and math.isnan(e["failure_rate"]) and math.isnan(e["mean"])


def test_summarize_identical_values_gives_point_ci():
    s = summarize([0.75] * 4, n_boot=N_BOOT)
    assert s["std"] == 0.0
    assert s["ci95_low"] == pytest.approx(0.75) and s["ci95_high"] == pytest.approx(0.75)


# ------------------------------------------------------- expected max performance


def test_expected_max_n1_is_mean_monotone_and_tends_to_max():
    e = expected_max_performance(VALUES, n_max=200)
    assert e.shape == (200,)
    assert e[0] == pytest.approx(VALUES.mean())
    assert np.all(np.diff(e) >= -1e-12)
    assert e[-1] == pytest.approx(VALUES.max(), abs=1e-6)
    assert np.all(e <= VALUES.max() + 1e-12)
    # Default n_max is the number of values.
    assert expected_max_performance(VALUES).shape == (VALUES.size,)


def test_expected_max_matches_monte_carlo():
    v = np.array([0.2, 0.5, 0.5, 0.9, 0.7])  # includes a tie
    e, sd = expected_max_performance(v, n_max=6, return_std=True)
    rng = np.random.default_rng(0)
    for n in range(1, 7):
        maxes = v[rng.integers(0, v.size, size=(200_000, n))].max(axis=1)
        assert e[n - 1] == pytest.approx(maxes.mean(), abs=0.003), n
        assert sd[n - 1] == pytest.approx(maxes.std(), abs=0.003), n


def test_expected_max_exact_small_case():
    # v = {0, 1}: E[max_n] = P(at least one 1) = 1 - 0.5**n.
    e = expected_max_performance([1.0, 0.0], n_max=4)
    np.testing.assert_allclose(e, 1 - 0.5 ** np.arange(1, 5))


def test_expected_max_drops_nan_and_handles_empty():
    e = expected_max_performance([0.5, np.nan, 0.7])
    np.testing.assert_allclose(e, expected_max_performance([0.5, 0.7]))
    assert expected_max_performance([np.nan]).shape == (0,)
    assert np.all(np.isnan(expected_max_performance([np.nan], n_max=3)))
    with pytest.raises(ValueError):
        expected_max_performance(VALUES, n_max=-1)


# ------------------------------------------------------------------------ compare

A = np.array([0.80, 0.84, 0.79, 0.86, 0.83, 0.81, 0.85, 0.82])
B = np.array([0.70, 0.88, 0.62, 0.90, 0.75, 0.84, 0.66, 0.80])


def test_compare_unpaired_matches_scipy():
    r = compare(A, B, n_boot=N_BOOT)
    assert r["n_a"] == r["n_b"] == 8
    assert r["mean_diff"] == pytest.approx(A.mean() - B.mean())
    w = st.ttest_ind(A, B, equal_var=False)
    assert r["welch_t"] == pytest.approx(w.statistic) and r["welch_p"] == pytest.approx(w.pvalue)
    mw = st.mannwhitneyu(A, B, alternative="two-sided")
    assert r["mannwhitney_u"] == pytest.approx(mw.statistic) and r["mannwhitney_p"] == pytest.approx(mw.pvalue)
    bf = st.levene(A, B, center="median")
    lv = st.levene(A, B, center="mean")
    assert r["brown_forsythe_stat"] == pytest.approx(bf.statistic)
    assert r["brown_forsythe_p"] == pytest.approx(bf.pvalue)
    assert r["levene_stat"] == pytest.approx(lv.statistic) and r["levene_p"] == pytest.approx(lv.pvalue)
    assert r["std_ratio"] == pytest.approx(np.std(A, ddof=1) / np.std(B, ddof=1))
    # Unpaired: paired keys exist but are NaN.
    assert r["n_pairs"] == 0
    for k in ("paired_t", "paired_p", "wilcoxon_stat", "wilcoxon_p"):
        assert math.isnan(r[k]), k
    assert all(type(v) in (int, float) for v in r.values())


def test_compare_paired_matches_scipy_and_differs_from_unpaired():
    # b = a minus a small, consistent per-seed shift: paired tests see it, unpaired barely.
    rng = np.random.default_rng(1)
    a = rng.normal(0.8, 0.05, 10)
    b = a - 0.01 + rng.normal(0, 0.002, 10)
    rp = compare(a, b, paired=True, n_boot=N_BOOT)
    ru = compare(a, b, paired=False, n_boot=N_BOOT)
    t = st.ttest_rel(a, b)
    wx = st.wilcoxon(a, b)
    assert rp["n_pairs"] == 10
    assert rp["paired_t"] == pytest.approx(t.statistic) and rp["paired_p"] == pytest.approx(t.pvalue)
    assert rp["wilcoxon_stat"] == pytest.approx(wx.statistic) and rp["wilcoxon_p"] == pytest.approx(wx.pvalue)
    assert rp["mean_diff"] == pytest.approx(np.mean(a - b))
    assert rp["paired_p"] < 0.001 < ru["welch_p"]
    # Unpaired statistics are identical whichever mode is used (no NaNs here).
    assert rp["welch_p"] == pytest.approx(ru["welch_p"])


def test_compare_paired_drops_pairs_with_nan():
    a = np.array([0.8, np.nan, 0.82, 0.85, 0.79])
    b = np.array([0.7, 0.75, np.nan, 0.80, 0.76])
    r = compare(a, b, paired=True, n_boot=N_BOOT)
    ka, kb = np.array([0.8, 0.85, 0.79]), np.array([0.7, 0.80, 0.76])
    assert r["n_pairs"] == r["n_a"] == r["n_b"] == 3
    assert r["paired_t"] == pytest.approx(st.ttest_rel(ka, kb).statistic)
    # Unpaired drops NaNs per group instead.
    ru = compare(a, b, n_boot=N_BOOT)
    assert (ru["n_a"], ru["n_b"]) == (4, 4)
    assert ru["mean_a"] == pytest.approx(np.nanmean(a)) and ru["mean_b"] == pytest.approx(np.nanmean(b))


def test_compare_paired_requires_equal_length():
    with pytest.raises(ValueError):
        compare([0.1, 0.2, 0.3], [0.1, 0.2], paired=True)


def test_compare_wilcoxon_all_zero_differences_is_nan():
    r = compare(A, A.copy(), paired=True, n_boot=N_BOOT)
    assert math.isnan(r["wilcoxon_p"]) and math.isnan(r["wilcoxon_stat"])
    assert r["mean_diff"] == 0.0
    assert r["std_ratio"] == pytest.approx(1.0)


def test_compare_std_ratio_bootstrap_ci():
    rng = np.random.default_rng(7)
    a = rng.normal(0.8, 0.01, 20)
    b = rng.normal(0.8, 0.05, 20)
    r1 = compare(a, b, n_boot=N_BOOT, seed=5)
    r2 = compare(a, b, n_boot=N_BOOT, seed=5)
    assert (r1["std_ratio_ci95_low"], r1["std_ratio_ci95_high"]) == (r2["std_ratio_ci95_low"], r2["std_ratio_ci95_high"])
    assert r1["std_ratio_ci95_low"] < r1["std_ratio"] < r1["std_ratio_ci95_high"] < 1.0
    # Same quantity via scipy's independent-resampling percentile bootstrap.
    ref = st.bootstrap(
        (a, b),
        lambda x, y, axis=-1: np.std(x, ddof=1, axis=axis) / np.std(y, ddof=1, axis=axis),
        n_resamples=N_BOOT,
        method="percentile",
        rng=np.random.default_rng(11),
    ).confidence_interval
    assert r1["std_ratio_ci95_low"] == pytest.approx(ref.low, rel=0.1)
    assert r1["std_ratio_ci95_high"] == pytest.approx(ref.high, rel=0.1)
    # Variance tests agree that b is more spread out.
    assert r1["brown_forsythe_p"] < 0.01 and r1["levene_p"] < 0.01


def test_compare_small_groups_give_nan_not_errors():
    r = compare([0.8], [0.7, np.nan], n_boot=N_BOOT)
    assert r["n_a"] == r["n_b"] == 1
    assert r["mean_diff"] == pytest.approx(0.1)
    for k in ("welch_t", "welch_p", "std_ratio", "std_ratio_ci95_low", "brown_forsythe_p", "levene_p"):
        assert math.isnan(r[k]), k
    # Mann-Whitney is defined with one value per group.
    assert r["mannwhitney_p"] == pytest.approx(st.mannwhitneyu([0.8], [0.7], alternative="two-sided").pvalue)
    e = compare([np.nan], [np.nan], paired=True, n_boot=N_BOOT)
    assert e["n_pairs"] == 0 and math.isnan(e["mean_diff"]) and math.isnan(e["paired_p"])


def test_compare_three_seeds_std_ratio_ci_is_finite_or_inf_never_nan():
    # With 3 seeds, constant resamples are common (0/0 and x/0); the CI must still exist.
    r = compare([0.80, 0.82, 0.90], [0.70, 0.71, 0.75], n_boot=N_BOOT)
    assert not math.isnan(r["std_ratio_ci95_low"]) and not math.isnan(r["std_ratio_ci95_high"])
    assert r["std_ratio_ci95_low"] <= r["std_ratio"] <= r["std_ratio_ci95_high"]


# -------------------------------------------------------------- majority baseline


def test_majority_baseline():
    labels = [0, 1, 1, 2, 1, 0]
    values, counts = np.unique(labels, return_counts=True)
    assert majority_baseline(labels) == pytest.approx(counts.max() / counts.sum())
    assert majority_baseline(np.array(labels)) == pytest.approx(0.5)
    assert majority_baseline(["pos", "neg", "neg", "neg"]) == pytest.approx(0.75)
    assert majority_baseline([3]) == 1.0
    with pytest.raises(ValueError):
        majority_baseline([])
