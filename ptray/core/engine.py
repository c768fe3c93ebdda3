"""Wrap the model and optimizer in a DeepSpeed engine (ZeRO stage, accumulation and clipping from the config).

Only trainable parameters go to the optimizer. In a single process we start a one-rank gloo/nccl group ourselves;
under Ray Train the group already exists and DeepSpeed reuses it.
"""
from __future__ import annotations

import logging
import os
import socket

import torch

from ptray.config import TrainConfig


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(device: torch.device) -> None:
    import deepspeed
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if "RANK" not in os.environ:
        # A lone process: a group of one, so the same engine code runs here and on a cluster.
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo", verbose=False)


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
    if cfg.max_grad_norm is not None:
        config["gradient_clipping"] = cfg.max_grad_norm
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
    return engine


def close_engine(engine) -> None:
    # ZeRO-3 ranks have been seen to abort at exit without an explicit teardown.
    engine.destroy()
