"""Each figure in ptray.analysis.plots is written as a readable, non-empty PNG."""

import math

import numpy as np
import pytest

from conftest import check_png
from ptray.analysis import plots


def test_backend_is_agg():
    import matplotlib

    assert matplotlib.get_backend().lower() == "agg"


def test_seed_strip_plot_with_failed_seed_and_baseline(tmp_path):
    path = tmp_path / "sub" / "strip.png"
    out = plots.seed_strip_plot(
        {"prompt-20": [0.81, 0.84, math.nan, 0.79], "prompt-100": [0.70, 0.88, 0.62], "all-failed": [math.nan]},
        path,
        "accuracy",
        baseline=0.5,
    )
    assert out == path
    check_png(path)


def test_seed_strip_plot_is_deterministic(tmp_path):
    data = {"a": [0.8, 0.82, 0.9, math.nan], "b": [0.7, 0.71]}
    p1 = plots.seed_strip_plot(data, tmp_path / "1.png", "acc")
    p2 = plots.seed_strip_plot(data, tmp_path / "2.png", "acc")
    np.testing.assert_array_equal(check_png(p1), check_png(p2))


@pytest.mark.parametrize("band", ["minmax", "std"])
def test_learning_curves(tmp_path, band):
    per_config = {
        "lr=0.3": {
            0: [(0, 0.5), (10, 0.6), (20, 0.7), (30, 0.75)],
            1: [(0, 0.5), (15, 0.65), (30, 0.8)],
            2: [(0, 0.5), (10, math.nan)],  # diverged seed
        },
        "lr=0.03": {0: [(0, 0.5), (30, 0.6)]},
    }
    path = str(tmp_path / "curves.png")
    assert plots.learning_curves(per_config, path, "eval accuracy", band=band) == path
    check_png(path)


def test_learning_curves_rejects_unknown_band(tmp_path):
    with pytest.raises(ValueError):
        plots.learning_curves({}, tmp_path / "x.png", "acc", band="iqr")


def test_expected_max_plot(tmp_path):
    path = tmp_path / "emax.png"
    out = plots.expected_max_plot(
        {"a": [0.81, 0.84, 0.79, math.nan], "b": [0.7, 0.9, 0.6, 0.85, 0.8], "none": [math.nan]}, path, "accuracy"
    )
    assert out == path
    check_png(path)


def test_std_vs_param_list_and_dict(tmp_path):
    p1 = plots.std_vs_param([(100, 0.03), (20, 0.01), (50, math.nan)], tmp_path / "s1.png", "prompt length", "accuracy")
    p2 = plots.std_vs_param(
        {"soft prompt": [(0.01, 0.02), (0.1, 0.05)], "prefix": [(0.01, 0.01), (0.1, 0.02)]},
        tmp_path / "s2.png",
        "perturbation",
        "accuracy",
        logx=True,
    )
    check_png(p1)
    check_png(p2)
