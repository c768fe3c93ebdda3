"""Prompt methods by the name used in YAML (`method.name`). Adding a method is adding a module and a line here."""
from ptray.core.methods.base import BackboneInfo, PromptMethod, Prompted
from ptray.core.methods.deep import DeepPrompt
from ptray.core.methods.dynamic import DynamicPrompt
from ptray.core.methods.residual import ResidualPrompt
from ptray.core.methods.vanilla import VanillaPrompt

METHODS: dict[str, type[PromptMethod]] = {
    "vanilla": VanillaPrompt,
    "residual": ResidualPrompt,
    "deep": DeepPrompt,
    "dynamic": DynamicPrompt,
}

__all__ = ["METHODS", "BackboneInfo", "PromptMethod", "Prompted"]
