"""Every statistic in ptray.stats against an independent numpy/scipy computation."""

import math

import numpy as np
import pytest
from scipy import stats as st

from ptray.stats import (
    MIN_SEEDS,
    SUMMARY_STATISTICS,
    at_or_below,
    compare,
    expected_max_performance,
    holm,
    majority_baseline,
    seeds_to_detect_difference,
    seeds_to_detect_std_ratio,
    summarize,
)

VALUES = np.array([0.81, 0.84, 0.79, 0.88, 0.83, 0.86, 0.80, 0.85])
N_BOOT = 2000  # enough for the checks, keeps the suite fast


# --------------------------------------------------------------------- summarize


def _t_interval(x):
    x = np.asarray(x, dtype=float)
    return st.t.interval(0.95, x.size - 1, loc=x.mean(), scale=st.sem(x))


def _check_stats(s, x, suffix=""):
    """Every statistic of `s` (with `suffix`) against numpy/scipy on the values `x` it should be over."""
    x = np.asarray(x, dtype=float)
    assert s["mean" + suffix] == pytest.approx(np.mean(x))
    assert s["median" + suffix] == pytest.approx(np.median(x))
    assert s["iqr" + suffix] == pytest.approx(np.subtract(*np.percentile(x, [75, 25])))
    assert (s["min" + suffix], s["max" + suffix]) == (pytest.approx(x.min()), pytest.approx(x.max()))
    if x.size > 1:
        assert s["std" + suffix] == pytest.approx(np.std(x, ddof=1))
    else:
        assert math.isnan(s["std" + suffix])
    if x.size >= MIN_SEEDS and np.ptp(x) > 0:
        lo, hi = _t_interval(x)
        assert (s["ci95_low" + suffix], s["ci95_high" + suffix]) == (pytest.approx(lo), pytest.approx(hi))
    elif x.size < MIN_SEEDS:
        assert math.isnan(s["ci95_low" + suffix]) and math.isnan(s["ci95_high" + suffix])


def test_summarize_matches_numpy_and_scipy():
    s = summarize(VALUES)
    assert s["n_seeds"] == 8 and s["n_ok"] == 8 and s["n_failed"] == 0
    assert s["failure_rate"] == 0.0
    _check_stats(s, VALUES)
    assert s["ci95_low"] < s["mean"] < s["ci95_high"]
    # Without a majority mask nothing is known to be degenerate: the counts and the secondary view are undefined.
    assert math.isnan(s["n_at_majority"]) and math.isnan(s["majority_rate"]) and math.isnan(s["mean_nondegenerate"])
    # Plain Python numbers, loggable as metrics.
    assert all(type(v) in (int, float) for v in s.values())


def test_summarize_ci_is_wider_than_the_observed_range_at_three_seeds():
    # A percentile bootstrap of 3 seeds is about their range, which holds the mean of normal seeds 75% of the time.
    x = [0.34, 0.53, 0.56]
    s = summarize(x)
    lo, hi = _t_interval(x)
    assert (s["ci95_low"], s["ci95_high"]) == (pytest.approx(lo), pytest.approx(hi))
    assert s["ci95_low"] < min(x) and s["ci95_high"] > max(x)


def test_summarize_crashed_seeds_are_counted_not_averaged():
    v = np.array([0.8, np.nan, 0.9, 0.7, np.nan])
    s = summarize(v)
    assert s["n_seeds"] == 5 and s["n_failed"] == 2 and s["n_ok"] == 3
    assert s["failure_rate"] == pytest.approx(0.4)
    _check_stats(s, [0.8, 0.9, 0.7])


def test_summarize_none_and_inf_count_as_failed():
    s = summarize([0.8, None, float("inf"), 0.9])
    assert s["n_failed"] == 2
    assert s["mean"] == pytest.approx(0.85)


def test_summarize_failed_flags():
    s = summarize([0.8, 0.9, 0.7, 0.6], failed=[False, True, False, False])
    assert s["n_failed"] == 1
    _check_stats(s, [0.8, 0.7, 0.6])
    with pytest.raises(ValueError):
        summarize([0.8, 0.9], failed=[True])
    with pytest.raises(ValueError):
        summarize([0.8, 0.9], at_majority=[True])


