"""The `tune:` section without a cluster: config ids, paired configs x seeds, searchers and schedulers, bad input, and
the core's resume that PBT and retries rely on."""
import json
import time

import numpy as np
import pytest

from conftest import REPO, free_port, run_ptray, tiny_config
from ptray.config import ConfigError, config_from_dict, load_config
from ptray.distributed.search import ListSearcher, SearchPlan, selection_score
from ptray.layout import config_id, label, with_values
from ptray.tracking.store import run_name


def plan_of(data_dir, tune, **sections) -> SearchPlan:
    return SearchPlan(config_from_dict(tiny_config(data_dir, tune=tune, **sections)), "accuracy")


def test_config_id_is_stable_and_ignores_key_order():
    a = config_id({"train.lr": 0.01, "method.num_tokens": 8})
    assert a == config_id({"method.num_tokens": 8, "train.lr": 0.01})
    assert a != config_id({"train.lr": 0.01, "method.num_tokens": 9})
    # The contract (existing folders are named by it): 12 hex chars of the sha1 of the compact sorted-key JSON.
    import hashlib

    assert a == hashlib.sha1(b'{"method.num_tokens":8,"train.lr":0.01}').hexdigest()[:12]
    assert config_id({}) == hashlib.sha1(b"{}").hexdigest()[:12]


def test_a_searched_section_is_labelled_by_its_keys_not_its_repr():
    # `perturbation: [null, {space: ..., kind: ...}]` searches whole sections: the live view, the table, the report and
    # MLflow name each config by dotted keys, as `ptray config` writes them.
    section = {"perturbation": {"space": "embedding", "kind": "random"}}
    assert label(section) == "perturbation.space=embedding, perturbation.kind=random"
    assert label({"perturbation": None}) == "perturbation=None"
    assert label({"method.name": "residual", "train.lr": 0.01}) == "method.name=residual, train.lr=0.01"
    assert label({}) == "base"
    assert run_name(section) == "space=embedding, kind=random"
    assert run_name({"method": {"name": "residual", "num_tokens": 10}}) == "residual, num_tokens=10"


def test_grid_runs_every_config_on_every_seed(data_dir):
    plan = plan_of(data_dir, {"seeds": [3, 5, 7], "search": {"method.num_tokens": [4, 8], "train.lr": [0.01, 0.1]}})
    trials = plan.search_trials()
    assert len(trials) == 4 * 3
    pairs = {(t["config_id"], t["seed"]) for t in trials}
    assert len(pairs) == 12  # every (config, seed) once: comparisons between configs are paired
    for t in trials:
        assert t["config_id"] == config_id(t["overrides"])
        assert t["method.num_tokens"] == t["overrides"]["method.num_tokens"]
        cfg = config_from_dict(with_values(plan.base, {k: t[k] for k in plan.keys}))
        assert cfg.method.num_tokens == t["method.num_tokens"] and cfg.train.lr == t["train.lr"]
    # Seed by seed: the first trials already compare all configs on one seed.
    assert [t["seed"] for t in trials[:4]] == [3, 3, 3, 3]


def test_random_configs_are_reproducible_and_within_their_ranges(data_dir):
    tune = {"num_seeds": 2, "num_samples": 5, "search": {"train.lr": {"loguniform": [0.001, 0.3]},
                                                         "method.num_tokens": {"randint": [2, 6]}}}
    plan = plan_of(data_dir, tune)
    configs = plan.search_configs()
    assert configs == plan_of(data_dir, tune).search_configs()
    assert 2 <= len(configs) <= 5 and plan.tune.resolved_searcher() == "random"
    for c in configs:
        assert 0.001 <= c["train.lr"] <= 0.3 and 2 <= c["method.num_tokens"] <= 6
        assert isinstance(c["train.lr"], float) and isinstance(c["method.num_tokens"], int)


def test_list_searcher_hands_out_its_configs_then_finishes(data_dir, tmp_path):
    trials = plan_of(data_dir, {"num_seeds": 2, "search": {"method.num_tokens": [4, 8]}}).search_trials()
    s = ListSearcher(trials)
    got = [s.suggest(str(i)) for i in range(4)]
    assert got == trials and s.suggest("x") == ListSearcher.FINISHED
    s.save(str(tmp_path / "state.pkl"))
    again = ListSearcher([])
    again.restore(str(tmp_path / "state.pkl"))
    assert again.suggest("y") == ListSearcher.FINISHED


