"""The config as people read it. `ptray config` prints a resolved config -- every key with its value, its default,
where a derived value comes from, and its description -- as commented YAML or JSON; training logs the same text.
`ptray config --markdown` writes the schema's reference, docs/config.md."""
from __future__ import annotations

import json
import textwrap
import types
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from ptray.config import ExperimentConfig, TaskConfig
from ptray.layout import redact
from ptray.core.methods import DEFAULT_METHOD, METHODS, MethodConfig
from ptray.core.perturbations import PERTURBATIONS, PerturbationConfig

REFRESH_DOCS = "ptray config --markdown > docs/config.md"


@dataclass
class Entry:
    key: str  # dotted, as overrides and tune.search write it
    value: Any
    default: Any
    derived: str | None  # where the value comes from, when the config leaves the key to other keys
    description: str


def entries(cfg: ExperimentConfig, config_name: str | None = None,
            resolved: dict[str, tuple[Any, str]] | None = None) -> list[Entry]:
    """Every key of `cfg`. resolved: values decided outside the config (at training: the model's family, the
    device), with where they come from; they are shown like the config's own derived values."""
    derived = {**cfg.derived(config_name), **(resolved or {})}
    defaults = {"method.name": DEFAULT_METHOD,
                **{f"task.{k}": v for k, v in TaskConfig.task_defaults(cfg.task.name).items()}}
    out: list[Entry] = []

    def walk(model: BaseModel, dumped: dict, prefix: str) -> None:
        for name, f in type(model).model_fields.items():
            key, value = f"{prefix}{f.alias or name}", getattr(model, name)
            if isinstance(value, BaseModel):
                walk(value, dumped[f.alias or name], key + ".")
                continue
            value, source = derived.get(key, (dumped[f.alias or name], None))
            out.append(Entry(key, value, defaults.get(key, _default(f)), source, f.description or ""))

    walk(cfg, cfg.to_dict(), "")
    return out


def _default(f: FieldInfo) -> Any:
    if f.default is not PydanticUndefined:
        return f.default
    return f.default_factory() if f.default_factory is not None else None


def _is_section(annotation) -> bool:
    return any(isinstance(a, type) and issubclass(a, BaseModel) for a in (annotation, *get_args(annotation)))


def _show(value: Any) -> str:
    """A value as YAML reads it back: plain where that is unambiguous, JSON (valid YAML) otherwise."""
    if isinstance(value, str) and value and yaml.safe_load(value) == value and ": " not in value and " #" not in value:
        return value
    return json.dumps(value)


def as_text(cfg: ExperimentConfig, config_name: str | None = None,
            resolved: dict[str, tuple[Any, str]] | None = None) -> str:
    """The resolved config as YAML: each key's description in a comment above it; after its value, where a derived
    value comes from and the default where the value is another. Credentials in URIs are redacted: the core logs
    this text."""
    lines, section = [], None
    for e in entries(cfg, config_name, resolved):
        parts = e.key.split(".")
        for depth in range(len(parts) - 1):
            head = ".".join(parts[: depth + 1])
            if section is None or not (section + ".").startswith(head + "."):
                lines.append(f"{'  ' * depth}{parts[depth]}:")
        section = ".".join(parts[:-1])
        indent = "  " * (len(parts) - 1)
        lines += textwrap.wrap(e.description, 116 - len(indent), initial_indent=f"{indent}# ",
                               subsequent_indent=f"{indent}# ")
        # A derived value is the default, taken from elsewhere.
        note = f"from {e.derived}" if e.derived else f"default {_show(e.default)}" if e.value != e.default else ""
        line = f"{indent}{parts[-1]}: {_show(e.value)}"
        lines.append(f"{line:<60}  # {note}" if note else line)
    return redact("\n".join(lines))


