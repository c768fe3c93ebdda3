"""Seed packing: K seeds of one config trained through one frozen backbone (the training loop, ptray.core.loop,
always trains a pack; a single seed is a pack of one).

A seed-robustness study repeats one run over seeds. The backbone is frozen, so the seeds differ only in their prompts
and heads: one process, one loaded backbone, one tokenisation and one optimizer step serve K seeds. How the backbone
reads the seeds' rows depends on the device:

* on a CPU, each seed's rows in their own pass (a pass costs about its FLOPs, and joining seeds would pad every row
  to the longest of all): every seed computes exactly what it would alone, so K packed seeds give the numbers of K
  separate runs, bit for bit;
* on a GPU, all seeds' prompted rows in one joint pass (a pass costs a launch and a read of the weights, whatever its
  rows): the seeds agree with their separate runs to float rounding (the joint pass pads rows to a common width). One
  pass draws one dropout stream, so there the backbone's dropout (model.dropout) cannot stay per seed: refused.

    results = train_seeds([cfg_seed0, cfg_seed1, ...], [out / "seed0", out / "seed1", ...])   (ptray.core.train)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ptray.config import ConfigError, ExperimentConfig
from ptray.core.methods.base import Prompted
from ptray.core.model import PromptModel
from ptray.layout import flatten


def check_pack(cfgs: list[ExperimentConfig]) -> None:
    """Configs that may be packed: distinct seeds of one config (equal in everything but train.seed)."""
    if not cfgs:
        raise ConfigError("train_seeds needs at least one config")
    seeds = [c.train.seed for c in cfgs]
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"packed seeds must be distinct, got train.seed values {seeds}")
    base = _flat(cfgs[0])
    for c in cfgs[1:]:
        other = _flat(c)
        differ = sorted(k for k in base.keys() | other.keys() if base.get(k) != other.get(k))
        if differ:
            raise ConfigError(f"packed configs may differ only in train.seed; seed {c.train.seed} differs from seed "
                              f"{seeds[0]} in {', '.join(differ)}: run those as separate packs")
    reason = cfgs[0].unpackable() if len(cfgs) > 1 else None
    if reason:
        raise ConfigError(reason)


def _flat(cfg: ExperimentConfig) -> dict:
    """The config's dotted keys, but those a pack's seeds may differ in."""
    return {k: v for k, v in flatten(cfg.to_dict()).items() if k not in ("train.seed", "train.seed_pack")}


class PackedModel(nn.Module):
    """K seeds' PromptModels over one frozen backbone. `forward(batches)` takes each seed's own batch (None for a seed
    given none: stopped or failed) and returns each seed's [n, K] option scores (None likewise). Each seed's
    computation runs under its own random stream (`streams[i]`, a ptray.core.loop.RandomStream)."""

    def __init__(self, models: list[PromptModel], streams: list, joint: bool, pad_id: int):
        super().__init__()
        if any(m.backbone is not models[0].backbone for m in models):
            raise ValueError("packed seeds must share one backbone object (load_model's `backbone` argument)")
        self.seeds = nn.ModuleList(models)
        self.streams, self.joint, self.pad_id = streams, joint, pad_id
        if len(models) == 1:
            self._register_load_state_dict_pre_hook(_one_seed_checkpoint)

    def forward(self, batches: list[dict[str, torch.Tensor] | None]) -> list[torch.Tensor | None]:
        live = [i for i, b in enumerate(batches) if b is not None]
        scores: list[torch.Tensor | None] = [None] * len(batches)
        if not self.joint:
            for i in live:
                with self.streams[i].active():
                    scores[i] = self.seeds[i](batches[i])
            return scores
        first = self.seeds[0]
        batch = concat([batches[i] for i in live], self.pad_id)
        embed = first.backbone.get_input_embeddings()
        prompted = []
        for i in live:
            with self.streams[i].active():
                prompted.append(self.seeds[i].method(embed(batches[i]["input_ids"]), batches[i]["attention_mask"],
                                                     batches[i]))
        joint = join(prompted)
        live_rows = [batches[i]["input_ids"].shape[0] for i in live]
        if first.family == "encoder":
            rows = [self.seeds[i].head(x.float()) for i, x in zip(live, first.pooled(batch, joint).split(live_rows))]
        else:  # LMs score with the frozen LM head: nothing per seed after the backbone
            rows = getattr(first, f"_{first.family}")(batch, joint).split(live_rows)
        for i, r in zip(live, rows):
            scores[i] = self.seeds[i]._to_options(batches[i], r)
        return scores


def concat(batches: list[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """Several seeds' batches (ptray.core.data.collate) as one: rows one seed after another, token-wise keys
    right-padded to the widest as collate pads them, `row_example` numbering the examples on."""
    out = {}
    for key in batches[0]:
        parts = [b[key] for b in batches]
        if key == "row_example":
            starts = torch.tensor([0] + [b["labels"].shape[0] for b in batches[:-1]]).cumsum(0).tolist()
            parts = [p + s for p, s in zip(parts, starts)]
        elif parts[0].dim() == 2:
            width = max(p.shape[1] for p in parts)
            fill = pad_id if key == "input_ids" else -100 if key == "decoder_targets" else 0
            parts = [F.pad(p, (0, width - p.shape[1]), value=fill) for p in parts]
        out[key] = torch.cat(parts)
    return out


def join(prompted: list[Prompted]) -> Prompted:
    """The seeds' prompted rows as one batch: right-padded (mask 0) to the widest seed's sequence (each seed's batch
    has its own width, and a method may add its own, e.g. Dynamic Prompting's chosen lengths); deep prompts'
    per-layer prefixes are joined row-wise (one method, one prefix length)."""
    width = max(p.inputs_embeds.shape[1] for p in prompted)
    embeds = torch.cat([F.pad(p.inputs_embeds, (0, 0, 0, width - p.inputs_embeds.shape[1])) for p in prompted])
    mask_width = max(p.attention_mask.shape[1] for p in prompted)
    mask = torch.cat([F.pad(p.attention_mask, (0, mask_width - p.attention_mask.shape[1])) for p in prompted])
    # Seeds' batches differ in input width too: the joint batch's extra input tokens are padding, masked out wherever
    # positions are read, so any index will do for them.
    input_width = max(p.token_positions.shape[1] for p in prompted)
    positions = torch.cat([F.pad(p.token_positions, (0, input_width - p.token_positions.shape[1])) for p in prompted])
    past = None
    if prompted[0].past_key_values is not None:
        past = tuple((torch.cat([p.past_key_values[layer][0] for p in prompted]),
                      torch.cat([p.past_key_values[layer][1] for p in prompted]))
                     for layer in range(len(prompted[0].past_key_values)))
    return Prompted(embeds, mask, positions, past)


def _one_seed_checkpoint(state_dict, prefix, *args) -> None:
    """Checkpoints of one-seed runs written before every run was a pack name the seed's parameters without the
    pack's `seeds.0.`: read them as seed 0's."""
    for key in [k for k in state_dict if k.startswith(prefix) and not k.startswith(prefix + "seeds.")]:
        state_dict[prefix + "seeds.0." + key[len(prefix):]] = state_dict.pop(key)
