"""Faults and hostile folders, injected for real where they can be (docs/reliability.md, "Faults and security").

Fast tests on synthetic experiment folders (result.json files written here, no training): an output folder with an
apostrophe in its path, `ptray report` while another process owns the folder, a failed seed that later succeeds,
credentials in URIs, a tampered experiment.json. The Ray-starting tests (a dead tracking server, a store corrupted
mid-sweep, Ray's listening sockets) are marked slow.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO
from ptray.layout import config_id, label, owner, redact, run_dir, write_json
from test_tracking import check_mlflow_structure

A = {"method.num_tokens": 4}
B = {"method.num_tokens": 8}
SEEDS = [0, 1, 2]


def _experiment(root: Path, seeds=SEEDS, config: dict | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    write_json(root / "experiment.json", {
        "name": root.name, "config": config or {"method": {"name": "vanilla"}}, "seeds": seeds,
        "configs": {config_id(o): {"overrides": o, "label": label(o)} for o in (A, B)}, "baseline_config_id": None})
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
    write_json(run_dir(root, config_id(overrides), seed) / "result.json", result)
    return result


def _runs(uri: str, name: str) -> dict:
    """{(config_id, seed or None for the parent): run} of an experiment in the store at `uri`."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return {(r.data.tags["ptray.config_id"], int(r.data.tags["ptray.seed"]) if "ptray.seed" in r.data.tags else None): r
            for r in runs}


def _ptray(*args, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ptray.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, **env}, timeout=600)


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

    p = _ptray("report", root)
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
                assert secret not in Path(client.download_artifacts(run.info.run_id, artifact.path, tmp_path)).read_text()
    assert secret not in as_text(config_from_dict({"tracking": config["tracking"]}))


def test_report_refuses_a_config_id_that_leads_out_of_the_folder(tmp_path):
    root = _experiment(tmp_path / "exp")
    _file(root, A, 0)
    meta = json.loads((root / "experiment.json").read_text())
    meta["configs"]["../../../outside"] = {"overrides": A, "label": "tampered"}
    (root / "experiment.json").write_text(json.dumps(meta))
    p = _ptray("report", root, "--no-mlflow")
    assert p.returncode == 2
    assert p.stderr.startswith("error: '../../../outside' would lead out of") and "Traceback" not in p.stderr
    assert not (tmp_path / "outside").exists() and not list(tmp_path.parent.glob("outside*"))


def test_owner_is_none_for_a_lock_left_by_a_dead_process(tmp_path):
    root = _experiment(tmp_path / "exp")
    (root / ".ptray.lock").write_text("999999\n")  # a killed run's file, its lock long released by the OS
    assert owner(root) is None
    t0 = time.time()
    p = _ptray("report", root, "--no-mlflow")
    assert p.returncode == 0 and "still running" not in p.stdout, p.stderr[-2000:]
    assert time.time() - t0 < 120
