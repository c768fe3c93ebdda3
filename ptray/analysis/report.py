"""`ptray report DIR`: the stability report of an experiment folder, as Markdown with PNG figures.

    DIR/report/report.md      tables (per-config statistics, comparisons against the baseline config, where the
                              seed variance comes from (ptray.analysis.variance), failures)
    DIR/report/*.png          per-seed strip plot, learning curves, expected max vs budget, std vs searched params,
                              the score against the final prompt length (where lengths differ)
    DIR/report/stats.json     every number in the tables, for scripts

Every config's statistics are `ConfigResults.summary` (the numbers of the `ptray tune` table and of the MLflow parent
runs), the figures are drawn from the same per-seed values, and the comparisons are `stats.compare` over them; each
comparison ends with a sentence that says what its numbers mean. The figures and the report are also logged to the
config's parent runs in MLflow (`log_experiment`, also how `ptray tune` logs a folder at its end).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ptray import stats
from ptray.analysis import plots, variance
from ptray.layout import LANDSCAPE_DIR, LANDSCAPE_FILE, REPORT_DIR, inside, redact, run_dir, write_json
from ptray.tracking.results import ConfigResults, Experiment, load_experiment
from ptray.tracking.store import Tracker, open_tracker, resolve_tracking_uri


class TrackingError(RuntimeError):
    """The report is written, but logging it to MLflow failed."""


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


def log_experiment(directory: str | Path, tracking_uri: str | None = None) -> Tracker:
    """Log (or bring up to date) an experiment folder in MLflow from its result.json files: every config and seed
    (`Tracker.sync`, idempotent), and each config's figures on its parent run."""
    tracker = open_tracker(directory, tracking_uri)
    log_config_figures(tracker, tracker.sync())
    return tracker


def log_config_figures(tracker: Tracker, exp: Experiment) -> None:
    for c in exp.configs.values():
        figures = config_figures(c, inside(exp.dir / REPORT_DIR / "configs", c.config_id))
        tracker.log_artifacts(c.config_id, figures, "figures")


def write_report(directory: str | Path, baseline: str | None = None, log_mlflow: bool = True,
                 tracking_uri: str | None = None) -> Path:
    """Write DIR/report/ and return the path of report.md. `baseline` is a config id or label."""
    exp = load_experiment(directory)
    base = exp.baseline(baseline)
    out = exp.dir / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    m = exp.primary_metric
    configs = list(exp.configs.values())

    summaries = {c.config_id: {name: c.summary(name) for name in exp.report_metrics()} for c in configs}
    comparisons = {c.config_id: _compare(c, base) for c in configs if c is not base}
    adjust_for_the_family(comparisons)
    for cid, r in comparisons.items():
        r["sentence"] = comparison_sentence(exp.configs[cid].label, base.label, r, summaries[cid][m],
                                            summaries[base.config_id][m])
    landscapes = _landscapes(exp)
    sources = variance.families(exp, m)

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
    lengths = _final_lengths(configs, m)
    if len({x for pts in lengths.values() for x, _ in pts}) > 1:
        figures["metric_vs_length"] = plots.metric_vs_length(lengths, out / "metric_vs_length.png", f"report {m}")
    for key, series in _std_series(exp, summaries).items():
        values = [p[0] for pts in series.values() for p in pts]
        logx = min(values) > 0 and max(values) / min(values) >= 10
        figures[f"std_vs_{key}"] = plots.std_vs_param(series, out / f"std_vs_{key}.png", key, f"report {m}", logx=logx)

    numbers = {"experiment": exp.name, "primary_metric": m, "baseline_config_id": base.config_id,
               "configs": {c.config_id: {"label": c.label, "overrides": c.overrides, "seeds": c.seed_ids,
                                         "summary": summaries[c.config_id],
                                         "comparison": comparisons.get(c.config_id)} for c in configs},
               "landscapes": landscapes, "variance_sources": [asdict(f) for f in sources]}
    write_json(out / "stats.json", numbers)
    md = out / "report.md"
    md.write_text(_markdown(exp, base, summaries, comparisons, figures, landscapes, sources))

    if log_mlflow:
        try:
            tracker = log_experiment(exp.dir, tracking_uri)
            files = [md, out / "stats.json", *figures.values()]
            for c in configs:
                tracker.log_artifacts(c.config_id, files, "report")
        except Exception as e:  # any MLflow, database or network error: the report itself is written
            uri = tracking_uri or resolve_tracking_uri(exp.dir, exp.config)
            raise TrackingError(f"{md} is written, but logging to MLflow at {redact(uri)} failed ({type(e).__name__}: "
                                f"{redact(str(e).strip().splitlines()[0][:300] if str(e).strip() else '')}); run "
                                f"`ptray report {exp.dir}` again once it answers, or pass --no-mlflow") from e
    return md


