"""PTP regularizers (Chen et al., EMNLP 2023) by `space/kind` as used in YAML (`perturbation: {space: ..., kind: ...}`).
A space is a folder: config.py registers each kind's config class with `@register_perturbation(space, kind)`
(torch-free: the config schema reads it), model.py implements them (see base.py for the contract). Adding one is
adding its config class and implementation; a new folder also needs its import below, which registers it."""
from __future__ import annotations

from ptray.core.perturbations.embedding.config import EmbeddingAdversarialConfig, EmbeddingRandomConfig
from ptray.core.perturbations.registry import PERTURBATIONS, PerturbationConfig, register_perturbation
from ptray.core.perturbations.text.config import TextAdversarialConfig, TextRandomConfig


def build_perturbation(cfg, tokenizer, rank: int = 0):
    """The configured regularizer (a base.Perturbation), or None: without a section, and with lambda 0, there is no
    perturbed pass at all, so the run is exactly the unregularized one (and a sweep over lambda includes it at no
    extra cost)."""
    p = cfg.perturbation
    if p is None or p.lambda_ == 0:
        return None
    # Its draws are training noise: the order seed's (ExperimentConfig.source_seeds).
    return p.build(tokenizer, cfg.source_seeds()["order"], rank)


__all__ = ["PERTURBATIONS", "EmbeddingAdversarialConfig", "EmbeddingRandomConfig", "PerturbationConfig",
           "TextAdversarialConfig", "TextRandomConfig", "build_perturbation", "register_perturbation"]
