"""Helpers of the `ptray tune` tests: a tiny experiment file with a tune section. (The CLI in a subprocess and an
experiment's results are conftest's: other tests use them too.)"""
import json
from pathlib import Path

from conftest import tiny_config


def write_config(path: Path, data_dir: Path, tune: dict, **sections) -> Path:
    """A tiny RTE experiment (MiniLM, 6 steps, 32 eval examples) with the given tune section, as a YAML file."""
    path.write_text(json.dumps(tiny_config(data_dir, tune=tune, **sections)))  # JSON is YAML
    return path
