"""Tracking and reporting on real experiment folders.

`experiment`: an experiment folder in the layout `ptray tune` writes, trained here by the core itself (tiny MiniLM runs
on RTE): two configs (prompt length 4 and 8) on seeds 1-3; config A's seed 3 diverges (train.max_loss tiny), config
B's seed 3 never wrote a result (a trial that crashed before the core could). Then: MLflow structure from
`log_experiment`, the loss landscape, the report, `ptray ui`. Numbers in the report are checked against scipy on a
second folder whose per-seed values are set by the test (result.json files derived from a real one).
"""
from __future__ import annotations

import copy
import io
import json
import math
import os
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats as st

from conftest import (check_mlflow_structure, check_png, free_port, mlflow_runs, ptray_cmd, read_result,
                      tiny_config, write_experiment, write_result)
from ptray import stats
from ptray.analysis.report import log_experiment
from ptray.cli import main
from ptray.config import apply_overrides, config_from_dict
from ptray.layout import config_id, label
from ptray.tracking.results import load_experiment
from ptray.tracking.store import resolve_tracking_uri
from ptray.tracking.summary import print_summary

# Every test here builds on real training (the `experiment` fixture trains five tiny seeds, ~30-40 s on 2 cores).
pytestmark = pytest.mark.slow

SEEDS = [1, 2, 3]
A = {"method.num_tokens": 4}
B = {"method.num_tokens": 8}


def _add_identity(path: Path, overrides: dict, trial_id: str) -> None:
    # What the Ray layer adds to the core's result.json.
    r = json.loads(path.read_text())
    r.update(config_id=config_id(overrides), trial_id=trial_id, overrides=overrides, label=label(overrides))
    path.write_text(json.dumps(r))


@pytest.fixture(scope="module")
def experiment(data_dir, tmp_path_factory) -> Path:
    from ptray.core.train import prepare, train

    root = tmp_path_factory.mktemp("exp") / "tiny-rte"
    # Reported on the (8) training examples: a few steps then beat the majority baseline, so statistics are finite.
    base = tiny_config(data_dir, task={"max_seq_length": 48, "max_train_examples": 8, "max_eval_examples": 8,
                                       "report_split": "train"},
                       train={"max_steps": 3, "eval_every": 1, "batch_size": 4, "eval_batch_size": 8, "lr": 0.1})
    write_experiment(root, [A, B], SEEDS, base)
    for overrides in (A, B):
        for seed in SEEDS:
            if overrides is B and seed == 3:
                continue  # missing: no result.json at all
            items = [f"{k}={v}" for k, v in overrides.items()] + [f"train.seed={seed}"]
            if overrides is A and seed == 3:
                items.append("train.max_loss=0.001")
            cfg = config_from_dict(apply_overrides(copy.deepcopy(base), items))
            out = root / "runs" / config_id(overrides) / f"seed{seed}"
            train(cfg, out, progress=False, prepared=prepare(cfg))
            _add_identity(out / "result.json", overrides, f"trial_{config_id(overrides)[:4]}_{seed}")
    return root


def test_results_and_summary_table(experiment):
    exp = load_experiment(experiment)
    a, b = exp.configs[config_id(A)], exp.configs[config_id(B)]
    assert exp.primary_metric == "accuracy" and exp.baseline().config_id == config_id(A)  # first vanilla
    assert [s.status for s in a.seeds] == ["ok", "ok", "failed"]
    assert "diverged" in a.seeds[2].reason
    assert [s.status for s in b.seeds] == ["ok", "ok", "missing"]
    buf = io.StringIO()
    print_summary(experiment, file=buf)
    text = buf.getvalue()
    for c, o in ((a, A), (b, B)):
        raw = [read_result(experiment, o, s) for s in SEEDS[:2]]
        acc = np.array([r["report_metrics"]["accuracy"] for r in raw])
        low = acc <= np.array([r["majority_baseline"] for r in raw]) + 1e-9
        s = c.summary()
        # Every finished seed counts, whatever its score; seed 3 failed (diverged / no result) and is counted only.
        assert (s["n_seeds"], s["n_ok"], s["n_failed"], s["n_at_majority"]) == (3, 2, 1, int(low.sum()))
        assert s["mean"] == pytest.approx(acc.mean()) and s["std"] == pytest.approx(np.std(acc, ddof=1))
        assert (s["min"], s["max"]) == (pytest.approx(acc.min()), pytest.approx(acc.max()))
        assert math.isnan(s["ci95_low"])  # two finished seeds: no interval
        row = next(line.split() for line in text.splitlines() if line.startswith(c.label))
        assert row[1:] == ["2", f"{acc.mean():.4f}", f"{np.std(acc, ddof=1):.4f}", f"{acc.min():.4f}",
                           f"{acc.max():.4f}", "1/3", f"{low.sum()}/3"]
    assert "seed 3: loss diverged" in text and "seed 3: no result.json" in text


