"""Backbones of real architectures with random weights, saved as local folders that `model.name` can point to. A GPU
machine without a network cannot fetch weights, and speed does not depend on them. The tokenizer is the gpu-kit's BERT
WordPiece one (vocab 30522), so every shape below keeps its layers but has a 30522-row embedding.

    python benchmarks/random_backbones.py OUT 135m 1.1b --tokenizer shared/gpu-kit/tok --device cuda
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

VOCAB = 30522
# name -> (model type, config fields); the shapes of the models named.
SHAPES = {
    "tiny": ("llama", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2)),  # a CPU check of the GPU code path, in seconds
    "135m": ("llama", dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                           num_key_value_heads=3)),  # SmolLM2-135M
    "1.1b": ("llama", dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                           num_key_value_heads=4)),  # TinyLlama-1.1B
    "llama-8b": ("llama", dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                               num_key_value_heads=8, rope_theta=500000.0)),  # Llama-3.1-8B
    "roberta-large": ("roberta", dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                      num_attention_heads=16, max_position_embeddings=514)),
    "t5-base": ("t5", dict(d_model=768, d_ff=3072, d_kv=64, num_layers=12, num_heads=12)),
    "t5-large": ("t5", dict(d_model=1024, d_ff=4096, d_kv=64, num_layers=24, num_heads=16)),
    "tiny-roberta": ("roberta", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                     max_position_embeddings=514)),
    "tiny-t5": ("t5", dict(d_model=64, d_ff=128, d_kv=16, num_layers=2, num_heads=4)),
}
# T5 starts decoding from the pad token and ends targets with eos: the BERT tokenizer's [PAD] 0 and [SEP] 102.
EXTRA = {"t5": dict(decoder_start_token_id=0, eos_token_id=102)}


def build(kind: str, fields: dict, folder: Path, tokenizer: Path, device: str = "cpu") -> Path:
    """A random-init bf16 model of this type and shape, saved with the tokenizer into `folder`."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    config = AutoConfig.for_model(kind, vocab_size=VOCAB, pad_token_id=0, **EXTRA.get(kind, {}), **fields)
    cls = {"llama": AutoModelForCausalLM, "roberta": AutoModel, "t5": AutoModelForSeq2SeqLM}[kind]
    with torch.device(device):  # initialised where it runs: an 8B model's random init takes minutes on a CPU
        model = cls.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tokenizer).save_pretrained(folder)
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="a folder per backbone is written under it, named as the shape")
    ap.add_argument("names", nargs="+", choices=SHAPES)
    ap.add_argument("--tokenizer", type=Path, required=True, help="the gpu-kit's tok/ folder")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    for name in args.names:
        print(build(*SHAPES[name], args.out / name, args.tokenizer, args.device))


if __name__ == "__main__":
    main()
