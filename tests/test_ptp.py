"""PTP perturbation regularizers on real MiniLM weights and real FewGLUE batches: noise statistics, the PGD epsilon
ball, adversarial losses above clean ones, protected tokens in text space, lambda = 0 exactness, composition with
every registered prompt method. (ZeRO-3 with the adversarial ones: test_train.py; that a real run with each learns:
test_learning.py.)"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import cfg_of, losses, perturbation_section
from ptray.config import ConfigError, config_from_dict, load_config
from ptray.core import backbone as bb
from ptray.core.data import Encoder, collate
from ptray.core.methods import METHODS
from ptray.core.model import option_loss
from ptray.core.perturbations import PERTURBATIONS, build_perturbation
from ptray.core.perturbations.embedding.config import EmbeddingRandomConfig
from ptray.core.perturbations.embedding.model import Noise, prompt_slots
from ptray.core.loop import loss_fn
from ptray.core.train import build_model, prepare, train

VARIANTS = {
    "embedding/random": {},
    "embedding/adversarial": {"steps": 1},
    "text/random": {},
    "text/adversarial": {},
}


class Setup:
    """MiniLM, RTE's first training examples as batches, and models built on them."""

    def __init__(self, data_dir):
        self.data_dir = data_dir
        cfg = cfg_of(data_dir)
        self.prepared = prepare(cfg)
        self.backbone = bb.load_backbone(cfg.model)
        self.tokenizer = self.backbone.tokenizer
        self.examples = self.prepared.train

    def batch(self, start=0, size=8, length=128):
        encoder = Encoder(self.prepared.task, self.tokenizer, "encoder", length)
        items = [encoder.encode(e) for e in self.examples[start : start + size]]
        return collate(items, self.tokenizer.pad_token_id)

    def model(self, method=None, seed=0):
        cfg = cfg_of(self.data_dir, method=method or {"name": "vanilla", "num_tokens": 8}, train={"seed": seed})
        torch.manual_seed(seed)  # the head's init, as train() seeds it
        return build_model(cfg, self.backbone, self.prepared.task).train()

    def perturbation(self, key, seed=0, **options):
        cfg = cfg_of(self.data_dir, perturbation=perturbation_section(key, **options), train={"seed": seed})
        return build_perturbation(cfg, self.tokenizer)


@pytest.fixture(scope="module")
def s(data_dir):
    return Setup(data_dir)


# --- config ---------------------------------------------------------------------------------------------------------
def test_config_sections_dispatch_validate_and_round_trip(data_dir):
    assert cfg_of(data_dir).perturbation is None
    for key, cls in PERTURBATIONS.items():
        cfg = cfg_of(data_dir, perturbation=perturbation_section(key, **{"lambda": 0.5}))
        assert type(cfg.perturbation) is cls and cfg.perturbation.lambda_ == 0.5
        dumped = cfg.to_dict()["perturbation"]
        assert dumped["lambda"] == 0.5 and "lambda_" not in dumped
        assert config_from_dict(cfg.to_dict()).perturbation == cfg.perturbation
    over = load_config(None, ["perturbation.space=text", "perturbation.kind=random", "perturbation.lambda=0.25",
                              "perturbation.op=delete"])
    assert over.perturbation.lambda_ == 0.25 and over.perturbation.op == "delete"
    bad = [
        (perturbation_section("embedding/noise"),
         "unknown space/kind 'embedding/noise'; allowed: embedding/adversarial"),
        ({"space": "text"}, "must be a mapping with 'space' and 'kind'"),
        (perturbation_section("embedding/random", sigma=-1), "perturbation.sigma"),
        (perturbation_section("embedding/random", **{"lambda": -0.1}), "perturbation.lambda"),
        (perturbation_section("embedding/adversarial", norm="l1"), "perturbation.norm"),
        (perturbation_section("text/random", p=0.1, sigma=0.1), "perturbation.sigma: unknown key"),
    ]
    for value, message in bad:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
            cfg_of(data_dir, perturbation=value)


def test_mask_op_needs_a_mask_token(s, tiny_models):
    from transformers import AutoTokenizer

    cfg = cfg_of(s.data_dir, perturbation=perturbation_section("text/random", op="mask"))
    tok = AutoTokenizer.from_pretrained(tiny_models["gpt2"])
    tok.mask_token = None
    with pytest.raises(ConfigError, match="perturbation.op mask needs a mask token.*use perturbation.op=replace"):
        build_perturbation(cfg, tok)


