"""Dynamic Prompting (Yang et al., 2023): the prompt's position, length or representation chosen per input.

A small selector reads the input as the frozen backbone sees it without any prompt (one extra forward, no
gradient; the mean of the last hidden states over the real tokens) and picks, with a straight-through
Gumbel-Softmax (one-hot forward, soft gradients):

    position        a split point j in 0..L: prompt[j:] before the input, prompt[:j] after it
    length          how many of the L prompt tokens are used (0..L); the rest are masked out
    representation  instance weights over a pool of k prompts (softmax, or Gumbel to pick one)
    task_position   one learned distribution over split points for all inputs (no selector, no extra forward)
    position+representation   both

Training samples with Gumbel noise at a temperature annealed per optimizer step; evaluation takes the argmax.
Reference code: github.com/Xianjun-Yang/DPT (its defaults: config.py).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import math

import torch
import torch.nn.functional as F
from torch import nn

from ptray.core.methods.base import BackboneInfo, PromptMethod, Prompted, init_prompt, prepend

if TYPE_CHECKING:  # annotations only: the config module imports this one lazily, in build()
    from ptray.core.methods.dynamic.config import DynamicConfig


class DynamicPrompt(PromptMethod):
    def __init__(self, config: DynamicConfig, info: BackboneInfo, generator: torch.Generator):
        super().__init__(config, info)
        length, hidden, mode = config.num_tokens, info.hidden_size, config.mode
        self.family = info.family
        if "representation" in mode:
            pool = init_prompt(config.pool_size * length, info, config.init, config.init_text, generator)
            self.pool = nn.Parameter(pool.view(config.pool_size, length, hidden))
            self.pool_selector = _selector(hidden, config.selector_hidden, config.pool_size, generator)
        else:
            self.prompt = nn.Parameter(init_prompt(length, info, config.init, config.init_text, generator))
        if mode == "task_position":
            # Uniform over the L + 1 split points at the start.
            self.position_logits = nn.Parameter(torch.zeros(length + 1))
        elif mode == "length":
            self.length_selector = _selector(hidden, config.selector_hidden, length + 1, generator)
        elif "position" in mode:
            self.position_selector = _selector(hidden, config.selector_hidden, length + 1, generator)
        # Optimizer steps so far (set by the training loop): the temperature follows from it, and as a buffer it is
        # saved in and restored from checkpoints with the rest of the module.
        self.register_buffer("anneal_step", torch.zeros((), dtype=torch.long))
        if mode != "task_position":
            if info.backbone is None:
                raise ValueError("method dynamic reads the input with the frozen backbone: BackboneInfo.backbone is required")
            # A plain reference, not a submodule: PromptModel owns the backbone, so its weights are counted, moved
            # and handed to DeepSpeed once.
            object.__setattr__(self, "_backbone", info.backbone)

    def on_step(self, step: int) -> None:
        self.anneal_step.fill_(step)

    def temperature(self) -> float:
        c = self.config
        return max(c.tau0 * math.exp(-c.anneal_rate * int(self.anneal_step)), c.tau_min)

    def forward(self, inputs_embeds, attention_mask, batch) -> Prompted:
        mode, rows = self.config.mode, inputs_embeds.shape[0]
        features = None if mode == "task_position" else self._features(inputs_embeds, attention_mask, batch)
        if "representation" in mode:
            logits = self.pool_selector(features)
            # Logits unsquashed: the reference code passes them through tanh first, which caps the weights' spread.
            weights = self.choose(logits) if self.config.pool_weights == "gumbel" else logits.softmax(-1)
            prompt = torch.einsum("rk,klh->rlh", weights, self.pool)
        else:
            prompt = self.prompt.expand(rows, -1, -1)
        if mode == "representation":
            return prepend(prompt, inputs_embeds, attention_mask)
        if mode == "length":
            return shorten(prompt, self.choose(self.length_selector(features)), inputs_embeds, attention_mask)
        logits = self.position_logits.expand(rows, -1) if mode == "task_position" else self.position_selector(features)
        # Causal multiple choice: the post-input part goes between the source and the scored target tokens. After
        # the targets it could not change their scores at all (a causal LM reads left to right); before them it
        # plays the role it plays in classification, where the answer is read right after it.
        targets = batch["target_mask"].sum(1) if "target_mask" in batch else None
        return place(prompt, self.choose(logits), inputs_embeds, attention_mask, targets)

    def choose(self, logits: torch.Tensor) -> torch.Tensor:
        """[R, C] logits -> [R, C] choice weights: a Gumbel-Softmax sample while training, the argmax otherwise."""
        if not self.training:
            return F.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype)
        gumbels = -torch.empty_like(logits).exponential_().log()
        soft = ((logits + gumbels) / self.temperature()).softmax(-1)
        if not self.config.hard:
            return soft
        # Straight-through. Written as hard + (soft - soft) so that the forward value is exactly one-hot
        # (F.gumbel_softmax's hard - soft + soft can miss 1.0 by an ulp).
        return F.one_hot(soft.argmax(-1), logits.shape[-1]).to(soft.dtype) + (soft - soft.detach())

    @torch.no_grad()
    def _features(self, inputs_embeds, attention_mask, batch) -> torch.Tensor:
        """The selector's input: the frozen backbone's last hidden states of the plain input, averaged over its
        real tokens (the encoder's, for encoder-decoders)."""
        model = self._backbone
        body = model.get_encoder() if self.family == "seq2seq" else model.base_model
        kwargs = {"token_type_ids": batch["token_type_ids"]} if "token_type_ids" in batch else {}
        hidden = body(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs).last_hidden_state.float()
        m = attention_mask[..., None].float()
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1)


