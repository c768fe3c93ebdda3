"""The `tune:` section turned into Ray Tune parts: trial configs (configs x seeds), searchers and schedulers.

Seeds are a dimension, not a draw: every config the search produces runs on every seed of `tune.seeds`, so any two
configs are compared on the same seeds. Grid and random configs are known up front; a model-based searcher (Optuna)
sees each of its suggestions repeated on all seeds and learns from their mean. PBT / PB2 evolve one population per
seed (a Tuner each), so a trial never takes over a model trained on another seed.

A Tune trial's config (the contract with tracking): {"config_id", "seed", "overrides", "label"} plus every searched
key at the top level (`train.lr`, ...), where schedulers and searchers read and write them. With `train.seed_pack` K,
a trial trains K seeds of its config together (ptray.core.packing) and also holds "seeds": all of them; "seed" is
the first, the one its reports speak for.
"""
from __future__ import annotations

import copy
import itertools
import math
import pickle
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import Repeater, Searcher
from ray.tune.search.repeater import TRIAL_INDEX

from ptray.config import ConfigError, ExperimentConfig, TuneConfig, config_from_dict
from ptray.layout import config_id, label, lookup, with_values

PBT_MEMBER = "pbt.member"  # identity of a population slot (not a config key)
EVOLVING = ("pbt", "pb2")
# The one integer knob PBT evolves: a member that takes over another's checkpoint resizes its prompt to its own
# explored length (ptray.core.resize).
PROMPT_LENGTH = "method.num_tokens"
# Initial draws (random configs, PBT populations) come from a fixed stream: the same YAML gives the same configs,
# and every seed's population starts from the same members.
SAMPLING_SEED = 0


