"""WSC (SuperGLUE form): does the pronoun refer to the noun phrase? Accuracy."""
from ptray.core.tasks.base import Example, Task


class WSC(Task):
    name = "wsc"
    labels = ["false", "true"]
    label_words = ["No", "Yes"]

    def folder_name(self) -> str:
        return "WSC"

    def to_examples(self, row):
        target = row["target"]
        words = row["text"].split()
        # Mark the pronoun with asterisks, as in the PET/P-tuning patterns, so the model knows which one is meant.
        i = target["span2_index"]
        n = len(target["span2_text"].split())
        marked = " ".join(words[:i] + ["*" + " ".join(words[i : i + n]) + "*"] + words[i + n :])
        question = f"Does the pronoun '*{target['span2_text']}*' refer to '{target['span1_text']}'?"
        source = f"{marked}\nQuestion: {question}\nAnswer:"
        return [Example(marked, question, self.label_index(row["label"]), lm_source=source)]
