"""The experiment-folder contract (ptray.layout): atomic JSON, run folders, dotted keys."""
import json

import numpy as np
import pytest

from ptray.config import ConfigError, load_config
from ptray.layout import flatten, lookup, result_files, run_dir, seed_of_dir, with_values, write_json


def test_write_json_replaces_whole_files_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "runs" / "abc" / "seed3" / "result.json"
    write_json(path, {"seed": 3, "accuracy": np.float32(0.5), "steps": np.int64(7), "dir": tmp_path})
    write_json(path, {"seed": 3, "accuracy": np.float64(0.75), "steps": 8, "dir": tmp_path})
    assert json.loads(path.read_text()) == {"seed": 3, "accuracy": 0.75, "steps": 8, "dir": str(tmp_path)}
    assert [p.name for p in path.parent.iterdir()] == ["result.json"]


def test_write_json_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "experiment.json"
    write_json(path, {"name": "a"})
    circular: dict = {"name": "b"}
    circular["self"] = circular
    with pytest.raises(ValueError, match="Circular"):
        write_json(path, circular)
    assert json.loads(path.read_text()) == {"name": "a"}
    assert [p.name for p in tmp_path.iterdir()] == ["experiment.json"]


def test_run_folders(tmp_path):
    for seed in (2, 10):
        write_json(run_dir(tmp_path, "abc", seed) / "result.json", {"seed": seed})
    (run_dir(tmp_path, "abc", 4)).mkdir()  # a seed without a result yet
    files = result_files(tmp_path, "abc")
    assert sorted(seed_of_dir(f.parent) for f in files) == [2, 10]
    assert run_dir(tmp_path, "abc", 2) == tmp_path / "runs" / "abc" / "seed2"


def test_dotted_keys():
    config = {"train": {"lr": 0.1, "seed": 0}, "tracking": {}}
    assert flatten(config) == {"train.lr": 0.1, "train.seed": 0, "tracking": {}}
    assert lookup(config, "train.lr") == 0.1
    with pytest.raises(KeyError, match="train has no 'lrr'"):
        lookup(config, "train.lrr")
    changed = with_values(config, {"train.lr": 0.2, "method.name": "deep"})
    assert changed == {"train": {"lr": 0.2, "seed": 0}, "tracking": {}, "method": {"name": "deep"}}
    assert config["train"]["lr"] == 0.1  # a copy
    with pytest.raises(ValueError, match="'lr' is a value, not a section"):
        with_values(config, {"train.lr.x": 1})


def test_command_line_overrides_use_the_dotted_keys():
    cfg = load_config(None, ["train.lr=1e-2", "method.name=deep"])
    assert cfg.train.lr == 0.01 and cfg.method.name == "deep"
    with pytest.raises(ConfigError, match=r"override 'train.lr.x=1': 'lr' is a value, not a section"):
        load_config(None, ["train.lr=0.1", "train.lr.x=1"])
