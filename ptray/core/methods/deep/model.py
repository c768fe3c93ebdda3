"""Deep prompts (prefix tuning, Li & Liang 2021; P-tuning v2, Liu et al. 2022): trainable key/value prefixes that
every attention layer of the frozen backbone attends to, optionally produced by a two-layer MLP ("prefix
projection").

The method leaves the input sequence as it is and returns one (key, value) pair per layer, each
[R, kv_heads, L, head_dim], with an attention mask that covers the L prefix slots. PromptModel hands them to the
backbone: as a cache for encoders (BERT-like) and decoder-only LMs, and through the encoder's self-attention layers
for T5 (its encoder stack ignores caches).

Prefix vectors are drawn from N(0, 1), as P-tuning v2's nn.Embedding starts them (its other defaults: config.py).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ptray.config import ConfigError
from ptray.core.methods.base import BackboneInfo, PromptMethod, Prompted

if TYPE_CHECKING:  # annotations only: the config module imports this one lazily, in build()
    from ptray.core.methods.deep.config import DeepConfig

# Encoder-decoder models whose encoder layers take a prefix the way PromptModel feeds it (T5's block layout).
SEQ2SEQ_SUPPORTED = ("t5", "mt5")


def kv_geometry(info: BackboneInfo) -> tuple[int, int]:
    """(kv_heads, head_dim) of the backbone's attention: fewer kv heads under grouped-query attention (Llama)."""
    c = info.backbone.config
    kv_heads = getattr(c, "num_key_value_heads", None) or info.num_heads
    head_dim = getattr(c, "head_dim", None) or getattr(c, "d_kv", None) or info.hidden_size // info.num_heads
    return kv_heads, head_dim


class DeepPrompt(PromptMethod):
    def __init__(self, config: DeepConfig, info: BackboneInfo, generator: torch.Generator):
        super().__init__(config, info)
        model_type = info.backbone.config.model_type
        if info.family == "seq2seq" and model_type not in SEQ2SEQ_SUPPORTED:
            raise ConfigError(
                f"method deep on the encoder-decoder model type {model_type!r} is not supported "
                f"(supported: {', '.join(SEQ2SEQ_SUPPORTED)}); use method vanilla or residual for this model"
            )
        self.num_layers = info.num_layers
        self.kv_heads, self.head_dim = kv_geometry(info)
        width = self.num_layers * 2 * self.kv_heads * self.head_dim
        n = config.num_tokens
        if config.projection:
            # P-tuning v2's prefix projection: L token vectors -> Linear -> tanh -> Linear -> all layers' keys and values.
            self.embedding = nn.Parameter(torch.randn(n, info.hidden_size, generator=generator))
            self.mlp = nn.Sequential(nn.Linear(info.hidden_size, config.projection_hidden), nn.Tanh(),
                                     nn.Linear(config.projection_hidden, width))
        else:
            self.prefix = nn.Parameter(torch.randn(n, width, generator=generator))
        self.dropout = nn.Dropout(config.dropout)

    def token_rows(self) -> list[str]:
        # A row holds one token's keys and values of every layer (or, projected, the vector they are made from).
        return ["embedding" if self.config.projection else "prefix"]

    def prefixes(self) -> torch.Tensor:
        """All layers' prefixes [num_layers, 2, kv_heads, L, head_dim] (index 1: 0 keys, 1 values)."""
        flat = self.mlp(self.embedding) if self.config.projection else self.prefix
        n = self.config.num_tokens
        return flat.view(n, self.num_layers, 2, self.kv_heads, self.head_dim).permute(1, 2, 3, 0, 4)

    def forward(self, inputs_embeds, attention_mask, batch) -> Prompted:
        rows, length = inputs_embeds.shape[:2]
        kv = self.prefixes().unsqueeze(2).expand(-1, -1, rows, -1, -1, -1)
        # Dropout after expanding, so each row sees its own mask, as in P-tuning v2.
        kv = self.dropout(kv).to(inputs_embeds.dtype)
        past = tuple((layer[0], layer[1]) for layer in kv)
        mask = torch.cat([attention_mask.new_ones(rows, self.config.num_tokens), attention_mask], dim=1)
        positions = torch.arange(length, device=inputs_embeds.device).expand(rows, -1)
        return Prompted(inputs_embeds, mask, positions, past)
