"""`ptray tune`: an experiment of configs x seeds on Ray Tune, from start (or `--resume`) to the summary table.

    check the config and the search (no Ray yet) -> join or start Ray -> refuse trials the cluster can never hold
    -> search (one Tuner; PBT / PB2: one per seed and grid cell) -> confirm the top configs on fresh seeds
    -> log every result to MLflow -> print the per-config table

Everything lands in the experiment folder DIR (its contract: ptray/layout.py): experiment.json,
runs/<config_id>/seed<N>/, ray/ (Tune storage), confirm/ (an experiment folder of its own), logs/.
"""
from __future__ import annotations

import fcntl
import json
import os
import pickletools
import shutil
import signal
import socket
import sys
import threading
import time
import uuid
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlparse

from ptray.config import ConfigError, ExperimentConfig, TuneConfig, config_from_dict, load_config
from ptray.distributed.progress import LiveView
from ptray.distributed.search import ListSearcher, SearchPlan, selection_score, trial_config
from ptray.distributed.trial import ResultWriter, TrialSpec, run_trial, seeds_of
from ptray.layout import (CONFIRM_DIR, EXPERIMENT_FILE, LOCK_FILE, LOG_DIR, RAY_DIR, RESULT_FILE, RUNS_DIR,
                          check_output_dir, config_id, label, read_experiment_json, redact, result_problem, run_dir,
                          seed_dir, seed_of_dir, set_aside, without_redacted, write_json)

INTERRUPTED = 130  # the exit code of a run stopped by Ctrl-C


def run_experiment(config: str | Path | None = None, output: str | Path | None = None, overrides: list[str] = (),
                   address: str | None = None, resume: str | Path | None = None, verbose: bool = False,
                   trust: bool = False) -> int:
    """Run (or continue) an experiment; returns the process exit code (0, or INTERRUPTED). The console shows
    ptray's live view of the seeds; Ray's own output goes to DIR/logs/ (and to the console too with `verbose`).
    `trust`: a resume may load Tune's saved state (`check_trusted`)."""
    if resume is None and config is None:
        raise ConfigError("ptray tune needs a config file (or --resume DIR)")
    exp_dir = Path(resume) if resume is not None else Path(output or Path("outputs") / Path(config).stem)
    check_output_dir(exp_dir)
    with owning(exp_dir):
        return _run(exp_dir, config, list(overrides), address, resume, verbose, trust)


def _run(exp_dir: Path, config, overrides: list[str], address, resume, verbose: bool, trust: bool) -> int:
    exp_dir, cfg = _experiment(exp_dir, config, overrides, resume)
    if resume is not None and not trust:
        check_trusted(exp_dir, cfg.tune.storage_path if cfg.tune else None)
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        check_reachable(address)
    else:
        check_machine(cfg.tune or TuneConfig())
    from ptray.core.train import prepare  # the core's cheap checks (data files, prompt length), before any Ray

    cfg = _absolute_paths(cfg)
    prepared = prepare(cfg)
    plan = SearchPlan(cfg, prepared.task.primary_metric, prepared.max_positions)
    storage = plan.tune.storage_path or str((exp_dir / RAY_DIR).resolve())
    if resume is not None:
        repair_results(exp_dir, storage)
        if plan.tune.storage_path is None:
            follow_move(exp_dir)
    console = sys.stdout  # ptray's live view; Ray's own prints go to DIR/logs/ray.log unless verbose
    with _logs_to(exp_dir / LOG_DIR / "ray.log", enabled=not verbose):
        started = connect(address, verbose)
        try:
            at_once = check_capacity(plan.tune)
            if resume is None:
                _write_experiment(exp_dir, plan, plan.tune.name, plan.seeds, _known_configs(plan),
                                  plan.baseline_config_id())
            # Read back from experiment.json, a storage URI has no credentials: its client takes them from the
            # environment.
            storage = without_redacted(plan.tune.storage_path or str((exp_dir / RAY_DIR).resolve()))
            # Trials need no credential (only the driver logs to MLflow), and Tune saves the spec with its state.
            trial_base = json.loads(redact(json.dumps(plan.base)))
            spec = TrialSpec(base=trial_base, keys=plan.keys, workers=plan.tune.resources.workers,
                             cpus_per_worker=plan.tune.resources.cpus_per_worker,
                             gpus_per_worker=plan.tune.resources.gpus_per_worker,
                             train_storage=f"{storage.rstrip('/')}/train",
                             keep_checkpoints=plan.tune.keep_checkpoints,
                             log_dir="" if verbose else str((exp_dir / LOG_DIR / "trials").resolve()),
                             experiment_dir=str(exp_dir.resolve()))
            runner = _Runner(plan, spec, exp_dir, storage, at_once, None if verbose else console,
                             n_train=len(prepared.train))
            finished = runner.search()
            if finished and plan.tune.confirm is not None:
                finished = runner.confirm()
        finally:
            if started:
                import ray

                ray.shutdown()  # before the table, so the trials' last log lines do not print after it
    runner.log_and_print()
    if not finished:
        # --trust: the state to load is the one this run has just written.
        print(f"interrupted; continue with: ptray tune --resume {exp_dir} --trust")
        return INTERRUPTED
    return 0


