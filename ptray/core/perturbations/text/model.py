"""PTP in text space: corrupt the input's tokens before the embedding lookup, at random (PTP-RN: mask, replace or
delete) or adversarially (PTP-ADV: first-order HotFlip substitutions, Ebrahimi et al. 2018). Special tokens, padding
and answer tokens never change; the prompt is not part of the input ids."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ptray.config import ConfigError
from ptray.core.model import option_loss
from ptray.core.perturbations.base import AddToInputs, Perturbation
from ptray.core.zero import gathered

if TYPE_CHECKING:  # annotations only: the config module imports this one lazily, in build()
    from ptray.core.perturbations.text.config import TextAdversarialConfig, TextRandomConfig

# Per-token tensors of a batch that move with their token when tokens are deleted.
TOKEN_KEYS = ("input_ids", "attention_mask", "token_type_ids", "target_mask")


def vocabulary(tokenizer, special_ids: torch.Tensor) -> torch.Tensor:
    """Ids a substitution may put in: the tokenizer's vocabulary without its special tokens."""
    ids = torch.arange(len(tokenizer))
    return ids[~torch.isin(ids, special_ids)]


def delete_tokens(batch: dict, drop: torch.Tensor, pad_id: int) -> dict:
    """Remove the `drop` tokens of each row: the kept ones close up in order, the row ends in padding."""
    order = torch.argsort(drop.int(), dim=1, stable=True)
    keep = (~drop).gather(1, order)
    out = {**batch, **{k: batch[k].gather(1, order) for k in TOKEN_KEYS if k in batch}}
    out["input_ids"] = out["input_ids"].masked_fill(~keep, pad_id)
    out["attention_mask"] = out["attention_mask"] * keep
    if "token_type_ids" in out:
        out["token_type_ids"] = out["token_type_ids"] * keep
    return out


class TextRandom(Perturbation):
    """PTP-RN in text space: mask, replace with a random vocabulary token, or delete each editable token with
    probability p, freshly every step."""

    def __init__(self, config: TextRandomConfig, tokenizer, seed: int, rank: int = 0):
        super().__init__(config, tokenizer, seed, rank)
        if config.op == "mask" and tokenizer.mask_token_id is None:
            raise ConfigError(
                f"perturbation.op mask needs a mask token, and the {type(tokenizer).__name__} of this model has none; "
                "use perturbation.op=replace or delete"
            )
        self.mask_id, self.pad_id = tokenizer.mask_token_id, tokenizer.pad_token_id
        self.vocab = vocabulary(tokenizer, self.special_ids)

    def perturbed_loss(self, model, batch):
        return option_loss(model(self.corrupt(batch)), batch["labels"])

    def corrupt(self, batch: dict) -> dict:
        ids = batch["input_ids"]
        gen = self.generator(ids.device)
        hit = self.editable(batch) & (torch.rand(ids.shape, generator=gen, device=ids.device) < self.config.p)
        if self.config.op == "delete":
            return delete_tokens(batch, hit, self.pad_id)
        if self.config.op == "mask":
            new = torch.full_like(ids, self.mask_id)
        else:
            vocab = self.vocab.to(ids.device)
            new = vocab[torch.randint(len(vocab), ids.shape, generator=gen, device=ids.device)]
        return {**batch, "input_ids": torch.where(hit, new, ids)}


class TextAdversarial(Perturbation):
    """PTP-ADV in text space, first-order HotFlip: the gradient of the loss at each input embedding scores every
    vocabulary substitution, (E_w - E_x) . g; the k best loss-raising ones per row are made."""

    def __init__(self, config: TextAdversarialConfig, tokenizer, seed: int, rank: int = 0):
        super().__init__(config, tokenizer, seed, rank)
        self.vocab = vocabulary(tokenizer, self.special_ids)

    def perturbed_loss(self, model, batch):
        return option_loss(model(self.attack(model, batch)), batch["labels"])

    def attack(self, model, batch: dict) -> dict:
        ids = batch["input_ids"]
        embedding = model.backbone.get_input_embeddings()
        # A zero delta on the input embeddings: its gradient is the loss's gradient at each input token's embedding.
        delta = torch.zeros((*ids.shape, embedding.embedding_dim), device=ids.device, requires_grad=True)
        loss = option_loss(model(batch, AddToInputs(delta)), batch["labels"])
        (grad,) = torch.autograd.grad(loss, delta)
        editable = self.editable(batch)
        new_ids = ids.clone()
        with gathered([embedding.weight]):
            table = embedding.weight.detach().float()  # [V, H]
            allowed = torch.zeros(len(table), dtype=torch.bool, device=ids.device)
            allowed[self.vocab[self.vocab < len(table)].to(ids.device)] = True
            for r in range(ids.shape[0]):  # one row at a time: a [T, V] score table, not [R, T, V]
                g = grad[r]
                # First-order change of the loss from putting word w at position t: (E_w - E_{x_t}) . g_t
                gain = g @ table.T - (g * table[ids[r]]).sum(-1, keepdim=True)
                best_gain, best = gain.masked_fill(~allowed, -torch.inf).max(-1)
                best_gain = best_gain.masked_fill(~editable[r], -torch.inf)
                top = best_gain.topk(min(self.config.k, len(best_gain)))
                pos = top.indices[top.values > 0]  # only substitutions that raise the loss (to first order)
                new_ids[r, pos] = best[pos]
        return {**batch, "input_ids": new_ids}
