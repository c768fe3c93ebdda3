"""Deep prompts (prefix tuning / P-tuning v2): per-layer key/value prefixes on real MiniLM weights and on tiny
random-init GPT-2, Llama (grouped-query attention) and T5; masks that cover the prefix, gradients that reach it and
nothing frozen, and what a trained run saves. (That a real run learns: test_learning.py.)"""
import pytest
import torch
from safetensors.torch import load_file

from conftest import cfg_of, tiny_config
from ptray.config import ConfigError, config_from_dict
from ptray.core import backbone as bb
from ptray.core.data import Encoder, collate
from ptray.core.train import build_model, prepare, train
from ptray.layout import ADAPTER_FILE


def setup(data_dir, model="minilm", task="rte", **method):
    cfg = config_from_dict(tiny_config(data_dir, model={"name": str(model)}, task={"name": task, "max_seq_length": 64},
                                       method={"name": "deep", "num_tokens": 3, **method}))
    p = prepare(cfg)
    backbone = bb.load_backbone(cfg.model)
    torch.manual_seed(0)
    model = build_model(cfg, backbone, p.task)
    encoder = Encoder(p.task, backbone.tokenizer, backbone.family, 64)
    model.label_token_ids = torch.tensor(encoder.label_token_ids, dtype=torch.long)
    items = [encoder.encode(e) for e in p.train[:4]]
    return model, items, backbone.tokenizer.pad_token_id


def prefix_grad_per_layer(model) -> torch.Tensor:
    """|grad| summed per (layer, key/value) of the flat prefix [L, layers * 2 * kv_heads * head_dim]."""
    m = model.method
    g = m.prefix.grad.view(m.config.num_tokens, m.num_layers, 2, -1)
    return g.abs().sum((0, 3))


def test_defaults_follow_p_tuning_v2_and_prefix_counts_as_positions(data_dir):
    m = config_from_dict({"method": {"name": "deep"}}).method
    assert (m.num_tokens, m.projection, m.projection_hidden, m.dropout) == (20, False, 512, 0.1)
    # HF backbones give the input positions L.. after an L-slot prefix: it takes room in the position table.
    assert m.added_positions() == 20
    cfg = config_from_dict(tiny_config(data_dir, method={"name": "deep", "num_tokens": 20},
                                       task={"max_seq_length": 500}))
    with pytest.raises(ConfigError, match="lower task.max_seq_length to 492"):
        prepare(cfg)


def test_prompt_perturbation_is_refused_for_deep_prompts():
    with pytest.raises(ConfigError, match=r"perturbation\.prompt=false"):
        config_from_dict({"method": {"name": "deep"},
                          "perturbation": {"space": "embedding", "kind": "random", "prompt": True}})
    # Perturbing the input text or embeddings composes with deep prompts: the section is kept as given.
    for pert in ({"space": "text", "kind": "random"}, {"space": "embedding", "kind": "random"}):
        kept = config_from_dict({"method": {"name": "deep"}, "perturbation": pert}).to_dict()["perturbation"]
        assert {k: kept[k] for k in pert} == pert


def test_encoder_prefix_shapes_and_mask(data_dir):
    model, items, pad = setup(data_dir)
    batch = collate(items, pad)
    embeds = torch.randn(4, batch["input_ids"].shape[1], 384)
    p = model.method(embeds, batch["attention_mask"], batch)
    assert p.inputs_embeds is embeds  # no input positions are added
    assert torch.equal(p.attention_mask, torch.cat([torch.ones(4, 3, dtype=torch.long), batch["attention_mask"]], 1))
    assert torch.equal(p.token_positions, torch.arange(embeds.shape[1]).expand(4, -1))
    assert len(p.past_key_values) == 6  # MiniLM's layers
    assert all(k.shape == v.shape == (4, 12, 3, 32) for k, v in p.past_key_values)


