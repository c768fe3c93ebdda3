"""Variance attribution (`ptray report`'s "Where the seed variance comes from"), checked against a recomputation with
pandas on synthetic designs whose effects are set by the test, then on a hand-built experiment folder."""
import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from conftest import write_experiment, write_result
from ptray.analysis import variance
from ptray.analysis.report import write_report
from ptray.layout import config_id, label
from ptray.tracking.results import load_experiment


def _pooled_std(frame: pd.DataFrame, by: list[str]) -> tuple[float, int, int]:
    """Independent recomputation: pooled within-group std of `value` grouped by `by`, groups of 2+ seeds only."""
    g = frame.groupby(by)["value"] if by else frame.assign(_all=0).groupby("_all")["value"]
    sizes, var = g.size(), g.var(ddof=1)
    keep = sizes >= 2
    df = int((sizes[keep] - 1).sum())
    return math.sqrt(float((var[keep] * (sizes[keep] - 1)).sum()) / df), int(keep.sum()), df


def test_crossed_design_matches_a_recomputation():
    # sample x init x order, every combination, with a large sample effect, a small init effect and noise.
    rng = np.random.default_rng(0)
    sample_fx, init_fx = rng.normal(0, 0.05, 3), rng.normal(0, 0.01, 4)
    rows = [({"sample": s, "init": i, "order": o}, 0.7 + sample_fx[s] + init_fx[i] + rng.normal(0, 0.002))
            for s in range(3) for i in range(4) for o in range(2)]
    frame = pd.DataFrame([{**k, "value": v} for k, v in rows])
    held, factors = variance.factors(rows)
    assert held == {} and [f.sources for f in factors] == [("sample",), ("init",), ("order",)]
    for f in factors:
        others = [s for s in variance.SOURCES if s not in f.sources]
        std, groups, df = _pooled_std(frame, others)
        assert f.std == pytest.approx(std) and f.groups == groups and f.n == groups + df
        ss = std ** 2 * df
        assert f.ci == pytest.approx((math.sqrt(ss / st.chi2.ppf(0.975, df)), math.sqrt(ss / st.chi2.ppf(0.025, df))))
    by = {f.sources[0]: f.std for f in factors}
    assert by["sample"] > by["init"] > by["order"]  # the effects the data were built with


def test_sources_that_move_together_are_one_factor_and_a_constant_one_is_held():
    # The shipped default with a fixed k-shot sample: init and order are both train.seed, the sample is seed 7.
    rows = [({"sample": 7, "init": s, "order": s}, v) for s, v in enumerate([0.8, 0.7, 0.75, 0.9])]
    held, factors = variance.factors(rows)
    assert held == {"sample": 7}
    [f] = factors
    assert f.sources == ("init", "order") and f.groups == 1 and f.n == 4
    assert f.std == pytest.approx(np.std([0.8, 0.7, 0.75, 0.9], ddof=1))


def test_a_source_without_repeats_is_undefined_not_zero():
    # Every (sample, init) pair once and order tied to init: across sample needs two samples at one init.
    rows = [({"sample": s, "init": i, "order": i}, 0.5 + 0.1 * s + 0.01 * i) for s, i in [(0, 0), (1, 1), (2, 2), (0, 3)]]
    _, factors = variance.factors(rows)
    by = {f.name: f for f in factors}
    assert set(by) == {"sample", "init+order"}
    assert by["sample"].groups == 0 and math.isnan(by["sample"].std) and math.isnan(by["sample"].ci[0])
    assert by["init+order"].groups == 1 and by["init+order"].n == 2  # sample 0 at init 0 and 3
    assert math.isnan(by["init+order"].ci[0])  # one degree of freedom: no interval


def _result(seed: int, seeds: dict | None, value: float | None, overrides: dict) -> dict:
    r = {"seed": seed, "status": "ok" if value is not None else "failed", "reason": None if value is not None else
         "diverged", "primary_metric": "accuracy", "majority_baseline": 0.5, "task": "subj", "model": "minilm",
         "report_metrics": {"accuracy": value} if value is not None else {}, "selection_metrics": {}, "history": [],
         "config_id": config_id(overrides), "overrides": overrides, "label": label(overrides),
         "config": {"task": {"name": "subj"}, "method": {"name": overrides.get("method.name", "vanilla")}}}
    if seeds is not None:
        r["seeds"] = seeds
    return r


def test_report_groups_configs_that_differ_only_in_source_seeds(tmp_path):
    # vanilla over 3 k-shot samples x 3 seeds (init and order move with train.seed); residual on the sample seed
    # unset (sample, init, order all train.seed), from results written before source seeds were recorded.
    rng = np.random.default_rng(1)
    configs = [{"method.name": "vanilla", "task.sample_seed": k} for k in range(3)] + [{"method.name": "residual"}]
    values = {}
    for o in configs:
        for seed in range(3):
            if "task.sample_seed" in o:
                v = 0.6 + 0.1 * o["task.sample_seed"] + rng.normal(0, 0.01)
                r = _result(seed, {"sample": o["task.sample_seed"], "init": seed, "order": seed}, v, o)
            else:
                v = None if seed == 2 else 0.7 + rng.normal(0, 0.05)  # a failed seed has no score
                r = _result(seed, None, v, o)
            values[config_id(o), seed] = v
            write_result(tmp_path, o, seed, r)
    write_experiment(tmp_path, configs, [0, 1, 2], baseline=configs[0])

    fams = {f.label: f for f in variance.families(load_experiment(tmp_path), "accuracy")}
    assert set(fams) == {"method.name=vanilla", "method.name=residual"}
    van, res = fams["method.name=vanilla"], fams["method.name=residual"]
    assert van.config_ids == [config_id(o) for o in configs[:3]] and van.n == 9 and van.held == {}
    frame = pd.DataFrame([{"sample": k, "seed": s, "value": values[config_id(configs[k]), s]}
                          for k in range(3) for s in range(3)])
    by = {f.name: f for f in van.factors}
    assert by["sample"].std == pytest.approx(_pooled_std(frame, ["seed"])[0])
    assert by["init+order"].std == pytest.approx(_pooled_std(frame, ["sample"])[0])
    assert van.std == pytest.approx(frame["value"].std(ddof=1))
    # Old results: the sample is the whole split (held), init and order are train.seed; the failed seed is left out.
    assert res.n == 2 and res.held == {"sample": None} and [f.name for f in res.factors] == ["init+order"]

    md = write_report(tmp_path, log_mlflow=False).read_text()
    section = md.split("## Where the seed variance comes from")[1].split("\n## ")[0]
    assert f"| method.name=vanilla | 9 | {van.std:.4f} | none | sample | 3 (9 seeds) | {by['sample'].std:.4f} [" in section
    assert f"| init+order | 3 (9 seeds) | {by['init+order'].std:.4f} [" in section
    assert "| method.name=residual | 2 |" in section and "sample whole split" in section
    saved = json.loads((tmp_path / "report" / "stats.json").read_text())["variance_sources"]
    assert [f["label"] for f in saved] == ["method.name=vanilla", "method.name=residual"]
