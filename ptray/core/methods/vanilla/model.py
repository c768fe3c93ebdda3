"""Vanilla prompt tuning's module: the prompt as one [L, H] parameter, prepended to every row."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ptray.core.methods.base import BackboneInfo, PromptMethod, Prompted, init_prompt, prepend

if TYPE_CHECKING:  # annotations only: the config module imports this one lazily, in build()
    from ptray.core.methods.vanilla.config import VanillaConfig


class VanillaPrompt(PromptMethod):
    def __init__(self, config: VanillaConfig, info: BackboneInfo, generator: torch.Generator):
        super().__init__(config, info)
        self.prompt = nn.Parameter(init_prompt(config.num_tokens, info, config.init, config.init_text, generator))

    def token_rows(self) -> list[str]:
        return ["prompt"]

    def forward(self, inputs_embeds, attention_mask, batch) -> Prompted:
        prompt = self.prompt.unsqueeze(0).expand(inputs_embeds.shape[0], -1, -1)
        return prepend(prompt, inputs_embeds, attention_mask)
