"""An experiment folder's results as per-config, per-seed arrays: the one place that reads `result.json` files
(the folder's layout: ptray.layout).

A (config, seed) that experiment.json promises but that has no result.json is kept as a `missing` seed (the trial
crashed before the core wrote its result, or has not run yet): it counts as failed, never silently dropped. While a
live `ptray tune` owns the folder (ptray.layout.owner), such a seed is `running` instead: listed, not yet counted. A
seed a scheduler stopped early (status `stopped`) was pruned, not failed: it is listed, but left out of the
statistics. Every other seed that finished is in the statistics, whatever its score (`ConfigResults.summary`).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ptray import stats
from ptray.layout import RUNS_DIR, owner, read_experiment_json, result_files, result_problem, seed_of_dir

PROMPT_LENGTH = "prompt_length"  # the metric of a seed's prompt length over training
MISSING_REASON = "no result.json: the trial crashed before training finished, or has not run yet"


@dataclass
class SeedResult:
    config_id: str
    seed: int
    status: str  # ok | failed | missing | stopped | running
    reason: str | None = None
    report: dict[str, float] = field(default_factory=dict)
    selection: dict[str, float] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    majority_baseline: float = math.nan
    trial_id: str | None = None
    path: Path | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict, config_id: str, path: Path | None = None) -> "SeedResult":
        baseline = d.get("majority_baseline")
        return cls(
            config_id=d.get("config_id") or config_id,
            seed=int(d["seed"]),
            status=d.get("status", "failed"),
            reason=d.get("reason"),
            report={k: _num(v) for k, v in (d.get("report_metrics") or {}).items()},
            selection={k: _num(v) for k, v in (d.get("selection_metrics") or {}).items()},
            history=list(d.get("history") or []),
            majority_baseline=_num(baseline),
            trial_id=d.get("trial_id"),
            path=path,
            raw=d,
        )

    @classmethod
    def from_file(cls, path: Path, config_id: str) -> "SeedResult":
        # A file that is no seed's record (truncated by a full disk, or of another schema), or whose values are of the
        # wrong kind, is a failed seed that names the file: the report goes on, and the seed counts as failed.
        path = Path(path)
        problem = result_problem(path)
        if problem is None:
            try:
                return cls.from_dict(json.loads(path.read_text()), config_id, path)
            except (TypeError, ValueError, AttributeError) as e:
                problem = f"{type(e).__name__}: {e}"
        return cls(config_id, seed_of_dir(path.parent), "failed", f"broken record {path}: {problem}", path=path)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def prompt_length(self) -> int | None:
        """The prompt length the seed ended with: its config's method.num_tokens (None for a method without one)."""
        return ((self.raw.get("config") or {}).get("method") or {}).get("num_tokens")

    def curve(self, key: str) -> list[tuple[float, float]]:
        """(step, value) points of `loss`, of a selection metric `selection/<name>`, or of `prompt_length` (its start
        at step 0, then each resize: PBT over method.num_tokens) over training."""
        if key == PROMPT_LENGTH:
            resizes = self.raw.get("resizes") or []
            start = resizes[0]["old"] if resizes else self.prompt_length
            return [] if start is None else [(0, start), *((r["step"], r["new"]) for r in resizes)]
        if key == "loss":
            return [(h["step"], _num(h.get("loss"))) for h in self.history]
        name = key.removeprefix("selection/")
        return [(h["step"], _num(h["selection"].get(name))) for h in self.history if h.get("selection")]


@dataclass
class ConfigResults:
    config_id: str
    label: str
    overrides: dict[str, Any]
    config: dict[str, Any]  # the effective config of its runs (the base config where no run wrote one)
    primary_metric: str
    seeds: list[SeedResult]

    @property
    def method(self) -> str:
        return str(self.overrides.get("method.name") or self.config.get("method", {}).get("name", "vanilla"))

    @property
    def scored(self) -> list[SeedResult]:
        """The seeds the statistics are over: all but those a scheduler stopped early and those still running."""
        return [s for s in self.seeds if s.status not in ("stopped", "running")]

    @property
    def seed_ids(self) -> list[int]:
        return [s.seed for s in self.scored]

    def metric(self, name: str) -> np.ndarray:
        """Per scored seed, its report metric; NaN where the seed failed or did not report it."""
        return np.array([s.report.get(name, math.nan) if s.ok else math.nan for s in self.scored], dtype=float)

    def failed(self) -> np.ndarray:
        """Per scored seed: failed, diverged, missing, or without a report metric. Such a seed has no score: it is
        counted, never averaged."""
        return ~np.isfinite(self.metric(self.primary_metric))

    def at_majority(self) -> np.ndarray | None:
        """Per scored seed: finished with a report accuracy at or below its report split's majority-class baseline.
        None when no seed can be judged (the report has no accuracy, or results older than the baseline field)."""
        acc = np.array([s.report.get("accuracy", math.nan) if s.ok else math.nan for s in self.scored], dtype=float)
        base = np.array([s.majority_baseline for s in self.scored], dtype=float)
        if not (np.isfinite(acc) & np.isfinite(base)).any():
            return None
        return stats.at_or_below(acc, base)

    def failed_seeds(self) -> list[SeedResult]:
        return [s for s, bad in zip(self.scored, self.failed()) if bad]

    def majority_seeds(self) -> list[SeedResult]:
        low = self.at_majority()
        return [] if low is None else [s for s, at in zip(self.scored, low) if at]

    def summary(self, metric: str | None = None) -> dict:
        """The statistics of `metric` (default: the primary one) over every seed that finished, with the failed seeds
        and those at or below the majority class counted beside them (`stats.summarize`). The one function behind
        the `ptray tune` table, the report and the MLflow parent runs, so they state the same numbers."""
        return stats.summarize(self.metric(metric or self.primary_metric), failed=self.failed(),
                               at_majority=self.at_majority())

    def curves(self, key: str) -> dict[int, list[tuple[float, float]]]:
        return {s.seed: s.curve(key) for s in self.seeds if s.history}

    def failure_reason(self, s: SeedResult) -> str:
        if not s.ok:
            return s.reason or s.status
        return f"no report {self.primary_metric}"

    def majority_note(self, s: SeedResult) -> str:
        return (f"report accuracy {s.report['accuracy']:.4f} at or below the majority-class baseline "
                f"{s.majority_baseline:.4f}")


