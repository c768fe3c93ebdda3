"""Residual Prompt Tuning on real MiniLM weights and FewGLUE RTE: the reparameterisation's formula and options,
per-token MLPs as real (trained, checkpointed, restored) modules, and folding: the saved adapter is a plain prompt
that a vanilla prompt scores exactly like the residual model. (That a real run learns: test_learning.py.)"""
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from conftest import cfg_of, tiny_config
from ptray.config import ConfigError, config_from_dict
from ptray.core import backbone as bb
from ptray.core.data import Encoder, batches
from ptray.core.engine import build_engine, close_engine
from ptray.core.loop import RandomStream
from ptray.core.packing import PackedModel
from ptray.core.train import build_model, prepare, train
from ptray.layout import ADAPTER_FILE

H = 384  # MiniLM's hidden size


@pytest.fixture(scope="module")
def minilm(data_dir):
    cfg = config_from_dict(tiny_config(data_dir))
    return bb.load_backbone(cfg.model), prepare(cfg)


def make(data_dir, minilm, seed=0, **method):
    cfg = config_from_dict(tiny_config(data_dir, method={"name": "residual", "num_tokens": 4, "bottleneck": 16, **method},
                                       train={"seed": seed}))
    torch.manual_seed(seed)  # the MLP and head start from torch's global generator, as train() seeds it
    return build_model(cfg, minilm[0], minilm[1].task), cfg


def test_defaults_follow_the_reference_code():
    m = config_from_dict({"method": {"name": "residual"}}).method
    assert (m.num_tokens, m.bottleneck, m.activation, m.layer_norm, m.residual, m.dropout, m.separate_mlps) == (
        10, 800, "relu", True, True, 0.0, False)
    with pytest.raises(ConfigError, match=r"method\.activation"):
        config_from_dict({"method": {"name": "residual", "activation": "gelu"}})


@pytest.mark.parametrize("layer_norm,residual,activation", [(True, True, "relu"), (False, True, "tanh"),
                                                             (True, False, "sigmoid")])
def test_projection_is_the_papers_formula(data_dir, minilm, layer_norm, residual, activation):
    model, _ = make(data_dir, minilm, layer_norm=layer_norm, residual=residual, activation=activation)
    method = model.method
    net = method.mlps[0].net
    P = method.prompt.detach()
    lin1, lin2 = net[0], net[2]
    act = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}[activation]
    expected = lin2(act(lin1(P)))
    if layer_norm:
        expected = nn.functional.layer_norm(expected, (H,), net[3].weight, net[3].bias, net[3].eps)
    if residual:
        expected = expected + P
    torch.testing.assert_close(method.projected(), expected)
    assert isinstance(net[-1], nn.LayerNorm) == layer_norm

    # The projected prompt goes in front of the input, which keeps its tokens (shifted by L) and mask.
    embeds, mask = torch.randn(3, 7, H), torch.tensor([[1] * 7, [1] * 5 + [0] * 2, [1] * 3 + [0] * 4])
    p = method(embeds, mask, {})
    assert p.inputs_embeds.shape == (3, 11, H) and p.past_key_values is None
    torch.testing.assert_close(p.inputs_embeds[:, :4], expected.expand(3, -1, -1))
    assert torch.equal(p.inputs_embeds[:, 4:], embeds)
    assert torch.equal(p.attention_mask, torch.cat([torch.ones(3, 4, dtype=mask.dtype), mask], 1))
    assert torch.equal(p.token_positions, torch.arange(4, 11).expand(3, -1))


def test_dropout_acts_in_training_only_and_the_export_has_none(data_dir, minilm):
    model, _ = make(data_dir, minilm, dropout=0.5)
    method = model.method
    method.train()
    assert not torch.equal(method.projected(), method.projected())
    folded = method.export_state()["prompt"]
    assert method.training  # exporting does not leave the method in eval mode
    method.eval()
    assert torch.equal(method.projected(), folded)