def test_seeds_at_or_below_majority_stay_in_the_headline():
    # Baseline 0.5: 0.5 (at, computed the float-noisy way) and 0.49 are at or below it; 0.51 is not; NaN crashed.
    at_baseline = 436 / 872 + 1e-12
    v = [0.9, at_baseline, 0.49, 0.51, np.nan, 0.85]
    low = at_or_below(v, 0.5)
    assert low.tolist() == [False, True, True, False, False, False]
    s = summarize(v, at_majority=low)
    assert (s["n_seeds"], s["n_failed"], s["n_ok"], s["n_at_majority"]) == (6, 1, 5, 2)
    assert s["failure_rate"] == pytest.approx(1 / 6) and s["majority_rate"] == pytest.approx(2 / 6)
    _check_stats(s, [0.9, at_baseline, 0.49, 0.51, 0.85])  # every finished seed
    assert s["min"] == pytest.approx(0.49)  # the worst seed is the degenerate one
    assert s["n_nondegenerate"] == 3
    _check_stats(s, [0.9, 0.51, 0.85], "_nondegenerate")
    # Per-seed baselines (report subsets that differ); NaN on either side flags nothing.
    assert at_or_below([0.6, 0.6, np.nan], [0.7, 0.5, 0.5]).tolist() == [True, False, False]
    assert at_or_below([0.6], [np.nan]).tolist() == [False]


def test_all_seeds_at_majority_still_have_statistics():
    # The first quickstart (FewGLUE RTE) case: every seed learned nothing. The headline must still show them (and their spread).
    v = [0.5, 0.47, 0.5, 0.44]
    s = summarize(v, at_majority=at_or_below(v, 0.5))
    assert s["n_at_majority"] == 4 and s["majority_rate"] == 1.0 and s["n_failed"] == 0
    _check_stats(s, v)
    assert s["n_nondegenerate"] == 0
    assert all(math.isnan(s[k + "_nondegenerate"]) for k in ("mean", "std", "min", "max", "ci95_low"))


def test_one_seed_at_majority_widens_the_spread():
    # The residual case of the issue: the degenerate seed is what makes a config unstable.
    good = [0.66, 0.64, 0.62, 0.65]
    v = good + [0.5]
    s = summarize(v, at_majority=at_or_below(v, 0.5))
    _check_stats(s, v)
    _check_stats(s, good, "_nondegenerate")
    assert s["std"] > 3 * s["std_nondegenerate"]


@pytest.mark.parametrize("n", [1, 2, 3])
def test_small_samples(n):
    x = [0.7, 0.64, 0.69][:n]
    s = summarize(x + [np.nan])
    assert s["n_ok"] == n and s["n_failed"] == 1
    _check_stats(s, x)  # no interval below MIN_SEEDS, the t interval from it
    assert math.isnan(s["ci95_low"]) == (n < MIN_SEEDS)


def test_summarize_zero_finished_seeds_and_empty():
    s = summarize([np.nan, np.nan], at_majority=[False, False])
    assert s["n_ok"] == 0 and s["failure_rate"] == 1.0 and s["n_at_majority"] == 0
    for k in SUMMARY_STATISTICS:
        assert math.isnan(s[k]), k
    e = summarize([])
    assert e["n_seeds"] == 0 and math.isnan(e["failure_rate"]) and math.isnan(e["mean"])


def test_summarize_zero_variance_gives_point_ci():
    s = summarize([0.75] * 4)
    assert s["std"] == 0.0 and s["iqr"] == 0.0
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
TESTS = ("welch_p", "mannwhitney_p", "brown_forsythe_p", "levene_p", "std_ratio_ci95_low", "std_ratio_ci95_high",
         "mean_diff_ci95_low", "mean_diff_ci95_high", "paired_p", "wilcoxon_p", "seeds_to_detect_mean",
         "seeds_to_detect_std")


