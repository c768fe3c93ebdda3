"""MLflowSeedCallback in a real Ray Tune run: trials that follow the ptray contract (their config holds config_id, seed,
overrides, label; every report carries step, loss and selection/<metric>; the last one done_ptray, status, reason and
report/<metric>; the seed's result.json lands in DIR/runs/<config_id>/seed<N>/) and the callback on the driver.

The trial function is trivial (no model): what is tested is the tracking, against the MLflow store it wrote.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from ptray.layout import config_id, label

from conftest import check_mlflow_structure, write_experiment

A = {"method.num_tokens": 4}
B = {"method.num_tokens": 8}
SEEDS = [0, 1, 2]
STEPS = [1, 2, 3]
MAJORITY = 0.5


def _trial(config, experiment_dir: str):
    from ray import tune

    cid, seed = config["config_id"], config["seed"]
    if config["overrides"] == B and seed == 2:
        raise RuntimeError("worker lost before its first report")
    diverge = config["overrides"] == A and seed == 1
    history, acc = [], 0.0
    for step in STEPS:
        loss = 1.0 / step + 0.01 * seed
        acc = 0.6 + 0.05 * step + 0.02 * seed + (0.03 if config["overrides"] == B else 0.0)
        history.append({"step": step, "loss": loss, "lr": 0.01, "selection": {"accuracy": acc}})
        tune.report({"config_id": cid, "seed": seed, "step": step, "loss": loss, "selection/accuracy": acc})
        if diverge and step == 2:
            break
    status, reason = ("failed", "loss diverged (inf) at step 3") if diverge else ("ok", None)
    report = {"accuracy": acc + 0.01} if not diverge else None
    result = {"seed": seed, "status": status, "reason": reason, "task": "rte", "method": "vanilla",
              "model": "minilm", "primary_metric": "accuracy", "majority_baseline": MAJORITY,
              "selection_split": "dev32", "report_split": "val", "selection_metrics": {"accuracy": acc},
              "report_metrics": report, "best_step": history[-1]["step"], "steps": history[-1]["step"],
              "history": history, "config": {"method": {"name": "vanilla", **{"num_tokens": config["overrides"]
                                                                             ["method.num_tokens"]}},
                                             "train": {"seed": seed}},
              "config_id": cid, "trial_id": tune.get_context().get_trial_id(), "overrides": config["overrides"],
              "label": config["label"]}
    # Written here, not by conftest's write_result: a Ray worker cannot import conftest.
    out = Path(experiment_dir) / "runs" / cid / f"seed{seed}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(result))
    tune.report({"config_id": cid, "seed": seed, "step": history[-1]["step"], "loss": history[-1]["loss"],
                 "selection/accuracy": acc, "done_ptray": True, "status": status, "reason": reason or "",
                 "report/accuracy": report["accuracy"] if report else math.nan})


def _listed(configs: list[dict]):
    """A searcher that hands out these trial configs, one each, as `ptray tune` does."""
    from ray.tune.search import Searcher

    class Listed(Searcher):
        def suggest(self, trial_id):
            return configs.pop(0) if configs else Searcher.FINISHED

        def on_trial_complete(self, trial_id, result=None, error=False):
            pass

        def set_search_properties(self, metric, mode, config, **spec):
            return True

    return Listed()


@pytest.mark.slow
def test_callback_writes_parent_and_child_runs(tmp_path):
    import ray
    from mlflow import MlflowClient
    from ray import tune

    from ptray.analysis.report import log_experiment
    from ptray.distributed.mlflow_callback import MLflowSeedCallback
    from ptray.tracking.store import resolve_tracking_uri

    exp_dir = tmp_path / "cb-exp"
    write_experiment(exp_dir, [A, B], SEEDS, {"method": {"name": "vanilla"}})
    configs = {config_id(o): {"overrides": o, "label": label(o)} for o in (A, B)}
    points = [{"config_id": cid, "seed": s, "overrides": c["overrides"], "label": c["label"], **c["overrides"]}
              for cid, c in configs.items() for s in SEEDS]
    uri = resolve_tracking_uri(exp_dir)
    callback = MLflowSeedCallback(uri, "cb-exp", exp_dir)

    # Workers cannot import a test module: ship the trial function by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(_trial, experiment_dir=str(exp_dir)), {"cpu": 0.5}),
            tune_config=tune.TuneConfig(search_alg=_listed(list(points)), num_samples=len(points)),
            run_config=tune.RunConfig(storage_path=str(exp_dir / "ray"), name="tune", callbacks=[callback],
                                      failure_config=tune.FailureConfig(max_failures=0), verbose=0),
        )
        grid = tuner.fit()
    finally:
        ray.shutdown()
    assert grid.num_errors == 1 and len(grid) == len(points)
    trial_ids = {(r.config["config_id"], r.config["seed"]): r.metrics.get("trial_id") for r in grid}

    expected = {cid: SEEDS for cid in configs}
    runs = check_mlflow_structure(uri, "cb-exp", expected)
    client = MlflowClient(uri)
    for (cid, seed), run in runs.items():
        assert run.data.tags["ptray.trial_id"] == trial_ids[(cid, seed)]
    diverged, crashed = runs[(config_id(A), 1)], runs[(config_id(B), 2)]
    assert diverged.info.status == "FAILED" and "diverged" in diverged.data.tags["ptray.failure_reason"]
    # No result.json for the crash: the reason is Ray's error, recorded by the callback and kept by the final sync.
    assert crashed.info.status == "FAILED" and "worker lost before its first report" in crashed.data.tags[
        "ptray.failure_reason"]
    ok = runs[(config_id(B), 1)]
    assert ok.info.status == "FINISHED"
    assert ok.data.metrics["report/accuracy"] == pytest.approx(0.6 + 0.15 + 0.02 + 0.03 + 0.01)
    # Each step once: logged live from the reports, not again from result.json or the final report.
    assert [m.step for m in client.get_metric_history(ok.info.run_id, "loss")] == STEPS
    assert [m.step for m in client.get_metric_history(ok.info.run_id, "selection/accuracy")] == STEPS
    assert [m.step for m in client.get_metric_history(diverged.info.run_id, "loss")] == [1, 2]
    # The parent's aggregates were updated as seeds finished, not only at the end.
    parent = client.get_run(ok.data.tags["mlflow.parentRunId"])
    assert len(client.get_metric_history(parent.info.run_id, "n_seeds")) >= 2
    assert parent.data.metrics["n_seeds"] == len(SEEDS) and parent.data.metrics["n_failed"] == 1

    # ptray tune's closing call changes nothing that the callback already wrote.
    log_experiment(exp_dir, uri)
    again = check_mlflow_structure(uri, "cb-exp", expected)
    assert {k: r.info.run_id for k, r in again.items()} == {k: r.info.run_id for k, r in runs.items()}
    assert "worker lost" in again[(config_id(B), 2)].data.tags["ptray.failure_reason"]
    assert [m.step for m in client.get_metric_history(ok.info.run_id, "loss")] == STEPS
