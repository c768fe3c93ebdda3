"""One Tune trial = one config on one seed, and how its outcome reaches DIR/runs/<config_id>/seed<N>/.

    run_trial      the Tune function. workers == 1: the core's `train` runs in the trial's own process.
                   workers > 1: a Ray Train TorchTrainer (named after the trial) whose workers run the same `train`
                   inside DeepSpeed; their reports come back to this trial through a queue and go on to Tune.
    every evaluation   -> tune.report(config_id, seed, step, loss, selection/<m>) + a Tune checkpoint (DeepSpeed state:
                          what PBT exploits, what a retry or `--resume` restarts from; owner.json says whose it is, so a
                          member that resizes another's prompt to its own length records the donor)
    the end            -> a last report (done_ptray, status, reason, report/<m>) whose checkpoint holds the core's
                          result.json and adapter, in seed<N>/
    train.seed_pack K  -> the trial trains its K seeds together (ptray.core.train.train_seeds); each seed reports as
                          itself (so the driver logs every seed as it trains), a step's checkpoint (the whole pack's
                          state) goes with the first report of that step, the last one holds every seed's result
    ResultWriter   a driver-side Tune callback: copies that last checkpoint into DIR/runs/..., or records a seed that a
                   scheduler stopped or that crashed (after its retries) with the reason (a trial that ends without
                   its last report under a scheduler that stops none is failed, not pruned). The driver writes every
                   result, so trials on other nodes need no shared folder with it.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import threading
import uuid
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune
from ray.train import UserCallback

from ptray.config import ExperimentConfig, config_from_dict
from ptray.layout import (ADAPTER_FILE, EXPERIMENT_FILE, RESULT_FILE, read_experiment_json, run_dir, seed_dir,
                          with_values, write_json)

OWNER_FILE = "owner.json"  # in a trial's checkpoint: the identity ({config_id, seed}) of the trial that saved it
ALREADY_FILED = "already_filed"  # a trial's last report when its seeds' results were filed before it ran
STOPPING_SCHEDULERS = ("asha",)  # the schedulers that end trials early (pruning); PBT / PB2 pause and restart theirs


@dataclass
class TrialSpec:
    """What every trial of an experiment shares (passed with tune.with_parameters)."""

    base: dict[str, Any]  # the experiment config, paths made absolute
    keys: list[str]  # the searched dotted keys, read from the trial config
    workers: int
    cpus_per_worker: float
    gpus_per_worker: float
    train_storage: str  # where multi-worker trials keep their Ray Train runs
    keep_checkpoints: int
    log_dir: str = ""  # each trial's output (prints, warnings, DeepSpeed's C++ lines) in <log_dir>/<trial>.log
    # The experiment folder, where the trial looks for results already filed (on a cluster, where its node sees it).
    experiment_dir: str = ""

    def filed_results(self, config: dict[str, Any]) -> list[dict[str, Any]] | None:
        """Every seed's final result.json of this trial, if all are filed already (a resume of a killed driver may
        hand out a finished trial again: it must not train, overwrite or log twice)."""
        if not self.experiment_dir:
            return None
        paths = [run_dir(Path(self.experiment_dir), config["config_id"], s) / RESULT_FILE for s in seeds_of(config)]
        if not all(p.is_file() for p in paths):
            return None
        try:
            results = [json.loads(p.read_text()) for p in paths]
        except (OSError, json.JSONDecodeError):
            return None  # unreadable: train again and file it anew
        return results if all(r.get("status") in ("ok", "failed", "stopped") for r in results) else None

    def experiment_config(self, config: dict[str, Any], seed: int) -> ExperimentConfig:
        values = {k: config[k] for k in self.keys}
        return config_from_dict(with_values(self.base, {**values, "train.seed": seed}),
                                f"trial {config['config_id']} seed {seed}")

    def trial_resources(self) -> dict[str, float]:
        """What Tune reserves for the trial itself: the whole worker when it trains in-process; with a TorchTrainer
        only a sliver for the function that waits on it (the workers reserve their own)."""
        if self.workers == 1:
            return {"cpu": self.cpus_per_worker, "gpu": self.gpus_per_worker}
        return {"cpu": 0.01}

    def worker_resources(self) -> dict[str, float]:
        return {"CPU": self.cpus_per_worker, **({"GPU": self.gpus_per_worker} if self.gpus_per_worker else {})}


def seeds_of(config: dict[str, Any]) -> list[int]:
    return config.get("seeds") or [config["seed"]]


def identity(config: dict[str, Any]) -> dict[str, Any]:
    return {"config_id": config["config_id"], "seed": config["seed"]}


def eval_metrics(ident: dict[str, Any], step: int, metrics: dict[str, float]) -> dict[str, Any]:
    return {**ident, "step": step, "loss": metrics["loss"],
            **{f"selection/{k}": v for k, v in metrics.items() if k != "loss"}}


def final_metrics(ident: dict[str, Any], result: dict[str, Any], last_step: int) -> dict[str, Any]:
    """The last report: status and report-split metrics; NaN where a failed seed has none (so nothing ranks it)."""
    ok = result["status"] == "ok"
    primary = result["primary_metric"]
    selection = {primary: math.nan, **(result.get("selection_metrics") or {})}
    report = {primary: math.nan, **(result.get("report_metrics") or {})}
    history = result.get("history") or []
    return {**ident, "done_ptray": True, "status": result["status"], "reason": result.get("reason") or "",
            "step": max(result.get("steps") or 0, last_step), "loss": history[-1]["loss"] if history else math.nan,
            **{f"selection/{k}": v if ok else math.nan for k, v in selection.items()},
            **{f"report/{k}": v if ok else math.nan for k, v in report.items()}}


class Reporter:
    """The core's reporter for one seed inside a trial (or a Ray Train worker): every evaluation goes to Tune as this
    seed's own report, so the driver logs each seed's curve as it trains, with a checkpoint of the whole pack. The
    loop calls a pack's reporters once every seed has booked the step, so the first seed to report a step sends the
    checkpoint and the others send none (`checkpointed` is shared by a pack's reporters)."""

    def __init__(self, ident: dict[str, Any], report, checkpointed: dict[str, int] | None = None):
        self.ident, self.report, self.last_step = ident, report, 0
        self.checkpointed = {} if checkpointed is None else checkpointed  # {"step": the last step checkpointed}

    def __call__(self, step: int, metrics: dict, save) -> bool:
        self.last_step = step
        self.send(eval_metrics(self.ident, step, metrics), save)
        return False  # stopping is the scheduler's: it ends the trial

    def send(self, metrics: dict[str, Any], save) -> None:
        if self.checkpointed.get("step") == metrics["step"]:
            self.report(metrics)
            return
        self.checkpointed["step"] = metrics["step"]
        with tempfile.TemporaryDirectory(prefix="ptray-ckpt-") as d:
            save(Path(d))
            # Whose state this is: a PBT member that restores it knows whether it took over another member's.
            write_json(Path(d) / OWNER_FILE, self.ident)
            self.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))


