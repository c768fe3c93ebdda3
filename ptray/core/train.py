"""The training recipe: seeds of one config from data to result, readable top to bottom.

    prepare(cfg)        -> validate everything cheap (task files, labels, positions, dtype) before weights load
    train_seeds(cfgs)   -> load the backbone once, build each seed's prompt method, wrap them all in one DeepSpeed
                           engine, train them together (ptray.core.loop), select, report: one result per seed
    train(cfg)          -> one seed: train_seeds([cfg])

No Ray and no MLflow here: the distributed layer calls `train` (with a `reporter` to hear about evaluations).
"""
from __future__ import annotations

import logging
import math
import platform
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ptray.config import ConfigError, ExperimentConfig
from ptray.config_view import as_text
from ptray.core import backbone as bb
from ptray.core.data import Encoded, Encoder, sample_per_class
from ptray.core.engine import init_distributed
from ptray.core.loop import Loop, Reporter, SeedRun
from ptray.core.methods.base import BackboneInfo
from ptray.core.model import PromptModel
from ptray.core.packing import PackedModel, check_pack
from ptray.core.resize import resize_checkpoint
from ptray.core.tasks import Example, Task, build_task
from ptray.layout import RESULT_FILE, write_json

log = logging.getLogger(__name__)


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
    max_positions: int | None = None  # the model's position limit (None: relative positions)


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
    problem = cfg.positions_problem(limit)
    if problem:
        raise ConfigError(problem)
    device = bb.resolve_device(cfg.model.device)
    if cfg.train.seed_pack > 1 and cfg.model.dropout and device.type != "cpu":
        raise ConfigError(f"train.seed_pack {cfg.train.seed_pack} with model.dropout on {device.type}: there a pack "
                          f"reads all its seeds' rows in one backbone pass, which draws one dropout stream for all, so "
                          f"the seeds' dropout would not be their own; set model.dropout=false or train.seed_pack=1")
    if cfg.model.dtype == "bf16":
        bb.check_bf16(device)
    return Prepared(cfg, task, train, selection, report, family, device, cautions, limit)


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
          resume_dir: str | Path | None = None, progress: bool = True, prepared: Prepared | None = None,
          donor=None) -> dict:
    """Train one seed. Returns (and writes to output_dir/result.json) the result, `status` ok or failed."""
    return train_seeds([cfg], [output_dir], [reporter], resume_dir, progress, prepared, donor)[0]


def train_seeds(cfgs: list[ExperimentConfig], output_dirs: list[str | Path | None],
                reporters: list[Reporter | None] | None = None, resume_dir: str | Path | None = None,
                progress: bool = True, prepared: Prepared | None = None, donor=None) -> list[dict]:
    """Train the seeds of one config together (`cfgs` equal but for train.seed; ConfigError otherwise, before any
    weights load). Returns one result per seed, in order, each also written to its output dir's result.json (a pack of
    several also records `seed_pack`: the seeds trained together). reporters[i] hears seed i's evaluations; its
    `save(dir)` checkpoints the whole pack, which `resume_dir` restores. A seed that diverges fails alone; a crash
    fails every seed still training, with the reason and traceback. `donor`: who the checkpoint in `resume_dir` came
    from, when not from these seeds' own run (a PBT exploit); a resize to this config's prompt length records it."""
    check_pack(cfgs)
    k = len(cfgs)
    reporters = list(reporters) if reporters is not None else [None] * k
    if len(output_dirs) != k or len(reporters) != k:
        raise ConfigError(f"train_seeds got {k} configs, {len(output_dirs)} output dirs and {len(reporters)} "
                          f"reporters: give one of each per seed")
    t0 = time.perf_counter()
    p = prepared or prepare(cfgs[0])
    seeds = [c.train.seed for c in cfgs]
    log.info("config of seed%s %s%s, resolved:\n%s", "s" if k > 1 else "", ", ".join(map(str, seeds)),
             " (shown: the first's)" if k > 1 else "", as_text(cfgs[0], resolved=resolved_at_load(cfgs[0], p)))
    outs = [Path(d) if d is not None else None for d in output_dirs]
    results = [new_result(c, p) for c in cfgs]
    loop, failed = None, {}
    try:
        loop = build_loop(cfgs, p, outs, reporters, progress)
        t_load = time.perf_counter()
        loop.run(resume(loop.engine, resume_dir, loop, donor) if resume_dir is not None else 0)
        failed = loop.failed
        for i, (result, seed) in enumerate(zip(results, loop.seeds)):
            result["trainable_params"] = sum(x.numel() for x in seed.trainable_params())
            result["timings"] = {"load_s": t_load - t0, "train_s": loop.train_seconds, "eval_s": loop.eval_seconds}
            if i not in failed:
                result.update(seed.summary(loop.train_seconds))
    except ConfigError:
        raise
    except Exception as e:  # a crash is every unfinished seed's: record it, never drop it
        failed = dict(loop.failed) if loop is not None else {}
        for i in range(k):
            if i not in failed:
                failed[i] = f"{type(e).__name__}: {e}"
                if not isinstance(e, FloatingPointError):
                    results[i]["traceback"] = traceback.format_exc()
    finally:
        if loop is not None:
            from ptray.core.engine import close_engine

            close_engine(loop.engine)
    total_s = time.perf_counter() - t0
    for i, (result, out) in enumerate(zip(results, outs)):
        if i in failed:
            result.update(status="failed", reason=failed[i])
        if k > 1:
            result["seed_pack"] = seeds
        result.setdefault("timings", {})["total_s"] = total_s
        write_result(out, result)
    return results


