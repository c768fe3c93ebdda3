"""The experiment folder: every file and folder name in it, how a config and a seed find their run folder, config ids
and dotted config keys, and how JSON is written there. The core, `ptray tune`, the results, MLflow and the report all read and
write a run through this module, so the contract is stated once. No torch and no Ray: the driver and the report import
it cheaply.

    DIR/experiment.json                      name, base config, seeds, configs {config_id: {overrides, label}}, uid
                                             (MLflow finds the runs by it), folder (where it last ran: a move shows)
    DIR/runs/<config_id>/seed<N>/            one per (config, seed), failed and stopped seeds included
        result.json                          the seed's outcome (status, reason, metrics, history, config)
        adapter.safetensors                  the trained prompt (the core's `train` writes both)
        landscape/landscape.json, .png       `ptray landscape` of that seed
    DIR/report/                              `ptray report` (report.md, stats.json, figures; configs/<config_id>/)
    DIR/confirm/                             the confirmation run on fresh seeds: an experiment folder of its own
    DIR/ray/                                 Ray Tune's storage (unless tune.storage_path says otherwise)
    DIR/logs/                                Ray's own output (ray.log) and each trial's (trials/)
    DIR/mlflow.db, DIR/mlartifacts/          the local MLflow store (unless tracking.uri / MLFLOW_TRACKING_URI)
    DIR/.ptray.lock                          held by the one `ptray tune` that owns the folder

`ptray train` writes one seed's result.json and adapter.safetensors straight into its --output folder.

Nothing ptray writes holds a credential: `write_json` passes its text through `redact` (the user:password part of a
URI such as http://user:pass@host or s3://KEY:SECRET@bucket becomes ***), as do the adapter's metadata, the logged
config and the MLflow tags. Every path read from the folder's own files (a config id in experiment.json) is checked to
stay inside the folder (`inside`).
"""
from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from ptray.config_base import ConfigError

EXPERIMENT_FILE = "experiment.json"
RUNS_DIR = "runs"
RESULT_FILE = "result.json"
ADAPTER_FILE = "adapter.safetensors"
LANDSCAPE_DIR = "landscape"
LANDSCAPE_FILE = "landscape.json"
REPORT_DIR = "report"
CONFIRM_DIR = "confirm"
RAY_DIR = "ray"
LOG_DIR = "logs"
DB_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
LOCK_FILE = ".ptray.lock"
_SEED_PREFIX = "seed"


# --- where a run lives ------------------------------------------------------------------------------------------------
def inside(root: str | Path, *parts: str) -> Path:
    """root/parts..., refused (ValueError) unless it lies inside `root`: the parts may come from the folder's own files
    (a tampered experiment.json can name a config `../../elsewhere`). Checked on the normalised path, not on resolved
    links, so a folder whose runs/ is a link to another disk still works."""
    root = Path(root)
    path = root.joinpath(*map(str, parts))
    base, full = os.path.normpath(os.path.abspath(root)), os.path.normpath(os.path.abspath(path))
    if not full.startswith(base.rstrip(os.sep) + os.sep):
        name = "/".join(map(str, parts))
        raise ValueError(f"{name!r} would lead out of {root} (to {full}): a name in the experiment folder's files "
                         "(experiment.json's config ids) was altered; restore the file or rerun the experiment")
    return path


def seed_dir(seed: int | str) -> str:
    """A seed's folder name, seed<N> (under runs/<config_id>/, and in a trial's checkpoint, which mirrors it)."""
    return f"{_SEED_PREFIX}{seed}"


def seed_of_dir(folder: str | Path) -> int:
    """The seed a seed<N> folder belongs to."""
    return int(Path(folder).name.removeprefix(_SEED_PREFIX))


def run_dir(experiment_dir: str | Path, config_id: str, seed: int) -> Path:
    return inside(Path(experiment_dir) / RUNS_DIR, config_id, seed_dir(int(seed)))


def result_files(experiment_dir: str | Path, config_id: str) -> list[Path]:
    """Every result.json of a config's seeds on disk."""
    return sorted(inside(Path(experiment_dir) / RUNS_DIR, config_id).glob(f"{seed_dir('*')}/{RESULT_FILE}"))


def owner(experiment_dir: str | Path) -> str | None:
    """The PID of the live `ptray tune` that owns the folder (holds the OS lock on DIR/.ptray.lock), when that is
    another process; None when none does (a lock file left by a killed run is not held) or this process is the owner."""
    try:
        f = open(Path(experiment_dir) / LOCK_FILE)
    except FileNotFoundError:
        return None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = f.read().strip() or "unknown"
            return None if pid == str(os.getpid()) else pid
        fcntl.flock(f, fcntl.LOCK_UN)
        return None


