"""PBT over the prompt length (method.num_tokens): a checkpoint restored at another length keeps its kept tokens and
their optimizer moments exactly, appends fresh tokens with zero moments or drops the last ones (ptray.core.resize);
the search refuses what cannot be resized before Ray starts; a real population changes lengths, and result.json,
MLflow and the report show it."""
import json

import pytest
import torch

from conftest import cfg_of, read_result, results, run_ptray, write_experiment, write_result
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