def _compare(c: ConfigResults, base: ConfigResults) -> dict:
    """`c` against the baseline over every finished seed of each. Paired when every finished seed of one is a finished
    seed of the other (a crash on one side would otherwise drop the other side's finished seed from the paired
    tests)."""
    metric = c.primary_metric
    a, b = c.metric(metric), base.metric(metric)
    paired = c.seed_ids == base.seed_ids and bool(np.array_equal(np.isfinite(a), np.isfinite(b)))
    return {**stats.compare(a, b, paired=paired), "paired": paired}


def _mean_test(r: dict) -> tuple[str, float]:
    return ("paired t", r["paired_p"]) if r["paired"] else ("Welch t", r["welch_p"])


def adjust_for_the_family(comparisons: dict[str, dict]) -> None:
    """Several configs against one baseline are a family of tests: at 0.05 each, four regularizers find something by
    chance one time in five. Holm's adjustment over the family (stats.holm) of the mean's test and of Brown-Forsythe's
    goes into each comparison (holm_mean_p / holm_std_p, over holm_mean_m / holm_std_m defined tests); the sentences
    decide on the adjusted p. One comparison is its own family: nothing to adjust."""
    rs = list(comparisons.values())
    if len(rs) < 2:
        return
    for key, p_of in (("mean", lambda r: _mean_test(r)[1]), ("std", lambda r: r["brown_forsythe_p"])):
        raw = [p_of(r) for r in rs]
        m = sum(math.isfinite(p) for p in raw)
        for r, adjusted in zip(rs, stats.holm(raw)):
            r[f"holm_{key}_p"], r[f"holm_{key}_m"] = adjusted, m


def comparison_sentence(name: str, base_name: str, r: dict, summary: dict, base_summary: dict) -> str:
    """One sentence for a comparison (`stats.compare` plus `paired`) of config `name` against `base_name`: the
    difference of means in points (hundredths of the metric) and the std ratio, each with its interval and test, or
    "no detectable difference" and the seeds per config that would detect the observed effect; the seeds at or below
    the majority class and the failed ones of each side (`summary`, `base_summary`: `ConfigResults.summary`)."""
    head = f"{name} vs {base_name}: "
    counts = _counts(summary, base_summary)
    n = f"n = {r['n_pairs']} pairs" if r["paired"] else f"n = {r['n_a']}/{r['n_b']}"
    if not r["n_a"] or not r["n_b"]:
        missing = name if not r["n_a"] else base_name
        return head + "; ".join([f"nothing to compare, no seed of {missing} finished ({n})", *counts]) + "."
    if min(r["n_a"], r["n_b"]) < stats.MIN_SEEDS:
        spread = [f"std {_n(r['std_ratio'], 2)}x {base_name}'s"] if not math.isnan(r["std_ratio"]) else []  # 1 seed
        return head + "; ".join([f"too few seeds ({n}) to test", f"mean {_pts(r['mean_diff'])} points", *spread,
                                 *counts]) + "."
    return head + "; ".join([_location(r, n), _spread(r, base_name), *counts]) + "."


def _holm(r: dict, key: str) -> tuple[str, bool]:
    """The Holm clause of a comparison's `key` ("mean" or "std") test, and whether the adjusted p still detects."""
    if f"holm_{key}_p" not in r:
        return "", True
    adjusted = r[f"holm_{key}_p"]
    return f", Holm-adjusted over {r[f'holm_{key}_m']} comparisons p = {_p(adjusted)}", adjusted < stats.ALPHA