# --- embedding space: random noise ----------------------------------------------------------------------------------
@pytest.mark.parametrize("distribution", ["gaussian", "uniform"])
@pytest.mark.parametrize("scale", ["absolute", "norm"])
def test_noise_statistics_match_the_configured_magnitude(s, distribution, scale):
    batch = s.batch(0, 16)
    embeds = s.backbone.model.get_input_embeddings()(batch["input_ids"]).detach()
    sigma = 0.05
    config = EmbeddingRandomConfig(distribution=distribution, sigma=sigma, scale=scale)
    noise = Noise(config, torch.Generator().manual_seed(0)).inputs(embeds, batch) - embeds
    real = batch["attention_mask"].bool()
    assert (noise[~real] == 0).all(), "noise on padding"
    n = noise[real]  # [tokens, H]
    if scale == "norm":
        n = n / embeds[real].pow(2).mean(-1, keepdim=True).sqrt()  # in units of each token's RMS coordinate
    assert n.numel() > 100_000
    assert abs(n.mean().item()) < 0.01 * sigma
    if distribution == "gaussian":
        assert n.std().item() == pytest.approx(sigma, rel=0.01)
        if scale == "norm":  # Gaussian noise of about sigma times each token's norm
            ratio = noise[real].norm(dim=-1) / embeds[real].norm(dim=-1)
            assert ratio.mean().item() == pytest.approx(sigma, rel=0.02)
    else:
        assert n.abs().max().item() <= sigma * (1 + 1e-5) and n.abs().max().item() > 0.999 * sigma
        assert n.std().item() == pytest.approx(sigma / 3**0.5, rel=0.01)


def test_prompt_noise_lands_on_the_prompt_only(s):
    model, batch = s.model(), s.batch(0, 4)
    embeds = model.backbone.get_input_embeddings()(batch["input_ids"])
    p = model.method(embeds, batch["attention_mask"], batch)
    noisy = Noise(EmbeddingRandomConfig(prompt=True), torch.Generator().manual_seed(0)).prompted(p, batch)
    changed = (noisy.inputs_embeds != p.inputs_embeds).any(-1)
    assert changed[:, :8].all() and not changed[:, 8:].any()  # vanilla: 8 prompt vectors in front
    assert torch.equal(prompt_slots(p), changed)
    quiet = Noise(EmbeddingRandomConfig(prompt=False), torch.Generator().manual_seed(0)).prompted(p, batch)
    assert quiet is p


def test_a_resumed_run_draws_the_noise_an_unbroken_one_would(s):
    a, b = s.perturbation("embedding/random"), s.perturbation("embedding/random")
    batch = s.batch(0, 2)
    embeds = s.backbone.model.get_input_embeddings()(batch["input_ids"]).detach()
    for _ in range(3):
        a.generator(torch.device("cpu"))
    b.calls = 3
    draw = [Noise(x.config, x.generator(torch.device("cpu"))).inputs(embeds, batch) for x in (a, b)]
    assert torch.equal(draw[0], draw[1])
    cfg = cfg_of(s.data_dir, perturbation=perturbation_section("embedding/random"))
    other_rank = build_perturbation(cfg, s.tokenizer, rank=1)
    other_rank.calls = 4
    assert not torch.equal(Noise(b.config, other_rank.generator(torch.device("cpu"))).inputs(embeds, batch), draw[0])


# --- embedding space: PGD -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm,epsilon", [("l2", 0.5), ("linf", 0.01)])
def test_pgd_stays_inside_the_epsilon_ball(s, norm, epsilon):
    model, batch = s.model(), s.batch(0, 8)
    pgd = s.perturbation("embedding/adversarial", norm=norm, epsilon=epsilon, alpha=epsilon, steps=3)
    delta = pgd.attack(model, batch)
    real = batch["attention_mask"].bool()
    assert (delta[~real] == 0).all(), "perturbation on padding"
    if norm == "l2":
        norms = delta.flatten(1).norm(dim=1)
        assert (norms <= epsilon * (1 + 1e-5)).all(), norms
        # Steps as large as the ball push every row to its surface.
        assert (norms >= 0.99 * epsilon).all(), norms
    else:
        assert delta.abs().max().item() <= epsilon * (1 + 1e-6)
        # Sign steps of size epsilon put most coordinates on a face of the box (1% of the random start is there;
        # a coordinate whose gradient changes sign between steps lands back near 0).
        assert (delta[real].abs() >= 0.99 * epsilon).float().mean().item() > 0.5
    assert all(q.grad is None for q in model.parameters()), "the ascent left gradients on the model"