def test_dropout_draws_a_mask_per_row_in_training_only(data_dir):
    model, items, pad = setup(data_dir, dropout=0.5)
    batch = collate(items, pad)
    embeds = torch.zeros(4, batch["input_ids"].shape[1], 384)
    model.train()
    k = model.method(embeds, batch["attention_mask"], batch).past_key_values[0][0]
    assert not torch.equal(k[0], k[1])
    model.eval()
    k = model.method(embeds, batch["attention_mask"], batch).past_key_values[0][0]
    assert torch.equal(k[0], k[1]) and torch.equal(k[0], model.method.prefixes()[0, 0])


def check_family(model, items, pad):
    """Every layer attends to its prefix (keys and values get gradients), the frozen backbone gets none, and a row
    scores the same alone as padded in a batch (the mask covers prefix + input and nothing else)."""
    batch = collate(items, pad)
    model.train()
    scores = model(batch)
    assert scores.shape[0] == 4 and torch.isfinite(scores).all()
    torch.nn.functional.cross_entropy(scores, batch["labels"]).backward()
    assert (prefix_grad_per_layer(model) > 0).all()
    assert all(q.grad is None for q in model.backbone.parameters())
    model.eval()
    with torch.no_grad():
        together = model(batch)
        for i, item in enumerate(items):
            torch.testing.assert_close(model(collate([item], pad))[0], together[i], atol=1e-5, rtol=1e-5)


def test_encoder_family(data_dir):
    check_family(*setup(data_dir))


@pytest.mark.parametrize("family", ["gpt2", "llama", "t5"])
@pytest.mark.parametrize("task", ["rte", "copa"])
def test_other_families(data_dir, tiny_models, family, task):
    model, items, pad = setup(data_dir, tiny_models[family], task)
    m = model.method
    # Llama's grouped-query attention: prefixes have its 2 kv heads, not its 4 query heads.
    assert (m.num_layers, m.kv_heads, m.head_dim) == {"gpt2": (2, 4, 8), "llama": (2, 2, 8), "t5": (2, 4, 8)}[family]
    check_family(model, items, pad)
    if family == "t5":  # the encoder hooks are gone after each forward
        assert not any(b.layer[0].SelfAttention._forward_pre_hooks for b in model.backbone.encoder.block)


def test_prefix_projection(data_dir):
    model, items, pad = setup(data_dir, projection=True, projection_hidden=16)
    m = model.method
    width = 6 * 2 * 384
    own = {k: v.numel() for k, v in m.named_parameters()}
    assert own == {"embedding": 3 * 384, "mlp.0.weight": 384 * 16, "mlp.0.bias": 16, "mlp.2.weight": 16 * width,
                   "mlp.2.bias": width}
    batch = collate(items, pad)
    torch.nn.functional.cross_entropy(model(batch), batch["labels"]).backward()
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in m.parameters())


def test_unsupported_encoder_decoder_is_a_config_error(data_dir, tmp_path):
    from conftest import _save_tiny
    from transformers import BartConfig

    folder = _save_tiny(tmp_path / "bart", BartConfig(vocab_size=30522, d_model=16, encoder_layers=1, decoder_layers=1,
                                                       encoder_attention_heads=2, decoder_attention_heads=2,
                                                       encoder_ffn_dim=32, decoder_ffn_dim=32, pad_token_id=0,
                                                       eos_token_id=102, decoder_start_token_id=0))
    with pytest.raises(ConfigError, match="model type 'bart' is not supported"):
        setup(data_dir, folder)


def test_a_run_saves_the_flat_prefix_and_the_head(data_dir, tmp_path):
    cfg = cfg_of(data_dir, method={"name": "deep", "num_tokens": 20},
                 task={"max_seq_length": 64, "max_eval_examples": 8}, train={"max_steps": 2, "eval_every": 2})
    result = train(cfg, output_dir=tmp_path, progress=False)
    assert result["status"] == "ok", result.get("reason")
    assert result["trainable_params"] == 20 * 6 * 2 * 384 + (2 * 384 + 2)
    adapter = load_file(tmp_path / ADAPTER_FILE)
    assert adapter["method.prefix"].shape == (20, 6 * 2 * 384)
    assert set(adapter) == {"method.prefix", "head.weight", "head.bias"}
