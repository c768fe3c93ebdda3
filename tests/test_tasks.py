"""The task layer on the real shared data: every SuperGLUE task loads with the right counts, labels and formatting;
custom jsonl/csv tasks; the errors a user meets before training; and one cheap end-to-end run per task type."""
from __future__ import annotations

import json
import re
import string
from collections import Counter
from contextlib import nullcontext
from pathlib import Path

import pytest
from sklearn.metrics import f1_score

from ptray.config import ConfigError, TaskConfig, config_from_dict, load_config
from ptray.core.tasks import build_task

from conftest import REPO, rescored_report_metrics, tiny_config

# Examples per split (MultiRC: answers). val counts are the data README's.
COUNTS = {
    "boolq": {"train": 32, "dev32": 32, "val": 3270},
    "cb": {"train": 32, "dev32": 32, "val": 56},
    "copa": {"train": 32, "dev32": 32, "val": 100},
    "multirc": {"train": 154, "dev32": 167, "val": 4848},
    "rte": {"train": 32, "dev32": 32, "val": 277},
    "wic": {"train": 32, "dev32": 32, "val": 638},
    "wsc": {"train": 32, "dev32": 32, "val": 104},
    "record": {"train": 32, "dev32": 32},
}
FOLDERS = {"boolq": "BoolQ", "cb": "CB", "copa": "COPA", "multirc": "MultiRC", "rte": "RTE", "wic": "WiC",
           "wsc": "WSC", "record": "ReCoRD"}
SPLITS = [(task, split) for task, splits in COUNTS.items() for split in splits]


def task_of(name, data_dir, **kw):
    return build_task(TaskConfig(name=name, data_dir=str(data_dir), **kw))


def raw_rows(data_dir, name, split):
    """The split file read with plain json: the independent view the task's examples are checked against."""
    with open(Path(data_dir) / FOLDERS[name] / f"{split}.jsonl") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def loaded(data_dir):
    """(task, examples) per (name, split), loaded once for the module."""
    out = {}
    for name, split in SPLITS:
        task = task_of(name, data_dir)
        out[name, split] = (task, task.load(split))
    return out


@pytest.mark.parametrize("name,split", SPLITS)
def test_split_counts_and_labels_in_range(loaded, name, split):
    task, examples = loaded[name, split]
    assert len(examples) == COUNTS[name][split]
    for e in examples:
        n_options = len(e.choices) if task.is_multiple_choice else len(task.get_labels())
        assert 0 <= e.label < n_options
        assert e.text_a.strip() and e.lm_source.strip()


def test_record_has_no_val_split(data_dir):
    task = task_of("record", data_dir)
    with pytest.raises(ConfigError, match=r"ReCoRD/val\.jsonl"):
        task.check_files(["train", "dev32", "val"])


@pytest.mark.parametrize("name,expected", [
    # Label index -> count on val, from the data README (BoolQ true 2033 / false 1237; CB e 23 / c 28 / n 5).
    ("boolq", {0: 1237, 1: 2033}),
    ("cb", {0: 23, 1: 28, 2: 5}),
    ("wic", {0: 319, 1: 319}),
])
def test_val_labels_map_to_the_right_index(loaded, name, expected):
    _, examples = loaded[name, "val"]
    assert Counter(e.label for e in examples) == expected


@pytest.mark.parametrize("name", ["boolq", "cb", "rte", "wic", "wsc", "copa"])
def test_labels_follow_the_raw_rows(loaded, data_dir, name):
    task, examples = loaded[name, "val"]
    rows = raw_rows(data_dir, name, "val")
    assert len(rows) == len(examples)
    for row, e in zip(rows, examples):
        if task.is_multiple_choice:
            assert e.label == row["label"]
        else:
            assert task.get_labels()[e.label] == str(row["label"]).lower()


@pytest.mark.parametrize("split", ["train", "dev32", "val"])
def test_wsc_marks_the_pronoun_with_asterisks(loaded, data_dir, split):
    _, examples = loaded["wsc", split]
    for row, e in zip(raw_rows(data_dir, "wsc", split), examples):
        target = row["target"]
        words = e.text_a.split()
        marked = [i for i, w in enumerate(words) if w.startswith("*")]
        assert len(marked) == 1, e.text_a
        i = marked[0]
        span = " ".join(words[i : i + len(target["span2_text"].split())])
        assert span[0] == span[-1] == "*", span
        assert span[1:-1].strip(string.punctuation).lower() == target["span2_text"].lower()
        # The given index, or one word off where the dataset itself is off by one.
        assert abs(i - target["span2_index"]) <= 1
        assert target["span1_text"] in e.text_b


