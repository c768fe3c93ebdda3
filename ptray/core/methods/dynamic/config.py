"""The config of Dynamic Prompting (Yang et al., 2023); its module is model.py, which says what each mode does.
Reference code: github.com/Xianjun-Yang/DPT (defaults below say where they come from)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ptray.core.methods.registry import register_method
from ptray.core.methods.vanilla.config import VanillaConfig


@register_method("dynamic")
class DynamicConfig(VanillaConfig):
    """The prompt's position, length or representation chosen per input by a small selector (straight-through
    Gumbel-Softmax); num_tokens, init and init_text as for vanilla prompts (20 tokens, as in the reference code)."""

    mode: Literal["position", "length", "representation", "task_position", "position+representation"] = Field(
        "position", description="What is chosen: the split point of the prompt around the input (position), how "
                                "many prompt tokens are used (length), weights over a pool of prompts "
                                "(representation), one learned split point for all inputs (task_position), or "
                                "position+representation.")
    # Reference code: --k 4.
    pool_size: int = Field(4, ge=2, description="Representation modes: prompts in the pool.")
    pool_weights: Literal["softmax", "gumbel"] = Field(
        "softmax", description="Representation modes: how an input weighs the pool (softmax, or a Gumbel pick).")
    selector_hidden: int = Field(0, ge=0, description="0: one linear layer from the pooled input to the choice "
                                                      "logits, as in the reference code; > 0: a tanh MLP this wide.")
    # The reference anneals 1.0 -> 0.5 and reaches the floor after ~680 steps; 1e-3 per step reaches it after 693.
    tau0: float = Field(1.0, gt=0, description="Gumbel-Softmax temperature at step 0; tau = max(tau0 * "
                                               "exp(-anneal_rate * step), tau_min).")
    tau_min: float = Field(0.5, gt=0, description="The temperature's floor.")
    anneal_rate: float = Field(1e-3, ge=0, description="Temperature decay per optimizer step.")
    hard: bool = Field(True, description="Straight-through (one-hot forward) as in the paper; false mixes the "
                                         "choices softly (an ablation).")

    @model_validator(mode="after")
    def _temperatures(self):
        if self.tau_min > self.tau0:
            raise ValueError(
                f"method.tau_min ({self.tau_min}) is above method.tau0 ({self.tau0}); the temperature anneals down "
                f"from tau0 to tau_min: set tau_min <= tau0"
            )
        return self

    def unresizable(self) -> str | None:
        # What the selector learned is a choice among num_tokens + 1 positions or lengths (or a pool of prompts of
        # that length): at another length its outputs would mean other choices.
        return ("method dynamic chooses among method.num_tokens + 1 positions or lengths, so what its selector "
                "learned holds at one prompt length only; give method.num_tokens as a list (a grid: each length its "
                "own populations)")

    def build(self, info, generator):
        from ptray.core.methods.dynamic.model import DynamicPrompt

        return DynamicPrompt(self, info, generator)