def test_log_experiment_structure_and_idempotence(experiment):
    from mlflow import MlflowClient

    uri = resolve_tracking_uri(experiment)
    assert uri == f"sqlite:///{experiment / 'mlflow.db'}"
    log_experiment(experiment, uri)
    runs = check_mlflow_structure(uri, "tiny-rte", {config_id(A): SEEDS, config_id(B): SEEDS})
    client = MlflowClient(uri)
    diverged, missing = runs[(config_id(A), 3)], runs[(config_id(B), 3)]
    assert diverged.info.status == "FAILED" and "diverged" in diverged.data.tags["ptray.failure_reason"]
    assert missing.info.status == "FAILED" and "no result.json" in missing.data.tags["ptray.failure_reason"]
    ok = runs[(config_id(A), 1)]
    assert ok.info.status == "FINISHED" and ok.data.tags["ptray.trial_id"] == f"trial_{config_id(A)[:4]}_1"
    # The environment the numbers depend on (the thread count orders a CPU's float sums), as the seed recorded it.
    env = read_result(experiment, A, 1)["environment"]
    assert {k: ok.data.tags[f"ptray.env.{k}"] for k in env} == {k: str(v) for k, v in env.items()}
    assert ok.data.tags["ptray.env.threads"] == str(torch.get_num_threads())
    # Each source of seed variance's seed, resolved (none is set in the config, so each is train.seed; no k-shot sample).
    assert {k: v for k, v in ok.data.params.items() if k.startswith("seeds.")} == \
        {"seeds.sample": "null", "seeds.init": "1", "seeds.order": "1"}
    history = read_result(experiment, A, 1)["history"]
    assert [(m.step, m.value) for m in client.get_metric_history(ok.info.run_id, "loss")] == \
        [(h["step"], pytest.approx(h["loss"])) for h in history]
    assert [a.path for a in client.list_artifacts(ok.info.run_id)] == ["result.json"]
    parent = client.get_run(ok.data.tags["mlflow.parentRunId"])
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "figures")} == \
        {"figures/seeds.png", "figures/selection_curve.png", "figures/loss_curve.png"}
    # The UI opens on training runs (MLflow 3 shows an experiment of unknown kind as GenAI traces), with short names.
    experiment_tags = client.get_experiment(parent.info.experiment_id).tags
    assert experiment_tags["mlflow.experimentKind"] == "custom_model_development"
    assert parent.info.run_name == "num_tokens=4" and ok.info.run_name == "num_tokens=4 seed 1"
    # The adapter to take away: the config with the best mean selection score (a failed or missing seed counts 0),
    # and its best seed.
    exp = load_experiment(experiment)
    score = {(c.config_id, r.seed): r.selection["accuracy"] if r.ok else 0.0 for c in exp.configs.values()
             for r in c.seeds}
    best_cid = max(exp.configs, key=lambda c: np.mean([score[c, s] for s in SEEDS]))
    best_seed = max(SEEDS, key=lambda s: score[best_cid, s])
    parents = mlflow_runs(client, parent.info.experiment_id)[1]
    assert parents[best_cid].data.tags["ptray.best"] == f"{best_cid}/seed{best_seed}"
    assert {a.path for a in client.list_artifacts(parents[best_cid].info.run_id, "best_adapter")} == \
        {"best_adapter/adapter.safetensors", "best_adapter/result.json"}
    assert sum("ptray.best" in p.data.tags for p in parents.values()) == 1
    # Artifacts live beside the store, not in the working directory's ./mlruns.
    assert client.get_experiment(parent.info.experiment_id).artifact_location == (experiment / "mlartifacts").as_uri()

    # A second pass (ptray tune's closing call, or ptray report) neither adds runs nor repeats metrics.
    log_experiment(experiment, uri)
    again = check_mlflow_structure(uri, "tiny-rte", {config_id(A): SEEDS, config_id(B): SEEDS})
    assert {k: r.info.run_id for k, r in again.items()} == {k: r.info.run_id for k, r in runs.items()}
    assert len(client.get_metric_history(ok.info.run_id, "loss")) == len(history)
    assert len(client.get_metric_history(ok.info.run_id, "report/accuracy")) == 1
    assert len(client.get_metric_history(parent.info.run_id, "report/accuracy/mean")) == 1


