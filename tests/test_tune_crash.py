"""A trial whose process dies (the OOM killer, a lost node: here a real SIGKILL) is retried per tune.max_failures, the
retry going on from the trial's last checkpoint; a seed that still fails is recorded as failed with Ray's reason,
in result.json and in MLflow, and the experiment ends normally."""
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import REPO
from ptray.distributed.ids import config_id
from ptray.tracking.store import resolve_tracking_uri
from test_tracking import check_mlflow_structure
from tune_util import ptray_cmd, results, write_config


def trial_pids() -> set[int]:
    """Processes running a Tune function trial (Ray titles them ray::ImplicitFunc...)."""
    pids = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if (proc / "cmdline").read_bytes().startswith(b"ray::ImplicitFunc"):
                    pids.add(int(proc.name))
            except OSError:  # gone meanwhile
                pass
    return pids


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.is_file() else []


@pytest.mark.slow
def test_a_killed_trial_is_retried_then_recorded_as_failed(data_dir, tmp_path):
    tune = {"seeds": [0], "max_failures": 1}
    config = write_config(tmp_path / "crash.yaml", data_dir, tune, train={"max_steps": 200, "eval_every": 2})
    out = tmp_path / "exp"
    cid = config_id({})
    log = tmp_path / "tune.log"  # a file, not a pipe: nobody reads a pipe while the loop below waits
    run = subprocess.Popen(ptray_cmd("tune", config, "--output", out), cwd=REPO, stdout=log.open("w"),
                           stderr=subprocess.STDOUT)
    # Kill the trial once its second checkpoint exists: it has reported past its first, so the driver has registered
    # that one (Tune consumes a report only after saving the previous one). Then kill the retry once it has reported.
    trial_dir = None
    killed: list[int] = []
    first_reports = 0  # Tune's reports of the first attempt
    deadline = time.time() + 600
    while len(killed) < 2:
        assert run.poll() is None, log.read_text()[-3000:]
        assert time.time() < deadline, f"killed {len(killed)} trial process(es) only"
        trial_dir = next((out / "ray" / "search").glob(f"{cid}-seed0-*"), None)
        fresh = trial_pids() - set(killed)
        if trial_dir is not None and fresh:
            reports = len(_lines(trial_dir / "result.json"))
            if (not killed and (trial_dir / "checkpoint_000001").is_dir()) or (killed and reports > first_reports):
                os.kill(min(fresh), signal.SIGKILL)
                first_reports = first_reports or reports
                killed.append(min(fresh))
        time.sleep(0.2)
    assert run.wait(timeout=300) == 0, log.read_text()[-3000:]
    output = log.read_text()

    [(key, r)] = results(out).items()
    assert key == (cid, 0) and r["status"] == "failed"
    assert r["reason"].startswith("the trial crashed (retries: 1)"), r["reason"]
    # The retry went on from a checkpoint of the first attempt: Tune's iteration count and the training step go on,
    # where a fresh start would have reported iteration 1 at step 2 again.
    reports = [json.loads(line) for line in _lines(trial_dir / "result.json")]
    iterations, steps = [r["training_iteration"] for r in reports], [r["step"] for r in reports]
    assert len(reports) > first_reports >= 1 and iterations.count(1) == 1 and steps.count(2) == 1, reports
    runs = check_mlflow_structure(resolve_tracking_uri(out), "crash", {cid: [0]})
    assert runs[cid, 0].info.status == "FAILED"
    assert "search: 1/1 trials ended" in output
