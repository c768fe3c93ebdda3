"""Dynamic prompting: one-hot choices with gradients, placement and masks, per-example consistency in mixed
batches, temperature annealing, the causal family, and the anneal clock a real run checkpoints. (That a real run
learns: test_learning.py.)"""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import tiny_config
from ptray.config import ConfigError, config_from_dict
from ptray.core import backbone as bb
from ptray.core.data import Encoder, collate
from ptray.core.methods.base import BackboneInfo
from ptray.core.methods.dynamic.config import DynamicConfig
from ptray.core.methods.dynamic.model import DynamicPrompt, place, shorten
from ptray.core.train import build_model, prepare, train

MODES = ["position", "length", "representation", "task_position", "position+representation"]


def _cfg(data_dir, model="minilm", task="rte", **method):
    return config_from_dict(tiny_config(data_dir, task={"name": task}, model={"name": str(model)},
                                        method={"name": "dynamic", **method}))


class Setup:
    """A backbone, a task's examples and a way to build dynamic-prompt models on them."""

    def __init__(self, data_dir, model="minilm", task="rte"):
        self.data_dir, self.model_name, self.task_name = data_dir, model, task
        cfg = _cfg(data_dir, model, task)
        self.prepared = prepare(cfg)
        self.backbone = bb.load_backbone(cfg.model)
        self.encoder = Encoder(self.prepared.task, self.backbone.tokenizer, self.backbone.family, 64)

    def model(self, **method):
        cfg = _cfg(self.data_dir, self.model_name, self.task_name, **method)
        model = build_model(cfg, self.backbone, self.prepared.task)
        model.label_token_ids = torch.tensor(self.encoder.label_token_ids, dtype=torch.long)
        return model

    def batch(self, examples):
        return collate([self.encoder.encode(e) for e in examples], self.backbone.tokenizer.pad_token_id)


@pytest.fixture(scope="module")
def minilm(data_dir):
    return Setup(data_dir)


@pytest.fixture(scope="module")
def gpt2_copa(data_dir, tiny_models):
    return Setup(data_dir, tiny_models["gpt2"], "copa")


def _method(**config) -> DynamicPrompt:
    """A task-level method on a toy embedding: needs no backbone, for the pure selection tests."""
    info = BackboneInfo(16, 1, 1, "encoder", nn.Embedding(50, 16), None)
    cfg = DynamicConfig(mode="task_position", num_tokens=6, init="random", **config)
    return DynamicPrompt(cfg, info, torch.Generator().manual_seed(0))


def test_bad_settings_name_the_key(data_dir):
    with pytest.raises(ConfigError, match=r"method.tau_min.*tau0"):
        _cfg(data_dir, tau0=0.5, tau_min=1.0)
    with pytest.raises(ConfigError, match=r"method.mode.*position"):
        _cfg(data_dir, mode="everywhere")


