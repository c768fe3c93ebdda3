"""Identity of a searched config: a short stable hash of its overrides (the seed is never part of it), shared by the
Ray layer (folder names, trial configs) and the tracking layer (MLflow parent runs)."""
from __future__ import annotations

import hashlib
import json
from typing import Any


def config_id(overrides: dict[str, Any]) -> str:
    """12 hex chars of the sha1 of the overrides' canonical JSON (sorted keys): the same values give the same id."""
    canonical = json.dumps(overrides, sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(canonical.encode()).hexdigest()[:12]


def label(overrides: dict[str, Any]) -> str:
    """A readable name for a config: its searched values, or `base` when nothing is searched."""
    return ", ".join(f"{k}={v}" for k, v in overrides.items()) or "base"
