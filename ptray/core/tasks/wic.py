"""WiC: is the marked word used with the same sense in both sentences? Accuracy."""
from ptray.core.tasks.base import Example, Task


class WiC(Task):
    name = "wic"
    labels = ["false", "true"]
    label_words = ["No", "Yes"]
    fields = ("word", "sentence1", "sentence2", "label")

    def folder_name(self) -> str:
        return "WiC"

    def to_examples(self, row):
        word = row["word"]
        question = f"Is the word '{word}' used in the same way in the two sentences above?"
        text_a = f"{row['sentence1']} {row['sentence2']}"
        source = f"{row['sentence1']}\n{row['sentence2']}\nQuestion: {question}\nAnswer:"
        return [Example(text_a, question, self.label_index(row["label"]), lm_source=source)]
