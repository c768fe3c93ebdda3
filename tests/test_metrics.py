"""Each task's official metrics: checked against scikit-learn on the real label arrays (with seeded synthetic
predictions) and against hand-computed cases where sklearn has no counterpart (MultiRC EM, ReCoRD F1/EM)."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

from ptray.config import TaskConfig
from ptray.core.tasks import Example, build_task
from ptray.core.tasks.record import normalize_answer, token_f1


def load(name, data_dir, split="val"):
    task = build_task(TaskConfig(name=name, data_dir=str(data_dir)))
    return task, task.load(split)


def synthetic(gold, n_options, seed, keep=0.6):
    """Predictions that agree with the gold labels on about `keep` of the examples, random elsewhere."""
    rng = np.random.default_rng(seed)
    gold = np.asarray(gold)
    noise = rng.integers(0, n_options, len(gold))
    return np.where(rng.random(len(gold)) < keep, gold, noise).tolist()


@pytest.mark.parametrize("name", ["boolq", "rte", "wic", "wsc", "copa"])
@pytest.mark.parametrize("seed", [0, 1])
def test_accuracy_matches_sklearn(data_dir, name, seed):
    task, examples = load(name, data_dir)
    gold = [e.label for e in examples]
    preds = synthetic(gold, 2, seed)
    metrics = task.compute_metrics(examples, preds)
    assert set(metrics) == {"accuracy"}
    assert metrics["accuracy"] == pytest.approx(accuracy_score(gold, preds))
    assert 0.5 < metrics["accuracy"] < 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cb_accuracy_and_macro_f1_match_sklearn(data_dir, seed):
    task, examples = load("cb", data_dir)
    gold = [e.label for e in examples]
    preds = synthetic(gold, 3, seed)
    m = task.compute_metrics(examples, preds)
    acc, f1 = accuracy_score(gold, preds), f1_score(gold, preds, average="macro")
    assert m["accuracy"] == pytest.approx(acc)
    assert m["f1_macro"] == pytest.approx(f1)
    assert m["acc_and_f1"] == pytest.approx((acc + f1) / 2)
    assert task.primary_metric == "acc_and_f1"


def test_cb_macro_f1_counts_a_never_predicted_class(data_dir):
    # A model that never says "neutral" gets F1 0 for that class: the macro average is over all three labels.
    task, examples = load("cb", data_dir)
    gold = [e.label for e in examples]
    preds = [min(g, 1) for g in gold]
    m = task.compute_metrics(examples, preds)
    assert m["f1_macro"] == pytest.approx(f1_score(gold, preds, labels=[0, 1, 2], average="macro", zero_division=0))
    # Entailment perfect; contradiction tp 28, fp 5 (the neutrals); neutral 0.
    assert m["f1_macro"] == pytest.approx((1 + 2 * 28 / (2 * 28 + 5) + 0) / 3)
    assert m["accuracy"] == pytest.approx(51 / 56)


@pytest.mark.parametrize("seed", [0, 1])
def test_multirc_f1a_matches_sklearn(data_dir, seed):
    task, examples = load("multirc", data_dir)
    gold = [e.label for e in examples]
    preds = synthetic(gold, 2, seed)
    m = task.compute_metrics(examples, preds)
    assert m["f1a"] == pytest.approx(f1_score(gold, preds, average="binary", pos_label=1))
    assert 0 < m["em"] < m["f1a"]


def test_multirc_em_on_real_questions(data_dir):
    task, examples = load("multirc", data_dir)
    gold = [e.label for e in examples]
    assert task.compute_metrics(examples, gold) == {"f1a": 1.0, "em": 1.0}
    # One wrong answer in each of the first 10 questions (the first answer of each) costs exactly 10 questions.
    preds = list(gold)
    seen = []
    for i, e in enumerate(examples):
        if e.group not in seen and len(seen) < 10:
            seen.append(e.group)
            preds[i] = 1 - preds[i]
    assert task.compute_metrics(examples, preds)["em"] == pytest.approx((953 - 10) / 953)


def test_multirc_em_hand_computed(data_dir):
    task = build_task(TaskConfig(name="multirc", data_dir=str(data_dir)))
    # Question 1: three answers; question 2: two; question 3: one.
    groups = [1, 1, 1, 2, 2, 3]
    gold = [1, 0, 1, 0, 0, 1]
    preds = [1, 0, 1, 1, 0, 0]  # q1 all right, q2 one wrong, q3 wrong
    examples = [Example("p", "q", label=g, group=q) for g, q in zip(gold, groups)]
    m = task.compute_metrics(examples, preds)
    assert m["em"] == pytest.approx(1 / 3)
    # F1a over answers: tp 2, fp 1, fn 1 -> precision 2/3, recall 2/3.
    assert m["f1a"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("text,expected", [
    ("The Blues", "blues"),
    ("Chelsea F.C.", "chelsea fc"),
    ("  a  Man's   World! ", "mans world"),
    ("An apple, the pear", "apple pear"),
    ("Theresa May", "theresa may"),  # articles only as whole words
])
def test_record_normalisation(text, expected):
    assert normalize_answer(text) == expected


@pytest.mark.parametrize("pred,gold,expected", [
    ("Diego Costa", "Diego Costa", 1.0),
    ("the Diego Costa", "Diego Costa.", 1.0),
    ("Costa", "Diego Costa", 2 * (1 * 0.5) / 1.5),  # precision 1, recall 1/2
    ("Chelsea FC London", "Chelsea", 2 * (1 / 3 * 1) / (4 / 3)),  # precision 1/3, recall 1
    ("Mourinho", "Diego Costa", 0.0),
    ("costa costa", "Costa", 2 * (0.5 * 1) / 1.5),  # repeated tokens count once each side
])
def test_record_token_f1(pred, gold, expected):
    assert token_f1(pred, gold) == pytest.approx(expected)


def test_record_metrics_take_the_max_over_gold_answers(data_dir):
    task = build_task(TaskConfig(name="record", data_dir=str(data_dir)))
    examples = [
        # Gold has two spellings; the candidate matches the second exactly after normalisation.
        Example("p", "@placeholder q", 0, choices=["Chelsea F.C.", "Arsenal"], answers=["the Blues", "Chelsea FC"]),
        # Partial overlap with one gold answer, none with the other: F1 = 2/3, EM 0.
        Example("p", "@placeholder q", 1, choices=["Diego Costa", "Costa"], answers=["Diego Costa", "Spain"]),
        # Wrong entity: both 0.
        Example("p", "@placeholder q", 0, choices=["Kurt Zouma", "Nik Kapun"], answers=["Kurt Zouma"]),
    ]
    m = task.compute_metrics(examples, [0, 1, 1])
    assert m["em"] == pytest.approx(1 / 3)
    assert m["f1"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert task.primary_metric == "f1"


def test_record_metrics_on_real_dev32(data_dir):
    task, examples = load("record", data_dir, "dev32")
    gold = [e.label for e in examples]
    assert task.compute_metrics(examples, gold) == {"f1": 1.0, "em": 1.0}
    # A prediction that is never a gold answer scores EM 0 on that query.
    wrong = [next(i for i, c in enumerate(e.choices) if c not in e.answers) for e in examples]
    m = task.compute_metrics(examples, wrong)
    # F1 still credits shared tokens: per query the best over its answers (token_f1 is checked by hand above).
    f1 = [max(token_f1(e.choices[p], a) for a in e.answers) for e, p in zip(examples, wrong)]
    assert m["em"] == 0.0 and m["f1"] == pytest.approx(sum(f1) / len(f1)) and m["f1"] < 0.5


@pytest.mark.parametrize("name", ["boolq", "rte", "cb", "wsc"])
def test_majority_baseline_equals_sklearn_accuracy_of_the_majority_class(data_dir, name):
    task, examples = load(name, data_dir)
    gold = [e.label for e in examples]
    majority = np.bincount(gold).argmax()
    assert task.majority_baseline(examples) == pytest.approx(accuracy_score(gold, [majority] * len(gold)))


# --- the sentence tasks: accuracy, and macro-F1 where the classes are unbalanced ------------------------------
SENTENCE_F1 = {"mr": False, "subj": False, "cr": True, "mpqa": True, "trec": True, "sst5": True}


def load_sentence(name, data_dir, split):
    task = build_task(TaskConfig(name=name, data_dir=str(data_dir.parent / "sentence")))
    return task, task.load(split)


@pytest.mark.parametrize("name", sorted(SENTENCE_F1))
@pytest.mark.parametrize("split,seed", [("test", 0), ("dev", 1)])
def test_sentence_metrics_match_sklearn(data_dir, name, split, seed):
    task, examples = load_sentence(name, data_dir, split)
    gold = [e.label for e in examples]
    preds = synthetic(gold, len(task.get_labels()), seed)
    m = task.compute_metrics(examples, preds)
    assert set(m) == ({"accuracy", "f1_macro"} if SENTENCE_F1[name] else {"accuracy"})
    assert m["accuracy"] == pytest.approx(accuracy_score(gold, preds))
    if SENTENCE_F1[name]:
        assert m["f1_macro"] == pytest.approx(f1_score(gold, preds, average="macro"))
    assert task.primary_metric == "accuracy"


@pytest.mark.parametrize("name", ["cr", "trec", "sst5"])
def test_sentence_macro_f1_punishes_the_majority_class(data_dir, name):
    # On an unbalanced split, always answering the majority class keeps a fair accuracy but not macro-F1.
    task, examples = load_sentence(name, data_dir, "dev")
    gold = [e.label for e in examples]
    majority = [int(np.bincount(gold).argmax())] * len(gold)
    m = task.compute_metrics(examples, majority)
    assert m["accuracy"] == pytest.approx(task.majority_baseline(examples))
    assert m["f1_macro"] == pytest.approx(f1_score(gold, majority, labels=range(len(task.get_labels())),
                                                   average="macro", zero_division=0))
    assert m["f1_macro"] < m["accuracy"]


@pytest.mark.parametrize("name", sorted(SENTENCE_F1))
def test_sentence_majority_baseline_equals_sklearn(data_dir, name):
    task, examples = load_sentence(name, data_dir, "dev")
    gold = [e.label for e in examples]
    majority = np.bincount(gold).argmax()
    assert task.majority_baseline(examples) == pytest.approx(accuracy_score(gold, [majority] * len(gold)))
