"""The sentence each comparison of `ptray report` ends with, on hand-built seeds: it states the numbers of
`stats.compare`, says when nothing was detected and what would detect it, and says when there is too little to test."""
import numpy as np
import pytest

from ptray import stats
from ptray.analysis.report import comparison_sentence

MAJORITY = 0.5


def _sentence(a, b, paired):
    summaries = [stats.summarize(x, at_majority=stats.at_or_below(x, MAJORITY)) for x in (a, b)]
    r = {**stats.compare(a, b, paired=paired), "paired": paired}
    return comparison_sentence("residual", "vanilla", r, *summaries), r


def test_a_detected_difference_states_its_interval_test_and_n():
    # One residual seed ends at the majority class: lower mean, larger spread.
    a, b = [0.66, 0.64, 0.62, 0.65, 0.50], [0.70, 0.71, 0.69, 0.72, 0.705]
    text, r = _sentence(a, b, paired=True)
    assert r["paired_p"] < stats.ALPHA
    assert text.startswith(f"residual vs vanilla: mean {100 * r['mean_diff']:+.1f} points (95% CI "
                           f"[{100 * r['mean_diff_ci95_low']:+.1f}, {100 * r['mean_diff_ci95_high']:+.1f}], "
                           f"paired t p = {r['paired_p']:.3f}, n = 5 pairs)")
    assert f"{r['std_ratio']:.2f}x vanilla's" in text
    assert text.endswith("; 1/5 seeds at or below majority vs 0/5.")


def test_no_detectable_difference_says_so_and_how_many_seeds_would_detect_it():
    a, b = [0.70, 0.64, 0.69, 0.75, 0.66], [0.71, 0.66, 0.70, 0.73, 0.69]
    text, r = _sentence(a, b, paired=False)
    assert r["welch_p"] >= stats.ALPHA and r["brown_forsythe_p"] >= stats.ALPHA
    assert f"mean: no detectable difference at n = 5/5 ({100 * r['mean_diff']:+.1f} points" in text
    assert f"about {int(r['seeds_to_detect_mean'])} seeds per config would detect a difference this size" in text
    assert f"std: no detectable difference at n = 5/5 ({r['std_ratio']:.2f}x vanilla's" in text
    assert f"needs about {int(r['seeds_to_detect_std'])} seeds per config to detect a ratio this size" in text
    assert r["seeds_to_detect_mean"] > 5  # what was not detected at 5 seeds needs more


@pytest.mark.parametrize("n_a", [1, 2])
def test_too_few_seeds_are_not_tested(n_a):
    a, b = [0.66, 0.62, np.nan][:n_a] + [np.nan] * (3 - n_a), [0.70, 0.71, 0.69]
    text, r = _sentence(a, b, paired=False)
    assert text.startswith(f"residual vs vanilla: too few seeds (n = {n_a}/3) to test; mean "
                           f"{100 * r['mean_diff']:+.1f} points")
    assert "p =" not in text and "CI" not in text
    assert f"{3 - n_a}/3 failed vs 0/3" in text


def test_seeds_that_do_not_vary_make_the_tests_undefined():
    text, _ = _sentence([0.5, 0.5, 0.5], [0.6, 0.6, 0.6], paired=True)
    assert "paired t undefined" in text and "Brown-Forsythe undefined" in text and "p = 0" not in text
    assert "3/3 seeds at or below majority vs 0/3" in text


def test_in_a_family_the_sentence_decides_on_the_holm_adjusted_p():
    # The detected difference of the first test, as one of four configs against the baseline.
    a, b = [0.66, 0.64, 0.62, 0.65, 0.50], [0.70, 0.71, 0.69, 0.72, 0.705]
    summaries = [stats.summarize(x, at_majority=stats.at_or_below(x, MAJORITY)) for x in (a, b)]
    r = {**stats.compare(a, b, paired=True), "paired": True}
    assert r["paired_p"] < stats.ALPHA
    survives = {**r, "holm_mean_p": 0.04, "holm_mean_m": 4, "holm_std_p": 0.5, "holm_std_m": 4}
    text = comparison_sentence("residual", "vanilla", survives, *summaries)
    assert text.startswith(f"residual vs vanilla: mean {100 * r['mean_diff']:+.1f} points (95% CI")
    assert f"paired t p = {r['paired_p']:.3f}, Holm-adjusted over 4 comparisons p = 0.040, n = 5 pairs)" in text
    lost = {**survives, "holm_mean_p": 0.12}
    text = comparison_sentence("residual", "vanilla", lost, *summaries)
    assert text.startswith("residual vs vanilla: mean: no detectable difference once adjusted for the family at "
                           f"n = 5 pairs ({100 * r['mean_diff']:+.1f} points")
    assert "Holm-adjusted over 4 comparisons p = 0.120)" in text
