"""The training recipe: one (config, seed) from data to result, readable top to bottom.

    prepare(cfg)  -> validate everything cheap (task files, labels, positions, dtype) before weights load
    train(cfg)    -> load backbone, build the prompt method, wrap in DeepSpeed, train, select, report

No Ray and no MLflow here: the distributed layer calls `train` (with a `reporter` to hear about evaluations).
"""
from __future__ import annotations

import json
import logging
import math
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch

from ptray.config import ConfigError, ExperimentConfig
from ptray.config_view import as_text
from ptray.core import backbone as bb
from ptray.core.data import Encoded, Encoder, collate, sample_per_class, train_order
from ptray.core.methods.base import BackboneInfo
from ptray.core.model import PromptModel, option_loss
from ptray.core.perturbations import build_perturbation
from ptray.core.tasks import Example, Task, build_task
from ptray.core.zero import gathered
from ptray.layout import ADAPTER_FILE, RESULT_FILE, redact, write_json

log = logging.getLogger(__name__)


class Reporter(Protocol):
    """Hears every evaluation. `save(dir)` writes a resumable checkpoint there; return True to stop the run."""

    def __call__(self, step: int, metrics: dict, save: Callable[[Path], None]) -> bool | None: ...


class Diverged(RuntimeError):
    pass


@dataclass
class Prepared:
    cfg: ExperimentConfig
    task: Task
    train: list[Example]
    selection: list[Example]
    report: list[Example]
    family: str
    device: torch.device
    # What the run should know but may go on with; result.json records them.
    warnings: list[str] = field(default_factory=list)


def prepare(cfg: ExperimentConfig) -> Prepared:
    """Every check that needs no weights: a bad config fails here, in seconds, with the key to fix."""
    t = cfg.task
    task = build_task(t)
    task.check_files(list(dict.fromkeys([t.train_split, t.selection_split, t.report_split])))
    train, selection, report = load_splits(cfg, task)
    for role, exs in (("train", train), ("selection", selection), ("report", report)):
        if not exs:
            raise ConfigError(f"task {t.name}: the {role} split holds no examples")
    cautions = []
    if task.same_source(t.selection_split, t.report_split):
        cautions.append(f"task.selection_split {t.selection_split!r} reads the report split (task.report_split "
                        f"{t.report_split!r}): the checkpoint is chosen on the data it is reported on, so the report "
                        f"is optimistic; set task.selection_split to a held-out split")
    for caution in cautions:
        warnings.warn(caution, stacklevel=2)
    hf_config = bb.load_hf_config(cfg.model)
    family = bb.detect_family(hf_config, cfg.model.family)
    limit = bb.max_positions(hf_config)
    prompt_len = cfg.method.added_positions()
    if limit is not None and prompt_len + t.max_seq_length > limit:
        raise ConfigError(
            f"method prompt length {prompt_len} + task.max_seq_length {t.max_seq_length} = {prompt_len + t.max_seq_length} "
            f"exceeds the {limit} positions of model {cfg.model.name!r}; lower task.max_seq_length to {limit - prompt_len} or less"
        )
    device = bb.resolve_device(cfg.model.device)
    if cfg.model.dtype == "bf16":
        bb.check_bf16(device)
    return Prepared(cfg, task, train, selection, report, family, device, cautions)


def resolved_at_load(cfg: ExperimentConfig, p: Prepared) -> dict[str, tuple[str, str]]:
    """The keys that `prepare` decides rather than the config ("auto"): dotted key -> (value, where it comes from)."""
    out = {}
    if cfg.model.family == "auto":
        out["model.family"] = (p.family, "detected from the model's config")
    if cfg.model.device == "auto":
        out["model.device"] = (p.device.type, "the devices torch sees")
    return out