def run_trial(config: dict[str, Any], spec: TrialSpec) -> None:
    """The Tune function: train this (config, seed), resuming from the trial's checkpoint if it has one (a retry,
    `--resume`, or a PBT exploit of another member's state)."""
    cfgs = [spec.experiment_config(config, seed) for seed in seeds_of(config)]
    checkpoint = tune.get_checkpoint()
    log = Path(spec.log_dir) / f"{tune.get_context().get_trial_name()}.log" if spec.log_dir else None
    filed = spec.filed_results(config)
    if filed is not None:
        for seed, result in zip(seeds_of(config), filed):
            tune.report({**final_metrics({**identity(config), "seed": seed}, result, 0), ALREADY_FILED: True})
        return
    with output_to(log), checkpoint.as_directory() if checkpoint else nullcontext() as resume:
        if resume is not None and (Path(resume) / seed_dir(config["seed"]) / RESULT_FILE).is_file():
            # Finished before an interruption: say so again, train nothing.
            results = [json.loads((Path(resume) / seed_dir(s) / RESULT_FILE).read_text()) for s in seeds_of(config)]
            _report_final(config, results, [0] * len(results), checkpoint)
            return
        if spec.workers > 1:
            _train_with_workers(cfgs[0], identity(config), spec, checkpoint)
        else:
            _train_here(cfgs, config, resume)


def donor_of(config: dict[str, Any], resume: str | None) -> str | None:
    """The config_id of the member whose checkpoint this trial restores, when it is another's (a PBT exploit)."""
    owner = Path(resume) / OWNER_FILE if resume is not None else None
    if owner is None or not owner.is_file():
        return None
    donor = json.loads(owner.read_text())["config_id"]
    return donor if donor != config["config_id"] else None


