"""The contract every PTP regularizer keeps (Chen et al., EMNLP 2023): from the model and a batch, the loss on a freshly
perturbed copy of the batch. The training loss is L(clean) + lambda * L(perturbed).

Regularizers run their passes on the bare PromptModel, not on the DeepSpeed engine: the engine's forward hooks its
backward bookkeeping onto every output, which suits one forward per `engine.backward`, not the inner passes whose
gradients go to the perturbation only (`torch.autograd.grad`). The final perturbed loss still reaches the prompt through
the one `engine.backward(total)` of the micro-step.
"""
from __future__ import annotations

import numpy as np
import torch

from ptray.core.methods.base import Prompted


class Perturb:
    """A change to one forward pass of PromptModel: `inputs` edits the input's word embeddings [R, T, H] before the
    prompt method sees them; `prompted` edits the sequence the backbone reads. Both change nothing by default."""

    def inputs(self, embeds: torch.Tensor, batch: dict) -> torch.Tensor:
        return embeds

    def prompted(self, p: Prompted, batch: dict) -> Prompted:
        return p


class AddToInputs(Perturb):
    """Adds `delta` [R, T, H] to the input's word embeddings; the caller keeps it zero on padding."""

    def __init__(self, delta: torch.Tensor):
        self.delta = delta

    def inputs(self, embeds, batch):
        return embeds + self.delta.to(embeds.dtype)


class Perturbation:
    """Subclasses implement `perturbed_loss`; their config's `build` (in its config.py) constructs them."""

    def __init__(self, config, tokenizer, seed: int, rank: int = 0):
        self.config = config
        self.weight = config.lambda_
        self.special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
        self.seed = (seed, rank)
        # Perturbed passes drawn so far; a resumed run sets it so that it draws what an unbroken run would.
        self.calls = 0

    def perturbed_loss(self, model, batch: dict) -> torch.Tensor:
        """L(perturbed batch) with gradients to the trainable parameters; `model` is the bare PromptModel."""
        raise NotImplementedError

    def generator(self, device: torch.device) -> torch.Generator:
        """A fresh random stream per call, keyed on (seed, rank, call): independent of the global RNG, so dropout and
        data order stay what they would be without the regularizer."""
        key = np.random.SeedSequence([*self.seed, self.calls]).generate_state(1)[0]
        self.calls += 1
        return torch.Generator(device).manual_seed(int(key))

    def editable(self, batch: dict) -> torch.Tensor:
        """[R, T] bool: input tokens a text perturbation may change: real (not padding), not special, not an answer
        (the target tokens of causal multiple choice). The prompt and seq2seq targets are not in input_ids at all."""
        ids = batch["input_ids"]
        if self.special_ids.device != ids.device:  # moved once: a copy from pageable memory waits for the GPU
            self.special_ids = self.special_ids.to(ids.device)
        ok = batch["attention_mask"].bool() & ~torch.isin(ids, self.special_ids)
        if "target_mask" in batch:
            ok &= ~batch["target_mask"]
        return ok