def _location(r: dict, n: str) -> str:
    test, p = _mean_test(r)
    diff = f"{_pts(r['mean_diff'])} points"
    if not math.isfinite(p):
        why = "every seed differs by the same amount" if r["paired"] else "no seed of either config varies"
        return f"mean {diff} ({test} undefined: {why}, {n})"
    ci = f"95% CI [{_pts(r['mean_diff_ci95_low'])}, {_pts(r['mean_diff_ci95_high'])}]"
    holm, detects = _holm(r, "mean")
    if p < stats.ALPHA and detects:
        return f"mean {diff} ({ci}, {test} p = {_p(p)}{holm}, {n})"
    if p < stats.ALPHA:
        return (f"mean: no detectable difference once adjusted for the family at {n} ({diff}, {ci}, {test} "
                f"p = {_p(p)}{holm})")
    need = _seeds_needed(r["seeds_to_detect_mean"])
    power = f"; {need} would detect a difference this size with {stats.POWER:.0%} power" if need else ""
    return f"mean: no detectable difference at {n} ({diff}, {ci}, {test} p = {_p(p)}{power})"


def _spread(r: dict, base_name: str) -> str:
    # NaN: neither config's seeds vary (0/0).
    ratio = f"{_n(r['std_ratio'], 2)}x {base_name}'s" if not math.isnan(r["std_ratio"]) else "ratio undefined"
    p = r["brown_forsythe_p"]
    if not math.isfinite(p):
        return f"std {ratio} (Brown-Forsythe undefined: every seed of each config lies equally far from its median)"
    ci = f"95% CI [{_n(r['std_ratio_ci95_low'], 2)}, {_n(r['std_ratio_ci95_high'], 2)}]"
    holm, detects = _holm(r, "std")
    if p < stats.ALPHA and detects:
        return f"std {ratio} ({ci}, Brown-Forsythe p = {_p(p)}{holm})"
    if p < stats.ALPHA:
        return (f"std: no detectable difference once adjusted for the family at n = {r['n_a']}/{r['n_b']} ({ratio}, "
                f"{ci}, Brown-Forsythe p = {_p(p)}{holm})")
    # Brown-Forsythe's power has no closed form; the F test's, at normal seeds, bounds it from below.
    need = _seeds_needed(r["seeds_to_detect_std"])
    power = (f"; an F test at normal seeds needs {need} to detect a ratio this size with {stats.POWER:.0%} power, "
             "Brown-Forsythe more") if need else ""
    return (f"std: no detectable difference at n = {r['n_a']}/{r['n_b']} ({ratio}, {ci}, Brown-Forsythe "
            f"p = {_p(p)}{power})")


def _seeds_needed(n: float) -> str | None:
    if math.isnan(n):
        return None
    return f"more than {stats.MAX_SEEDS} seeds per config" if math.isinf(n) else f"about {int(n)} seeds per config"


def _counts(s: dict, b: dict) -> list[str]:
    out = []
    if math.isfinite(s["n_at_majority"]) and math.isfinite(b["n_at_majority"]):
        out.append(f"{s['n_at_majority']}/{s['n_seeds']} seeds at or below majority vs "
                   f"{b['n_at_majority']}/{b['n_seeds']}")
    if s["n_failed"] or b["n_failed"]:
        out.append(f"{s['n_failed']}/{s['n_seeds']} failed vs {b['n_failed']}/{b['n_seeds']}")
    return out


def _majority(*configs: ConfigResults) -> float | None:
    """The majority-class accuracy of the report split (median over seeds: subsets may differ), when accuracy is
    the metric drawn."""
    values = [s.majority_baseline for c in configs if c.primary_metric == "accuracy" for s in c.seeds]
    values = [v for v in values if math.isfinite(v)]
    return float(np.median(values)) if values else None


def _std_series(exp: Experiment, summaries: dict) -> dict[str, dict[str | None, list[tuple[float, float]]]]:
    """For each searched numeric key (prompt length, perturbation magnitude, ...): std across seeds (of the primary
    metric, as in the table) against it, one series per combination of the other searched values."""
    searched = exp.searched()
    out = {}
    for key, values in searched.items():
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values.values()):
            continue
        series: dict[str | None, list[tuple[float, float]]] = {}
        for cid, x in values.items():
            c = exp.configs[cid]
            others = ", ".join(f"{k}={c.overrides.get(k)}" for k in searched if k != key) or None
            series.setdefault(others, []).append((float(x), summaries[cid][exp.primary_metric]["std"]))
        out[key] = series
    return out


