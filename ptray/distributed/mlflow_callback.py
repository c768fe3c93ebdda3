"""The Ray Tune side of tracking: `MLflowSeedCallback` runs on the Tune driver and feeds `Tracker` (the only writer,
ptray.tracking.store). It lives with the Ray code so that tracking imports no Ray."""
from __future__ import annotations

from pathlib import Path

from ray.tune import Callback

from ptray.analysis.report import log_config_figures
from ptray.distributed.trial import seeds_of
from ptray.layout import RESULT_FILE, run_dir
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
        self._last: dict[tuple[str, int], dict] = {}  # (trial_id, seed) -> that seed's last report

    def __getstate__(self):
        # Tune pickles its callbacks with the experiment state; a database client does not pickle.
        return {**self.__dict__, "_tracker": None}

    @property
    def tracker(self) -> Tracker:
        if self._tracker is None:
            self._tracker = Tracker(self.tracking_uri, self.experiment_name, self.experiment_dir)
        return self._tracker

    def setup(self, **info):
        # Create the store (MLflow's schema migrations take seconds on a new SQLite file) before trials start, not
        # inside the first result, where it holds up Tune's event loop.
        _ = self.tracker

    def on_trial_start(self, iteration, trials, trial, **info):
        c = trial.config
        for seed in seeds_of(c):
            self.tracker.child(c["config_id"], seed, c.get("label") or c["config_id"], c.get("overrides") or {},
                               trial.trial_id)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        c = trial.config
        cid, seed = c["config_id"], int(result["seed"])
        self.tracker.child(cid, seed, c.get("label") or cid, c.get("overrides") or {}, trial.trial_id)
        self._last[trial.trial_id, seed] = result
        metrics = {k: v for k, v in result.items() if k == "loss" or k.startswith("selection/")}
        # The final report repeats the last evaluation; its step history then comes from result.json.
        if "step" in result and metrics and not result.get("done_ptray"):
            self.tracker.log_step(cid, seed, int(result["step"]), metrics)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finish(trial, error=None)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finish(trial, error=_error_text(trial))

    def on_experiment_end(self, trials, **info):
        log_config_figures(self.tracker, self.tracker.sync())

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
