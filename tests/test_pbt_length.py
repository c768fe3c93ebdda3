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