def test_separate_mlps_are_registered_one_per_token(data_dir, minilm):
    model, _ = make(data_dir, minilm, separate_mlps=True)
    method = model.method
    assert len(method.mlps) == 4
    per_mlp = (H * 16 + 16) + (16 * H + H) + 2 * H
    trainable = {k: v for k, v in model.named_parameters() if v.requires_grad}
    assert "method.mlps.3.net.0.weight" in trainable
    assert sum(v.numel() for v in trainable.values()) == 4 * H + 4 * per_mlp + (2 * H + 2)
    before = method.projected().detach()
    with torch.no_grad():
        method.mlps[2].net[0].bias.add_(1.0)  # token 2's own MLP: only token 2 moves
    moved = (method.projected().detach() - before).abs().sum(-1)
    assert moved[2] > 0 and moved[[0, 1, 3]].eq(0).all()


def test_snapshot_restores_mlps_exactly(data_dir, minilm):
    # The loop's best-step snapshot holds every trainable tensor (MLPs included), unlike the folded adapter.
    a, _ = make(data_dir, minilm, seed=0, separate_mlps=True)
    b, _ = make(data_dir, minilm, seed=1, separate_mlps=True)
    snapshot = a.trainable_state()
    assert "method.mlps.3.net.2.weight" in snapshot
    assert set(a.adapter_state()) == {"method.prompt", "head.weight", "head.bias"}
    assert not torch.equal(a.method.projected(), b.method.projected())
    b.load_trainable_state(snapshot)
    assert torch.equal(a.method.projected(), b.method.projected())


def scores_on(model, cfg, prepared, backbone, role="report"):
    encoder = Encoder(prepared.task, backbone.tokenizer, backbone.family, cfg.task.max_seq_length)
    items = [encoder.encode(e) for e in getattr(prepared, role)]
    model.eval()
    with torch.inference_mode():
        return torch.cat([model(b) for _, b in batches(items, 16, backbone.tokenizer.pad_token_id)])


@pytest.mark.slow
def test_a_trained_run_folds_exactly(data_dir, minilm, tmp_path):
    backbone, _ = minilm
    method = {"name": "residual", "num_tokens": 8, "separate_mlps": True}
    # 6 steps move the prompt and every MLP off their init (checked below: the restored prompt differs from seed 1's).
    cfg = cfg_of(data_dir, method=method, task={"max_seq_length": 64},
                 train={"max_steps": 6, "eval_every": 6, "lr": 0.03})
    checkpoint = tmp_path / "ckpt"
    result = train(cfg, output_dir=tmp_path, progress=False,
                   reporter=lambda step, metrics, save: save(checkpoint))
    assert result["status"] == "ok", result.get("reason")
    per_mlp = (H * 800 + 800) + (800 * H + H) + 2 * H
    assert result["trainable_params"] == 8 * H + 8 * per_mlp + (2 * H + 2)
    assert result["best_step"] == 6  # one evaluation: the checkpoint and the adapter hold the same step

    # The adapter is folded: a plain [8, H] prompt and the head, no MLP.
    adapter = load_file(tmp_path / ADAPTER_FILE)
    assert set(adapter) == {"method.prompt", "head.weight", "head.bias"}
    assert adapter["method.prompt"].shape == (8, H)

    # The DeepSpeed checkpoint restores all 8 per-token MLPs into a model that started elsewhere (seed 1).
    prepared = prepare(cfg)
    restored, _ = make(data_dir, minilm, seed=1, **method, bottleneck=800)
    # Training wraps every run's seeds in a pack (a single seed is a pack of one): restore into one too.
    engine = build_engine(PackedModel([restored], [RandomStream(1, torch.device("cpu"))], joint=False, pad_id=0),
                          cfg.train, 15, torch.device("cpu"))
    assert not torch.equal(restored.method.export_state()["prompt"], adapter["method.prompt"])
    engine.load_checkpoint(str(checkpoint), load_module_strict=False)  # as train() resumes: frozen weights stay out
    close_engine(engine)
    assert torch.equal(restored.method.export_state()["prompt"], adapter["method.prompt"])

    # A vanilla prompt loaded with the folded adapter scores exactly like the residual model, and reproduces
    # the run's report metrics.
    vanilla_cfg = cfg_of(data_dir, method={"name": "vanilla", "num_tokens": 8})
    vanilla = build_model(vanilla_cfg, backbone, prepared.task)
    vanilla.load_trainable_state(adapter)
    folded_scores = scores_on(vanilla, cfg, prepared, backbone)
    assert torch.equal(folded_scores, scores_on(restored, cfg, prepared, backbone))
    metrics = prepared.task.compute_metrics(prepared.report, folded_scores.argmax(-1).tolist())
    assert metrics == result["report_metrics"]
