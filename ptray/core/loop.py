"""The training loop, for K seeds of one config at once; a single seed is the K=1 case.

One step = each training seed's own next micro-batches -> each seed's loss (+ its PTP regularizer) -> one backward of
their sum -> each seed's gradient clipped on its own -> one optimizer step -> periodic selection eval of every seed.
The losses stay on the device until they are read (train.read_loss_every): on a GPU the host queues steps ahead
instead of waiting for each step's loss, and a read books every step since the last one, failing a seed at the step
its loss first went bad.
The seeds share the frozen backbone (ptray.core.packing.PackedModel) and the optimizer step, and nothing else: each
keeps its own prompt, head, data order, random stream, perturbation draws, optimizer state, best checkpoint, early
stopping, reporter and result. So on a CPU, where every seed's rows go through the backbone in their own pass, K seeds
packed give exactly the numbers of K runs alone (tests/test_packing.py); on a GPU the seeds share one pass, and agree
to float rounding (padding to a common width changes kernel shapes).
"""
from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch

from ptray.config import ExperimentConfig
from ptray.core.data import Encoded, collate, train_order
from ptray.core.model import PromptModel, option_loss
from ptray.core.perturbations import build_perturbation
from ptray.core.zero import gathered
from ptray.layout import ADAPTER_FILE, redact


class Reporter(Protocol):
    """Hears every evaluation. `save(dir)` writes a resumable checkpoint there; return True to stop the seed."""

    def __call__(self, step: int, metrics: dict, save: Callable[[Path], None]) -> bool | None: ...


class Diverged(RuntimeError):
    pass


def check_loss(value: float, step: int, max_loss: float) -> None:
    """A NaN, infinite or too large loss ends the seed as failed: diverged."""
    if not math.isfinite(value) or value > max_loss:
        raise Diverged(f"loss diverged ({value:.4g}) at step {step}")


def loss_fn(model, batch, perturbation=None, scores=None) -> torch.Tensor:
    """Cross-entropy over each example's options (`scores`, or the model's on `batch`); the seam where regularizers
    add their terms: a PTP perturbation adds lambda * L(perturbed), its passes run on the bare PromptModel (see
    ptray.core.perturbations)."""
    loss = option_loss(model(batch) if scores is None else scores, batch["labels"])
    if perturbation is not None:
        loss = loss + perturbation.weight * perturbation.perturbed_loss(getattr(model, "module", model), batch)
    return loss


