"""`ptray tune --resume DIR` after a Ctrl-C: finished seeds are not run again, the interrupted one continues from its
last Tune checkpoint, the rest run; the experiment ends as an unbroken one would."""
import json
import signal
import subprocess
import time

import pytest

from conftest import REPO, ptray_cmd, results, run_ptray
from ptray.layout import config_id
from tune_util import write_config


@pytest.mark.slow
def test_resume_after_interrupt_runs_only_what_is_left(data_dir, tmp_path):
    tune = {"seeds": [0, 1, 2], "max_concurrent": 1}
    config = write_config(tmp_path / "r.yaml", data_dir, tune, train={"max_steps": 6, "eval_every": 2})
    out = tmp_path / "exp"
    cid = config_id({})
    first = out / "runs" / cid / "seed0" / "result.json"
    search = out / "ray" / "search"
    run = subprocess.Popen(ptray_cmd("tune", config, "--output", out), cwd=REPO, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    # Interrupt once seed 0 is done and seed 1 has its first checkpoint (step 2 of 6).
    deadline = time.time() + 600
    while not (first.is_file() and list(search.glob(f"{cid}-seed1-*/checkpoint_000000"))):
        assert run.poll() is None, run.stdout.read()[-3000:]
        assert time.time() < deadline, "seed 1 never checkpointed"
        time.sleep(1)
    run.send_signal(signal.SIGINT)
    output = run.communicate(timeout=300)[0]
    assert run.returncode == 130, output[-3000:]
    assert f"continue with: ptray tune --resume {out}" in output
    before = first.read_text()
    assert {s for _, s in results(out)} == {0}

    p = run_ptray("tune", "--resume", out, "--trust")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    found = results(out)
    assert set(found) == {(cid, s) for s in (0, 1, 2)}
    assert all(r["status"] == "ok" and [h["step"] for h in r["history"]] == [1, 2, 3, 4, 5, 6]
               for r in found.values())
    assert first.read_text() == before  # seed 0 was not run again
    assert len(list(search.glob(f"{cid}-seed*"))) == 3  # three trials in all
    # Seed 1 went on from its checkpoint: Tune heard its step-2 evaluation once, not again from a fresh start.
    [seed1] = search.glob(f"{cid}-seed1-*")
    steps = [json.loads(line).get("step") for line in (seed1 / "result.json").read_text().splitlines()]
    assert steps.count(2) == 1 and 6 in steps

    again = run_ptray("tune", "--resume", out, "--trust")  # nothing left: it only prints the table
    assert again.returncode == 0 and "search: 3/3 trials ended" in again.stdout
    assert {k: v["trial_id"] for k, v in results(out).items()} == {k: v["trial_id"] for k, v in found.items()}


def test_ctrl_c_is_noted_and_passed_to_tune_as_sigusr1():
    """The runner's only sure sign of a Ctrl-C (Tune marks the trials it stops TERMINATED): the first press is noted
    and handed to Tune's SIGUSR1 handler; a second press, or one before Tune listens, stops at once."""
    import os

    from ptray.distributed.runner import _ctrl_c_stops_tune

    heard, before = [], signal.getsignal(signal.SIGINT)  # an in-process Tuner of an earlier test may have left its own
    with _ctrl_c_stops_tune() as stopped:
        with pytest.raises(KeyboardInterrupt):  # Tune has not set up its handler yet
            os.kill(os.getpid(), signal.SIGINT)
        assert not stopped.is_set()
        signal.signal(signal.SIGUSR1, lambda *_: heard.append("usr1"))  # what Tune does when it starts
        os.kill(os.getpid(), signal.SIGINT)
        assert stopped.is_set() and heard == ["usr1"]
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before
    assert os.environ.get("TUNE_DISABLE_SIGINT_HANDLER") is None