def _check_unpaired(r, a, b):
    """The unpaired statistics of `r` against scipy on the finished values `a`, `b`."""
    assert (r["n_a"], r["n_b"]) == (a.size, b.size)
    assert r["mean_diff"] == pytest.approx(a.mean() - b.mean())
    w = st.ttest_ind(a, b, equal_var=False)
    assert r["welch_t"] == pytest.approx(w.statistic) and r["welch_p"] == pytest.approx(w.pvalue)
    mw = st.mannwhitneyu(a, b, alternative="two-sided")
    assert r["mannwhitney_u"] == pytest.approx(mw.statistic) and r["mannwhitney_p"] == pytest.approx(mw.pvalue)
    bf = st.levene(a, b, center="median")
    lv = st.levene(a, b, center="mean")
    assert r["brown_forsythe_stat"] == pytest.approx(bf.statistic)
    assert r["brown_forsythe_p"] == pytest.approx(bf.pvalue)
    assert r["levene_stat"] == pytest.approx(lv.statistic) and r["levene_p"] == pytest.approx(lv.pvalue)
    assert r["std_ratio"] == pytest.approx(np.std(a, ddof=1) / np.std(b, ddof=1))


def test_compare_unpaired_matches_scipy():
    r = compare(A, B, n_boot=N_BOOT)
    _check_unpaired(r, A, B)
    ci = st.ttest_ind(A, B, equal_var=False).confidence_interval(0.95)
    assert (r["mean_diff_ci95_low"], r["mean_diff_ci95_high"]) == (pytest.approx(ci.low), pytest.approx(ci.high))
    d = (A.mean() - B.mean()) / np.sqrt((A.var(ddof=1) + B.var(ddof=1)) / 2)
    assert r["seeds_to_detect_mean"] == seeds_to_detect_difference(d, paired=False)
    assert r["seeds_to_detect_std"] == seeds_to_detect_std_ratio(np.std(A, ddof=1) / np.std(B, ddof=1))
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
    ci = t.confidence_interval(0.95)
    assert (rp["mean_diff_ci95_low"], rp["mean_diff_ci95_high"]) == (pytest.approx(ci.low), pytest.approx(ci.high))
    dz = np.mean(a - b) / np.std(a - b, ddof=1)
    assert rp["seeds_to_detect_mean"] == seeds_to_detect_difference(dz, paired=True)
    assert rp["paired_p"] < 0.001 < ru["welch_p"]
    # Unpaired statistics are identical whichever mode is used (no NaNs here).
    _check_unpaired(rp, a, b)


def test_compare_crashed_seeds_leave_only_the_paired_tests():
    a = np.array([0.8, np.nan, 0.82, 0.85, 0.79])
    b = np.array([0.7, 0.75, np.nan, 0.80, 0.76])
    r = compare(a, b, paired=True, n_boot=N_BOOT)
    # Every finished seed of each side counts in the means, spreads and unpaired tests...
    _check_unpaired(r, a[np.isfinite(a)], b[np.isfinite(b)])
    # ...and the paired tests are over the seeds finished on both.
    ka, kb = np.array([0.8, 0.85, 0.79]), np.array([0.7, 0.80, 0.76])
    assert r["n_pairs"] == 3
    assert r["paired_t"] == pytest.approx(st.ttest_rel(ka, kb).statistic)


def test_compare_paired_requires_equal_length():
    with pytest.raises(ValueError):
        compare([0.1, 0.2, 0.3], [0.1, 0.2], paired=True)


def test_compare_wilcoxon_all_zero_differences_is_nan():
    r = compare(A, A.copy(), paired=True, n_boot=N_BOOT)
    assert math.isnan(r["wilcoxon_p"]) and math.isnan(r["wilcoxon_stat"])
    assert r["mean_diff"] == 0.0
    assert r["std_ratio"] == pytest.approx(1.0)
    assert r["seeds_to_detect_std"] == math.inf  # equal spreads: no number of seeds tells them apart


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


