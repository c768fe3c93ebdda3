"""`ptray export RUN_DIR --format peft OUT`: a trained seed's prompt as a folder that HF PEFT loads.

    PeftModel.from_pretrained(base_model, OUT)

What maps onto PEFT, and how:

* vanilla and residual prompts -> prompt tuning (PROMPT_TUNING). A residual prompt's adapter already holds the folded
  prompt P' (see ptray.core.methods.residual), which is a plain prompt.
* deep prompts -> prefix tuning (PREFIX_TUNING) without projection: ptray's flat prefix [L, layers * 2 * kv_heads *
  head_dim] has PEFT's layout, so it is saved as it is; a prefix made by a projection MLP is saved materialised (the
  MLP's output at evaluation), which PEFT loads exactly, but the MLP itself is not kept. Grouped-query attention maps
  onto PEFT's GQA handling (token_dim = kv_heads * head_dim). Encoder-decoder models are refused: ptray feeds the
  prefixes to T5's encoder, PEFT's prefix tuning to the decoder.
* dynamic prompts are refused by name: the prompt depends on a selector that reads every input, which PEFT has no
  place for.

The PEFT task type follows the family: causal LMs CAUSAL_LM (next-token logits), T5-style SEQ_2_SEQ_LM, encoders
FEATURE_EXTRACTION (hidden states of a bare AutoModel). PEFT has no head that matches ptray's encoder scoring (the
mean of the input's own hidden states into a trained linear layer), so that head is saved beside the adapter
(ptray_head.safetensors). Every export also carries ptray_export.json (how ptray scores: label token ids, pooling,
where the input starts in PEFT's outputs), ptray_scoring.py (that scoring over a PeftModel's outputs, in torch alone;
a copy of ptray/core/peft_scoring.py) and a README.md.

Nothing here loads model weights: the export reads the run folder, the model's config and its tokenizer.
"""
from __future__ import annotations

import json
from pathlib import Path

from ptray.layout import ADAPTER_FILE, RESULT_FILE

FORMATS = ("peft",)

# What an export writes; --overwrite replaces these and leaves anything else in the folder alone.
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
INFO_FILE = "ptray_export.json"
HEAD_FILE = "ptray_head.safetensors"
SCORING_FILE = "ptray_scoring.py"
README_FILE = "README.md"
OWN_FILES = (PEFT_CONFIG, PEFT_WEIGHTS, INFO_FILE, HEAD_FILE, SCORING_FILE, README_FILE)

TASK_TYPES = {"causal": "CAUSAL_LM", "seq2seq": "SEQ_2_SEQ_LM", "encoder": "FEATURE_EXTRACTION"}
AUTO_CLASSES = {"causal": "AutoModelForCausalLM", "seq2seq": "AutoModelForSeq2SeqLM", "encoder": "AutoModel"}


class ExportError(ValueError):
    """A run that cannot be exported as asked; the message says which and why."""


def peft_type(method: dict, family: str) -> str:
    """The PEFT method a ptray method maps onto, or ExportError naming the method and why it has none."""
    name = method.get("name")
    if name in ("vanilla", "residual"):
        return "PROMPT_TUNING"
    if name == "deep":
        if family == "seq2seq":
            raise ExportError(
                "method deep on an encoder-decoder model has no PEFT equivalent: ptray feeds the prefixes to the "
                "encoder's self-attention layers, PEFT's prefix tuning feeds them to the decoder's"
            )
        return "PREFIX_TUNING"
    if name == "dynamic":
        if method.get("mode") == "task_position":
            raise ExportError(
                "method dynamic (mode task_position): its learned split point puts part of the prompt after the "
                "input, which PEFT's prompt tuning (a prompt in front of the input) cannot express"
            )
        raise ExportError("method dynamic: its per-input selector has no PEFT equivalent (the prompt it builds "
                          f"depends on each input; mode {method.get('mode')})")
    raise ExportError(f"method {name}: no PEFT export is known for it")


def trained_result(run_dir: Path, use: str) -> dict:
    """result.json of a seed's folder that holds a trained prompt (ValueError naming what is missing otherwise):
    what `ptray export` and `ptray landscape` start from."""
    f = run_dir / RESULT_FILE
    if not f.is_file():
        raise ValueError(f"{run_dir} holds no {RESULT_FILE}: pass a seed's folder written by `ptray train` or "
                         f"`ptray tune` (DIR/runs/<config_id>/seed<N>)")
    result = json.loads(f.read_text())
    if result.get("status") != "ok":
        raise ValueError(f"{run_dir}: seed {result.get('seed')} failed ({result.get('reason')}); it has no trained "
                         f"prompt to {use}")
    if not (run_dir / ADAPTER_FILE).is_file():
        raise ValueError(f"{run_dir} holds no {ADAPTER_FILE} (the trained prompt); the run ended before saving it")
    return result


