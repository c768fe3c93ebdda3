"""What every task has: examples to score, a label set and verbalizer, and the official metrics.

A task turns raw rows into `Example`s. Every example is a choice among K options, scored by the model:
classification tasks share one option list (the labels); multiple-choice tasks (COPA, ReCoRD) carry their own
candidates. Prediction is the argmax over the options; the loss is cross-entropy over them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ptray.config_base import ConfigError

if TYPE_CHECKING:  # the schema imports this registry for the tasks' defaults
    from ptray.config import TaskConfig


@dataclass
class Example:
    text_a: str
    text_b: str | None = None
    label: int = 0
    # Multiple-choice only: the candidate continuations, one option each.
    choices: list[str] | None = None
    # Examples that form one question (MultiRC answers of one question) share a group.
    group: int | None = None
    # Gold answer strings (ReCoRD), for the max-over-answers metrics.
    answers: list[str] | None = None
    # Text an LM reads before its verbalizer word or candidate.
    lm_source: str = ""


@dataclass
class Task:
    """A task bound to a data source. Subclasses set the class attributes and implement `to_examples`."""

    config: TaskConfig
    name: ClassVar[str] = ""
    # Values of the label column, in option order; None for multiple-choice tasks.
    labels: ClassVar[list[str] | None] = None
    # What an LM says for each label (first token scored); one per label.
    label_words: ClassVar[list[str] | None] = None
    primary_metric: ClassVar[str] = "accuracy"
    # The folder of the shared data its files are in by default (config.default_data_dir), and its default split
    # names (TaskConfig fills them in where the config leaves them out).
    collection: ClassVar[str] = "superglue"
    default_splits: ClassVar[dict[str, str]] = {"selection_split": "dev32", "report_split": "val"}
    splits: dict[str, Any] = field(default_factory=dict, init=False)

    @property
    def is_multiple_choice(self) -> bool:
        return self.get_labels() is None

    def get_labels(self) -> list[str] | None:
        return self.labels

    def get_label_words(self) -> list[str] | None:
        return self.label_words

    # --- data -------------------------------------------------------------------------------------------
    def split_path(self, split: str) -> Path:
        return Path(self.config.data_dir) / self.folder_name() / f"{split}.jsonl"

    def folder_name(self) -> str:
        return self.name

    def check_files(self, splits: list[str]) -> None:
        root = Path(self.config.data_dir)
        if not root.is_dir():
            raise ConfigError(
                f"task.data_dir {str(root)!r} does not exist; point it at the folder that holds {self.folder_name()}/ "
                f"(the shared data's {self.collection}/, e.g. ../shared/data/{self.collection}), or set "
                f"PTRAY_DATA_DIR to the shared superglue/ folder, whose siblings hold the other collections"
            )
        for split in splits:
            p = self.split_path(split)
            if not p.is_file():
                raise ConfigError(f"task {self.name}: split file {str(p)!r} does not exist (split {split!r})")

    def read_rows(self, split: str) -> list[dict]:
        import datasets

        path = self.split_path(split)
        ds = datasets.load_dataset("json", data_files=str(path), split="train")
        return ds.to_list()

    def load(self, split: str, limit: int | None = None) -> list[Example]:
        rows = self.read_rows(split)
        examples: list[Example] = []
        for i, row in enumerate(rows):
            try:
                examples.extend(self.to_examples(row))
            except UnknownLabel as e:
                raise ConfigError(
                    f"task {self.name}: {self.describe_source(split)} row {i + 1} has label {e.value!r}, which is "
                    f"not in the task's label set {self.get_labels()}; fix the data or the task's labels"
                ) from None
        if limit is not None:
            examples = examples[:limit]
        return examples

    def describe_source(self, split: str) -> str:
        return str(self.split_path(split))

    def same_source(self, split: str, other: str) -> bool:
        """Whether two split names read the same data (custom tasks may map two names to one file)."""
        return self.describe_source(split) == self.describe_source(other)

    def to_examples(self, row: dict) -> list[Example]:
        raise NotImplementedError

    def label_index(self, value: Any) -> int:
        labels = self.get_labels() or []
        key = _label_key(value)
        for i, lab in enumerate(labels):
            if _label_key(lab) == key:
                return i
        raise UnknownLabel(value)

    # --- metrics ----------------------------------------------------------------------------------------
    def compute_metrics(self, examples: list[Example], predictions: list[int]) -> dict[str, float]:
        return {"accuracy": accuracy([e.label for e in examples], predictions)}

    def majority_baseline(self, examples: list[Example]) -> float:
        """Accuracy of always predicting the most frequent label: the floor a seed must beat."""
        from collections import Counter

        if not examples:
            return float("nan")
        return Counter(e.label for e in examples).most_common(1)[0][1] / len(examples)


class UnknownLabel(Exception):
    def __init__(self, value: Any):
        self.value = value


def _label_key(v: Any) -> str:
    # JSON booleans, ints and strings all compare by their lower-case text ("True" == true == "true").
    return str(v).strip().lower()


def accuracy(labels: list[int], predictions: list[int]) -> float:
    if not labels:
        return float("nan")
    return sum(int(a == b) for a, b in zip(labels, predictions)) / len(labels)


def macro_f1(labels: list[int], predictions: list[int], n_labels: int) -> float:
    # Over every label, a never-predicted one counting as F1 0: a model that ignores a class pays for it.
    from sklearn.metrics import f1_score

    return float(f1_score(labels, predictions, labels=list(range(n_labels)), average="macro", zero_division=0))