@contextmanager
def output_to(path: Path | None):
    """This process's stdout and stderr, at the file-descriptor level (C++ extensions print there too), appended to
    `path` while the block runs (None: left as they are)."""
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(path, "a") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, original in zip((1, 2), saved):
                os.dup2(original, fd)
                os.close(original)


def _train_here(cfgs: list[ExperimentConfig], config: dict[str, Any], resume: str | None) -> None:
    """In the trial's own process: the trial's seeds (one, or a pack) with the core's `train_seeds`, each seed
    reporting as itself; every seed is filed from the last checkpoint."""
    from ptray.core.train import train_seeds

    with tempfile.TemporaryDirectory(prefix="ptray-run-") as out:
        checkpointed: dict[str, int] = {}
        reporters = [Reporter({**identity(config), "seed": c.train.seed}, tune.report, checkpointed) for c in cfgs]
        results = train_seeds(cfgs, [Path(out) / seed_dir(c.train.seed) for c in cfgs], reporters, resume_dir=resume,
                              progress=False, donor=donor_of(config, resume))
        _report_final(config, results, [r.last_step for r in reporters], tune.Checkpoint.from_directory(out))


def _report_final(config: dict[str, Any], results: list[dict[str, Any]], last_steps: list[int], checkpoint) -> None:
    """Every seed's last report (a pack's one after the other); the first carries the checkpoint that holds every
    seed's result."""
    for i, (seed, result, step) in enumerate(zip(seeds_of(config), results, last_steps)):
        tune.report(final_metrics({**identity(config), "seed": seed}, result, step),
                    checkpoint=checkpoint if i == 0 else None)


def _train_with_workers(cfg: ExperimentConfig, ident: dict[str, Any], spec: TrialSpec, checkpoint) -> None:
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Queue

    queue = Queue(maxsize=1, actor_options={"num_cpus": 0})
    # A new Train run per attempt: Train would otherwise restore a previous attempt's run of the same name.
    name = f"{tune.get_context().get_trial_name()}-{uuid.uuid4().hex[:6]}"
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={"config": cfg.to_dict(), "ident": ident, "resume": checkpoint},
        scaling_config=ray.train.ScalingConfig(num_workers=spec.workers, use_gpu=spec.gpus_per_worker > 0,
                                               resources_per_worker=spec.worker_resources()),
        run_config=ray.train.RunConfig(name=name, storage_path=spec.train_storage, callbacks=[ForwardReports(queue)],
                                       failure_config=ray.train.FailureConfig(max_failures=0),
                                       checkpoint_config=ray.train.CheckpointConfig(num_to_keep=spec.keep_checkpoints)),
    )
    errors: list[BaseException] = []

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as e:  # re-raised in the trial below: Tune retries or records it
            errors.append(e)
        finally:
            queue.put(None)

    threading.Thread(target=fit, daemon=True).start()
    # Each report of the workers (rank 0's metrics, the checkpoint of all ranks) becomes a Tune report.
    while (item := queue.get()) is not None:
        tune.report(item[0], checkpoint=item[1])
    if errors:
        raise errors[0]


class ForwardReports(UserCallback):
    """Runs in the Ray Train controller: hands every report to the waiting Tune trial, and waits until it is taken
    (the queue holds one), so workers never run ahead of Tune's decisions."""

    def __init__(self, queue):
        self.queue = queue

    def after_report(self, run_context, metrics, checkpoint) -> None:
        self.queue.put((metrics[0], checkpoint))


def worker_loop(config: dict[str, Any]) -> None:
    """A Ray Train worker: the core's `train` inside DeepSpeed (Ray Train made the process group, DeepSpeed reuses
    it; ZeRO-3 shards the frozen backbone across the workers). Every rank reports as often as the others, each
    with its own checkpoint shard; rank 0's last checkpoint holds the result."""
    import ray.train

    from ptray.core.train import train

    cfg = config_from_dict(config["config"])
    rank = ray.train.get_context().get_world_rank()
    reporter = Reporter(config["ident"], ray.train.report)
    resume = config["resume"]
    with resume.as_directory() if resume else nullcontext() as resume_dir:
        with tempfile.TemporaryDirectory(prefix="ptray-run-") as out:
            result = train(cfg, Path(out) / seed_dir(cfg.train.seed), reporter=reporter, resume_dir=resume_dir,
                           progress=False)
            final = final_metrics(config["ident"], result, reporter.last_step)
            ray.train.report(final, checkpoint=ray.train.Checkpoint.from_directory(out) if rank == 0 else None)