def build_loop(cfgs: list[ExperimentConfig], p: Prepared, outs: list[Path | None] | None = None,
               reporters: list[Reporter | None] | None = None, progress: bool = False) -> Loop:
    """The seeds' models over one backbone, one DeepSpeed engine around them all, and each seed's SeedRun."""
    outs = outs or [None] * len(cfgs)
    reporters = reporters or [None] * len(cfgs)
    tc = cfgs[0].train
    # The process group first: launched from the environment (torchrun, the deepspeed launcher) it does not exist yet,
    # and this rank's place in it decides the data shard and the step count below.
    init_distributed(p.device)
    # Seeds in one process share the frozen backbone; ZeRO-3 partitions the weights it is given, so a pack under
    # ZeRO-3 gets its own copy (shared by its seeds).
    backbone = bb.load_backbone(cfgs[0].model, reuse=tc.zero_stage < 3)
    encoder = Encoder(p.task, backbone.tokenizer, backbone.family, cfgs[0].task.max_seq_length)
    data = encoded_splits(cfgs[0], p, encoder)
    world, rank = _world()
    models, runs = [], []
    for cfg, out, reporter in zip(cfgs, outs, reporters):
        seed_everything(cfg.source_seeds()["init"])  # the head's init (the prompt's comes from its own generator)
        model = place(build_model(cfg, backbone, p.task), encoder, p.device)
        models.append(model)
        runs.append(SeedRun(cfg, model, backbone.tokenizer, p.device, rank, world, out, reporter))
    total = total_steps(cfgs[0], len(data["train"]), world)
    # Stage 0: the loop clips each seed's gradient itself (DeepSpeed would clip all seeds as one vector). Under ZeRO
    # only DeepSpeed can reach the gradients, and a clipped ZeRO run is one seed (ExperimentConfig.unpackable).
    engine_cfg = cfgs[0].model_copy(update={"train": tc.model_copy(update={"max_grad_norm": None})}) \
        if tc.zero_stage == 0 else cfgs[0]
    if p.device.type == "cuda":
        # cuDNN's attention builds an execution plan for every new sequence length; with it off, flash or
        # memory-efficient attention run, and a grouped train step was 1.7-1.9x (1.1B Llama shape) and 3-3.7x (135M)
        # faster on an H200 (2026-11-30).
        torch.backends.cuda.enable_cudnn_sdp(False)
    # On a GPU the seeds share one backbone pass; on a CPU each seed has its own (see ptray.core.packing).
    packed = PackedModel(models, [r.stream for r in runs], joint=p.device.type != "cpu",
                         pad_id=encoder.tokenizer.pad_token_id)
    engine = build_engine(packed, engine_cfg, total, p.device)
    return Loop(runs, engine, p, data, encoder.tokenizer.pad_token_id, total, progress)


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
        # The padding rounding and the loss reads are resolved per device, so they are recorded with the device.
        "environment": {**environment(p.device), "pad_to_multiple_of": cfg.train.pad_multiple(p.device.type),
                        "read_loss_every": cfg.train.read_every(p.device.type)},
        "config": cfg.to_dict(),
    }


