"""MultiRC: is this answer to a question about the paragraph correct? F1 over all answers (F1a) and
exact match per question (EM: every answer of the question judged right)."""
from collections import defaultdict

from ptray.core.tasks.base import Example, Task


class MultiRC(Task):
    name = "multirc"
    labels = ["0", "1"]
    label_words = ["No", "Yes"]
    primary_metric = "f1a"
    fields = ("idx", "passage")

    def folder_name(self) -> str:
        return "MultiRC"

    def to_examples(self, row):
        passage = row["passage"]["text"].replace("<br>", " ")
        out = []
        for q in row["passage"]["questions"]:
            # Group by (passage, question): question idx is unique only within a passage in some dumps.
            group = row["idx"] * 10_000 + q["idx"]
            for a in q["answers"]:
                question = f"{q['question']} Is the correct answer \"{a['text']}\"?"
                source = f"{passage}\nQuestion: {question}\nAnswer:"
                out.append(Example(passage, question, self.label_index(a["label"]), group=group, lm_source=source))
        return out

    def compute_metrics(self, examples, predictions):
        from sklearn.metrics import f1_score  # slow to import, and the config schema imports the task registry

        gold = [e.label for e in examples]
        f1a = float(f1_score(gold, predictions, pos_label=1, average="binary", zero_division=0))
        per_q: dict[int, bool] = defaultdict(lambda: True)
        for e, p in zip(examples, predictions):
            per_q[e.group] &= e.label == p
        em = sum(per_q.values()) / len(per_q) if per_q else float("nan")
        return {"f1a": f1a, "em": em}

    def majority_baseline(self, examples):
        # F1a of always answering "correct": the trivial classifier that beats "always wrong" on F1.
        pos = sum(e.label for e in examples)
        return 2 * pos / (pos + len(examples)) if examples else float("nan")