@pytest.mark.parametrize("n_a, n_b", [(1, 5), (2, 2), (2, 5), (0, 3)])
def test_compare_too_few_seeds_gives_no_test_and_no_interval(n_a, n_b):
    a = np.array([0.80, 0.84, 0.79, 0.86, 0.83])[:n_a]
    b = np.array([0.70, 0.88, 0.62, 0.90, 0.75])[:n_b]
    r = compare(np.append(a, np.nan), b, n_boot=N_BOOT)
    assert (r["n_a"], r["n_b"]) == (n_a, n_b)
    for k in TESTS:
        assert math.isnan(r[k]), k
    # What the seeds say without a test is still there: the difference of means and of spreads.
    if n_a:
        assert r["mean_diff"] == pytest.approx(a.mean() - b.mean())
    if n_a > 1:
        assert r["std_ratio"] == pytest.approx(np.std(a, ddof=1) / np.std(b, ddof=1))


def test_compare_two_seeds_each_is_not_p_zero():
    # Two values lie equally far from their median: scipy's Brown-Forsythe divides by zero and answers p = 0.
    a, b = [0.6, 0.7], [0.55, 0.8]
    assert st.levene(a, b, center="median").pvalue < 1e-6
    assert math.isnan(compare(a, b, n_boot=N_BOOT)["brown_forsythe_p"])


def test_compare_three_seeds_each_matches_scipy():
    a, b = np.array([0.80, 0.82, 0.90]), np.array([0.70, 0.71, 0.75])
    r = compare(a, b, n_boot=N_BOOT)
    _check_unpaired(r, a, b)
    # With 3 seeds, constant resamples are common (0/0 and x/0); the CI must still exist.
    assert not math.isnan(r["std_ratio_ci95_low"]) and not math.isnan(r["std_ratio_ci95_high"])
    assert r["std_ratio_ci95_low"] <= r["std_ratio"] <= r["std_ratio_ci95_high"]


def test_compare_zero_variance_is_undefined_not_p_zero():
    a, b = np.array([0.5, 0.5, 0.5]), np.array([0.6, 0.6, 0.6])
    # scipy answers p = 0 (t = -inf) for two groups that do not vary at all.
    assert st.ttest_ind(a, b, equal_var=False).pvalue == 0.0
    r = compare(a, b, paired=True, n_boot=N_BOOT)
    for k in ("welch_p", "paired_p", "brown_forsythe_p", "levene_p", "mean_diff_ci95_low", "seeds_to_detect_mean"):
        assert math.isnan(r[k]), k
    assert r["mean_diff"] == pytest.approx(-0.1) and r["std_a"] == r["std_b"] == 0.0
    # One group constant, the other not: Welch and Brown-Forsythe are defined, and match scipy.
    c = np.array([0.55, 0.6, 0.7])
    _check_unpaired(compare(a, c, n_boot=N_BOOT), a, c)


def test_compare_ties_are_undefined_not_p_zero():
    # Every seed of each group equally far from its mean and its median: nothing varies within the groups, and scipy
    # divides by zero up to float noise (a statistic near 1e30, p near 0).
    a, b = np.array([0.4, 0.4, 0.6, 0.6]), np.array([0.45, 0.45, 0.75, 0.75])
    r = compare(a, b, n_boot=N_BOOT)
    for center, key in (("mean", "levene"), ("median", "brown_forsythe")):
        assert st.levene(a, b, center=center).pvalue < 1e-6
        assert math.isnan(r[f"{key}_p"]) and math.isnan(r[f"{key}_stat"])
    # Tests that do not divide by that variation are defined, and scipy's.
    assert r["welch_p"] == pytest.approx(st.ttest_ind(a, b, equal_var=False).pvalue)
    assert r["mannwhitney_p"] == pytest.approx(st.mannwhitneyu(a, b, alternative="two-sided").pvalue)