def _mean_gap(s, key, batches=3, **options):
    """Mean over real RTE batches of L(perturbed) - L(clean), for a freshly initialised prompt."""
    model, pert = s.model(), s.perturbation(key, **options)
    gaps = []
    for i in range(batches):
        batch = s.batch(8 * i, 8)
        with torch.no_grad():
            clean = option_loss(model(batch), batch["labels"]).item()
        gaps.append(pert.perturbed_loss(model, batch).item() - clean)
    return float(np.mean(gaps)), gaps


def test_adversarial_losses_are_above_clean_on_average(s):
    pgd_gap, pgd = _mean_gap(s, "embedding/adversarial")  # the defaults: FreeLB's RTE setting
    flip_gap, flip = _mean_gap(s, "text/adversarial")
    rand_gap, rand = _mean_gap(s, "embedding/random", sigma=0.0025, scale="absolute")
    print(f"PGD gap {pgd_gap:.4f} {pgd}; HotFlip gap {flip_gap:.4f} {flip}; random gap {rand_gap:.5f} {rand}")
    assert pgd_gap > 0 and flip_gap > 0
    # Random noise of the same size (~0.14 over a row: 0.0025 per coordinate) does far less than the adversary.
    assert pgd_gap > 5 * abs(rand_gap)


def test_pgd_trains_the_prompt_on_the_regularized_loss_only(s):
    batch = s.batch(0, 8)
    clean_model = s.model()
    option_loss(clean_model(batch), batch["labels"]).backward()
    model = s.model()
    pgd = s.perturbation("embedding/adversarial", steps=2)
    loss = loss_fn(model, batch, pgd)
    assert all(q.grad is None for q in model.parameters()), "the inner ascent left gradients on the model"
    loss.backward()
    assert all(q.grad is None for q in model.backbone.parameters())
    grad, clean_grad = model.method.prompt.grad, clean_model.method.prompt.grad
    assert grad is not None and not torch.allclose(grad, clean_grad)
    # The adversarial term is a second loss of about the same size: the gradient grows accordingly.
    assert 1.3 < grad.norm() / clean_grad.norm() < 3


# --- text space -----------------------------------------------------------------------------------------------------
def _protected(batch, special_ids):
    return ~batch["attention_mask"].bool() | torch.isin(batch["input_ids"], special_ids) | batch.get(
        "target_mask", torch.zeros_like(batch["attention_mask"], dtype=torch.bool))


@pytest.fixture(scope="module")
def copa_causal(s):
    """COPA encoded for a causal LM (MiniLM's tokenizer): rows end in the answer tokens, marked by target_mask."""
    cfg = cfg_of(s.data_dir, task={"name": "copa"})
    encoder = Encoder(prepare(cfg).task, s.tokenizer, "causal", 64)
    return collate([encoder.encode(e) for e in prepare(cfg).train[:8]], s.tokenizer.pad_token_id)


@pytest.mark.parametrize("op", ["mask", "replace"])
@pytest.mark.parametrize("p", [0.3, 1.0])
def test_text_corruption_never_touches_special_padding_or_answers(s, copa_causal, op, p):
    pert = s.perturbation("text/random", op=op, p=p)
    for batch in (s.batch(0, 16), copa_causal):
        out = pert.corrupt(batch)
        protected = _protected(batch, pert.special_ids)
        assert torch.equal(out["input_ids"][protected], batch["input_ids"][protected])
        changed = out["input_ids"] != batch["input_ids"]
        if op == "mask":
            assert (out["input_ids"][changed] == s.tokenizer.mask_token_id).all()
        else:
            assert not torch.isin(out["input_ids"][changed], pert.special_ids).any()
        n = (~protected).sum().item()
        # Each editable token with probability p (4 standard errors); p = 1: all of them (a replacement may redraw
        # the same token, 1 in ~30k).
        assert changed.sum().item() / n == pytest.approx(p, abs=4 * (p * (1 - p) / n) ** 0.5 + 1e-3)
        assert torch.equal(out["attention_mask"], batch["attention_mask"])


