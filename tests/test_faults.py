"""Faults and hostile folders, injected for real where they can be (docs/reliability.md, "Faults and security").

Fast tests on synthetic experiment folders (result.json files written here, no training): an output folder with an
apostrophe in its path, `ptray report` while another process owns the folder or with its server gone, a failed seed
that later succeeds, credentials in URIs, a tampered experiment.json, a planted searcher-state pickle. Marked slow
(they start Ray or train): a dead tracking server and a store corrupted mid-sweep, Ray's listening sockets, a planted
checkpoint pickle.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ptray.layout import config_id, label, owner, redact, write_json
from conftest import (REPO, check_mlflow_structure, free_port, ptray_cmd, results, run_ptray, write_experiment,
                      write_result)
from tune_util import write_config

A = {"method.num_tokens": 4}
B = {"method.num_tokens": 8}
SEEDS = [0, 1, 2]


def _experiment(root: Path, seeds=SEEDS, config: dict | None = None) -> Path:
    write_experiment(root, [A, B], seeds, base=config or {"method": {"name": "vanilla"}})
    return root


def _file(root: Path, overrides: dict, seed: int, status: str = "ok", **extra) -> dict:
    """A seed's result.json as the core and the Ray layer write it (only the fields the results layer reads)."""
    acc = 0.6 + 0.01 * seed + 0.05 * (overrides is B)
    result = {"seed": seed, "status": status, "reason": None if status == "ok" else "loss diverged (nan) at step 2",
              "primary_metric": "accuracy", "majority_baseline": 0.5,
              "selection_metrics": {"accuracy": acc}, "report_metrics": {"accuracy": acc} if status == "ok" else {},
              "history": [{"step": 1, "loss": 1.0, "selection": {"accuracy": acc}}], "steps": 1,
              "config": {"method": {"name": "vanilla", "num_tokens": overrides["method.num_tokens"]},
                         "train": {"seed": seed}},
              "config_id": config_id(overrides), "overrides": overrides, "label": label(overrides), **extra}
    write_result(root, overrides, seed, result)
    return result


