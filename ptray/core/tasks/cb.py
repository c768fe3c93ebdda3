"""CommitmentBank: three-way entailment. Accuracy and macro-F1 (the official pair; selection uses their mean)."""
from ptray.core.tasks.base import Example, Task, accuracy, macro_f1


class CB(Task):
    name = "cb"
    labels = ["entailment", "contradiction", "neutral"]
    label_words = ["Yes", "No", "Maybe"]
    primary_metric = "acc_and_f1"
    fields = ("premise", "hypothesis", "label")

    def folder_name(self) -> str:
        return "CB"

    def to_examples(self, row):
        source = f"{row['premise']}\nQuestion: {row['hypothesis']} Yes, No, or Maybe?\nAnswer:"
        return [Example(row["premise"], row["hypothesis"], self.label_index(row["label"]), lm_source=source)]

    def compute_metrics(self, examples, predictions):
        gold = [e.label for e in examples]
        acc = accuracy(gold, predictions)
        f1 = macro_f1(gold, predictions, len(self.labels))
        return {"accuracy": acc, "f1_macro": f1, "acc_and_f1": (acc + f1) / 2}
