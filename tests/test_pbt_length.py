"""PBT over the prompt length (method.num_tokens): a checkpoint restored at another length keeps its kept tokens and
their optimizer moments exactly, appends fresh tokens with zero moments or drops the last ones (ptray.core.resize);
the search refuses what cannot be resized before Ray starts; a real population changes lengths, and result.json,
MLflow and the report show it."""
import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import cfg_of, results, run_ptray, write_experiment, write_result
from ptray.config import ConfigError, config_from_dict
from ptray.core import backbone as bb
from ptray.core.data import collate
from ptray.core.engine import close_engine, load_data_only
from ptray.core.model import option_loss
from ptray.core.resize import MODEL_FILE
from ptray.core.train import build_loop, build_model, prepare, resume, train
from ptray.layout import ADAPTER_FILE, RESULT_FILE

H = 384  # MiniLM's width
SMALL = {"task": {"max_seq_length": 32, "max_eval_examples": 8}}
METHODS = {
    "vanilla": {"name": "vanilla", "num_tokens": 8},
    "residual": {"name": "residual", "num_tokens": 8, "bottleneck": 16},
    "deep": {"name": "deep", "num_tokens": 8},
    "deep_projection": {"name": "deep", "num_tokens": 8, "projection": True, "projection_hidden": 16},
}


def at_length(cfg, n: int):
    return config_from_dict({**cfg.to_dict(), "method": {**cfg.to_dict()["method"], "num_tokens": n}})


@pytest.fixture(scope="module")
def checkpoints(data_dir, tmp_path_factory):
    """Per method: its config (8 tokens, 2 steps) and the DeepSpeed checkpoint of its run at step 2."""
    out = {}
    for name, method in METHODS.items():
        cfg = cfg_of(data_dir, method=method, train={"max_steps": 2, "eval_every": 2}, **SMALL)
        ckpt = tmp_path_factory.mktemp(name)
        r = train(cfg, reporter=lambda step, metrics, save: save(ckpt), progress=False)
        assert r["status"] == "ok", r.get("reason")
        out[name] = (cfg, ckpt)
    return out


def saved_state(ckpt):
    tag = (ckpt / "latest").read_text().strip()
    return load_data_only(str(ckpt / tag / MODEL_FILE))


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("new", [12, 5])
def test_resize_keeps_kept_tokens_and_their_moments_exactly(checkpoints, name, new):
    cfg, ckpt = checkpoints[name]
    saved = saved_state(ckpt)
    target = at_length(cfg, new)
    p = prepare(target)
    loop = build_loop([target], p)
    try:
        assert resume(loop.engine, ckpt, loop, donor="donor-id") == 2
        model = loop.seeds[0].model
        [row_name] = model.method.token_rows()
        param = getattr(model.method, row_name)
        key = f"seeds.0.method.{row_name}"
        old_moments = saved["optimizer"]["state"][list(saved["module"]).index(key)]
        moments = loop.engine.optimizer.state[param]
        keep = min(8, new)
        assert param.shape[0] == new
        assert torch.equal(param.detach()[:keep], saved["module"][key][:keep])
        for k in ("exp_avg", "exp_avg_sq"):
            assert moments[k].shape == param.shape
            assert torch.equal(moments[k][:keep], old_moments[k][:keep])
            assert not moments[k][keep:].any()  # the grown rows start with no moments
            assert old_moments[k][:keep].any()  # (the kept ones had some: 2 steps were taken)
        if new > 8:
            # The grown rows are the method's own init at the new length: what a fresh model of it starts with.
            fresh = build_model(target, bb.load_backbone(target.model), p.task)
            assert torch.equal(param.detach()[8:], getattr(fresh.method, row_name).detach()[8:])
        # Everything that is not a prompt row comes from the checkpoint as it is (the head; residual's shared MLP,
        # the projection's MLP).
        others = {k: v for k, v in model.named_parameters() if v.requires_grad and k != f"method.{row_name}"}
        assert others and all(torch.equal(v.detach(), saved["module"][f"seeds.0.{k}"]) for k, v in others.items())
        assert loop.seeds[0].resizes == [{"step": 2, "old": 8, "new": new, "donor": "donor-id"}]
        assert loop.seeds[0].best["state"] is None  # the best at 8 tokens cannot be this model's
    finally:
        close_engine(loop.engine)


