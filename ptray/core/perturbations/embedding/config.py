"""The configs of PTP in embedding space: noise on the input's word embeddings, random (PTP-RN) or adversarial
(PTP-ADV, PGD as in FreeLB's reference code); the implementations are in model.py."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from ptray.core.perturbations.registry import PerturbationConfig, register_perturbation


@register_perturbation("embedding", "random")
class EmbeddingRandomConfig(PerturbationConfig):
    """PTP-RN in embedding space: Gaussian or uniform noise on the input's word embeddings, resampled every step."""

    distribution: Literal["gaussian", "uniform"] = Field("gaussian", description="The noise's distribution.")
    sigma: float = Field(0.1, gt=0, description="Gaussian std or uniform half-range of each coordinate; with scale "
                                                "norm, in units of each vector's RMS coordinate.")
    # With scale norm, Gaussian noise has about sigma times the vector's norm (|e| / sqrt(H) per coordinate), on any
    # backbone.
    scale: Literal["absolute", "norm"] = Field("norm", description="sigma as an absolute value, or relative to each "
                                                                   "embedding's RMS coordinate.")
    prompt: bool = Field(False, description="Also perturb the prompt vectors as the backbone reads them, not only "
                                            "the input tokens.")

    def build(self, tokenizer, seed: int, rank: int = 0):
        from ptray.core.perturbations.embedding.model import EmbeddingRandom

        return EmbeddingRandom(self, tokenizer, seed, rank)


@register_perturbation("embedding", "adversarial")
class EmbeddingAdversarialConfig(PerturbationConfig):
    """PTP-ADV in embedding space: K-step PGD on a perturbation of the input's word embeddings, from a random start
    inside the epsilon ball. Defaults: FreeLB's RTE setting (K 3, 6e-2, 1.4e-1)."""

    steps: int = Field(3, ge=1, description="Ascent steps K.")
    alpha: float = Field(0.06, gt=0, description="Size of each ascent step.")
    epsilon: float = Field(0.14, gt=0, description="Radius of the ball the perturbation stays in.")
    norm: Literal["l2", "linf"] = Field("l2", description="l2: one ball per row over all its token embeddings "
                                                          "(FreeLB's convention); linf: a bound on every coordinate.")

    def build(self, tokenizer, seed: int, rank: int = 0):
        from ptray.core.perturbations.embedding.model import EmbeddingAdversarial

        return EmbeddingAdversarial(self, tokenizer, seed, rank)