@dataclass
class Experiment:
    dir: Path
    name: str
    config: dict[str, Any]
    seeds: list[int]
    configs: dict[str, ConfigResults]
    baseline_config_id: str | None
    primary_metric: str
    owner: str | None = None  # the PID of the live `ptray tune` running the folder, if one is

    def running(self) -> list[SeedResult]:
        return [s for c in self.configs.values() for s in c.seeds if s.status == "running"]

    def baseline(self, choice: str | None = None) -> ConfigResults:
        """The reference config: `choice` (id or label), else experiment.json's, else the first vanilla config,
        else the first."""
        if choice is not None:
            for c in self.configs.values():
                if choice in (c.config_id, c.label):
                    return c
            known = ", ".join(f"{c.config_id} ({c.label})" for c in self.configs.values())
            raise ValueError(f"baseline {choice!r} is neither a config id nor a label of {self.dir}; known: {known}")
        if self.baseline_config_id in self.configs:
            return self.configs[self.baseline_config_id]
        vanilla = [c for c in self.configs.values() if c.method == "vanilla"]
        return (vanilla or list(self.configs.values()))[0]

    def report_metrics(self) -> list[str]:
        """Report metrics seen in any result, the primary one first."""
        names = dict.fromkeys([self.primary_metric])
        for c in self.configs.values():
            for s in c.seeds:
                names.update(dict.fromkeys(s.report))
        return list(names)

    def searched(self) -> dict[str, dict[str, Any]]:
        """Searched keys -> {config_id: value}, for keys that take more than one value across configs."""
        keys: dict[str, dict[str, Any]] = {}
        for c in self.configs.values():
            for k, v in c.overrides.items():
                keys.setdefault(k, {})[c.config_id] = v
        return {k: v for k, v in keys.items() if len({json.dumps(x, sort_keys=True) for x in v.values()}) > 1}


def load_experiment(directory: str | Path) -> Experiment:
    root = Path(directory)
    meta = read_experiment_json(root)
    declared: dict[str, dict] = dict(meta.get("configs") or {})
    runs = root / RUNS_DIR
    on_disk = sorted(p.name for p in runs.iterdir() if p.is_dir()) if runs.is_dir() else []
    seeds = [int(s) for s in meta.get("seeds") or []]
    running = owner(root)

    ids = list(declared) + [c for c in on_disk if c not in declared]
    loaded = {cid: load_config_seeds(root, cid, seeds, running) for cid in ids}

    primary = next((s.raw["primary_metric"] for rs in loaded.values() for s in rs if s.raw.get("primary_metric")),
                   "accuracy")
    configs = {}
    for cid, results in loaded.items():
        info = declared.get(cid, {})
        first = next((s.raw for s in results if s.raw.get("config")), {})
        overrides = info.get("overrides") or first.get("overrides") or {}
        label = info.get("label") or first.get("label") or cid
        configs[cid] = ConfigResults(cid, label, overrides, first.get("config") or meta.get("config") or {},
                                     primary, results)
    if not configs:
        raise FileNotFoundError(f"{root} holds no configs: experiment.json lists none and {runs} has no run folders")
    return Experiment(root, meta.get("name") or root.name, meta.get("config") or {}, seeds, configs,
                      meta.get("baseline_config_id"), primary, running)


def load_config_seeds(directory: str | Path, config_id: str, seeds: list[int],
                      running: str | None = None) -> list[SeedResult]:
    """A config's seeds, sorted: every result.json under DIR/runs/<config_id>/, and for promised seeds without one
    `missing`, or `running` while the `ptray tune` of PID `running` owns the folder."""
    found = {}
    for f in result_files(directory, config_id):
        r = SeedResult.from_file(f, config_id)
        found[r.seed] = r
    for s in seeds:
        if running:
            found.setdefault(s, SeedResult(config_id, s, "running", f"running: ptray tune (PID {running}) owns the "
                                                                      "folder and has not filed this seed yet"))
        else:
            found.setdefault(s, SeedResult(config_id, s, "missing", MISSING_REASON))
    return [found[s] for s in sorted(found)]


def _num(v) -> float:
    # result.json writes NaN as NaN (json allows it) but a value may also be null for a metric never computed.
    return math.nan if v is None else float(v)
