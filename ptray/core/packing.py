"""Seed packing: the seeds of one config trained together through the shared frozen backbone.

A seed-robustness study repeats one run over seeds. The backbone is frozen, so the seeds differ only in their prompts
(and heads): their batches can share one forward and one backward of the backbone, paying per-step overhead and weight
reads once for K seeds (on a GPU one pass; on a CPU, where padding costs more than passes, the pack's rows go through
in length-sorted chunks: `read_in_chunks`). Each seed keeps everything that makes it a seed:

* its own prompt and head: its own method instance, initialised from its own generator, exactly as `train` builds it;
* its own optimizer state (one AdamW over all seeds is per element) and gradient clipping (per seed); the packed loss
  is the SUM of the seeds' losses, so no seed's gradient is scaled by 1/K;
* its own data order (`data.train_order` with its seed), selection checkpoint, early stopping and reporter;
* its own result.json (so its own MLflow child run downstream); a diverged seed fails alone, the others go on.

With dropout off and fp32, K packed seeds give the numbers of K separate `train` runs (tests/test_packing.py).

    results = train_packed([cfg_seed0, cfg_seed1, ...], [out / "seed0", out / "seed1", ...])
"""
from __future__ import annotations

import logging
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ptray.config import ConfigError, ExperimentConfig
from ptray.config_view import as_text
from ptray.core.data import collate
from ptray.core.methods.base import Prompted
from ptray.core.model import PromptModel, option_loss
from ptray.core.train import (Diverged, Prepared, Reporter, TrainLoop, _world, build_engine, check_loss, load_model,
                              new_result, predict, prepare, resolved_at_load, resume, seed_everything, total_steps,
                              write_result)
from ptray.layout import flatten

log = logging.getLogger(__name__)


def check_pack(cfgs: list[ExperimentConfig]) -> None:
    """Configs that may be packed: distinct seeds of one config (equal in everything but train.seed)."""
    if not cfgs:
        raise ConfigError("train_packed needs at least one config")
    seeds = [c.train.seed for c in cfgs]
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"packed seeds must be distinct, got train.seed values {seeds}")
    base = _flat(cfgs[0])
    for c in cfgs[1:]:
        other = _flat(c)
        differ = sorted(k for k in base.keys() | other.keys() if base.get(k) != other.get(k))
        if differ:
            raise ConfigError(f"packed configs may differ only in train.seed; seed {c.train.seed} differs from seed "
                              f"{seeds[0]} in {', '.join(differ)}: run those as separate packs")
    reason = cfgs[0].unpackable()
    if reason:
        raise ConfigError(reason)


def _flat(cfg: ExperimentConfig) -> dict:
    """The config's dotted keys, but those a pack's seeds may differ in."""
    return {k: v for k, v in flatten(cfg.to_dict()).items() if k not in ("train.seed", "train.seed_pack")}


def split_batch(batch: dict[str, torch.Tensor], sizes: list[int]) -> tuple[list[dict], list[int]]:
    """Per-seed views of a joint batch whose examples come seed after seed (sizes[i] examples of seed i), and the
    number of rows of each."""
    rows_per_example = torch.bincount(batch["row_example"], minlength=sum(sizes))
    row_counts = [int(r.sum()) for r in rows_per_example.split(sizes)]
    parts, ex0, row0 = [], 0, 0
    for n, r in zip(sizes, row_counts):
        part = {k: v[row0 : row0 + r] for k, v in batch.items() if k != "labels"}
        part["labels"] = batch["labels"][ex0 : ex0 + n]
        part["row_example"] = part["row_example"] - ex0
        parts.append(part)
        ex0, row0 = ex0 + n, row0 + r
    return parts, row_counts


