"""Seed packing under `ptray tune`: with train.seed_pack K, one trial trains K seeds of its config together through
the shared frozen backbone, and every seed is still filed, reported to Tune and logged to MLflow on its own; schedulers
that act on single seeds refuse it. The sweep also checks that its table, its report and its MLflow parents state the
same numbers."""
import json

import numpy as np
import pytest

from conftest import check_mlflow_structure, results, run_ptray, tiny_config
from ptray import stats
from ptray.config import ConfigError, config_from_dict
from ptray.distributed.search import SearchPlan
from ptray.tracking.store import resolve_tracking_uri
from tune_util import write_config


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
def test_a_packed_sweep_files_logs_and_states_every_seed(data_dir, tmp_path):
    tune = {"seeds": [0, 1, 2], "search": {"method.num_tokens": [4, 8]}}
    config = write_config(tmp_path / "pack.yaml", data_dir, tune, train={"seed_pack": 3})
    out = tmp_path / "exp"
    p = run_ptray("tune", config, "--output", out)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    found = results(out)
    configs = sorted({cid for cid, _ in found})
    assert len(configs) == 2 and {seed for _, seed in found} == {0, 1, 2}
    for (cid, seed), r in found.items():
        assert r["status"] == "ok" and r["seed"] == seed and r["seed_pack"] == [0, 1, 2] and r["steps"] == 6
        assert (out / "runs" / cid / f"seed{seed}" / "adapter.safetensors").is_file()
    assert all(found[cid, 0]["history"] != found[cid, 1]["history"] for cid in configs)  # seeds, not one filed thrice
    trials = list((out / "ray" / "search").glob("*-seed0-1-2-*"))
    assert len(trials) == 2  # one trial per config, for all its seeds
    assert "search: 2/2 trials ended" in p.stdout
    assert json.loads((out / "experiment.json").read_text())["seeds"] == [0, 1, 2]

    # Tune heard every seed of a pack as itself: each evaluation, and each seed's last report.
    for trial in trials:
        reports = [json.loads(line) for line in (trial / "result.json").read_text().splitlines()]
        assert sorted(r["seed"] for r in reports if not r.get("done_ptray")) == [0, 0, 1, 1, 2, 2]  # steps 3 and 6
        assert sorted(r["seed"] for r in reports if r.get("done_ptray")) == [0, 1, 2]

    # Each packed seed is its own MLflow child run, logged as it trained: its evaluations carry the times they were
    # reported, and the run spans the seed's own training, as a seed trained alone does.
    from mlflow import MlflowClient

    uri = resolve_tracking_uri(out)
    client = MlflowClient(uri)
    children = check_mlflow_structure(uri, "pack", {cid: [0, 1, 2] for cid in configs})
    for (cid, seed), run in children.items():
        points = client.get_metric_history(run.info.run_id, "selection/accuracy")
        assert [m.step for m in points] == [3, 6]
        t3, t6 = (m.timestamp for m in points)
        assert run.info.start_time < t3 < t6 <= run.info.end_time
        assert (run.info.end_time - run.info.start_time) / 1000 >= found[cid, seed]["timings"]["total_s"]
        loss = client.get_metric_history(run.info.run_id, "loss")
        assert sorted(m.step for m in loss) == [h["step"] for h in found[cid, seed]["history"]]

    # One set of numbers: the table `ptray tune` printed, the report and the MLflow parents, each equal to the
    # statistics of every finished seed recomputed here.
    from ptray.analysis.report import write_report

    md = write_report(out).read_text()
    numbers = json.loads((out / "report" / "stats.json").read_text())["configs"]
    parents = {r.data.tags["ptray.config_id"]: r.data.metrics
               for r in client.search_runs([client.get_experiment_by_name("pack").experiment_id],
                                           "tags.`ptray.role` = 'parent'")}
    for cid in configs:
        acc = np.array([found[cid, s]["report_metrics"]["accuracy"] for s in (0, 1, 2)])
        low = int((acc <= np.array([found[cid, s]["majority_baseline"] for s in (0, 1, 2)]) + 1e-9).sum())
        mean, std, worst, best = (f"{x:.4f}" for x in (acc.mean(), acc.std(ddof=1), acc.min(), acc.max()))
        name = numbers[cid]["label"]
        table = next(line.split() for line in p.stdout.splitlines() if line.split()[:1] == [name])
        assert table[1:] == ["3", mean, std, worst, best, "0/3", f"{low}/3"]
        row = next(line for line in md.splitlines() if line.startswith(f"| {name} | 3 | 0/3 |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[3:5] == ["3", f"{mean} ± {std}"] and cells[8:] == [worst, best, f"{low}/3"]
        logged = parents[cid]
        assert (logged["n_ok"], logged["n_failed"], logged["n_at_majority"]) == (3, 0, low)
        summary = numbers[cid]["summary"]["accuracy"]
        for key in stats.SUMMARY_STATISTICS:
            for k in (key, key + stats.NONDEGENERATE):
                np.testing.assert_allclose(logged[f"report/accuracy/{k}"], summary[k], rtol=1e-12, equal_nan=True,
                                           err_msg=k)
        assert f"{logged['report/accuracy/mean']:.4f}" == mean and f"{logged['report/accuracy/std']:.4f}" == std
        assert f"{logged['report/accuracy/min']:.4f}" == worst and f"{logged['report/accuracy/max']:.4f}" == best
