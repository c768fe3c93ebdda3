"""The few-shot protocol as seeds: task.k_shot samples K examples per class for training and K for selection, drawn
by the sample seed; the initialisation and the data order have seeds of their own. Each is recorded in result.json.
Checked on the real sentence data, with one short real run."""
from __future__ import annotations

import json
from collections import Counter

import pytest

from conftest import tiny_config
from ptray.config import ConfigError, config_from_dict
from ptray.core.train import build_model, new_result, prepare, train
from ptray.layout import RESULT_FILE


def sentence(data_dir, name, **task):
    """A MiniLM config on a sentence task of the shared data."""
    return config_from_dict(tiny_config(data_dir, task={"name": name, "data_dir": str(data_dir.parent / "sentence"),
                                                        "max_eval_examples": None, **task}))


def texts(examples):
    return [e.text_a for e in examples]


# --- the sample ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,k", [("subj", 8), ("trec", 4), ("sst5", 16)])
def test_k_shot_is_class_balanced_in_training_and_selection(data_dir, name, k):
    p = prepare(sentence(data_dir, name, k_shot=k))
    classes = len(p.task.get_labels())
    assert Counter(e.label for e in p.train) == {c: k for c in range(classes)}
    assert Counter(e.label for e in p.selection) == {c: k for c in range(classes)}
    # The selection sample comes from the selection split (dev); the report split is whole.
    assert set(texts(p.selection)) <= set(texts(p.task.load("dev")))
    assert len(p.report) == len(p.task.load("test"))


def test_sample_is_fixed_by_its_seed_and_differs_across_seeds(data_dir):
    def sample(**seeds):
        task = {"k_shot": 8, **({"sample_seed": seeds.pop("sample_seed")} if "sample_seed" in seeds else {})}
        cfg = config_from_dict({**sentence(data_dir, "mr", **task).to_dict(),
                                "train": {**tiny_config(data_dir)["train"], **seeds}})
        p = prepare(cfg)
        return texts(p.train), texts(p.selection)

    base = sample(sample_seed=1, seed=0)
    # The sample seed alone fixes it: another train.seed, init or order seed draws the same examples.
    assert sample(sample_seed=1, seed=5, init_seed=2, order_seed=3) == base
    # Another sample seed draws other examples.
    other = sample(sample_seed=2, seed=0)
    assert set(other[0]) != set(base[0]) and set(other[1]) != set(base[1])
    # Unset, the sample seed is train.seed.
    assert sample(seed=1) == base


def test_training_and_selection_samples_of_one_split_are_disjoint(data_dir):
    for seed in range(3):
        p = prepare(sentence(data_dir, "subj", k_shot=16, sample_seed=seed, selection_split="train"))
        assert set(texts(p.train)).isdisjoint(texts(p.selection))
        assert len(set(texts(p.train) + texts(p.selection))) == 2 * 16 * 2
        pool = set(texts(p.task.load("train")))
        assert set(texts(p.train)) <= pool and set(texts(p.selection)) <= pool


# --- bad input: one clear error naming the key, before any model loads ---------------------------------------
@pytest.fixture
def no_weights(monkeypatch):
    """Loading weights fails the test: every check here must come before it."""
    from ptray.core import backbone as bb

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(bb, "load_backbone", refuse)


def test_k_shot_larger_than_the_smallest_class(data_dir, no_weights):
    # TREC's abbreviation class: 76 training and 10 dev examples.
    with pytest.raises(ConfigError, match=r"task.k_shot 11: task trec's split 'dev' .* 2: 10,.*set task.k_shot to "
                                          r"10 or less"):
        prepare(sentence(data_dir, "trec", k_shot=11))
    # Both samples from train need 2 * K of its smallest class.
    with pytest.raises(ConfigError, match=r"task.k_shot 39: .*'train' \(the training and the selection sample\).*2 "
                                          r"disjoint samples of 39 .* 2: 76,.*set task.k_shot to 38 or less"):
        prepare(sentence(data_dir, "trec", k_shot=39, selection_split="train"))


@pytest.mark.parametrize("name,match", [
    ("copa", r"task.k_shot 4: task copa is multiple-choice .* no label classes"),
    ("multirc", r"task.k_shot 4: task multirc's examples come in groups"),
])
def test_k_shot_task_without_label_classes(data_dir, no_weights, name, match):
    with pytest.raises(ConfigError, match=match):
        prepare(config_from_dict(tiny_config(data_dir, task={"name": name, "k_shot": 4})))


@pytest.mark.parametrize("task,match", [
    ({"k_shot": 8, "max_train_examples": 10}, r"task.k_shot 8 and task.max_train_examples 10 .* unset "
                                                r"task.max_train_examples"),
    ({"sample_seed": 3}, r"task.sample_seed 3 is set but task.k_shot is not"),
])
def test_k_shot_keys_that_contradict(data_dir, task, match):
    with pytest.raises(ConfigError, match=match):
        sentence(data_dir, "mr", **task)