@pytest.mark.parametrize("name", ["vanilla", "residual", "deep"])
def test_a_resized_model_scores_as_a_fresh_one_and_trains_on(checkpoints, name, tmp_path):
    cfg, ckpt = checkpoints[name]
    target = config_from_dict({**at_length(cfg, 12).to_dict(), "train": {**cfg.to_dict()["train"], "max_steps": 3,
                                                                          "eval_every": 1}})
    p = prepare(target)
    loop = build_loop([target], p)
    try:
        resume(loop.engine, ckpt, loop)
        resized = loop.seeds[0].model
        # A model built at the new length and given the resized values computes the same loss on a batch.
        fresh = build_model(target, bb.load_backbone(target.model), p.task)
        fresh.label_token_ids = resized.label_token_ids
        fresh.load_trainable_state(resized.trainable_state())
        batch = collate(loop.data["train"][:8], loop.pad_id)
        resized.eval()
        fresh.eval()
        with torch.no_grad():
            assert torch.equal(option_loss(resized(batch), batch["labels"]), option_loss(fresh(batch), batch["labels"]))
    finally:
        close_engine(loop.engine)

    # The whole recipe resumes the 8-token checkpoint at 12 tokens and trains step 3.
    r = train(target, output_dir=tmp_path, resume_dir=ckpt, progress=False, donor="donor-id")
    assert r["status"] == "ok", r.get("reason")
    assert [h["step"] for h in r["history"]] == [1, 2, 3]
    assert r["resizes"] == [{"step": 2, "old": 8, "new": 12, "donor": "donor-id"}]
    assert r["best_step"] == 3 and r["selection_metrics"] is not None  # chosen among evaluations at 12 tokens
    saved = json.loads((tmp_path / RESULT_FILE).read_text())
    assert saved["resizes"] == r["resizes"] and saved["config"]["method"]["num_tokens"] == 12


def test_a_resize_at_the_last_step_is_scored_as_it_is(checkpoints, tmp_path):
    # A PBT exploit of the last evaluation restarts a member at its last step: nothing is left to train, and the best
    # state it inherited has the donor's length. Its result is the resized model, scored on the selection split.
    cfg, ckpt = checkpoints["vanilla"]
    r = train(at_length(cfg, 12), output_dir=tmp_path, resume_dir=ckpt, progress=False)
    assert r["status"] == "ok", r.get("reason")
    assert r["resizes"] == [{"step": 2, "old": 8, "new": 12, "donor": None}]
    assert r["best_step"] == 2 and r["selection_metrics"] is not None and r["report_metrics"] is not None
    assert load_file(tmp_path / ADAPTER_FILE)["method.prompt"].shape == (12, H)


# --- the search: what PBT explores, and what is refused before Ray starts ---------------------------------------------
def plan_of(data_dir, search, scheduler="pbt", tune=None, **sections):
    """The search plan of the tiny config (MiniLM: 512 positions) with a population of 2."""
    from conftest import tiny_config
    from ptray.distributed.search import SearchPlan

    tune = {"num_samples": 2, "search": search, "scheduler": scheduler, **(tune or {})}
    return SearchPlan(config_from_dict(tiny_config(data_dir, tune=tune, **sections)), "accuracy", 512)


