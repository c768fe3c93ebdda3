"""A classification task from your own jsonl, csv or tsv files (by extension), or from a hub dataset, declared in
YAML:

    task:
      name: custom                 # or: hub (then dataset/subset name a datasets.load_dataset source)
      data_files: {train: my/train.jsonl, dev32: my/dev.jsonl, val: my/test.csv}
      text_fields: [premise, hypothesis]   # one or two columns
      label_column: label
      labels: [entailment, not_entailment]
      label_words: ["Yes", "No"]           # optional; what an LM says for each label (default: the labels)
"""
from dataclasses import dataclass
from pathlib import Path

from ptray.config_base import ConfigError
from ptray.core.tasks.base import FORMATS, Example, Task


# Decorated so that the generated __init__ runs __post_init__ (Task's does not: it has none of its own).
@dataclass
class Custom(Task):
    name = "custom"

    def __post_init__(self):
        c = self.config
        missing = [k for k in ("text_fields", "labels") if not getattr(c, k)]
        if self.needs_files() and not c.data_files:
            missing.append("data_files")
        if self.name == "hub" and not c.dataset:
            missing.append("dataset")
        if missing:
            raise ConfigError(f"task {self.name} needs task.{', task.'.join(missing)} (see ptray/core/tasks/custom.py)")
        if not 1 <= len(c.text_fields) <= 2:
            raise ConfigError(f"task.text_fields must name one or two columns, got {c.text_fields}")
        if c.label_words is not None and len(c.label_words) != len(c.labels):
            raise ConfigError(
                f"task.label_words has {len(c.label_words)} entries but task.labels has {len(c.labels)}; give one word per label"
            )

    def needs_files(self) -> bool:
        return True

    def get_labels(self):
        return list(self.config.labels)

    def get_label_words(self):
        return list(self.config.label_words or self.config.labels)

    def split_path(self, split):
        files = self.config.data_files or {}
        if split not in files:
            raise ConfigError(f"task.data_files has no entry for split {split!r}; it has {sorted(files)}")
        # Relative paths are read from where ptray runs, like any command-line path.
        return Path(files[split])

    def check_files(self, splits):
        for split in splits:
            p = self.split_path(split)
            if not p.is_file():
                raise ConfigError(f"task {self.name}: split file {str(p)!r} does not exist (split {split!r})")

    def required_fields(self):
        return [*self.config.text_fields, self.config.label_column]

    def read_rows(self, split):
        rows = super().read_rows(split)
        # A first row without the columns is a file read with the wrong delimiter or declared with the wrong names:
        # one error for the file, not one per row.
        needed, path = self.required_fields(), self.split_path(split)
        if rows and not all(f in rows[0][1] for f in needed):
            sep = {",": " (read as comma-separated, by its extension)", "\t": " (read as tab-separated, by its "
                   "extension)"}.get(FORMATS[path.suffix.lower()], "")
            raise ConfigError(f"{path}:{rows[0][0]}: no column(s) {', '.join(repr(f) for f in needed if f not in rows[0][1])}"
                              f" (task.text_fields / task.label_column); its columns are {sorted(rows[0][1])}{sep}")
        return rows

    def to_examples(self, row):
        c = self.config
        texts = [str(row[f]) for f in c.text_fields]
        text_b = texts[1] if len(texts) > 1 else None
        source = "\n".join(texts) + "\nAnswer:"
        return [Example(texts[0], text_b, self.label_index(row[c.label_column]), lm_source=source)]


class Hub(Custom):
    """A hub dataset by name (needs a network, or a datasets cache)."""

    name = "hub"

    def needs_files(self) -> bool:
        return False

    def check_files(self, splits):
        pass

    def describe_source(self, split):
        return f"hub dataset {self.config.dataset}/{self.config.subset or ''} split {split}"

    def read_rows(self, split):
        import datasets

        return list(enumerate(datasets.load_dataset(self.config.dataset, self.config.subset, split=split).to_list(), 1))