@pytest.fixture(scope="module")
def landscape_json(experiment) -> dict:
    seed_dir = experiment / "runs" / config_id(A) / "seed1"
    assert main(["landscape", str(seed_dir), "--points", "5", "--span", "0.5", "--radius", "0.25"]) == 0
    return json.loads((seed_dir / "landscape" / "landscape.json").read_text())


def test_landscape(experiment, landscape_json):
    d = landscape_json
    loss = np.array(d["loss"])
    assert loss.shape == (5, 5) and np.isfinite(loss).all()
    assert d["grid"] == pytest.approx([-0.5, -0.25, 0.0, 0.25, 0.5])
    assert d["center_loss"] == loss[2, 2] and d["n_examples"] == 8
    # The headline number is the mean increase over the grid points within the radius: the centre and its 4 neighbours.
    inside = [loss[2, 2], loss[1, 2], loss[3, 2], loss[2, 1], loss[2, 3]]
    assert d["n_inside"] == 5 and d["mean_loss_increase"] == pytest.approx(np.mean(inside) - loss[2, 2])
    # The first direction is the gradient's: a small step along it raises the loss, against it lowers it.
    seed_dir = experiment / "runs" / config_id(A) / "seed1"
    out = experiment / "landscape_small"
    assert main(["landscape", str(seed_dir), "--points", "3", "--span", "0.002", "--radius", "0.002",
                 "--output", str(out)]) == 0
    small = np.array(json.loads((out / "landscape.json").read_text())["loss"])
    assert small[2, 1] > small[1, 1] > small[0, 1]
    check_png(seed_dir / "landscape" / "landscape.png")


def test_landscape_refuses_bad_input_before_loading(experiment, capsys):
    failed_dir = experiment / "runs" / config_id(A) / "seed3"
    assert main(["landscape", str(failed_dir)]) == 2
    assert "failed" in capsys.readouterr().err
    ok_dir = experiment / "runs" / config_id(A) / "seed1"
    assert main(["landscape", str(ok_dir), "--points", "4"]) == 2
    assert "odd" in capsys.readouterr().err
    assert main(["landscape", str(ok_dir), "--radius", "2"]) == 2
    assert "radius" in capsys.readouterr().err
    assert main(["landscape", str(ok_dir), "--points", "3", "--radius", "0.5"]) == 2
    assert "spacing" in capsys.readouterr().err


