"""A trial of 2 workers: a Ray Train TorchTrainer whose gloo workers run the core's `train` inside DeepSpeed ZeRO-3,
end to end on this CPU machine, checkpoints of both ranks included."""
import pytest
import torch

from conftest import rescored_report_metrics, results, run_ptray
from tune_util import write_config


@pytest.mark.slow
def test_two_worker_trial_trains_with_zero3_and_checkpoints(data_dir, tmp_path):
    # 2 x 0.99 CPU + 0.01 for the trial's own function: fits 2 cores.
    tune = {"num_seeds": 1, "resources": {"workers": 2, "cpus_per_worker": 0.99}}
    config = write_config(tmp_path / "w2.yaml", data_dir, tune, train={"zero_stage": 3})
    out = tmp_path / "exp"
    p = run_ptray("tune", config, "--output", out)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]

    [(cid, seed)] = results(out)
    r = results(out)[cid, seed]
    assert r["status"] == "ok", r.get("reason")
    assert r["config"]["train"]["zero_stage"] == 3 and r["steps"] == 6
    assert [h["step"] for h in r["history"]] == list(range(1, 7))
    # The filed metrics are the adapter (gathered from the ZeRO-3 shards) scored on the report split in one process.
    assert r["report_metrics"] == rescored_report_metrics(out / "runs" / cid / f"seed{seed}")

    # Every evaluation's Tune checkpoint holds the ZeRO-3 shard of each rank and the loop's step.
    [trial_dir] = (out / "ray" / "search").glob(f"{cid}-seed{seed}-*")
    checkpoints = sorted(trial_dir.glob("checkpoint_*"))
    evals = [c for c in checkpoints if not (c / f"seed{seed}" / "result.json").exists()]
    assert len(evals) >= 1 and (checkpoints[-1] / f"seed{seed}" / "result.json").is_file()
    last = evals[-1]
    shards = {f.name for f in last.rglob("*optim_states.pt")}
    assert any("zero_pp_rank_0" in s for s in shards) and any("zero_pp_rank_1" in s for s in shards), shards
    [states] = last.rglob("zero_pp_rank_0_*model_states.pt")
    client = torch.load(states, map_location="cpu", weights_only=False)
    [seed_state] = client["loop"]["seeds"]  # the trial's one seed: a pack of one
    assert client["step"] == 6 and [h["step"] for h in seed_state["history"]] == list(range(1, 7))
