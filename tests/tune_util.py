"""Helpers of the `ptray tune` tests: a tiny experiment file, the CLI in a subprocess, an experiment's results."""
import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO, tiny_config


def write_config(path: Path, data_dir: Path, tune: dict, **sections) -> Path:
    """A tiny RTE experiment (MiniLM, 6 steps, 32 eval examples) with the given tune section, as a YAML file."""
    path.write_text(json.dumps(tiny_config(data_dir, tune=tune, **sections)))  # JSON is YAML
    return path


def ptray_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "ptray.cli", *map(str, args)]


# A guard against a hung run, not a speed check: on a loaded 2-core machine a two-worker ZeRO-3 trial alone has taken
# over 10 minutes.
def run_ptray(*args, timeout: int = 1500, **env: str) -> subprocess.CompletedProcess:
    # The tests' own environment (offline hub) reaches the CLI and the Ray workers it starts; `env` adds to it.
    return subprocess.run(ptray_cmd(*args), capture_output=True, text=True, cwd=REPO, timeout=timeout,
                          env={**os.environ, **env})


def results(exp_dir: Path) -> dict[tuple[str, int], dict]:
    """{(config_id, seed): result.json} of an experiment folder."""
    return {(p.parent.parent.name, int(p.parent.name.removeprefix("seed"))): json.loads(p.read_text())
            for p in sorted((exp_dir / "runs").glob("*/seed*/result.json"))}
