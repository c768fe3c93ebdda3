"""The per-config table `ptray tune` ends with: the report metric over every seed that finished, and the seeds that
failed or ended at or below the majority class.

The numbers are `ConfigResults.summary`, the ones `ptray report` and the MLflow parent runs state. `n` is the number of
finished seeds the statistics are over, whatever their score: a seed stuck at the majority class is exactly the worst
seed a reader should see. `failed` counts seeds that crashed, diverged or wrote no result (no score, so not averaged);
`<=majority` the finished seeds at or below the majority-class baseline. Seeds a scheduler stopped early (pruned) are
neither: they are counted under the table, and left out of it, as are the seeds of a sweep still running."""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import TextIO

from ptray.tracking.results import load_experiment


def print_summary(directory: str | Path, file: TextIO | None = None) -> None:
    exp = load_experiment(directory)
    out = file or sys.stdout
    header = ["config", "n", "mean", "std", "worst", "best", "failed", "<=majority"]
    table, failures, low = [], [], []
    for c in exp.configs.values():
        s = c.summary()
        table.append([c.label, str(s["n_ok"]), _fmt(s["mean"]), _fmt(s["std"]), _fmt(s["min"]), _fmt(s["max"]),
                      f"{s['n_failed']}/{s['n_seeds']}", _count(s["n_at_majority"], s["n_seeds"])])
        failures += [f"  {c.label} seed {r.seed}: {_short(c.failure_reason(r))}" for r in c.failed_seeds()]
        low += [f"  {c.label} seed {r.seed}: {c.majority_note(r)}" for r in c.majority_seeds()]
    widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(header)]
    print(f"{exp.name}: report {exp.primary_metric} over the n seeds that finished, whatever their score "
          f"(`ptray report {directory}` for intervals, tests against the baseline and plots)", file=out)
    for line in [header, ["-" * w for w in widths], *table]:
        print("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths))),
              file=out)
    if failures:
        print("failed (no score, not in the statistics):", *failures, sep="\n", file=out)
    if low:
        print("at or below the majority class (in the statistics):", *low, sep="\n", file=out)
    running = exp.running()
    if running:
        print(f"{len(running)} seed(s) still running (ptray tune PID {exp.owner} owns the folder): not in the table "
              "yet", file=out)
    stopped = sum(s.status == "stopped" for c in exp.configs.values() for s in c.seeds)
    if stopped:
        print(f"{stopped} seed(s) stopped early by the scheduler: pruned, not in the table (`ptray report` lists them)",
              file=out)


def _fmt(x: float) -> str:
    return "-" if not math.isfinite(x) else f"{x:.4f}"


def _count(k: float, n: int) -> str:
    # NaN: no majority baseline applies (the report has no accuracy).
    return "-" if not math.isfinite(k) else f"{int(k)}/{n}"


def _short(text: str, limit: int = 120) -> str:
    line = text.strip().splitlines()[0] if text.strip() else text
    return line if len(line) <= limit else line[: limit - 3] + "..."
