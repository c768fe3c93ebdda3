"""The Ray Tune side of tracking: `MLflowSeedCallback` runs on the Tune driver and feeds `Tracker` (the only writer,
ptray.tracking.store). It lives with the Ray code so that tracking imports no Ray.

Tracking is best-effort for the sweep and exact for the record: each seed's result.json (written before the callback
runs) is the record, and `ptray report` or `ptray tune --resume` logs every result.json again (`Tracker.sync`,
idempotent). So no MLflow error (a corrupt store, a server gone, a full disk) may reach Tune: each call is retried a
few times with a short backoff, then one warning line says what failed, and tracking is off for the rest of the sweep.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

from ray.tune import Callback

from ptray.analysis.report import log_config_figures
from ptray.distributed.trial import seeds_of
from ptray.layout import RESULT_FILE, redact, run_dir, without_redacted
from ptray.tracking.results import SeedResult
from ptray.tracking.store import Tracker


class MLflowSeedCallback(Callback):
    """Ray Tune callback (runs on the driver): a parent run per config_id, a child run per (config_id, seed).

    Pass it to `tune.RunConfig(callbacks=[...])`. Trials follow the ptray contract: their config holds config_id,
    seed (a pack: seeds), overrides and label; every report carries its seed, step, loss and selection/<metric>; a
    seed's last one done_ptray, status, report/<metric> and reason. Each seed's run starts with its trial and logs its
    reports as they come, so a packed seed has its own curve in time, as a seed trained alone does.
    """

    def __init__(self, tracking_uri: str, experiment_name: str, experiment_dir: str | Path):
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        self.experiment_dir = str(experiment_dir)
        self._tracker: Tracker | None = None
        self._off = False  # tracking failed past its retries: off for the rest of this sweep
        self._last: dict[tuple[str, int], dict] = {}  # (trial_id, seed) -> that seed's last report

    def __getstate__(self):
        # Tune pickles its callbacks with the experiment state; a database client does not pickle, and the state on
        # disk holds no credentials. A resumed sweep tries tracking again.
        return {**self.__dict__, "_tracker": None, "_off": False, "tracking_uri": redact(self.tracking_uri)}

    @property
    def tracker(self) -> Tracker:
        if self._tracker is None:
            # Restored from Tune's saved state, the URI is redacted: MLflow takes the credentials from its environment.
            self._tracker = Tracker(without_redacted(self.tracking_uri), self.experiment_name, self.experiment_dir)
        return self._tracker

    def _safely(self, what: str, step: Callable[[], Any]) -> None:
        """Run one tracking step; retried with backoff, then reported once (`warn_tracking_failed`) and given up."""
        if self._off:
            return
        for delay in (*RETRY_DELAYS_S, None):
            try:
                step()
                return
            except Exception as e:  # any MLflow, database, network or disk error: the sweep goes on without it
                if delay is None:
                    self._off = True
                    self._tracker = None
                    warn_tracking_failed(self.tracking_uri, self.experiment_dir, f"{what}: {type(e).__name__}: {e}")
                    return
                self._tracker = None  # a fresh client (and store check) on the next try
                time.sleep(delay)

    def setup(self, **info):
        # MLflow's HTTP client retries a request for minutes by default; here, where it holds up Tune's event loop,
        # a few quick tries (ours) are enough, as the record is result.json. The user's own settings win.
        for key, value in HTTP_LIMITS.items():
            os.environ.setdefault(key, value)
        # Create the store (MLflow's schema migrations take seconds on a new SQLite file) before trials start, not
        # inside the first result, where it holds up Tune's event loop.
        self._safely("opening the MLflow store", lambda: self.tracker)

    def on_trial_start(self, iteration, trials, trial, **info):
        c = trial.config

        def start():
            for seed in seeds_of(c):
                self.tracker.child(c["config_id"], seed, c.get("label") or c["config_id"], c.get("overrides") or {},
                                   trial.trial_id)

        self._safely(f"starting the runs of trial {trial.trial_id}", start)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        c = trial.config
        cid, seed = c["config_id"], int(result["seed"])
        self._last[trial.trial_id, seed] = result
        metrics = {k: v for k, v in result.items() if k == "loss" or k.startswith("selection/")}

        def log():
            self.tracker.child(cid, seed, c.get("label") or cid, c.get("overrides") or {}, trial.trial_id)
            # The final report repeats the last evaluation; its step history then comes from result.json.
            if "step" in result and metrics and not result.get("done_ptray"):
                self.tracker.log_step(cid, seed, int(result["step"]), metrics)

        self._safely(f"logging a report of config {cid} seed {seed}", log)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._safely(f"recording trial {trial.trial_id}", lambda: self._finish(trial, error=None))

    def on_trial_error(self, iteration, trials, trial, **info):
        self._safely(f"recording trial {trial.trial_id}", lambda: self._finish(trial, error=_error_text(trial)))

    def on_experiment_end(self, trials, **info):
        self._safely("logging the folder", lambda: log_config_figures(self.tracker, self.tracker.sync()))

    def _finish(self, trial, error: str | None) -> None:
        c = trial.config
        cid = c["config_id"]
        for seed in seeds_of(c):
            path = run_dir(self.experiment_dir, cid, seed) / RESULT_FILE
            if path.is_file():
                result = SeedResult.from_file(path, cid)
            else:
                result = _from_report(cid, seed, self._last.get((trial.trial_id, seed), {}), error)
            result.trial_id = trial.trial_id
            self.tracker.seed_finished(cid, c.get("label") or cid, c.get("overrides") or {}, result)


RETRY_DELAYS_S = (0.5, 2.0)  # three tries in all, a few seconds at most before the sweep goes on without MLflow
# MLflow's HTTP client during a sweep: no retries of its own (ours above), and a stuck server costs 10 s, not 120 s.
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def warn_tracking_failed(uri: str, experiment_dir: str | Path, error: str) -> None:
    """One warning line, in the run's log (sys.stderr: DIR/logs/ray.log while `ptray tune` sends Ray's output there)
    and on the console."""
    first = error.strip().splitlines()[0][:300] if error.strip() else "unknown error"
    text = (f"warning: MLflow tracking at {redact(uri)} failed ({redact(first)}); training goes on and nothing is "
            f"lost: every seed's result.json is the record, and `ptray report {experiment_dir}` logs them to MLflow "
            "once it works")
    print(text, file=sys.stderr, flush=True)
    if sys.stderr is not sys.__stderr__:
        print(text, file=sys.__stderr__, flush=True)


def _error_text(trial) -> str:
    # The driver's local copy exists when this callback runs; get_error() reads the storage copy, synced later.
    local = trial.error_file
    if local and Path(local).is_file():
        return Path(local).read_text()
    return str(trial.get_error() or f"trial {trial.trial_id} errored (no error text stored by Ray)")


def _from_report(config_id: str, seed: int, last: dict, error: str | None) -> SeedResult:
    """A seed's result from its last Tune report, for when its result.json is not visible to the driver."""
    if error is not None:
        last_line = next((line for line in reversed(error.strip().splitlines()) if line.strip()), error)
        return SeedResult(config_id, seed, "failed", f"trial error: {last_line.strip()}", raw={"traceback": error})
    if not last.get("done_ptray"):
        return SeedResult(config_id, seed, "failed", "the trial ended without a final report or a result.json")
    report = {k.removeprefix("report/"): float(v) for k, v in last.items() if k.startswith("report/")}
    return SeedResult(config_id, seed, last.get("status", "failed"), last.get("reason"), report=report)
