"""The contract every prompt method keeps: given the input's word embeddings and mask, return the sequence
the frozen backbone reads, and where each input token ended up (so heads and scorers find them)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn


class Prompted(NamedTuple):
    # A NamedTuple, not a dataclass: ZeRO-3's backward hooks find tensors only in tuples, lists and dicts.
    inputs_embeds: torch.Tensor  # [R, T', H]
    attention_mask: torch.Tensor  # [R, T']
    # token_positions[r, t]: index in the new sequence of input token t of row r.
    token_positions: torch.Tensor  # [R, T]
    # Deep prompts: one (key, value) prefix per layer, each [R, kv_heads, L, head_dim], that the backbone attends
    # to; attention_mask then covers those L slots first (None for input-level prompts).
    past_key_values: Any = None


@dataclass
class BackboneInfo:
    """What a method may know of the frozen backbone when it builds itself."""

    hidden_size: int
    num_layers: int
    num_heads: int
    family: str  # encoder | causal | seq2seq
    word_embeddings: nn.Embedding
    tokenizer: Any
    # The frozen model itself, for methods that read the input with it (dynamic prompts). Keep it out of the
    # method's submodules: PromptModel owns it.
    backbone: nn.Module | None = None


class PromptMethod(nn.Module):
    """Subclasses implement `forward`; their config's `build` (in its config.py) constructs them."""

    def __init__(self, config, info: BackboneInfo):
        super().__init__()
        self.config = config

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, batch: dict) -> Prompted:
        raise NotImplementedError

    def on_step(self, step: int) -> None:
        """Called by the training loop after optimizer step `step`, for schedules the method keeps (e.g. a temperature)."""

    def token_rows(self) -> list[str]:
        """The parameters whose first dimension is the prompt's tokens: what a resize to another num_tokens cuts or
        extends (ptray.core.resize). Only methods whose config's `unresizable` is None have any."""
        return []

    def export_state(self) -> dict[str, torch.Tensor]:
        """What is saved as the trained adapter: by default every trainable tensor of the method."""
        return {k: v.detach().clone() for k, v in self.named_parameters() if v.requires_grad}


def prepend(prompt: torch.Tensor, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> Prompted:
    """Put a [R, L, H] prompt in front of the input, as in Lester et al.; the mask grows by L ones."""
    rows, length = inputs_embeds.shape[0], prompt.shape[1]
    embeds = torch.cat([prompt.to(inputs_embeds.dtype), inputs_embeds], dim=1)
    mask = torch.cat([attention_mask.new_ones(rows, length), attention_mask], dim=1)
    positions = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device).expand(rows, -1) + length
    return Prompted(embeds, mask, positions)


def init_prompt(num_tokens: int, info: BackboneInfo, init: str, text: str | None, generator: torch.Generator):
    """Initial prompt vectors [L, H], fp32: from the embedding's own scale, sampled vocabulary, or a text."""
    weight = info.word_embeddings.weight
    from ptray.core.zero import gathered

    with gathered([weight]):
        weight = weight.detach().float().cpu()
        if init == "random":
            # Normal noise at the scale of real token embeddings, so the prompt starts in-distribution.
            return torch.randn(num_tokens, weight.shape[1], generator=generator) * weight.std()
        if init == "vocab":
            # Lester et al.: sample from the 5,000 most common tokens; tokenizers roughly order ids by frequency
            # after the special tokens, so draw from the first 5,000 non-special ids.
            special = set(info.tokenizer.all_special_ids)
            pool = torch.tensor([i for i in range(min(weight.shape[0], 5000 + len(special))) if i not in special])
            idx = pool[torch.randint(len(pool), (num_tokens,), generator=generator)]
            return weight[idx].clone()
        ids = info.tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError("method.init_text tokenizes to nothing; give a non-empty text")
        # Repeat the text's tokens to fill the prompt length (as in the PEFT implementation).
        ids = (ids * (num_tokens // len(ids) + 1))[:num_tokens]
        return weight[torch.tensor(ids)].clone()