@pytest.mark.parametrize("p", [0.3, 1.0])
def test_text_deletion_keeps_special_tokens_answers_and_order(s, copa_causal, p):
    pert = s.perturbation("text/random", op="delete", p=p)
    for batch in (s.batch(0, 16), copa_causal):
        out = pert.corrupt(batch)
        protected = _protected(batch, pert.special_ids) & batch["attention_mask"].bool()
        for r in range(batch["input_ids"].shape[0]):
            before = batch["input_ids"][r][batch["attention_mask"][r].bool()].tolist()
            after = out["input_ids"][r][out["attention_mask"][r].bool()].tolist()
            n = len(after)
            assert out["attention_mask"][r, :n].all() and not out["attention_mask"][r, n:].any()  # still left-aligned
            assert (out["input_ids"][r, n:] == s.tokenizer.pad_token_id).all()
            it = iter(before)
            assert all(tok in it for tok in after), "kept tokens out of order"
            kept_protected = batch["input_ids"][r][protected[r]].tolist()
            assert [t for t in after if t in set(pert.special_ids.tolist())] == [
                t for t in kept_protected if t in set(pert.special_ids.tolist())]
            if "target_mask" in batch:  # the answer is still the row's last tokens, unchanged
                k = int(batch["target_mask"][r].sum())
                assert after[-k:] == before[-k:]
                assert out["target_mask"][r].nonzero().flatten().tolist() == list(range(n - k, n))
            if "token_type_ids" in batch:
                types = out["token_type_ids"][r][:n].tolist()
                assert types == sorted(types) and 1 in types  # still segment A then segment B
            if p == 1.0:
                assert n == len(kept_protected)


def test_hotflip_substitutes_at_most_k_editable_tokens(s, copa_causal, tiny_models):
    model, batch = s.model(), s.batch(0, 8)
    flip = s.perturbation("text/adversarial", k=2)
    out = flip.attack(model, batch)
    changed = out["input_ids"] != batch["input_ids"]
    assert (changed.sum(1) <= 2).all() and changed.sum() >= 8  # gradients raise the loss somewhere in every row
    assert not (changed & _protected(batch, flip.special_ids)).any()
    assert not torch.isin(out["input_ids"][changed], flip.special_ids).any()
    assert all(q.grad is None for q in model.parameters())
    # Causal multiple choice (a tiny random GPT-2 for the gradients): the answers stay as they are.
    cfg = cfg_of(s.data_dir, task={"name": "copa"}, model={"name": str(tiny_models["gpt2"])})
    gpt2 = bb.load_backbone(cfg.model)
    causal = build_model(cfg, gpt2, prepare(cfg).task).train()
    out = flip.attack(causal, copa_causal)
    changed = out["input_ids"] != copa_causal["input_ids"]
    assert changed.any() and not (changed & _protected(copa_causal, flip.special_ids)).any()


# --- composition with the prompt methods ----------------------------------------------------------------------------
def _method_section(name):
    fields = METHODS[name].model_fields
    return {"name": name, **({"num_tokens": 4} if "num_tokens" in fields else {})}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_perturbation_composes_with_every_method(s, method):
    batch = s.batch(0, 2, length=64)
    for key, options in VARIANTS.items():
        model = s.model(_method_section(method))
        pert = s.perturbation(key, **options)
        with torch.no_grad():
            clean = option_loss(model(batch), batch["labels"])
        total = loss_fn(model, batch, pert)
        assert torch.isfinite(total) and total.item() != pytest.approx(clean.item(), abs=1e-6), (method, key)
        total.backward()
        grads = [q.grad for q in model.method.parameters() if q.requires_grad]
        assert grads and any(g is not None and g.abs().sum() > 0 for g in grads), (method, key)
    # Noise on the prompt vectors needs prompt vectors in the sequence: deep prompts have none, and say so.
    model = s.model(_method_section(method))
    pert = s.perturbation("embedding/random", prompt=True)
    embeds = model.backbone.get_input_embeddings()(batch["input_ids"])
    if model.method(embeds, batch["attention_mask"], batch).past_key_values is not None:
        with pytest.raises(ConfigError, match="perturbation.prompt=false"):
            loss_fn(model, batch, pert)
    else:
        assert torch.isfinite(loss_fn(model, batch, pert))


# --- the training loop ----------------------------------------------------------------------------------------------
SHORT = {"max_steps": 3, "eval_every": 3, "batch_size": 4}
SMALL = {"max_seq_length": 64, "max_eval_examples": 8}


def test_lambda_zero_reproduces_the_unregularized_run_exactly(s):
    def run(**sections):
        return train(cfg_of(s.data_dir, task=SMALL, train=SHORT, **sections), progress=False)

    plain = run()
    zero = run(perturbation=perturbation_section("embedding/random", **{"lambda": 0}))
    one = run(perturbation=perturbation_section("embedding/random", **{"lambda": 1}))
    assert plain["status"] == zero["status"] == one["status"] == "ok"
    for key in ("history", "selection_metrics", "report_metrics", "best_step", "trainable_params"):
        assert zero[key] == plain[key], key
    assert losses(one) != losses(plain)
    assert one["trainable_params"] == plain["trainable_params"]  # a regularizer adds no parameters

