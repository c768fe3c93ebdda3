"""What every section of the experiment config builds on: the strict base model and the error a bad config raises.

Below ptray.config, so that the method, perturbation and task registries (whose config classes the schema reads)
can build on it without importing the schema that imports them.
"""
from __future__ import annotations

from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from pydantic_core import PydanticCustomError


class ConfigError(ValueError):
    """A config that cannot run; the message says which key is wrong and how to fix it."""


class Strict(BaseModel):
    """A config section. Unknown keys are typos more often than not: they are refused, naming the section's keys.
    So are inf and NaN (no key means them; they fail late, in training), and a boolean where a number is expected
    (pydantic would read `batch_size: true` as 1)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

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
        fields = {f.alias or name: f for name, f in cls.model_fields.items()} | dict(cls.model_fields)
        booleans = [k for k, v in data.items() if _has_bool(v) and not _admits_bool(fields[k].annotation)]
        if booleans:
            raise ValidationError.from_exception_data(cls.__name__, [
                {"type": PydanticCustomError("boolean", "a boolean where a number or text is expected (YAML reads "
                                                        "true/false, yes/no, on/off as booleans); write the number, "
                                                        "or quote the text (e.g. 'yes')"),
                 "loc": (k,), "input": data[k]} for k in booleans])
        return data


def _has_bool(value: Any) -> bool:
    return isinstance(value, bool) or (isinstance(value, list) and any(isinstance(v, bool) for v in value))


def _admits_bool(annotation: Any) -> bool:
    """Whether a field's type takes a boolean as one (bool, Any, Literal[True, ...]), rather than coercing it."""
    if annotation is bool or annotation is Any:
        return True
    if get_origin(annotation) is Literal:
        return any(isinstance(a, bool) for a in get_args(annotation))
    return any(_admits_bool(a) for a in get_args(annotation))