def test_optuna_suggestions_run_on_every_seed_and_learn_from_the_mean(data_dir):
    plan = plan_of(data_dir, {"seeds": [0, 1, 2], "searcher": "optuna", "num_samples": 3,
                              "search": {"train.lr": {"loguniform": [0.001, 0.3]}}})
    searcher, count = plan.model_searcher()
    assert count == 9
    trials = [searcher.suggest(f"t{i}") for i in range(count)]
    by_config: dict[str, list[int]] = {}
    for t in trials:
        by_config.setdefault(t["config_id"], []).append(t["seed"])
        assert "__trial_index__" not in t and set(t) == {"config_id", "seed", "overrides", "label", "train.lr"}
    assert all(seeds == [0, 1, 2] for seeds in by_config.values()) and len(by_config) == 3
    # Scores per seed (a failed seed reports NaN); Optuna hears the mean of each group once it is complete.
    for i, t in enumerate(trials):
        searcher.on_trial_complete(f"t{i}", {plan.metric: [0.5, 0.7, np.nan][t["seed"]]})
    study = searcher.searcher._ot_study
    assert [round(tr.value, 6) for tr in study.trials] == [0.6, 0.6, 0.6]


def test_schedulers(data_dir):
    from ray.tune.schedulers import ASHAScheduler, PopulationBasedTraining

    asha = plan_of(data_dir, {"search": {"train.lr": [0.01, 0.1]}, "scheduler": "asha"}).scheduler()
    assert isinstance(asha, ASHAScheduler) and asha._time_attr == "step" and asha._metric == "selection/accuracy"
    assert plan_of(data_dir, {"search": {"train.lr": [0.01, 0.1]}}).scheduler() is None
    pbt = plan_of(data_dir, {"num_samples": 4, "search": {"train.lr": {"loguniform": [0.001, 0.3]}},
                             "scheduler": {"name": "pbt", "perturbation_interval": 6}}).scheduler()
    assert isinstance(pbt, PopulationBasedTraining) and pbt._perturbation_interval == 6
    pb2 = plan_of(data_dir, {"num_samples": 4, "search": {"train.lr": {"uniform": [0.001, 0.3]}},
                             "scheduler": "pb2"}).scheduler()
    assert pb2._hyperparam_bounds == {"train.lr": [0.001, 0.3]}


def test_pbt_populations_share_their_start_across_seeds(data_dir):
    plan = plan_of(data_dir, {"seeds": [0, 1], "num_samples": 3, "scheduler": "pbt",
                              "search": {"method.num_tokens": [4, 8], "train.lr": {"loguniform": [0.001, 0.3]}}})
    cells = plan.grid_cells()
    assert cells == [{"method.num_tokens": 4}, {"method.num_tokens": 8}]
    p0, p1 = plan.population(cells[0], 0), plan.population(cells[0], 1)
    assert [m["train.lr"] for m in p0] == [m["train.lr"] for m in p1]  # member k starts alike on every seed
    assert [m["config_id"] for m in p0] == [m["config_id"] for m in p1]
    assert {m["seed"] for m in p0} == {0} and {m["seed"] for m in p1} == {1}
    assert len({m["config_id"] for m in p0}) == 3 and all(m["method.num_tokens"] == 4 for m in p0)


def test_pbt_keeps_a_members_identity_when_it_exploits_another():
    from ptray.distributed.pbt import SeedPBT

    class Trial:
        def __init__(self, config):
            self.config = config

    # One value to mutate to, neither member's: the exploited config must carry it.
    pbt = SeedPBT(time_attr="step", metric="m", mode="max", perturbation_interval=2,
                  hyperparam_mutations={"train.lr": [0.05]}, resample_probability=1.0)
    me = Trial({"config_id": "a", "seed": 1, "overrides": {"pbt.member": 0}, "label": "m0", "train.lr": 0.01})
    donor = Trial({"config_id": "b", "seed": 1, "overrides": {"pbt.member": 1}, "label": "m1", "train.lr": 0.1})
    config, _ = pbt._get_new_config(me, donor)
    assert {k: config[k] for k in ("config_id", "seed", "overrides", "label")} == \
        {"config_id": "a", "seed": 1, "overrides": {"pbt.member": 0}, "label": "m0"}
    assert config["train.lr"] == 0.05


