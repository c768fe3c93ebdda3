"""PBT with one population per seed: an exploit really happens (a member restarts from another member's Tune
checkpoint, with explored hyperparameters), and no seed is ever copied: every member keeps its own seed."""
import json
import os
import re

import pytest

from conftest import mlflow_runs, results, run_ptray
from ptray.layout import config_id
from tune_util import write_config


@pytest.mark.slow
def test_pbt_exploits_within_each_seeds_population(data_dir, tmp_path):
    # Synchronous PBT: both members wait at steps 4 and 8, then the weaker one takes over the stronger one's state.
    # What is asserted holds whatever the load: every member finishes (none is filed stopped or failed, however late
    # its saves answer: tests/test_pbt_exploit_race.py), and the exploits are the ones synchronous PBT always makes.
    tune = {"seeds": [0, 1], "num_samples": 2, "search": {"train.lr": {"loguniform": [0.0001, 0.5]}},
            "scheduler": {"name": "pbt", "perturbation_interval": 4, "quantile_fraction": 0.5, "synch": True}}
    config = write_config(tmp_path / "pbt.yaml", data_dir, tune, train={"max_steps": 10, "eval_every": 2})
    out = tmp_path / "exp"
    p = run_ptray("tune", config, "--output", out, timeout=1500)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]

    members = {config_id({"pbt.member": k}): k for k in (0, 1)}
    best = config_id({"pbt.member": "best"})
    found = results(out)
    assert set(found) == {(cid, s) for cid in [*members, best] for s in (0, 1)}
    for (cid, seed), r in found.items():
        assert r["status"] == "ok", r.get("reason")
        assert r["seed"] == seed and r["config"]["train"]["seed"] == seed  # a seed is never copied
        assert [h["step"] for h in r["history"]] == list(range(1, 11))

    for seed in (0, 1):
        # Tune's PBT log, one line per exploit: [target, donor, target iteration, donor iteration, donor's config,
        # target's new config]; trials are named after their config_id. Its iterations are the trials' last results
        # when the driver logged them, which depend on which member reached the boundary last: not asserted on.
        log = out / "ray" / f"pbt-seed{seed}" / "pbt_global.txt"
        exploits = [json.loads(line) for line in log.read_text().splitlines()]
        # Synchronous PBT perturbs once every member has reached the boundary (steps 4 and 8; the next, 12, is past
        # the end), and with 2 scored members and quantile 0.5 one is the lower quantile and one the upper at each
        # (ray/tune/schedulers/pbt.py: on_trial_result's synch branch, _quantiles): the weaker takes over the
        # stronger's state at both boundaries, whichever member gets there first and however late.
        assert len(exploits) == 2, f"population of seed {seed}: exploits {exploits}"
        for boundary, (target, donor, _, _, donor_config, new) in zip((4, 8), exploits):
            assert target != donor and donor_config["seed"] == new["seed"] == seed
            assert new["config_id"] != donor_config["config_id"]  # a member keeps its slot, takes only the state
            # The target went on from the donor's checkpoint at the boundary: its run up to there is the donor's
            # (after the last exploit both share steps 1-8, so this holds for the first exploit too).
            target, donor = (re.search(r"config_id=([0-9a-f]{12})", name).group(1) for name in (target, donor))
            took, gave = found[target, seed], found[donor, seed]
            assert [h["loss"] for h in took["history"][:boundary]] == [h["loss"] for h in gave["history"][:boundary]]
        # After the last exploit the target trains on with the explored learning rate, the donor with its own: the
        # schedule (the same shape, scaled by each one's lr) is not the donor's, whose checkpoint the target resumed.
        took_lr, gave_lr = took["config"]["train"]["lr"], gave["config"]["train"]["lr"]
        assert took_lr == new["train.lr"] != gave_lr
        assert [h["lr"] * gave_lr for h in took["history"][8:]] == pytest.approx(
            [h["lr"] * took_lr for h in gave["history"][8:]])
        assert any(h["lr"] > 0 for h in gave["history"][8:])
        # The population's result on this seed: its best member by the selection split.
        chosen = found[best, seed]
        assert chosen["best_of"] in members and chosen["label"] == "pbt.member=best"
        assert chosen["selection_metrics"]["accuracy"] == max(found[c, seed]["selection_metrics"]["accuracy"]
                                                              for c in members)
    assert "pbt.member=best" in p.stdout


@pytest.mark.slow
def test_a_population_larger_than_the_machine_perturbs_in_lockstep(data_dir, tmp_path):
    # 4 members, room for 2 at once (half the machine's CPUs each). Every member must be a trial from the start and
    # wait at each boundary (steps 2 and 4) until all four have reached it; capped at 2 trials, the first two trained
    # to the end and perturbed among themselves before the other two existed. The evaluation at the last step (6)
    # is no perturbation: a member exploited there would end on the donor's state without a step of its own.
    cpus = (os.cpu_count() or 2) / 2
    tune = {"seeds": [0], "num_samples": 4, "resources": {"workers": 1, "cpus_per_worker": cpus},
            "search": {"method.num_tokens": {"randint": [2, 24]}, "train.lr": {"loguniform": [0.01, 0.3]}},
            "scheduler": {"name": "pbt", "perturbation_interval": 2, "quantile_fraction": 0.25,
                          "resample_probability": 0.0, "synch": True}}
    config = write_config(tmp_path / "pbt.yaml", data_dir, tune, train={"max_steps": 6, "eval_every": 2},
                          task={"max_seq_length": 64, "max_eval_examples": 16})
    out = tmp_path / "exp"
    p = run_ptray("tune", config, "--output", out, timeout=1500)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]

    members = [config_id({"pbt.member": k}) for k in range(4)]
    found = {cid: r for (cid, _), r in results(out).items() if cid in members}
    assert set(found) == set(members) and all(r["status"] == "ok" for r in found.values())
    # When the driver first saw each member's evaluation of each step: the MLflow store's metric timestamps. Tune's
    # per-trial result.json is no such record: a member restarted from a checkpoint (a pause, an exploit) copies the
    # folder's last synced result.json over the driver's (ray/tune/logger/logger.py: _restore_from_remote), losing the
    # rows written since (once a member's step 4, once its step 6).
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    _, _, children = mlflow_runs(client, client.get_experiment_by_name("pbt").experiment_id)
    first: dict[str, dict[int, int]] = {}
    for run in children:
        if run.data.tags["ptray.config_id"] in members:
            seen = first.setdefault(run.data.tags["ptray.config_id"], {})
            for m in client.get_metric_history(run.info.run_id, "selection/accuracy"):
                seen[m.step] = min(seen.get(m.step, m.timestamp), m.timestamp)
    assert set(first) == set(members)
    assert all(sorted(f) == [2, 4, 6] for f in first.values()), first
    for boundary in (2, 4):
        reached = max(f[boundary] for f in first.values())
        later = [t for f in first.values() for step, t in f.items() if step > boundary]
        assert reached <= min(later), f"a member went past step {boundary} before every member had reached it: {first}"
    # One exploit per boundary (quantile 0.25 of 4: one member takes over one other's state), none at the end.
    exploits = (out / "ray" / "pbt-seed0" / "pbt_global.txt").read_text().splitlines()
    assert len(exploits) == 2, exploits
    assert all(r["step"] in (2, 4) for f in found.values() for r in f["resizes"])
    assert all([h["step"] for h in r["history"]] == list(range(1, 7)) for r in found.values())
