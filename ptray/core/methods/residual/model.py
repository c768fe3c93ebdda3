"""Residual Prompt Tuning (Razdaibiedina et al., ACL Findings 2023): each prompt vector goes through a shallow
MLP with a skip connection, P'_i = P_i + LN(dropout(W2 act(W1 P_i))). After training the MLP is folded away:
the saved adapter holds the projected prompt P', which a vanilla prompt loads and scores with exactly the same
numbers.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ptray.core.methods.base import BackboneInfo, Prompted, prepend
from ptray.core.methods.vanilla.model import VanillaPrompt

if TYPE_CHECKING:  # annotations only: the config module imports this one lazily, in build()
    from ptray.core.methods.residual.config import ResidualConfig

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


class ResidualMLP(nn.Module):
    def __init__(self, hidden: int, config: ResidualConfig):
        super().__init__()
        layers = [nn.Linear(hidden, config.bottleneck), ACTIVATIONS[config.activation](),
                  nn.Linear(config.bottleneck, hidden)]
        # Dropout before the LayerNorm, in the reference code's order.
        if config.dropout > 0:
            layers.append(nn.Dropout(config.dropout))
        if config.layer_norm:
            layers.append(nn.LayerNorm(hidden))
        self.net = nn.Sequential(*layers)
        self.residual = config.residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x) if self.residual else self.net(x)


class ResidualPrompt(VanillaPrompt):
    """The vanilla prompt's vectors, read through the residual MLP(s)."""

    def __init__(self, config: ResidualConfig, info: BackboneInfo, generator: torch.Generator):
        super().__init__(config, info, generator)
        count = config.num_tokens if config.separate_mlps else 1
        # A ModuleList, so per-token MLPs are parameters DeepSpeed trains and checkpoints like any other.
        self.mlps = nn.ModuleList(ResidualMLP(self.prompt.shape[1], config) for _ in range(count))

    def projected(self) -> torch.Tensor:
        """The reparameterised prompt P' [L, H]."""
        if len(self.mlps) == 1:
            return self.mlps[0](self.prompt)
        return torch.cat([mlp(p[None]) for mlp, p in zip(self.mlps, self.prompt)])

    def forward(self, inputs_embeds, attention_mask, batch) -> Prompted:
        prompt = self.projected().unsqueeze(0).expand(inputs_embeds.shape[0], -1, -1)
        return prepend(prompt, inputs_embeds, attention_mask)

    def export_state(self) -> dict[str, torch.Tensor]:
        """The folded adapter: P' as computed at evaluation (dropout off), under the vanilla prompt's key."""
        was_training = self.training
        self.eval()
        with torch.no_grad():
            folded = self.projected()
        self.train(was_training)
        return {"prompt": folded.detach().clone()}