def _final_lengths(configs: list[ConfigResults], m: str) -> dict[int, list[tuple[int, float]]]:
    """Per seed, each config's (final prompt length, report metric) on it: where PBT evolves method.num_tokens, the
    length a member ended with. Seeds without a recorded config (never filed) or without a length are left out, and
    so are a population's best-member records (copies of a member's, `best_of` it); a failed seed's value is NaN."""
    out: dict[int, list[tuple[int, float]]] = {}
    for c in configs:
        for s, value in zip(c.scored, c.metric(m)):
            if s.prompt_length is not None and "best_of" not in s.raw:
                out.setdefault(s.seed, []).append((s.prompt_length, float(value)))
    return out


def _landscapes(exp: Experiment) -> dict[str, list[dict]]:
    """Loss-landscape numbers (`ptray landscape`) found in the run folders, per config."""
    found: dict[str, list[dict]] = {}
    for c in exp.configs.values():
        for s in c.seeds:
            f = run_dir(exp.dir, c.config_id, s.seed) / LANDSCAPE_DIR / LANDSCAPE_FILE
            if f.is_file():
                d = json.loads(f.read_text())
                found.setdefault(c.config_id, []).append(
                    {"seed": s.seed, **{k: d[k] for k in ("directions", "radius", "mean_loss_increase", "center_loss")},
                     "png": str(f.with_suffix(".png"))})
    return found