def environment(device: torch.device) -> dict:
    """What a seed's numbers depend on besides its config and seeds. On a CPU the order of float sums follows the
    thread count (and the instruction set): TREC at lr 0.1 with 32 tokens scored 0.596 on 1 thread and 0.702 on 2, for
    the same seed. Same config, seeds and environment: bit for bit the same numbers."""
    processor = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return {"torch": torch.__version__, "device": str(device), "processor": processor,
            "threads": torch.get_num_threads()}


def cpu_name() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else what the platform module knows."""
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
             if line.startswith("model name")] if cpuinfo.is_file() else []
    return names[0] if names else platform.processor() or platform.machine()


def write_result(out: Path | None, result: dict) -> None:
    if out is not None and _world()[1] == 0:
        write_json(out / RESULT_FILE, result)


def total_steps(cfg: ExperimentConfig, n_train: int, world: int) -> int:
    per_step = cfg.train.batch_size * cfg.train.grad_accum * world
    return cfg.train.max_steps or math.ceil(cfg.train.epochs * math.ceil(n_train / per_step))


def resume(engine, resume_dir: str | Path, loop: Loop | None = None, donor=None) -> int:
    """Restore a checkpoint written by a reporter's `save`; returns the step it was taken at. With `loop`, its
    bookkeeping too (history, best selection state), so a resumed run reports as an unbroken one would. A checkpoint
    whose prompts have another length than this config's method.num_tokens is resized (ptray.core.resize), and the
    seed records it, with `donor` (who the checkpoint came from, if another member: PBT)."""
    with tempfile.TemporaryDirectory(prefix="ptray-resized-") as resized_dir:
        resized = resize_checkpoint(engine, resume_dir, resized_dir)
        # The learning-rate schedule comes from this config, not the checkpoint: a PBT exploit resumes another
        # member's state with its own hyperparameters.
        _, client = engine.load_checkpoint(resized_dir if resized else str(resume_dir), load_module_strict=False,
                                           load_lr_scheduler_states=False)
    start_step = int((client or {}).get("step", 0))
    engine.lr_scheduler.last_epoch = start_step - 1
    with warnings.catch_warnings():
        # torch warns of a scheduler step before any optimizer step; here it only sets the lr for start_step.
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
        engine.lr_scheduler.step()
    if loop is not None and client and "loop" in client:
        loop.restore(client["loop"])
    if loop is not None:
        for i, (old, new) in resized.items():
            loop.seeds[i].resized(start_step, old, new, donor)
    return start_step


def load_model(cfg: ExperimentConfig, p: Prepared) -> tuple[PromptModel, Encoder, dict[str, list]]:
    """Backbone + the config's prompt method on the device, its encoder, and the encoded splits (train, selection,
    report): what training starts from, and what an analysis of a trained adapter rebuilds."""
    # Seeds in one process share the frozen backbone and the tokenised splits; ZeRO-3 partitions the weights it is
    # given, so it gets its own copy.
    backbone = bb.load_backbone(cfg.model, reuse=cfg.train.zero_stage < 3)
    encoder = Encoder(p.task, backbone.tokenizer, backbone.family, cfg.task.max_seq_length)
    return place(build_model(cfg, backbone, p.task), encoder, p.device), encoder, encoded_splits(cfg, p, encoder)


def place(model: PromptModel, encoder: Encoder, device: torch.device) -> PromptModel:
    """The model on its device, scoring at the encoder's label words."""
    model.to(device)
    model.label_token_ids = torch.tensor(encoder.label_token_ids, dtype=torch.long, device=device)
    return model


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