def clip_gradient(params: list[torch.nn.Parameter], max_norm: float) -> None:
    """Scale the parameters' gradient to at most `max_norm` (L2, as one vector), in the arithmetic of DeepSpeed's
    clip_grad_norm_ on one rank, so a seed's numbers are those it had when DeepSpeed clipped it. Unlike that function
    it neither builds tensors from host values nor all-reduces the norm (the gradients are already averaged over the
    ranks), so the host does not wait for the GPU. torch's clip_grad_norm_ rounds the norm differently: the
    quickstart's vanilla mean moved from 0.6904 to 0.6896 under it."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    norm = torch.stack([g.detach().float().norm(2) for g in grads]).pow(2).sum().float().pow(0.5)
    coef = torch.clamp(torch.full_like(norm, max_norm) / (norm + 1e-6), max=1.0)
    for g in grads:
        g.mul_(coef)


@torch.inference_mode()
def predict(forward, items: list[Encoded], batch_size: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """Predicted option of every item by one or more models: `forward(list of Encoded)` returns one [B, K] score
    tensor per model (packed seeds score together). Longest first, so batches pad little; the predictions stay on the
    device until the last batch (one host sync, not one per batch); ranks share the work and gather them."""
    order = sorted(range(len(items)), key=lambda i: -sum(len(r) for r in items[i].rows))
    mine = order[rank::world]
    per_rank = math.ceil(len(order) / world)
    # Under ZeRO-3 every rank must run the same number of forwards: pad the short shard with a repeat.
    mine = mine + mine[-1:] * (per_rank - len(mine)) if mine else order[:1] * per_rank
    argmaxes: list[list[torch.Tensor]] = []
    for start in range(0, len(mine), batch_size):
        scores = forward([items[i] for i in mine[start : start + batch_size]])
        argmaxes = argmaxes or [[] for _ in scores]
        for model_argmaxes, s in zip(argmaxes, scores):
            model_argmaxes.append(s.argmax(-1))
    preds = [dict(zip(mine, torch.cat(a).tolist())) for a in argmaxes]
    if world > 1:
        import torch.distributed as dist

        shards = [None] * world
        dist.all_gather_object(shards, preds)
        preds = [{k: v for shard in shards for k, v in shard[m].items()} for m in range(len(preds))]
    return [[pred[i] for i in range(len(items))] for pred in preds]


class RandomStream:
    """One seed's own torch random stream (dropout, Gumbel draws), swapped in around that seed's computations: seeds
    trained together draw exactly what each would draw alone. A checkpoint carries it, so a resumed seed draws on."""

    def __init__(self, seed: int, device: torch.device):
        self.cuda = device if device.type == "cuda" else None
        outside = self._get()
        torch.manual_seed(seed)  # as transformers.set_seed seeds torch: the CPU and every GPU
        self.state = self._get()
        self._set(outside)

    @contextmanager
    def active(self):
        outside = self._get()
        self._set(self.state)
        try:
            yield
        finally:
            self.state = self._get()
            self._set(outside)

    def _get(self):
        return torch.get_rng_state(), torch.cuda.get_rng_state(self.cuda) if self.cuda else None

    def _set(self, state) -> None:
        torch.set_rng_state(state[0])
        if self.cuda:
            torch.cuda.set_rng_state(state[1], self.cuda)


NO_BEST = {"score": -math.inf, "step": 0, "metrics": None, "state": None, "adapter": {}}


class SeedRun:
    """Everything that makes one seed of a pack a seed: its model (prompt and head), data order, random stream,
    perturbation, history, best selection state, early stopping, reporter, adapter and result summary."""

    def __init__(self, cfg: ExperimentConfig, model: PromptModel, tokenizer, device: torch.device, rank: int,
                 world: int, out: Path | None, reporter: Reporter | None):
        self.cfg, self.model, self.rank, self.world, self.out, self.reporter = cfg, model, rank, world, out, reporter
        self.seed = cfg.train.seed
        self.stream = RandomStream(cfg.source_seeds()["order"], device)  # training noise is the order seed's
        self.perturbation = build_perturbation(cfg, tokenizer, rank)
        self.history: list[dict] = []
        # Changes of the prompt length on restore (PBT over method.num_tokens, ptray.core.resize): {step, old, new,
        # donor}. A checkpoint carries them with the history, so a member's list is its prompt's whole lineage.
        self.resizes: list[dict] = []
        self.best = dict(NO_BEST)
        self.patience = 0
        self.examples_seen = 0
        self.steps_done = 0
        self.report_metrics: dict | None = None

    def batch_order(self, data: list[Encoded]):
        """This seed's endless training micro-batches, as indices into the train split (see data.train_order)."""
        tc = self.cfg.train
        return train_order(data, tc.batch_size, self.cfg.source_seeds()["order"], self.rank, self.world,
                           tc.group_by_length)

    def trainable_params(self) -> list[torch.nn.Parameter]:
        return [x for x in self.model.parameters() if x.requires_grad]

    def book(self, step: int, losses: list[float], lr: float) -> None:
        """Record a finished step."""
        self.steps_done = step
        self.history.append({"step": step, "loss": float(np.mean(losses)), "lr": lr})

    def select(self, step: int, metrics: dict, primary: str) -> bool:
        """The selection metrics of the step just booked; keep the best state. True: early stopping ends the seed."""
        self.history[-1]["selection"] = metrics
        self.patience = 0 if self.keep_if_best(step, metrics, primary) else self.patience + 1
        limit = self.cfg.train.early_stopping_patience
        return bool(limit and self.patience >= limit)

    def keep_if_best(self, step: int, metrics: dict, primary: str) -> bool:
        """Keep the current state as the best selection state if `metrics` beat it; True when they do."""
        if not metrics[primary] > self.best["score"]:  # (a NaN score is never the best)
            return False
        self.best = {"score": metrics[primary], "step": step, "metrics": metrics, "state": self.trainable_state(),
                     "adapter": self.trainable_state(export=True)}
        return True

    def resized(self, step: int, old: int, new: int, donor) -> None:
        """The prompt was restored at step `step` with `new` tokens from a checkpoint of `old` (taken over from the
        member `donor`, if another's). The best selection state so far has the old shape, so it cannot be the one
        reported: the best is chosen again among the evaluations at the new length."""
        self.resizes.append({"step": step, "old": old, "new": new, "donor": donor})
        self.best, self.patience = dict(NO_BEST), 0

    def restore_best(self) -> None:
        # Report on the best selection checkpoint, not the last step.
        if self.best["state"] is not None:
            with gathered(self.trainable_params(), modify=True):
                self.model.load_trainable_state(self.best["state"])

    def finish(self, report_metrics: dict) -> None:
        self.report_metrics = report_metrics
        if self.out is not None and self.rank == 0:
            from safetensors.torch import save_file

            self.out.mkdir(parents=True, exist_ok=True)
            state = {k: v.contiguous() for k, v in self.best["adapter"].items()}
            save_file(state, str(self.out / ADAPTER_FILE), metadata={"config": redact(json.dumps(self.cfg.to_dict()))})

    def trainable_state(self, export: bool = False) -> dict[str, torch.Tensor]:
        # export: the adapter's form (a residual prompt folds its MLP away) instead of the exact snapshot.
        with gathered(self.trainable_params()):
            state = self.model.adapter_state() if export else self.model.trainable_state()
            return {k: v.detach().cpu().clone() for k, v in state.items()}

    def bookkeeping(self) -> dict:
        """What a checkpoint carries of this seed besides the engine's state (see train.resume)."""
        return {"history": self.history, "resizes": self.resizes, "best": self.best, "patience": self.patience,
                "examples_seen": self.examples_seen, "rng": self.stream.state}

    def restore(self, bookkeeping: dict) -> None:
        self.history, self.best = bookkeeping["history"], bookkeeping["best"]
        self.resizes = bookkeeping.get("resizes", [])  # checkpoints from before resizes were recorded had none
        self.patience, self.examples_seen = bookkeeping["patience"], bookkeeping["examples_seen"]
        self.steps_done = self.history[-1]["step"] if self.history else 0
        if "rng" in bookkeeping:  # checkpoints from before seeds kept their own stream continue on the fresh one
            self.stream.state = bookkeeping["rng"]

    def summary(self, train_seconds: float) -> dict:
        return {
            "selection_metrics": self.best["metrics"], "report_metrics": self.report_metrics,
            "best_step": self.best["step"], "steps": self.steps_done, "history": self.history,
            "resizes": self.resizes,
            "throughput": {"train_examples_per_s": self.examples_seen / max(train_seconds, 1e-9)},
        }