def load_splits(cfg: ExperimentConfig, task: Task) -> tuple[list[Example], list[Example], list[Example]]:
    """The train, selection and report examples. With task.k_shot K, the few-shot protocol: K per class of the train
    split and K per class of the selection split, drawn by the sample seed; where both are one split, the two samples
    are disjoint."""
    t = cfg.task
    report = task.load(t.report_split, t.max_eval_examples)
    if t.k_shot is None:
        return task.load(t.train_split, t.max_train_examples), task.load(t.selection_split, t.max_eval_examples), report
    if task.is_multiple_choice:
        raise ConfigError(f"task.k_shot {t.k_shot}: task {t.name} is multiple-choice (each example brings its own "
                          f"candidates), so it has no label classes to sample per class; unset task.k_shot, or cap "
                          f"the training set with task.max_train_examples")
    seed, labels = cfg.source_seeds()["sample"], task.get_labels()
    pool = task.load(t.train_split)
    if any(e.group is not None for e in pool):
        raise ConfigError(f"task.k_shot {t.k_shot}: task {t.name}'s examples come in groups (the answers to one "
                          f"question) that its metrics score together, and a per-class sample would split them; unset "
                          f"task.k_shot")
    if task.same_source(t.train_split, t.selection_split):
        train, selection = sample_per_class(pool, labels, t.k_shot, seed, 2, f"task {t.name}'s split "
                                            f"{t.train_split!r} (the training and the selection sample)")
    else:
        [train] = sample_per_class(pool, labels, t.k_shot, seed, 1, f"task {t.name}'s split {t.train_split!r}")
        [selection] = sample_per_class(task.load(t.selection_split), labels, t.k_shot, seed, 1,
                                       f"task {t.name}'s split {t.selection_split!r}")
    return train, selection, report


