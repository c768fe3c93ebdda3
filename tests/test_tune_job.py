"""The cluster path for real, on this machine: `ray start --head` on 127.0.0.1, `ray job submit -- ptray tune ...`,
wait for SUCCEEDED, check the results, stop that cluster (only the processes this test started)."""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import REPO, results
from tune_util import write_config

BIN = Path(sys.executable).parent  # ray and ptray of this environment


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def ray_cli(*args, env, timeout=180) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ray"), *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def ray_head():
    """A Ray head on 127.0.0.1 with ports of its own, in its own process group: `ray start --block` stays in the
    foreground, so stopping it (and its group) stops this cluster and no other."""
    gcs, dashboard, client, agent, agent_grpc, metrics, env_agent = free_ports(7)
    temp = tempfile.mkdtemp(prefix="ptray-ray-", dir="/tmp")  # short: Ray's unix sockets live under it
    # Ray 2.59+ turns token authentication on for local clusters; the CLI must be told to send the token.
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "RAY_AUTH_MODE": "token"}
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(gcs),
         "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard), "--include-dashboard", "true",
         "--ray-client-server-port", str(client), "--dashboard-agent-listen-port", str(agent),
         "--dashboard-agent-grpc-port", str(agent_grpc), "--metrics-export-port", str(metrics),
         "--runtime-env-agent-port", str(env_agent), "--temp-dir", temp, "--num-cpus", "2"],
        env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.time() + 180
        while ray_cli("job", "list", "--address", url, env=env).returncode != 0:
            assert head.poll() is None, "ray start --head exited"
            assert time.time() < deadline, "the Ray head did not come up in 180 s"
            time.sleep(3)
        yield url, env
    finally:
        # ray start --block stops the processes it started, after draining the node through its GCS: a SIGTERM to the
        # whole group would stop the GCS too, and the drain would wait 30 s for it.
        head.terminate()
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(head.pid, signal.SIGKILL)  # whatever of the group is left
        except ProcessLookupError:
            pass
        head.wait()


@pytest.mark.slow
def test_ray_job_submit_runs_ptray_tune(data_dir, ray_head, tmp_path):
    url, env = ray_head
    work = tmp_path / "work"  # the uploaded working dir: just the experiment file
    work.mkdir()
    write_config(work / "job.yaml", data_dir, {"seeds": [0, 1]},
                 train={"max_steps": 4, "eval_every": 2}, task={"max_eval_examples": 16})
    out = tmp_path / "exp"
    submit = ray_cli("job", "submit", "--address", url, "--working-dir", work, "--no-wait", "--",
                     "ptray", "tune", "job.yaml", "--output", out, env=env)
    assert submit.returncode == 0, submit.stdout + submit.stderr
    job_id = next(line.split("'")[1] for line in submit.stdout.splitlines() if "submitted successfully" in line)

    deadline = time.time() + 900
    while not any(s in (status := ray_cli("job", "status", "--address", url, job_id, env=env).stdout.lower())
                  for s in ("succeeded", "failed", "stopped")):
        assert time.time() < deadline, status
        time.sleep(5)
    logs = ray_cli("job", "logs", "--address", url, job_id, env=env).stdout
    assert f"job '{job_id.lower()}' succeeded" in status, logs[-3000:]

    found = results(out)
    assert {seed for _, seed in found} == {0, 1} and len(found) == 2
    assert all(r["status"] == "ok" and r["steps"] == 4 for r in found.values())
    meta = json.loads((out / "experiment.json").read_text())
    assert meta["name"] == "job" and meta["seeds"] == [0, 1]
    assert "search: 2/2 trials ended" in logs and "base" in logs  # ended with the per-config table
