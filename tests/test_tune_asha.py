"""A model-based search (Optuna) with ASHA early stopping: every suggestion runs on every seed, and a seed that ASHA
stops is recorded as stopped, with the reason and the selection score it had, never dropped."""
import json

import pytest

from conftest import results, run_ptray
from ptray.layout import config_id
from tune_util import write_config


@pytest.mark.slow
def test_optuna_with_asha_records_every_seed(data_dir, tmp_path):
    # max_t 4: ASHA's last rung is step 4 (of 6), so every trial that is not stopped earlier is stopped there.
    tune = {"seeds": [0, 1], "searcher": "optuna", "num_samples": 2,
            "search": {"train.lr": {"loguniform": [0.001, 0.3]}},
            "scheduler": {"name": "asha", "grace_period": 2, "reduction_factor": 2, "max_t": 4}}
    config = write_config(tmp_path / "asha.yaml", data_dir, tune, train={"max_steps": 6, "eval_every": 2})
    out = tmp_path / "exp"
    p = run_ptray("tune", config, "--output", out)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]

    meta = json.loads((out / "experiment.json").read_text())
    assert len(meta["configs"]) == 2  # Optuna's suggestions, registered as they came
    found = results(out)
    assert set(found) == {(cid, s) for cid in meta["configs"] for s in (0, 1)}  # paired: every suggestion, every seed
    for (cid, seed), r in found.items():
        lr = meta["configs"][cid]["overrides"]["train.lr"]
        assert cid == config_id({"train.lr": lr}) and 0.001 <= lr <= 0.3
        assert r["status"] == "stopped" and "stopped early by the asha scheduler" in r["reason"]
        # Filed from the last report Tune heard from the trial: its step and selection score.
        [trial_dir] = (out / "ray" / "search").glob(f"{cid}-seed{seed}-*")
        last = json.loads((trial_dir / "result.json").read_text().splitlines()[-1])
        assert r["steps"] == last["step"] in (2, 4)
        assert r["selection_metrics"] == {"accuracy": last["selection/accuracy"]}
        assert r["seed"] == seed and r["config"]["train"]["lr"] == lr and r["trial_id"]
    assert all(info["label"] in p.stdout for info in meta["configs"].values())  # the table lists every config
