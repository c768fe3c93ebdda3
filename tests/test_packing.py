"""Seed packing on real weights (MiniLM) and real data (FewGLUE RTE): K seeds through one backbone pass give the
numbers of K separate runs, each seed keeps its own result, a failing seed fails alone, and bad packs are refused
before any weights load."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_config
from ptray.config import ConfigError, config_from_dict
from ptray.core import backbone as bb
from ptray.core.data import Encoder, collate
from ptray.core.model import option_loss
from ptray.core.engine import close_engine
from ptray.core.packing import PackedModel, build_pack, check_pack, train_packed
from ptray.core.train import build_model, prepare, train
from ptray.layout import ADAPTER_FILE, RESULT_FILE

SEEDS = [0, 1, 2]
# Clipping bites (gradient norms here are ~0.1-1) and two micro-batches accumulate: both must stay per seed.
TRAIN = {"max_steps": 6, "eval_every": 3, "grad_accum": 2, "batch_size": 4, "max_grad_norm": 0.05}


def cfg_for(data_dir, seed, **sections):
    d = tiny_config(data_dir, **sections)
    d["train"] = {**d["train"], **TRAIN, "seed": seed}
    return config_from_dict(d)


@pytest.fixture(scope="module")
def separate(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("separate")
    return [train(cfg_for(data_dir, s), output_dir=out / f"seed{s}", progress=False) for s in SEEDS], out


@pytest.fixture(scope="module")
def packed(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("packed")
    cfgs = [cfg_for(data_dir, s) for s in SEEDS]
    return train_packed(cfgs, [out / f"seed{s}" for s in SEEDS], progress=False), out


def losses(result):
    return [h["loss"] for h in result["history"]]


@pytest.mark.slow
def test_packed_seeds_match_separate_runs(separate, packed):
    (alone, alone_dir), (together, together_dir) = separate, packed
    assert [r["seed"] for r in together] == SEEDS
    for a, b in zip(alone, together):
        assert a["status"] == b["status"] == "ok", (a.get("reason"), b.get("reason"))
        np.testing.assert_allclose(losses(b), losses(a), rtol=1e-4, atol=1e-5)
        assert b["selection_metrics"] == a["selection_metrics"]
        assert b["report_metrics"] == a["report_metrics"]
        assert b["best_step"] == a["best_step"] and b["steps"] == a["steps"] == 6
        assert b["trainable_params"] == a["trainable_params"]
        # Each seed its own result.json and adapter, as a separate run writes them.
        saved = json.loads((together_dir / f"seed{a['seed']}" / RESULT_FILE).read_text())
        assert saved["seed"] == a["seed"] and saved["seed_pack"] == SEEDS and saved["status"] == "ok"
        ta = load_file(alone_dir / f"seed{a['seed']}" / ADAPTER_FILE)
        tb = load_file(together_dir / f"seed{a['seed']}" / ADAPTER_FILE)
        assert set(ta) == set(tb)
        for key in ta:
            # Adam turns float noise in near-zero gradients into small steps: loose per element, and the
            # losses and metrics above carry the check.
            torch.testing.assert_close(tb[key], ta[key], rtol=1e-3, atol=1e-3)
    # The seeds really differ from each other: packing did not collapse them into one.
    assert len({tuple(losses(r)) for r in together}) == len(SEEDS)


@pytest.mark.parametrize("chunk_rows", [None, 3])
@pytest.mark.parametrize("method, model, task", [("vanilla", "minilm", "rte"), ("residual", "minilm", "rte"),
                                                 ("vanilla", "gpt2", "rte"), ("vanilla", "gpt2", "copa")])
def test_packed_gradient_is_each_seeds_own(data_dir, tiny_models, method, model, task, chunk_rows):
    # The packed loss is the sum of the seeds' losses: each seed's parameters get exactly the gradient of its own run
    # (not 1/K of it, none from the other seeds' rows), through an encoder's own head or an LM's shared scorer; in
    # one backbone pass or in length-sorted chunks of rows (as on a CPU).
    name = "minilm" if model == "minilm" else str(tiny_models[model])
    cfgs = [cfg_for(data_dir, s, model={"name": name}, method={"name": method}, task={"name": task})
            for s in SEEDS[:2]]
    p = prepare(cfgs[0])
    backbone = bb.load_backbone(cfgs[0].model)
    models = [build_model(c, backbone, p.task) for c in cfgs]
    encoder = Encoder(p.task, backbone.tokenizer, backbone.family, 128)
    for m in models:
        m.label_token_ids = torch.tensor(encoder.label_token_ids)
    items = [encoder.encode(e) for e in p.train[:7]]
    own = [items[:4], items[4:]]  # different examples and lengths per seed
    pad = backbone.tokenizer.pad_token_id

    joint = collate(own[0] + own[1], pad)
    scores = PackedModel(models)(joint, [4, 3], chunk_rows)
    sum(option_loss(s, y) for s, y in zip(scores, joint["labels"].split([4, 3]))).backward()
    packed = [{k: v.grad.clone() for k, v in m.named_parameters() if v.requires_grad} for m in models]

    for m, mine, grads in zip(models, own, packed):
        m.zero_grad()
        batch = collate(mine, pad)
        option_loss(m(batch), batch["labels"]).backward()
        for k, v in m.named_parameters():
            if v.requires_grad:
                # fp32 sums in another order (another batch shape, another CPU's kernels): tolerance relative to the
                # tensor's scale; a leaked or 1/K gradient is off by far more.
                scale = v.grad.abs().max().item()
                torch.testing.assert_close(grads[k], v.grad, rtol=1e-4, atol=1e-5 * scale, msg=k)
        assert m.method.prompt.grad.abs().sum() > 0


@pytest.mark.slow
def test_a_diverging_seed_fails_alone(data_dir, separate):
    # Seed 1's prompt breaks (NaN): it fails at its first step; its rows shared the backbone pass with the others,
    # whose numbers stay those of their separate runs.
    alone, _ = separate
    cfgs = [cfg_for(data_dir, s) for s in SEEDS]
    pack = build_pack(cfgs, prepare(cfgs[0]))
    with torch.no_grad():
        pack.loops[1].model.method.prompt.fill_(float("nan"))
    try:
        pack.run()
    finally:
        close_engine(pack.engine)
    assert pack.failed == {1: "loss diverged (nan) at step 1"}
    for i in (0, 2):
        np.testing.assert_allclose([h["loss"] for h in pack.loops[i].history], losses(alone[i]), rtol=1e-4, atol=1e-5)
        assert pack.loops[i].report_metrics == alone[i]["report_metrics"]


@pytest.mark.slow
def test_a_resumed_pack_reports_as_an_unbroken_one(data_dir, packed, tmp_path):
    # Every seed's reporter hears step 3 and stops the pack there, seed 0's saving the pack's checkpoint first; a new
    # pack resumed from it finishes as the unbroken pack did, every seed's history and best state included.
    unbroken, _ = packed
    heard = []

    def reporter(i):
        def report(step, metrics, save):
            heard.append((i, step, metrics["accuracy"]))
            if i == 0:
                save(tmp_path / "checkpoint")
            return True

        return report

    cfgs = [cfg_for(data_dir, s) for s in SEEDS]
    stopped = train_packed(cfgs, [None] * 3, reporters=[reporter(i) for i in range(3)], progress=False)
    assert [(i, step) for i, step, _ in heard] == [(0, 3), (1, 3), (2, 3)]
    assert [acc for _, _, acc in heard] == [r["history"][2]["selection"]["accuracy"] for r in unbroken]
    assert all(r["steps"] == 3 for r in stopped)
    resumed = train_packed(cfgs, [None] * 3, resume_dir=tmp_path / "checkpoint", progress=False)
    for a, b in zip(unbroken, resumed):
        assert b["status"] == "ok", b.get("reason")
        np.testing.assert_allclose(losses(b), losses(a), rtol=1e-4, atol=1e-5)
        assert b["selection_metrics"] == a["selection_metrics"] and b["report_metrics"] == a["report_metrics"]
        assert b["best_step"] == a["best_step"] and b["steps"] == 6


def test_failed_seeds_are_recorded_not_dropped(data_dir, tmp_path):
    cfgs = [cfg_for(data_dir, s, train={"max_loss": 0.01}) for s in SEEDS[:2]]
    results = train_packed(cfgs, [tmp_path / "a", tmp_path / "b"], progress=False)
    for r, folder in zip(results, ("a", "b")):
        assert r["status"] == "failed" and r["reason"].startswith("loss diverged") and "at step 1" in r["reason"]
        saved = json.loads((tmp_path / folder / RESULT_FILE).read_text())
        assert saved["status"] == "failed" and saved["seed"] == r["seed"] and saved["seed_pack"] == SEEDS[:2]


def test_bad_packs_are_refused_before_loading(data_dir):
    base = tiny_config(data_dir)
    with pytest.raises(ConfigError, match="method 'deep' cannot be packed"):
        config_from_dict({**base, "method": {"name": "deep", "num_tokens": 4}, "train": {"seed_pack": 4}})
    with pytest.raises(ConfigError, match="model.dropout"):
        config_from_dict({**base, "model": {"name": "minilm", "dropout": True}, "train": {"seed_pack": 2}})
    with pytest.raises(ConfigError, match="train.zero_stage 3"):
        config_from_dict({**base, "train": {"seed_pack": 2, "zero_stage": 3}})
    a, b = cfg_for(data_dir, 0), cfg_for(data_dir, 1, train={"lr": 0.1})
    with pytest.raises(ConfigError, match="differs from seed 0 in train.lr"):
        check_pack([a, b])
    with pytest.raises(ConfigError, match=r"distinct.*\[0, 0\]"):
        check_pack([a, a])
    with pytest.raises(ConfigError, match="one of each per seed"):
        train_packed([a, cfg_for(data_dir, 1)], [None])