def test_pbt_does_not_perturb_at_a_members_last_evaluation():
    from ray.tune.schedulers import TrialScheduler

    from ptray.distributed.pbt import SeedPBT

    class Trial:
        config = {"config_id": "a", "train.lr": 0.01}

    pbt = SeedPBT(time_attr="step", metric="m", mode="max", perturbation_interval=2,
                  hyperparam_mutations={"train.lr": [0.05]}, total_steps=lambda config: 6)
    trial = Trial()
    # At the last step (a boundary: 6 = 3 x 2) the member goes on to its end, and PBT records nothing of it (had it
    # gone on to Ray's PBT, the trial, never added, would have no state there: a KeyError).
    assert pbt.on_trial_result(None, trial, {"step": 6, "m": 0.5}) == TrialScheduler.CONTINUE
    with pytest.raises(KeyError):
        pbt.on_trial_result(None, trial, {"step": 4, "m": 0.5})


def test_ranking_uses_selection_and_counts_failures_as_zero():
    assert selection_score({"status": "ok", "selection_metrics": {"accuracy": 0.7}}, "accuracy") == 0.7
    assert selection_score({"status": "failed", "selection_metrics": {"accuracy": 0.9}}, "accuracy") == 0.0
    assert selection_score({"status": "stopped", "selection_metrics": {"accuracy": 0.6}}, "accuracy") == 0.6
    assert selection_score({"status": "failed", "selection_metrics": None}, "accuracy") == 0.0


@pytest.mark.parametrize(
    "tune, needles",
    [
        ({"searcher": "hyperband"}, ["tune.searcher", "hyperband", "'grid', 'random' or 'optuna'"]),
        ({"scheduler": "median"}, ["tune.scheduler.name", "median", "'fifo', 'asha', 'pbt' or 'pb2'"]),
        ({"search": {"train.lr": []}}, ["train.lr", "no values"]),
        ({"search": {"train.lr": {"choice": []}}}, ["train.lr", "choice has no values"]),
        ({"search": {"train.lr": {"uniform": [0.3, 0.1]}}}, ["train.lr", "low < high"]),
        ({"search": {"train.lr": {"normal": [0, 1]}}}, ["train.lr", "not a search entry", "loguniform"]),
        ({"search": {"train.seed": [0, 1]}}, ["train.seed", "tune.seeds"]),
        ({"seeds": [1, 1]}, ["seeds", "distinct"]),
        ({"searcher": "grid", "search": {"train.lr": {"uniform": [0.01, 0.1]}}}, ["searcher grid", "uniform"]),
        ({"searcher": "optuna", "search": {"train.lr": [0.01, 0.1]}}, ["optuna", "choice"]),
        ({"seeds": [0, 1], "confirm": {"seeds": [1, 2]}}, ["confirm seeds", "unseen"]),
        ({"scheduler": {"name": "asha", "perturbation_interval": 4}}, ["perturbation_interval", "asha"]),
    ],
)
def test_bad_tune_sections_name_the_key(data_dir, tune, needles):
    with pytest.raises(ConfigError) as e:
        config_from_dict(tiny_config(data_dir, tune=tune))
    for needle in needles:
        assert needle in str(e.value), str(e.value)


@pytest.mark.parametrize(
    "tune, needles",
    [
        # PBT evolves continuous knobs and the prompt length (tests/test_pbt_length.py) only; the seed is a dimension.
        ({"scheduler": "pbt", "num_samples": 2, "search": {"train.batch_size": {"randint": [4, 16]}}},
         ["pbt cannot evolve train.batch_size", "method.num_tokens is the one integer", "as a list"]),
        ({"scheduler": "pbt", "num_samples": 2, "search": {"method.num_tokens": [4, 8]}},
         ["pbt needs something to evolve"]),
        ({"scheduler": "pb2", "num_samples": 2, "search": {"train.lr": {"choice": [0.01, 0.1]}}},
         ["pb2 evolves continuous ranges only", "train.lr"]),
        ({"scheduler": "pbt", "num_samples": 4, "max_concurrent": 2, "search": {"train.lr": {"loguniform": [0.01, 0.3]}}},
         ["tune.max_concurrent 2", "population (tune.num_samples 4)", "Unset tune.max_concurrent"]),
        ({"search": {"train.learning_rate": [0.01]}}, ["train.learning_rate is not a key", "train has no"]),
        ({"search": {"method.num_tokens": [4, -1]}}, ["-1", "method.num_tokens", "invalid config"]),
        ({"search": {"method.num_tokens": [4, 8]}, "baseline": {"method.num_tokens": 5}}, ["baseline", "grid"]),
    ],
)
def test_bad_searches_fail_before_ray(data_dir, tune, needles):
    with pytest.raises(ConfigError) as e:
        plan_of(data_dir, tune)
    for needle in needles:
        assert needle in str(e.value), str(e.value)