def test_wsc_off_by_one_row_marks_the_pronoun_not_its_neighbour(loaded):
    # SuperGLUE WSC val idx 42: span2_index points at "use" while span2_text is "it".
    _, examples = loaded["wsc", "val"]
    (e,) = [e for e in examples if "magic pebble" in e.text_a]
    assert "want to use *it* , but" in e.text_a


@pytest.mark.parametrize("split", ["train", "dev32"])
def test_record_candidates_are_the_passage_entities(loaded, data_dir, split):
    _, examples = loaded["record", split]
    rows = raw_rows(data_dir, "record", split)
    queries = [(row, qa) for row in rows for qa in row["qas"]]
    assert len(queries) == len(examples)
    for (row, qa), e in zip(queries, examples):
        text = row["passage"]["text"]
        # Offsets are inclusive at both ends: the gold answers' own offsets prove the convention.
        for a in qa["answers"]:
            assert text[a["start"] : a["end"] + 1] == a["text"]
        entities = {text[s["start"] : s["end"] + 1] for s in row["passage"]["entities"]}
        assert set(e.choices) == entities and len(e.choices) == len(entities)
        assert e.answers == [a["text"] for a in qa["answers"]]
        assert set(e.answers) <= set(e.choices)
        assert e.choices[e.label] in e.answers
        assert "@placeholder" in e.text_b and "@highlight" not in e.text_a


def test_record_first_query(loaded):
    _, examples = loaded["record", "train"]
    e = examples[0]
    assert e.choices[e.label] == "Olimpija Ljubljana"
    assert {"Diego Costa", "Kurt Zouma", "Chelsea", "Jose Mourinho"} <= set(e.choices)


@pytest.mark.parametrize("split", ["train", "dev32", "val"])
def test_copa_connective_follows_the_question(loaded, data_dir, split):
    _, examples = loaded["copa", split]
    for row, e in zip(raw_rows(data_dir, "copa", split), examples):
        connective = {"cause": "because", "effect": "so"}[row["question"]]
        assert e.text_a == f"{row['premise'].rstrip('.')} {connective}"
        assert [c.lower() for c in e.choices] == [row["choice1"].lower(), row["choice2"].lower()]
        assert e.label == row["label"]


@pytest.mark.parametrize("split", ["train", "dev32", "val"])
def test_multirc_groups_answers_per_question(loaded, data_dir, split):
    _, examples = loaded["multirc", split]
    questions = [q for row in raw_rows(data_dir, "multirc", split) for q in row["passage"]["questions"]]
    sizes = [len(q["answers"]) for q in questions]
    # Each question's answers are consecutive examples sharing one group, and no two questions share a group.
    groups = [e.group for e in examples]
    runs = [g for i, g in enumerate(groups) if i == 0 or groups[i - 1] != g]
    assert len(runs) == len(set(runs)) == len(questions)
    assert [groups.count(g) for g in runs] == sizes
    flat = [(q["question"], a) for q in questions for a in q["answers"]]
    for (question, answer), e in zip(flat, examples):
        assert e.text_b.startswith(question) and f'"{answer["text"]}"' in e.text_b
        assert e.label == int(answer["label"])
        assert "<br>" not in e.text_a


def test_multirc_val_has_953_questions(loaded):
    _, examples = loaded["multirc", "val"]
    assert len({e.group for e in examples}) == 953


@pytest.mark.parametrize("name,first,second", [
    ("boolq", "passage", "question"), ("cb", "premise", "hypothesis"), ("rte", "premise", "hypothesis"),
])
def test_pair_tasks_keep_their_fields(loaded, data_dir, name, first, second):
    _, examples = loaded[name, "dev32"]
    for row, e in zip(raw_rows(data_dir, name, "dev32"), examples):
        assert e.text_a == row[first]
        assert e.text_b.rstrip("?") == row[second].strip().rstrip("?")
        assert e.lm_source.endswith("Answer:")


