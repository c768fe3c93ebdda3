"""Typed, validated experiment configs: YAML file + ``key.sub=value`` overrides.

Every error names the key, the value given and what is allowed, and is raised before any model loads.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ptray.layout import with_values


class ConfigError(ValueError):
    """A config that cannot run; the message says which key is wrong and how to fix it."""


class _Strict(BaseModel):
    # Unknown keys are typos more often than not: refuse them.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def default_data_dir(collection: str = "superglue") -> str:
    """Where a task's collection of the shared data is by default. The FewGLUE folder sits beside the project at
    ../shared/data/superglue; PTRAY_DATA_DIR points at it elsewhere. The other collections (sentence, superglue-full)
    are its siblings, so one variable finds them all."""
    fewglue = Path(os.environ.get("PTRAY_DATA_DIR", "../shared/data/superglue"))
    return str(fewglue if collection == "superglue" else fewglue.parent / collection)


class TaskConfig(_Strict):
    name: str = "rte"
    # data_dir, selection_split and report_split default to the task's own (its Task class: the folder of its
    # collection, its split names); _task_defaults fills them in.
    data_dir: str
    train_split: str = "train"
    selection_split: str
    report_split: str
    max_seq_length: int = Field(256, ge=8)
    # Caps for quick runs and tests; None uses the whole split. With k_shot, max_eval_examples caps the report split
    # only (the selection set is the k-shot selection sample).
    max_train_examples: int | None = Field(None, ge=1)
    max_eval_examples: int | None = Field(None, ge=1)
    # The few-shot protocol (LM-BFF, Gao et al. 2021): k_shot training examples per class drawn from train_split, and
    # k_shot selection examples per class drawn from selection_split (disjoint from the training sample where that is
    # the same split). sample_seed draws both; unset, it is train.seed (see ExperimentConfig.source_seeds).
    k_shot: int | None = Field(None, ge=1)
    sample_seed: int | None = None
    # Custom tasks (name: custom): files per split, the text fields, the label column and label set.
    data_files: dict[str, str] | None = None
    text_fields: list[str] | None = None
    label_column: str = "label"
    labels: list[str] | None = None
    label_words: list[str] | None = None
    # Hub datasets (name: hub): datasets.load_dataset(dataset, subset); splits are the hub's split names.
    dataset: str | None = None
    subset: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _task_defaults(cls, data: Any) -> Any:
        from ptray.core.tasks import TASKS, Task

        if not isinstance(data, dict):
            return data
        # An unknown name takes the base defaults, so that its one error is the name's (see _known_task).
        task = TASKS.get(str(data.get("name", "rte")).lower(), Task)
        return {"data_dir": default_data_dir(task.collection), **task.default_splits, **data}

    @field_validator("name")
    @classmethod
    def _known_task(cls, v: str) -> str:
        from ptray.core.tasks import TASKS

        key = v.lower()
        if key not in TASKS:
            raise ValueError(f"unknown task {v!r}; allowed: {', '.join(sorted(TASKS))}")
        return key

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, v: str) -> str:
        # Resolved where the config is read: Ray Tune trials run in their own working directory.
        return v if "://" in v else str(Path(v).expanduser().resolve())

    @model_validator(mode="after")
    def _sample(self) -> "TaskConfig":
        if self.k_shot is not None and self.max_train_examples is not None:
            raise ValueError(f"task.k_shot {self.k_shot} and task.max_train_examples {self.max_train_examples} are both "
                             f"set, but k_shot already fixes the training set ({self.k_shot} per class); unset "
                             f"task.max_train_examples")
        if self.sample_seed is not None and self.k_shot is None:
            raise ValueError(f"task.sample_seed {self.sample_seed} is set but task.k_shot is not: without a k-shot "
                             f"sample the whole split is used and there is nothing to draw; set task.k_shot or unset "
                             f"task.sample_seed")
        return self


class ModelConfig(_Strict):
    # An offline alias (minilm, smollm2-135m), a local folder, or a hub name where a network exists.
    name: str = "minilm"
    family: Literal["auto", "encoder", "causal", "seq2seq"] = "auto"
    dtype: Literal["fp32", "bf16"] = "fp32"
    # Frozen backbones run in eval mode (dropout off) unless asked otherwise.
    dropout: bool = False
    # Encoders: how the classification head reads the sequence.
    pooling: Literal["mean", "cls"] = "mean"
    device: Literal["auto", "cpu", "cuda"] = "auto"


class TrainConfig(_Strict):
    epochs: float | None = Field(None, gt=0)
    max_steps: int | None = Field(None, ge=1)
    batch_size: int = Field(16, ge=1)
    eval_batch_size: int = Field(64, ge=1)
    # Training batches of examples of similar length (seeded and jittered, so they still vary): less padding.
    group_by_length: bool = True
    grad_accum: int = Field(1, ge=1)
    optimizer: Literal["adamw", "adafactor"] = "adamw"
    lr: float = Field(0.03, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    max_grad_norm: float | None = Field(1.0, gt=0)
    eval_every: int = Field(20, ge=1)
    # Stop after this many evaluations without improvement of the selection metric; None disables.
    early_stopping_patience: int | None = Field(None, ge=1)
    zero_stage: Literal[0, 1, 2, 3] = 0
    # A loss above this (or NaN/inf) ends the seed as failed: diverged.
    max_loss: float = Field(100.0, gt=0)
    seed: int = 0
    # Sources of seed variance with their own seeds, so one can vary while the others hold (Dodge et al. 2020 separate
    # initialisation and data order): init_seed draws the prompt and the head; order_seed the data order and the noise
    # of training (dropout, Gumbel draws, PTP perturbations). Unset, each is train.seed; task.sample_seed is the
    # third source. See ExperimentConfig.source_seeds.
    init_seed: int | None = None
    order_seed: int | None = None
    # Train this many seeds of a config together through one pass of the shared frozen backbone (the Ray layer groups
    # seeds by it; ptray.core.packing.train_packed). Each keeps its own prompt, optimizer state, data order and result.
    seed_pack: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _length(self) -> "TrainConfig":
        if self.epochs is None and self.max_steps is None:
            self.epochs = 10
        return self


class MethodConfig(_Strict):
    """Base of every prompt method's config; `name` picks the entry in ptray.core.methods.METHODS."""

    name: str = "vanilla"

    def added_positions(self) -> int:
        """How many positions the method adds to the input sequence (checked against the model's limit)."""
        return int(getattr(self, "num_tokens", 0))


