"""Where seed variance comes from: the spread across one source of seed variance with the others held fixed.

A seed's result.json records the seed of each source (ExperimentConfig.source_seeds): the k-shot `sample`, the
prompt's `init`, and the data `order` with training noise. Configs that differ only in the keys that set those seeds
(task.sample_seed, train.init_seed, train.order_seed) form one *family*: the same method and hyperparameters, run over
a design of source seeds. Within a family, the spread across a source is the pooled standard deviation of the finished
seeds that share every other source's seed (Dodge et al. 2020 hold the data order fixed to see the initialisation's
effect, and the reverse). Sources whose seeds move together in every run (unset, each is train.seed) cannot be told
apart, so they are one factor, named by all of them; a source with one value throughout is held fixed.
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from scipy import stats as st

from ptray.layout import label
from ptray.stats import MIN_SEEDS
from ptray.tracking.results import ConfigResults, Experiment, SeedResult

SOURCES = ("sample", "init", "order")
# The keys that only choose source seeds: configs that differ in nothing else are one family.
SEED_KEYS = ("task.sample_seed", "train.init_seed", "train.order_seed", "train.seed")


@dataclass
class Factor:
    """The spread across `sources` (moving together) with every other source held at one seed."""
    sources: tuple[str, ...]
    groups: int  # sets of seeds that share the other sources' seeds and hold at least two seeds
    n: int  # seeds in those groups
    std: float  # pooled within-group standard deviation (NaN with no group)
    ci: tuple[float, float]  # 95% chi-square interval of that std (NaN with fewer than MIN_SEEDS - 1 degrees of freedom)

    @property
    def name(self) -> str:
        return "+".join(self.sources)


@dataclass
class Family:
    label: str
    config_ids: list[str]
    n: int  # finished seeds with a score
    std: float  # over all of them, every source varying as the design has it
    held: dict[str, int | None]  # sources with one seed throughout (None: no k-shot sample, the whole split)
    factors: list[Factor]


def factors(rows: list[tuple[dict[str, int | None], float]]) -> tuple[dict[str, int | None], list[Factor]]:
    """The held sources and the spread across each factor, from (source seeds, score) per finished seed."""
    held = {s: rows[0][0].get(s) for s in SOURCES if len({r[0].get(s) for r in rows}) == 1} if rows else {}
    moving = [s for s in SOURCES if s not in held]
    tied: list[tuple[str, ...]] = []
    for s in moving:
        for i, group in enumerate(tied):
            if all(r[0].get(s) == r[0].get(group[0]) for r in rows):
                tied[i] = (*group, s)
                break
        else:
            tied.append((s,))
    out = []
    for factor in tied:
        others = [s for s in moving if s not in factor]
        groups = defaultdict(list)
        for seeds, value in rows:
            groups[tuple(seeds.get(s) for s in others)].append(value)
        sets = [np.asarray(v) for v in groups.values() if len(v) >= 2]
        df = sum(len(v) - 1 for v in sets)
        ss = sum(float(((v - v.mean()) ** 2).sum()) for v in sets)
        std = math.sqrt(ss / df) if df else math.nan
        ci = (math.nan, math.nan)
        if df >= MIN_SEEDS - 1:
            ci = (math.sqrt(ss / st.chi2.ppf(0.975, df)), math.sqrt(ss / st.chi2.ppf(0.025, df)))
        out.append(Factor(factor, len(sets), sum(len(v) for v in sets), std, ci))
    return held, out


def families(exp: Experiment, metric: str) -> list[Family]:
    """The experiment's configs grouped into families, each with the spread across its sources of seed variance."""
    grouped: dict[str, list[ConfigResults]] = defaultdict(list)
    for c in exp.configs.values():
        rest = {k: v for k, v in c.overrides.items() if k not in SEED_KEYS}
        grouped[json.dumps(rest, sort_keys=True)].append(c)
    out = []
    for configs in grouped.values():
        rows = [(source_seeds(s), s.report[metric]) for c in configs for s in c.scored
                if s.ok and math.isfinite(s.report.get(metric, math.nan))]
        values = np.array([v for _, v in rows])
        held, fs = factors(rows)
        rest = {k: v for k, v in configs[0].overrides.items() if k not in SEED_KEYS}
        out.append(Family(label(rest), [c.config_id for c in configs], len(rows),
                          float(values.std(ddof=1)) if len(rows) >= 2 else math.nan, held, fs))
    return out


def source_seeds(s: SeedResult) -> dict[str, int | None]:
    # Results written before the sources had seeds of their own drew all from train.seed, on the whole split.
    return s.raw.get("seeds") or {"sample": None, "init": s.seed, "order": s.seed}
