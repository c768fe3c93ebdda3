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
import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

from ptray.config_base import ConfigError
from ptray.core.tasks.base import Example, Task


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

    def read_rows(self, split):
        path = self.split_path(split)
        rows = read_table(path)
        c = self.config
        needed = [*c.text_fields, c.label_column]
        if rows and not all(f in rows[0][1] for f in needed):
            sep = {",": " (read as comma-separated, by its extension)", "\t": " (read as tab-separated, by its "
                   "extension)"}.get(FORMATS[path.suffix.lower()], "")
            raise ConfigError(f"{path}:{rows[0][0]}: no column(s) {', '.join(repr(f) for f in needed if f not in rows[0][1])}"
                              f" (task.text_fields / task.label_column); its columns are {sorted(rows[0][1])}{sep}")
        for line, row in rows:
            empty = [f for f in needed if row.get(f) in (None, "")]
            if empty:
                # Never train on the text "None": a row without its fields is an error in the data.
                raise ConfigError(f"{path}:{line}: no value for column(s) {', '.join(map(repr, empty))} "
                                  f"(task.text_fields / task.label_column); fix or drop that row")
        return [row for _, row in rows]

    def to_examples(self, row):
        c = self.config
        for f in [*c.text_fields, c.label_column]:
            if f not in row:
                raise ConfigError(f"task {self.name}: column {f!r} is not in the data; columns are {sorted(row)}")
        texts = [str(row[f]) for f in c.text_fields]
        text_b = texts[1] if len(texts) > 1 else None
        source = "\n".join(texts) + "\nAnswer:"
        return [Example(texts[0], text_b, self.label_index(row[c.label_column]), lm_source=source)]


FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": ",", ".tsv": "\t"}


def read_table(path: Path) -> list[tuple[int, dict]]:
    """(line number, row) of a jsonl, csv or tsv file (by extension); a line that does not parse is one error that
    names the file, the line and what was expected."""
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
                raise ConfigError(f"{path}:{n}: not a JSON object ({e.msg} at column {e.colno}); "
                                  "expected one JSON object per line") from None
            if not isinstance(row, dict):
                raise ConfigError(f"{path}:{n}: a JSON {type(row).__name__}, expected one JSON object per line")
            rows.append((n, row))
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
    return rows


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

        return datasets.load_dataset(self.config.dataset, self.config.subset, split=split).to_list()