class PerturbationConfig(_Strict):
    """Base of every PTP regularizer's config; `space` and `kind` pick the entry in ptray.core.perturbations."""

    # The YAML key is `lambda` (a Python keyword, hence the alias); dumps write it back as `lambda`.
    model_config = ConfigDict(serialize_by_alias=True, validate_by_name=True, validate_by_alias=True)

    space: str
    kind: str
    # loss = L(clean) + lambda * L(perturbed); 0 turns the regularizer off (no perturbed pass at all).
    lambda_: float = Field(1.0, ge=0, alias="lambda")


# Search-space entries of `tune.search`: a list is a grid; otherwise one of these forms.
SEARCH_KINDS = {
    "grid": "a list of values, each run as its own config",
    "choice": "a list of values, sampled",
    "uniform": "[low, high], sampled uniformly",
    "loguniform": "[low, high], sampled uniformly in log space (low > 0)",
    "randint": "[low, high], an integer sampled from low..high inclusive",
}


class TuneResources(_Strict):
    """What one trial (one config on one seed) gets: 1 worker trains in the trial's own process; more run a Ray
    Train TorchTrainer of that many DeepSpeed workers."""

    workers: int = Field(1, ge=1)
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)


class TuneScheduler(_Strict):
    """fifo runs every trial to the end; asha stops weak trials early; pbt / pb2 evolve the continuous knobs of a
    population (one population per seed). Intervals are in training steps."""

    name: Literal["fifo", "asha", "pbt", "pb2"] = "fifo"
    grace_period: int | None = Field(None, ge=1)  # asha; default train.eval_every
    reduction_factor: float = Field(2.0, gt=1)  # asha
    max_t: int | None = Field(None, ge=1)  # asha: the last rung, where every trial stops; default: its training's end
    perturbation_interval: int | None = Field(None, ge=1)  # pbt, pb2; default 2 * train.eval_every
    quantile_fraction: float = Field(0.25, gt=0, le=0.5)  # pbt, pb2
    resample_probability: float = Field(0.25, ge=0, le=1)  # pbt
    # pbt, pb2: every member waits at each perturbation, so exploits do not depend on which trial reports first.
    synch: bool = False

    @model_validator(mode="before")
    @classmethod
    def _bare_name(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _options_fit(self) -> "TuneScheduler":
        own = {"asha": {"grace_period", "reduction_factor", "max_t"},
               "pbt": {"perturbation_interval", "quantile_fraction", "resample_probability", "synch"},
               "pb2": {"perturbation_interval", "quantile_fraction", "synch"}, "fifo": set()}[self.name]
        # Dumped configs carry every field: only a value other than the default is a stray option.
        stray = sorted(k for k, f in type(self).model_fields.items()
                       if k not in own | {"name"} and getattr(self, k) != f.default)
        if stray:
            raise ValueError(f"{', '.join(stray)} do not apply to scheduler {self.name!r} (its options: "
                             f"{', '.join(sorted(own)) or 'none'})")
        return self


class TuneConfirm(_Strict):
    """Re-run the top_k configs of the search (and the baseline) on fresh seeds the search never saw."""

    top_k: int = Field(1, ge=1)
    seeds: list[int] | None = None
    num_seeds: int | None = Field(None, ge=1)


class TuneConfig(_Strict):
    """The `tune:` section: configs x seeds for `ptray tune`."""

    name: str | None = None  # default: the config file's stem
    # Every config runs on every seed (paired comparisons): a list, or num_seeds for 0..n-1.
    seeds: list[int] | None = None
    num_seeds: int | None = Field(None, ge=1)
    # Dotted config key -> values (see SEARCH_KINDS), e.g. {"train.lr": {"loguniform": [0.001, 0.3]}}.
    search: dict[str, Any] = Field(default_factory=dict)
    # grid: every combination; random / optuna: num_samples configs. Default: grid when every entry is a list.
    searcher: Literal["grid", "random", "optuna"] | None = None
    num_samples: int = Field(1, ge=1)  # configs drawn by random / optuna; the population size under pbt / pb2
    scheduler: TuneScheduler = TuneScheduler()
    confirm: TuneConfirm | None = None
    # The searched values of the config others are compared with (e.g. {"method.name": "vanilla"}).
    baseline: dict[str, Any] | None = None
    resources: TuneResources = TuneResources()
    max_failures: int = Field(1, ge=0)  # retries of a crashed trial before its seed is recorded as failed
    max_concurrent: int | None = Field(None, ge=1)
    storage_path: str | None = None  # Ray Tune storage: a folder, NFS or s3://...; default OUTPUT/ray
    keep_checkpoints: int = Field(4, ge=2)

    @field_validator("search")
    @classmethod
    def _search(cls, v: dict[str, Any]) -> dict[str, Any]:
        return {key: _search_entry(key, value) for key, value in v.items()}

    @model_validator(mode="after")
    def _consistent(self) -> "TuneConfig":
        if self.seeds is not None and self.num_seeds is not None:
            raise ValueError("give either seeds or num_seeds, not both")
        seeds = self.seed_list()
        if not seeds or len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be a non-empty list of distinct integers, got {seeds}")
        kinds = {next(iter(e)) for e in self.search.values()}
        searcher, evolving = self.resolved_searcher(), self.scheduler.name in ("pbt", "pb2")
        if searcher == "grid" and kinds - {"grid"}:
            raise ValueError(f"searcher grid needs every search entry as a list of values; sample the others with "
                             f"searcher: random or optuna (entries of kind {', '.join(sorted(kinds - {'grid'}))})")
        if self.num_samples > 1 and not evolving and not kinds - {"grid"}:
            raise ValueError("num_samples > 1 with nothing to sample would repeat the same configs; more seeds go in "
                             "tune.seeds / tune.num_seeds")
        if searcher == "optuna" and "grid" in kinds:
            raise ValueError("searcher optuna samples every entry: write grid entries as {choice: [...]}")
        if searcher == "optuna" and self.scheduler.name in ("pbt", "pb2"):
            raise ValueError(f"scheduler {self.scheduler.name} evolves its population itself; use searcher random "
                             "(the initial population) or leave searcher unset")
        if self.confirm is not None:
            if self.scheduler.name in ("pbt", "pb2"):
                raise ValueError("confirm re-runs fixed configs; a pbt member's config is a schedule: add seeds "
                                 "instead")
            fresh = self.confirm_seeds()
            if set(fresh) & set(seeds) or len(set(fresh)) != len(fresh):
                raise ValueError(f"confirm seeds must be distinct and unseen by the search; {fresh} overlaps {seeds}")
        if self.baseline is not None and set(self.baseline) != set(self.search):
            raise ValueError(f"baseline must give a value for every searched key ({', '.join(self.search) or 'none'}), "
                             f"got {', '.join(self.baseline) or 'none'}")
        return self

    def seed_list(self) -> list[int]:
        if self.seeds is not None:
            return list(self.seeds)
        return list(range(self.num_seeds or 5))

    def resolved_searcher(self) -> str:
        if self.searcher is not None:
            return self.searcher
        return "grid" if all("grid" in e for e in self.search.values()) else "random"

    def confirm_seeds(self) -> list[int]:
        c = self.confirm
        if c is None:
            return []
        if c.seeds is not None:
            return list(c.seeds)
        # Fresh seeds follow the search's largest one.
        start = max(self.seed_list()) + 1
        return list(range(start, start + (c.num_seeds or 5)))


def _search_entry(key: str, value: Any) -> dict[str, Any]:
    """Normalise one search entry to {kind: values}; every error names the key and what it may be."""
    if key in ("seed", "train.seed"):
        raise ValueError(f"{key}: seeds are their own dimension; set tune.seeds or tune.num_seeds instead")
    if isinstance(value, list):
        value = {"grid": value}
    forms = "; ".join(f"{k}: {d}" for k, d in SEARCH_KINDS.items())
    if not isinstance(value, dict) or len(value) != 1 or next(iter(value)) not in SEARCH_KINDS:
        raise ValueError(f"{key}: {value!r} is not a search entry; give a list (a grid) or one of {{{forms}}}")
    kind, values = next(iter(value.items()))
    if not isinstance(values, list) or not values:
        raise ValueError(f"{key}: {kind} has no values; give a non-empty list")
    if kind in ("uniform", "loguniform", "randint"):
        numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in values)
        if len(values) != 2 or not numeric or values[0] >= values[1]:
            raise ValueError(f"{key}: {kind} needs [low, high] with low < high, got {values}")
        if kind == "loguniform" and values[0] <= 0:
            raise ValueError(f"{key}: loguniform needs low > 0, got {values}")
        if kind == "randint" and not all(isinstance(x, int) for x in values):
            raise ValueError(f"{key}: randint needs integer bounds, got {values}")
    return {kind: values}


