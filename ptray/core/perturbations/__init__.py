"""PTP regularizers (Chen et al., EMNLP 2023) by `space/kind` as used in YAML (`perturbation: {space: ..., kind: ...}`).
Adding one is adding a class with its config and a line here."""
from __future__ import annotations

from ptray.core.perturbations.base import AddToInputs, Perturb, Perturbation
from ptray.core.perturbations.embedding import EmbeddingAdversarial, EmbeddingRandom
from ptray.core.perturbations.text import TextAdversarial, TextRandom

PERTURBATIONS: dict[str, type[Perturbation]] = {
    "embedding/random": EmbeddingRandom,
    "embedding/adversarial": EmbeddingAdversarial,
    "text/random": TextRandom,
    "text/adversarial": TextAdversarial,
}


def build_perturbation(cfg, tokenizer, rank: int = 0) -> Perturbation | None:
    """The configured regularizer, or None: without a section, and with lambda 0, there is no perturbed pass at all,
    so the run is exactly the unregularized one (and a sweep over lambda includes it at no extra cost)."""
    p = cfg.perturbation
    if p is None or p.lambda_ == 0:
        return None
    # Its draws are training noise: the order seed's (ExperimentConfig.source_seeds).
    return PERTURBATIONS[f"{p.space}/{p.kind}"](p, tokenizer, cfg.source_seeds()["order"], rank)


__all__ = ["PERTURBATIONS", "AddToInputs", "Perturb", "Perturbation", "build_perturbation"]
