"""The first steps of an experiments/gpu_*.yaml config, run by `ptray train` on a random-init backbone of its
architecture (benchmarks/random_backbones.py): seconds per step and peak GPU memory, printed as one JSON line and, on a
GPU, added to RESULTS.json's gpu record (run.sh renders RESULTS.md afterwards). run.sh starts one process per config,
so one config's memory is not in another's peak.

    python benchmarks/gpu/first_steps.py experiments/gpu_t5_base_superglue.yaml BACKBONE_DIR [key=value ...]
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parents[1] / "RESULTS.json"
STEPS = 5


def main() -> None:
    from ptray.cli import main as ptray

    config, backbone, overrides = sys.argv[1], sys.argv[2], sys.argv[3:]
    with tempfile.TemporaryDirectory(prefix="ptray-first-steps-") as out:
        # A few steps and one evaluation, at the end, on 64 examples: the steps are what is measured.
        rc = ptray(["train", config, f"model.name={backbone}", f"train.max_steps={STEPS}", "task.max_eval_examples=64",
                    "--output", out, *overrides])
        found = Path(out) / "result.json"
        result = json.loads(found.read_text()) if found.exists() else {}
    timings = result.get("timings", {})
    record = {"config": Path(config).name, "backbone": Path(backbone).name, "rc": rc, "status": result.get("status"),
              "reason": result.get("reason"), "steps": result.get("steps"), "load_s": timings.get("load_s"),
              "train_s": timings.get("train_s"), "eval_s": timings.get("eval_s"),
              "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None}
    print(json.dumps(record))
    stored = json.loads(RESULTS.read_text())
    if torch.cuda.is_available() and stored.get("gpu"):  # beside the GPU benchmark's record of the same run
        others = [r for r in stored["gpu"].get("first_steps", []) if r["config"] != record["config"]]
        stored["gpu"]["first_steps"] = others + [record]
        RESULTS.write_text(json.dumps(stored, indent=2))


if __name__ == "__main__":
    main()