# --- the driver side --------------------------------------------------------------------------------------------------
def register_configs(experiment_dir: Path, configs: dict[str, dict[str, Any]]) -> None:
    """Add configs ({config_id: {overrides, label}}) to DIR/experiment.json (the driver is its only writer)."""
    meta = read_experiment_json(experiment_dir)
    new = {k: v for k, v in configs.items() if k not in meta["configs"]}
    if new:
        meta["configs"].update(new)
        write_json(experiment_dir / EXPERIMENT_FILE, meta)


class ResultWriter(tune.Callback):
    """On the driver: files every trial's outcome under DIR/runs/<config_id>/seed<N>/ (runs before the tracking
    callback, which reads these files)."""

    def __init__(self, experiment_dir: str | Path, spec: TrialSpec, primary_metric: str, scheduler_name: str):
        self.dir = Path(experiment_dir)
        self.spec, self.primary, self.scheduler_name = spec, primary_metric, scheduler_name
        self._last: dict[tuple[str, int], dict[str, Any]] = {}  # (trial_id, seed) -> that seed's last report

    def on_trial_result(self, iteration, trials, trial, result, **info):
        # A pack's seeds report in turn: the trial's last result is only one of them.
        self._last[trial.trial_id, int(result["seed"])] = result

    def on_trial_start(self, iteration, trials, trial, **info):
        c = trial.config
        register_configs(self.dir, {c["config_id"]: {"overrides": c["overrides"], "label": c["label"]}})

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        if last.get(ALREADY_FILED):
            return  # its seeds were filed by an earlier run of the experiment: keep them as they are
        if last.get("done_ptray") and trial.checkpoint is not None:
            self._copy_final(trial)
        elif self.scheduler_name in STOPPING_SCHEDULERS:
            self._record(trial, "stopped", f"stopped early by the {self.scheduler_name} scheduler at step "
                                            f"{last.get('step', 0)} (its selection score then ranked low)")
        else:
            # No scheduler of this search stops a trial (PBT pauses and restarts its members), so this is no pruning:
            # the trial was cut short, and a "stopped" seed would drop out of the statistics unseen.
            self._record(trial, "failed", f"Tune ended the trial at step {last.get('step', 0)} before it filed its "
                                           f"result (the {self.scheduler_name} scheduler stops no trial)")

    def on_trial_error(self, iteration, trials, trial, **info):
        error = str(trial.get_error() or "no error text stored by Ray").strip()
        self._record(trial, "failed", f"the trial crashed (retries: {trial.num_failures - 1}): "
                                      f"{error.splitlines()[-1] if error else error}", traceback=error)

    def _copy_final(self, trial) -> None:
        with trial.checkpoint.as_directory() as d:
            for seed in seeds_of(trial.config):
                src, out = Path(d) / seed_dir(seed), run_dir(self.dir, trial.config["config_id"], seed)
                result = json.loads((src / RESULT_FILE).read_text())
                if (src / ADAPTER_FILE).is_file():
                    out.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src / ADAPTER_FILE, out / ADAPTER_FILE)
                write_json(out / RESULT_FILE, {**result, **self._identity(trial)})

    def _record(self, trial, status: str, reason: str, **extra) -> None:
        """Seeds whose trial wrote no result: what the driver saw of them (each one's last report), and why."""
        c = trial.config
        for seed in seeds_of(c):
            last = self._last.get((trial.trial_id, seed)) or _own(trial.last_result, seed)
            selection = {k.removeprefix("selection/"): v for k, v in last.items() if k.startswith("selection/")}
            cfg = self.spec.experiment_config(c, seed)
            result = {"seed": seed, "status": status, "reason": reason, "task": cfg.task.name,
                      "method": cfg.method.name, "model": cfg.model.name, "primary_metric": self.primary,
                      "selection_metrics": selection or None, "report_metrics": {}, "steps": last.get("step", 0),
                      "history": [], "config": cfg.to_dict(), **extra}
            write_json(run_dir(self.dir, c["config_id"], seed) / RESULT_FILE, {**result, **self._identity(trial)})

    @staticmethod
    def _identity(trial) -> dict[str, Any]:
        c = trial.config
        return {"config_id": c["config_id"], "trial_id": trial.trial_id, "overrides": c["overrides"],
                "label": c["label"]}


def _own(result: dict[str, Any] | None, seed: int) -> dict[str, Any]:
    """`result` if it is `seed`'s report. After a restore Tune still has each trial's last result, but a callback's own
    record of every seed's last report starts empty."""
    return result if result and result.get("seed") == seed else {}
