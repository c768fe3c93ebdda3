"""The per-config table `ptray tune` ends with: seeds, mean, std, worst seed and failures of the report metric.

Mean, std, worst and best are over every seed that finished, degenerate ones included: a seed stuck at the majority
class is exactly the worst seed a reader should see. `failed` counts runs that failed or diverged; `<=majority` the
finished seeds at or below the majority-class baseline, which `ptray report` also counts as failures and leaves out
of its statistics."""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import TextIO

from ptray.tracking.results import load_experiment


def print_summary(directory: str | Path, file: TextIO | None = None) -> None:
    exp = load_experiment(directory)
    out = file or sys.stdout
    header = ["config", "seeds", "mean", "std", "worst", "best", "failed", "<=majority"]
    table, failures = [], []
    for c in exp.configs.values():
        s = c.finished_summary(n_boot=1000)  # the CI is not printed: a small bootstrap keeps this instant
        degenerate = int(c.failed().sum()) - s["n_failed"]
        table.append([c.label, str(s["n_seeds"]), _fmt(s["mean"]), _fmt(s["std"]), _fmt(s["min"]), _fmt(s["max"]),
                      f"{s['n_failed']}/{s['n_seeds']}", f"{degenerate}/{s['n_seeds']}"])
        failures += [f"  {c.label} seed {r.seed}: {_short(c.failure_reason(r))}" for r in c.failed_seeds()]
    widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(header)]
    print(f"{exp.name}: report {exp.primary_metric} over the seeds that finished (`ptray report {directory}` for "
          "intervals, tests against the baseline and plots)", file=out)
    for line in [header, ["-" * w for w in widths], *table]:
        print("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths))),
              file=out)
    if failures:
        print("failed or at/below the majority class:", *failures, sep="\n", file=out)


def _fmt(x: float) -> str:
    return "-" if not math.isfinite(x) else f"{x:.4f}"


def _short(text: str, limit: int = 120) -> str:
    line = text.strip().splitlines()[0] if text.strip() else text
    return line if len(line) <= limit else line[: limit - 3] + "..."