class PackedModel(nn.Module):
    """K seeds' PromptModels over one frozen backbone: each seed prompts its own rows, the backbone reads them all
    together, and each seed's head (encoders) or the shared scorer (LMs) turns them into that seed's option scores."""

    def __init__(self, models: list[PromptModel]):
        super().__init__()
        if any(m.backbone is not models[0].backbone for m in models):
            raise ValueError("packed seeds must share one backbone object (load_model reuses it under ZeRO stage 0)")
        self.seeds = nn.ModuleList(models)

    def forward(self, batch: dict[str, torch.Tensor], sizes: list[int],
                chunk_rows: int | None = None) -> list[torch.Tensor | None]:
        """`batch` holds sizes[0] examples of seed 0, then sizes[1] of seed 1, ...; returns each seed's [n, K] option
        scores, None for a seed given no examples (stopped or failed). chunk_rows: read the rows in backbone passes of
        at most that many, sorted by length (see `read_in_chunks`); None: one pass for all."""
        parts, row_counts = split_batch(batch, sizes)
        first = self.seeds[0]
        live = [i for i, n in enumerate(sizes) if n]
        embeds = first.backbone.get_input_embeddings()(batch["input_ids"]).split(row_counts)
        prompted = [self.seeds[i].method(embeds[i], parts[i]["attention_mask"], parts[i]) for i in live]
        # Input-level prompts only (see MethodConfig.unpackable): the rows of every seed have the same prompted width.
        joint = Prompted(*(torch.cat(t) for t in zip(*(p[:3] for p in prompted))))
        live_rows = [row_counts[i] for i in live]
        if first.family == "encoder":
            pooled = read_in_chunks(first.pooled, batch, joint, chunk_rows).split(live_rows)
            rows = [self.seeds[i].head(x.float()) for i, x in zip(live, pooled)]
        else:  # LMs score with the frozen LM head: nothing per seed after the backbone
            rows = read_in_chunks(getattr(first, f"_{first.family}"), batch, joint, chunk_rows).split(live_rows)
        scores: list[torch.Tensor | None] = [None] * len(sizes)
        for i, r in zip(live, rows):
            scores[i] = self.seeds[i]._to_options(parts[i], r)
        return scores


# Batch keys laid out along the input's tokens (cut with them); the others are per row or per example.
TOKEN_KEYS = ("input_ids", "attention_mask", "token_type_ids", "target_mask")


def read_in_chunks(read, batch: dict[str, torch.Tensor], p: Prompted, chunk_rows: int | None) -> torch.Tensor:
    """`read(batch, p)` (one output row per input row), in passes of at most chunk_rows rows of similar length, each
    cut to its own longest row. Seeds draw batches of different lengths, so one pass pads every row to the longest
    of all of them; where compute grows with padded positions and a pass costs little more than its FLOPs (a CPU),
    sorted chunks win that padding back."""
    rows = p.attention_mask.shape[0]
    if chunk_rows is None or rows <= chunk_rows:
        return read(batch, p)
    # Rows are right-padded: a row's prompted length is its last attended position + 1.
    lengths = p.attention_mask.shape[1] - p.attention_mask.flip(1).argmax(1)
    input_lengths = batch["attention_mask"].sum(1)
    order = lengths.argsort(descending=True)
    outs = []
    for idx in order.split(chunk_rows):
        width, input_width = int(lengths[idx].max()), int(input_lengths[idx].max())
        sub = {k: v[idx][:, :input_width] if k in TOKEN_KEYS else v[idx] for k, v in batch.items() if k != "labels"}
        outs.append(read(sub, Prompted(p.inputs_embeds[idx, :width], p.attention_mask[idx, :width],
                                       p.token_positions[idx, :input_width])))
    return torch.cat(outs)[order.argsort()]


def train_packed(cfgs: list[ExperimentConfig], output_dirs: list[str | Path | None],
                 reporters: list[Reporter | None] | None = None, resume_dir: str | Path | None = None,
                 progress: bool = True, prepared: Prepared | None = None) -> list[dict]:
    """Train the seeds of one config together: `cfgs` equal but for train.seed (ConfigError otherwise, before any
    weights load). Returns one result per seed, in order, each also written to its output dir as `train` writes it
    (plus `seed_pack`: the seeds packed together). A seed that diverges fails alone; a crash of the pack fails every
    seed still training, with the reason. reporters[i] hears seed i's evaluations like `train`'s reporter, once every
    seed has booked the step; its `save(dir)` writes the whole pack's checkpoint (every seed's state and
    bookkeeping), which `resume_dir` restores."""
    check_pack(cfgs)
    k = len(cfgs)
    reporters = list(reporters) if reporters is not None else [None] * k
    if len(output_dirs) != k or len(reporters) != k:
        raise ConfigError(f"train_packed got {k} configs, {len(output_dirs)} output dirs and {len(reporters)} "
                          f"reporters: give one of each per seed")
    t0 = time.perf_counter()
    p = prepared or prepare(cfgs[0])
    log.info("config of the packed seeds %s (shown: the first's), resolved:\n%s", [c.train.seed for c in cfgs],
             as_text(cfgs[0], resolved=resolved_at_load(cfgs[0], p)))
    outs = [Path(d) if d is not None else None for d in output_dirs]
    results = [new_result(c, p) for c in cfgs]
    seeds = [c.train.seed for c in cfgs]
    pack, failed = None, {}
    try:
        pack = build_pack(cfgs, p, outs, reporters, progress)
        t_load = time.perf_counter()
        pack.run(resume(pack.engine, resume_dir, pack) if resume_dir is not None else 0)
        failed = pack.failed
        for i, (result, loop) in enumerate(zip(results, pack.loops)):
            result["trainable_params"] = sum(x.numel() for x in loop._trainable_params())
            result["timings"] = {"load_s": t_load - t0, "train_s": pack.train_seconds, "eval_s": pack.eval_seconds}
            if i not in failed:
                loop.train_seconds, loop.eval_seconds = pack.train_seconds, pack.eval_seconds
                result.update(loop.summary())
    except ConfigError:
        raise
    except Exception as e:  # a crash of the pack is every unfinished seed's: record it, never drop it
        failed = dict(pack.failed) if pack is not None else {}
        for i in range(k):
            if i not in failed:
                failed[i] = f"{type(e).__name__}: {e}"
                results[i]["traceback"] = traceback.format_exc()
    finally:
        if pack is not None:
            from ptray.core.engine import close_engine

            close_engine(pack.engine)
    total_s = time.perf_counter() - t0
    for i, (result, out) in enumerate(zip(results, outs)):
        if i in failed:
            result.update(status="failed", reason=failed[i])
        result["seed_pack"] = seeds
        result.setdefault("timings", {})["total_s"] = total_s
        write_result(out, result)
    return results