def test_training_choices_are_one_hot_with_soft_gradients():
    torch.manual_seed(0)
    method = _method()
    logits = torch.randn(64, 7, requires_grad=True)
    weights = method.train().choose(logits)
    assert set(weights.detach().unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(weights.detach().sum(-1), torch.ones(64))
    # Gumbel noise: sampled choices are not always the argmax, and each choice's gradient reaches every logit.
    assert (weights.argmax(-1) != logits.argmax(-1)).any()
    (weights * torch.randn(64, 7)).sum().backward()
    assert (logits.grad != 0).all()
    # Evaluation is deterministic: the argmax, no noise.
    assert torch.equal(method.eval().choose(logits.detach()), F.one_hot(logits.argmax(-1), 7).float())
    soft = _method(hard=False).train().choose(logits.detach())
    assert torch.allclose(soft.sum(-1), torch.ones(64)) and ((soft > 0) & (soft < 1)).all()


def test_temperature_anneals_from_tau0_to_the_floor():
    method = _method(tau0=2.0, tau_min=0.5, anneal_rate=0.01)
    taus = []
    for step in range(0, 400, 10):
        method.on_step(step)
        taus.append(method.temperature())
    assert taus[0] == 2.0
    assert taus[5] == pytest.approx(2.0 * math.exp(-0.01 * 50))
    assert all(a >= b for a, b in zip(taus, taus[1:]))
    floor_step = math.log(2.0 / 0.5) / 0.01  # 138.6
    assert taus[13] > 0.5 and taus[14:] == [0.5] * (len(taus) - 14)
    assert 130 < floor_step < 140
    # The clock is module state: it travels with state_dict (and so with DeepSpeed checkpoints).
    restored = _method(tau0=2.0, tau_min=0.5, anneal_rate=0.01)
    method.on_step(70)
    restored.load_state_dict(method.state_dict())
    assert restored.temperature() == method.temperature() == pytest.approx(2.0 * math.exp(-0.7))


def _expected_row(prompt, x, j, anchor):
    return torch.cat([prompt[j:], x[:anchor], prompt[:j], x[anchor:]])


def test_placement_puts_every_token_where_mask_and_positions_say():
    torch.manual_seed(0)
    L, T, H = 5, 9, 4
    lengths, tails, splits = torch.tensor([9, 3, 6, 1]), torch.tensor([0, 0, 2, 0]), torch.tensor([0, 5, 2, 3])
    x = torch.randn(4, T, H)
    mask = (torch.arange(T)[None] < lengths[:, None]).long()
    prompt = torch.randn(4, L, H)
    out = place(prompt, F.one_hot(splits, L + 1).float(), x, mask, tails)
    for r in range(4):
        n, j, a = lengths[r].item(), splits[r].item(), (lengths[r] - tails[r]).item()
        assert torch.equal(out.inputs_embeds[r], _expected_row(prompt[r], x[r], j, a))
        assert torch.equal(out.attention_mask[r], (torch.arange(T + L) < L + n).long())
        # token_positions point at the input's own vectors, padding included (it stays at the right).
        assert torch.equal(out.inputs_embeds[r, out.token_positions[r]], x[r])
        # The attended slots that are not input tokens hold the prompt: prompt[j:] first, prompt[:j] after.
        slots = sorted(set(range(L + n)) - set(out.token_positions[r, :n].tolist()))
        assert torch.equal(out.inputs_embeds[r, slots], torch.cat([prompt[r, j:], prompt[r, :j]]))


def test_placement_gradient_scores_every_split_point():
    torch.manual_seed(1)
    L, T, H = 3, 5, 2
    x, prompt = torch.randn(2, T, H), torch.randn(2, L, H)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    weights = torch.softmax(torch.randn(2, L + 1), -1).requires_grad_()
    out = place(prompt, weights, x, mask)
    upstream = torch.randn_like(out.inputs_embeds)
    (out.inputs_embeds * upstream).sum().backward()
    for r, n in enumerate((5, 2)):
        rows = [_expected_row(prompt[r], x[r], j, n) for j in range(L + 1)]
        mixed = sum(weights[r, j].detach() * rows[j] for j in range(L + 1))
        assert torch.allclose(out.inputs_embeds[r], mixed, atol=1e-6)
        # d/dw_j = <upstream, placement j>: the straight-through estimate sees every alternative.
        expected = torch.stack([(upstream[r] * rows[j]).sum() for j in range(L + 1)])
        assert torch.allclose(weights.grad[r], expected, atol=1e-5)


def test_length_masks_unused_slots_instead_of_filling_them():
    torch.manual_seed(2)
    L, T, H = 4, 3, 2
    x, prompt = torch.randn(3, T, H), torch.randn(3, L, H)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0]])
    chosen = torch.tensor([0, 2, 4])
    out = shorten(prompt, F.one_hot(chosen, L + 1).float(), x, mask)
    for r, j in enumerate(chosen.tolist()):
        assert torch.equal(out.attention_mask[r, :L], (torch.arange(L) < j).long())
        assert torch.equal(out.attention_mask[r, L:], mask[r])
        assert torch.equal(out.inputs_embeds[r, :j], prompt[r, :j])
        assert torch.equal(out.inputs_embeds[r, j:L], torch.zeros(L - j, H))  # masked slots: zeros, not huge values
        assert torch.equal(out.inputs_embeds[r, out.token_positions[r]], x[r])