def check_export(run_dir: str | Path, fmt: str, out: str | Path, overwrite: bool = False) -> dict:
    """Every check that needs no model, so bad input fails in a second. Returns the run's result.json."""
    run_dir, out = Path(run_dir), Path(out)
    if fmt not in FORMATS:
        raise ExportError(f"format {fmt!r} is not known; allowed: {', '.join(FORMATS)}")
    try:
        result = trained_result(run_dir, "export")
    except ValueError as e:
        raise ExportError(str(e)) from None
    peft_type(result.get("config", {}).get("method", {}), result.get("family"))
    if out.exists() and not out.is_dir():
        raise ExportError(f"output {out} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"output folder {out} is not empty; pass --overwrite to replace an export there, or give "
                          f"another folder")
    return result


def export(run_dir: str | Path, fmt: str, out: str | Path, overwrite: bool = False) -> dict:
    """Write the export of one trained seed to `out`; returns what ptray_export.json holds (+ the files written)."""
    result = check_export(run_dir, fmt, out, overwrite)
    return export_peft(Path(run_dir), Path(out), result)


def export_peft(run_dir: Path, out: Path, result: dict) -> dict:
    from safetensors.torch import load_file, save_file

    from ptray.config import config_from_dict
    from ptray.core import backbone as bb

    cfg = config_from_dict(result["config"], str(run_dir / RESULT_FILE))
    family = result["family"]
    kind = peft_type(result["config"]["method"], family)
    state = load_file(str(run_dir / ADAPTER_FILE))
    method_state = {k.removeprefix("method."): v for k, v in state.items() if k.startswith("method.")}
    head = {k.removeprefix("head."): v for k, v in state.items() if k.startswith("head.")}
    hf_config = bb.load_hf_config(cfg.model)
    geometry = _geometry(hf_config)

    if kind == "PROMPT_TUNING":
        if set(method_state) != {"prompt"}:
            raise ExportError(f"{run_dir}/{ADAPTER_FILE} holds {sorted(state)}; method {cfg.method.name} should have "
                              f"saved one prompt (method.prompt)")
        weights = method_state["prompt"]
        peft_fields = {"token_dim": int(weights.shape[1]), "num_attention_heads": geometry["num_heads"],
                       # The prompt goes in front of the input only (for T5: of the encoder's input).
                       "num_transformer_submodules": 1, "prompt_tuning_init": "RANDOM",
                       "prompt_tuning_init_text": None, "tokenizer_name_or_path": None, "tokenizer_kwargs": None}
    else:
        weights, kv_heads, head_dim = _flat_prefix(cfg, hf_config, family, geometry, method_state)
        # PEFT views the flat prefix as [L, layers * 2, num_attention_heads, token_dim // num_attention_heads]:
        # with grouped-query attention its heads are the key/value heads (as PEFT sets them itself for GQA models).
        peft_fields = {"token_dim": kv_heads * head_dim, "num_attention_heads": kv_heads,
                       "num_transformer_submodules": 1, "prefix_projection": False,
                       "encoder_hidden_size": kv_heads * head_dim, "init_weights": None}
    num_tokens = int(weights.shape[0])
    if family == "encoder" and not head:
        raise ExportError(f"{run_dir}/{ADAPTER_FILE} holds no head (head.weight, head.bias); an encoder run scores "
                          f"with one")

    base_path, base_kwargs = _base_model(cfg.model.name)
    peft_config = {
        "peft_type": kind, "task_type": TASK_TYPES[family], "base_model_name_or_path": base_path,
        "revision": None, "inference_mode": True, "num_virtual_tokens": num_tokens,
        "num_layers": geometry["num_layers"], **peft_fields,
    }
    info = _info(cfg, hf_config, result, run_dir, family, kind, num_tokens, base_path, base_kwargs)

    out.mkdir(parents=True, exist_ok=True)
    for name in OWN_FILES:  # a previous export's files (--overwrite), e.g. an encoder's head
        (out / name).unlink(missing_ok=True)
    (out / PEFT_CONFIG).write_text(json.dumps(peft_config, indent=2))
    save_file({"prompt_embeddings": weights.float().contiguous()}, str(out / PEFT_WEIGHTS),
              metadata={"format": "pt"})
    files = [PEFT_CONFIG, PEFT_WEIGHTS]
    if family == "encoder":
        save_file({k: v.float().contiguous() for k, v in head.items()}, str(out / HEAD_FILE))
        files.append(HEAD_FILE)
    (out / INFO_FILE).write_text(json.dumps(info, indent=2))
    (out / SCORING_FILE).write_text((Path(__file__).parent / "peft_scoring.py").read_text())
    (out / README_FILE).write_text(_readme(info))
    files += [INFO_FILE, SCORING_FILE, README_FILE]
    return {**info, "files": [str(out / f) for f in files]}


