"""Custom tasks read jsonl, csv and tsv (GLUE's format) by extension; a file that does not parse, or a row without
a value the task reads, is one error naming the file and the line, never a pyarrow traceback or the text "None"."""
import json
import re

import pytest

from ptray.config import ConfigError, TaskConfig
from ptray.core.tasks import build_task


def custom(path, **kw):
    return build_task(TaskConfig(name="custom", data_files={"train": str(path)}, text_fields=["sentence"],
                                 label_column="label", labels=["0", "1"], **kw))


def test_tsv_as_glue_ships_it(tmp_path):
    f = tmp_path / "train.tsv"
    f.write_text("sentence\tlabel\nit is great , really\t1\na dull , long film\t0\n")
    assert [(e.text_a, e.label) for e in custom(f).load("train")] == [("it is great , really", 1),
                                                                      ("a dull , long film", 0)]


@pytest.mark.parametrize("name, content, expected", [
    ("bad.jsonl", '{"sentence": "ok", "label": "1"}\n{"sentence": "broken\n', "bad.jsonl:2: not a JSON object"),
    ("list.jsonl", '["sentence", "label"]\n', "list.jsonl:1: a JSON list, expected one JSON object per line"),
    ("short.csv", "sentence,label\nfine,1\nno label here\n", "short.csv:3: 1 comma-separated fields, expected 2"),
    ("comma.tsv", "sentence,label\nfine,1\n", "comma.tsv:2: no column(s) 'sentence', 'label' (task.text_fields / "
                                            "task.label_column); its columns are ['sentence,label'] (read as "
                                            "tab-separated, by its extension)"),
    ("empty.csv", "", "empty.csv: empty; expected a header line"),
    ("data.parquet", "x", "unknown data format '.parquet'"),
])
def test_a_file_that_does_not_parse_names_file_and_line(tmp_path, name, content, expected):
    f = tmp_path / name
    f.write_text(content)
    with pytest.raises(ConfigError, match=re.escape(expected)):
        custom(f).load("train")


def test_non_utf8_is_named(tmp_path):
    f = tmp_path / "latin1.csv"
    f.write_bytes("sentence,label\ncaf\xe9 au lait,1\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="latin1.csv: not UTF-8 text .*re-save it as UTF-8"):
        custom(f).load("train")


@pytest.mark.parametrize("row", [{"label": "1"}, {"sentence": None, "label": "1"}, {"sentence": "", "label": "1"},
                                 {"sentence": "no label"}])
def test_a_row_without_its_text_or_label_is_refused_not_read_as_none(tmp_path, row):
    f = tmp_path / "train.jsonl"
    f.write_text(json.dumps({"sentence": "fine", "label": "1"}) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(ConfigError, match=r"train.jsonl:2: no value for '"):
        custom(f).load("train")