def result_problem(path: str | Path) -> str | None:
    """Why a result.json is not a seed's record (unreadable, not JSON, not an object with its seed and status), or
    None when it is one. A full disk or a killed copy truncates; a hand edit or another tool may write anything."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        return f"unreadable: {e}"
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not a seed's record (an object)"
    missing = [k for k in ("seed", "status") if k not in record]
    if missing:
        return f"no {' and no '.join(map(repr, missing))} key, so not a seed's record"
    if str(record["seed"]) != str(seed_of_dir(Path(path).parent)):
        return f"records seed {record['seed']!r} but lies in {Path(path).parent.name}/"
    return None


def set_aside(path: str | Path, why: str) -> Path:
    """Move a file or folder that cannot be used out of the way, under a name nothing reads (<name>.<why>-<time>),
    kept for inspection; returns the new path."""
    path = Path(path)
    aside = path.with_name(f"{path.name}.{why}-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(path, aside)
    return aside


def read_experiment_json(experiment_dir: str | Path) -> dict:
    path = Path(experiment_dir) / EXPERIMENT_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{experiment_dir} is not a ptray experiment folder: {EXPERIMENT_FILE} is missing; "
            f"pass the folder that `ptray tune` wrote (its --output)"
        )
    try:
        meta = json.loads(path.read_text())
    except ValueError as e:  # not JSON, or not UTF-8
        raise ConfigError(f"{path} is not valid JSON ({e}); it records the experiment (config, seeds, configs), so "
                          "restore it from a copy, or run the experiment again into another --output") from None
    if not isinstance(meta, dict):
        raise ConfigError(f"{path} holds a JSON {type(meta).__name__}, not the experiment's record (an object); "
                          "restore it from a copy, or run the experiment again into another --output")
    return meta


def check_output_dir(path: str | Path) -> None:
    """Refuse an output folder that cannot be written before anything runs, so no result is lost at the end: a file
    where the folder (or one of its parents) should be, or a folder this user may not write into."""
    path = Path(path)
    existing = next(p for p in [path, *path.parents] if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"output folder {path}: {existing} is a file, not a folder; choose another output folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"output folder {path}: {existing} is not writable by this user; choose another output "
                          "folder, or make it writable")


def write_json(path: str | Path, data: Any) -> None:
    """Write to a temporary file beside `path`, then rename it: a reader (the driver, the report, a resume) never sees
    half a file, even when the writer is killed. Credentials in URIs are redacted (`redact`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A name of its own per write, so two writers never share one; made with the usual permissions (not mkstemp's
    # owner-only ones), as the file it replaces.
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        text = redact(json.dumps(data, indent=2, default=_json_default))
        with open(tmp, "x") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _json_default(o: Any) -> Any:
    # numpy numbers (metrics computed with numpy) as numbers; anything else (a Path) as its text, never a lost result.
    return o.item() if isinstance(o, np.generic) else str(o)


# --- no credentials in what ptray writes -----------------------------------------------------------------------------
REDACTED = "***"
# The user-info part of a URI, up to its last @ before the host (a password may hold an unencoded @); never across
# a quote or white space, so in JSON text it stays within one string.
_USERINFO = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://)[^/?#\s\"]+@")


def redact(text: str) -> str:
    """`text` (a URI, a message, JSON) with the user:password of every URI in it replaced by ***."""
    return _USERINFO.sub(rf"\g<1>{REDACTED}@", text)


def without_redacted(uri: str) -> str:
    """A URI read back from the folder's files with its redacted credentials left out: the client then takes them from
    its usual environment (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD, AWS_ACCESS_KEY_ID / ...)."""
    return uri.replace(f"{REDACTED}@", "", 1)


# --- which config ---------------------------------------------------------------------------------------------------
def config_id(overrides: dict[str, Any]) -> str:
    """A searched config's identity (its folder name, its MLflow parent run): 12 hex chars of the sha1 of the
    overrides' canonical JSON (sorted keys), so the same values give the same id. The seed is never part of it."""
    canonical = json.dumps(overrides, sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(canonical.encode()).hexdigest()[:12]


def label(overrides: dict[str, Any]) -> str:
    """A readable name for a config: its searched values, a searched section by its dotted keys
    (`perturbation.space=text, perturbation.kind=random`, not a dict's repr), or `base` when nothing is searched."""
    return ", ".join(f"{k}={v}" for k, v in flatten(overrides).items()) or "base"


# --- dotted keys (`train.lr` is config["train"]["lr"]) ----------------------------------------------------------------
def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 0.1}} -> {"train.lr": 0.1}; an empty section stays a value ({})."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def lookup(config: dict[str, Any], key: str) -> Any:
    """The value at a dotted key; KeyError naming the first part that is missing."""
    node: Any = config
    for i, part in enumerate(key.split(".")):
        if not isinstance(node, dict) or part not in node:
            where = ".".join(key.split(".")[:i]) or "the config"
            raise KeyError(f"{key} is not a key of the experiment config ({where} has no {part!r})")
        node = node[part]
    return node


def with_values(config: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A copy of `config` with dotted keys set in order, missing sections made; ValueError where a key passes
    through a value."""
    out = copy.deepcopy(config)
    for key, value in values.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"{p!r} is a value, not a section")
        node[leaf] = value
    return out
