"""The config of Residual Prompt Tuning (Razdaibiedina et al., ACL Findings 2023); its module is model.py.

Defaults follow the reference code (github.com/arazd/ResidualPrompts, train.py): bottleneck 800, ReLU, LayerNorm on,
residual on, dropout 0, one MLP shared by all tokens, 10 prompt tokens sampled from the vocabulary.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from ptray.core.methods.registry import register_method
from ptray.core.methods.vanilla.config import VanillaConfig


@register_method("residual")
class ResidualConfig(VanillaConfig):
    """num_tokens, init and init_text as for vanilla prompts; each prompt vector goes through a shallow MLP with a
    skip connection, P'_i = P_i + LN(dropout(W2 act(W1 P_i)))."""

    num_tokens: int = Field(10, ge=1, description="Prompt vectors put in front of the input.")
    bottleneck: int = Field(800, ge=1, description="Width of the MLP's hidden layer.")
    activation: Literal["relu", "tanh", "sigmoid"] = Field("relu", description="The MLP's activation.")
    layer_norm: bool = Field(True, description="LayerNorm on the MLP's output.")
    residual: bool = Field(True, description="Add the MLP's output to the prompt vector (the skip connection); false "
                                             "replaces the vector by it.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the MLP's output, before the LayerNorm.")
    separate_mlps: bool = Field(False, description="One MLP per prompt token instead of one shared by all (the "
                                                   "paper's ablation).")

    def unresizable(self) -> str | None:
        # One shared MLP reads every token: a resize leaves it as it is. Per-token MLPs would have to be made or dropped.
        if self.separate_mlps:
            return ("method residual with separate_mlps has one MLP per prompt token, which a resize would have to "
                    "create or drop; set method.separate_mlps=false (one MLP shared by all tokens) to evolve "
                    "method.num_tokens")
        return None

    def build(self, info, generator):
        from ptray.core.methods.residual.model import ResidualPrompt

        return ResidualPrompt(self, info, generator)