def test_pbt_refuses_the_seed_even_as_a_range(data_dir):
    with pytest.raises(ConfigError) as e:
        config_from_dict(tiny_config(data_dir, tune={"scheduler": "pbt",
                                                     "search": {"train.seed": {"randint": [0, 9]}}}))
    assert "train.seed" in str(e.value) and "tune.seeds" in str(e.value)


def test_experiment_configs_validate_as_searches():
    # Every shipped experiment, and every study's (studies/<claim>/<task>.yaml).
    for path in sorted([*(REPO / "experiments").rglob("*.yaml"), *(REPO / "studies").glob("*/*.yaml")]):
        cfg = load_config(path)
        if cfg.tune is not None:
            plan = SearchPlan(cfg, "accuracy")
            assert plan.seeds and (plan.evolving or plan.tune.resolved_searcher() == "optuna" or plan.search_configs())
            assert path.read_text().startswith("#"), f"{path.name} needs a header: hardware and how to run it"


def test_resume_refuses_a_folder_that_is_not_an_experiment(tmp_path):
    (tmp_path / "runs").mkdir()
    p = run_ptray("tune", "--resume", tmp_path, timeout=120)
    assert p.returncode == 2
    assert "not a ptray experiment folder" in p.stderr and "experiment.json" in p.stderr


def test_unreachable_cluster_fails_within_seconds(data_dir, tmp_path):
    port = free_port()
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps(tiny_config(data_dir)))
    t0 = time.perf_counter()
    p = run_ptray("tune", config, "--output", tmp_path / "out", "--address", f"127.0.0.1:{port}", timeout=120)
    seconds = time.perf_counter() - t0
    assert p.returncode == 2, p.stderr[-2000:]
    assert f"no Ray cluster answers at 127.0.0.1:{port}" in p.stderr and "ray start --head" in p.stderr
    assert seconds < 60  # imports included; the knock itself gives up after 3 s
    assert not (tmp_path / "out").exists()


def test_core_resume_continues_exactly_and_takes_new_hyperparameters(data_dir, tmp_path):
    """What retries, `--resume` and PBT exploits rest on: `save(dir)` at an evaluation, then `train(resume_dir=dir)`
    continues where it stopped, on the schedule of the config it is given."""
    from ptray.core.train import train

    cfg = config_from_dict(tiny_config(data_dir, train={"max_steps": 6, "eval_every": 3, "lr": 0.05}))
    saved = []

    def reporter(step, metrics, save):
        if step == 3:
            save(tmp_path / "ckpt")
            saved.append(step)

    full = train(cfg, progress=False, reporter=reporter)
    assert saved == [3] and sum(f.stat().st_size for f in (tmp_path / "ckpt").rglob("*") if f.is_file()) < 10**6
    resumed = train(cfg, progress=False, resume_dir=tmp_path / "ckpt")
    # The history and the best selection state ride along: the result is the unbroken run's.
    assert [h["step"] for h in resumed["history"]] == [1, 2, 3, 4, 5, 6]
    assert [h["loss"] for h in resumed["history"]] == pytest.approx([h["loss"] for h in full["history"]])
    for key in ("best_step", "selection_metrics", "report_metrics"):
        assert resumed[key] == full[key]
    faster = config_from_dict(tiny_config(data_dir, train={"max_steps": 6, "eval_every": 3, "lr": 0.5}))
    other = train(faster, progress=False, resume_dir=tmp_path / "ckpt")
    assert other["history"][3]["lr"] == pytest.approx(10 * full["history"][3]["lr"])
    assert other["history"][2]["lr"] == full["history"][2]["lr"]  # before the checkpoint: the run it came from
