"""WSC (SuperGLUE form): does the pronoun refer to the noun phrase? Accuracy."""
import string

from ptray.core.tasks.base import Example, Task


class WSC(Task):
    name = "wsc"
    labels = ["false", "true"]
    label_words = ["No", "Yes"]
    fields = ("text", "target", "label")

    def folder_name(self) -> str:
        return "WSC"

    def to_examples(self, row):
        target = row["target"]
        words = row["text"].split()
        # Mark the pronoun with asterisks, as in the PET/P-tuning patterns, so the model knows which one is meant.
        n = len(target["span2_text"].split())
        i = _span_start(words, target["span2_index"], target["span2_text"])
        marked = " ".join(words[:i] + ["*" + " ".join(words[i : i + n]) + "*"] + words[i + n :])
        question = f"Does the pronoun '*{target['span2_text']}*' refer to '{target['span1_text']}'?"
        source = f"{marked}\nQuestion: {question}\nAnswer:"
        return [Example(marked, question, self.label_index(row["label"]), lm_source=source)]


def _span_start(words: list[str], index: int, text: str) -> int:
    """Where `text` starts among `words`: at `index`, or one word either side (a few SuperGLUE rows are off by one,
    e.g. val idx 42 points at "use" for "it"); `index` as given when none matches."""
    want = [w.lower().strip(string.punctuation) for w in text.split()]
    for j in (index, index - 1, index + 1):
        if j >= 0 and [w.lower().strip(string.punctuation) for w in words[j : j + len(want)]] == want:
            return j
    return index