def test_wic_question_names_the_word(loaded, data_dir):
    _, examples = loaded["wic", "dev32"]
    for row, e in zip(raw_rows(data_dir, "wic", "dev32"), examples):
        assert f"'{row['word']}'" in e.text_b
        assert row["sentence1"] in e.text_a and row["sentence2"] in e.text_a


# --- majority baselines ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,expected", [
    ("boolq", 2033 / 3270), ("cb", 28 / 56), ("copa", 55 / 100), ("rte", 146 / 277), ("wic", 0.5), ("wsc", 66 / 104),
])
def test_majority_baseline_is_the_most_frequent_label_rate(loaded, name, expected):
    task, examples = loaded[name, "val"]
    assert task.majority_baseline(examples) == pytest.approx(expected)


def test_multirc_baseline_is_f1a_of_always_correct(loaded):
    task, examples = loaded["multirc", "val"]
    gold = [e.label for e in examples]
    expected = f1_score(gold, [1] * len(gold))
    assert task.majority_baseline(examples) == pytest.approx(expected)
    assert task.compute_metrics(examples, [1] * len(gold))["f1a"] == pytest.approx(expected)


def test_record_baseline_is_uniform_choice(loaded):
    task, examples = loaded["record", "dev32"]
    expected = sum(1 / len(e.choices) for e in examples) / len(examples)
    assert task.majority_baseline(examples) == pytest.approx(expected)
    assert 0 < expected < 0.5


# --- custom tasks ---------------------------------------------------------------------------------------------
def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def custom(files, **kw):
    return build_task(TaskConfig(name="custom", data_files={k: str(v) for k, v in files.items()}, **kw))


def test_custom_jsonl_two_text_fields(tmp_path):
    f = write_jsonl(tmp_path / "train.jsonl", [
        {"premise": "A cat sleeps.", "hypothesis": "An animal rests.", "gold": True},
        {"premise": "It rains.", "hypothesis": "It is dry.", "gold": False},
    ])
    task = custom({"train": f}, text_fields=["premise", "hypothesis"], label_column="gold", labels=["false", "true"])
    examples = task.load("train")
    assert [(e.text_a, e.text_b, e.label) for e in examples] == [
        ("A cat sleeps.", "An animal rests.", 1), ("It rains.", "It is dry.", 0)]
    assert examples[0].lm_source == "A cat sleeps.\nAn animal rests.\nAnswer:"
    # No label_words given: the labels themselves are what an LM says.
    assert task.get_label_words() == ["false", "true"]
    assert not task.is_multiple_choice


def test_custom_csv_one_text_field(tmp_path):
    f = tmp_path / "reviews.csv"
    f.write_text("review,sentiment\ngreat film,pos\n\"dull, long\",neg\nloved it,pos\n")
    task = custom({"train": f, "dev32": f}, text_fields=["review"], label_column="sentiment", labels=["neg", "pos"],
                  label_words=["terrible", "great"])
    examples = task.load("dev32")
    assert [(e.text_a, e.text_b, e.label) for e in examples] == [
        ("great film", None, 1), ("dull, long", None, 0), ("loved it", None, 1)]
    assert task.get_label_words() == ["terrible", "great"]
    assert task.majority_baseline(examples) == pytest.approx(2 / 3)


def test_custom_csv_numeric_labels(tmp_path):
    f = tmp_path / "d.csv"
    f.write_text("text,label\nyes please,1\nno thanks,0\n")
    task = custom({"train": f}, text_fields=["text"], labels=["0", "1"])
    assert [e.label for e in task.load("train")] == [1, 0]


def test_custom_task_from_yaml(tmp_path, monkeypatch):
    write_jsonl(tmp_path / "train.jsonl", [{"s": "fine", "y": "ok"}, {"s": "broken", "y": "bad"}])
    (tmp_path / "exp.yaml").write_text(
        "task:\n  name: custom\n  data_files: {train: train.jsonl, dev32: train.jsonl, val: train.jsonl}\n"
        "  text_fields: [s]\n  label_column: y\n  labels: [bad, ok]\n")
    # Relative data_files are read from where ptray runs.
    monkeypatch.chdir(tmp_path)
    task = build_task(load_config(tmp_path / "exp.yaml").task)
    task.check_files(["train", "dev32", "val"])
    assert [e.label for e in task.load("val")] == [1, 0]


