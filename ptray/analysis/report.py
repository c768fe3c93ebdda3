"""`ptray report DIR`: the stability report of an experiment folder, as Markdown with PNG figures.

    DIR/report/report.md      tables (per-config statistics, comparisons against the baseline config, failures)
    DIR/report/*.png          per-seed strip plot, learning curves, expected max vs budget, std vs searched params
    DIR/report/stats.json     every number in the tables, for scripts

Statistics come from `ptray.analysis.stats` over the per-seed arrays of `ptray.tracking.results`; nothing is computed
twice. The figures and the report are also logged to the config's parent runs in MLflow.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ptray.analysis import plots, stats
from ptray.tracking.results import ConfigResults, Experiment, load_experiment

REPORT_DIR = "report"
LANDSCAPE_FILE = "landscape/landscape.json"


def config_figures(c: ConfigResults, folder: str | Path) -> list[Path]:
    """One config's figures (for its parent run): its seeds' report metric, selection curves and training loss."""
    folder = Path(folder)
    m = c.primary_metric
    files = [plots.seed_strip_plot({c.label: c.metric(m)}, folder / "seeds.png", f"report {m}",
                                   baseline=_majority(c))]
    for key, name in ((f"selection/{m}", "selection_curve.png"), ("loss", "loss_curve.png")):
        curves = c.curves(key)
        if any(curves.values()):
            files.append(plots.learning_curves({c.label: curves}, folder / name, key))
    return files


def write_report(directory: str | Path, baseline: str | None = None, log_mlflow: bool = True,
                 tracking_uri: str | None = None, n_boot: int = 10000) -> Path:
    """Write DIR/report/ and return the path of report.md. `baseline` is a config id or label."""
    exp = load_experiment(directory)
    base = exp.baseline(baseline)
    out = exp.dir / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    m = exp.primary_metric
    configs = list(exp.configs.values())

    summaries = {c.config_id: {name: c.summary(name, n_boot) for name in exp.report_metrics()} for c in configs}
    finished = {c.config_id: c.finished_summary(m, n_boot) for c in configs}
    comparisons = {c.config_id: _compare(c, base, m, n_boot) for c in configs if c is not base}
    landscapes = _landscapes(exp)

    figures: dict[str, Path] = {
        "seeds": plots.seed_strip_plot({c.label: c.metric(m) for c in configs}, out / "seeds.png", f"report {m}",
                                       baseline=_majority(*configs)),
        "expected_max": plots.expected_max_plot({c.label: c.metric(m) for c in configs}, out / "expected_max.png",
                                                f"report {m}"),
    }
    for key, name in ((f"selection/{m}", "selection_curves"), ("loss", "loss_curves")):
        curves = {c.label: c.curves(key) for c in configs}
        if any(any(v.values()) for v in curves.values()):
            figures[name] = plots.learning_curves(curves, out / f"{name}.png", key)
    for key, series in _std_series(exp, m).items():
        values = [p[0] for pts in series.values() for p in pts]
        logx = min(values) > 0 and max(values) / min(values) >= 10
        figures[f"std_vs_{key}"] = plots.std_vs_param(series, out / f"std_vs_{key}.png", key, f"report {m}", logx=logx)

    numbers = {"experiment": exp.name, "primary_metric": m, "baseline_config_id": base.config_id,
               "configs": {c.config_id: {"label": c.label, "overrides": c.overrides, "seeds": c.seed_ids,
                                         "summary": summaries[c.config_id],
                                         "finished_seeds_summary": finished[c.config_id],
                                         "comparison": comparisons.get(c.config_id)} for c in configs},
               "landscapes": landscapes}
    (out / "stats.json").write_text(json.dumps(numbers, indent=2, default=_json_default))
    md = out / "report.md"
    md.write_text(_markdown(exp, base, summaries, finished, comparisons, figures, landscapes))

    if log_mlflow:
        from ptray.tracking.store import log_experiment

        tracker = log_experiment(exp.dir, tracking_uri)
        files = [md, out / "stats.json", *figures.values()]
        for c in configs:
            tracker.log_artifacts(c.config_id, files, "report")
    return md


def _compare(c: ConfigResults, base: ConfigResults, metric: str, n_boot: int) -> dict:
    """`c` against the baseline over the seeds that did not fail; paired when both ran the same seeds and at least
    two of them failed in neither (otherwise the paired tests would drop everything)."""
    a, b = c.ok_values(metric), base.ok_values(metric)
    paired = c.seed_ids == base.seed_ids and int((np.isfinite(a) & np.isfinite(b)).sum()) > 1
    result = stats.compare(a, b, paired=paired, n_boot=n_boot)
    return {**result, "paired": paired}


def _majority(*configs: ConfigResults) -> float | None:
    """The majority-class accuracy of the report split (median over seeds: subsets may differ), when accuracy is
    the metric drawn."""
    values = [s.majority_baseline for c in configs if c.primary_metric == "accuracy" for s in c.seeds]
    values = [v for v in values if math.isfinite(v)]
    return float(np.median(values)) if values else None


def _std_series(exp: Experiment, metric: str) -> dict[str, dict[str | None, list[tuple[float, float]]]]:
    """For each searched numeric key (prompt length, perturbation magnitude, ...): std across seeds against it,
    one series per combination of the other searched values."""
    searched = exp.searched()
    out = {}
    for key, values in searched.items():
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values.values()):
            continue
        series: dict[str | None, list[tuple[float, float]]] = {}
        for cid, x in values.items():
            c = exp.configs[cid]
            others = ", ".join(f"{k}={c.overrides.get(k)}" for k in searched if k != key) or None
            series.setdefault(others, []).append((float(x), c.summary(metric, n_boot=1000)["std"]))
        out[key] = series
    return out


def _landscapes(exp: Experiment) -> dict[str, list[dict]]:
    """Loss-landscape numbers (`ptray landscape`) found in the run folders, per config."""
    found: dict[str, list[dict]] = {}
    for c in exp.configs.values():
        for s in c.seeds:
            f = exp.dir / "runs" / c.config_id / f"seed{s.seed}" / LANDSCAPE_FILE
            if f.is_file():
                d = json.loads(f.read_text())
                found.setdefault(c.config_id, []).append(
                    {"seed": s.seed, **{k: d[k] for k in ("directions", "radius", "mean_loss_increase", "center_loss")},
                     "png": str(f.with_suffix(".png"))})
    return found


# --- Markdown ------------------------------------------------------------------------------------------------
def _markdown(exp: Experiment, base: ConfigResults, summaries, finished, comparisons, figures, landscapes) -> str:
    m = exp.primary_metric
    configs = list(exp.configs.values())
    first = next((s.raw for c in configs for s in c.seeds if s.raw.get("config")), {})
    task = first.get("config", {}).get("task", {})
    lines = [
        f"# Seed stability: {exp.name}",
        "",
        f"Task **{first.get('task', task.get('name', '?'))}**, model **{first.get('model', '?')}**; "
        f"report metric **{m}** on split `{first.get('report_split', task.get('report_split', '?'))}`"
        + (f" (first {task['max_eval_examples']} examples)" if task.get("max_eval_examples") else "")
        + f"; selection on `{first.get('selection_split', task.get('selection_split', '?'))}`. "
        f"{len(configs)} configs, seeds {', '.join(map(str, exp.seeds)) or '(as found)'}. "
        f"Baseline config: **{base.label}** (`{base.config_id}`).",
        "",
        "A seed **failed** if its run failed or diverged, never wrote a result, or (when the metric is an accuracy) "
        "ended at or below the majority-class baseline of the report split"
        + (f" ({_majority(*configs):.4f})" if _majority(*configs) is not None else "")
        + ". Statistics are over the other seeds; the failure rate stands beside them.",
        "",
        f"## {m} per config",
        "",
        _table(["config", "seeds", "failed", "mean ± std", "95% CI of mean", "median", "IQR", "worst", "best"],
               [[_cfg(c), str(s["n_seeds"]), f"{s['n_failed']} ({s['failure_rate']:.0%})",
                 _pm(s), f"[{_n(s['ci95_low'])}, {_n(s['ci95_high'])}]",
                 _n(s["median"]), _n(s["iqr"]), _n(s["min"]), _n(s["max"])]
                for c in configs for s in [summaries[c.config_id][m]]]),
        "",
        f"Over every seed that finished, those at or below the majority class included ({m}):",
        "",
        _table(["config", "finished", "mean ± std", "95% CI of mean", "worst", "best"],
               [[_cfg(c), str(s["n_ok"]), _pm(s), f"[{_n(s['ci95_low'])}, {_n(s['ci95_high'])}]", _n(s["min"]),
                 _n(s["max"])] for c in configs for s in [finished[c.config_id]]]),
        "",
        f"![{m} per seed](seeds.png)",
        "",
    ]
    others = [name for name in exp.report_metrics() if name != m]
    if others:
        rows = [[_cfg(c), *(_pm(summaries[c.config_id][o]) for o in others)] for c in configs]
        lines += ["Other report metrics (mean ± std over the same seeds):", "", _table(["config", *others], rows), ""]
    if comparisons:
        lines += [
            f"## Against the baseline ({base.label})",
            "",
            "Difference of means with Welch's t and Mann-Whitney U. Where both configs ran the same seeds (and at "
            "least two failed in neither), every test is over the seeds neither failed, and the paired t and "
            "Wilcoxon signed-rank tests are added. Spread: the ratio of standard deviations (config / baseline, "
            "< 1 is more stable) with a 95% bootstrap interval, and Brown-Forsythe and Levene tests of equal "
            "variance. Two-sided p-values.",
            "",
            _table(["config", "Δ mean", "Welch p", "Mann-Whitney p", "paired t p", "Wilcoxon p", "std ratio [95% CI]",
                    "Brown-Forsythe p", "Levene p", "n (config, baseline)"],
                   [[_cfg(exp.configs[cid]), _signed(r["mean_diff"]), _p(r["welch_p"]), _p(r["mannwhitney_p"]),
                     _p(r["paired_p"]) if r["paired"] else "unpaired", _p(r["wilcoxon_p"]) if r["paired"] else "-",
                     f"{_n(r['std_ratio'], 2)} [{_n(r['std_ratio_ci95_low'], 2)}, {_n(r['std_ratio_ci95_high'], 2)}]",
                     _p(r["brown_forsythe_p"]), _p(r["levene_p"]), f"{r['n_a']}, {r['n_b']}"]
                    for cid, r in comparisons.items()]),
            "",
        ]
    lines += [
        "## Expected best score vs number of seeds",
        "",
        "Dodge et al. (2019): the expected maximum of the report metric over n runs drawn from the observed seeds "
        "(seeds that crashed or diverged have no score and are left out; seeds at or below the majority baseline "
        "count with their score). A config whose curve rises steeply needs several seeds to show its best.",
        "",
        "![expected max](expected_max.png)",
        "",
    ]
    for name, title in (("selection_curves", f"Selection {m} during training"), ("loss_curves", "Training loss")):
        if name in figures:
            lines += [f"## {title}", "", "Mean over seeds; the band spans the worst to the best seed.", "",
                      f"![{title}]({name}.png)", ""]
    std_figs = [k for k in figures if k.startswith("std_vs_")]
    if std_figs:
        lines += ["## Seed sensitivity against searched parameters", ""]
        lines += [f"![{k}]({k}.png)" for k in std_figs] + [""]
    if landscapes:
        lines += ["## Loss landscape", "",
                  "Mean increase of the training loss within the given radius of the trained prompt "
                  "(`ptray landscape`): smaller is flatter.", "",
                  _table(["config", "seeds", "directions", "radius", "mean loss increase (mean ± std)"],
                         [[_cfg(exp.configs[cid]), ", ".join(str(r["seed"]) for r in rs),
                           ", ".join(sorted({r["directions"] for r in rs})),
                           ", ".join(sorted({str(r["radius"]) for r in rs})),
                           _mean_std([r["mean_loss_increase"] for r in rs])] for cid, rs in landscapes.items()]), ""]
    failures = [[_cfg(c), str(s.seed), _cell(c.failure_reason(s))] for c in configs for s in c.failed_seeds()]
    lines += ["## Failed seeds", ""]
    lines += [_table(["config", "seed", "reason"], failures) if failures else "None.", ""]
    stopped = [[_cfg(c), str(s.seed), _cell(s.reason or "")] for c in configs for s in c.seeds if s.status == "stopped"]
    if stopped:
        lines += ["## Seeds stopped early by the scheduler", "", "Pruned, not failed: left out of the statistics.", "",
                  _table(["config", "seed", "reason"], stopped), ""]
    rows = [[_cfg(c), f"`{c.config_id}`", _cell(json.dumps(c.overrides))] for c in configs]
    lines += ["## Configs", "", _table(["config", "id", "searched values"], rows), "",
              "Numbers: `stats.json` beside this file. Regenerate with `ptray report DIR`.", ""]
    return "\n".join(lines)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _cfg(c: ConfigResults) -> str:
    return _cell(c.label)


def _cell(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else text
    line = line if len(line) <= 160 else line[:157] + "..."
    return line.replace("|", "\\|")


def _n(x: float, digits: int = 4) -> str:
    if x is None or math.isnan(x):
        return "-"
    return "∞" if math.isinf(x) else f"{x:.{digits}f}"


def _pm(s: dict) -> str:
    return f"{_n(s['mean'])} ± {_n(s['std'])}"


def _signed(x: float) -> str:
    return "-" if not math.isfinite(x) else f"{x:+.4f}"


def _p(p: float) -> str:
    if not math.isfinite(p):
        return "-"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def _mean_std(values: list[float]) -> str:
    v = np.asarray(values, dtype=float)
    return f"{_n(float(v.mean()))} ± {_n(float(v.std(ddof=1)) if v.size > 1 else math.nan)}"


def _json_default(o: Any):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