# --- Markdown ------------------------------------------------------------------------------------------------
def _markdown(exp: Experiment, base: ConfigResults, summaries, comparisons, figures, landscapes,
              sources: list[variance.Family]) -> str:
    m = exp.primary_metric
    configs = list(exp.configs.values())
    first = next((s.raw for c in configs for s in c.seeds if s.raw.get("config")), {})
    task = first.get("config", {}).get("task", {})
    majority = _majority(*configs)
    headline = {c.config_id: summaries[c.config_id][m] for c in configs}
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
        "Every statistic is over the n seeds that **finished**, whatever their score. A seed that ended at or below "
        "the majority-class baseline of the report split"
        + (f" ({majority:.4f})" if majority is not None else "")
        + " learned nothing, and that is the instability measured here: it counts, and the share of such seeds "
        "stands beside the statistics (as the failed runs of Mosbach et al. 2021 and Dodge et al. 2020 do). A seed "
        "**failed** if its run crashed, diverged or never wrote a result: it has no score, so it is counted and "
        f"listed, never averaged. No interval or test is given for fewer than {stats.MIN_SEEDS} finished seeds.",
        "",
        f"## {m} per config",
        "",
        _table(["config", "seeds", "failed", "n", "mean ± std", "95% CI of mean", "median", "IQR", "worst", "best",
                "≤ majority"],
               [[_cfg(c), str(s["n_seeds"]), f"{s['n_failed']}/{s['n_seeds']}", str(s["n_ok"]), _pm(s),
                 _ci(s), _n(s["median"]), _n(s["iqr"]), _n(s["min"]), _n(s["max"]),
                 _count(s["n_at_majority"], s["n_seeds"])]
                for c in configs for s in [headline[c.config_id]]]),
        "",
    ]
    if any(s["n_at_majority"] > 0 for s in headline.values()):  # NaN (no baseline) compares False
        suffix = stats.NONDEGENERATE
        lines += [
            "Secondary view, not the headline: the same statistics without the seeds at or below the majority class. "
            "It leaves out exactly the runs that learned nothing, so it flatters an unstable config.",
            "",
            _table(["config", "n above majority", "mean ± std", "95% CI of mean", "worst", "best"],
                   [[_cfg(c), _count(s["n_nondegenerate"]), _pm(s, suffix), _ci(s, suffix), _n(s["min" + suffix]),
                     _n(s["max" + suffix])] for c in configs for s in [headline[c.config_id]]]),
            "",
        ]
    lines += [f"![{m} per seed](seeds.png)", ""]
    others = [name for name in exp.report_metrics() if name != m]
    if others:
        rows = [[_cfg(c), *(_pm(summaries[c.config_id][o]) for o in others)] for c in configs]
        lines += ["Other report metrics (mean ± std over the same finished seeds):", "",
                  _table(["config", *others], rows), ""]
    if comparisons:
        lines += [
            f"## Against the baseline ({base.label})",
            "",
            "Over every finished seed of each config: the difference of means (config - baseline) with Welch's t "
            "and Mann-Whitney U; where both configs finished the same seeds, the paired t and Wilcoxon signed-rank "
            "tests too, and the interval is the paired t's. Spread: the ratio of standard deviations (config / "
            "baseline, < 1 is more stable) with a 95% bootstrap interval, and Brown-Forsythe and Levene tests of "
            "equal variance. Two-sided p-values; \"undefined\" where the seeds do not vary enough for the test to "
            "divide by anything. The last column is how many seeds per config would detect the observed difference "
            f"of means (t-test) and std ratio (F test) with {stats.POWER:.0%} power. With several configs against "
            "the baseline, Holm's adjustment over them of the mean's test (paired t, else Welch) and of "
            "Brown-Forsythe's keeps the chance of any false detection at 5%; the sentences below decide on it.",
            "",
            _table(["config", "n (config/baseline)", "Δ mean [95% CI]", "Welch p", "Mann-Whitney p", "paired t p",
                    "Wilcoxon p", "std ratio [95% CI]", "Brown-Forsythe p", "Levene p", "Holm p (mean, std)",
                    "seeds to detect (mean, std)"],
                   [_comparison_row(exp.configs[cid], r) for cid, r in comparisons.items()]),
            "",
            *(f"- {r['sentence']}" for r in comparisons.values()),
            "",
        ]
    lines += _sources_section(sources, m)
    lines += [
        "## Expected best score vs number of seeds",
        "",
        "Dodge et al. (2019): the expected maximum of the report metric over n runs drawn from the observed seeds "
        "(every finished seed, those at or below the majority baseline included; seeds that failed have no score "
        "and are left out). A config whose curve rises steeply needs several seeds to show its best.",
        "",
        "![expected max](expected_max.png)",
        "",
    ]
    for name, title in (("selection_curves", f"Selection {m} during training"), ("loss_curves", "Training loss")):
        if name in figures:
            lines += [f"## {title}", "", "Mean over seeds; the band spans the worst to the best seed.", "",
                      f"![{title}]({name}.png)", ""]
    if "metric_vs_length" in figures:
        lines += [f"## {m} against the final prompt length", "",
                  "Each run's report score against the prompt length it ended with (PBT over method.num_tokens resizes "
                  "a member's prompt as it evolves), one colour per seed.", "",
                  "![metric vs prompt length](metric_vs_length.png)", ""]
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
    lines += ["## Failed seeds", "", "No score: counted above, not in the statistics.", ""]
    lines += [_table(["config", "seed", "reason"], failures) if failures else "None.", ""]
    low = [[_cfg(c), str(s.seed), c.majority_note(s)] for c in configs for s in c.majority_seeds()]
    if low:
        lines += ["## Seeds at or below the majority class", "", "Finished, and in the statistics above.", "",
                  _table(["config", "seed", "report"], low), ""]
    running = [[_cfg(c), str(s.seed), _cell(s.reason or "")] for c in configs for s in c.seeds if s.status == "running"]
    if running:
        lines += ["## Seeds still running", "", f"`ptray tune` (PID {exp.owner}) is still running this folder: these "
                  "seeds have no result yet and are not in the statistics. Run `ptray report` again when it ends.", "",
                  _table(["config", "seed", "status"], running), ""]
    stopped = [[_cfg(c), str(s.seed), _cell(s.reason or "")] for c in configs for s in c.seeds if s.status == "stopped"]
    if stopped:
        lines += ["## Seeds stopped early by the scheduler", "", "Pruned, not failed: left out of the statistics.", "",
                  _table(["config", "seed", "reason"], stopped), ""]
    rows = [[_cfg(c), f"`{c.config_id}`", _cell(json.dumps(c.overrides))] for c in configs]
    lines += ["## Configs", "", _table(["config", "id", "searched values"], rows), "",
              "Numbers: `stats.json` beside this file. Regenerate with `ptray report DIR`.", ""]
    return "\n".join(lines)