def _runs(uri: str, name: str) -> dict:
    """{(config_id, seed or None for the parent): run} of an experiment in the store at `uri`."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return {(r.data.tags["ptray.config_id"], int(r.data.tags["ptray.seed"]) if "ptray.seed" in r.data.tags else None): r
            for r in runs}


# --- MLflow queries and an apostrophe in the output path ------------------------------------------------------------
def test_a_quote_in_the_folder_path_is_logged_and_found_again(tmp_path):
    from ptray.analysis.report import log_experiment
    from ptray.tracking.store import resolve_tracking_uri

    root = _experiment(tmp_path / "it's \"quoted\"" / "exp")
    for o in (A, B):
        for s in SEEDS:
            _file(root, o, s)
    uri = resolve_tracking_uri(root)
    log_experiment(root, uri)  # was: MlflowException "Invalid clause(s) in filter string"
    first = check_mlflow_structure(uri, "exp", {config_id(A): SEEDS, config_id(B): SEEDS})
    log_experiment(root, uri)  # found again by its key: no run twice
    again = check_mlflow_structure(uri, "exp", {config_id(A): SEEDS, config_id(B): SEEDS})
    assert {k: r.info.run_id for k, r in again.items()} == {k: r.info.run_id for k, r in first.items()}


def test_a_moved_folder_keeps_its_runs_and_its_artifacts(tmp_path):
    from mlflow import MlflowClient

    from ptray.analysis.report import log_experiment
    from ptray.tracking.store import resolve_tracking_uri

    old = _experiment(tmp_path / "old" / "exp")
    for o in (A, B):
        for s in SEEDS:
            _file(old, o, s)
    log_experiment(old, resolve_tracking_uri(old))
    first = check_mlflow_structure(resolve_tracking_uri(old), "exp", {config_id(A): SEEDS, config_id(B): SEEDS})
    new = tmp_path / "new" / "exp"
    new.parent.mkdir()
    old.rename(new)  # the store and its artifacts move with the folder
    uri = resolve_tracking_uri(new)
    # was: a second parent and child for every run (runs were keyed by the folder's path)
    report = run_ptray("report", new)
    assert report.returncode == 0, report.stderr
    again = check_mlflow_structure(uri, "exp", {config_id(A): SEEDS, config_id(B): SEEDS})
    assert {k: r.info.run_id for k, r in again.items()} == {k: r.info.run_id for k, r in first.items()}
    # MLflow reads and writes artifacts in the moved folder (was: the old path, outside it, created again).
    assert not (tmp_path / "old" / "exp").exists(), sorted((tmp_path / "old").rglob("*"))
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("exp")
    assert exp.artifact_location == (new / "mlartifacts").as_uri() and exp.tags["ptray.dir"] == str(new)
    for run in client.search_runs([exp.experiment_id], max_results=100):
        assert run.info.artifact_uri.startswith((new / "mlartifacts").as_uri() + "/"), run.info.artifact_uri
        assert run.data.tags["ptray.dir"] == str(new)
        assert client.list_artifacts(run.info.run_id), run.info.run_id  # the files logged before the move
    assert [a.path for a in client.list_artifacts(again[config_id(A), 0].info.run_id)] == ["result.json"]
    parent = client.get_run(again[config_id(A), 0].data.tags["mlflow.parentRunId"])
    assert "report" in {a.path for a in client.list_artifacts(parent.info.run_id)}  # logged after the move


def test_a_folder_from_before_uids_is_found_by_its_path(tmp_path):
    from ptray.analysis.report import log_experiment
    from ptray.layout import read_experiment_json
    from ptray.tracking.store import resolve_tracking_uri

    root = _experiment(tmp_path / "exp")
    meta = read_experiment_json(root)
    del meta["uid"]  # experiment.json as ptray wrote it before 2026-11-30
    write_json(root / "experiment.json", meta)
    for o in (A, B):
        for s in SEEDS:
            _file(root, o, s)
    uri = resolve_tracking_uri(root)
    log_experiment(root, uri)
    first = check_mlflow_structure(uri, "exp", {config_id(A): SEEDS, config_id(B): SEEDS})
    log_experiment(root, uri)  # its runs are keyed by its path, as that ptray keyed them: found, none made twice
    again = check_mlflow_structure(uri, "exp", {config_id(A): SEEDS, config_id(B): SEEDS})
    assert {k: r.info.run_id for k, r in again.items()} == {k: r.info.run_id for k, r in first.items()}


# --- `ptray report` while a sweep runs, and a failure that a resume repairs -----------------------------------------
@pytest.fixture
def owned(tmp_path):
    """An experiment folder owned by another live process through ptray tune's own lock (`owning`)."""
    root = _experiment(tmp_path / "exp")
    code = ("import sys, time; from pathlib import Path; from ptray.distributed.runner import owning\n"
            "with owning(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(root)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield root, holder.pid
    finally:
        holder.kill()
        holder.wait()


def test_report_during_a_sweep_says_running_and_changes_no_run_status(owned):
    root, pid = owned
    assert owner(root) == str(pid)
    _file(root, A, 0)
    _file(root, B, 0)
    # The sweep's own callback has started the runs of the seeds it is training (RUNNING in MLflow).
    from ptray.tracking.store import open_tracker

    tracker = open_tracker(root)
    for o in (A, B):
        for s in (1, 2):
            tracker.child(config_id(o), s, label(o), o)
    uri = tracker.uri

    p = run_ptray("report", root)
    assert p.returncode == 0, p.stderr[-3000:]
    assert f"4 seed(s) still running (ptray tune PID {pid} owns the folder)" in p.stdout
    report = (root / "report" / "report.md").read_text()
    assert "## Seeds still running" in report and f"running: ptray tune (PID {pid})" in report
    runs = _runs(uri, "exp")
    for o in (A, B):
        assert runs[config_id(o), 0].info.status == "FINISHED"
        for s in (1, 2):
            assert runs[config_id(o), s].info.status == "RUNNING"  # was: FAILED, "no result.json"
            assert "ptray.failure_reason" not in runs[config_id(o), s].data.tags
        assert runs[config_id(o), None].info.status == "RUNNING"  # was: FINISHED while its seeds ran
        # The parent's numbers are over the finished seed only: a running seed is not a failed one.
        assert runs[config_id(o), None].data.metrics["n_failed"] == 0
        assert runs[config_id(o), None].data.metrics["n_seeds"] == 1


def test_a_seed_that_failed_and_then_succeeded_keeps_no_failure_reason(tmp_path):
    from ptray.analysis.report import log_experiment
    from ptray.tracking.store import resolve_tracking_uri

    root = _experiment(tmp_path / "exp")
    for o in (A, B):
        for s in SEEDS:
            _file(root, o, s, **({"status": "failed", "traceback": "RuntimeError: worker lost"}
                                 if (o, s) == (A, 1) else {}))
    uri = resolve_tracking_uri(root)
    log_experiment(root, uri)
    before = _runs(uri, "exp")[config_id(A), 1]
    assert before.info.status == "FAILED" and "diverged" in before.data.tags["ptray.failure_reason"]
    assert "ptray.traceback" in before.data.tags
    _file(root, A, 1)  # a resume trained it again, and it finished
    log_experiment(root, uri)
    after = _runs(uri, "exp")[config_id(A), 1]
    assert after.info.run_id == before.info.run_id and after.info.status == "FINISHED"
    assert "ptray.failure_reason" not in after.data.tags and "ptray.traceback" not in after.data.tags


# --- credentials and tampered files -----------------------------------------------------------------------------------
def test_redact_hides_the_user_info_of_every_uri_in_json_text():
    data = {"tracking": {"uri": "http://alice:s3cr@t@mlflow.example:5000/"},
            "tune": {"storage_path": "s3://AKIAXXXX:wJalrXUtnFEMI@bucket/ray"},
            "text": ["failed to reach https://bob:hunter2@host/api (refused)", "sqlite:////tmp/x.db", 3, None]}
    out = redact(json.dumps(data))
    assert json.loads(out) == {"tracking": {"uri": "http://***@mlflow.example:5000/"},
                               "tune": {"storage_path": "s3://***@bucket/ray"},
                               "text": ["failed to reach https://***@host/api (refused)", "sqlite:////tmp/x.db", 3,
                                        None]}
    for secret in ("s3cr", "wJalr", "AKIA", "hunter2", "alice", "bob"):
        assert secret not in out


def test_credentials_never_reach_the_folder_or_mlflow(tmp_path):
    """A config whose tracking.uri and storage path hold credentials: experiment.json, result.json, the MLflow params,
    tags and artifacts, and the logged config text keep none."""
    from mlflow import MlflowClient

    from ptray.analysis.report import log_experiment
    from ptray.config import config_from_dict
    from ptray.config_view import as_text
    from ptray.tracking.store import resolve_tracking_uri

    secret = "hunter2"
    store = tmp_path / "store.db"
    config = {"method": {"name": "vanilla"}, "tracking": {"uri": f"http://alice:{secret}@mlflow.example:5000"},
              "tune": {"storage_path": f"s3://KEY:{secret}@bucket/ray"}}
    root = _experiment(tmp_path / "exp", config=config)
    for o in (A, B):
        for s in SEEDS:
            _file(root, o, s, **({"status": "failed", "traceback": f"ConnectionError: http://alice:{secret}@h/api"}
                                 if (o, s) == (A, 2) else {}), config=config)
    assert not any(secret in p.read_text() for p in root.rglob("*.json"))
    # Read back, the redacted URI leaves its credentials to MLflow's environment (MLFLOW_TRACKING_USERNAME / ...).
    assert resolve_tracking_uri(root, json.loads((root / "experiment.json").read_text())["config"]) == \
        "http://mlflow.example:5000"
    uri = f"sqlite:///{store}"
    log_experiment(root, uri)
    client = MlflowClient(uri)
    for run in _runs(uri, "exp").values():
        assert secret not in json.dumps([run.data.params, run.data.tags])
        for artifact in client.list_artifacts(run.info.run_id):
            if not artifact.is_dir and artifact.path.endswith(".json"):
                local = client.download_artifacts(run.info.run_id, artifact.path, tmp_path)
                assert secret not in Path(local).read_text()
    assert secret not in as_text(config_from_dict({"tracking": config["tracking"]}))


def test_report_with_its_tracking_server_gone_writes_the_report_and_says_so(tmp_path):
    port = free_port()
    root = _experiment(tmp_path / "exp", config={"method": {"name": "vanilla"},
                                                 "tracking": {"uri": f"http://alice:hunter2@127.0.0.1:{port}"}})
    for o in (A, B):
        for s in SEEDS:
            _file(root, o, s)
    # The user's own setting: MLflow's client retries a refused connection for minutes by default.
    p = run_ptray("report", root, MLFLOW_HTTP_REQUEST_MAX_RETRIES="0")
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr[-3000:]
    assert p.stderr.startswith(f"error: {root / 'report' / 'report.md'} is written, but logging to MLflow at "
                               f"http://127.0.0.1:{port} failed")  # read back without its credentials
    assert f"run `ptray report {root}` again once it answers" in p.stderr and "hunter2" not in p.stderr
    assert (root / "report" / "report.md").is_file()


def test_report_refuses_a_config_id_that_leads_out_of_the_folder(tmp_path):
    root = _experiment(tmp_path / "exp")
    _file(root, A, 0)
    meta = json.loads((root / "experiment.json").read_text())
    meta["configs"]["../../../outside"] = {"overrides": A, "label": "tampered"}
    (root / "experiment.json").write_text(json.dumps(meta))
    p = run_ptray("report", root, "--no-mlflow")
    assert p.returncode == 2
    assert p.stderr.startswith("error: '../../../outside' would lead out of") and "Traceback" not in p.stderr
    assert not (tmp_path / "outside").exists() and not list(tmp_path.parent.glob("outside*"))


def test_owner_is_none_for_a_lock_left_by_a_dead_process(tmp_path):
    root = _experiment(tmp_path / "exp")
    (root / ".ptray.lock").write_text("999999\n")  # a killed run's file, its lock long released by the OS
    assert owner(root) is None
    t0 = time.time()
    p = run_ptray("report", root, "--no-mlflow")
    assert p.returncode == 0 and "still running" not in p.stdout, p.stderr[-2000:]
    assert time.time() - t0 < 120


# --- pickles in the experiment folder ---------------------------------------------------------------------------------
class _Payload:
    """A pickle that creates a file when loaded: what a planted searcher-state-*.pkl can do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_resume_loads_no_pickle_without_trust(data_dir, tmp_path):
    import pickle

    from conftest import tiny_config

    root = tmp_path / "exp"
    root.mkdir()
    write_json(root / "experiment.json", {"name": "exp", "config": tiny_config(data_dir, tune={"seeds": [0]}),
                                          "seeds": [0], "configs": {}, "baseline_config_id": None})
    marker = tmp_path / "the-pickle-ran"
    state = root / "ray" / "search" / "searcher-state-2026-01-01.pkl"
    state.parent.mkdir(parents=True)
    state.write_bytes(pickle.dumps(_Payload(marker)))
    p = run_ptray("tune", "--resume", root)
    assert p.returncode == 2, p.stdout[-2000:] + p.stderr[-2000:]
    assert p.stderr.startswith(f"error: --resume {root}: {state} would be loaded") and "--trust`" in p.stderr
    assert not marker.exists()


# --- faults during a real sweep (Ray) ---------------------------------------------------------------------------------
@pytest.fixture
def mlflow_server():
    """Start an MLflow tracking server on a given port (on loopback, as cluster.yaml does); stopped at the end."""
    procs = []

    def start(port: int, folder: Path) -> str:
        import urllib.request

        folder.mkdir(parents=True, exist_ok=True)
        log = open(folder / "server.log", "w")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
             "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=folder))
        # A guard against a server that never answers, not a speed check (MLflow 3 took minutes on a loaded machine).
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            assert procs[-1].poll() is None, (folder / "server.log").read_text()[-3000:]
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).close()
                return f"http://127.0.0.1:{port}"
            except OSError:
                time.sleep(1)
        raise AssertionError("the MLflow server never answered")

    yield start
    for proc in procs:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=60)


@pytest.mark.slow
def test_a_tracking_server_that_is_gone_stops_no_seed_and_leaks_no_credential(data_dir, tmp_path, mlflow_server):
    """tracking.uri names a server (with credentials) that does not answer: every seed still trains and files its
    result.json, one warning says so, nothing ptray writes holds the password; once the server is back, `ptray report`
    logs every seed there."""
    port, secret = free_port(), "hunter2"
    config = write_config(tmp_path / "gone.yaml", data_dir, {"seeds": [0, 1, 2], "max_concurrent": 1},
                          tracking={"uri": f"http://alice:{secret}@127.0.0.1:{port}"})
    out = tmp_path / "exp"
    p = run_ptray("tune", config, "--output", out)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    found = results(out)
    assert sorted(s for _, s in found) == [0, 1, 2] and all(r["status"] == "ok" for r in found.values())
    warning = f"warning: MLflow tracking at http://***@127.0.0.1:{port} failed"
    # Once for the sweep (then tracking is off: no warning per trial), once for ptray tune's closing log.
    assert p.stderr.count(warning) == 2, p.stderr[-3000:]
    assert warning in (out / "logs" / "ray.log").read_text()  # the run's log has it too
    leaks = [f for f in out.rglob("*") if f.is_file() and secret.encode() in f.read_bytes()]
    assert not leaks and secret not in p.stdout + p.stderr

    server = mlflow_server(port, tmp_path / "server")
    r = run_ptray("report", out)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    [cid] = {c for c, _ in found}
    runs = check_mlflow_structure(server, "gone", {cid: [0, 1, 2]})
    assert all(run.info.status == "FINISHED" for run in runs.values())


@pytest.mark.slow
def test_a_store_corrupted_mid_sweep_in_a_folder_with_a_quote_stops_no_seed(data_dir, tmp_path):
    """The folder's own mlflow.db is overwritten with garbage once the first seed is filed, in an output folder whose
    path holds an apostrophe: every seed still trains and files its result.json, and `ptray report` has them all in
    MLflow."""
    config = write_config(tmp_path / "corrupt.yaml", data_dir, {"seeds": [0, 1, 2], "max_concurrent": 1})
    out = tmp_path / "it's" / "exp"
    run = subprocess.Popen(ptray_cmd("tune", config, "--output", out), cwd=REPO, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 1500
    while not list(out.glob("runs/*/seed0/result.json")):
        assert run.poll() is None, run.stdout.read()[-3000:]
        assert time.time() < deadline, "seed 0 was never filed"
        time.sleep(0.5)
    db = out / "mlflow.db"
    with open(db, "r+b") as f:  # in place, under the open connections of the sweep's tracker
        f.write(b"\0garbage, as a full disk or a crash can leave it\0" * 4096)
    output = run.communicate(timeout=1500)[0]
    assert run.returncode == 0, output[-3000:]
    found = results(out)
    assert sorted(s for _, s in found) == [0, 1, 2] and all(r["status"] == "ok" for r in found.values())
    # The fault hit the store, and the sweep's own tracker got over it: it set the file aside (kept) once, logged on
    # into a new store, and never had to give up tracking.
    assert len(list(out.glob("mlflow.db.broken-*"))) == 1
    assert "could not be opened" in (out / "logs" / "ray.log").read_text()
    assert "warning: MLflow tracking" not in output

    r = run_ptray("report", out)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    [cid] = {c for c, _ in found}
    check_mlflow_structure(f"sqlite:///{db}", "corrupt", {cid: [0, 1, 2]})


@pytest.mark.slow
def test_the_ray_ptray_starts_listens_on_loopback_only():
    """Every listening socket of ptray's local Ray (the driver, GCS, raylet, agents, a worker) is on 127.0.0.1."""
    import ipaddress

    import psutil
    import ray

    from ptray.distributed.runner import connect

    assert connect(None) is True
    try:
        @ray.remote
        def pid() -> int:
            return os.getpid()

        worker = ray.get(pid.remote())
        time.sleep(2)  # the agents' servers come up after ray.init returns
        me = psutil.Process()
        procs = [me, *me.children(recursive=True)]
        assert worker in {p.pid for p in procs}
        listening = [(p.pid, p.name(), c.laddr) for p in procs for c in p.net_connections(kind="inet")
                     if c.status == psutil.CONN_LISTEN]
    finally:
        ray.shutdown()
    assert len(listening) >= 5, listening  # GCS, raylet, agents, driver, worker: the check saw Ray's servers
    exposed = [x for x in listening if not _loopback(ipaddress.ip_address(x[2].ip))]
    assert not exposed, exposed
    assert os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") is None  # the switch does not outlive the start


def _loopback(ip) -> bool:
    return ip.is_loopback or (ip.version == 6 and ip.ipv4_mapped is not None and ip.ipv4_mapped.is_loopback)


@pytest.mark.slow
def test_a_planted_checkpoint_pickle_is_refused_on_resume(data_dir, tmp_path):
    """A resume reads DeepSpeed's checkpoint files as data only: one replaced by a pickle that runs code is refused,
    where DeepSpeed's own loader (weights_only=False) would have run it."""
    import torch

    from conftest import tiny_config
    from ptray.config import config_from_dict
    from ptray.core.train import train

    cfg = config_from_dict(tiny_config(data_dir, train={"max_steps": 3, "eval_every": 3}))
    ckpt = tmp_path / "ckpt"
    train(cfg, progress=False, reporter=lambda step, metrics, save: save(ckpt))
    [states] = ckpt.rglob("mp_rank_00_model_states.pt")
    marker = tmp_path / "the-pickle-ran"
    torch.save({"module": _Payload(marker)}, states)
    result = train(cfg, progress=False, resume_dir=ckpt)
    assert result["status"] == "failed" and result["reason"].startswith("UnpicklingError: Weights only load failed")
    assert not marker.exists()
