"""Bad input, as a table: every case is refused with one `error:` line that names the file and line, the key or the
argument, and says the fix; the exit code is non-zero and no traceback is printed. All of them fail before any model
loads or Ray starts, so the whole table runs in seconds per case.

Config and data cases run `ptray` in this process (`main`); an exception escaping it is the traceback a user would
see, and fails the test. Cases of `ptray tune`, `ui` and `report`, which would start Ray or a server if the check were
missing, run as processes with a timeout.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Callable

import pytest

from conftest import DATA_DIR, REPO
from ptray.cli import main
from tune_util import write_config

GOOD_CSV = "sentence,label\na fine film,1\na dull film,0\n"
# A custom task on CSV files; each data case writes its own train file.
CUSTOM = ("task: {{name: custom, data_files: {{train: {train}, dev32: dev.csv, val: dev.csv}}, "
          "text_fields: [sentence], labels: ['0', '1']}}\ntrain: {{max_steps: 1}}\n")


@dataclass
class Case:
    id: str
    argv: list[str]  # `ptray` arguments, run in a folder holding the common files (see `workdir`) and `files`
    says: str  # in the error line
    # Files the case writes: text, bytes, None (named but absent) or an edit of the first rows of RTE's train split.
    files: dict[str, str | bytes | None | Callable[[list[dict]], None]] = field(default_factory=dict)
    rc: int = 2
    process: bool = False  # run as a process: it would start Ray or a server if the check were missing
    skip: str | None = None  # why the case cannot be tried here


def custom_data(case_id: str, name: str, content: str | bytes, says: str) -> Case:
    return Case(case_id, ["train", "c.yaml"], says, {"c.yaml": CUSTOM.format(train=name), name: content})


def drop_hypothesis(rows: list[dict]) -> None:
    del rows[1]["hypothesis"]


def null_premise(rows: list[dict]) -> None:
    rows[2]["premise"] = None


CASES = [
    # --- the config file
    Case("yaml-malformed", ["config", "bad.yaml"], "bad.yaml:2: not valid YAML: while parsing a flow mapping",
         {"bad.yaml": "train: {lr: 0.1\n"}),
    Case("yaml-bad-indent", ["config", "bad.yaml"], "bad.yaml:3: not valid YAML",
         {"bad.yaml": "train:\n  lr: 0.1\n batch_size: 4\n"}),
    Case("yaml-empty", ["config", "empty.yaml"], "'empty.yaml' holds no config (it is empty, or comments only)",
         {"empty.yaml": ""}),
    Case("yaml-comments-only", ["config", "c.yaml"], "'c.yaml' holds no config", {"c.yaml": "# nothing yet\n"}),
    Case("yaml-duplicate-key", ["config", "dup.yaml"],
         "dup.yaml:3: not valid YAML: key 'lr' is given twice in one section (first on line 2); keep one",
         {"dup.yaml": "train:\n  lr: 0.1\n  lr: 0.2\n"}),
    Case("yaml-duplicate-section", ["config", "dup.yaml"], "dup.yaml:3: not valid YAML: key 'train' is given twice",
         {"dup.yaml": "train: {lr: 0.1}\nmodel: {name: minilm}\ntrain: {batch_size: 4}\n"}),
    Case("yaml-a-list", ["config", "l.yaml"], "'l.yaml' must hold a mapping of sections, got list",
         {"l.yaml": "- train\n- model\n"}),
    Case("yaml-not-utf8", ["config", "l1.yaml"], "l1.yaml: not UTF-8 text",
         {"l1.yaml": "task: {name: rte}\n# caf\xe9\n".encode("latin-1")}),
    Case("yaml-missing", ["config", "nowhere.yaml", "train.lr=0.1"], "config file 'nowhere.yaml' does not exist"),
    # --- overrides and values
    Case("override-unclosed-list", ["config", "train.lr=[0.1"],
         "override 'train.lr=[0.1': the value '[0.1' is not valid YAML"),
    Case("override-duplicate-key", ["config", "tune.search={train.lr: [1], train.lr: [2]}"],
         "is not valid YAML (key 'train.lr' is given twice"),
    Case("override-no-equals", ["config", "c.yaml", "train.lr"], "override 'train.lr' is not of the form key.sub=value",
         {"c.yaml": "train: {lr: 0.1}\n"}),
    Case("unknown-key", ["config", "train.lrr=0.1"], "train.lrr: unknown key; the keys of this section:"),
    Case("unknown-section", ["config", "trian.lr=0.1"], "trian: unknown key"),
    Case("unknown-key-in-file", ["config", "c.yaml"], "invalid config (c.yaml): method.num_token: unknown key",
         {"c.yaml": "method: {name: vanilla, num_token: 4}\n"}),
    Case("lr-inf", ["config", "train.lr=inf"],
         "train.lr: inf and NaN are not values here; give a finite number (got inf)"),
    Case("lr-nan", ["config", "train.lr=nan"], "train.lr: inf and NaN are not values here; give a finite number (got "
                                               "nan)"),
    Case("lr-inf-in-file", ["config", "c.yaml"], "train.lr: inf and NaN are not values here",
         {"c.yaml": "train: {lr: .inf}\n"}),
    Case("lr-negative", ["config", "train.lr=-0.1"], "train.lr: Input should be greater than 0 (got -0.1)"),
    Case("lr-text", ["config", "train.lr=fast"], "train.lr: Input should be a valid number"),
    Case("epochs-inf", ["config", "train.epochs=inf"], "train.epochs: inf and NaN are not values here"),
    Case("max-loss-nan", ["config", "train.max_loss=nan"], "train.max_loss: inf and NaN are not values here"),
    Case("seed-negative", ["config", "train.seed=-1"],
         "train.seed: a seed is an integer from 0 to 2**32 - 1 (4294967295); choose one in that range (got -1)"),
    Case("seed-2-to-the-32", ["config", "train.seed=4294967296"], "train.seed: a seed is an integer from 0 to"),
    Case("init-seed-negative", ["config", "train.init_seed=-3"], "train.init_seed: a seed is an integer"),
    Case("sample-seed-too-large", ["config", "task.k_shot=4", "task.sample_seed=99999999999"],
         "task.sample_seed: a seed is an integer"),
    Case("tune-seeds-negative", ["config", "tune.seeds=[0, -1]"], "tune.seeds.1: a seed is an integer"),
    Case("tune-seeds-too-large", ["config", "tune.seeds=[4294967296]"], "tune.seeds.0: a seed is an integer"),
    Case("confirm-seeds-negative", ["config", "tune.seeds=[0]", "tune.confirm.seeds=[-2]"],
         "tune.confirm.seeds.0: a seed is an integer"),
    Case("batch-size-bool", ["config", "train.batch_size=true"],
         "train.batch_size: a boolean where a number or text is expected"),
    Case("lr-bool-in-file", ["config", "c.yaml"],
         "train.lr: a boolean where a number or text is expected (YAML reads true/false, yes/no, on/off as booleans)",
         {"c.yaml": "train: {lr: yes}\n"}),
    Case("tune-seeds-bool", ["config", "tune.seeds=[true, false]"], "tune.seeds: a boolean where a number or text"),
    Case("zero-stage-bool", ["config", "train.zero_stage=true"], "train.zero_stage: a boolean where a number or text"),
    Case("batch-size-zero", ["config", "train.batch_size=0"], "train.batch_size: Input should be greater than or "
                                                               "equal to 1"),
    Case("tune-storage-with-credentials", ["config", "tune.storage_path=s3://AKIA1:s3cret@bucket/exp"],
         "tune.storage_path: holds credentials (user:password@); Ray would save them"),
    Case("tune-storage-credentials-not-echoed", ["config", "tune.storage_path=s3://AKIA1:s3cret@bucket/exp"],
         "(got 's3://***@bucket/exp')"),
    Case("tune-seeds-repeated", ["config", "tune.seeds=[1, 1]"], "seeds must be a non-empty list of distinct"),
    Case("search-the-seed", ["config", "tune.search={train.seed: [1, 2]}"],
         "train.seed: seeds are their own dimension; set tune.seeds or tune.num_seeds instead"),
    Case("train-seed-flag-negative", ["train", "c.yaml", "--seed", "-5", "--output", "o"],
         "train.seed: a seed is an integer", {"c.yaml": "train: {max_steps: 1}\n"}),
    # --- data files (read by `ptray train` before the model loads)
    custom_data("csv-empty", "train.csv", "", "train.csv: empty; expected a header line of column names"),
    custom_data("csv-header-only", "train.csv", "sentence,label\n", "train.csv: a header line and no rows"),
    custom_data("csv-short-row", "train.csv", "sentence,label\nfine,1\nno label here\n",
                "train.csv:3: 1 comma-separated fields, expected 2 like the header (sentence, label)"),
    custom_data("tsv-with-commas", "train.tsv", GOOD_CSV,
                "train.tsv:2: no column(s) 'sentence', 'label' (task.text_fields / task.label_column); its columns "
                "are ['sentence,label'] (read as tab-separated, by its extension)"),
    custom_data("csv-not-utf8", "train.csv", "sentence,label\ncaf\xe9,1\n".encode("latin-1"),
                "train.csv: not UTF-8 text (invalid continuation byte at byte 18); re-save it as UTF-8"),
    custom_data("jsonl-malformed", "train.jsonl", '{"sentence": "ok", "label": "1"}\n{"sentence": "cut\n',
                "train.jsonl:2: not a JSON object (Unterminated string"),
    custom_data("jsonl-empty", "train.jsonl", "\n", "train.jsonl: empty; expected one JSON object per line"),
    custom_data("jsonl-a-list", "train.jsonl", '["a fine film", "1"]\n', "train.jsonl:1: a JSON list, expected "
                                                                         "one JSON object per line"),
    custom_data("custom-row-without-text", "train.jsonl",
                '{"sentence": "fine", "label": "1"}\n{"label": "0"}\n',
                "train.jsonl:2: no value for 'sentence' (task custom reads sentence, label); fix or drop that row"),
    custom_data("custom-row-null-label", "train.jsonl",
                '{"sentence": "fine", "label": "1"}\n\n{"sentence": "dull", "label": null}\n',
                "train.jsonl:3: no value for 'label'"),
    custom_data("unknown-format", "train.parquet", "x", "train.parquet: unknown data format '.parquet'"),
    custom_data("data-file-missing", "nowhere.csv", None, "task custom: split file 'nowhere.csv' does not exist"),
    Case("rte-row-without-hypothesis", ["train", "t.yaml", "task.data_dir=rte"],
         "RTE/train.jsonl:2: no value for 'hypothesis' (task rte reads premise, hypothesis, label); fix or drop",
         {"rte/RTE/train.jsonl": drop_hypothesis}),
    Case("rte-row-null-premise", ["train", "t.yaml", "task.data_dir=rte"], "RTE/train.jsonl:3: no value for "
                                                                            "'premise'",
         {"rte/RTE/train.jsonl": null_premise}),
    Case("multirc-row-without-questions", ["train", "t.yaml", "task.name=multirc", "task.data_dir=mrc"],
         "MultiRC/val.jsonl:1: not a row of task multirc (KeyError: 'questions'); fix or drop that row",
         {f"mrc/MultiRC/{split}.jsonl": '{"idx": 0, "passage": {"text": "A passage."}}\n'
          for split in ("train", "dev32", "val")}),
    # --- output folders and experiment folders
    Case("train-output-is-a-file", ["train", "t.yaml", "--output", "afile"],
         "output folder afile: afile is a file, not a folder; choose another output folder"),
    Case("train-output-under-a-file", ["train", "t.yaml", "--output", "afile/seed0"],
         "output folder afile/seed0: afile is a file, not a folder"),
    Case("train-output-not-writable", ["train", "t.yaml", "--output", "readonly/run"],
         "output folder readonly/run: readonly is not writable by this user",
         skip="root writes into any folder" if os.geteuid() == 0 else None),
    Case("tune-output-is-a-file", ["tune", "t.yaml", "--output", "afile"], "output folder afile: afile is a file",
         process=True),
    Case("resume-corrupt-experiment-json", ["tune", "--resume", "broken"],
         "broken/experiment.json is not valid JSON (Unterminated string",
         {"broken/experiment.json": '{"name": "x", "con'},
         process=True),
    Case("resume-experiment-json-without-config", ["tune", "--resume", "noconfig"],
         "noconfig/experiment.json holds no experiment config", {"noconfig/experiment.json": '{"name": "x"}'},
         process=True),
    Case("resume-not-an-experiment", ["tune", "--resume", "rte"], "--resume rte: not a ptray experiment folder",
         process=True),
    Case("report-corrupt-experiment-json", ["report", "broken"], "broken/experiment.json is not valid JSON",
         {"broken/experiment.json": "[1, 2"}, process=True),
    Case("trial-more-cpus-than-the-machine", ["tune", "t.yaml", "tune.resources.cpus_per_worker=4096"],
         "per trial, 4096 CPU, 0 GPU in all, but this machine (a local Ray) has at most", process=True),
    Case("trial-more-workers-than-the-machine", ["tune", "t.yaml", "tune.resources.workers=4096"],
         "but this machine (a local Ray) has at most", process=True),
    Case("trial-more-gpus-than-the-machine", ["tune", "t.yaml", "tune.resources.gpus_per_worker=4096"],
         "4096 GPU in all, but this machine (a local Ray) has at most", process=True),
    # PBT over the prompt length (tests/test_pbt_length.py): what cannot be resized is refused before Ray starts.
    Case("pbt-length-below-1", ["tune", "t.yaml", "tune.scheduler=pbt", "tune.num_samples=2",
                                "tune.search={method.num_tokens: {randint: [0, 8]}}"],
         "the value 0 of method.num_tokens makes an invalid config", process=True),
    Case("pbt-length-past-the-positions", ["tune", "t.yaml", "tune.scheduler=pbt", "tune.num_samples=2",
                                           "tune.search={method.num_tokens: {randint: [4, 400]}}"],
         "the value 400 of method.num_tokens does not fit the model", process=True),
    Case("pbt-length-dynamic", ["tune", "t.yaml", "tune.scheduler=pbt", "tune.num_samples=2", "method.name=dynamic",
                                "tune.search={method.num_tokens: {randint: [4, 16]}}"],
         "pbt cannot evolve method.num_tokens of method dynamic", process=True),
    Case("pbt-length-zero-stage", ["tune", "t.yaml", "tune.scheduler=pbt", "tune.num_samples=2", "train.zero_stage=3",
                                   "tune.search={method.num_tokens: {randint: [4, 16]}}"],
         "set train.zero_stage=0", process=True),
    Case("pb2-length", ["tune", "t.yaml", "tune.scheduler=pb2", "tune.num_samples=2",
                        "tune.search={method.num_tokens: {randint: [4, 16]}}"],
         "pb2 cannot evolve method.num_tokens", process=True),
    Case("ui-port-out-of-range", ["ui", "uiexp", "--port", "99999"],
         "argument --port: '99999' is not a port; give a number from 1 to 65535", process=True),
    Case("ui-port-in-use", ["ui", "uiexp", "--port", "{busy_port}"],
         "port {busy_port} on 127.0.0.1 is already in use; pass --port with a free one", process=True),
]


@pytest.fixture
def workdir(tmp_path, data_dir):
    """A folder with what the cases share: a valid tiny tune config t.yaml, an RTE copy (rte/), a good dev.csv, a
    plain file `afile`, a folder nobody may write, an experiment folder with an MLflow store file, and a port in
    use on 127.0.0.1 ({busy_port})."""
    write_config(tmp_path / "t.yaml", data_dir, {"seeds": [0]})
    shutil.copytree(data_dir / "RTE", tmp_path / "rte" / "RTE")
    (tmp_path / "dev.csv").write_text(GOOD_CSV)
    (tmp_path / "afile").write_text("not a folder")
    (tmp_path / "readonly").mkdir(mode=0o555)
    (tmp_path / "uiexp").mkdir()
    (tmp_path / "uiexp" / "experiment.json").write_text(json.dumps({"name": "ui", "configs": {}, "config": {}}))
    (tmp_path / "uiexp" / "mlflow.db").touch()  # the port is checked before the store is opened
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        yield tmp_path, {"busy_port": str(busy.getsockname()[1])}


def _write(folder, files: dict) -> None:
    for name, content in files.items():
        if content is None:  # a file the case names but that does not exist
            continue
        if callable(content):
            rows = [json.loads(line) for line in (DATA_DIR / "RTE" / "train.jsonl").read_text().splitlines()[:3]]
            content(rows)
            content = "".join(json.dumps(r) + "\n" for r in rows)
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)


def _fill(text: str, subs: dict[str, str]) -> str:
    for key, value in subs.items():
        text = text.replace(f"{{{key}}}", value)
    return text


def _in_process(argv: list[str], capsys) -> tuple[int, str]:
    """`ptray argv` in this process: the exit code and stderr, as the interpreter would give them."""
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse, or a command's `raise SystemExit("error: ...")`
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
        rc = e.code if isinstance(e.code, int) else 1
    return rc, capsys.readouterr().err


def _as_process(argv: list[str], cwd) -> tuple[int, str]:
    # A guard against a check gone missing (Ray or a server would start), not a speed check.
    p = subprocess.run([sys.executable, "-m", "ptray.cli", *argv], capture_output=True, text=True, cwd=cwd,
                       timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    return p.returncode, p.stderr


def _check(case: Case, rc: int, stderr: str, subs: dict[str, str]) -> None:
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, stderr[-3000:]
    assert _fill(case.says, subs) in errors[0], errors[0]
    assert rc == case.rc, (rc, stderr[-3000:])


def test_the_table_holds_at_least_40_distinct_cases():
    assert len({c.id for c in CASES}) == len(CASES) >= 40


@pytest.mark.parametrize("case", [c for c in CASES if not c.process], ids=lambda c: c.id)
def test_bad_input_in_process(case: Case, workdir, monkeypatch, capsys):
    if case.skip:
        pytest.skip(case.skip)
    folder, subs = workdir
    _write(folder, case.files)
    monkeypatch.chdir(folder)
    rc, stderr = _in_process([_fill(a, subs) for a in case.argv], capsys)
    _check(case, rc, stderr, subs)


@pytest.mark.parametrize("case", [c for c in CASES if c.process], ids=lambda c: c.id)
def test_bad_input_as_a_process(case: Case, workdir):
    folder, subs = workdir
    _write(folder, case.files)
    rc, stderr = _as_process([_fill(a, subs) for a in case.argv], folder)
    _check(case, rc, stderr, subs)
    assert not (folder / "afile").is_dir() and not list(folder.glob("**/ray/*"))  # no Ray storage was made
