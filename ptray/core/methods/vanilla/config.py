"""The config of vanilla prompt tuning (Lester et al., 2021): L trainable vectors in front of the input embeddings;
its module is model.py."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ptray.core.methods.registry import MethodConfig, register_method


@register_method("vanilla")
class VanillaConfig(MethodConfig):
    """L trainable vectors in front of the input embeddings (Lester et al., 2021)."""

    num_tokens: int = Field(20, ge=1, description="Prompt vectors put in front of the input.")
    # Lester et al. found sampled-vocabulary init best.
    init: Literal["random", "vocab", "text"] = Field(
        "vocab", description="How the prompt starts: vocab samples embeddings of the 5,000 most common tokens, "
                             "random draws Gaussian noise at the embedding's scale, text embeds method.init_text.")
    init_text: str | None = Field(None, description="With init text: the words whose embeddings start the prompt "
                                                    "(repeated to fill num_tokens).")

    @model_validator(mode="after")
    def _text(self):
        if self.init == "text" and not self.init_text:
            raise ValueError("init: text needs method.init_text (the words whose embeddings start the prompt)")
        return self

    def prompt_tokens(self) -> int:
        return self.num_tokens

    def unresizable(self) -> str | None:
        return None

    def build(self, info, generator):
        from ptray.core.methods.vanilla.model import VanillaPrompt

        return VanillaPrompt(self, info, generator)
