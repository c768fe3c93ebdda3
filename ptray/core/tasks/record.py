"""ReCoRD: fill the @placeholder of a query with one of the passage's entities. Candidates are scored;
token F1 and exact match, each the max over the gold answers (the official SQuAD-style normalisation)."""
import re
import string
from collections import Counter

from ptray.core.tasks.base import Example, Task


class ReCoRD(Task):
    name = "record"
    labels = None
    primary_metric = "f1"
    fields = ("passage", "qas")

    def folder_name(self) -> str:
        return "ReCoRD"

    def to_examples(self, row):
        text = row["passage"]["text"]
        passage = text.replace("@highlight\n", "- ")
        # Entity spans are inclusive at both ends in the SuperGLUE release.
        entities = list(dict.fromkeys(text[e["start"] : e["end"] + 1] for e in row["passage"]["entities"]))
        out = []
        for qa in row["qas"]:
            answers = [a["text"] for a in qa.get("answers", [])]
            # Training needs a gold option: the first candidate that is a gold answer.
            label = next((i for i, c in enumerate(entities) if c in answers), 0)
            query = qa["query"]
            out.append(
                Example(
                    passage,
                    query,
                    label,
                    choices=entities,
                    answers=answers,
                    lm_source=f"{passage}\nQuery: {query.replace('@placeholder', '____')}\nAnswer:",
                )
            )
        return out

    def compute_metrics(self, examples, predictions):
        f1s, ems = [], []
        for e, p in zip(examples, predictions):
            pred = e.choices[p]
            gold = e.answers or [""]
            f1s.append(max(token_f1(pred, g) for g in gold))
            ems.append(max(float(normalize_answer(pred) == normalize_answer(g)) for g in gold))
        n = len(examples)
        return {"f1": sum(f1s) / n if n else float("nan"), "em": sum(ems) / n if n else float("nan")}

    def majority_baseline(self, examples):
        # No label prior for entity choice: the floor is picking uniformly among the candidates.
        if not examples:
            return float("nan")
        return sum(1 / len(e.choices) for e in examples) / len(examples)


def normalize_answer(s: str) -> str:
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def token_f1(prediction: str, gold: str) -> float:
    p, g = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = Counter(p) & Counter(g)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)