def as_json(cfg: ExperimentConfig, config_name: str | None = None) -> str:
    return redact(json.dumps({e.key: {"value": e.value, "default": e.default, "derived_from": e.derived,
                                      "description": e.description} for e in entries(cfg, config_name)}, indent=2))


# --- the reference: docs/config.md ----------------------------------------------------------------------------------
def markdown() -> str:
    """Every key of every section, method and perturbation, from the schema alone (no environment: the defaults that
    depend on it are described, not shown)."""
    out = ["# Config reference", "",
           f"Generated from the schema (`ptray/config.py`, the registered methods and perturbations) by `{REFRESH_DOCS}`; "
           "a test checks that it is current. `ptray config CONFIG [key=value ...]` shows a config with every value "
           "resolved.", ""]
    for name, f in ExperimentConfig.model_fields.items():
        out += [f"## {name}", "", f.description or "", ""]
        if name == "method":
            out += _table(MethodConfig, "method.")
            for method, cls in sorted(METHODS.items()):
                out += [f"### method: {method}", "", _doc(cls), "", _capabilities(cls()), ""]
                out += _table(cls, "method.", skip=MethodConfig.model_fields)
        elif name == "perturbation":
            out += _table(PerturbationConfig, "perturbation.")
            for key, cls in sorted(PERTURBATIONS.items()):
                out += [f"### perturbation: {key}", "", _doc(cls), ""]
                out += _table(cls, "perturbation.", skip=PerturbationConfig.model_fields)
        else:
            out += _table(_model_of(f.annotation), f"{name}.")
    return "\n".join(out)


def _doc(cls: type) -> str:
    return " ".join((cls.__doc__ or "").split())


def _capabilities(m: MethodConfig) -> str:
    tokens = f"{m.prompt_tokens()} prompt vectors in the input" if m.prompt_tokens() else "no prompt vectors in the input"
    prefix = f", {m.prefix_tokens()} key/value prefix slots per layer" if m.prefix_tokens() else ""
    refusal, fixed = m.unpackable(), m.unresizable()
    return (f"With its defaults: {tokens}{prefix}. Seed packing: " + (f"no: {refusal}." if refusal else "yes.")
            + " PBT over method.num_tokens (resizing a checkpoint's prompt): " + (f"no: {fixed}." if fixed else "yes."))


def _model_of(annotation) -> type[BaseModel]:
    return next(a for a in (annotation, *get_args(annotation)) if isinstance(a, type) and issubclass(a, BaseModel))


def _table(model: type[BaseModel], prefix: str, skip=()) -> list[str]:
    rows, nested = ["| key | type | default | description |", "|---|---|---|---|"], []
    for name, f in model.model_fields.items():
        if name in skip:
            continue
        key = prefix + (f.alias or name)
        if _is_section(f.annotation):
            nested.append((key, f))
        if _is_section(f.annotation):
            default = "(section)"
        elif f.is_required():  # filled in from elsewhere: the description says from where
            default = "see description"
        else:
            default = _show(_default(f))
        description = (f.description or "").replace("|", "\\|")
        rows.append(f"| `{key}` | {_type(f.annotation)} | {default} | {description} |")
    out = rows + [""]
    for key, f in nested:
        out += [f"### {key}", "", _doc(_model_of(f.annotation)), ""] + _table(_model_of(f.annotation), key + ".")
    return out


def _type(a) -> str:
    origin, args = get_origin(a), get_args(a)
    if a is type(None):
        return "null"
    if origin is Annotated:  # a constrained type (ptray.config.Seed): shown as the type it constrains
        return _type(args[0])
    if origin is Literal:
        return " \\| ".join(_show(x) for x in args)
    if origin in (Union, types.UnionType):
        return " or ".join(_type(x) for x in args)
    if isinstance(a, type) and issubclass(a, BaseModel):
        return "section"
    if origin is list:
        return f"list of {_type(args[0])}"
    if origin is dict:
        return "mapping"
    return getattr(a, "__name__", str(a))
