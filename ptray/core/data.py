"""Examples -> (a k-shot sample of them) -> token ids -> padded batches.

Each example becomes one row (classification) or one row per option (multiple choice). Batches are padded to
their own longest row (on a GPU rounded up to a few recurring widths), not to a fixed length: short tasks do not pay
for the longest example. Training batches group examples of similar length (seeded), so they pad little too.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch

from ptray.config import ConfigError
from ptray.core.tasks import Example, Task


def sample_per_class(examples: list[Example], labels: list[str], k: int, seed: int, draws: int,
                     source: str) -> list[list[Example]]:
    """`draws` disjoint samples of k examples of every class of `examples` (from `source`, named in errors), drawn
    by `seed` alone; each sample keeps the examples' order. The few-shot protocol's training set and, from the same
    split, its selection set (LM-BFF draws both from the training data, disjoint)."""
    by_class = [[i for i, e in enumerate(examples) if e.label == c] for c in range(len(labels))]
    smallest = min(len(idx) for idx in by_class)
    if k * draws > smallest:
        sizes = ", ".join(f"{lab}: {len(idx)}" for lab, idx in zip(labels, by_class))
        wanted = f"{draws} disjoint samples of {k}" if draws > 1 else str(k)
        fix = (f"set task.k_shot to {smallest // draws} or less" if smallest >= draws
               else "a label without examples cannot be sampled: fix the split or the task's labels")
        raise ConfigError(f"task.k_shot {k}: {source} has too few examples of its smallest class for {wanted} per "
                          f"class (examples per label: {sizes}); {fix}")
    rng = np.random.default_rng(seed)
    shuffled = [np.asarray(idx)[rng.permutation(len(idx))] for idx in by_class]
    return [[examples[i] for i in sorted(j for idx in shuffled for j in idx[d * k : (d + 1) * k])] for d in range(draws)]


@dataclass
class Encoded:
    """One example as model input: `rows` of token ids; for LMs, which tokens of each row are the target."""

    rows: list[list[int]]
    label: int
    token_type_ids: list[list[int]] | None = None
    # causal multiple choice: number of target tokens at the end of each row
    target_lengths: list[int] | None = None
    # seq2seq multiple choice: decoder target ids per row
    decoder_targets: list[list[int]] | None = None


@dataclass
class Encoder:
    """Turns a task's examples into `Encoded` for one backbone family and tokenizer."""

    task: Task
    tokenizer: object
    family: str
    max_length: int
    label_token_ids: list[int] = field(default_factory=list)

    def __post_init__(self):
        words = self.task.get_label_words()
        if self.family != "encoder" and words is not None:
            # Score the first token of each label word, as PET/LM-BFF do; distinct first tokens are required.
            ids = [self.tokenizer(" " + w if self.family == "causal" else w, add_special_tokens=False)["input_ids"][0] for w in words]
            if len(set(ids)) != len(ids):
                raise ValueError(
                    f"task {self.task.name}: label words {words} share a first token under this tokenizer; "
                    f"set task.label_words to words that start differently"
                )
            self.label_token_ids = ids

    def encode(self, ex: Example) -> Encoded:
        return getattr(self, f"_{self.family}")(ex)

    def _encoder(self, ex: Example) -> Encoded:
        tok = self.tokenizer
        if ex.choices is None:
            pairs = [(ex.text_a, ex.text_b)]
        else:
            # ReCoRD fills the query's placeholder with each candidate; COPA pairs the premise with each choice.
            pairs = [(ex.text_a, ex.text_b.replace("@placeholder", c) if ex.text_b else c) for c in ex.choices]
        rows, types = [], []
        for a, b in pairs:
            enc = tok(a, b, truncation=True, max_length=self.max_length, return_token_type_ids=True)
            rows.append(enc["input_ids"])
            types.append(enc.get("token_type_ids") or [0] * len(enc["input_ids"]))
        return Encoded(rows, ex.label, token_type_ids=types)

    def _source_ids(self, ex: Example, budget: int) -> list[int]:
        ids = self.tokenizer(ex.lm_source, add_special_tokens=True)["input_ids"]
        if self.family == "causal" and ids and ids[-1] == self.tokenizer.eos_token_id:
            ids = ids[:-1]
        # Keep the end: the question and "Answer:" cue sit there; the passage's start is what gets cut.
        return ids[-budget:] if len(ids) > budget else ids

    def _causal(self, ex: Example) -> Encoded:
        if ex.choices is None:
            return Encoded([self._source_ids(ex, self.max_length)], ex.label)
        rows, lengths = [], []
        for c in ex.choices:
            target = self.tokenizer(" " + c, add_special_tokens=False)["input_ids"][: self.max_length // 2]
            rows.append(self._source_ids(ex, self.max_length - len(target)) + target)
            lengths.append(len(target))
        return Encoded(rows, ex.label, target_lengths=lengths)

    def _seq2seq(self, ex: Example) -> Encoded:
        source = self._source_ids(ex, self.max_length)
        if ex.choices is None:
            return Encoded([source], ex.label)
        eos = self.tokenizer.eos_token_id
        targets = [self.tokenizer(c, add_special_tokens=False)["input_ids"][:64] + ([eos] if eos is not None else []) for c in ex.choices]
        return Encoded([source] * len(targets), ex.label, decoder_targets=targets)


def collate(items: list[Encoded], pad_id: int, multiple: int = 1,
            limit: int | None = None) -> dict[str, torch.Tensor]:
    """Pad the rows of several examples into one batch; `row_example`/`row_choice` map rows back. The width is the
    longest row's, rounded up to a multiple of `multiple` but not past `limit` (the task's row length): a GPU builds
    kernels and attention plans per shape, and a few recurring widths let it reuse them."""
    rows = [r for it in items for r in it.rows]
    longest = max(len(r) for r in rows)
    width = -(-longest // multiple) * multiple
    if limit is not None:
        width = max(longest, min(width, limit))
    n = len(rows)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    batch = {
        "input_ids": input_ids,
        "attention_mask": mask,
        "labels": torch.tensor([it.label for it in items]),
        "row_example": torch.tensor([i for i, it in enumerate(items) for _ in it.rows]),
        "row_choice": torch.tensor([k for it in items for k in range(len(it.rows))]),
    }
    if items[0].token_type_ids is not None:
        tt = torch.zeros((n, width), dtype=torch.long)
        for i, t in enumerate(t for it in items for t in it.token_type_ids):
            tt[i, : len(t)] = torch.tensor(t)
        batch["token_type_ids"] = tt
    if items[0].target_lengths is not None:
        target = torch.zeros((n, width), dtype=torch.bool)
        for i, (r, k) in enumerate(zip(rows, (k for it in items for k in it.target_lengths))):
            target[i, len(r) - k : len(r)] = True
        batch["target_mask"] = target
    if items[0].decoder_targets is not None:
        targets = [t for it in items for t in it.decoder_targets]
        tw = max(len(t) for t in targets)
        dec = torch.full((n, tw), -100, dtype=torch.long)
        for i, t in enumerate(targets):
            dec[i, : len(t)] = torch.tensor(t)
        batch["decoder_targets"] = dec
    return batch


def batches(items: list[Encoded], batch_size: int, pad_id: int, order: list[int] | None = None):
    """Yield (indices, batch) over `items` in `order` (default: as given)."""
    order = list(range(len(items))) if order is None else order
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        yield idx, collate([items[i] for i in idx], pad_id)


# Length grouping sorts by log-length jittered by up to this much (about +-28%): batches of similar length that still
# differ between epochs and seeds (a plain sort would fix each batch's members on a small training set).
LENGTH_JITTER = 0.25


def train_order(items: list[Encoded], batch_size: int, seed: int, rank: int = 0, world: int = 1,
                group_by_length: bool = True) -> Iterator[list[int]]:
    """Endless training micro-batches as indices into `items`: a seeded order per epoch (the seed fixes it), each rank
    taking its own slice of every global batch of batch_size * world examples. With group_by_length, a global batch
    holds examples of similar length and the batches come in shuffled order."""
    rng = np.random.default_rng(seed)
    lengths = np.array([max(len(r) for r in it.rows) for it in items])
    global_size = batch_size * world
    while True:
        order = rng.permutation(len(items))
        if group_by_length:
            key = np.log(lengths[order]) + rng.uniform(-LENGTH_JITTER, LENGTH_JITTER, len(order))
            order = order[np.argsort(key, kind="stable")]
            chunks = [order[i : i + global_size] for i in range(0, len(order), global_size)]
            order = np.concatenate([chunks[i] for i in rng.permutation(len(chunks))])
        mine = order[rank::world].tolist()
        for start in range(0, len(mine), batch_size):
            yield mine[start : start + batch_size]
