"""Prompt methods by the name used in YAML (`method.name`), and what each declares about itself.

A method registers its config class with `@register_method("name")`; the class holds the method's keys and its
capabilities, which the config schema, the training recipe and seed packing read instead of checking names. This
module and the config classes import no torch (the schema reads them on the driver); a method's nn.Module lives in
its model.py, which only `build` imports.
"""
from __future__ import annotations

from typing import Any, Callable, ClassVar

from pydantic import Field, model_validator

from ptray.config_base import Strict

# The method of a config without a `method:` section.
DEFAULT_METHOD = "vanilla"


class MethodConfig(Strict):
    """Base of every prompt method's config: `name` is the registered one."""

    method_name: ClassVar[str]  # set by @register_method

    name: str = Field(description="The prompt method; its keys are the other keys of this section.")

    @model_validator(mode="before")
    @classmethod
    def _own_name(cls, data: Any) -> Any:
        # The registration names the class, so a config of it needs no name (and may not carry another).
        if isinstance(data, dict):
            given = str(data.get("name", cls.method_name)).lower()
            if given != cls.method_name:
                raise ValueError(f"name {given!r} given to the config of method {cls.method_name!r}")
            return {**data, "name": cls.method_name}
        return data

    # --- capabilities: what the rest of ptray knows of a method without building it ------------------------------
    def prompt_tokens(self) -> int:
        """Prompt vectors the method puts into the input sequence the backbone reads (what perturbation.prompt
        perturbs); 0 for none."""
        return 0

    def prefix_tokens(self) -> int:
        """Key/value slots per attention layer that the method hands the backbone as past_key_values; 0 for none."""
        return 0

    def added_positions(self) -> int:
        """Positions the backbone reads beyond the input's (checked against the model's limit): prefix slots count
        as past tokens, so the input starts after them."""
        return self.prompt_tokens() + self.prefix_tokens()

    def unpackable(self) -> str | None:
        """Why seeds of this method cannot train together (ptray.core.packing), with the fix; None when they can. Every
        method's seeds keep their own parameters, random stream and rows, so a pack refuses only for a reason of the
        method's own (none of the built-in ones has one)."""
        return None

    def unresizable(self) -> str | None:
        """Why a checkpoint of this method cannot go on at another method.num_tokens (PBT over the prompt length,
        ptray.core.resize), with the fix; None when it can. A method that can says which of its parameters hold one row
        per prompt token (PromptMethod.token_rows)."""
        return (f"method {self.name} has no prompt length that a checkpoint can be resized to; evolve other knobs, or "
                f"give method.num_tokens as a list (a grid)")

    def build(self, info, generator):
        """The method's nn.Module (a ptray.core.methods.base.PromptMethod) on a backbone described by `info`,
        initialised from `generator`. Each method imports its model.py here: torch only when a model is built."""
        raise NotImplementedError(f"method {self.name!r} does not say how to build its module")


METHODS: dict[str, type[MethodConfig]] = {}


def register_method(name: str) -> Callable[[type[MethodConfig]], type[MethodConfig]]:
    """Class decorator: `@register_method("vanilla")` on a MethodConfig subclass makes it the config of
    `method.name: vanilla`. The name is written here only."""

    def register(cls: type[MethodConfig]) -> type[MethodConfig]:
        if name in METHODS:
            raise ValueError(f"method {name!r} is registered twice: {METHODS[name].__qualname__} and {cls.__qualname__}")
        cls.method_name = name
        METHODS[name] = cls
        return cls

    return register
