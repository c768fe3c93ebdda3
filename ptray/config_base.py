"""What every section of the experiment config builds on: the strict base model and the error a bad config raises.

Below ptray.config, so that the method, perturbation and task registries (whose config classes the schema reads)
can build on it without importing the schema that imports them.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from pydantic_core import PydanticCustomError


class ConfigError(ValueError):
    """A config that cannot run; the message says which key is wrong and how to fix it."""


class Strict(BaseModel):
    """A config section. Unknown keys are typos more often than not: they are refused, naming the section's keys."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        keys = {f.alias or name for name, f in cls.model_fields.items()}
        accepted = keys | set(cls.model_fields)  # a field with an alias is also accepted by its name
        unknown = [k for k in data if k not in accepted]
        if unknown:
            valid = ", ".join(sorted(keys))
            raise ValidationError.from_exception_data(cls.__name__, [
                {"type": PydanticCustomError("unknown_key", "unknown key; the keys of this section: {valid}",
                                             {"valid": valid}), "loc": (k,), "input": data[k]} for k in unknown])
        return data
