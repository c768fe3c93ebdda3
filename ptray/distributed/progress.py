"""ptray's own view of a sweep, on the driver: one line per config x seed (each seed of a pack its own line) with its
status, step / total, last selection score, best so far and an ETA.

On a terminal the table is redrawn in place (rich); piped or redirected, each change is one plain line, so a log
file reads top to bottom. Ray's own status tables are off (`verbose=0`) unless `ptray tune --verbose`.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, TextIO

from ray import tune

from ptray.distributed.trial import seeds_of

# Statuses a line moves through; the last three are final.
PENDING, RUNNING, OK, FAILED, STOPPED = "pending", "running", "ok", "failed", "stopped"


@dataclass
class Line:
    label: str
    seed: int
    total: int | None
    status: str = PENDING
    step: int = 0
    score: float = math.nan
    best: float = math.nan
    started: float | None = None
    first_step: int = 0  # a trial resumed from a checkpoint starts counting its rate from here
    note: str = field(default="")

    def eta(self, now: float) -> float | None:
        """Seconds left at the rate seen since this line started (None until there is a rate)."""
        if self.status != RUNNING or not self.total or self.started is None or self.step <= self.first_step:
            return None
        rate = (self.step - self.first_step) / max(now - self.started, 1e-9)
        return max(self.total - self.step, 0) / rate


class LiveView(tune.Callback):
    """A Tune callback that keeps one `Line` per (config, seed) and shows them."""

    def __init__(self, metric: str, total_of: Callable[[dict[str, Any]], int | None], stream: TextIO | None = None,
                 live: bool | None = None):
        self.metric, self.total_of = metric, total_of
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty() if live is None else live
        self.lines: dict[tuple[str, int], Line] = {}
        self._printed: dict[tuple[str, int], str] = {}  # piped: the last text of each line, so repeats are skipped
        self.t0 = time.monotonic()
        self._rich = None

    def __getstate__(self):
        # Tune pickles its callbacks with the experiment state: not the console (an open file) or the live display.
        return {**self.__dict__, "stream": None, "_rich": None}

    def __setstate__(self, state):
        # Restored by `--resume`: the process's own stdout (sys.stdout may be redirected to DIR/logs by then).
        self.__dict__.update(state)
        self.stream = sys.__stdout__

    # --- Tune's events --------------------------------------------------------------------------------------------
    def on_trial_start(self, iteration, trials, trial, **info):
        for seed in seeds_of(trial.config):
            line = self._line(trial, seed)
            line.status, line.started, line.first_step = RUNNING, time.monotonic(), line.step
            self._changed(line)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        line = self._line(trial, result.get("seed", trial.config["seed"]))
        if result.get("done_ptray"):
            line.status = result.get("status", OK)
            line.note = result.get("reason") or ""
        line.step = int(result.get("step", line.step))
        score = result.get(f"selection/{self.metric}")
        if score is not None and not math.isnan(score):
            line.score = score
            line.best = score if math.isnan(line.best) else max(line.best, score)
        self._changed(line)

    def on_trial_complete(self, iteration, trials, trial, **info):
        for seed in seeds_of(trial.config):
            line = self._line(trial, seed)
            if line.status == RUNNING:  # ended without ptray's last report: a scheduler stopped it
                line.status = STOPPED
            self._changed(line)

    def on_trial_error(self, iteration, trials, trial, **info):
        for seed in seeds_of(trial.config):
            line = self._line(trial, seed)
            error = str(trial.get_error() or "").strip().splitlines()
            line.status, line.note = FAILED, error[-1] if error else "the trial crashed"
            self._changed(line)

    def on_experiment_end(self, trials, **info):
        if self._rich is not None:
            self._rich.stop()
            self._rich = None

    # --- showing ----------------------------------------------------------------------------------------------------
    def _line(self, trial, seed: int) -> Line:
        key = (trial.config["label"], seed)
        if key not in self.lines:
            self.lines[key] = Line(trial.config["label"], seed, self.total_of(trial.config))
        return self.lines[key]

    def _changed(self, line: Line) -> None:
        if self.live:
            self._redraw()
            return
        text = self.render_line(line, time.monotonic())
        key = (line.label, line.seed)
        if text.split("]", 1)[1] != self._printed.get(key, "]").split("]", 1)[1]:  # the same but for the clock
            self._printed[key] = text
            print(text, file=self.stream, flush=True)

    def render_line(self, line: Line, now: float) -> str:
        total = f"/{line.total}" if line.total else ""
        parts = [f"[{_duration(now - self.t0):>6}]", f"{line.label}  seed {line.seed}", f"{line.status:<7}",
                 f"step {line.step}{total}"]
        if not math.isnan(line.score):
            parts.append(f"{self.metric} {line.score:.4f} (best {line.best:.4f})")
        eta = line.eta(now)
        if eta is not None:
            parts.append(f"ETA {_duration(eta)}")
        if line.note and line.status in (FAILED, STOPPED):
            parts.append(line.note[:100])
        return "  ".join(parts)

    def table(self):
        from rich.table import Table

        now = time.monotonic()
        t = Table(title=f"ptray tune  {_duration(now - self.t0)}", title_justify="left", box=None, pad_edge=False)
        for name, justify in [("config", "left"), ("seed", "right"), ("status", "left"), ("step", "right"),
                              (f"selection {self.metric}", "right"), ("best", "right"), ("ETA", "right")]:
            t.add_column(name, justify=justify)
        for line in sorted(self.lines.values(), key=lambda x: (x.label, x.seed)):
            eta = line.eta(now)
            t.add_row(line.label, str(line.seed), line.status,
                      f"{line.step}/{line.total}" if line.total else str(line.step),
                      "-" if math.isnan(line.score) else f"{line.score:.4f}",
                      "-" if math.isnan(line.best) else f"{line.best:.4f}", "-" if eta is None else _duration(eta))
        return t

    def _redraw(self) -> None:
        if self._rich is None:
            from rich.console import Console
            from rich.live import Live

            self._rich = Live(get_renderable=self.table, console=Console(file=self.stream), refresh_per_second=2,
                              transient=False)
            self._rich.start()
        self._rich.refresh()


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"
