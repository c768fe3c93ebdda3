"""Single-sentence classification, the tasks of the prompt-tuning and few-shot literature (LM-BFF, Gao et al. 2021):
`{"sentence", "label"}` rows in `<data_dir>/<Task>/{train,dev,test}.jsonl`, the shared data's `sentence/` collection.
Reported on the official test set, selected on dev (or on a k-shot selection sample: task.k_shot).

Each task's module names its labels, the LM-BFF label words and template an LM reads, and whether its classes are
unbalanced (in its training data): then macro-F1 is reported beside accuracy, the metric the literature reports.
"""
from typing import ClassVar

import numpy as np

from ptray.core.tasks.base import Example, Task, accuracy, macro_f1


class SentenceTask(Task):
    collection = "sentence"
    default_splits = {"selection_split": "dev", "report_split": "test"}
    # What an LM reads before its label word.
    template: ClassVar[str] = "{sentence} It was"
    unbalanced: ClassVar[bool] = False
    fields = ("sentence", "label")

    def to_examples(self, row):
        sentence = row["sentence"]
        return [Example(sentence, None, self.label_index(row["label"]), lm_source=self.template.format(sentence=sentence))]

    def load(self, split, limit=None):
        # Most files list each class in one block. One fixed shuffle, the same for every run, so that a cap
        # (task.max_*_examples) takes rows of every class rather than the first class alone.
        examples = super().load(split)
        examples = [examples[i] for i in np.random.default_rng(0).permutation(len(examples))]
        return examples[:limit] if limit is not None else examples

    def compute_metrics(self, examples, predictions):
        gold = [e.label for e in examples]
        metrics = {"accuracy": accuracy(gold, predictions)}
        if self.unbalanced:
            metrics["f1_macro"] = macro_f1(gold, predictions, len(self.labels))
        return metrics