def test_pbt_explores_a_randint_length_as_an_int_within_its_bounds(data_dir):
    import random

    from ray.tune.schedulers.pbt import _explore

    scheduler = plan_of(data_dir, {"method.num_tokens": {"randint": [4, 32]},
                                   "train.lr": {"loguniform": [0.01, 0.3]}}).scheduler()
    random.seed(0)
    seen = set()
    for start in (4, 5, 16, 31, 32):
        for _ in range(40):
            new, _ = _explore({"method.num_tokens": start, "train.lr": 0.1}, scheduler._hyperparam_mutations, 0.25,
                              scheduler._perturbation_factors, scheduler._custom_explore_fn)
            n = new["method.num_tokens"]
            assert type(n) is int and 4 <= n <= 32, n
            seen.add(n)
    assert {4, 32} <= seen  # without the bounds, 32 * 1.2 and 4 * 0.8 would leave the range
    # A choice stays one of the choices: PBT moves it to a neighbour in the list (or resamples it).
    scheduler = plan_of(data_dir, {"method.num_tokens": {"choice": [4, 8, 16]}}).scheduler()
    assert scheduler._hyperparam_mutations == {"method.num_tokens": [4, 8, 16]}
    for _ in range(40):
        new, _ = _explore({"method.num_tokens": 8}, scheduler._hyperparam_mutations, 0.25,
                          scheduler._perturbation_factors, scheduler._custom_explore_fn)
        assert new["method.num_tokens"] in (4, 8, 16)


@pytest.mark.parametrize("search, scheduler, sections, needles", [
    ({"method.num_tokens": {"randint": [0, 8]}}, "pbt", {}, ["the value 0 of method.num_tokens", "greater than or equal to 1"]),
    # MiniLM has 512 positions; the tiny config's inputs take 128 of them.
    ({"method.num_tokens": {"randint": [4, 400]}}, "pbt", {},
     ["the value 400 of method.num_tokens does not fit the model", "400 + task.max_seq_length 128", "bound method.num_tokens lower"]),
    ({"method.num_tokens": {"choice": [4, 385]}}, "pbt", {}, ["the value 385 of method.num_tokens does not fit"]),
    ({"method.num_tokens": {"uniform": [4, 32]}}, "pbt", {}, ["randint [low, high] or choice", "not uniform"]),
    ({"method.num_tokens": {"randint": [4, 32]}}, "pb2", {}, ["pb2 cannot evolve method.num_tokens", "scheduler pbt"]),
    ({"method.num_tokens": {"randint": [4, 32]}}, "pbt", {"method": {"name": "dynamic"}},
     ["pbt cannot evolve method.num_tokens of method dynamic", "as a list"]),
    ({"method.num_tokens": {"randint": [4, 32]}}, "pbt", {"method": {"name": "residual", "separate_mlps": True}},
     ["method residual", "method.separate_mlps=false"]),
    ({"method.num_tokens": {"randint": [4, 32]}, "method.name": ["vanilla", "dynamic"]}, "pbt", {},
     ["of method dynamic"]),
    ({"method.num_tokens": {"randint": [4, 32]}}, "pbt", {"train": {"zero_stage": 2}},
     ["train.zero_stage 2", "set train.zero_stage=0"]),
    ({"method.num_tokens": {"randint": [4, 32]}}, "pbt", {"train": {"optimizer": "adafactor"}},
     ["train.optimizer adafactor", "set train.optimizer=adamw"]),
    ({"method.num_tokens": {"randint": [4, 32]}}, "pbt", {"tune": {"resources": {"workers": 2}}},
     ["tune.resources.workers 2", "set tune.resources.workers=1"]),
])
def test_what_cannot_be_resized_is_refused_before_ray(data_dir, search, scheduler, sections, needles):
    with pytest.raises(ConfigError) as e:
        plan_of(data_dir, search, scheduler, **sections)
    for needle in needles:
        assert needle in str(e.value), str(e.value)


def test_resizable_methods_are_accepted_and_members_start_within_bounds(data_dir):
    for method in ({"name": "vanilla"}, {"name": "residual"}, {"name": "deep"}):
        plan = plan_of(data_dir, {"method.num_tokens": {"randint": [4, 32]}, "train.lr": {"loguniform": [0.01, 0.3]}},
                       method=method)
        assert all(4 <= m["method.num_tokens"] <= 32 for m in plan.population({}, 0))