def test_packed_seeds_need_one_sample(data_dir):
    with pytest.raises(ConfigError, match=r"train.seed_pack 2: task.k_shot 8 with task.sample_seed unset"):
        config_from_dict({**sentence(data_dir, "mr", k_shot=8).to_dict(),
                          "train": {**tiny_config(data_dir)["train"], "seed_pack": 2}})
    config_from_dict({**sentence(data_dir, "mr", k_shot=8, sample_seed=0).to_dict(),
                      "train": {**tiny_config(data_dir)["train"], "seed_pack": 2}})


def test_selection_on_the_report_split_is_a_recorded_warning(data_dir, no_weights):
    cfg = sentence(data_dir, "mr", selection_split="test", max_eval_examples=20)
    with pytest.warns(UserWarning, match=r"task.selection_split 'test' reads the report split"):
        p = prepare(cfg)
    assert new_result(cfg, p)["warnings"] == p.warnings and len(p.warnings) == 1
    assert prepare(sentence(data_dir, "mr", max_eval_examples=20)).warnings == []


# --- the initialisation and order seeds -----------------------------------------------------------------------
def test_the_prompt_is_drawn_by_the_init_seed_alone(data_dir):
    from ptray.core import backbone as bb

    def prompt(**seeds):
        cfg = config_from_dict(tiny_config(data_dir, train=seeds))
        p = prepare(cfg)
        return build_model(cfg, bb.load_backbone(cfg.model), p.task).method.prompt.detach().clone()

    base = prompt(seed=0, init_seed=7)
    assert prompt(seed=1, init_seed=7, order_seed=3).equal(base)
    assert not prompt(seed=0, init_seed=8).equal(base)
    assert prompt(seed=7).equal(base)


def test_each_seed_source_drives_training(data_dir):
    def history(**seeds):
        cfg = tiny_config(data_dir, task={"max_eval_examples": 8}, train={"max_steps": 3, "eval_every": 3, **seeds})
        r = train(config_from_dict(cfg), progress=False)
        assert r["status"] == "ok", r.get("reason")
        return [h["loss"] for h in r["history"]]

    base = history(seed=0, init_seed=1, order_seed=1)
    assert history(seed=5, init_seed=1, order_seed=1) == base  # train.seed plays no part once both are set
    assert history(seed=1) == base  # unset, both are train.seed
    assert history(seed=0, init_seed=2, order_seed=1) != base
    assert history(seed=0, init_seed=1, order_seed=2) != base


# --- a real run (that k-shot prompt tuning learns on SUBJ: test_learning.py) -----------------------------------
def test_a_k_shot_run_records_its_seeds_and_splits(data_dir, tmp_path):
    cfg = config_from_dict({**sentence(data_dir, "subj", k_shot=16, sample_seed=1, max_seq_length=64,
                                       max_eval_examples=16).to_dict(),
                            "train": {"max_steps": 2, "batch_size": 8, "eval_every": 2, "seed": 0, "init_seed": 2,
                                      "order_seed": 3}})
    result = train(cfg, tmp_path, progress=False)
    assert result["status"] == "ok", result.get("reason")
    saved = json.loads((tmp_path / RESULT_FILE).read_text())
    assert saved["seeds"] == {"sample": 1, "init": 2, "order": 3}
    assert saved["warnings"] == [] and saved["report_split"] == "test" and saved["selection_split"] == "dev"


# --- the experiment configs -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,classes,test", [("mr", 2, 2000), ("cr", 2, 2000), ("subj", 2, 2000), ("trec", 6, 500),
                                               ("mpqa", 2, 2000), ("sst5", 5, 2210)])
def test_sentence_experiment_config_prepares(data_dir, name, classes, test):
    from conftest import REPO
    from ptray.config import load_config

    path = REPO / "experiments" / "sentence" / f"{name}.yaml"
    header = path.read_text()
    assert f"ptray train experiments/sentence/{name}.yaml --seed 0" in header and "Expected runtime here" in header
    p = prepare(load_config(path))  # data_dir from PTRAY_DATA_DIR's sibling, as a user's run finds it
    assert (len(p.train), len(p.selection), len(p.report)) == (16 * classes, 16 * classes, test)
    # The header's claim: max_seq_length fits every example, so nothing is cut.
    from transformers import AutoTokenizer

    from ptray.core.backbone import resolve

    tokenizer = AutoTokenizer.from_pretrained(resolve("minilm")[0])
    sentences = [e.text_a for split in ("train", "dev", "test") for e in p.task.load(split)]
    assert max(len(ids) for ids in tokenizer(sentences)["input_ids"]) <= p.cfg.task.max_seq_length
