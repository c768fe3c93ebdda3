"""Figures for seed-stability studies.

Every function takes plain data (dicts/lists of floats, NaN = failed seed)
and a destination path, writes one PNG there (creating parent folders), and
returns ``path`` unchanged, so callers can hand it straight to an artifact
logger. No Ray/MLflow imports: the tracking layer decides where figures go.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

# Headless: training nodes and CI have no display. Must precede the pyplot
# import, which picks the backend on first import.
matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from ptray.stats import expected_max_performance  # noqa: E402

__all__ = ["seed_strip_plot", "learning_curves", "expected_max_plot", "std_vs_param", "metric_vs_length"]

_DPI = 120


def _save(fig, path):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    # format="png" so a path without the suffix still gets a PNG.
    fig.savefig(path, dpi=_DPI, format="png")
    plt.close(fig)  # sweeps draw many figures; pyplot keeps them alive otherwise
    return path


def _colors(n: int):
    cycle = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
    return [cycle[i % len(cycle)] for i in range(n)]


def seed_strip_plot(
    per_config: Mapping[str, Sequence[float]],
    path,
    metric_name: str,
    baseline: float | None = None,
    seed: int = 0,
):
    """Per-seed points over a box plot, one column per configuration.

    Failed seeds (NaN/inf) cannot sit on the metric axis, so they are drawn
    as red x markers in a strip below the data with a "k failed" count -
    hiding them would make an unstable config look stable. ``baseline``
    (majority-class accuracy) is drawn as a dashed line. Jitter is seeded so
    the figure is reproducible.
    """
    names = list(per_config)
    arrays = [np.asarray(per_config[n], dtype=float).ravel() for n in names]
    finite = [a[np.isfinite(a)] for a in arrays]
    positions = np.arange(1, len(names) + 1)

    all_ok = np.concatenate(finite) if finite else np.array([])
    ref = np.concatenate([all_ok, [baseline]]) if baseline is not None else all_ok
    lo, hi = (float(ref.min()), float(ref.max())) if ref.size else (0.0, 1.0)
    span = hi - lo if hi > lo else max(abs(hi) * 0.1, 1e-3)
    fail_y = lo - 0.12 * span

    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(names) + 2.0), 4.5))
    box_pos = [p for p, f in zip(positions, finite) if f.size]
    if box_pos:
        ax.boxplot(
            [f for f in finite if f.size],
            positions=box_pos,
            widths=0.5,
            showfliers=False,  # every seed is drawn as a point already
            medianprops={"color": "black"},
        )

    rng = np.random.default_rng(seed)
    any_failed = False
    for p, a, f, color in zip(positions, arrays, finite, _colors(len(names))):
        if f.size:
            ax.scatter(p + rng.uniform(-0.15, 0.15, f.size), f, s=22, color=color, alpha=0.8, zorder=3)
        n_fail = int(a.size - f.size)
        if n_fail:
            ax.scatter(
                p + rng.uniform(-0.15, 0.15, n_fail),
                np.full(n_fail, fail_y),
                marker="x",
                color="red",
                s=30,
                zorder=3,
                label=None if any_failed else "failed seed (NaN)",
            )
            ax.annotate(f"{n_fail} failed", (p, fail_y - 0.06 * span), ha="center", va="top", color="red", fontsize=8)
            any_failed = True

    if baseline is not None:
        ax.axhline(baseline, color="gray", linestyle="--", linewidth=1, label="majority baseline")
    ax.set_xticks(positions)
    # Config labels list searched values ("a=1, b=2"): one per line keeps them readable without squeezing the axes.
    labels = [n.replace(", ", "\n") for n in names]
    long_names = max((len(line) for n in labels for line in n.splitlines()), default=0) > 10
    ax.set_xticklabels(labels, rotation=30 if long_names else 0, ha="right" if long_names else "center")
    ax.set_xlim(0.4, len(names) + 0.6)
    ax.set_ylim(lo - (0.3 if any_failed else 0.08) * span, hi + 0.08 * span)
    ax.set_ylabel(metric_name)
    ax.set_title(f"{metric_name} per seed")
    if baseline is not None or any_failed:
        ax.legend(loc="best", fontsize=8)
    return _save(fig, path)


def _curve_on_grid(points: Sequence[tuple[float, float]], grid: np.ndarray) -> np.ndarray:
    # Last value wins for a step logged twice; NaN/inf points (divergence) are dropped.
    by_step = {float(s): float(v) for s, v in points}
    steps = np.array(sorted(k for k, v in by_step.items() if np.isfinite(v)))
    out = np.full(grid.shape, np.nan)
    if steps.size == 0:
        return out
    vals = np.array([by_step[s] for s in steps])
    inside = (grid >= steps[0]) & (grid <= steps[-1])
    # No extrapolation: a seed that stopped early contributes nothing past its
    # last step instead of a flat line that would shrink the band.
    out[inside] = np.interp(grid[inside], steps, vals)
    return out


def learning_curves(
    per_config: Mapping[str, Mapping[int, Sequence[tuple[float, float]]]],
    path,
    metric_name: str,
    band: str = "minmax",
):
    """Mean curve across seeds with a band, per configuration.

    Seeds log at different steps (early stopping, eval cadence), so each
    seed's (step, value) curve is linearly interpolated onto the union of all
    its config's steps, inside that seed's own step range only; mean and band
    at a step use the seeds that cover it. ``band`` is ``"minmax"`` (worst to
    best seed) or ``"std"`` (mean +/- std, ddof=1 where >= 2 seeds). Faint
    lines show the individual seeds.
    """
    if band not in ("minmax", "std"):
        raise ValueError(f"band must be 'minmax' or 'std', got {band!r}")
    names = list(per_config)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name, color in zip(names, _colors(len(names))):
        seeds = per_config[name]
        all_steps = sorted(
            {float(s) for pts in seeds.values() for s, v in pts if np.isfinite(float(v))}
        )
        if not all_steps:
            ax.plot([], [], color=color, label=f"{name} (no data)")
            continue
        grid = np.array(all_steps)
        curves = np.vstack([_curve_on_grid(pts, grid) for pts in seeds.values()])
        covered = np.isfinite(curves)
        count = covered.sum(axis=0)  # >= 1 everywhere: the grid is built from finite points
        with np.errstate(invalid="ignore"):
            mean = np.nansum(curves, axis=0) / count
            if band == "minmax":
                low, high = np.nanmin(curves, axis=0), np.nanmax(curves, axis=0)
            else:
                dev = np.where(covered, curves - mean, 0.0)
                sd = np.sqrt((dev ** 2).sum(axis=0) / np.maximum(count - 1, 1))
                sd[count < 2] = 0.0
                low, high = mean - sd, mean + sd
        for row in curves:
            ax.plot(grid, row, color=color, alpha=0.2, linewidth=0.8)
        ax.plot(grid, mean, color=color, linewidth=2, label=f"{name} (n={len(seeds)})")
        ax.fill_between(grid, low, high, color=color, alpha=0.2, linewidth=0)
    ax.set_xlabel("step")
    ax.set_ylabel(metric_name)
    ax.set_title(f"{metric_name}: mean across seeds, band = {'min-max' if band == 'minmax' else '±std'}")
    if names:
        ax.legend(loc="best", fontsize=8)
    return _save(fig, path)


def expected_max_plot(
    per_config: Mapping[str, Sequence[float]],
    path,
    metric_name: str,
    show_std: bool = True,
):
    """Expected best ``metric_name`` vs number of runs (Dodge et al. 2019).

    One curve per configuration from :func:`expected_max_performance` over its
    finite per-seed values, optionally with a +/- std band clipped to the
    observed [min, max] (the max of draws from the empirical distribution
    cannot leave it). Shows how many seeds a config needs to be competitive.
    """
    names = list(per_config)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name, color in zip(names, _colors(len(names))):
        v = np.asarray(per_config[name], dtype=float).ravel()
        ok = v[np.isfinite(v)]
        if ok.size == 0:
            ax.plot([], [], color=color, label=f"{name} (no successful seed)")
            continue
        e, sd = expected_max_performance(ok, return_std=True)
        n = np.arange(1, e.size + 1)
        n_fail = v.size - ok.size
        label = name + (f" ({n_fail} failed seed{'s' if n_fail > 1 else ''} excluded)" if n_fail else "")
        ax.plot(n, e, marker="o", markersize=3, color=color, label=label)
        if show_std:
            ax.fill_between(n, np.clip(e - sd, ok.min(), ok.max()), np.clip(e + sd, ok.min(), ok.max()),
                            color=color, alpha=0.15, linewidth=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("number of runs (seeds)")
    ax.set_ylabel(f"expected max {metric_name}")
    ax.set_title(f"Expected best {metric_name} vs budget")
    if names:
        ax.legend(loc="best", fontsize=8)
    return _save(fig, path)


def std_vs_param(
    points: Sequence[tuple[float, float]] | Mapping[str, Sequence[tuple[float, float]]],
    path,
    param_name: str,
    metric_name: str,
    logx: bool = False,
):
    """Std of ``metric_name`` across seeds against a searched parameter.

    ``points`` is a list of ``(param_value, std)`` for one series, or a dict
    ``label -> list`` for several (e.g. one per method). Points are sorted by
    the parameter; a NaN std (fewer than two successful seeds) leaves a gap.
    """
    series = dict(points) if isinstance(points, Mapping) else {None: points}
    fig, ax = plt.subplots(figsize=(6.0, 4.2))
    for (label, pts), color in zip(series.items(), _colors(len(series))):
        arr = np.asarray(sorted(pts, key=lambda p: p[0]), dtype=float).reshape(-1, 2)
        ax.plot(arr[:, 0], arr[:, 1], marker="o", color=color, label=label)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(param_name)
    ax.set_ylabel(f"std of {metric_name} across seeds")
    ax.set_title(f"Seed sensitivity vs {param_name}")
    if any(label is not None for label in series):
        ax.legend(loc="best", fontsize=8)
    return _save(fig, path)


def metric_vs_length(
    per_seed: Mapping[int, Sequence[tuple[float, float]]],
    path,
    metric_name: str,
):
    """Final ``metric_name`` against the final prompt length, one colour per seed.

    ``per_seed`` maps a seed to its runs' ``(prompt length, value)`` points (the members of its PBT population, or
    its configs). Points whose value is NaN (failed runs) are left out and counted in the legend.
    """
    seeds = sorted(per_seed)
    fig, ax = plt.subplots(figsize=(6.0, 4.2))
    for seed, color in zip(seeds, _colors(len(seeds))):
        arr = np.asarray(per_seed[seed], dtype=float).reshape(-1, 2)
        ok = arr[np.isfinite(arr[:, 1])]
        n_fail = len(arr) - len(ok)
        label = f"seed {seed}" + (f" ({n_fail} failed)" if n_fail else "")
        ax.scatter(ok[:, 0], ok[:, 1], color=color, s=30, alpha=0.8, label=label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("final prompt length (tokens)")
    ax.set_ylabel(metric_name)
    ax.set_title(f"{metric_name} against the final prompt length")
    if seeds:
        ax.legend(loc="best", fontsize=8)
    return _save(fig, path)