def test_custom_bad_label_names_file_and_row(tmp_path):
    f = write_jsonl(tmp_path / "train.jsonl", [
        {"text": "a", "label": "pos"}, {"text": "b", "label": "neg"}, {"text": "c", "label": "meh"}])
    task = custom({"train": f}, text_fields=["text"], labels=["neg", "pos"])
    with pytest.raises(ConfigError) as err:
        task.load("train")
    msg = str(err.value)
    assert str(f) in msg and "row 3" in msg and "'meh'" in msg and "['neg', 'pos']" in msg


def test_custom_csv_bad_label_row_counts_data_rows(tmp_path):
    f = tmp_path / "d.csv"
    f.write_text("text,label\na,0\nb,2\n")
    task = custom({"train": f}, text_fields=["text"], labels=["0", "1"])
    with pytest.raises(ConfigError, match=re.escape(f"{f} row 2 has label '2'")):
        task.load("train")


def test_superglue_bad_label_names_file_and_row(tmp_path, data_dir):
    (tmp_path / "RTE").mkdir()
    rows = raw_rows(data_dir, "rte", "train")[:4]
    rows[2]["label"] = "contradiction"
    bad = write_jsonl(tmp_path / "RTE" / "train.jsonl", rows)
    with pytest.raises(ConfigError) as err:
        task_of("rte", tmp_path).load("train")
    assert str(bad) in str(err.value) and "row 3" in str(err.value) and "'contradiction'" in str(err.value)


def test_bad_label_stops_prepare_before_weights_load(tmp_path, data_dir):
    (tmp_path / "RTE").mkdir()
    for split in ("dev32", "val"):
        write_jsonl(tmp_path / "RTE" / f"{split}.jsonl", raw_rows(data_dir, "rte", split)[:4])
    rows = raw_rows(data_dir, "rte", "train")[:4]
    rows[0]["label"] = "maybe"
    write_jsonl(tmp_path / "RTE" / "train.jsonl", rows)
    from ptray.core.train import prepare

    with pytest.raises(ConfigError, match="row 1 has label 'maybe'"):
        prepare(config_from_dict(tiny_config(tmp_path)))


def test_custom_missing_keys_is_a_config_error():
    with pytest.raises(ConfigError) as err:
        build_task(TaskConfig(name="custom"))
    for key in ("task.text_fields", "task.labels", "task.data_files"):
        assert key in str(err.value)


@pytest.mark.parametrize("kw,match", [
    ({"text_fields": ["a", "b", "c"]}, "one or two columns"),
    ({"text_fields": ["a"], "label_words": ["x"]}, "label_words has 1 entries but task.labels has 2"),
])
def test_custom_bad_declaration(tmp_path, kw, match):
    with pytest.raises(ConfigError, match=match):
        custom({"train": tmp_path / "t.jsonl"}, labels=["neg", "pos"], **kw)


def test_custom_missing_column_names_the_columns(tmp_path):
    f = write_jsonl(tmp_path / "t.jsonl", [{"sentence": "a", "label": "pos"}])
    task = custom({"train": f}, text_fields=["text"], labels=["neg", "pos"])
    with pytest.raises(ConfigError, match=r"t.jsonl:1: no column\(s\) 'text' .*its columns are \['label', 'sentence'\]"):
        task.load("train")


def test_custom_missing_split_entry_and_file(tmp_path):
    f = write_jsonl(tmp_path / "t.jsonl", [{"text": "a", "label": "pos"}])
    task = custom({"train": f}, text_fields=["text"], labels=["neg", "pos"])
    with pytest.raises(ConfigError, match=r"task.data_files has no entry for split 'val'; it has \['train'\]"):
        task.check_files(["train", "val"])
    gone = tmp_path / "nope.csv"
    task = custom({"train": f, "val": gone}, text_fields=["text"], labels=["neg", "pos"])
    with pytest.raises(ConfigError, match=re.escape(f"split file '{gone}' does not exist")):
        task.check_files(["train", "val"])


# --- missing data ---------------------------------------------------------------------------------------------
def test_missing_data_dir_names_the_path(tmp_path):
    missing = tmp_path / "no_such_folder"
    with pytest.raises(ConfigError, match=re.escape(f"task.data_dir '{missing}' does not exist")):
        task_of("cb", missing).check_files(["train"])


