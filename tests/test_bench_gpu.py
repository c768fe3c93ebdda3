"""The GPU section of benchmarks/bench_speed.py run on the CPU with a tiny random-init Llama: every variant gives a
sane row, ratios are taken against the HF PEFT row of the same run, and RESULTS.md says "not measured" (with the
CPU part as committed) until a GPU run is stored."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from ptray.core.backbone import resolve

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import bench_speed

    return bench_speed


@pytest.mark.slow
def test_gpu_path_on_cpu(bench, data_dir, monkeypatch):
    from random_backbones import SHAPES

    monkeypatch.setenv("PTRAY_DATA_DIR", str(data_dir))
    # MiniLM's tokenizer files are the gpu-kit's tok/ (BERT WordPiece, vocab 30522), and installed here.
    tokenizer = Path(resolve("minilm")[0])
    record = bench.gpu_run({"tiny": (*SHAPES["tiny"], 8, (2,))}, "cpu", tokenizer, quick=True)
    assert record["peak_bf16_gflops"] > 0 and record["machine"]["gpu"] is None
    ptray = {bench.SHIPPED, "ptray K=1, cuDNN SDPA re-enabled", "ptray seed pack K=2 (per seed-example)",
             "ptray K=1, train.pad_to_multiple_of=1", "ptray K=1, train.pad_to_multiple_of=64"}
    train_only = {bench.READ_EACH_STEP, bench.FUSED_ADAMW, bench.NO_DEEPSPEED}
    for rows, reference, variants in ((record["train"], bench.PEFT_TRAIN, ptray | train_only),
                                      (record["eval"], bench.PEFT_EVAL, ptray)):
        assert {r["variant"] for r in rows} == variants | {reference}
        base = next(r for r in rows if r["variant"] == reference)
        assert base["speedup"] == 1
        for r in rows:
            assert r["model"] == "tiny" and r["batch"] == 8
            assert r["examples_per_s"] > 0 and r["tokens_per_s"] > 0 and r["utilisation"] > 0
            assert r["speedup"] == pytest.approx(r["examples_per_s"] / base["examples_per_s"])
            assert r["peak_memory_gib"] is None  # a CPU has no torch.cuda memory counter
            assert r["host_syncs"] is None and r["sync_sites"] == []  # nor a host to wait for a device
    assert "not measured" in bench.gpu_targets(record)  # no 135m / 1.1b rows in this run


def test_render_without_gpu_record(bench, tmp_path):
    stored = json.loads((REPO / "benchmarks" / "RESULTS.json").read_text())
    stored.pop("gpu", None)
    out = tmp_path / "RESULTS.md"
    bench.write_results(stored, out, bench.NOTES)
    text = out.read_text()
    assert "## GPU\nNot measured (no GPU run yet)" in text and bench.GPU_COMMAND in text
    assert text == (REPO / "benchmarks" / "RESULTS.md").read_text()  # the committed file is this rendering


def test_render_with_gpu_record(bench, tmp_path):
    row = {"examples_per_s": 10.0, "tokens_per_s": 1000.0, "padding": 0.0, "seconds": 1.0, "peak_memory_gib": 1.5,
           "batch": 8, "utilisation": 0.2}
    train = [{**row, "model": "135m", "variant": bench.PEFT_TRAIN, "speedup": 1.0},
             {**row, "model": "135m", "variant": bench.SHIPPED, "speedup": 1.6, "examples_per_s": 16.0,
              "host_syncs": 2, "sync_sites": ["loop.py:380", "model.py:153"]}]
    machine = {"gpu": "H200", "torch": "2.11", "cuda": "12.8", "transformers": "5.17", "peft": "0.1",
               "deepspeed": "0.19.8", "date": "2026-12-01 10:00 UTC", "commit": "abc1234"}
    stored = json.loads((REPO / "benchmarks" / "RESULTS.json").read_text())
    stored["gpu"] = {"machine": machine, "peak_bf16_gflops": 790e3, "train": train, "eval": train,
                     "shapes": {"135m": {"hidden_size": 576, "num_hidden_layers": 30, "batch": 8, "packs": [4, 16]}},
                     "first_steps": [{"config": "gpu_t5_base_superglue.yaml", "backbone": "t5-base", "rc": 0,
                                      "status": "ok", "reason": None, "steps": 5, "load_s": 3.0, "train_s": 1.0,
                                      "eval_s": 0.5, "peak_memory_gib": 2.0}]}
    out = tmp_path / "RESULTS.md"
    bench.write_results(stored, out, bench.NOTES)
    text = out.read_text()
    assert "Not measured" not in text and "790 TFLOP/s" in text
    assert "| ptray K=1 >= 1.5x HF PEFT (135M, batch 8) | 1.60x | yes |" in text
    assert "| ptray K=1 >= 2x HF PEFT (1.1B, batch 32) | not measured | - |" in text
    assert "| 16.0 | 1000 | 1.60 | 20.0% | 1.5 | 2 |" in text
    assert "- 135m, train step: 2 (loop.py:380, model.py:153)" in text
    assert "| gpu_t5_base_superglue.yaml | t5-base | ok | 5 | 0.20 | 3 | 2.0 |" in text