class ExperimentConfig(_Strict):
    # Built when a config is: its defaults come from the task registry (which imports this module) and the environment.
    task: TaskConfig = Field(default_factory=TaskConfig)
    model: ModelConfig = ModelConfig()
    method: MethodConfig = MethodConfig()
    train: TrainConfig = TrainConfig()
    # Optional PTP regularizer (Chen et al., EMNLP 2023); none by default.
    perturbation: PerturbationConfig | None = None
    # Sections read by other layers (ptray tune, tracking); the training core ignores them.
    tune: TuneConfig | None = None
    tracking: dict[str, Any] | None = None

    @field_validator("method", mode="before")
    @classmethod
    def _method(cls, v: Any) -> MethodConfig:
        from ptray.core.methods import METHODS

        if isinstance(v, MethodConfig):
            v = v.model_dump()
        if not isinstance(v, dict):
            raise ValueError(f"must be a mapping with a 'name' key, got {v!r}")
        name = str(v.get("name", "vanilla")).lower()
        if name not in METHODS:
            raise ValueError(f"unknown method {name!r}; allowed: {', '.join(sorted(METHODS))}")
        return METHODS[name].config_class.model_validate({**v, "name": name})

    @field_validator("perturbation", mode="before")
    @classmethod
    def _perturbation(cls, v: Any) -> PerturbationConfig | None:
        from ptray.core.perturbations import PERTURBATIONS

        if v is None or isinstance(v, PerturbationConfig):
            return v
        if not isinstance(v, dict) or "space" not in v or "kind" not in v:
            raise ValueError(f"must be a mapping with 'space' and 'kind' keys (allowed pairs: {', '.join(sorted(PERTURBATIONS))})")
        key = f"{str(v['space']).lower()}/{str(v['kind']).lower()}"
        if key not in PERTURBATIONS:
            raise ValueError(f"unknown space/kind {key!r}; allowed: {', '.join(sorted(PERTURBATIONS))}")
        space, kind = key.split("/")
        return PERTURBATIONS[key].config_class.model_validate({**v, "space": space, "kind": kind})

    @field_validator("perturbation")
    @classmethod
    def _perturbed_prompt_exists(cls, v: PerturbationConfig | None, info) -> PerturbationConfig | None:
        method = info.data.get("method")
        if getattr(v, "prompt", False) and method is not None and method.name == "deep":
            raise ValueError(
                "perturbation.prompt is true, but method deep puts no prompt vectors into the input sequence (its "
                "prefixes are attention keys/values); set perturbation.prompt=false to perturb the input only"
            )
        return v

    @model_validator(mode="after")
    def _packable(self) -> "ExperimentConfig":
        if self.train.seed_pack > 1:
            from ptray.core.packing import unpackable

            reason = unpackable(self)
            if reason:
                raise ValueError(f"train.seed_pack {self.train.seed_pack}: {reason}")
        return self

    def source_seeds(self) -> dict[str, int | None]:
        """The seed of each source of seed variance, as result.json records it under "seeds": the k-shot sample (None
        without task.k_shot: the whole split is used), the initialisation, the data order and training noise. An unset
        one is train.seed, so a config that sets none varies them all together with train.seed, as before they
        existed."""
        seed = self.train.seed
        sample = self.task.sample_seed if self.task.sample_seed is not None else seed
        return {"sample": sample if self.task.k_shot is not None else None,
                "init": self.train.init_seed if self.train.init_seed is not None else seed,
                "order": self.train.order_seed if self.train.order_seed is not None else seed}

    def to_dict(self) -> dict[str, Any]:
        # serialize_as_any: method and perturbation hold subclasses whose own fields would otherwise be dropped.
        return self.model_dump(mode="json", serialize_as_any=True)


def _format_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid config ({source}):"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-"))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see the docs of this section for the allowed keys)"
        given = e.get("input")
        shown = "" if isinstance(given, dict) or e["type"] in ("extra_forbidden", "missing") else f" (got {given!r})"
        lines.append(f"  {key}: {msg}{shown}")
    return "\n".join(lines)


def _parse_value(text: str) -> Any:
    # YAML scalars: 1e-3 -> float, true -> bool, [0,1] -> list, null -> None.
    value = yaml.safe_load(text)
    if isinstance(value, str) and _looks_like_float(value):
        return float(value)
    return value


def _looks_like_float(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A copy of `data` with the command line's key.sub=value overrides set, in order."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.sub=value (for example train.lr=0.01)")
        key, raw = item.split("=", 1)
        try:
            data = with_values(data, {key.strip(): _parse_value(raw)})
        except ValueError as e:
            raise ConfigError(f"override {item!r}: {e}") from None
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections, got {type(data).__name__}")
        source = str(path)
    data = apply_overrides(data, list(overrides or []))
    return config_from_dict(data, source)


def config_from_dict(data: dict[str, Any], source: str = "dict") -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_error(err, source)) from None