def test_missing_split_file_names_the_path(tmp_path, data_dir):
    (tmp_path / "CB").mkdir()
    write_jsonl(tmp_path / "CB" / "train.jsonl", raw_rows(data_dir, "cb", "train"))
    with pytest.raises(ConfigError, match=re.escape(f"split file '{tmp_path / 'CB' / 'dev32.jsonl'}' does not exist")):
        task_of("cb", tmp_path).check_files(["train", "dev32"])


def test_prepare_refuses_a_missing_split_naming_it(tmp_path, data_dir):
    cfg = config_from_dict(tiny_config(data_dir, task={"name": "cb", "report_split": "test"}))
    from ptray.core.train import prepare

    with pytest.raises(ConfigError, match=re.escape(f"split file '{data_dir / 'CB' / 'test.jsonl'}' does not exist")):
        prepare(cfg)


# --- the experiment configs -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(COUNTS))
def test_experiment_config_prepares(name, data_dir):
    path = REPO / "experiments" / "superglue" / f"{name}.yaml"
    header = path.read_text()
    assert f"ptray train experiments/superglue/{name}.yaml --seed 0" in header
    assert "Expected runtime here" in header
    from ptray.core.train import prepare

    # ReCoRD has no val split here: it selects and reports on dev32, which is warned about and kept in its result.
    optimistic = pytest.warns(UserWarning, match="reads the report split") if name == "record" else nullcontext()
    with optimistic:
        p = prepare(load_config(path, [f"task.data_dir={data_dir}"]))
    assert bool(p.warnings) == (name == "record")
    assert p.cfg.model.name == "minilm" and p.cfg.task.name == name
    assert p.cfg.task.report_split == ("dev32" if name == "record" else "val")
    assert len(p.report) == COUNTS[name][p.cfg.task.report_split]
    assert len(p.train) == COUNTS[name]["train"]


# --- end to end on the real model: one multiple-choice task and MultiRC's grouped metrics ---------------------
@pytest.mark.parametrize("name,keys", [("copa", {"accuracy"}), ("multirc", {"f1a", "em"})])
def test_train_end_to_end(name, keys, data_dir, tmp_path):
    from ptray.core.train import train
    from ptray.layout import RESULT_FILE

    cfg = config_from_dict(tiny_config(data_dir, task={"name": name, "max_eval_examples": 16},
                                       train={"max_steps": 2, "eval_every": 2}))
    result = train(cfg, tmp_path, progress=False)
    assert result["status"] == "ok", result.get("reason")
    assert set(result["selection_metrics"]) == keys and set(result["report_metrics"]) == keys
    assert result["primary_metric"] in keys
    # The filed metrics are the saved adapter's on the report split (MultiRC's grouped by question), recomputed.
    assert result["report_metrics"] == rescored_report_metrics(tmp_path)
    assert result["steps"] == 2 and [h["step"] for h in result["history"]] == [1, 2]
    assert json.loads((tmp_path / RESULT_FILE).read_text())["status"] == "ok"


# --- the sentence tasks and the full SuperGLUE training sets (sibling folders of the FewGLUE one) ----------------
# Rows per split and per label, from the data README; FOLDER is the task's folder under sentence/.
SENTENCE = {
    "mr": ("MR", {"train": 7795, "dev": 867, "test": 2000}),
    "cr": ("CR", {"train": 1597, "dev": 178, "test": 2000}),
    "subj": ("SUBJ", {"train": 7200, "dev": 800, "test": 2000}),
    "trec": ("TREC", {"train": 4906, "dev": 546, "test": 500}),
    "mpqa": ("MPQA", {"train": 7742, "dev": 861, "test": 2000}),
    "sst5": ("SST-5", {"train": 7689, "dev": 855, "test": 2210}),
}
FULL = {"rte": ("RTE", 2241, 249, 277), "cb": ("CB", 225, 25, 56), "copa": ("COPA", 360, 40, 100),
        "wsc": ("WSC", 498, 56, 104)}


def sentence_rows(data_dir, name, split):
    with open(data_dir.parent / "sentence" / SENTENCE[name][0] / f"{split}.jsonl") as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("name", sorted(SENTENCE))
