"""PBT over prompt length against a grid over lengths at the same compute (TREC 16-shot, MiniLM, 3 seeds).

    python studies/pbt_length/compare.py            # runs what has no report yet, then writes RESULTS.md + figure
    python studies/pbt_length/compare.py --summary  # only rewrites RESULTS.md from the folders on disk

Runs three searches through studies/run.py's runner (`ptray tune`, `ptray report`, timing.json), each into its own
folder here: the grid over lengths at lr 0.1 (experiments/sentence/grid_length.yaml -> grid/), PBT over length and lr
(experiments/sentence/pbt_length.yaml -> pbt/), and PBT over length alone at the grid's lr (pbt_fixed_lr.yaml ->
pbt_fixed_lr/), which tells a gain of evolving the length from one of searching the lr. Then it compares, per seed,
what each search picks by its selection score (never the report split) and how much compute each needs.

Compute is counted in member-steps: a PBT population of 4 members and the grid's 4 lengths each train 60 steps per
seed, 240 member-steps. Synchronous PBT advances its members in lockstep, so at step t a population has spent 4t;
the grid's curve is read the same way (its 4 configs in lockstep), though a grid only knows its best once it ends.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ptray.config import load_config  # noqa: E402
from ptray.distributed.search import PBT_MEMBER, selection_score  # noqa: E402
from ptray.tracking.results import ConfigResults, load_experiment  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
EXPERIMENTS = {"grid": REPO / "experiments/sentence/grid_length.yaml",
               "pbt": REPO / "experiments/sentence/pbt_length.yaml",
               "pbt_fixed_lr": HERE / "pbt_fixed_lr.yaml"}
NAMES = {"grid": "grid over lengths", "pbt": "PBT over length and lr", "pbt_fixed_lr": "PBT over length, lr fixed"}


def run_missing() -> None:
    sys.path.insert(0, str(HERE.parent))
    from run import run_one  # studies/run.py: the same tune + report + timing as every study

    for name, config in EXPERIMENTS.items():
        run_one(config, HERE / name)


def members(folder: Path) -> tuple[str, list[ConfigResults], ConfigResults | None]:
    """(primary metric, the trained configs, PBT's per-seed best-member config or None)."""
    exp = load_experiment(folder)
    trained = [c for c in exp.configs.values() if c.overrides.get(PBT_MEMBER) != "best"]
    best = next((c for c in exp.configs.values() if c.overrides.get(PBT_MEMBER) == "best"), None)
    return exp.primary_metric, trained, best


def reach_curve(configs: list[ConfigResults], seed: int, metric: str) -> list[tuple[int, float]]:
    """(member-steps, best selection score any member had reached by then) for one seed's population, from the
    members' recorded lineages (a PBT member's history before it took over a donor's checkpoint is the donor's)."""
    runs = [s for c in configs for s in c.seeds if s.seed == seed and s.ok]
    steps = sorted({h["step"] for s in runs for h in s.history if h.get("selection")})
    best, curve = -math.inf, []
    for t in steps:
        at_t = [h["selection"].get(metric, -math.inf) for s in runs for h in s.history
                if h["step"] == t and h.get("selection")]
        best = max(best, *at_t)
        curve.append((len(configs) * t, best))
    return curve


def first_reach(curve: list[tuple[int, float]], target: float) -> int | None:
    return next((c for c, v in curve if v >= target - 1e-9), None)


def pick(configs: list[ConfigResults], seed: int, metric: str):
    """A search's outcome on a seed: the run with the best selection score (ptray's own rule)."""
    runs = [s for c in configs for s in c.seeds if s.seed == seed]
    return max(runs, key=lambda s: selection_score(s.raw, metric))


def describe(s) -> str:
    cfg = s.raw.get("config") or {}
    return f"length {cfg['method']['num_tokens']}, lr {cfg['train']['lr']:.3g}"


def setting() -> str:
    """The three searches as their YAMLs define them (what the prose says is what ran)."""
    grid, pbt, fixed = (load_config(EXPERIMENTS[name]) for name in EXPERIMENTS)
    lengths = grid.tune.search["method.num_tokens"]["grid"]
    low, high = pbt.tune.search["method.num_tokens"]["randint"]
    lr_low, lr_high = pbt.tune.search["train.lr"]["loguniform"]
    assert set(fixed.tune.search) == {"method.num_tokens"} and fixed.train.lr == grid.train.lr
    interval, end = pbt.tune.scheduler.resolved_interval(pbt.train.eval_every), pbt.train.max_steps
    steps = list(range(interval, end, interval))  # the last evaluation is no perturbation
    return (f"per seed, the grid trains lengths {', '.join(map(str, lengths))} at lr {grid.train.lr:g} for "
            f"{grid.train.max_steps} steps each; synchronous PBT trains a population of {pbt.tune.num_samples} members "
            f"for {end} steps whose length ({low}..{high}) and lr ({lr_low:g}..{lr_high:g}) it perturbs at step"
            f"{'s' if len(steps) > 1 else ''} {' and '.join(map(str, steps))}; a second PBT population evolves the "
            f"length alone, at the grid's lr {fixed.train.lr:g}")


def resize_lines(configs: list[ConfigResults], seeds: list[int]) -> list[str]:
    """Every PBT member's changes of length, per seed: each is a member's lineage (taken over with a donor's
    checkpoint), so a member exploited later carries its donor's earlier resizes instead of its own."""
    lines = []
    for seed in seeds:
        runs = sorted((c.label.removeprefix(f"{PBT_MEMBER}="), s) for c in configs for s in c.seeds if s.seed == seed)
        changed = [(member, s) for member, s in runs if s.raw.get("resizes")]
        lines.append(f"- seed {seed}: {len(changed)} of {len(runs)} members' lineages changed length"
                     + (": " + "; ".join(f"member {member} " + ", ".join(f"{r['old']} → {r['new']} at step {r['step']}"
                                                                        for r in s.raw["resizes"])
                                         for member, s in changed) if changed else ""))
    return lines


def summary() -> str:
    found = {name: members(HERE / name) for name in EXPERIMENTS}
    metrics = {m for m, _, _ in found.values()}
    assert len(metrics) == 1, f"the searches rank by different metrics: {metrics}"
    m = metrics.pop()
    searches = {name: trained for name, (_, trained, _) in found.items()}
    seeds = sorted({s.seed for c in searches["grid"] for s in c.seeds})
    budget = {name: len(cs) * max(s.raw.get("steps", 0) for c in cs for s in c.seeds if s.ok)
              for name, cs in searches.items()}
    timing = {name: json.loads((HERE / name / "report/timing.json").read_text())
              for name in EXPERIMENTS if (HERE / name / "report/timing.json").is_file()}

    rows, finals, reach = [], {name: [] for name in EXPERIMENTS}, []
    fig, axes = plt.subplots(1, len(seeds), figsize=(4 * len(seeds), 3.2), sharey=True, squeeze=False)
    for ax, seed in zip(axes[0], seeds):
        picks = {name: pick(cs, seed, m) for name, cs in searches.items()}
        for name, (_, _, best) in found.items():
            if best is not None:  # ptray's own filing of the population's best must be the same run
                filed = next(s for s in best.seeds if s.seed == seed)
                assert filed.raw.get("best_of") == picks[name].config_id, f"{name} seed {seed}: {filed.raw}"
        curves = {name: reach_curve(cs, seed, m) for name, cs in searches.items()}
        target = selection_score(picks["grid"].raw, m)
        for name, p in picks.items():
            finals[name].append(p.report.get(m, math.nan))
            resizes = p.raw.get("resizes") or []
            lengths = " → ".join([str(r["old"]) for r in resizes[:1]] + [str(r["new"]) for r in resizes]) or "none"
            rows.append(f"| {seed} | {NAMES[name]} | {describe(p)} | {lengths if name != 'grid' else ''} | "
                        f"{selection_score(p.raw, m):.4f} | {p.report.get(m, math.nan):.4f} |")
        reached = [(first_reach(curves[name], target), budget[name]) for name in EXPERIMENTS]
        reach.append(f"| {seed} | {target:.4f} | "
                     + " | ".join(f"{at} of {of}" if at is not None else f"not in {of}" for at, of in reached)
                     + " | " + " | ".join(f"{curves[name][-1][1]:.4f}" for name in EXPERIMENTS if name != "grid")
                     + " |")
        for name, curve in curves.items():
            ax.step([c for c, _ in curve], [v for _, v in curve], where="post", label=NAMES[name])
        ax.axhline(target, color="grey", lw=0.8, ls=":")
        ax.set_title(f"seed {seed}")
        ax.set_xlabel("member-steps")
    axes[0][0].set_ylabel(f"best selection {m} so far")
    axes[0][-1].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(HERE / "reach.png", dpi=120)
    plt.close(fig)

    def spread(xs: list[float]) -> str:
        ok = [x for x in xs if math.isfinite(x)]
        failed = len(xs) - len(ok)
        if not ok:  # every pick failed: say so rather than average nothing
            return f"no seed has a score ({failed} failed)"
        return (f"mean {sum(ok) / len(ok):.4f}, best seed {max(ok):.4f}, worst seed {min(ok):.4f}"
                + (f", {failed} seed(s) without a score" if failed else ""))

    took = {name: f"{t['seconds'] / 60:.1f} min (load {t['load_average_at_end']} at the end"
                  + (", after a resume" if t.get("resumed") else "") + ")" for name, t in timing.items()}
    pbts = [name for name in EXPERIMENTS if name != "grid"]
    lines = [
        "# PBT over prompt length vs a grid over lengths, at the same compute", "",
        "Written by `python studies/pbt_length/compare.py` from the three experiments' result files ("
        + ", ".join(f"[{NAMES[name]}]({name}/report/report.md)" for name in EXPERIMENTS)
        + "); nothing is typed by hand.", "",
        f"TREC 16-shot (6 classes; selection on a disjoint 16-per-class sample, report on the official 500-question "
        f"test set), frozen MiniLM, vanilla prompt tuning, seeds {seeds}: {setting()} ("
        + ", ".join(f"{budget[name]}" for name in EXPERIMENTS) + " member-steps per seed). Each search's pick on a "
        f"seed is its run with the best selection {m}; the report split never chooses.", "",
        "Wall-clock on this 2-core machine (shared with other jobs, so the load says how far from idle): "
        + ", ".join(f"{NAMES[name]} {took.get(name, 'not timed')}" for name in EXPERIMENTS) + ".", "",
        "## What each search picks, per seed", "",
        f"| seed | search | pick (final) | its lengths | selection {m} | report {m} |",
        "|---:|---|---|---|---:|---:|", *rows, "",
        *(f"- {NAMES[name]}: {spread(finals[name])}" for name in EXPERIMENTS), "",
        f"With {len(seeds)} seeds this describes these seeds; it is no test of a difference.", "",
        "## How PBT changed the lengths", "",
        "Each member's recorded resizes (member: old → new length at a step). A resize comes with a donor's "
        "checkpoint, so a member carries its donor's lineage.", "",
    ]
    for name in pbts:
        lines += [f"{NAMES[name]}:", "", *resize_lines(searches[name], seeds), ""]
    lines += [
        "## Compute to reach the grid's best", "",
        "Member-steps until a search first matches the grid's best selection score on the same seed (the grid "
        "spends all of its member-steps before it knows which length is best; its column says when that score first "
        "appeared in lockstep). A PBT member's own scores from before it took over a donor's checkpoint are not in "
        "its lineage, so PBT's curve can only be later than what its members reached, never earlier.", "",
        f"| seed | grid's best selection {m} | " + " | ".join(f"{NAMES[name]} first had it at" for name in EXPERIMENTS)
        + " | " + " | ".join(f"{NAMES[name]}: best selection" for name in pbts) + " |",
        "|---:|---:|" + "---|" * len(EXPERIMENTS) + "---:|" * len(pbts), *reach, "",
        "![best selection score so far against member-steps](reach.png)", "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--summary", action="store_true", help="only rewrite RESULTS.md from the folders on disk")
    if not parser.parse_args().summary:
        run_missing()
    (HERE / "RESULTS.md").write_text(summary())
    print(f"wrote {HERE / 'RESULTS.md'}")
