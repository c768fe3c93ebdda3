"""`ptray tune --resume` repairs what it can, on a real tiny experiment whose files are then broken as a full disk or a
stray write leaves them: a truncated result.json is restored from its trial's checkpoint copy, or its seed runs again;
Tune's own state truncated falls back to planning from result.json (finished seeds never run again, missing ones
run); a result.json of another schema is a broken record in `ptray report`, not a crash."""
import json
import shutil
from pathlib import Path

import pytest

from ptray.layout import config_id
from conftest import check_mlflow_structure, run_ptray
from tune_util import write_config


def truncate_state(tuner: Path) -> None:
    """What a full disk leaves of Tune's state file, which Tune writes in place."""
    for state in tuner.glob("experiment_state-*.json"):
        state.write_text(state.read_text()[:200])


def resume(out: Path) -> str:
    """`ptray tune --resume` of a folder that is the test's own (hence --trust), which must succeed; its console."""
    p = run_ptray("tune", "--resume", out, "--trust")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p.stdout


@pytest.mark.slow
def test_resume_repairs_results_and_tune_state(data_dir, tmp_path):
    config = write_config(tmp_path / "repair.yaml", data_dir, {"seeds": [0, 1, 2], "max_concurrent": 1},
                          train={"max_steps": 2, "eval_every": 1})
    out, cid = tmp_path / "exp", config_id({})
    p = run_ptray("tune", config, "--output", out)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    files = {s: out / "runs" / cid / f"seed{s}" / "result.json" for s in (0, 1, 2)}
    intact = {s: f.read_text() for s, f in files.items()}
    search = out / "ray" / "search"

    # A truncated result.json: seed 0's checkpoint still holds its copy; seed 1's checkpoints are gone.
    for s in (0, 1):
        files[s].write_text(intact[s][: len(intact[s]) // 2])
    for ckpt in search.glob(f"{cid}-seed1-*/checkpoint_*"):
        shutil.rmtree(ckpt)
    stdout = resume(out)
    assert f"{files[0]}: unreadable" in stdout and "restored from the trial checkpoint" in stdout
    assert f"{files[1]}: unreadable" in stdout and "so seed 1 runs again" in stdout
    assert json.loads(files[0].read_text()) == json.loads(intact[0])  # as the driver first filed it
    rerun = json.loads(files[1].read_text())
    assert rerun["status"] == "ok" and rerun["trial_id"] != json.loads(intact[1])["trial_id"]
    assert len(list(files[1].parent.glob("result.json.corrupt-*"))) == 1  # the broken file is kept aside
    assert files[2].read_text() == intact[2]

    # A full disk truncates Tune's own state (written in place), and seed 2 never got its result.
    before = {s: files[s].read_text() for s in (0, 1)}
    truncate_state(search)
    files[2].unlink()
    stdout = resume(out)
    assert "search: Tune's saved state cannot be read (experiment_state-" in stdout
    assert {s: files[s].read_text() for s in (0, 1)} == before  # finished seeds did not run again
    assert json.loads(files[2].read_text())["status"] == "ok"
    assert len(list(out.glob("ray/search.unreadable-*"))) == 1

    # The same in the Tuner that re-ran seed 1, which runs it again when seed 1's result is lost. Restoring that state,
    # Tune starts over with nothing to hand out (issue 11 saw every --resume end so, exit 130, the seed never run).
    before = {s: files[s].read_text() for s in (0, 2)}
    [rerun_state] = out.glob("ray/search-rerun-*")
    truncate_state(rerun_state)
    files[1].unlink()
    stdout = resume(out)
    assert f"{rerun_state.name}: Tune's saved state cannot be read (experiment_state-" in stdout
    assert {s: files[s].read_text() for s in (0, 2)} == before
    assert json.loads(files[1].read_text())["status"] == "ok"

    # The folder moves, and a resume still has a seed to run (seed 2's result lost). Tune's saved searcher holds the
    # old paths, where the trials it creates would write: its state is set aside, and the seed is planned anew.
    before = {s: files[s].read_text() for s in (0, 1)}
    old, out = out, tmp_path / "moved" / "exp"
    out.parent.mkdir()
    old.rename(out)
    files = {s: out / f.relative_to(old) for s, f in files.items()}
    files[2].unlink()
    stdout = resume(out)
    assert f"{out} was moved here from {old} since Ray Tune saved its state" in stdout
    assert {s: files[s].read_text() for s in (0, 1)} == before
    assert json.loads(files[2].read_text())["status"] == "ok"
    assert len(list(out.glob("ray.moved-*"))) == 1 and not old.exists()  # nothing written where the folder was
    check_mlflow_structure(f"sqlite:///{out / 'mlflow.db'}", "repair", {cid: [0, 1, 2]})  # no run made twice

    # A well-formed result.json of another schema: the report names it as a broken record and goes on.
    files[0].write_text(json.dumps({"accuracy": 0.9}))
    p = run_ptray("report", out, "--no-mlflow")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    # The console and report.md cut long reasons: the file comes first (its problem: the test below).
    reason = f"broken record {files[0]}"
    assert f"base seed 0: {reason[:100]}" in p.stdout  # the console line is cut at 120 characters
    assert f"broken record {files[0]}" in (out / "report" / "report.md").read_text()


@pytest.mark.parametrize("content, problem", [
    ('{"seed": 0, "status": "ok", "report_metr', "unreadable: Unterminated string"),
    ('[{"seed": 0}]', "a JSON list, not a seed's record"),
    ('{"accuracy": 0.9}', "no 'seed' and no 'status' key, so not a seed's record"),
    ('{"seed": 3, "status": "ok"}', "records seed 3 but lies in seed0/"),
    ('{"seed": 0, "status": "ok", "report_metrics": [0.9]}', "AttributeError"),
    ('{"seed": 0, "status": "ok", "report_metrics": {"accuracy": "high"}}', "ValueError"),
])
def test_a_result_that_is_no_record_is_a_failed_seed_naming_its_file(tmp_path, content, problem):
    from ptray.tracking.results import SeedResult

    path = tmp_path / "runs" / "c1" / "seed0" / "result.json"
    path.parent.mkdir(parents=True)
    path.write_text(content)
    r = SeedResult.from_file(path, "c1")
    assert (r.seed, r.status) == (0, "failed") and r.reason.startswith(f"broken record {path}: ")
    assert problem in r.reason


def test_tune_state_is_checked_without_loading_its_pickles(tmp_path):
    import pickle

    from ptray.distributed.runner import tune_state_problem

    state = pickle.dumps({"trials": list(range(50))})
    (tmp_path / "experiment_state-1.json").write_text(json.dumps({"trial_data": []}))
    (tmp_path / "search_gen_state-1.json").write_bytes(state)  # a pickle, despite its name
    (tmp_path / "searcher-state-1.pkl").write_bytes(state)
    (tmp_path / "tuner.pkl").write_bytes(state)
    assert tune_state_problem(tmp_path) is None
    (tmp_path / "searcher-state-1.pkl").write_bytes(state[:20])
    assert tune_state_problem(tmp_path).startswith("searcher-state-1.pkl: ")
    (tmp_path / "experiment_state-1.json").write_text('{"trial_data": [')
    assert tune_state_problem(tmp_path).startswith("experiment_state-1.json: Expecting value")
    # A later session's state is what a restore reads: the older truncated file is left alone.
    (tmp_path / "searcher-state-1.pkl").write_bytes(state)
    (tmp_path / "experiment_state-2.json").write_text(json.dumps({"trial_data": []}))
    assert tune_state_problem(tmp_path) is None
