"""Prompt methods by the name used in YAML (`method.name`). A method is a folder: config.py registers its config class
with `@register_method("name")` (torch-free: the config schema reads it), model.py holds its nn.Module (see base.py
for the contract). Adding a method is adding a folder and its import below, which registers it."""
from ptray.core.methods.deep.config import DeepConfig
from ptray.core.methods.dynamic.config import DynamicConfig
from ptray.core.methods.registry import DEFAULT_METHOD, METHODS, MethodConfig, register_method
from ptray.core.methods.residual.config import ResidualConfig
from ptray.core.methods.vanilla.config import VanillaConfig

__all__ = ["DEFAULT_METHOD", "METHODS", "DeepConfig", "DynamicConfig", "MethodConfig", "ResidualConfig",
           "VanillaConfig", "register_method"]