class Loop:
    """The step loop over a pack's seeds (see the module docstring). The engine wraps a PackedModel of the seeds'
    models; the loop calls each seed's reporter once every seed has booked the step, with a `save` that checkpoints
    the whole pack (every seed's state and bookkeeping), which `train.resume` restores."""

    def __init__(self, seeds: list[SeedRun], engine, prepared, data: dict[str, list[Encoded]], pad_id: int,
                 total: int, progress: bool):
        self.seeds, self.engine, self.p, self.data = seeds, engine, prepared, data
        self.pad_id, self.total = pad_id, total
        self.tc = seeds[0].cfg.train
        self.rank, self.world = seeds[0].rank, seeds[0].world
        self.progress = progress and self.rank == 0
        self.training = [True] * len(seeds)
        self.failed: dict[int, str] = {}
        # A pack clips each seed's gradient itself (DeepSpeed would clip all seeds as one vector). Under ZeRO the
        # gradients live in the optimizer's partitions, where only DeepSpeed can clip: then the pack is one seed
        # (ExperimentConfig.unpackable refuses clipped ZeRO packs) and DeepSpeed clips it (engine built with clipping).
        self.clip_per_seed = self.tc.zero_stage == 0
        self.pad_multiple = self.tc.pad_multiple(prepared.device.type)
        self.read_every = self.tc.read_every(prepared.device.type)
        # Steps trained but not yet booked: (step, lr, each training seed's (loss on the device, rows) per micro-batch).
        self.unread: list[tuple[int, float, dict[int, list[tuple[torch.Tensor, int]]]]] = []
        self.max_length = seeds[0].cfg.task.max_seq_length
        self.train_seconds = self.eval_seconds = 0.0

    def active(self) -> list[int]:
        return [i for i, on in enumerate(self.training) if on]

    def run(self, start_step: int = 0) -> None:
        from tqdm.auto import tqdm

        tc = self.tc
        orders = [s.batch_order(self.data["train"]) for s in self.seeds]
        for order in orders:  # resuming skips the data already seen, as an unbroken run would have
            for _ in range(start_step * tc.grad_accum):
                next(order)
        for s in self.seeds:  # ... and draws the perturbations it would (one perturbed pass per micro-batch)
            if s.perturbation is not None:
                s.perturbation.calls = start_step * tc.grad_accum
        names = [s.seed for s in self.seeds]
        bar = tqdm(total=self.total, initial=start_step, disable=not self.progress, dynamic_ncols=True,
                   desc=f"seed {names[0]}" if len(names) == 1 else f"seeds {names}")
        step = start_step
        while step < self.total and self.active():
            t_start = time.perf_counter()
            self.engine.train()
            losses: dict[int, list[tuple[torch.Tensor, int]]] = {i: [] for i in self.active()}
            for _ in range(tc.grad_accum):
                self.micro_step([next(o) if self.training[i] else [] for i, o in enumerate(orders)], losses)
            step += 1
            for i in self.active():
                self.seeds[i].model.method.on_step(step)
            self.unread.append((step, self.engine.get_lr()[0], losses))
            due = step % tc.eval_every == 0 or step == self.total
            if due or step % self.read_every == 0:
                self.read_losses(bar)
            self.train_seconds += time.perf_counter() - t_start  # a read waits for the device: its time is training's
            bar.update(1)
            metrics = self.evaluate("selection", self.active()) if due else {}
            for i, m in metrics.items():
                if self.seeds[i].select(step, m, self.p.task.primary_metric):
                    self.training[i] = False
            # The reporters hear the step once every seed has booked it, so a checkpoint saved now holds them all.
            for i, m in metrics.items():
                seed = self.seeds[i]
                if seed.reporter is not None and seed.reporter(step, {**m, "loss": seed.history[-1]["loss"]},
                                                               self.saver(step)):
                    self.training[i] = False
        bar.close()
        done = [i for i in range(len(self.seeds)) if i not in self.failed]
        # A seed resized at its last step (a PBT exploit at the end) has no evaluation at its length: scored as it is.
        unscored = [i for i in done if self.seeds[i].best["state"] is None]
        for i, m in (self.evaluate("selection", unscored) if unscored else {}).items():
            self.seeds[i].keep_if_best(step, m, self.p.task.primary_metric)
        for i in done:
            self.seeds[i].restore_best()
        report = self.evaluate("report", done) if done else {}
        for i in done:
            self.seeds[i].finish(report[i])

    def micro_step(self, indices: list[list[int]], losses: dict[int, list[tuple[torch.Tensor, int]]]) -> None:
        """Each seed's micro-batch (indices into the train split; empty for a seed that no longer trains)."""
        items = self.data["train"]
        self.micro_step_on([self.batch([items[j] for j in idx]) if idx else None for idx in indices], losses)

    def micro_step_on(self, batches: list[dict[str, torch.Tensor] | None],
                      losses: dict[int, list[tuple[torch.Tensor, int]]]) -> None:
        """Forward, backward and optimizer step of the seeds' batches (None: a seed that no longer trains); each seed's
        loss goes to `losses` unread, with its batch's examples."""
        scores = self.engine(batches)
        total = None
        for i, (s, batch) in enumerate(zip(scores, batches)):
            if s is not None:
                with self.seeds[i].stream.active():  # a perturbation's passes draw dropout from the seed's stream
                    loss = loss_fn(self.seeds[i].model, batch, self.seeds[i].perturbation, scores=s)
                losses[i].append((loss.detach(), batch["labels"].shape[0]))
                total = loss if total is None else total + loss
        if total is None:
            return
        # A seed whose loss went bad since the last read backpropagates it too: a NaN stays in that seed's own rows
        # and parameters (no frozen weight takes a gradient), so the other seeds train on as they would alone.
        self.engine.backward(total)
        if self.clip_per_seed and self.tc.max_grad_norm is not None and self.engine.is_gradient_accumulation_boundary():
            for i in self.active():  # each seed's gradient clipped on its own
                clip_gradient(self.seeds[i].trainable_params(), self.tc.max_grad_norm)
        self.engine.step()

    def read_losses(self, bar) -> None:
        """Book every unread step: one host sync reads all their losses. A seed whose loss went bad (NaN, inf, above
        train.max_loss) fails at that step, and its later steps are not booked. With several ranks a loss is the mean
        over the ranks' micro-batches: every rank then fails a seed at the same step (a rank that stopped a seed alone
        would leave the others waiting in its collectives)."""
        unread, self.unread = self.unread, []
        flat = [loss for _, _, losses in unread for entries in losses.values() for loss, _ in entries]
        stacked = torch.stack([x.float() for x in flat]) if flat else None
        if stacked is not None and self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(stacked)  # a NaN or inf on any rank stays one in the sum
            stacked /= self.world
        values = iter(stacked.tolist() if stacked is not None else [])
        booked: list[float] = []
        for step, lr, losses in unread:
            booked = []
            for i, entries in losses.items():
                seed_values = [next(values) for _ in entries]
                if i in self.failed:
                    continue
                try:
                    for value in seed_values:
                        check_loss(value, step, self.tc.max_loss)
                except Diverged as e:
                    self.fail(i, str(e))
                    continue
                seed = self.seeds[i]
                seed.examples_seen += sum(rows for _, rows in entries) * self.world
                seed.book(step, seed_values, lr)
                booked.append(seed.history[-1]["loss"])
        if booked:
            bar.set_postfix(loss=f"{np.mean(booked):.4f}")

    def evaluate(self, role: str, which: list[int]) -> dict[int, dict]:
        """Metrics of the seeds `which` on a split; every eval batch runs once for all of them."""
        t0 = time.perf_counter()
        self.engine.eval()

        def forward(items):
            batch = self.batch(items)
            return [s for s in self.engine([batch if i in which else None for i in range(len(self.seeds))])
                    if s is not None]

        preds = predict(forward, self.data[role], self.tc.eval_batch_size, self.rank, self.world)
        examples = getattr(self.p, role)
        metrics = {i: self.p.task.compute_metrics(examples, pred) for i, pred in zip(which, preds)}
        self.eval_seconds += time.perf_counter() - t0
        return metrics

    def batch(self, items: list[Encoded]) -> dict[str, torch.Tensor]:
        """`items` padded into one batch (train.pad_to_multiple_of as resolved for the device), on the device."""
        return self.to_device(collate(items, self.pad_id, self.pad_multiple, self.max_length))

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.engine.device.type != "cuda":
            return {k: v.to(self.engine.device) for k, v in batch.items()}
        # From pageable memory a copy to a GPU waits for the GPU to finish its queue (a host sync per tensor); from
        # pinned memory it is queued like a kernel.
        return {k: v.pin_memory().to(self.engine.device, non_blocking=True) for k, v in batch.items()}

    def fail(self, i: int, reason: str) -> None:
        self.training[i] = False
        self.failed[i] = reason

    def saver(self, step: int) -> Callable[[Path], None]:
        def save(directory: Path) -> None:
            # Every rank writes its ZeRO shard; the step rides along so a restore continues the schedule. The frozen
            # backbone is left out: it comes from the model, and would make every checkpoint model-sized.
            self.engine.save_checkpoint(str(directory), tag=f"step{step}",
                                        client_state={"step": step, "loop": self.bookkeeping()},
                                        exclude_frozen_parameters=True)

        return save

    def bookkeeping(self) -> dict:
        return {"seeds": [s.bookkeeping() for s in self.seeds], "training": self.training, "failed": self.failed,
                "train_seconds": self.train_seconds, "eval_seconds": self.eval_seconds}

    def restore(self, bookkeeping: dict) -> None:
        if "seeds" not in bookkeeping:  # a one-seed checkpoint from before every run was a pack
            bookkeeping = {"seeds": [bookkeeping], "training": [True], "failed": {},
                           "train_seconds": bookkeeping.get("train_seconds", 0.0),
                           "eval_seconds": bookkeeping.get("eval_seconds", 0.0)}
        for seed, state in zip(self.seeds, bookkeeping["seeds"]):
            seed.restore(state)
        self.training, self.failed = list(bookkeeping["training"]), dict(bookkeeping["failed"])
        self.train_seconds, self.eval_seconds = bookkeeping["train_seconds"], bookkeeping["eval_seconds"]