def build_pack(cfgs: list[ExperimentConfig], p: Prepared, outs: list[Path | None] | None = None,
               reporters: list[Reporter | None] | None = None, progress: bool = False) -> Pack:
    """The seeds' models over the shared backbone, one DeepSpeed engine around them all, and each seed's TrainLoop."""
    outs = outs or [None] * len(cfgs)
    reporters = reporters or [None] * len(cfgs)
    models = []
    for cfg in cfgs:
        seed_everything(cfg.source_seeds()["init"])  # each seed's head starts as in its own run
        model, encoder, data = load_model(cfg, p)
        models.append(model)
    world, rank = _world()
    total = total_steps(cfgs[0], len(data["train"]), world)
    # DeepSpeed would clip all seeds' gradients as one vector: the pack clips each seed's itself.
    unclipped = cfgs[0].model_copy(update={"train": cfgs[0].train.model_copy(update={"max_grad_norm": None})})
    engine = build_engine(PackedModel(models), unclipped, total, p.device)
    # The pack calls the reporters itself, once every seed has booked a step (see Pack.run).
    loops = [TrainLoop(c, engine, m, p, data, encoder, total, rank, world, o, None, False)
             for c, m, o in zip(cfgs, models, outs)]
    return Pack(loops, engine, reporters, progress and rank == 0)


