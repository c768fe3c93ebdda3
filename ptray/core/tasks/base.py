"""What every task has: examples to score, a label set and verbalizer, and the official metrics.

A task turns raw rows into `Example`s. Every example is a choice among K options, scored by the model:
classification tasks share one option list (the labels); multiple-choice tasks (COPA, ReCoRD) carry their own
candidates. Prediction is the argmax over the options; the loss is cross-entropy over them.
"""
from __future__ import annotations

import csv
import io
import json
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
    # The fields every row must have a value for (to_examples reads them): a row without one is refused, naming its
    # file and line, instead of training on the text "None".
    fields: ClassVar[tuple[str, ...]] = ()
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

    def required_fields(self) -> list[str]:
        return list(self.fields)

    def read_rows(self, split: str) -> list[tuple[int, dict]]:
        """(line number, row) of every row of the split. Read as written: a field a row lacks stays missing (a
        dataset loader would fill it with None, and None would reach the model as text)."""
        return read_table(self.split_path(split))

    def load(self, split: str, limit: int | None = None) -> list[Example]:
        source, needed = self.describe_source(split), self.required_fields()
        examples: list[Example] = []
        for i, (line, row) in enumerate(self.read_rows(split)):
            empty = [f for f in needed if row.get(f) in (None, "")]
            if empty:
                raise ConfigError(f"{source}:{line}: no value for {', '.join(map(repr, empty))} (task {self.name} "
                                  f"reads {', '.join(needed)}); fix or drop that row")
            try:
                examples.extend(self.to_examples(row))
            except UnknownLabel as e:
                raise ConfigError(
                    f"task {self.name}: {source} row {i + 1} has label {e.value!r}, which is "
                    f"not in the task's label set {self.get_labels()}; fix the data or the task's labels"
                ) from None
            except (KeyError, TypeError, AttributeError) as e:  # a nested field missing or of another kind
                raise ConfigError(f"{source}:{line}: not a row of task {self.name} ({type(e).__name__}: {e}); fix "
                                  "or drop that row") from None
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


FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": ",", ".tsv": "\t"}


def read_table(path: Path) -> list[tuple[int, dict]]:
    """(line number, row) of a jsonl, csv or tsv file (by extension); a line that does not parse, or a file without
    rows, is one error that names the file, the line and what was expected."""
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise ConfigError(f"{path}: unknown data format {path.suffix!r}; use one of {', '.join(FORMATS)}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); re-save it as UTF-8") from None
    if kind == "jsonl":
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}:{n}: not a JSON object ({e.msg}, column {e.colno}); "
                                  "expected one JSON object per line") from None
            if not isinstance(row, dict):
                raise ConfigError(f"{path}:{n}: a JSON {type(row).__name__}, expected one JSON object per line")
            rows.append((n, row))
        if not rows:
            raise ConfigError(f"{path}: empty; expected one JSON object per line")
        return rows
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=kind)
    header = next(reader, None)
    if not header:
        raise ConfigError(f"{path}: empty; expected a header line of column names, then one row per line")
    rows = []
    for values in reader:
        if not values:
            continue
        if len(values) != len(header):
            name = "tab" if kind == "\t" else "comma"
            raise ConfigError(f"{path}:{reader.line_num}: {len(values)} {name}-separated fields, expected "
                              f"{len(header)} like the header ({', '.join(header)})")
        rows.append((reader.line_num, dict(zip(header, values))))
    if not rows:
        raise ConfigError(f"{path}: a header line and no rows; expected one row per line after the header")
    return rows



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