def test_sentence_task_reads_its_splits_from_the_sibling_folder(name, data_dir):
    cfg = TaskConfig(name=name)  # no data_dir: the task finds sentence/ beside PTRAY_DATA_DIR's superglue/
    assert Path(cfg.data_dir) == data_dir.parent / "sentence"
    assert (cfg.selection_split, cfg.report_split) == ("dev", "test")
    task = build_task(cfg)
    for split, n in SENTENCE[name][1].items():
        examples = task.load(split)
        rows = sentence_rows(data_dir, name, split)
        assert len(examples) == len(rows) == n
        # Every row once, with its own label (the task reads them in a shuffled order).
        labels = task.get_labels()
        assert Counter((e.text_a, labels[e.label]) for e in examples) == Counter((r["sentence"], r["label"]) for r in rows)
        assert all(e.text_b is None and e.text_a in e.lm_source for e in examples)


def test_data_dir_default_follows_ptray_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("PTRAY_DATA_DIR", str(tmp_path / "fewglue"))
    assert TaskConfig(name="sst5").data_dir == str(tmp_path / "sentence")
    assert TaskConfig(name="rte").data_dir == str(tmp_path / "fewglue")
    # A given data_dir wins, as before.
    assert TaskConfig(name="mr", data_dir=str(tmp_path / "mine")).data_dir == str(tmp_path / "mine")


def test_sentence_cap_takes_every_class_and_the_same_rows_every_time(data_dir):
    # MR's test file lists all negatives, then all positives: the first 100 rows of the file are one class.
    assert {r["label"] for r in sentence_rows(data_dir, "mr", "test")[:100]} == {"0"}
    task = task_of("mr", data_dir.parent / "sentence")
    capped = task.load("test", 100)
    assert len(capped) == 100 and set(Counter(e.label for e in capped)) == {0, 1}
    assert [e.text_a for e in capped] == [e.text_a for e in task.load("test", 100)]


def test_missing_sentence_folder_names_the_collection(tmp_path):
    with pytest.raises(ConfigError, match=r"task.data_dir .* does not exist; .* holds SUBJ/ .*shared/data/sentence"):
        task_of("subj", tmp_path / "nope").check_files(["train"])


def test_a_task_module_imports_first(tmp_path):
    # The config's task defaults read the registry, which imports the config: either may be imported first.
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "import ptray.core.tasks.mr"], capture_output=True, text=True,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_sentence_label_words_are_distinct_first_tokens_of_a_causal_lm(data_dir):
    from transformers import AutoTokenizer

    from ptray.core.backbone import resolve
    from ptray.core.data import Encoder

    path, kwargs = resolve("smollm2-135m")
    tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    for name in SENTENCE:
        task = task_of(name, data_dir.parent / "sentence")
        encoder = Encoder(task, tokenizer, "causal", 128)  # refuses label words that share a first token
        assert len(set(encoder.label_token_ids)) == len(task.get_label_words()) == len(task.get_labels())
        [row] = encoder.encode(task.load("dev", 1)[0]).rows
        # The row ends with the template's cue, right before where the label word is scored.
        cue = task.template.format(sentence="").split()[-1]
        assert tokenizer.decode(row).rstrip().endswith(cue)


@pytest.mark.parametrize("name", sorted(FULL))
def test_full_superglue_sets_through_data_dir_and_dev_selection(name, data_dir):
    from ptray.core.train import prepare

    folder, n_train, n_dev, n_val = FULL[name]
    full = data_dir.parent / "superglue-full"
    p = prepare(config_from_dict(tiny_config(data_dir, task={
        "name": name, "data_dir": str(full), "selection_split": "dev", "max_eval_examples": None})))
    assert (len(p.train), len(p.selection), len(p.report)) == (n_train, n_dev, n_val)
    # The official training rows, labelled as in the file: the same reader as FewGLUE's.
    rows = [json.loads(line) for line in (full / folder / "train.jsonl").read_text().splitlines()]
    gold = [int(r["label"]) if p.task.is_multiple_choice else p.task.get_labels().index(str(r["label"]).lower())
            for r in rows]
    assert [e.label for e in p.train] == gold
    # FewGLUE's 32 training examples are among the official training rows (split into train and dev here).
    fewglue = {e.text_a for e in task_of(name, data_dir).load("train")}
    assert fewglue <= {e.text_a for e in p.train + p.selection}
