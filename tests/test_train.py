"""The training core on real weights (MiniLM) and real data (FewGLUE RTE): determinism, DeepSpeed ZeRO stages for
every method and the adversarial regularizers, the other model families, results and failure handling. (That a real
run learns, for every method and regularizer: test_learning.py.)"""
import json
from collections import Counter

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import cfg_of, losses, perturbation_section, rescored_report_metrics, tiny_config
from ptray.config import config_from_dict
from ptray.core import backbone as bb
from ptray.core.train import build_model, prepare, train
from ptray.layout import ADAPTER_FILE, RESULT_FILE


def run(data_dir, tmp_path=None, **sections):
    return train(cfg_of(data_dir, **sections), output_dir=tmp_path, progress=False)


def test_result_json_and_adapter(data_dir, tmp_path):
    r = run(data_dir, tmp_path)
    saved = json.loads((tmp_path / RESULT_FILE).read_text())
    assert saved == json.loads(json.dumps(r))  # the file holds what train() returned
    assert saved["status"] == "ok" and saved["seed"] == 0
    assert saved["selection_split"] == "dev32" and saved["report_split"] == "val"
    assert [h["step"] for h in saved["history"]] == list(range(1, 7)) and saved["steps"] == 6
    assert saved["best_step"] in (3, 6)  # eval_every 3
    # The majority class of the report examples (RTE val's first 32), counted from the raw file.
    rows = [json.loads(line) for line in (data_dir / "RTE" / "val.jsonl").read_text().splitlines()[:32]]
    majority = max(Counter(row["label"] for row in rows).values()) / 32
    assert saved["majority_baseline"] == majority
    # The report metrics are the saved adapter's score on the report split, recomputed from the folder.
    assert set(saved["report_metrics"]) == {"accuracy"}
    assert saved["report_metrics"] == rescored_report_metrics(tmp_path)
    # Only trainable tensors are saved: 8 prompt vectors of width 384 and the 2-way head.
    state = load_file(tmp_path / ADAPTER_FILE)
    assert state["method.prompt"].shape == (8, 384)
    assert set(state) == {"method.prompt", "head.weight", "head.bias"}
    assert saved["trainable_params"] == 8 * 384 + 2 * 384 + 2 == r["trainable_params"]


def test_same_seed_reproduces_and_seeds_differ(data_dir):
    a = run(data_dir, train={"seed": 3})
    b = run(data_dir, train={"seed": 3})
    c = run(data_dir, train={"seed": 4})
    assert losses(a) == losses(b)
    assert a["report_metrics"] == b["report_metrics"] and a["selection_metrics"] == b["selection_metrics"]
    assert losses(a) != losses(c)


def test_result_records_the_thread_count_the_numbers_depend_on(data_dir):
    # On a CPU the thread count orders the float sums, so it is part of what makes a seed's numbers reproducible.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = run(data_dir, train={"seed": 3, "max_steps": 1})
    finally:
        torch.set_num_threads(threads)
    env = one["environment"]
    assert env["threads"] == 1 and env["torch"] == torch.__version__ and env["device"] == "cpu" and env["processor"]


# Every method (each owns other trainable modules, and deep and dynamic read the backbone's weights in their own
# forward), and the PTP regularizers whose inner passes bypass the engine (under ZeRO-3 they gather the sharded
# weights through its module hooks). Default settings otherwise, dropout and Gumbel draws included.
ZERO_CASES = {
    "vanilla": {},
    "residual": {"method": {"name": "residual", "num_tokens": 8, "bottleneck": 16}},
    "deep": {"method": {"name": "deep", "num_tokens": 8}},
    "dynamic": {"method": {"name": "dynamic", "num_tokens": 8}},
    "embedding/adversarial": {"perturbation": perturbation_section("embedding/adversarial", steps=1)},
    "text/adversarial": {"perturbation": perturbation_section("text/adversarial")},
}
ZERO_TASK = {"max_seq_length": 64, "max_eval_examples": 8}
ZERO_TRAIN = {"max_steps": 4, "eval_every": 2, "batch_size": 4}


@pytest.fixture(scope="module")
def stage0_losses(data_dir):
    """case -> the stage-0 losses, each trained once for the module."""
    cache = {}

    def get(case):
        if case not in cache:
            r = run(data_dir, task=ZERO_TASK, train={**ZERO_TRAIN, "zero_stage": 0}, **ZERO_CASES[case])
            assert r["status"] == "ok", r.get("reason")
            cache[case] = losses(r)
        return cache[case]

    return get


