"""PTP regularizers (Chen et al., EMNLP 2023) by the `space/kind` used in YAML (`perturbation: {space: ..., kind:
...}`). A regularizer registers its config class with `@register_perturbation("space", "kind")`; this module and the
config classes import no torch (the config schema reads them), its implementation lives in its model.py, which only
`build` imports."""
from __future__ import annotations

from typing import Any, Callable, ClassVar

from pydantic import ConfigDict, Field, model_validator

from ptray.config_base import Strict


class PerturbationConfig(Strict):
    """Base of every PTP regularizer's config: `space` and `kind` are the registered ones."""

    # The YAML key is `lambda` (a Python keyword, hence the alias); dumps write it back as `lambda`.
    model_config = ConfigDict(serialize_by_alias=True, validate_by_name=True, validate_by_alias=True)
    key: ClassVar[str]  # "space/kind", set by @register_perturbation

    space: str = Field(description="Where the perturbation acts: embedding (the input's word embeddings) or text "
                                   "(its tokens).")
    kind: str = Field(description="random (PTP-RN) or adversarial (PTP-ADV).")
    lambda_: float = Field(1.0, ge=0, alias="lambda",
                           description="loss = L(clean) + lambda * L(perturbed); 0 turns the regularizer off (no "
                                       "perturbed pass at all).")

    @model_validator(mode="before")
    @classmethod
    def _own_key(cls, data: Any) -> Any:
        # The registration names the class, so a config of it needs no space and kind (and may not carry others).
        if isinstance(data, dict):
            space, kind = cls.key.split("/")
            given = f"{str(data.get('space', space)).lower()}/{str(data.get('kind', kind)).lower()}"
            if given != cls.key:
                raise ValueError(f"space/kind {given!r} given to the config of perturbation {cls.key!r}")
            return {**data, "space": space, "kind": kind}
        return data

    def build(self, tokenizer, seed: int, rank: int = 0):
        """The regularizer (a ptray.core.perturbations.base.Perturbation) drawing from `seed` on this rank. Each
        imports its model.py here: torch only when training."""
        raise NotImplementedError(f"perturbation {self.key!r} does not say how to build itself")


PERTURBATIONS: dict[str, type[PerturbationConfig]] = {}


def register_perturbation(space: str, kind: str) -> Callable[[type[PerturbationConfig]], type[PerturbationConfig]]:
    """Class decorator: `@register_perturbation("embedding", "random")` on a PerturbationConfig subclass makes it the
    config of `perturbation: {space: embedding, kind: random}`."""
    key = f"{space}/{kind}"

    def register(cls: type[PerturbationConfig]) -> type[PerturbationConfig]:
        if key in PERTURBATIONS:
            raise ValueError(f"perturbation {key!r} is registered twice: {PERTURBATIONS[key].__qualname__} and "
                             f"{cls.__qualname__}")
        cls.key = key
        PERTURBATIONS[key] = cls
        return cls

    return register
