"""RTE: does the premise entail the hypothesis? Accuracy."""
from ptray.core.tasks.base import Example, Task


class RTE(Task):
    name = "rte"
    labels = ["entailment", "not_entailment"]
    label_words = ["Yes", "No"]
    fields = ("premise", "hypothesis", "label")

    def folder_name(self) -> str:
        return "RTE"

    def to_examples(self, row):
        source = f"{row['premise']}\nQuestion: {row['hypothesis']} Yes or No?\nAnswer:"
        return [Example(row["premise"], row["hypothesis"], self.label_index(row["label"]), lm_source=source)]
