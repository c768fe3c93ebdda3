"""Seed packing under `ptray tune`: with train.seed_pack K, one trial trains K seeds of its config together through
the shared frozen backbone, and every seed is still filed on its own; schedulers that act on single seeds refuse it."""
import json

import pytest

from conftest import tiny_config
from ptray.config import ConfigError, config_from_dict
from ptray.distributed.search import SearchPlan
from ptray.tracking.store import resolve_tracking_uri
from test_tracking import check_mlflow_structure
from tune_util import results, run_ptray, write_config


def test_packs_group_seeds_and_refuse_per_seed_schedulers(data_dir):
    def plan(tune, **train):
        return SearchPlan(config_from_dict(tiny_config(data_dir, tune=tune, train={"seed_pack": 2, **train})),
                          "accuracy")

    trials = plan({"seeds": [0, 1, 2], "search": {"method.num_tokens": [4, 8]}}).search_trials()
    assert [(t["seed"], t.get("seeds")) for t in trials] == [(0, [0, 1]), (0, [0, 1]), (2, None), (2, None)]
    for tune, needle in [({"scheduler": "asha"}, "scheduler asha"),
                         ({"searcher": "optuna", "search": {"train.lr": {"uniform": [0.01, 0.1]}}}, "optuna"),
                         ({"resources": {"workers": 2}}, "workers 2")]:
        with pytest.raises(ConfigError) as e:
            plan(tune)
        assert "train.seed_pack 2" in str(e.value) and needle in str(e.value)


@pytest.mark.slow
def test_a_packed_trial_files_every_seed(data_dir, tmp_path):
    config = write_config(tmp_path / "pack.yaml", data_dir, {"seeds": [0, 1]}, train={"seed_pack": 2})
    out = tmp_path / "exp"
    p = run_ptray("tune", config, "--output", out)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    found = results(out)
    assert {seed for _, seed in found} == {0, 1}
    for (cid, seed), r in found.items():
        assert r["status"] == "ok" and r["seed"] == seed and r["seed_pack"] == [0, 1] and r["steps"] == 6
        assert (out / "runs" / cid / f"seed{seed}" / "adapter.safetensors").is_file()
    assert found[cid, 0]["history"] != found[cid, 1]["history"]  # two seeds, not one filed twice
    assert len(list((out / "ray" / "search").glob("*-seed0-1-*"))) == 1  # one trial for both
    assert "search: 1/1 trials ended" in p.stdout
    assert json.loads((out / "experiment.json").read_text())["seeds"] == [0, 1]

    # Each packed seed is its own MLflow child run, the pack's second seed with its own learning curve too.
    from mlflow import MlflowClient

    uri = resolve_tracking_uri(out)
    children = check_mlflow_structure(uri, "pack", {cid: [0, 1]})
    curves = [[m.value for m in MlflowClient(uri).get_metric_history(children[cid, s].info.run_id, "loss")]
              for s in (0, 1)]
    assert len(curves[1]) == sum("loss" in h for h in found[cid, 1]["history"]) > 0 and curves[0] != curves[1]