# --- a real population -------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_pbt_changes_prompt_lengths_and_records_them(data_dir, tmp_path):
    from mlflow import MlflowClient

    from conftest import mlflow_runs
    from ptray.layout import config_id
    from tune_util import write_config

    # Synchronous PBT over 2 members: at step 4 the weaker takes over the stronger's checkpoint, whatever the load
    # (tests/test_tune_pbt.py), and explores its length by a factor 0.8 or 1.2 (no resampling). The members start
    # at 21 and 16 tokens (the fixed draws of search.SAMPLING_SEED); either one explored moves by 3 tokens or more
    # within [2, 24]: the target goes on at another length than its donor's checkpoint, so it is resized.
    tune = {"name": "pbtlen", "seeds": [0], "num_samples": 2,
            "search": {"method.num_tokens": {"randint": [2, 24]}, "train.lr": {"loguniform": [0.01, 0.3]}},
            "scheduler": {"name": "pbt", "perturbation_interval": 4, "quantile_fraction": 0.5,
                          "resample_probability": 0.0, "synch": True}}
    config = write_config(tmp_path / "pbt.yaml", data_dir, tune, train={"max_steps": 6, "eval_every": 2},
                          task={"max_seq_length": 64, "max_eval_examples": 16})
    out = tmp_path / "exp"
    p = run_ptray("tune", config, "--output", out, timeout=1500)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]

    members = [config_id({"pbt.member": k}) for k in (0, 1)]
    found = {cid: r for (cid, _), r in results(out).items() if cid in members}
    assert all(r["status"] == "ok" for r in found.values()), [r.get("reason") for r in found.values()]
    [exploit] = [json.loads(line) for line in (out / "ray" / "pbt-seed0" / "pbt_global.txt").read_text().splitlines()]
    donor_config, new_config = exploit[4], exploit[5]
    target, donor = new_config["config_id"], donor_config["config_id"]
    took = found[target]
    old, new = donor_config["method.num_tokens"], new_config["method.num_tokens"]
    assert type(new) is int and 2 <= new <= 24 and new != old
    # result.json: the target's resize at the boundary, from the donor's checkpoint, and its final length.
    assert took["resizes"] == [{"step": 4, "old": old, "new": new, "donor": donor}]
    assert took["config"]["method"]["num_tokens"] == new
    assert [h["step"] for h in took["history"]] == list(range(1, 7))
    assert took["best_step"] == 6  # the best is chosen among the evaluations at its new length
    adapter = load_file(out / "runs" / target / "seed0" / ADAPTER_FILE)
    assert adapter["method.prompt"].shape == (new, H)
    assert found[donor]["resizes"] == []  # the donor went on as it was
    # MLflow: every member's prompt length over time, from its start to each change.
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    _, _, children = mlflow_runs(client, client.get_experiment_by_name("pbtlen").experiment_id)
    runs = {r.data.tags["ptray.config_id"]: r for r in children}
    lengths = {cid: sorted((m.step, m.value) for m in client.get_metric_history(runs[cid].info.run_id, "prompt_length"))
               for cid in members}
    assert lengths[target] == [(0, old), (4, new)]
    assert lengths[donor] == [(0, old)]


# --- the report and MLflow, on hand-built results ---------------------------------------------------------------------
def _member(root, k: int, seed: int, final: int, resizes: list[dict], acc: float) -> None:
    from ptray.layout import config_id, label

    overrides = {"pbt.member": k}
    write_result(root, overrides, seed, {
        "seed": seed, "status": "ok", "primary_metric": "accuracy", "majority_baseline": 0.5,
        "selection_metrics": {"accuracy": acc}, "report_metrics": {"accuracy": acc}, "resizes": resizes,
        "history": [{"step": s, "loss": 1.0} for s in range(1, 7)], "steps": 6,
        "config": {"method": {"name": "vanilla", "num_tokens": final}, "train": {"seed": seed}},
        "config_id": config_id(overrides), "overrides": overrides, "label": label(overrides)})