def test_report_on_real_runs(experiment, landscape_json, capsys):
    assert main(["report", str(experiment)]) == 0
    out = capsys.readouterr().out
    assert "report:" in out and "method.num_tokens=4" in out
    folder = experiment / "report"
    md = (folder / "report.md").read_text()
    for section in ("## accuracy per config", "## Against the baseline (method.num_tokens=4)",
                    "## Expected best score", "## Selection accuracy during training", "## Training loss",
                    "## Seed sensitivity against searched parameters", "## Loss landscape", "## Failed seeds"):
        assert section in md, section
    for png in ("seeds.png", "expected_max.png", "selection_curves.png", "loss_curves.png",
                "std_vs_method.num_tokens.png"):
        assert f"]({png})" in md
        check_png(folder / png)
    assert "loss diverged" in md and "no result.json" in md
    numbers = json.loads((folder / "stats.json").read_text())
    assert numbers["landscapes"][config_id(A)][0]["mean_loss_increase"] == \
        pytest.approx(landscape_json["mean_loss_increase"])
    cmp = numbers["configs"][config_id(B)]["comparison"]
    assert cmp["paired"] is True  # both configs ran seeds 1-3

    from mlflow import MlflowClient

    client = MlflowClient(resolve_tracking_uri(experiment))
    _, parents, _ = mlflow_runs(client, client.get_experiment_by_name("tiny-rte").experiment_id)
    for parent in parents.values():
        logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
        assert {"report/report.md", "report/stats.json", "report/seeds.png", "report/expected_max.png"} <= logged