def trial_config(overrides: dict[str, Any], seeds: list[int], values: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a Tune trial receives: its identity, and the values of the searched keys (default: the overrides)."""
    pack = {"seeds": seeds} if len(seeds) > 1 else {}
    return {"config_id": config_id(overrides), "seed": seeds[0], **pack, "overrides": overrides,
            "label": label(overrides), **(overrides if values is None else values)}


def domain(entry: dict[str, list]):
    """A sampled search entry as a Ray Tune domain."""
    kind, v = next(iter(entry.items()))
    if kind == "choice":
        return tune.choice(v)
    if kind == "randint":
        return tune.randint(v[0], v[1] + 1)  # ours is inclusive, Tune's upper bound is not
    return {"uniform": tune.uniform, "loguniform": tune.loguniform}[kind](*v)


def _plain(x: Any) -> Any:
    return x.item() if isinstance(x, np.generic) else x


@dataclass
class SearchPlan:
    """A validated search: which configs run on which seeds, and what ranks them."""

    cfg: ExperimentConfig  # the base config (its `tune` section included)
    primary_metric: str
    max_positions: int | None = None  # the model's position limit, which every searched value must fit

    def __post_init__(self):
        self.tune: TuneConfig = self.cfg.tune or TuneConfig()
        self.seeds = self.tune.seed_list()
        self.base = self.cfg.to_dict()
        self.keys = list(self.tune.search)
        self.grid_keys = [k for k in self.keys if "grid" in self.tune.search[k]]
        self.sampled_keys = [k for k in self.keys if k not in self.grid_keys]
        self.scheduler_name = self.tune.scheduler.name
        self._check_values()
        if self.evolving:
            self._check_evolvable()
        self._check_packing()

    @property
    def metric(self) -> str:
        return f"selection/{self.primary_metric}"

    @property
    def evolving(self) -> bool:
        return self.scheduler_name in EVOLVING

    # --- validation: every searched value must make a valid config, before Ray starts -------------------------------
    def _check_values(self) -> None:
        for key, entry in self.tune.search.items():
            try:
                lookup(self.base, key)
            except KeyError as e:
                raise ConfigError(f"tune.search: {e.args[0]}; search keys are dotted config keys like "
                                  "train.lr") from None
            for value in next(iter(entry.values())):  # a range's bounds, a list's every value
                try:
                    cfg = config_from_dict(with_values(self.base, {key: value}), f"tune.search {key}={value!r}")
                except ConfigError as e:
                    raise ConfigError(f"tune.search: the value {value!r} of {key} makes an invalid "
                                      f"config:\n{e}") from None
                problem = cfg.positions_problem(self.max_positions)
                if problem:
                    raise ConfigError(f"tune.search: the value {value!r} of {key} does not fit the model: {problem}, "
                                      f"or bound {key} lower")
        if self.tune.baseline is not None:
            config_from_dict(with_values(self.base, self.tune.baseline), "tune.baseline")
            if self.tune.resolved_searcher() == "grid" and self.tune.baseline not in self.search_configs():
                raise ConfigError(f"tune.baseline {self.tune.baseline} is not one of the grid's configs")

    def _check_evolvable(self) -> None:
        name = self.scheduler_name
        if not self.sampled_keys:
            raise ConfigError(f"tune.scheduler {name} needs something to evolve: give continuous knobs as ranges, "
                              "e.g. tune.search: {train.lr: {loguniform: [0.001, 0.3]}}")
        limit, population = self.tune.max_concurrent, self.tune.num_samples
        if limit is not None and limit < population:
            # Tune would make only `limit` members trials at a time: the first ones train to the end and perturb
            # among themselves before the rest exist, so the population is never one.
            raise ConfigError(f"tune.max_concurrent {limit} is smaller than the {name} population (tune.num_samples "
                              f"{population}): every member must be a trial at once, taking turns on the resources "
                              f"(members pause at each perturbation). Unset tune.max_concurrent or raise it to "
                              f"{population}")
        for key in self.sampled_keys:
            kind = next(iter(self.tune.search[key]))
            current = lookup(self.base, key)
            if key == PROMPT_LENGTH:
                self._check_resizable(kind)
                continue
            if not isinstance(current, float):
                raise ConfigError(
                    f"tune.search: scheduler {name} cannot evolve {key} (a {type(current).__name__}, not a continuous "
                    f"knob): a population must keep what it trains fixed ({PROMPT_LENGTH} is the one integer pbt "
                    f"evolves). Give {key} as a list: each value then gets its own populations.")
            if name == "pb2" and kind not in ("uniform", "loguniform"):
                raise ConfigError(f"tune.search: pb2 evolves continuous ranges only; give {key} as uniform or "
                                  f"loguniform [low, high], or as a list (a grid), not {kind}")
            if name == "pbt" and kind == "randint":
                raise ConfigError(f"tune.search: {key} is a float; give it as uniform, loguniform or choice for pbt")

    def _check_resizable(self, kind: str) -> None:
        """PBT over the prompt length: a member restores another's checkpoint at its own length, which ptray.core.resize
        does for methods that say they can, in a stage-0 checkpoint of AdamW moments, in one process."""
        key = PROMPT_LENGTH
        if self.scheduler_name == "pb2":
            raise ConfigError(f"tune.search: pb2 cannot evolve {key}: its Gaussian-process model searches a continuous "
                              f"box and would truncate a length to an integer; evolve {key} with scheduler pbt "
                              f"({{randint: [low, high]}} or {{choice: [...]}}), or give it as a list (a grid) under pb2")
        if kind not in ("randint", "choice"):
            raise ConfigError(f"tune.search: pbt evolves {key} as an integer; give it as randint [low, high] or choice "
                              f"[...], not {kind}")
        for cell in self.grid_cells():
            cfg = config_from_dict(with_values(self.base, cell), "tune.search")
            reason = cfg.method.unresizable()
            if reason:
                raise ConfigError(f"tune.search: pbt cannot evolve {key} of method {cfg.method.name}: {reason}")
            if cfg.train.zero_stage != 0:
                raise ConfigError(f"tune.search: pbt over {key} resizes a prompt and its optimizer moments in "
                                  f"checkpoints of ZeRO stage 0 only; train.zero_stage {cfg.train.zero_stage} keeps the "
                                  f"optimizer state in flattened partitions: set train.zero_stage=0, or give {key} as a "
                                  f"list (a grid)")
            if cfg.train.optimizer != "adamw":
                raise ConfigError(f"tune.search: pbt over {key} resizes per-element optimizer moments; train.optimizer "
                                  f"{cfg.train.optimizer} keeps factored ones (a row and a column statistic) that cannot "
                                  f"be cut per token: set train.optimizer=adamw, or give {key} as a list (a grid)")
        if self.tune.resources.workers > 1:
            raise ConfigError(f"tune.search: pbt over {key} resizes the checkpoint of a trial that trains in one "
                              f"process; tune.resources.workers {self.tune.resources.workers} needs {key} as a list "
                              f"(a grid), or set tune.resources.workers=1")

    def _check_packing(self) -> None:
        k = self.cfg.train.seed_pack
        if k == 1:
            return
        if self.scheduler_name != "fifo":
            raise ConfigError(f"train.seed_pack {k} trains seeds together in one trial, but scheduler "
                              f"{self.scheduler_name} stops or evolves single seeds: use train.seed_pack=1 with it")
        if self.tune.resolved_searcher() == "optuna":
            raise ConfigError(f"train.seed_pack {k}: searcher optuna repeats each suggestion seed by seed; use "
                              "searcher grid or random with packed seeds, or train.seed_pack=1")
        if self.tune.resources.workers > 1:
            raise ConfigError(f"train.seed_pack {k} packs seeds in one process; tune.resources.workers "
                              f"{self.tune.resources.workers} needs train.seed_pack=1")

    def packs(self, seeds: list[int]) -> list[list[int]]:
        """The seeds in trials: one each, or train.seed_pack of them together."""
        k = self.cfg.train.seed_pack
        return [seeds[i:i + k] for i in range(0, len(seeds), k)]

    # --- configs ----------------------------------------------------------------------------------------------------
    def grid_cells(self) -> list[dict[str, Any]]:
        values = [self.tune.search[k]["grid"] for k in self.grid_keys]
        return [dict(zip(self.grid_keys, combo)) for combo in itertools.product(*values)]

    def _draw(self, rng: np.random.Generator) -> dict[str, Any]:
        return {k: _plain(domain(self.tune.search[k]).sample(random_state=rng)) for k in self.sampled_keys}

    def search_configs(self) -> list[dict[str, Any]]:
        """Grid / random: every grid cell, crossed with num_samples draws of the sampled keys (duplicates dropped)."""
        rng = np.random.default_rng(SAMPLING_SEED)
        configs: dict[str, dict[str, Any]] = {}
        for cell in self.grid_cells():
            for _ in range(self.tune.num_samples if self.sampled_keys else 1):
                values = {**cell, **self._draw(rng)}
                overrides = {k: values[k] for k in self.keys}
                configs.setdefault(config_id(overrides), overrides)
        return list(configs.values())

    def search_trials(self) -> list[dict[str, Any]]:
        """Every config on every seed, seed by seed (pack by pack): the first results already compare configs on the
        same seeds."""
        return [trial_config(o, pack) for pack in self.packs(self.seeds) for o in self.search_configs()]

    def population(self, cell: dict[str, Any], seed: int) -> list[dict[str, Any]]:
        """PBT / PB2: num_samples members on one seed; member k starts from the same values in every population."""
        rng = np.random.default_rng(SAMPLING_SEED)
        members = []
        for k in range(self.tune.num_samples):
            start = self._draw(rng)
            members.append(trial_config({**cell, PBT_MEMBER: k}, [seed], {**cell, **start}))
        return members

    @staticmethod
    def population_space(members: list[dict[str, Any]]) -> dict[str, Any]:
        """PBT takes no searcher: its population as a param space, one grid point per member (its config_id), the
        member's other values following from it."""
        by_id = {m["config_id"]: m for m in members}
        shared = {k: v for k, v in members[0].items() if all(m[k] == v for m in members)}
        return {**shared, "config_id": tune.grid_search(list(by_id)),
                **{k: tune.sample_from(partial(_member_value, by_id, k)) for k in members[0]
                   if k not in shared and k != "config_id"}}

    def best_member_overrides(self, cell: dict[str, Any]) -> dict[str, Any]:
        return {**cell, PBT_MEMBER: "best"}

    def baseline_config_id(self) -> str | None:
        return config_id(self.tune.baseline) if self.tune.baseline is not None else None

    # --- Ray Tune parts ---------------------------------------------------------------------------------------------
    def model_searcher(self):
        """Optuna, each suggestion repeated on every seed; the count of trials it may start."""
        from ray.tune.search.optuna import OptunaSearch  # imports optuna: only when asked for

        space = {k: domain(self.tune.search[k]) for k in self.keys}
        inner = OptunaSearch(space=space, metric=self.metric, mode="max", seed=SAMPLING_SEED)
        return SeedRepeater(inner, self.seeds), self.tune.num_samples * len(self.seeds)

    def _mutation(self, key: str):
        """How PBT explores a knob: a domain it resamples from or scales (0.8 or 1.2), or for the prompt length's
        choice its list, where it moves to a neighbouring value (or resamples one): a length stays one of the
        choices."""
        entry = self.tune.search[key]
        if key == PROMPT_LENGTH and "choice" in entry:
            return list(entry["choice"])
        return domain(entry)

    def scheduler(self, total_steps=None):
        """The Tune scheduler (None: run every trial to the end). Time is the training step; `total_steps` (a trial's
        config -> its training steps) keeps PBT / PB2 from perturbing at a member's last evaluation."""
        s, every = self.tune.scheduler, self.cfg.train.eval_every
        if s.name == "fifo":
            return None
        if s.name == "asha":
            # Without max_t, a trial that survives every rung ends when its training does.
            return ASHAScheduler(time_attr="step", metric=self.metric, mode="max", grace_period=s.resolved_grace_period(every),
                                 reduction_factor=s.reduction_factor, max_t=s.max_t or 10**9)
        from ptray.distributed.pbt import SeedPB2, SeedPBT  # PB2 imports scikit-learn

        interval = s.resolved_interval(every)
        if s.name == "pbt":
            mutations = {k: self._mutation(k) for k in self.sampled_keys}
            # Ray's PBT perturbs a randint knob by a factor (0.8 or 1.2) and rounds it, whatever its range.
            bounds = {k: e["randint"] for k, e in self.tune.search.items() if k in mutations and "randint" in e}
            return SeedPBT(time_attr="step", metric=self.metric, mode="max", perturbation_interval=interval,
                           hyperparam_mutations=mutations, quantile_fraction=s.quantile_fraction,
                           resample_probability=s.resample_probability, synch=s.synch,
                           custom_explore_fn=partial(_within_bounds, bounds) if bounds else None,
                           total_steps=total_steps)
        bounds = {k: next(iter(self.tune.search[k].values())) for k in self.sampled_keys}
        return SeedPB2(time_attr="step", metric=self.metric, mode="max", perturbation_interval=interval,
                       hyperparam_bounds=bounds, quantile_fraction=s.quantile_fraction, synch=s.synch,
                       total_steps=total_steps)


def _within_bounds(bounds: dict[str, list[int]], config: dict[str, Any]) -> dict[str, Any]:
    """An explored config with its integer knobs brought back into their [low, high] (as Python ints)."""
    return {**config, **{k: int(min(max(config[k], low), high)) for k, (low, high) in bounds.items()}}


def _member_value(by_id: dict[str, dict[str, Any]], key: str, config) -> Any:
    return by_id[config["config_id"]][key]


def selection_score(result: dict[str, Any], primary_metric: str) -> float:
    """How a search ranks one seed: its best selection-split score; a failed seed scores 0 (failing is not robust).
    The report split is never used to choose."""
    value = (result.get("selection_metrics") or {}).get(primary_metric)
    if result.get("status") == "failed" or value is None or not math.isfinite(value):
        return 0.0
    return float(value)


class ListSearcher(Searcher):
    """Hands out a fixed list of trial configs in order (grid or random draws on every seed), then finishes."""

    def __init__(self, configs: list[dict[str, Any]]):
        super().__init__()
        self.configs = configs
        self.position = 0

    def suggest(self, trial_id: str):
        if self.position >= len(self.configs):
            return self.FINISHED
        self.position += 1
        return copy.deepcopy(self.configs[self.position - 1])

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass  # a fixed list learns nothing

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # the list is the search space

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump({"configs": self.configs, "position": self.position}, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))


class SeedRepeater(Repeater):
    """Ray's Repeater with the repeat index mapped to our seeds and the trial identity added: the inner searcher
    sees one trial per suggestion, scored by the mean over seeds."""

    def __init__(self, searcher, seeds: list[int]):
        super().__init__(searcher, repeat=len(seeds), set_index=True)
        self.seeds = list(seeds)

    def suggest(self, trial_id: str):
        config = super().suggest(trial_id)
        if not isinstance(config, dict):
            return config
        seed = self.seeds[config.pop(TRIAL_INDEX)]
        return trial_config({k: _plain(v) for k, v in config.items()}, [seed])