def _selector(hidden: int, inner: int, choices: int, generator: torch.Generator) -> nn.Module:
    layers = [nn.Linear(hidden, choices)] if inner == 0 else [nn.Linear(hidden, inner), nn.Tanh(), nn.Linear(inner, choices)]
    with torch.no_grad():
        for layer in layers[::2]:
            # torch's default Linear init, drawn from the method's generator so that the seed alone fixes it.
            bound = 1 / math.sqrt(layer.in_features)
            layer.weight.uniform_(-bound, bound, generator=generator)
            layer.bias.uniform_(-bound, bound, generator=generator)
    return nn.Sequential(*layers)


def _real_lengths(attention_mask: torch.Tensor) -> torch.Tensor:
    n = attention_mask.sum(1)
    steps = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    if not torch.equal(attention_mask.bool(), steps[None, :] < n[:, None]):
        raise ValueError("dynamic prompts need right-padded batches (each row's real tokens first, then padding)")
    return n


def place(prompt: torch.Tensor, weights: torch.Tensor, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
          tail: torch.Tensor | None = None) -> Prompted:
    """Split each row's [L, H] prompt around its input at the split point j that `weights` [R, L+1] picks:
    prompt[j:] + input[:anchor] + prompt[:j] + input[anchor:], where anchor = real tokens - `tail` (default: all
    real tokens; padding stays at the right).

    With S = prompt ++ input, output position p reads S[(p + j) mod (L + anchor)] while p < L + anchor (the head
    is a rotation) and S[p] after it. The sequence is built as (placement matrix) @ S, the matrix being the
    weighted sum of the L + 1 placements: one-hot weights select one exactly, and every weight gets the
    straight-through gradient <grad, sequence_j>, for one [T+L, L+T] matrix product per row.
    """
    rows, width, _ = inputs_embeds.shape
    length = prompt.shape[1]
    n = _real_lengths(attention_mask)
    anchor = n if tail is None else n - tail
    device = inputs_embeds.device
    p = torch.arange(width + length, device=device)[None, :, None]
    j = torch.arange(length + 1, device=device)[None, None, :]
    head = (length + anchor)[:, None, None]
    source_index = torch.where(p < head, (p + j) % head, p)  # [R, T+L, L+1]
    source = torch.cat([prompt.to(inputs_embeds.dtype), inputs_embeds], 1)
    placement = torch.zeros(rows, width + length, length + width, dtype=source.dtype, device=device)
    placement = placement.scatter_add(2, source_index, weights.to(source.dtype)[:, None, :].expand_as(source_index))
    embeds = torch.bmm(placement, source)
    # Every placement fills the first L + n positions with prompt or real tokens: the mask does not depend on j.
    mask = (p[0, :, 0][None, :] < (length + n)[:, None]).to(attention_mask.dtype)
    chosen = weights.argmax(-1)  # soft weights (hard: false): the input's place in the heaviest placement
    t = torch.arange(width, device=device)[None, :]
    positions = torch.where(t < anchor[:, None], length + t - chosen[:, None], length + t)
    return Prompted(embeds, mask, positions)


def shorten(prompt: torch.Tensor, weights: torch.Tensor, inputs_embeds: torch.Tensor,
            attention_mask: torch.Tensor) -> Prompted:
    """Prepend the first j of the L prompt tokens for the length j that `weights` [R, L+1] picks; slots j.. are
    masked out (and zeroed). keep[i] = sum of weights over lengths > i: exactly 0 or 1 in a one-hot forward pass,
    with the straight-through gradient behind it."""
    keep = weights.flip(-1).cumsum(-1).flip(-1)[:, 1:]  # [R, L]
    out = prepend(prompt * keep[..., None].to(prompt.dtype), inputs_embeds, attention_mask)
    mask = torch.cat([(keep > 0).to(attention_mask.dtype), attention_mask], 1)
    return Prompted(out.inputs_embeds, mask, out.token_positions)