def test_report_plots_accuracy_against_final_length_and_mlflow_logs_each_length(tmp_path):
    from mlflow import MlflowClient

    from conftest import check_png, mlflow_runs
    from ptray.analysis.report import write_report
    from ptray.layout import config_id

    root = tmp_path / "exp"
    write_experiment(root, [{"pbt.member": 0}, {"pbt.member": 1}], [0, 1], base={"method": {"name": "vanilla"}})
    grown = [{"step": 4, "old": 16, "new": 19, "donor": config_id({"pbt.member": 1})}]
    for seed in (0, 1):
        _member(root, 0, seed, 19, grown, 0.7 + 0.01 * seed)
        _member(root, 1, seed, 16, [], 0.6 + 0.01 * seed)
    md = write_report(root, log_mlflow=True, tracking_uri=f"sqlite:///{tmp_path / 'm.db'}")
    check_png(root / "report" / "metric_vs_length.png")
    assert "![metric vs prompt length](metric_vs_length.png)" in md.read_text()

    client = MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    _, _, children = mlflow_runs(client, client.get_experiment_by_name("exp").experiment_id)
    lengths = {(r.data.tags["ptray.config_id"], r.data.tags["ptray.seed"]):
               sorted((m.step, m.value) for m in client.get_metric_history(r.info.run_id, "prompt_length"))
               for r in children}
    for seed in ("0", "1"):
        assert lengths[config_id({"pbt.member": 0}), seed] == [(0, 16), (4, 19)]
        assert lengths[config_id({"pbt.member": 1}), seed] == [(0, 16)]

    # One length everywhere: nothing to plot.
    same = tmp_path / "same"
    write_experiment(same, [{"pbt.member": 0}], [0], base={"method": {"name": "vanilla"}})
    _member(same, 0, 0, 16, [], 0.7)
    md = write_report(same, log_mlflow=False)
    assert not (same / "report" / "metric_vs_length.png").exists() and "metric_vs_length" not in md.read_text()


def test_the_example_experiment_is_a_valid_pbt_over_length():
    from conftest import REPO
    from ptray.config import load_config
    from ptray.distributed.search import SearchPlan

    path = REPO / "experiments" / "sentence" / "pbt_length.yaml"
    assert path.read_text().startswith("#")
    plan = SearchPlan(load_config(path), "accuracy", 512)
    assert plan.evolving and "method.num_tokens" in plan.scheduler()._hyperparam_mutations


def test_the_grid_it_is_compared_with_spends_the_same_compute():
    """studies/pbt_length compares the example with experiments/sentence/grid_length.yaml at equal member-steps: the
    same task, data sample, model, schedule and seeds, and as many grid lengths as PBT members."""
    from conftest import REPO
    from ptray.config import load_config
    from ptray.distributed.search import SearchPlan

    pbt = load_config(REPO / "experiments" / "sentence" / "pbt_length.yaml")
    grid = load_config(REPO / "experiments" / "sentence" / "grid_length.yaml")
    for section in ("task", "model"):
        assert getattr(pbt, section) == getattr(grid, section), section
    assert (pbt.train.max_steps, pbt.train.batch_size, pbt.train.eval_every, pbt.train.seed_pack) == \
           (grid.train.max_steps, grid.train.batch_size, grid.train.eval_every, grid.train.seed_pack)
    plan = SearchPlan(grid, "accuracy", 512)
    assert not plan.evolving and grid.tune.seeds == pbt.tune.seeds
    lengths = sorted(c["overrides"]["method.num_tokens"] for c in plan.search_trials() if c["seed"] == 0)
    assert len(lengths) == pbt.tune.num_samples and lengths[0] >= 4 and lengths[-1] <= 32


def test_the_fixed_lr_arm_differs_from_the_example_only_in_its_lr():
    """studies/pbt_length/pbt_fixed_lr.yaml isolates the length: the example's population and schedule, evolving the
    length alone at the grid's learning rate."""
    from conftest import REPO
    from ptray.config import load_config

    pbt = load_config(REPO / "experiments" / "sentence" / "pbt_length.yaml")
    grid = load_config(REPO / "experiments" / "sentence" / "grid_length.yaml")
    fixed = load_config(REPO / "studies" / "pbt_length" / "pbt_fixed_lr.yaml")
    for section in ("task", "model", "method"):
        assert getattr(fixed, section) == getattr(pbt, section), section
    assert fixed.train == pbt.train.model_copy(update={"lr": grid.train.lr})
    assert fixed.tune.search == {"method.num_tokens": pbt.tune.search["method.num_tokens"]}
    assert (fixed.tune.scheduler, fixed.tune.seeds, fixed.tune.num_samples) == \
           (pbt.tune.scheduler, pbt.tune.seeds, pbt.tune.num_samples)
