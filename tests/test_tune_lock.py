"""One owner per experiment folder: a second `ptray tune` on a running experiment's folder, or a `--resume` of it,
is refused with the owner's PID before Ray starts; once the owner is killed (SIGKILL, no cleanup), its lock is taken
over by the next `--resume`."""
import os
import signal
import subprocess
import time

import pytest

from conftest import REPO, ptray_cmd, results, run_ptray
from tune_util import write_config


@pytest.mark.slow
def test_a_running_experiment_has_one_owner(data_dir, tmp_path):
    tune = {"seeds": [0, 1], "max_concurrent": 1}
    config = write_config(tmp_path / "lock.yaml", data_dir, tune, train={"max_steps": 6, "eval_every": 2})
    out = tmp_path / "exp"
    owner = subprocess.Popen(ptray_cmd("tune", config, "--output", out), cwd=REPO, text=True, start_new_session=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 300
        while not (out / "experiment.json").is_file():  # the owner is past its checks and running
            assert owner.poll() is None, owner.stdout.read()[-3000:]
            assert time.time() < deadline, "the first ptray tune never wrote experiment.json"
            time.sleep(0.5)
        for args in (["tune", config, "--output", out], ["tune", "--resume", out]):
            t0 = time.perf_counter()
            p = run_ptray(*args, timeout=120)
            assert p.returncode == 2, p.stdout[-2000:] + p.stderr[-2000:]
            assert f"is in use by another `ptray tune` (PID {owner.pid})" in p.stderr
            assert time.perf_counter() - t0 < 60  # refused before any model or Ray starts
        assert owner.poll() is None  # the refusals left the owner alone
    finally:
        os.killpg(owner.pid, signal.SIGKILL)  # the driver and the Ray it started, with no chance to clean up
        owner.wait()

    p = run_ptray("tune", "--resume", out, "--trust", timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert {seed for _, seed in results(out)} == {0, 1}
    assert all(r["status"] == "ok" for r in results(out).values())