def test_length_zero_is_the_unprompted_model(data_dir, tiny_models):
    """Masked slots are invisible: with no prompt token chosen, a RoPE model scores as if there were no prompt."""
    s = Setup(data_dir, tiny_models["llama"], "rte")
    model = s.model(mode="length", num_tokens=4).eval()
    with torch.no_grad():
        model.method.length_selector[0].bias[0] = 1e4  # every example picks length 0
        batch = s.batch(s.prepared.train[:4])
        scores = model(batch)
        lm = s.backbone.model
        hidden = lm.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        last = batch["attention_mask"].sum(1) - 1
        plain = lm.get_output_embeddings()(hidden[torch.arange(4), last])[:, model.label_token_ids]
    assert torch.allclose(scores, plain, atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_gradients_reach_the_selector(minilm, mode):
    model = minilm.model(mode=mode).train()
    batch = minilm.batch(minilm.prepared.train[:6])
    F.cross_entropy(model(batch), batch["labels"]).backward()
    grads = {n: p.grad for n, p in model.method.named_parameters()}
    assert any("selector" in n or n == "position_logits" for n in grads)
    for name, grad in grads.items():
        assert grad is not None and grad.abs().sum() > 0, name
    # The backbone is read, never trained or owned by the method.
    assert not any(p.requires_grad for p in minilm.backbone.model.parameters())
    assert not any(n.startswith("_backbone") for n, _ in model.method.named_parameters())


def _spread_choices(selector):
    """Scale the selector so that small differences between inputs pick different choices."""
    with torch.no_grad():
        selector[0].weight.mul_(1e3)


def _batched_vs_alone(setup, model, examples):
    with torch.no_grad():
        batch = setup.batch(examples)
        prompted = model.method(model.backbone.get_input_embeddings()(batch["input_ids"]), batch["attention_mask"], batch)
        together = model(batch)
        alone = torch.cat([model(setup.batch([e])) for e in examples])
    return prompted, together, alone


@pytest.mark.parametrize("mode", ["position", "length", "position+representation"])
def test_mixed_batch_matches_per_example_forwards(minilm, mode):
    model = minilm.model(mode=mode, num_tokens=8).eval()
    _spread_choices(model.method.length_selector if mode == "length" else model.method.position_selector)
    examples = minilm.prepared.train[:6]
    prompted, together, alone = _batched_vs_alone(minilm, model, examples)
    if mode == "length":
        choices = prompted.attention_mask[:, :8].sum(1)
    else:
        choices = 8 - prompted.token_positions[:, 0]  # the first input token sits after L - j pre-input slots
    # The batch really mixes choices and padding lengths.
    assert len(choices.unique()) >= 3, choices
    assert len(minilm.batch(examples)["attention_mask"].sum(1).unique()) > 1
    assert torch.allclose(together, alone, atol=1e-4)


def test_causal_multiple_choice_puts_the_post_prompt_before_the_targets(gpt2_copa):
    s = gpt2_copa
    model = s.model(mode="position", num_tokens=4).eval()
    _spread_choices(model.method.position_selector)
    examples = s.prepared.train[:6]
    prompted, together, alone = _batched_vs_alone(s, model, examples)
    batch = s.batch(examples)
    L = 4
    assert len((L - prompted.token_positions[:, 0]).unique()) >= 2
    assert torch.allclose(together, alone, atol=1e-4)
    # Targets keep their places after the whole prompt: each is predicted from the token right before it, the first
    # one from the end of the post-input prompt part (or of the source when j = 0).
    r, t = batch["target_mask"].nonzero(as_tuple=True)
    assert torch.equal(prompted.token_positions[r, t], L + t)


def test_causal_training_step_reaches_every_parameter(gpt2_copa):
    s = gpt2_copa
    for mode in ("position", "length", "position+representation"):
        model = s.model(mode=mode, num_tokens=4).train()
        batch = s.batch(s.prepared.train[:4])
        loss = F.cross_entropy(model(batch), batch["labels"])
        loss.backward()
        assert torch.isfinite(loss)
        for name, p in model.method.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, (mode, name)


@pytest.mark.slow
def test_a_real_run_checkpoints_the_anneal_clock(data_dir, tmp_path):
    cfg = config_from_dict(tiny_config(
        data_dir,
        task={"max_train_examples": 16, "max_eval_examples": 16, "max_seq_length": 96},
        method={"name": "dynamic", "mode": "position", "num_tokens": 8, "anneal_rate": 0.05},
        train={"max_steps": 10, "batch_size": 8, "eval_every": 5, "lr": 0.05, "warmup_ratio": 0.0},
    ))
    saved = {}

    def reporter(step, metrics, save):
        save(tmp_path / "ckpt")
        saved[step] = tmp_path / "ckpt" / f"step{step}"

    result = train(cfg, output_dir=tmp_path / "run", reporter=reporter, progress=False)
    assert result["status"] == "ok", result.get("reason")
    L, H = 8, 384
    assert result["trainable_params"] == L * H + (H + 1) * (L + 1) + (H + 1) * 2  # prompt, selector, head
    # The loop told the method each step, and the clock is in the DeepSpeed checkpoint a resume restores.
    for step, folder in saved.items():
        module = torch.load(folder / "mp_rank_00_model_states.pt", weights_only=False)["module"]
        assert module["seeds.0.method.anneal_step"].item() == step  # a single seed is the pack of one
    assert set(saved) == {5, 10}
    written = json.loads((tmp_path / "run" / "result.json").read_text())
    assert written["config"]["method"]["mode"] == "position"