def _geometry(hf_config) -> dict:
    """Layers, heads and hidden width as ptray.core.backbone reads them from a loaded model's config."""
    c = hf_config
    return {
        "hidden_size": getattr(c, "hidden_size", None) or getattr(c, "d_model", None) or c.n_embd,
        "num_layers": getattr(c, "num_hidden_layers", None) or getattr(c, "num_layers", None) or c.n_layer,
        "num_heads": getattr(c, "num_attention_heads", None) or getattr(c, "num_heads", None) or c.n_head,
    }


def _flat_prefix(cfg, hf_config, family: str, geometry: dict, method_state: dict):
    """(prefix [L, layers * 2 * kv_heads * head_dim] as PEFT stores it, kv_heads, head_dim), computed by DeepPrompt
    itself from the saved tensors (so a projection MLP's output is exactly what ptray evaluated with)."""
    from types import SimpleNamespace

    import torch

    from ptray.core.methods.base import BackboneInfo
    from ptray.core.methods.deep.model import DeepPrompt

    # DeepPrompt reads the backbone's config only: the prefix's geometry, nothing of the weights.
    info = BackboneInfo(geometry["hidden_size"], geometry["num_layers"], geometry["num_heads"], family,
                        word_embeddings=None, tokenizer=None, backbone=SimpleNamespace(config=hf_config))
    method = DeepPrompt(cfg.method, info, torch.Generator().manual_seed(0))
    try:
        method.load_state_dict(method_state, strict=True)
    except RuntimeError as e:
        raise ExportError(f"the saved deep prompt does not fit model {cfg.model.name!r}: {e}") from None
    method.eval()
    with torch.no_grad():
        prefixes = method.prefixes()  # [layers, 2, kv_heads, L, head_dim]
    flat = prefixes.permute(3, 0, 1, 2, 4).reshape(prefixes.shape[3], -1)
    return flat.detach().clone(), method.kv_heads, method.head_dim


def _base_model(name: str) -> tuple[str, dict]:
    """What PEFT's base_model_name_or_path should say: an alias's local folder (with the loading kwargs it needs,
    e.g. a GGUF file), a local folder as an absolute path, else the hub name."""
    from ptray.core import backbone as bb

    path, kwargs = bb.resolve(name)
    if Path(path).exists():
        path = str(Path(path).resolve())
    return path, kwargs


def _info(cfg, hf_config, result: dict, run_dir: Path, family: str, kind: str, num_tokens: int, base_path: str,
          base_kwargs: dict) -> dict:
    """ptray_export.json: how ptray scores, for whoever loads the export without ptray."""
    from transformers import AutoTokenizer

    from ptray.core.data import Encoder
    from ptray.core.tasks import build_task

    task = build_task(cfg.task)
    tokenizer = AutoTokenizer.from_pretrained(base_path, **base_kwargs)
    encoder = Encoder(task, tokenizer, family, cfg.task.max_seq_length)
    return {
        "format": "peft", "peft_type": kind, "task_type": TASK_TYPES[family],
        "base_model_name_or_path": base_path, "base_model_kwargs": base_kwargs, "auto_class": AUTO_CLASSES[family],
        "model": cfg.model.name, "family": family, "dtype": cfg.model.dtype,
        "method": cfg.method.name, "num_virtual_tokens": num_tokens,
        # Where the input starts in PEFT's outputs: prompt tuning puts its tokens in front of it, a prefix does not.
        "prompt_positions": num_tokens if kind == "PROMPT_TUNING" else 0,
        "pooling": cfg.model.pooling if family == "encoder" else None,
        "task": cfg.task.name, "multiple_choice": task.is_multiple_choice,
        "labels": task.get_labels(), "label_words": task.get_label_words() if family != "encoder" else None,
        "label_token_ids": encoder.label_token_ids or None,
        "decoder_start_token_id": hf_config.decoder_start_token_id if family == "seq2seq" else None,
        "max_seq_length": cfg.task.max_seq_length,
        "run": {"dir": str(run_dir.resolve()), "seed": result.get("seed"), "report_split": result.get("report_split"),
                "report_metrics": result.get("report_metrics"), "best_step": result.get("best_step")},
    }