def test_compare_constant_paired_difference_is_undefined():
    a = np.array([0.70, 0.64, 0.69, 0.75])
    b = a - 0.03
    assert st.ttest_rel(a, b).pvalue < 1e-6  # scipy: t = inf (or float noise around it)
    r = compare(a, b, paired=True, n_boot=N_BOOT)
    assert math.isnan(r["paired_p"]) and math.isnan(r["mean_diff_ci95_low"])
    assert r["mean_diff"] == pytest.approx(0.03)


# ---------------------------------------------------------------------- power


def _simulated_power(n, effect, paired, sims=20000, seed=0):
    rng = np.random.default_rng(seed)
    if paired:
        p = st.ttest_1samp(rng.normal(effect, 1.0, (sims, n)), 0.0, axis=1).pvalue
    else:
        p = st.ttest_ind(rng.normal(effect, 1.0, (sims, n)), rng.normal(0.0, 1.0, (sims, n)), axis=1).pvalue
    return np.mean(p < 0.05)


@pytest.mark.parametrize("effect, paired", [(1.0, True), (1.2, False), (0.8, True)])
def test_seeds_to_detect_difference_against_simulation(effect, paired):
    n = int(seeds_to_detect_difference(effect, paired))
    # n seeds reach 80% power, one fewer does not (within the simulation's noise, ~0.003).
    assert _simulated_power(n, effect, paired) > 0.8 - 0.01
    assert _simulated_power(n - 1, effect, paired) < 0.8 + 0.01
    assert seeds_to_detect_difference(-effect, paired) == n  # two-sided


def test_seeds_to_detect_difference_against_cohen():
    # Cohen (1988), Table 2.4.1: d = 0.5, two-sided alpha .05, power .80 -> 64 per group; d = 0.8 -> 26.
    assert seeds_to_detect_difference(0.5, paired=False) == 64
    assert seeds_to_detect_difference(0.8, paired=False) == 26
    assert seeds_to_detect_difference(0.0, paired=True) == math.inf
    assert seeds_to_detect_difference(0.01, paired=False) == math.inf  # more than MAX_SEEDS
    assert math.isnan(seeds_to_detect_difference(math.nan, paired=True))


def test_seeds_to_detect_std_ratio_against_simulation():
    ratio = 2.5
    n = int(seeds_to_detect_std_ratio(ratio))

    def power(n, sims=20000):
        rng = np.random.default_rng(0)
        va = rng.normal(0, ratio, (sims, n)).var(axis=1, ddof=1)
        vb = rng.normal(0, 1.0, (sims, n)).var(axis=1, ddof=1)
        cdf = st.f.cdf(va / vb, n - 1, n - 1)
        return np.mean(2 * np.minimum(cdf, 1 - cdf) < 0.05)

    assert power(n) > 0.8 - 0.01 and power(n - 1) < 0.8 + 0.01
    assert seeds_to_detect_std_ratio(1 / ratio) == n  # a ratio and its inverse are as easy to detect
    assert seeds_to_detect_std_ratio(1.0) == math.inf
    assert math.isnan(seeds_to_detect_std_ratio(0.0)) and math.isnan(seeds_to_detect_std_ratio(math.inf))


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


# --------------------------------------------------------------------- holm


def test_holm_by_hand():
    # Sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> kept monotone: 0.06 for the last.
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.3, 0.9]) == pytest.approx([0.6, 0.9])
    assert holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([0.02]) == pytest.approx([0.02])  # a family of one
    assert holm([]) == []


def test_holm_leaves_undefined_tests_out_of_the_family():
    out = holm([0.01, float("nan"), 0.04])
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.04)


def test_holm_controls_the_familywise_error_under_the_null():
    # Four true-null tests (uniform p): any adjusted p < 0.05 in at most about 5% of families (Bonferroni's bound);
    # unadjusted, about 1 - 0.95^4 = 19% of families would find something.
    rng = np.random.default_rng(0)
    families = rng.uniform(size=(4000, 4))
    any_raw = (families < 0.05).any(axis=1).mean()
    any_holm = np.mean([min(holm(f)) < 0.05 for f in families])
    assert any_raw == pytest.approx(1 - 0.95 ** 4, abs=0.02)
    assert any_holm <= 0.05 + 0.01
