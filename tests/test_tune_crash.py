"""A trial whose process dies (the OOM killer, a lost node: here a real SIGKILL) is retried per tune.max_failures; a
seed that still fails is recorded as failed with Ray's reason, in result.json and in MLflow, and the experiment ends
normally."""
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import REPO, ptray_cmd, results
from ptray.layout import config_id
from ptray.tracking.store import resolve_tracking_uri
from test_tracking import check_mlflow_structure
from tune_util import write_config


def trial_pids(root: int) -> set[int]:
    """Processes under `root` (this test's ptray, which starts the local Ray) that run a Tune function trial: Ray
    titles them ray::ImplicitFunc..."""
    pids = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if (proc / "cmdline").read_bytes().startswith(b"ray::ImplicitFunc") and root in _ancestors(proc):
                    pids.add(int(proc.name))
            except OSError:  # gone meanwhile
                pass
    return pids


def _ancestors(proc: Path) -> list[int]:
    chain = []
    while proc.name not in ("0", "1"):
        # /proc/<pid>/stat: "pid (comm) state ppid ...", comm may hold spaces
        proc = Path("/proc") / (proc / "stat").read_text().rsplit(")", 1)[1].split()[1]
        chain.append(int(proc.name))
    return chain


@pytest.mark.slow
def test_a_killed_trial_is_retried_then_recorded_as_failed(data_dir, tmp_path):
    tune = {"seeds": [0], "max_failures": 1}
    config = write_config(tmp_path / "crash.yaml", data_dir, tune, train={"max_steps": 200, "eval_every": 2})
    out = tmp_path / "exp"
    cid = config_id({})
    log = tmp_path / "tune.log"  # a file, not a pipe: nobody reads a pipe while the loop below waits
    run = subprocess.Popen(ptray_cmd("tune", config, "--output", out), cwd=REPO, stdout=log.open("w"),
                           stderr=subprocess.STDOUT)
    # Kill the trial once it has checkpointed, then the retry Tune starts for it.
    killed: list[int] = []
    deadline = time.time() + 600
    while len(killed) < 2:
        assert run.poll() is None, log.read_text()[-3000:]
        assert time.time() < deadline, f"killed {len(killed)} trial process(es) only"
        fresh = trial_pids(run.pid) - set(killed)
        if fresh and (killed or any((out / "ray" / "search").glob(f"{cid}-seed0-*/checkpoint_000000"))):
            os.kill(min(fresh), signal.SIGKILL)
            killed.append(min(fresh))
        time.sleep(0.2)
    assert run.wait(timeout=300) == 0, log.read_text()[-3000:]
    output = log.read_text()

    [(key, r)] = results(out).items()
    assert key == (cid, 0) and r["status"] == "failed"
    assert r["reason"].startswith("the trial crashed (retries: 1)"), r["reason"]
    runs = check_mlflow_structure(resolve_tracking_uri(out), "crash", {cid: [0]})
    assert runs[cid, 0].info.status == "FAILED"
    assert "search: 1/1 trials ended" in output