def _readme(info: dict) -> str:
    family, kind = info["family"], info["peft_type"]
    kwargs = "".join(f", {k}={v!r}" for k, v in info["base_model_kwargs"].items())
    # The backbone's dtype in training: bf16 numbers are only reproduced in bf16.
    kwargs += ", dtype=torch.bfloat16" if info["dtype"] == "bf16" else ""
    imports = "import torch\n" if info["dtype"] == "bf16" else ""
    load = (f"```python\n{imports}from peft import PeftModel\nfrom transformers import {info['auto_class']}\n\n"
            f"base = {info['auto_class']}.from_pretrained({info['base_model_name_or_path']!r}{kwargs})\n"
            f"model = PeftModel.from_pretrained(base, \"path/to/this/folder\").eval()\n```\n")
    what = {
        "PROMPT_TUNING": f"a soft prompt of {info['num_virtual_tokens']} vectors that PEFT puts in front of the input's "
                         f"embeddings (PEFT prompt tuning)",
        "PREFIX_TUNING": f"a key/value prefix of {info['num_virtual_tokens']} slots for every attention layer (PEFT "
                         f"prefix tuning, stored materialised: prefix_projection false)",
    }[kind]
    score = {
        "causal": "ptray's prediction is the label whose word's first token (`label_token_ids`, in label order) has the "
                  "largest next-token logit at the input's last attended position. PEFT's logits cover the prompt too "
                  "(prompt tuning): the input starts at position `prompt_positions`.",
        "seq2seq": "ptray's prediction is the label whose word's first token (`label_token_ids`) has the largest logit "
                   "of the decoder's first step (decoder input: `decoder_start_token_id`).",
        "encoder": "PEFT has no head that matches ptray's: ptray averages the last hidden states over the input's own "
                   "tokens (padding and prompt excluded; `pooling: cls` takes its first token) and applies a trained "
                   "linear layer, saved here as `ptray_head.safetensors` (`weight`, `bias`). PEFT's prompt learning "
                   "drops `token_type_ids`; `ptray_scoring.py` adds each input token's segment embedding to its word "
                   "embedding instead, so sentence pairs read as they did in training.",
    }[family]
    n = info["max_seq_length"]
    inputs = (f"the task's text or text pair (ptray/core/tasks/{info['task']}.py) with the tokenizer's special tokens, "
              f"truncated to {n} tokens" if family == "encoder" else
              f"the task's text template (`lm_source` in ptray/core/tasks/{info['task']}.py) with the tokenizer's "
              f"special tokens, without a trailing EOS, keeping its last {n} tokens")
    mc = ("This task is multiple-choice: ptray scores each (example, option) row and predicts the best row of each "
          "example; `PtrayScorer.scores` returns one score per row (pass `target_mask` for a causal LM, "
          "`decoder_targets` for a T5-style model).\n\n" if info["multiple_choice"] else "")
    return (
        f"# ptray export: {info['method']} prompt for {info['model']} on {info['task']}\n\n"
        f"Written by `ptray export --format peft` from `{info['run']['dir']}` (seed {info['run']['seed']}, "
        f"{info['run']['report_split']}: {info['run']['report_metrics']}). It holds {what}, for the "
        f"{info['auto_class']} at `{info['base_model_name_or_path']}` (PEFT task type {info['task_type']}).\n\n"
        f"## Load\n\n{load}\n"
        f"## Score as ptray does\n\n{score}\n\n{mc}"
        f"`ptray_scoring.py` (torch only) does this over the PeftModel's outputs:\n\n"
        f"```python\nfrom ptray_scoring import PtrayScorer\n\nscorer = PtrayScorer(model, \"path/to/this/folder\")\n"
        f"predictions = scorer.predict(input_ids, attention_mask)   # encoders: token_type_ids=... too\n```\n\n"
        f"Inputs must be tokenised as ptray tokenised them, right-padded: {inputs}. With ptray installed, "
        f"`ptray.core.data.Encoder` and `collate` produce exactly these batches.\n\n"
        f"`ptray_export.json` records the rest: labels, label words and their token ids, pooling, where the input "
        f"starts in PEFT's outputs (`prompt_positions`).\n"
    )