@contextmanager
def owning(exp_dir: Path):
    """One owner per experiment folder: an OS lock on DIR/.ptray.lock (holding the owner's PID), taken before Ray
    starts and held to the end. The OS drops it when its process dies, so a killed run's lock is simply taken over.
    A folder made here for a run that then fails before writing experiment.json is removed again."""
    created = not exp_dir.exists()
    exp_dir.mkdir(parents=True, exist_ok=True)
    path = exp_dir / LOCK_FILE
    lock = open(path, "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        owner = lock.read().strip() or "unknown"
        lock.close()
        raise ConfigError(f"{exp_dir} is in use by another `ptray tune` (PID {owner}); wait for it to end, stop it "
                          "(Ctrl-C; then `ptray tune --resume` continues it), or choose another --output") from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    try:
        yield
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()
        if not (exp_dir / EXPERIMENT_FILE).exists():  # no experiment came of it: leave the folder as it was
            if created:
                shutil.rmtree(exp_dir, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def _experiment(exp_dir: Path, config, overrides, resume) -> tuple[Path, ExperimentConfig]:
    if resume is not None:
        meta_path = exp_dir / EXPERIMENT_FILE
        if not meta_path.is_file():
            raise ConfigError(f"--resume {exp_dir}: not a ptray experiment folder ({EXPERIMENT_FILE} is missing); "
                              "pass the --output folder of an earlier `ptray tune`")
        if config is not None or overrides:
            raise ConfigError("--resume continues an experiment exactly as it started: give only the folder "
                              f"(its config is in {meta_path})")
        config = read_experiment_json(exp_dir).get("config")
        if not isinstance(config, dict):
            raise ConfigError(f"{meta_path} holds no experiment config (its \"config\" key); restore the file from a "
                              "copy, or run the experiment again into another --output")
        return exp_dir, config_from_dict(config, str(meta_path))
    cfg = load_config(config, overrides)
    if (exp_dir / EXPERIMENT_FILE).exists():
        raise ConfigError(f"{exp_dir} already holds an experiment: continue it with `ptray tune --resume {exp_dir}` "
                          "or choose another --output")
    tune_cfg = cfg.tune or TuneConfig()
    if tune_cfg.name is None:
        cfg = cfg.model_copy(update={"tune": tune_cfg.model_copy(update={"name": Path(config).stem})})
    return exp_dir, cfg


def check_trusted(exp_dir: Path, storage_path: str | None) -> None:
    """Refuse a resume that would load Tune's saved state without the user's --trust. Tune restores an experiment
    from Python pickles (tuner.pkl, searcher-state-*.pkl, the trials in its state files; DeepSpeed's checkpoints are
    torch pickles too), and loading a pickle runs whatever code it holds: a folder from elsewhere could run anything.
    Remote storage cannot be looked into cheaply, so it always asks."""
    if storage_path and "://" in storage_path:
        found = f"Tune's saved state in {redact(storage_path)}"
    else:
        pickles = sorted(Path(storage_path or exp_dir / RAY_DIR).rglob("*.pkl"))
        if not pickles:
            return  # no Tune state yet: nothing is loaded
        found = f"{pickles[0]}" + (f" and {len(pickles) - 1} more Python pickles" if len(pickles) > 1 else "")
    raise ConfigError(f"--resume {exp_dir}: {found} would be loaded, and loading a pickle runs any code it holds; "
                      f"continue only a folder you trust (one your own ptray tune wrote), with "
                      f"`ptray tune --resume {exp_dir} --trust`")


def _absolute_paths(cfg: ExperimentConfig) -> ExperimentConfig:
    """Trials run in their own folders: make relative file paths of the config absolute, here (task.data_dir
    already is)."""
    task, model = cfg.task, cfg.model
    if task.data_files:
        task = task.model_copy(update={"data_files": {k: str(Path(v).resolve()) for k, v in task.data_files.items()}})
    if Path(model.name).exists():
        model = model.model_copy(update={"name": str(Path(model.name).resolve())})
    return cfg.model_copy(update={"task": task, "model": model})


def _write_experiment(exp_dir: Path, plan: SearchPlan, name: str, seeds: list[int],
                      overrides: list[dict[str, Any]], baseline: str | None) -> None:
    """DIR/experiment.json: what marks a ptray experiment, with the configs known up front (more may join). Its uid
    names the experiment wherever the folder is moved (MLflow finds its runs by it)."""
    import ptray

    write_json(exp_dir / EXPERIMENT_FILE, {
        "ptray_version": ptray.__version__, "uid": uuid.uuid4().hex, "folder": str(exp_dir.resolve()), "name": name,
        "config": plan.base, "seeds": seeds,
        "configs": {config_id(o): {"overrides": o, "label": label(o)} for o in overrides},
        "baseline_config_id": baseline, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })


def _known_configs(plan: SearchPlan) -> list[dict[str, Any]]:
    """The configs a search will run, where they are known before it starts (Optuna's arrive as it suggests them);
    under PBT / PB2 every population slot and the best member of each grid cell."""
    if plan.evolving:
        return [o for cell in plan.grid_cells() for o in
                [c["overrides"] for c in plan.population(cell, 0)] + [plan.best_member_overrides(cell)]]
    return [] if plan.tune.resolved_searcher() == "optuna" else plan.search_configs()


# --- Ray ---------------------------------------------------------------------------------------------------------
def connect(address: str | None, verbose: bool = False) -> bool:
    """Join the cluster at `address`, or start a local Ray in this process. True if started here. Unless
    `verbose`, the trials' output stays in Ray's session logs (`ray logs`) instead of reaching this console."""
    import ray

    quiet = {} if verbose else {"log_to_driver": False}
    if not address:
        with _loopback_only():
            # As many CPUs as this machine has: trials are sized against them.
            ray.init(include_dashboard=False, **quiet)
        return True
    try:
        ray.init(address=address, **quiet)
    except ConnectionError as e:  # something answered the knock, but no Ray cluster
        raise _unreachable(address, e) from None
    return False


@contextmanager
def _loopback_only():
    """A Ray started here for this machine alone listens on 127.0.0.1 only. On Linux, Ray gives a node the machine's
    network address and binds its servers (GCS, raylet, workers, agents, the metrics endpoint that answers anyone) on
    every interface; `ray.init(_node_ip_address="127.0.0.1")` is turned back into that address. Ray's switch for a
    single-machine Ray (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, its default on macOS and Windows) makes the node
    127.0.0.1: Ray's processes, started inside this block, inherit the variable; the driver reads it when Ray is
    imported, hence the module constant too. Both are restored after, so a later join of a cluster is unchanged."""
    from ray._private import ray_constants

    saved = os.environ.get(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        if saved[0] is None:
            os.environ.pop(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR)
        else:
            os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = saved[0]
        ray_constants.ENABLE_RAY_CLUSTER = saved[1]


@contextmanager
def _logs_to(path: Path, enabled: bool):
    """Send this process's prints and log lines (Ray's banners and tables, Tune's and MLflow's notices) to `path`
    while the block runs: whatever writes to sys.stdout / sys.stderr, and the handlers Ray's logger set up on the
    console when it was imported."""
    if not enabled:
        yield
        return
    import logging

    path.parent.mkdir(parents=True, exist_ok=True)
    ray_handlers = [h for h in logging.getLogger("ray").handlers
                    if isinstance(h, logging.StreamHandler) and h.stream in (sys.stdout, sys.stderr)]
    with open(path, "a", buffering=1) as log, redirect_stdout(log), redirect_stderr(log):
        consoles = [h.setStream(log) for h in ray_handlers]
        try:
            yield
        finally:
            for h, console in zip(ray_handlers, consoles):
                h.setStream(console)


def check_reachable(address: str, timeout: float = 3.0) -> None:
    """ray.init can wait a long time for a cluster that is not there: knock first, and say what to do."""
    if address == "auto":
        return  # ray.init finds (or fails to find) the local cluster itself, at once
    parsed = urlparse(address if "://" in address else f"ray://{address}")
    if parsed.scheme in ("http", "https"):
        raise ConfigError(f"--address {address} is a dashboard (job submission) address; ptray tune joins a cluster "
                          "at its GCS address (host:6379) or a Ray client address (ray://host:10001)")
    if parsed.hostname is None or parsed.port is None:
        raise ConfigError(f"--address {address!r} is not host:port or ray://host:port")
    try:
        socket.create_connection((parsed.hostname, parsed.port), timeout=timeout).close()
    except OSError as e:
        raise _unreachable(address, e) from None


def _unreachable(address: str, reason: Exception) -> ConfigError:
    return ConfigError(f"no Ray cluster answers at {address} ({reason}); start one (`ray start --head`, `ray up "
                       "cluster.yaml`), fix --address / RAY_ADDRESS, or leave both unset to run on a local Ray")


def _demand(tune_cfg: TuneConfig) -> tuple[dict[str, float], dict[str, float]]:
    """What one trial reserves in all, and what each of its workers needs on one node."""
    r = tune_cfg.resources
    worker = {"CPU": r.cpus_per_worker, "GPU": r.gpus_per_worker}
    trial = dict(worker) if r.workers == 1 else {"CPU": 0.01 + r.workers * r.cpus_per_worker,
                                                  "GPU": r.workers * r.gpus_per_worker}
    return trial, worker


def _refuse_oversized(tune_cfg: TuneConfig, total: dict[str, float], largest: dict[str, float], where: str) -> None:
    trial, worker = _demand(tune_cfg)
    if any(v > total.get(k, 0) for k, v in trial.items()) or any(v > largest.get(k, 0) for k, v in worker.items()):
        r = tune_cfg.resources
        raise ConfigError(
            f"tune.resources asks for {r.workers} worker(s) x ({r.cpus_per_worker} CPU, {r.gpus_per_worker} GPU) per "
            f"trial, {_fmt(trial)} in all, but {where} has at most {_fmt({k: total.get(k, 0) for k in worker})}"
            + ("" if largest == total else f" and its largest node {_fmt({k: largest.get(k, 0) for k in worker})}")
            + ": no trial could ever start. Lower tune.resources.workers / cpus_per_worker / gpus_per_worker, or add "
            "nodes")


def check_machine(tune_cfg: TuneConfig) -> None:
    """Before a local Ray starts (it gets this machine's CPUs and GPUs): refuse a trial that could never start here,
    in a second instead of after Ray's start-up."""
    gpus = 0
    if tune_cfg.resources.gpus_per_worker > 0:  # torch (slow to import) only when GPUs are asked for
        import torch

        gpus = torch.cuda.device_count()
    machine = {"CPU": os.cpu_count() or 1, "GPU": gpus}
    _refuse_oversized(tune_cfg, machine, machine, "this machine (a local Ray)")


def check_capacity(tune_cfg: TuneConfig) -> int:
    """Refuse a trial the cluster can never hold (it would wait forever); return how many fit at once."""
    import ray
    from ray._private.state import state  # what an autoscaling cluster can grow to; Ray Train checks the same

    total = state.get_max_resources_from_cluster_config() or ray.cluster_resources()
    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    config = state.get_cluster_config()
    if config is not None:
        nodes += [dict(g.resources) for g in config.node_group_configs]
    largest = {k: max(n.get(k, 0) for n in nodes) for k in ("CPU", "GPU")}
    _refuse_oversized(tune_cfg, total, largest, "this cluster")
    trial, _ = _demand(tune_cfg)
    at_once = min(int(total.get(k, 0) // v) for k, v in trial.items() if v > 0)
    return min(at_once, tune_cfg.max_concurrent or at_once)


def _fmt(resources: dict[str, float]) -> str:
    return ", ".join(f"{v:g} {k}" for k, v in resources.items())


def _total_steps(spec: TrialSpec, n_train: int, trial_config: dict[str, Any]) -> int:
    """A trial's training steps, for the live view's step/total and ETA."""
    from ptray.core.train import total_steps

    return total_steps(spec.experiment_config(trial_config, trial_config["seed"]), n_train, spec.workers)


def _trial_dirname(trial) -> str:
    return f"{trial.config['config_id']}-seed{'-'.join(map(str, seeds_of(trial.config)))}-{trial.trial_id}"


def _trial_of_dirname(name: str, cid: str) -> tuple[list[int], str] | None:
    """(seeds, trial id) of a trial folder of config `cid` named by _trial_dirname; None for any other folder."""
    seeds, _, trial_id = name.removeprefix(f"{cid}-seed").rpartition("-")
    if not name.startswith(f"{cid}-seed") or not all(s.isdigit() for s in seeds.split("-")):
        return None
    return [int(s) for s in seeds.split("-")], trial_id


# --- repairs before a resume --------------------------------------------------------------------------------------
def repair_results(exp_dir: Path, storage: str) -> None:
    """A result.json that is no seed's record (a full disk truncated it) is restored from the intact copy in its
    trial's last checkpoint (what it was copied from), or else set aside, so that the seed runs again (_tune_list
    runs every trial without a result). Says which, for each."""
    if "://" in storage:  # remote Tune storage: its checkpoints are not searched here
        return
    for folder in (exp_dir, exp_dir / CONFIRM_DIR):
        if not (folder / EXPERIMENT_FILE).is_file():
            continue
        configs = read_experiment_json(folder).get("configs") or {}
        for path in sorted((folder / RUNS_DIR).glob(f"*/{seed_dir('*')}/{RESULT_FILE}")):
            problem = result_problem(path)
            if problem is None:
                continue
            cid, seed = path.parent.parent.name, seed_of_dir(path.parent)
            found = _checkpoint_copy(Path(storage), cid, seed)
            if found is None:
                aside = set_aside(path, "corrupt")
                print(f"{path}: {problem}; no intact copy in the trial checkpoints, so seed {seed} runs again "
                      f"(the file is kept as {aside.name})", flush=True)
                continue
            copy, trial_id = found
            overrides = (configs.get(cid) or {}).get("overrides", {})
            # As the driver filed it from that checkpoint (ResultWriter._copy_final): the core's record + identity.
            write_json(path, {**json.loads(copy.read_text()), "config_id": cid, "trial_id": trial_id,
                              "overrides": overrides, "label": label(overrides)})
            print(f"{path}: {problem}; restored from the trial checkpoint {copy}", flush=True)


def _checkpoint_copy(storage: Path, cid: str, seed: int) -> tuple[Path, str] | None:
    """The newest intact result.json of (config, seed) in the checkpoints of any Tuner of the experiment, with the
    id of the trial it is from."""
    found = []
    for trial in storage.glob(f"*/{cid}-seed*"):
        parsed = _trial_of_dirname(trial.name, cid)
        if parsed is None or seed not in parsed[0]:
            continue
        for copy in trial.glob(f"checkpoint_*/{seed_dir(seed)}/{RESULT_FILE}"):
            if result_problem(copy) is None:
                found.append((copy.stat().st_mtime, copy, parsed[1]))
    return max(found)[1:] if found else None


def follow_move(exp_dir: Path) -> None:
    """A resume in a folder moved since its last run. Ray Tune's saved searcher keeps the old absolute paths, and the
    trials it creates on a restore would write there (Ray restores only the paths of the trials it already held). So
    Tune's storage is set aside (kept) and the trials are planned from result.json: finished seeds are kept, those that
    had not finished start over. experiment.json's `folder` then names the new place."""
    meta = read_experiment_json(exp_dir)
    here, was = str(exp_dir.resolve()), meta.get("folder")
    if was == here:
        return
    tune_dir = exp_dir / RAY_DIR
    if was is not None and tune_dir.exists():  # folders from before `folder` was recorded are taken as unmoved
        aside = set_aside(tune_dir, "moved")
        print(f"{exp_dir} was moved here from {was} since Ray Tune saved its state, which holds the old paths; kept as "
              f"{aside.name}, and the trials are planned again from result.json (finished seeds do not run again, "
              "unfinished ones start over)", flush=True)
    write_json(exp_dir / EXPERIMENT_FILE, {**meta, "folder": here})


def tune_state_problem(path: Path) -> str | None:
    """Why a Tuner's saved state cannot be restored, or None. Tune writes its state files in place, so a full disk
    leaves them truncated, and a restore then fails and forgets the trials it held. A restore reads tuner.pkl and the
    newest file of each kind (named after the session that wrote it, so the newest sorts last); an older one left
    truncated does not matter. Checked without loading a pickle: pickletools only parses it."""
    newest = [max(path.glob(f"{kind}-*"), default=None)
              for kind in ("experiment_state", "search_gen_state", "searcher-state")]
    for f in [path / "tuner.pkl", *filter(None, newest)]:
        try:
            if f.name.startswith("experiment_state-"):  # JSON: the trials and the run's state
                json.loads(f.read_text())
            else:  # pickles (search_gen_state despite its .json)
                for _ in pickletools.genops(f.read_bytes()):
                    pass
        except (OSError, ValueError) as e:
            return f"{f.name}: {str(e) or type(e).__name__}"
    return None


@contextmanager
def _ctrl_c_stops_tune():
    """While Tune runs: the first Ctrl-C is noted and passed on as SIGUSR1, on which Tune stops its trials and saves
    its state for `--resume` (as it would on SIGINT, but ptray then knows it happened); a second one stops at once."""
    stopped = threading.Event()

    def on_ctrl_c(signum, frame):
        # Before Tune has set up its handler (SIGUSR1 still at its default, which kills), stop as Python would.
        if stopped.is_set() or signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL:
            raise KeyboardInterrupt
        stopped.set()
        os.kill(os.getpid(), signal.SIGUSR1)

    if threading.current_thread() is not threading.main_thread():  # signals reach only the main thread
        yield stopped
        return
    # Tune's SIGUSR1 handler from an earlier Tuner in this process would set that Tuner's event: start from the default.
    before = signal.signal(signal.SIGINT, on_ctrl_c), signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    disabled = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # Tune keeps its hands off SIGINT and listens on SIGUSR1
    try:
        yield stopped
    finally:
        signal.signal(signal.SIGINT, before[0])
        signal.signal(signal.SIGUSR1, before[1])
        if disabled is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER")
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = disabled


def _without_result(trials: list[dict[str, Any]], exp_dir: Path) -> list[dict[str, Any]]:
    """The trials with a seed that has no result.json."""
    return [t for t in trials if any(not (run_dir(exp_dir, t["config_id"], s) / RESULT_FILE).is_file()
                                     for s in seeds_of(t))]


class _Runner:
    def __init__(self, plan: SearchPlan, spec: TrialSpec, exp_dir: Path, storage: str, at_once: int,
                 console: TextIO | None, n_train: int):
        """console: where ptray's live view of the trials goes (None: Ray's own progress output instead)."""
        from ptray.tracking.store import resolve_tracking_uri

        self.plan, self.spec, self.dir, self.storage, self.at_once = plan, spec, exp_dir, storage, at_once
        self.console, self.n_train = console, n_train
        self._interrupted = False  # whether the last Tuner was stopped before its trials ended
        self.tracking_uri = resolve_tracking_uri(exp_dir, plan.base)
        self.confirm_dir = exp_dir / CONFIRM_DIR

    def search(self) -> bool:
        if not self.plan.evolving:
            if self.plan.tune.resolved_searcher() == "optuna":
                searcher, count = self.plan.model_searcher()
            else:
                return self._tune_list("search", self.plan.search_trials(), self.plan.scheduler(), self.dir)
            return self._tune("search", searcher, count, self.plan.scheduler(), self.dir)
        # PBT / PB2: a population per (grid cell, seed), one after the other; each ends with its best member.
        finished = True
        for cell in self.plan.grid_cells():
            for seed in self.plan.seeds:
                members = self.plan.population(cell, seed)
                name = f"pbt-seed{seed}" + (f"-{config_id(cell)}" if cell else "")
                scheduler = self.plan.scheduler(partial(_total_steps, self.spec, self.n_train))
                finished = self._tune(name, None, len(members), scheduler, self.dir,
                                      param_space=self.plan.population_space(members))
                if not finished:
                    return False
                self._best_member(cell, seed, members)
        return True

    def confirm(self) -> bool:
        """Re-run the top-k configs of the search (and the baseline) on seeds the search never saw."""
        c, fresh = self.plan.tune.confirm, self.plan.tune.confirm_seeds()
        ranked = self.ranking()
        chosen = [o for _, o in ranked[: c.top_k]]
        baseline = self.plan.tune.baseline
        if baseline is not None and baseline not in chosen:
            chosen.append(baseline)
        self._say("confirming on fresh seeds " + ", ".join(map(str, fresh)) + ":\n" +
                  "\n".join(f"  {label(o)}  (search mean selection {score:.4f})" for score, o in ranked[: c.top_k]))
        if not (self.confirm_dir / EXPERIMENT_FILE).is_file():
            _write_experiment(self.confirm_dir, self.plan, f"{self.plan.tune.name}-confirm", fresh, chosen,
                              self.plan.baseline_config_id())
        trials = [trial_config(o, pack) for pack in self.plan.packs(fresh) for o in chosen]
        return self._tune_list("confirm", trials, None, self.confirm_dir)

    def _tune_list(self, name: str, trials: list[dict[str, Any]], scheduler, exp_dir: Path) -> bool:
        """A fixed list of trials; result.json is the truth of what ran. A Tuner without saved state to continue
        (a new one, or one whose state could not be read) gets only the trials without a result, so finished seeds
        never run again. A trial left without a result at the end (lost from Tune's state by a driver killed between
        handing it out and recording it, or whose result.json was set aside as corrupt) runs again in a Tuner of its
        own."""
        todo = trials if self._restorable(name) else _without_result(trials, exp_dir)
        if todo and not self._tune(name, ListSearcher(todo), len(todo), scheduler, exp_dir) and self._interrupted:
            return False
        lost = _without_result(trials, exp_dir)
        if not lost:
            return True
        self._say(f"{name}: {len(lost)} trial(s) without a result; running them again")
        # Named after what it runs: an interrupted rerun of the same trials continues, other lost trials get their own.
        rerun = config_id({"rerun": sorted([t["config_id"], seeds_of(t)] for t in lost)})
        return self._tune(f"{name}-rerun-{rerun}", ListSearcher(lost), len(lost), scheduler, exp_dir)

    def _restorable(self, name: str) -> bool:
        """Whether the Tuner `name` has saved state to continue from. State that cannot be read is set aside (kept
        for inspection): its trials are then planned from result.json instead."""
        from ray import tune

        path = self._tune_path(name)
        if not tune.Tuner.can_restore(path):
            return False
        problem = None if "://" in path else tune_state_problem(Path(path))
        if problem is None:
            return True
        aside = set_aside(path, "unreadable")
        self._say(f"{name}: Tune's saved state cannot be read ({problem}); kept as {aside.name}, and the trials are "
                  "planned again from result.json (finished seeds do not run again)")
        return False

    def _tune_path(self, name: str) -> str:
        return f"{self.storage.rstrip('/')}/{name}"

    def ranking(self) -> list[tuple[float, dict[str, Any]]]:
        """Configs by their mean selection score over the search seeds (best first)."""
        meta = read_experiment_json(self.dir)
        scored = []
        for cid, info in meta["configs"].items():
            scores = []
            for seed in self.plan.seeds:
                path = run_dir(self.dir, cid, seed) / RESULT_FILE
                scores.append(selection_score(json.loads(path.read_text()), self.plan.primary_metric)
                              if path.is_file() else 0.0)
            scored.append((sum(scores) / len(scores), info["overrides"]))
        return sorted(scored, key=lambda x: -x[0])

    def _best_member(self, cell: dict[str, Any], seed: int, members: list[dict[str, Any]]) -> None:
        """A population's outcome on its seed: the member with the best selection score, filed as its own config."""
        results = [json.loads(p.read_text()) for m in members
                   if (p := run_dir(self.dir, m["config_id"], seed) / RESULT_FILE).is_file()]
        overrides = self.plan.best_member_overrides(cell)
        ident = {"config_id": config_id(overrides), "overrides": overrides, "label": label(overrides)}
        ok = [r for r in results if r["status"] == "ok"]
        if ok:
            best = max(ok, key=lambda r: selection_score(r, self.plan.primary_metric))
            record = {**best, **ident, "best_of": best["config_id"]}
        else:
            record = {"seed": seed, "status": "failed", "reason": "no member of the population finished",
                      "primary_metric": self.plan.primary_metric, "report_metrics": {}, **ident}
        write_json(run_dir(self.dir, ident["config_id"], seed) / RESULT_FILE, record)

    def _concurrency(self, scheduler) -> int | None:
        """Tune's max_concurrent_trials. A PBT / PB2 population is every member at once (None): members take turns
        on the resources, pausing at each perturbation, so that all of them reach it before anyone is exploited.
        Capped at what fits, Tune would only make the first members trials: they would train to the end and perturb
        among themselves, and the rest would follow as a second population."""
        from ray.tune.schedulers import PopulationBasedTraining  # PB2 is one too

        return None if isinstance(scheduler, PopulationBasedTraining) else self.at_once

    def _tune(self, name: str, searcher, count: int, scheduler, exp_dir: Path, param_space=None) -> bool:
        """One Tuner (restored if an earlier run of it was interrupted) of `count` trials: drawn from `searcher`, or
        the grid of `param_space`. True when all its trials ended."""
        from ray import tune

        from ptray.distributed.mlflow_callback import MLflowSeedCallback

        meta = read_experiment_json(exp_dir)
        trainable = tune.with_resources(tune.with_parameters(run_trial, spec=self.spec), self.spec.trial_resources())
        path = self._tune_path(name)
        if self._restorable(name):
            tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=False)
        else:
            callbacks = [ResultWriter(exp_dir, self.spec, self.plan.primary_metric, self.plan.scheduler_name),
                         MLflowSeedCallback(self.tracking_uri, meta["name"], exp_dir)]
            if self.console is not None:
                # What the view needs, without the runner (Tune pickles its callbacks; the runner holds the console).
                total_of = partial(_total_steps, self.spec, self.n_train)
                callbacks.append(LiveView(self.plan.primary_metric, total_of, self.console))
            tuner = tune.Tuner(
                trainable, param_space=param_space,
                # The searcher and scheduler carry the metric (selection/<primary>) themselves.
                tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler,
                                            num_samples=1 if param_space else count,
                                            max_concurrent_trials=self._concurrency(scheduler),
                                            trial_dirname_creator=_trial_dirname,
                                            # A stopped Ray Train trial's run goes on inside its process: a fresh
                                            # process per trial ends it with the trial's own.
                                            reuse_actors=self.plan.tune.reuse_actors and self.spec.workers == 1),
                run_config=tune.RunConfig(
                    name=name, storage_path=self.storage, callbacks=callbacks, verbose=0 if self.console else 1,
                    failure_config=tune.FailureConfig(max_failures=self.plan.tune.max_failures),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=self.plan.tune.keep_checkpoints)),
            )
        t0 = time.perf_counter()
        with _ctrl_c_stops_tune() as stopped:
            grid = tuner.fit()
        # Tune marks the trials it stops on Ctrl-C TERMINATED, so only the signal itself tells an interrupted run
        # from one whose searcher ran ahead of the trials it recorded (a driver killed in between: `_tune_list`).
        self._interrupted = stopped.is_set()
        ended = grid.num_terminated + grid.num_errors
        if self._interrupted:
            self._say(f"{name}: interrupted after {time.perf_counter() - t0:.0f}s")
        else:
            self._say(f"{name}: {ended}/{count} trials ended in {time.perf_counter() - t0:.0f}s")
        return ended >= count and not self._interrupted

    def _say(self, text: str) -> None:
        print(text, file=self.console or sys.stdout, flush=True)

    def log_and_print(self) -> None:
        from ptray.analysis.report import log_experiment
        from ptray.distributed.mlflow_callback import warn_tracking_failed
        from ptray.tracking.summary import print_summary

        for d in (self.dir, self.confirm_dir):
            if (d / EXPERIMENT_FILE).is_file():
                try:
                    log_experiment(d, self.tracking_uri)
                except Exception as e:  # tracking is best-effort here too: the table comes from result.json
                    warn_tracking_failed(self.tracking_uri, d, f"logging the folder: {type(e).__name__}: {e}")
                print()
                print_summary(d)