def train(cfg: ExperimentConfig, output_dir: str | Path | None = None, reporter: Reporter | None = None,
          resume_dir: str | Path | None = None, progress: bool = True, prepared: Prepared | None = None) -> dict:
    """Train one seed. Returns (and writes to output_dir/result.json) the result, `status` ok or failed."""
    t0 = time.perf_counter()
    p = prepared or prepare(cfg)
    log.info("config of seed %s, resolved:\n%s", cfg.train.seed, as_text(cfg, resolved=resolved_at_load(cfg, p)))
    out = Path(output_dir) if output_dir is not None else None
    result = new_result(cfg, p)
    engine = None
    try:
        seeds = cfg.source_seeds()
        seed_everything(seeds["init"])  # the head's init (the prompt's comes from its own generator: build_model)
        model, encoder, data = load_model(cfg, p)
        seed_everything(seeds["order"])  # what training draws from the global stream: dropout, Gumbel noise
        result["trainable_params"] = sum(x.numel() for x in model.parameters() if x.requires_grad)
        t_load = time.perf_counter()
        result["timings"] = {"load_s": t_load - t0}

        world, rank = _world()
        total = total_steps(cfg, len(data["train"]), world)
        engine = build_engine(model, cfg, total, p.device)
        loop = TrainLoop(cfg, engine, model, p, data, encoder, total, rank, world, out, reporter, progress)
        start_step = resume(engine, resume_dir, loop) if resume_dir is not None else 0
        loop.run(start_step)
        result.update(loop.summary())
        result["timings"]["train_s"] = loop.train_seconds
        result["timings"]["eval_s"] = loop.eval_seconds
    except (Diverged, FloatingPointError) as e:
        result.update(status="failed", reason=str(e))
    except ConfigError:
        raise
    except Exception as e:  # a crashed seed is data: record it with its reason, never drop it
        result.update(status="failed", reason=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
    finally:
        if engine is not None:
            from ptray.core.engine import close_engine

            close_engine(engine)
    result.setdefault("timings", {})["total_s"] = time.perf_counter() - t0
    write_result(out, result)
    return result


def new_result(cfg: ExperimentConfig, p: Prepared) -> dict:
    """A seed's result before training: what it is, and status ok until something fails."""
    return {
        # seeds: each source of seed variance's own seed (ExperimentConfig.source_seeds).
        "seed": cfg.train.seed, "seeds": cfg.source_seeds(), "status": "ok", "reason": None,
        "task": cfg.task.name, "method": cfg.method.name, "model": cfg.model.name, "family": p.family,
        "selection_split": cfg.task.selection_split, "report_split": cfg.task.report_split,
        "primary_metric": p.task.primary_metric,
        "majority_baseline": p.task.majority_baseline(p.report),
        "warnings": p.warnings,
        "config": cfg.to_dict(),
    }


def write_result(out: Path | None, result: dict) -> None:
    if out is not None and _world()[1] == 0:
        write_json(out / RESULT_FILE, result)


def total_steps(cfg: ExperimentConfig, n_train: int, world: int) -> int:
    per_step = cfg.train.batch_size * cfg.train.grad_accum * world
    return cfg.train.max_steps or math.ceil(cfg.train.epochs * math.ceil(n_train / per_step))


def resume(engine, resume_dir: str | Path, loop: TrainLoop | None = None) -> int:
    """Restore a checkpoint written by a reporter's `save`; returns the step it was taken at. With `loop`, its
    bookkeeping too (history, best selection state), so a resumed run reports as an unbroken one would."""
    # The learning-rate schedule comes from this config, not the checkpoint: a PBT exploit resumes another
    # member's state with its own hyperparameters.
    _, client = engine.load_checkpoint(str(resume_dir), load_module_strict=False, load_lr_scheduler_states=False)
    start_step = int((client or {}).get("step", 0))
    engine.lr_scheduler.last_epoch = start_step - 1
    with warnings.catch_warnings():
        # torch warns of a scheduler step before any optimizer step; here it only sets the lr for start_step.
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
        engine.lr_scheduler.step()
    if loop is not None and client and "loop" in client:
        loop.restore(client["loop"])
    return start_step


def load_model(cfg: ExperimentConfig, p: Prepared) -> tuple[PromptModel, Encoder, dict[str, list]]:
    """Backbone + the config's prompt method on the device, its encoder, and the encoded splits (train, selection,
    report): what training starts from, and what an analysis of a trained adapter rebuilds."""
    # Seeds in one process share the frozen backbone and the tokenised splits; ZeRO-3 partitions the weights it is
    # given, so it gets its own copy.
    backbone = bb.load_backbone(cfg.model, reuse=cfg.train.zero_stage < 3)
    model = build_model(cfg, backbone, p.task)
    model.to(p.device)
    encoder = Encoder(p.task, backbone.tokenizer, backbone.family, cfg.task.max_seq_length)
    model.label_token_ids = torch.tensor(encoder.label_token_ids, dtype=torch.long, device=p.device)
    return model, encoder, encoded_splits(cfg, p, encoder)


# Tokenised splits by (task, model) config: every example is tokenised once per process (kept one at a time).
_ENCODED: dict[str, dict[str, list[Encoded]]] = {}


def encoded_splits(cfg: ExperimentConfig, p: Prepared, encoder: Encoder) -> dict[str, list[Encoded]]:
    # Seeds that share a config but not a k-shot sample (task.sample_seed unset) do not share their examples.
    key = cfg.task.model_dump_json() + cfg.model.model_dump_json() + str(cfg.source_seeds()["sample"])
    if key not in _ENCODED:
        _ENCODED.clear()
        _ENCODED[key] = {role: [encoder.encode(e) for e in exs] for role, exs in
                         (("train", p.train), ("selection", p.selection), ("report", p.report))}
    return _ENCODED[key]


def build_model(cfg: ExperimentConfig, backbone: bb.Backbone, task: Task) -> PromptModel:
    info = BackboneInfo(backbone.hidden_size, backbone.num_layers, backbone.num_heads, backbone.family,
                        backbone.model.get_input_embeddings(), backbone.tokenizer, backbone=backbone.model)
    generator = torch.Generator().manual_seed(cfg.source_seeds()["init"])
    method = cfg.method.build(info, generator)
    labels = task.get_labels()
    return PromptModel(backbone, method, len(labels) if labels else None, [], cfg.model.pooling, cfg.model.dropout)


def build_engine(model, cfg, total, device):
    from ptray.core.engine import build_engine as _build

    return _build(model, cfg.train, total, device)


def seed_everything(seed: int) -> None:
    from transformers import set_seed

    set_seed(seed)  # python, numpy and torch: prompt init, head init and dropout


def _world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def check_loss(value: float, step: int, max_loss: float) -> None:
    """A NaN, infinite or too large loss ends the seed as failed: diverged."""
    if not math.isfinite(value) or value > max_loss:
        raise Diverged(f"loss diverged ({value:.4g}) at step {step}")


@torch.inference_mode()
def predict(forward, items: list[Encoded], batch_size: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """Predicted option of every item by one or more models: `forward(list of Encoded)` returns one [B, K] score
    tensor per model (packed seeds score together). Longest first, so batches pad little; ranks share the work and
    gather the predictions."""
    order = sorted(range(len(items)), key=lambda i: -sum(len(r) for r in items[i].rows))
    mine = order[rank::world]
    per_rank = math.ceil(len(order) / world)
    # Under ZeRO-3 every rank must run the same number of forwards: pad the short shard with a repeat.
    mine = mine + mine[-1:] * (per_rank - len(mine)) if mine else order[:1] * per_rank
    preds: list[dict[int, int]] = []
    for start in range(0, len(mine), batch_size):
        idx = mine[start : start + batch_size]
        scores = forward([items[i] for i in idx])
        preds = preds or [{} for _ in scores]
        for pred, s in zip(preds, scores):
            pred.update(zip(idx, s.argmax(-1).tolist()))
    if world > 1:
        import torch.distributed as dist

        shards = [None] * world
        dist.all_gather_object(shards, preds)
        preds = [{k: v for shard in shards for k, v in shard[m].items()} for m in range(len(preds))]
    return [[pred[i] for i in range(len(items))] for pred in preds]


def loss_fn(model, batch, perturbation=None) -> torch.Tensor:
    """Cross-entropy over each example's options; the seam where regularizers add their terms: a PTP perturbation adds
    lambda * L(perturbed), its passes run on the bare model (the engine's `.module`; see ptray.core.perturbations)."""
    loss = option_loss(model(batch), batch["labels"])
    if perturbation is not None:
        loss = loss + perturbation.weight * perturbation.perturbed_loss(getattr(model, "module", model), batch)
    return loss


class TrainLoop:
    """The step loop, kept in one place: micro-batches -> DeepSpeed step -> periodic selection eval. Seed packing
    (ptray.core.packing) keeps one per seed for its bookkeeping: batch_order, end_step, restore_best, finish."""

    def __init__(self, cfg, engine, model, prepared, data, encoder, total, rank, world, out, reporter, progress):
        self.cfg, self.engine, self.model, self.p, self.data = cfg, engine, model, prepared, data
        self.total, self.rank, self.world, self.out = total, rank, world, out
        self.reporter, self.progress = reporter, progress and rank == 0
        self.pad_id = encoder.tokenizer.pad_token_id
        self.perturbation = build_perturbation(cfg, encoder.tokenizer, rank)
        self.history: list[dict] = []
        self.best = {"score": -math.inf, "step": 0, "metrics": None, "state": None, "adapter": {}}
        self.patience = 0
        self.train_seconds = self.eval_seconds = 0.0
        self.examples_seen = 0
        self.steps_done = 0

    def batch_order(self):
        """This seed's endless training micro-batches, as indices into the train split (see data.train_order)."""
        tc = self.cfg.train
        return train_order(self.data["train"], tc.batch_size, self.cfg.source_seeds()["order"], self.rank, self.world,
                           tc.group_by_length)

    def run(self, start_step: int = 0) -> None:
        from tqdm.auto import tqdm

        tc = self.cfg.train
        items = self.data["train"]
        order = self.batch_order()
        # Resuming skips the data already seen, so a resumed run sees what an unbroken one would.
        for _ in range(start_step * tc.grad_accum):
            next(order)
        if self.perturbation is not None:  # ... and draws the perturbations it would
            self.perturbation.calls = start_step * tc.grad_accum
        bar = tqdm(total=self.total, initial=start_step, disable=not self.progress, desc=f"seed {tc.seed}",
                   dynamic_ncols=True)
        step = start_step
        while step < self.total:
            t_start = time.perf_counter()
            self.engine.train()
            losses = [self.micro_step(collate([items[i] for i in next(order)], self.pad_id), step + 1)
                      for _ in range(tc.grad_accum)]
            step += 1
            self.model.method.on_step(step)
            self.train_seconds += time.perf_counter() - t_start
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses):.4f}")
            if self.end_step(step, losses, self.evaluate("selection") if self.eval_due(step) else None):
                break
        bar.close()
        self.restore_best()
        self.finish(self.evaluate("report"))

    def micro_step(self, batch: dict, step: int) -> float:
        batch = self._to_device(batch)
        loss = loss_fn(self.engine, batch, self.perturbation)
        value = loss.item()
        check_loss(value, step, self.cfg.train.max_loss)
        self.engine.backward(loss)
        self.engine.step()
        self.examples_seen += batch["labels"].shape[0] * self.world
        return value

    def eval_due(self, step: int) -> bool:
        return step % self.cfg.train.eval_every == 0 or step == self.total

    def end_step(self, step: int, losses: list[float], metrics: dict | None) -> bool:
        """Record a finished step; with selection metrics, keep the best state and hear the reporter. True: stop."""
        tc = self.cfg.train
        self.steps_done = step
        record = {"step": step, "loss": float(np.mean(losses)), "lr": self.engine.get_lr()[0]}
        self.history.append(record)
        if metrics is None:
            return False
        record["selection"] = metrics
        score = metrics[self.p.task.primary_metric]
        if score > self.best["score"]:
            self.best = {"score": score, "step": step, "metrics": metrics, "state": self._trainable_state(),
                         "adapter": self._trainable_state(export=True)}
            self.patience = 0
        else:
            self.patience += 1
        stop = False
        if self.reporter is not None:
            stop = bool(self.reporter(step, {**metrics, "loss": record["loss"]}, self._saver(step)))
        return stop or bool(tc.early_stopping_patience and self.patience >= tc.early_stopping_patience)

    def restore_best(self) -> None:
        # Report on the best selection checkpoint, not the last step.
        if self.best["state"] is not None:
            self._load_trainable_state(self.best["state"])

    def finish(self, report_metrics: dict) -> None:
        self.report_metrics = report_metrics
        if self.out is not None and self.rank == 0:
            self._save_adapter()

    def bookkeeping(self) -> dict:
        """What a checkpoint carries besides the engine's state (see `resume`)."""
        return {"history": self.history, "best": self.best, "patience": self.patience,
                "examples_seen": self.examples_seen, "train_seconds": self.train_seconds,
                "eval_seconds": self.eval_seconds}

    def restore(self, bookkeeping: dict) -> None:
        for key, value in bookkeeping.items():
            setattr(self, key, value)
        self.steps_done = self.history[-1]["step"] if self.history else 0

    def summary(self) -> dict:
        return {
            "selection_metrics": self.best["metrics"], "report_metrics": self.report_metrics,
            "best_step": self.best["step"], "steps": self.steps_done, "history": self.history,
            "throughput": {"train_examples_per_s": self.examples_seen / max(self.train_seconds, 1e-9)},
        }

    def evaluate(self, role: str) -> dict:
        t0 = time.perf_counter()
        self.engine.eval()

        def forward(items):
            return [self.engine(self._to_device(collate(items, self.pad_id)))]

        [predictions] = predict(forward, self.data[role], self.cfg.train.eval_batch_size, self.rank, self.world)
        metrics = self.p.task.compute_metrics(getattr(self.p, role), predictions)
        self.eval_seconds += time.perf_counter() - t0
        return metrics

    def _to_device(self, batch):
        return {k: v.to(self.engine.device) for k, v in batch.items()}

    def _trainable_params(self):
        return [x for x in self.model.parameters() if x.requires_grad]

    def _trainable_state(self, export: bool = False):
        # export: the adapter's form (a residual prompt folds its MLP away) instead of the exact snapshot.
        with gathered(self._trainable_params()):
            state = self.model.adapter_state() if export else self.model.trainable_state()
            return {k: v.detach().cpu().clone() for k, v in state.items()}

    def _load_trainable_state(self, state):
        with gathered(self._trainable_params(), modify=True):
            self.model.load_trainable_state(state)

    def _save_adapter(self):
        from safetensors.torch import save_file

        self.out.mkdir(parents=True, exist_ok=True)
        state = {k: v.contiguous() for k, v in self.best["adapter"].items()}
        save_file(state, str(self.out / ADAPTER_FILE), metadata={"config": redact(json.dumps(self.cfg.to_dict()))})

    def _saver(self, step: int) -> Callable[[Path], None]:
        def save(directory: Path) -> None:
            # Every rank writes its ZeRO shard; the step rides along so a restore continues the schedule. The frozen
            # backbone is left out: it comes from the model, and would make every checkpoint model-sized.
            self.engine.save_checkpoint(str(directory), tag=f"step{step}",
                                        client_state={"step": step, "loop": self.bookkeeping()},
                                        exclude_frozen_parameters=True)

        return save
