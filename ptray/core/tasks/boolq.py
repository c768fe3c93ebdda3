"""BoolQ: a yes/no question about a passage. Accuracy."""
from ptray.core.tasks.base import Example, Task


class BoolQ(Task):
    name = "boolq"
    labels = ["false", "true"]
    label_words = ["No", "Yes"]
    fields = ("question", "passage", "label")

    def folder_name(self) -> str:
        return "BoolQ"

    def to_examples(self, row):
        question = row["question"].strip().rstrip("?") + "?"
        source = f"{row['passage']}\nQuestion: {question}\nAnswer:"
        return [Example(row["passage"], question, self.label_index(row["label"]), lm_source=source)]
