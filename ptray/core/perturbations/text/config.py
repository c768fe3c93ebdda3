"""The configs of PTP in text space: corrupt the input's tokens at random (PTP-RN: mask, replace or delete) or
adversarially (PTP-ADV: first-order HotFlip substitutions); the implementations are in model.py."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from ptray.core.perturbations.registry import PerturbationConfig, register_perturbation


@register_perturbation("text", "random")
class TextRandomConfig(PerturbationConfig):
    """PTP-RN in text space: each editable input token (not special, padding or an answer) is corrupted with
    probability p, freshly every step."""

    p: float = Field(0.1, gt=0, le=1, description="Probability that an editable token is corrupted.")
    op: Literal["mask", "replace", "delete"] = Field("mask", description="What happens to it: the mask token, a random "
                                                                         "vocabulary token, or deletion.")

    def build(self, tokenizer, seed: int, rank: int = 0):
        from ptray.core.perturbations.text.model import TextRandom

        return TextRandom(self, tokenizer, seed, rank)


@register_perturbation("text", "adversarial")
class TextAdversarialConfig(PerturbationConfig):
    """PTP-ADV in text space, first-order HotFlip (Ebrahimi et al. 2018): the k substitutions per row that raise the
    loss most to first order."""

    k: int = Field(2, ge=1, description="Most substituted tokens per row (per example; per option row for multiple "
                                        "choice).")

    def build(self, tokenizer, seed: int, rank: int = 0):
        from ptray.core.perturbations.text.model import TextAdversarial

        return TextAdversarial(self, tokenizer, seed, rank)
