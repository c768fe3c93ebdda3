"""A checkpoint restored at another prompt length: how a PBT member that took over another member's state goes on
with its own, explored, method.num_tokens.

The rule, per resized parameter (a method's `token_rows`: one row per prompt token):
    kept tokens    the first min(old, new) rows keep their values and optimizer moments exactly
    growing        appends rows at the end, initialised as the method's `init` says (the rows a fresh model of the new
                   length starts with: the engine's own model, built from the config at that length), with zero
                   optimizer moments
    shrinking      drops the last rows and their moments: a prompt's later tokens are the ones growth appended
Everything else of the checkpoint (heads, shared MLPs, the optimizer's step count, the loop's bookkeeping) is taken as
it is.

Only ZeRO stage 0 is resized: there DeepSpeed keeps the module and the torch optimizer's state in one file per
checkpoint (mp_rank_00_model_states.pt: "module", and "optimizer" as torch's state_dict), whose tensors have the
parameters' own shapes. Under ZeRO > 0 the optimizer state is flattened into partitions; ptray.distributed.search
refuses PBT over num_tokens there before Ray starts.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ptray.config import ConfigError
from ptray.core.engine import load_data_only

MODEL_FILE = "mp_rank_00_model_states.pt"  # DeepSpeed's file of a stage-0 checkpoint's module and optimizer


def resize_checkpoint(engine, resume_dir: str | Path, out_dir: str | Path) -> dict[int, tuple[int, int]]:
    """When the checkpoint in `resume_dir` holds prompts of another length than the engine's seeds have, write a
    resized copy of it to `out_dir` (for `engine.load_checkpoint`). Returns {seed index in the pack: (old length,
    new length)} of the resized seeds; {} (nothing written) when every length matches."""
    resume_dir, out_dir = Path(resume_dir), Path(out_dir)
    # Without the tag file DeepSpeed's load_checkpoint loads nothing (and says so): nothing to resize either.
    if engine.zero_optimization_stage() != 0 or not (resume_dir / "latest").is_file():
        return {}
    tag = (resume_dir / "latest").read_text().strip()
    state = load_data_only(str(resume_dir / tag / MODEL_FILE))
    params = dict(engine.module.named_parameters())
    # torch's optimizer state_dict numbers the parameters in the order of its param groups.
    index = {id(p): i for i, p in enumerate(p for g in engine.optimizer.param_groups for p in g["params"])}
    resized: dict[int, tuple[int, int]] = {}
    for i, model in enumerate(engine.module.seeds):
        for name in model.method.token_rows():
            key = f"seeds.{i}.method.{name}"
            live, saved = params[key], state["module"][key]
            old, new = saved.shape[0], live.shape[0]
            if old == new:
                continue
            reason = model.method.config.unresizable()
            if reason:
                raise ConfigError(f"the checkpoint's prompt has {old} tokens, this config's {new}: {reason}")
            keep = min(old, new)
            state["module"][key] = torch.cat([saved[:keep], live.detach().to(saved)[keep:]])
            moments = state["optimizer"]["state"].get(index[id(live)], {})
            for k, v in moments.items():
                if v.dim() == 0:  # the step count: shared by the parameter's rows
                    continue
                if v.shape != saved.shape:
                    raise ConfigError(f"the optimizer's state {k!r} of {key} is not shaped like it ({tuple(v.shape)}): "
                                      f"only per-element moments (train.optimizer adamw) can be resized")
                moments[k] = torch.cat([v[:keep], v.new_zeros((new - keep, *v.shape[1:]))])
            resized[i] = (old, new)
    mismatched = [k for k, v in state["module"].items() if k in params and params[k].shape != v.shape]
    if mismatched:
        raise ConfigError(f"the checkpoint's {', '.join(mismatched)} have other shapes than this config's and are no "
                          f"prompt rows to resize: resume it with the config it was trained with")
    if resized:
        (out_dir / tag).mkdir(parents=True, exist_ok=True)
        torch.save(state, out_dir / tag / MODEL_FILE)
        (out_dir / "latest").write_text(tag)
    return resized