def _sources_section(families: list[variance.Family], m: str) -> list[str]:
    """Where the seed variance comes from, per family of configs that differ only in source seeds."""
    rows = []
    for f in families:
        held = ", ".join(f"{s} {'whole split' if v is None else v}" for s, v in f.held.items()) or "none"
        for i, x in enumerate(f.factors):
            rows.append([_cell(f.label) if i == 0 else "", str(f.n) if i == 0 else "", _n(f.std) if i == 0 else "",
                         held if i == 0 else "", x.name, f"{x.groups} ({x.n} seeds)",
                         _n(x.std) + ("" if math.isnan(x.ci[0]) else f" [{_n(x.ci[0])}, {_n(x.ci[1])}]")])
    if not rows:
        return []
    return [
        "## Where the seed variance comes from",
        "",
        "Each seed has three sources of variance, each with its own seed (result.json `seeds`): the k-shot `sample` "
        "of the data, the prompt's `init`, and the data `order` with training noise. Configs that differ only in "
        "those seeds form one family. Across a source: the pooled standard deviation of report " + m + " over "
        "groups of finished seeds that share every other source's seed, with a 95% chi-square interval. Sources "
        "whose seeds move together in every run (unset, each is train.seed) are one factor and cannot be told "
        "apart; to separate them, search over task.sample_seed, train.init_seed or train.order_seed.",
        "",
        _table(["family", "n", "std (all)", "held fixed", "across", "groups", "std across [95% CI]"], rows),
        "",
    ]


def _comparison_row(c: ConfigResults, r: dict) -> list[str]:
    testable = min(r["n_a"], r["n_b"]) >= stats.MIN_SEEDS

    def p(x: float, applies: bool = True) -> str:
        if not applies:
            return "unpaired"
        return "too few seeds" if not testable else _p(x)

    diff = _signed(r["mean_diff"]) + (
        f" [{_signed(r['mean_diff_ci95_low'])}, {_signed(r['mean_diff_ci95_high'])}]" if testable else "")
    ratio = _n(r["std_ratio"], 2) + (
        f" [{_n(r['std_ratio_ci95_low'], 2)}, {_n(r['std_ratio_ci95_high'], 2)}]" if testable else "")
    need = f"{_seeds(r['seeds_to_detect_mean'])}, {_seeds(r['seeds_to_detect_std'])}" if testable else "-"
    return [_cfg(c), f"{r['n_a']}/{r['n_b']}" + (" (paired)" if r["paired"] else ""), diff, p(r["welch_p"]),
            p(r["mannwhitney_p"]), p(r["paired_p"], r["paired"]), p(r["wilcoxon_p"], r["paired"]), ratio,
            p(r["brown_forsythe_p"]), p(r["levene_p"]),
            f"{p(r['holm_mean_p'])}, {p(r['holm_std_p'])}" if "holm_mean_p" in r else "-", need]


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


def _pm(s: dict, suffix: str = "") -> str:
    """mean ± std; one seed has no std, and says so."""
    mean, std = s["mean" + suffix], s["std" + suffix]
    if math.isnan(mean):
        return "-"
    return f"{_n(mean)} ± {_n(std)}" if not math.isnan(std) else f"{_n(mean)} (one seed)"


def _ci(s: dict, suffix: str = "") -> str:
    n = s["n_ok"] if not suffix else s["n" + suffix]
    if n < stats.MIN_SEEDS:
        return f"too few seeds (n = {n})"
    return f"[{_n(s['ci95_low' + suffix])}, {_n(s['ci95_high' + suffix])}]"


def _count(k: float, n: int | None = None) -> str:
    # NaN: no majority baseline applies (the report has no accuracy).
    if math.isnan(k):
        return "-"
    return f"{int(k)}/{n}" if n is not None else str(int(k))


def _signed(x: float) -> str:
    return "-" if not math.isfinite(x) else f"{x:+.4f}"


def _pts(x: float) -> str:
    """A difference of a metric in [0, 1] in points (hundredths)."""
    return f"{100 * x:+.1f}"


def _p(p: float) -> str:
    if not math.isfinite(p):
        return "undefined"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def _seeds(n: float) -> str:
    if math.isnan(n):
        return "-"
    return f"> {stats.MAX_SEEDS}" if math.isinf(n) else str(int(n))


def _mean_std(values: list[float]) -> str:
    v = np.asarray(values, dtype=float)
    return f"{_n(float(v.mean()))} ± {_n(float(v.std(ddof=1)) if v.size > 1 else math.nan)}"
