"""Vanilla prompt tuning (Lester et al., 2021): L trainable vectors in front of the input embeddings."""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from ptray.config import MethodConfig
from ptray.core.methods.base import BackboneInfo, PromptMethod, Prompted, init_prompt, prepend


class VanillaConfig(MethodConfig):
    name: Literal["vanilla"] = "vanilla"
    num_tokens: int = Field(20, ge=1)
    # Lester et al. found sampled-vocabulary init best; "random" is Gaussian at the embedding's scale.
    init: Literal["random", "vocab", "text"] = "vocab"
    init_text: str | None = None

    @model_validator(mode="after")
    def _text(self):
        if self.init == "text" and not self.init_text:
            raise ValueError("init: text needs method.init_text (the words whose embeddings start the prompt)")
        return self


class VanillaPrompt(PromptMethod):
    config_class = VanillaConfig

    def __init__(self, config: VanillaConfig, info: BackboneInfo, generator: torch.Generator):
        super().__init__(config, info)
        self.prompt = nn.Parameter(init_prompt(config.num_tokens, info, config.init, config.init_text, generator))

    def forward(self, inputs_embeds, attention_mask, batch) -> Prompted:
        prompt = self.prompt.unsqueeze(0).expand(inputs_embeds.shape[0], -1, -1)
        return prepend(prompt, inputs_embeds, attention_mask)