class Pack:
    """The packed step loop: one joint micro-batch of every training seed's own next batch -> one forward/backward ->
    per-seed clipping -> one optimizer step; each seed's TrainLoop does its bookkeeping (history, best state,
    adapter), the pack calls the reporters. Its checkpoints carry every seed's bookkeeping: `train.resume` restores
    the pack as it restores a loop (bookkeeping / restore)."""

    def __init__(self, loops: list[TrainLoop], engine, reporters: list[Reporter | None], progress: bool):
        self.loops, self.engine, self.reporters, self.progress = loops, engine, reporters, progress
        first = loops[0]
        self.tc, self.p, self.data, self.pad_id = first.cfg.train, first.p, first.data, first.pad_id
        self.training = [True] * len(loops)
        self.failed: dict[int, str] = {}
        # Rows per backbone pass (read_in_chunks). A CPU computes every padded position and a pass costs it little
        # more than its FLOPs: sorted chunks of one batch. A GPU pays a fixed cost per pass: one pass for all seeds.
        cpu = engine.device.type == "cpu"
        self.chunk_rows = {"train": self.tc.batch_size if cpu else None,
                           "eval": self.tc.eval_batch_size if cpu else None}
        self.train_seconds = self.eval_seconds = 0.0

    def active(self) -> list[int]:
        return [i for i, on in enumerate(self.training) if on]

    def run(self, start_step: int = 0) -> None:
        from tqdm.auto import tqdm

        tc, first = self.tc, self.loops[0]
        orders = [loop.batch_order() for loop in self.loops]
        for order in orders:  # resuming skips the data already seen, as an unbroken run would have
            for _ in range(start_step * tc.grad_accum):
                next(order)
        seeds = [loop.cfg.train.seed for loop in self.loops]
        bar = tqdm(total=first.total, initial=start_step, disable=not self.progress, desc=f"seeds {seeds}",
                   dynamic_ncols=True)
        step = start_step
        while step < first.total and self.active():
            t_start = time.perf_counter()
            self.engine.train()
            losses: dict[int, list[float]] = {i: [] for i in self.active()}
            for _ in range(tc.grad_accum):
                self.micro_step([next(o) if self.training[i] else [] for i, o in enumerate(orders)], step + 1, losses)
            step += 1
            for i in self.active():
                self.loops[i].model.method.on_step(step)
            self.train_seconds += time.perf_counter() - t_start
            bar.update(1)
            live = [np.mean(v) for v in losses.values() if v]
            if live:
                bar.set_postfix(loss=f"{np.mean(live):.4f}")
            metrics = self.evaluate("selection", self.active()) if first.eval_due(step) else {}
            for i in self.active():
                if self.loops[i].end_step(step, losses[i], metrics.get(i)):
                    self.training[i] = False
            # The reporters hear the step once every seed has booked it, so a checkpoint saved now holds them all.
            for i, m in metrics.items():
                reporter = self.reporters[i]
                if reporter is not None and reporter(step, {**m, "loss": self.loops[i].history[-1]["loss"]},
                                                     self.saver(step)):
                    self.training[i] = False
        bar.close()
        done = [i for i in range(len(self.loops)) if i not in self.failed]
        for i in done:
            self.loops[i].restore_best()
        report = self.evaluate("report", done) if done else {}
        for i in done:
            self.loops[i].finish(report[i])

    def micro_step(self, indices: list[list[int]], step: int, losses: dict[int, list[float]]) -> None:
        from deepspeed.runtime.utils import clip_grad_norm_

        items = self.data["train"]
        sizes = [len(idx) for idx in indices]
        batch = self.loops[0]._to_device(collate([items[j] for idx in indices for j in idx], self.pad_id))
        scores = self.engine(batch, sizes, self.chunk_rows["train"])
        total = None
        for i, (s, labels) in enumerate(zip(scores, batch["labels"].split(sizes))):
            if s is None:
                continue
            loss = option_loss(s, labels)
            value = loss.item()
            try:
                check_loss(value, step, self.tc.max_loss)
            except Diverged as e:
                self.fail(i, str(e))
                continue
            losses[i].append(value)
            self.loops[i].examples_seen += sizes[i] * self.loops[i].world
            total = loss if total is None else total + loss
        if total is None:  # every seed has failed
            return
        self.engine.backward(total)
        for i in self.failed:  # a failed seed's rows were in the pass: its (NaN) gradient must not be applied
            for x in self.loops[i]._trainable_params():
                x.grad = None
        if self.tc.max_grad_norm is not None and self.engine.is_gradient_accumulation_boundary():
            for i in self.active():  # DeepSpeed's own clipping, applied to one seed's gradients at a time
                clip_grad_norm_(self.loops[i]._trainable_params(), self.tc.max_grad_norm)
        self.engine.step()

    def saver(self, step: int):
        def save(directory: Path) -> None:
            # As TrainLoop's saver, with every seed's bookkeeping: `resume(engine, dir, pack)` restores the pack.
            self.engine.save_checkpoint(str(directory), tag=f"step{step}",
                                        client_state={"step": step, "loop": self.bookkeeping()},
                                        exclude_frozen_parameters=True)

        return save

    def bookkeeping(self) -> dict:
        return {"seeds": [loop.bookkeeping() for loop in self.loops], "training": self.training,
                "failed": self.failed, "train_seconds": self.train_seconds, "eval_seconds": self.eval_seconds}

    def restore(self, bookkeeping: dict) -> None:
        for loop, state in zip(self.loops, bookkeeping["seeds"]):
            loop.restore(state)
        self.training, self.failed = list(bookkeeping["training"]), dict(bookkeeping["failed"])
        self.train_seconds, self.eval_seconds = bookkeeping["train_seconds"], bookkeeping["eval_seconds"]

    def fail(self, i: int, reason: str) -> None:
        self.training[i] = False
        self.failed[i] = reason

    def evaluate(self, role: str, seeds: list[int]) -> dict[int, dict]:
        """Metrics of `seeds` on a split; every eval batch runs once for all of them."""
        t0 = time.perf_counter()
        self.engine.eval()
        k = len(self.loops)

        def forward(items):
            sizes = [len(items) if i in seeds else 0 for i in range(k)]
            batch = self.loops[0]._to_device(collate(items * len(seeds), self.pad_id))
            return [s for s in self.engine(batch, sizes, self.chunk_rows["eval"]) if s is not None]

        first = self.loops[0]
        preds = predict(forward, self.data[role], self.tc.eval_batch_size, first.rank, first.world)
        examples = getattr(self.p, role)
        metrics = {i: self.p.task.compute_metrics(examples, pred) for i, pred in zip(seeds, preds)}
        self.eval_seconds += time.perf_counter() - t0
        return metrics
