"""`ptray tune` end to end on a local Ray started in-process: a grid of configs on the same seeds, confirmed on fresh
seeds, every seed filed, MLflow written, the table printed; and a trial the machine can never hold is refused."""
import json

import pytest
from safetensors.torch import load_file

from conftest import rescored_report_metrics, results, run_ptray
from ptray.layout import config_id
from tune_util import write_config


@pytest.mark.slow
def test_grid_search_then_confirm_on_fresh_seeds(data_dir, tmp_path):
    tune = {"seeds": [0, 1], "search": {"method.num_tokens": [4, 8]}, "baseline": {"method.num_tokens": 8},
            "confirm": {"top_k": 1, "num_seeds": 1}, "max_concurrent": 1}
    config = write_config(tmp_path / "grid.yaml", data_dir, tune)
    out = tmp_path / "exp"
    p = run_ptray("tune", config, "--output", out)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]

    meta = json.loads((out / "experiment.json").read_text())
    ids = {config_id({"method.num_tokens": n}): n for n in (4, 8)}
    assert meta["name"] == "grid" and meta["seeds"] == [0, 1] and set(meta["configs"]) == set(ids)
    assert meta["baseline_config_id"] == config_id({"method.num_tokens": 8})
    assert meta["config"]["tune"]["search"] == {"method.num_tokens": {"grid": [4, 8]}}

    found = results(out)
    assert set(found) == {(cid, s) for cid in ids for s in (0, 1)}  # every config on every seed
    for (cid, seed), r in found.items():
        assert r["status"] == "ok", r.get("reason")
        assert r["seed"] == seed and r["config"]["train"]["seed"] == seed
        assert r["config_id"] == cid and r["overrides"] == {"method.num_tokens": ids[cid]} and r["trial_id"]
        assert r["config"]["method"]["num_tokens"] == ids[cid] and r["label"] == f"method.num_tokens={ids[cid]}"
        assert r["steps"] == 6
        # The filed metrics are the copied adapter's score on the report split, recomputed here.
        assert r["report_metrics"] == rescored_report_metrics(out / "runs" / cid / f"seed{seed}")
        prompt = load_file(str(out / "runs" / cid / f"seed{seed}" / "adapter.safetensors"))["method.prompt"]
        assert prompt.shape[0] == ids[cid]

    # Confirm: the best config of the search by mean dev32 score, and the baseline, on seed 2 (never searched).
    confirm = json.loads((out / "confirm" / "experiment.json").read_text())
    assert confirm["seeds"] == [2] and confirm["name"] == "grid-confirm"
    mean = {cid: sum(found[cid, s]["selection_metrics"]["accuracy"] for s in (0, 1)) / 2 for cid in ids}
    best = max(mean, key=mean.get)
    assert set(confirm["configs"]) == {best, meta["baseline_config_id"]}
    confirmed = results(out / "confirm")
    assert set(confirmed) == {(cid, 2) for cid in confirm["configs"]}
    assert all(r["status"] == "ok" for r in confirmed.values())

    assert (out / "mlflow.db").is_file() and (out / "ray" / "search").is_dir()
    # One trial after the other, each in the process the last one ended in (tune.reuse_actors): Tune's log of each
    # trial records the process that ran it.
    logs = list((out / "ray" / "search").glob("*/result.json"))
    pids = {json.loads(line)["pid"] for log in logs for line in log.read_text().splitlines()}
    assert len(logs) == 4 and len(pids) == 1, pids
    for label in ("method.num_tokens=4", "method.num_tokens=8"):
        assert label in p.stdout
    assert "grid-confirm" in p.stdout and "search: 4/4 trials ended" in p.stdout
    # ptray's live view, one line per config x seed; Ray's banners and status tables in DIR/logs, not here.
    for n in (4, 8):
        for seed in (0, 1):
            assert f"method.num_tokens={n}  seed {seed}  ok       step 6/6" in p.stdout
    for ray_text in ("Configuration for experiment", "View detailed results", "Trial status", "TensorBoard"):
        assert ray_text not in p.stdout and ray_text not in p.stderr
    assert "Configuration for experiment" in (out / "logs" / "ray.log").read_text()
    # Each trial's own output, the search's and the confirmation's.
    trial_logs = list((out / "logs" / "trials").glob("*.log"))
    assert len(trial_logs) == 4 + len(confirm["configs"]) and all(log.stat().st_size > 0 for log in trial_logs)


@pytest.mark.slow
def test_a_trial_the_cluster_cannot_hold_is_refused_at_start(data_dir, tmp_path):
    config = write_config(tmp_path / "gpu.yaml", data_dir, {"num_seeds": 1, "resources": {"gpus_per_worker": 1}})
    p = run_ptray("tune", config, "--output", tmp_path / "exp")
    assert p.returncode == 2
    assert "tune.resources asks for 1 worker(s) x (1.0 CPU, 1.0 GPU)" in p.stderr
    assert "0 GPU" in p.stderr and "no trial could ever start" in p.stderr
    assert not (tmp_path / "exp" / "experiment.json").exists()

    workers = write_config(tmp_path / "w.yaml", data_dir, {"num_seeds": 1, "resources": {"workers": 64}})
    p = run_ptray("tune", workers, "--output", tmp_path / "exp2")
    assert p.returncode == 2 and "64 worker(s)" in p.stderr and "Lower tune.resources.workers" in p.stderr
