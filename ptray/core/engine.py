"""Wrap the model and optimizer in a DeepSpeed engine (ZeRO stage, accumulation and clipping from the config).

Only trainable parameters go to the optimizer. In a single process we start a one-rank gloo/nccl group ourselves, on
an in-process store (no TCP port to pick: parallel trials racing for a "free" port fail with EADDRINUSE); under Ray
Train the group already exists and DeepSpeed reuses it; under torchrun / the deepspeed launcher it joins from env.
"""
from __future__ import annotations

import logging
import os

import torch

from ptray.config import TrainConfig


def init_distributed(device: torch.device) -> None:
    import deepspeed
    import torch.distributed as dist

    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        # A lone process: a group of one, so the same engine code runs here and on a cluster.
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        os.environ.setdefault("LOCAL_RANK", "0")  # DeepSpeed's engine reads it
    if device.type == "cpu":
        # On a CPU DeepSpeed compiles a shared-memory all-reduce op (~40 s) that only its inference all-reduce uses.
        # Its build waits, forever, on a lock file that a process killed mid-build leaves behind. Training never
        # calls the op, so it is marked unbuildable (the dict is DeepSpeed's cached probe, meant to be edited).
        from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder

        deepspeed.ops.__compatible_ops__[ShareMemCommBuilder.NAME] = False
    deepspeed.init_distributed(dist_backend=backend, verbose=False)  # reuses the group that exists


def build_optimizer(params, cfg: TrainConfig):
    if cfg.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        # Lester et al.'s setting: a fixed learning rate, no relative step or parameter scaling.
        return Adafactor(params, lr=cfg.lr, weight_decay=cfg.weight_decay, relative_step=False,
                         scale_parameter=False, warmup_init=False)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def ds_config(cfg: TrainConfig) -> dict:
    config = {
        "train_micro_batch_size_per_gpu": cfg.batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "zero_optimization": {"stage": cfg.zero_stage},
        # Our optimizers are torch's; DeepSpeed only checks its own list unless told.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    # DeepSpeed clips at 1.0 unless told otherwise: 0 is its "no clipping".
    config["gradient_clipping"] = cfg.max_grad_norm or 0.0
    return config


def build_engine(model: torch.nn.Module, cfg: TrainConfig, total_steps: int, device: torch.device):
    import deepspeed
    from transformers import get_scheduler

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    init_distributed(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, cfg)
    scheduler = get_scheduler(cfg.scheduler, optimizer, num_warmup_steps=int(cfg.warmup_ratio * total_steps),
                              num_training_steps=total_steps)
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=params, optimizer=optimizer,
                                           lr_scheduler=scheduler, config=ds_config(cfg))
    # DeepSpeed's loader (load_checkpoint has no option for it) unpickles with weights_only=False, so a planted
    # checkpoint could run any code; every file DeepSpeed reads for a resume goes through this one method.
    engine.checkpoint_engine.load = load_data_only
    return engine


def load_data_only(path: str, map_location=None):
    """A DeepSpeed checkpoint file read as data only (torch's weights_only loader: tensors, numbers, text, containers),
    with the four plain data classes DeepSpeed itself puts in its ZeRO state allowed by name."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    with torch.serialization.safe_globals([LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]):
        return torch.load(path, map_location=map_location, weights_only=True)


def close_engine(engine) -> None:
    # ZeRO-3 ranks have been seen to abort at exit without an explicit teardown.
    engine.destroy()
