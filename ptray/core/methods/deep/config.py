"""The config of deep prompts (prefix tuning, Li & Liang 2021; P-tuning v2, Liu et al. 2022); its module is model.py.

Defaults follow P-tuning v2 (github.com/THUDM/P-tuning-v2): 20 prefix tokens (run_script/run_rte_bert.sh), no
projection and a 512-wide projection when asked (arguments.py), dropout 0.1 on the prefix.
"""
from __future__ import annotations

from pydantic import Field

from ptray.core.methods.registry import MethodConfig, register_method


@register_method("deep")
class DeepConfig(MethodConfig):
    """Trainable key/value prefixes that every attention layer of the frozen backbone attends to, optionally produced
    by a two-layer MLP (the prefix projection); the input sequence stays as it is."""

    num_tokens: int = Field(20, ge=1, description="Prefix slots per attention layer.")
    projection: bool = Field(False, description="Produce the prefixes with P-tuning v2's MLP (Linear, tanh, Linear) "
                                                "from num_tokens trainable vectors.")
    projection_hidden: int = Field(512, ge=1, description="Width of the projection's hidden layer.")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout on the prefixes, per row.")

    def prefix_tokens(self) -> int:
        return self.num_tokens

    def unresizable(self) -> str | None:
        return None  # every layer's prefix (or the projection's input vectors) has one row per token

    def build(self, info, generator):
        from ptray.core.methods.deep.model import DeepPrompt

        return DeepPrompt(self, info, generator)