def test_report_refuses_bad_input(experiment, tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "experiment.json is missing" in capsys.readouterr().err
    assert main(["report", str(experiment), "--baseline", "nope"]) == 2
    assert "baseline 'nope'" in capsys.readouterr().err


# --------------------------------------------------------------------- numbers against scipy
# Per-seed values chosen by the test, written as result.json files derived from a real one. The baseline's seed 4 sits
# at the majority class. P finished the baseline's seeds (paired); C ran them too but its seed 2 diverged, which breaks
# the pairing; U ran other seeds (unpaired); S finished 2 seeds only (too few to test).
BASELINE = {"method.num_tokens": 4, "method.name": "vanilla"}
P = {"method.num_tokens": 8, "method.name": "vanilla"}
C = {"method.num_tokens": 12, "method.name": "vanilla"}
U = {"method.num_tokens": 16, "method.name": "vanilla"}
S = {"method.num_tokens": 20, "method.name": "vanilla"}
MAJORITY = 0.55
VALUES = {
    "base": {0: 0.71, 1: 0.64, 2: 0.69, 3: 0.75, 4: 0.55, 5: 0.66},
    "P": {0: 0.73, 1: 0.70, 2: 0.72, 3: 0.74, 4: 0.72, 5: 0.705},
    "C": {0: 0.60, 1: 0.80, 2: None, 3: 0.50, 4: 0.78, 5: 0.56},
    "U": {10: 0.80, 11: 0.58, 12: 0.77, 13: 0.68},
    "S": {0: 0.70, 1: None, 2: None, 3: 0.66, 4: None, 5: None},
}
OVERRIDES = {"base": BASELINE, "P": P, "C": C, "U": U, "S": S}


@pytest.fixture(scope="module")
def synthetic(experiment, tmp_path_factory) -> Path:
    template = read_result(experiment, A, 1)
    root = tmp_path_factory.mktemp("synth") / "synthetic"
    # P is listed first: the baseline must be found by config id, not position.
    # No seed list: U ran other seeds than the rest, and none of them is missing.
    write_experiment(root, [P, BASELINE, C, U, S], [], template["config"], baseline=BASELINE)
    for name, overrides in OVERRIDES.items():
        for seed, v in VALUES[name].items():
            r = copy.deepcopy(template)
            r.update(seed=seed, majority_baseline=MAJORITY, config_id=config_id(overrides), overrides=overrides,
                     label=label(overrides), trial_id=f"t{seed}")
            if v is None:
                r.update(status="failed", reason="loss diverged (nan) at step 2", report_metrics=None)
            else:
                r["report_metrics"] = {"accuracy": v}
            write_result(root, overrides, seed, r)
    return root


def _finished(name: str) -> np.ndarray:
    return np.array([v for v in VALUES[name].values() if v is not None])


def test_report_numbers_match_scipy(synthetic):
    from ptray.analysis.report import write_report

    write_report(synthetic, log_mlflow=False)
    numbers = json.loads((synthetic / "report" / "stats.json").read_text())
    md = (synthetic / "report" / "report.md").read_text()
    assert numbers["baseline_config_id"] == config_id(BASELINE)
    cfgs = {name: numbers["configs"][config_id(o)] for name, o in OVERRIDES.items()}

    # Every finished seed counts in the headline, the one at the majority class (seed 4) included.
    s = cfgs["base"]["summary"]["accuracy"]
    x = _finished("base")
    assert (s["n_seeds"], s["n_ok"], s["n_failed"], s["n_at_majority"]) == (6, 6, 0, 1)
    assert s["mean"] == pytest.approx(x.mean()) and s["std"] == pytest.approx(x.std(ddof=1))
    assert s["median"] == pytest.approx(np.median(x)) and s["iqr"] == pytest.approx(st.iqr(x))
    assert (s["min"], s["max"]) == (pytest.approx(x.min()), pytest.approx(x.max()))
    lo, hi = st.t.interval(0.95, x.size - 1, loc=x.mean(), scale=st.sem(x))
    assert (s["ci95_low"], s["ci95_high"]) == (pytest.approx(lo), pytest.approx(hi))
    # The secondary view leaves it out, under its own name.
    above = x[x > MAJORITY]
    assert s["n_nondegenerate"] == 5 and s["mean_nondegenerate"] == pytest.approx(above.mean())
    assert s["std_nondegenerate"] == pytest.approx(above.std(ddof=1))
    # The report's tables state the same numbers.
    assert f"| {label(BASELINE)} | 6 | 0/6 | 6 | {x.mean():.4f} ± {x.std(ddof=1):.4f} | [{lo:.4f}, {hi:.4f}] |" in md
    assert f"| {label(BASELINE)} | 5 | {above.mean():.4f} ± {above.std(ddof=1):.4f} |" in md

    # Paired: P finished every seed the baseline did.
    a = _finished("P")
    c = cfgs["P"]["comparison"]
    assert c["paired"] is True and c["n_pairs"] == 6
    assert c["mean_diff"] == pytest.approx(a.mean() - x.mean())
    t = st.ttest_rel(a, x)
    assert c["paired_p"] == pytest.approx(t.pvalue)
    ci = t.confidence_interval(0.95)
    assert (c["mean_diff_ci95_low"], c["mean_diff_ci95_high"]) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert c["wilcoxon_p"] == pytest.approx(st.wilcoxon(a, x).pvalue)
    assert c["welch_p"] == pytest.approx(st.ttest_ind(a, x, equal_var=False).pvalue)
    assert c["mannwhitney_p"] == pytest.approx(st.mannwhitneyu(a, x, alternative="two-sided").pvalue)
    assert c["brown_forsythe_p"] == pytest.approx(st.levene(a, x, center="median").pvalue)
    assert c["levene_p"] == pytest.approx(st.levene(a, x, center="mean").pvalue)
    assert c["std_ratio"] == pytest.approx(a.std(ddof=1) / x.std(ddof=1))
    assert c["std_ratio_ci95_low"] <= c["std_ratio"] <= c["std_ratio_ci95_high"]
    dz = np.mean(a - x) / np.std(a - x, ddof=1)
    assert c["seeds_to_detect_mean"] == stats.seeds_to_detect_difference(dz, paired=True)
    assert c["sentence"].startswith(f"{label(P)} vs {label(BASELINE)}: ")
    assert "n = 6 pairs" in c["sentence"] and "0/6 seeds at or below majority vs 1/6" in c["sentence"]
    assert f"- {c['sentence']}" in md

    # C's seed 2 diverged: unpaired, so that C's other finished seeds and all the baseline's count.
    a = _finished("C")
    c = cfgs["C"]["comparison"]
    assert c["paired"] is False and (c["n_a"], c["n_b"]) == (5, 6) and math.isnan(c["paired_p"])
    assert c["welch_p"] == pytest.approx(st.ttest_ind(a, x, equal_var=False).pvalue)
    assert c["brown_forsythe_p"] == pytest.approx(st.levene(a, x, center="median").pvalue)
    assert cfgs["C"]["summary"]["accuracy"]["n_failed"] == 1 and cfgs["C"]["summary"]["accuracy"]["n_at_majority"] == 1
    assert "n = 5/6" in c["sentence"] and "1/6 failed vs 0/6" in c["sentence"]

    # Unpaired: U ran other seeds.
    u = _finished("U")
    c = cfgs["U"]["comparison"]
    assert c["paired"] is False and (c["n_a"], c["n_b"]) == (u.size, x.size)
    assert c["welch_p"] == pytest.approx(st.ttest_ind(u, x, equal_var=False).pvalue)
    assert c["mannwhitney_p"] == pytest.approx(st.mannwhitneyu(u, x, alternative="two-sided").pvalue)
    ci = st.ttest_ind(u, x, equal_var=False).confidence_interval(0.95)
    assert (c["mean_diff_ci95_low"], c["mean_diff_ci95_high"]) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert cfgs["base"]["comparison"] is None

    # S finished 2 seeds: no test and no interval, and the report says so.
    c = cfgs["S"]["comparison"]
    assert all(math.isnan(c[k]) for k in ("welch_p", "mannwhitney_p", "brown_forsythe_p", "std_ratio_ci95_low"))
    assert c["sentence"].startswith(f"{label(S)} vs {label(BASELINE)}: too few seeds (n = 2/6) to test")
    assert "too few seeds (n = 2)" in md  # its CI cell

    # Four configs against one baseline are a family: Holm's adjustment over the three that could be tested (S's tests
    # are undefined), recomputed here from its definition: the k-th smallest of m times m - k + 1, kept monotone.
    tested = {name: cfgs[name]["comparison"] for name in ("P", "C", "U")}
    for key, p_of in (("mean", lambda r: r["paired_p"] if r["paired"] else r["welch_p"]),
                      ("std", lambda r: r["brown_forsythe_p"])):
        ranked = sorted(tested, key=lambda name: p_of(tested[name]))
        running = 0.0
        for k, name in enumerate(ranked):
            running = max(running, min(1.0, (3 - k) * p_of(tested[name])))
            assert tested[name][f"holm_{key}_p"] == pytest.approx(running)
            assert tested[name][f"holm_{key}_m"] == 3
        assert math.isnan(cfgs["S"]["comparison"][f"holm_{key}_p"])
    assert "Holm p (mean, std)" in md
    for name, r in tested.items():  # a sentence names the adjustment where the raw p alone would detect
        raw = min(r["paired_p"] if r["paired"] else r["welch_p"], r["brown_forsythe_p"])
        assert ("Holm-adjusted over 3 comparisons" in r["sentence"]) == (raw < 0.05)

    # Every comparison that could be tested either found a difference or says it did not, and what would; it decides
    # on the family's adjusted p.
    for name in ("P", "C", "U"):
        r = cfgs[name]["comparison"]
        p = r["paired_p"] if r["paired"] else r["welch_p"]
        assert ("mean: no detectable difference" in r["sentence"]) == (r["holm_mean_p"] >= 0.05)
        if p >= 0.05:
            need = r["seeds_to_detect_mean"]
            assert (f"about {int(need)} seeds per config would detect" if math.isfinite(need)
                    else f"more than {stats.MAX_SEEDS} seeds per config would detect") in r["sentence"]

    assert f"## Against the baseline ({label(BASELINE)})" in md
    assert "## Seeds at or below the majority class" in md and "at or below the majority-class baseline" in md
    assert "loss diverged" in md
    check_png(synthetic / "report" / "std_vs_method.num_tokens.png")


def test_ui_serves_the_experiment_store(experiment):
    if not (experiment / "mlflow.db").exists():
        log_experiment(experiment)
    port = free_port()
    proc = subprocess.Popen(ptray_cmd("ui", experiment, "--port", port),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        first = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}" in first
        # A guard against a server that never answers, not a speed check: MLflow 3's server (web app, job runner)
        # has taken minutes to start on a loaded 2-core machine.
        deadline, status = time.monotonic() + 600, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
                    status = r.status
                    break
            except OSError:
                time.sleep(1)
        assert status == 200, f"no answer from the MLflow UI (exit code {proc.poll()})"
    finally:
        os.killpg(proc.pid, 15)  # the UI's server and its workers share the group started for it
        proc.wait(timeout=30)