# Stage 2 partitions the optimizer state and gradients, which only the methods' trainable parameters shape (the
# regularizers add none); stage 3 also partitions the frozen weights every forward reads.
ZERO_RUNS = [(case, stage) for case in ZERO_CASES for stage in (2, 3) if stage == 3 or "/" not in case]


@pytest.mark.slow
@pytest.mark.parametrize("case,stage", ZERO_RUNS)
def test_zero_stages_train_like_stage_0(data_dir, stage0_losses, case, stage):
    # ZeRO partitions state and weights; it must not change the arithmetic of a one-process run.
    other = run(data_dir, task=ZERO_TASK, train={**ZERO_TRAIN, "zero_stage": stage}, **ZERO_CASES[case])
    assert other["status"] == "ok", other.get("reason")
    np.testing.assert_allclose(losses(other), stage0_losses(case), rtol=1e-3, atol=1e-3)


def test_bf16_backbone_keeps_fp32_prompt(data_dir):
    cfg = config_from_dict(tiny_config(data_dir, model={"dtype": "bf16"}))
    backbone = bb.load_backbone(cfg.model)
    model = build_model(cfg, backbone, prepare(cfg).task)
    assert {p.dtype for p in model.backbone.parameters()} == {torch.bfloat16}
    assert model.method.prompt.dtype == torch.float32
    r = run(data_dir, model={"dtype": "bf16"})
    assert r["status"] == "ok"


@pytest.mark.parametrize("family", ["t5", "gpt2", "llama"])
@pytest.mark.parametrize("task", ["rte", "copa"])
def test_other_families_through_the_same_prompt_path(data_dir, tiny_models, family, task):
    cfg = config_from_dict(tiny_config(data_dir, model={"name": str(tiny_models[family])}, task={"name": task}))
    p = prepare(cfg)
    assert p.family == {"t5": "seq2seq", "gpt2": "causal", "llama": "causal"}[family]
    backbone = bb.load_backbone(cfg.model)
    model = build_model(cfg, backbone, p.task)
    from ptray.core.data import Encoder, collate

    encoder = Encoder(p.task, backbone.tokenizer, backbone.family, 64)
    model.label_token_ids = torch.tensor(encoder.label_token_ids)
    batch = collate([encoder.encode(e) for e in p.train[:4]], backbone.tokenizer.pad_token_id)
    scores = model(batch)
    assert scores.shape == (4, 2) and torch.isfinite(scores).all()
    torch.nn.functional.cross_entropy(scores, batch["labels"]).backward()
    assert model.method.prompt.grad is not None and model.method.prompt.grad.abs().sum() > 0
    assert all(q.grad is None for q in model.backbone.parameters())
    r = train(cfg, progress=False)
    assert r["status"] == "ok", r.get("reason")


def test_diverged_loss_ends_as_failed_seed(data_dir, tmp_path):
    r = run(data_dir, tmp_path, train={"max_loss": 1e-3})
    assert r["status"] == "failed"
    assert "diverged" in r["reason"] and "step 1" in r["reason"]
    assert json.loads((tmp_path / RESULT_FILE).read_text())["status"] == "failed"


def test_early_stopping_stops_before_max_steps(data_dir):
    r = run(data_dir, train={"max_steps": 60, "eval_every": 1, "early_stopping_patience": 2, "lr": 1e-6})
    assert r["status"] == "ok"
    assert r["steps"] < 60


def test_adafactor_with_accumulation_and_cosine_schedule(data_dir):
    r = run(data_dir, train={"optimizer": "adafactor", "grad_accum": 2, "scheduler": "cosine", "max_steps": 4,
                             "eval_every": 4, "warmup_ratio": 0.25, "lr": 0.3})
    assert r["status"] == "ok", r.get("reason")
    assert r["steps"] == 4 and len(r["history"]) == 4
    lrs = [h["lr"] for h in r["history"]]
    # One warmup step to the peak, then the cosine decays it (the lr is read after each optimizer step).
    assert lrs[0] == pytest.approx(0.3) and lrs[1] < lrs[0] and lrs[-1] < lrs[1]
