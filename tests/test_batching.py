"""Speed levers of the core that must not change what a seed means: length-grouped training batches stay seeded and
cover every example once per epoch; the backbone and the tokenised splits are shared across seeds in one process
without being changed by a run."""
import numpy as np
import torch

from conftest import tiny_config
from ptray.config import config_from_dict
from ptray.core import backbone as bb
from ptray.core.data import Encoded, train_order
from ptray.core.train import load_model, prepare, train

# RTE-like lengths (FewGLUE train under the MiniLM tokenizer spans 20..192 tokens).
LENGTHS = np.random.default_rng(7).lognormal(np.log(60), 0.6, 64).astype(int) + 8
ITEMS = [Encoded([[1] * n], 0) for n in LENGTHS]


def epochs(seed, n_epochs, batch_size=8, group=True, rank=0, world=1):
    it = train_order(ITEMS, batch_size, seed, rank, world, group)
    per_epoch = -(-len(ITEMS) // (batch_size * world))
    return [[next(it) for _ in range(per_epoch)] for _ in range(n_epochs)]


def padded_tokens(batches):
    return sum(max(LENGTHS[i] for i in b) * len(b) for b in batches)


def test_grouped_batches_are_seeded_epochs_with_less_padding():
    grouped, plain = epochs(3, 4), epochs(3, 4, group=False)
    for epoch in grouped + plain:  # every example once per epoch
        assert sorted(i for b in epoch for i in b) == list(range(len(ITEMS)))
    assert grouped == epochs(3, 4)  # the seed fixes the order ...
    assert grouped != epochs(4, 4)  # ... and another seed gives another
    # Batches are not a fixed partition: their members change from epoch to epoch.
    members = [{frozenset(b) for b in epoch} for epoch in grouped]
    assert all(members[0] != m for m in members[1:])
    # Without grouping the order is the plain seeded permutation, as before grouping existed.
    assert [i for b in plain[0] for i in b] == np.random.default_rng(3).permutation(len(ITEMS)).tolist()
    saved = 1 - sum(map(padded_tokens, grouped)) / sum(map(padded_tokens, plain))
    assert saved > 0.2, saved


def test_grouped_batches_split_across_ranks():
    ranks = [epochs(5, 2, batch_size=4, rank=r, world=2) for r in range(2)]
    for e in range(2):
        seen = [i for r in ranks for b in r[e] for i in b]
        assert sorted(seen) == list(range(len(ITEMS)))
        # Ranks step together: micro-batch k of each rank comes from the same global batch of similar lengths.
        for b0, b1 in zip(ranks[0][e], ranks[1][e]):
            assert len(b0) == len(b1)


def test_backbone_and_splits_shared_across_seeds_and_left_untouched(data_dir):
    cfg = config_from_dict(tiny_config(data_dir, train={"seed": 1}))
    p = prepare(cfg)
    bb._SHARED.clear()
    first = train(cfg, progress=False)
    shared = bb.load_backbone(cfg.model, reuse=True)
    assert bb.load_backbone(cfg.model, reuse=True) is shared
    second = train(cfg, progress=False)  # on the shared backbone
    assert [h["loss"] for h in first["history"]] == [h["loss"] for h in second["history"]]
    assert first["report_metrics"] == second["report_metrics"]
    # Two runs later the shared weights are still the pretrained ones, frozen, with no hooks left behind.
    fresh = bb.load_backbone(cfg.model)
    for (name, a), b in zip(shared.model.named_parameters(), fresh.model.parameters()):
        assert torch.equal(a, b), name
        assert not a.requires_grad and not hasattr(a, "ds_id"), name
    assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in shared.model.modules())

    seed2 = config_from_dict(tiny_config(data_dir, train={"seed": 2}))
    m1, _, d1 = load_model(cfg, p)
    m2, _, d2 = load_model(seed2, prepare(seed2))
    assert m1.backbone is m2.backbone is shared.model and d1 is d2  # one backbone, one tokenisation
    longer = config_from_dict(tiny_config(data_dir, task={"max_seq_length": 64}))
    assert load_model(longer, prepare(longer))[2] is not d1
    zero3 = config_from_dict(tiny_config(data_dir, train={"zero_stage": 3}))
    assert load_model(zero3, prepare(zero3))[0].backbone is not shared.model  # ZeRO-3 partitions its own copy

