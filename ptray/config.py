"""Typed, validated experiment configs: YAML file + ``key.sub=value`` overrides.

Every error names the key, the value given and what is allowed, and is raised before any model loads.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, Field, ValidationError, field_validator, model_validator

from ptray.config_base import ConfigError, Strict
from ptray.core.methods import DEFAULT_METHOD, METHODS, MethodConfig
from ptray.core.perturbations import PERTURBATIONS, PerturbationConfig
from ptray.core.tasks import TASKS, Task
from ptray.layout import redact, with_values

__all__ = ["ConfigError", "ExperimentConfig", "MethodConfig", "ModelConfig", "PerturbationConfig", "TaskConfig",
           "TrackingConfig", "TrainConfig", "TuneConfig", "apply_overrides", "config_from_dict", "default_data_dir",
           "load_config"]


def default_data_dir(collection: str = "superglue") -> str:
    """Where a task's collection of the shared data is by default. The FewGLUE folder sits beside the project at
    ../shared/data/superglue; PTRAY_DATA_DIR points at it elsewhere. The other collections (sentence, superglue-full)
    are its siblings, so one variable finds them all."""
    fewglue = Path(os.environ.get("PTRAY_DATA_DIR", "../shared/data/superglue"))
    return str(fewglue if collection == "superglue" else fewglue.parent / collection)


def _seed_range(v: int) -> int:
    # numpy's legacy seeding and several libraries' take 32 bits; a negative seed fails in numpy.
    if not 0 <= v < 2**32:
        raise ValueError("a seed is an integer from 0 to 2**32 - 1 (4294967295); choose one in that range")
    return v


Seed = Annotated[int, AfterValidator(_seed_range)]


class TaskConfig(Strict):
    name: str = Field("rte", description=f"The task: {', '.join(TASKS)}.")
    # data_dir, selection_split and report_split default to the task's own (its Task class: the folder of its
    # collection, its split names); _task_defaults fills them in.
    data_dir: str = Field(description="Folder of the task's collection: a task reads <data_dir>/<Task>/<split>.jsonl. "
                                      "Default: the task's collection of the shared data, $PTRAY_DATA_DIR (FewGLUE; "
                                      "default ../shared/data/superglue) or its sibling folder (sentence, "
                                      "superglue-full).")
    train_split: str = Field("train", description="The split training examples come from.")
    selection_split: str = Field(description="The split the checkpoint (and early stopping) is chosen on. Default: "
                                             "the task's (dev32 for FewGLUE tasks).")
    report_split: str = Field(description="The split the reported metrics are computed on. Default: the task's (val "
                                          "for FewGLUE tasks).")
    max_seq_length: int = Field(256, ge=8, description="Tokens of the input (without the prompt) a row is cut to.")
    max_train_examples: int | None = Field(None, ge=1, description="Use the first N training examples (quick runs, "
                                                                   "tests); null: the whole split.")
    max_eval_examples: int | None = Field(None, ge=1, description="Use the first N selection and report examples "
                                                                  "(with k_shot: report examples); null: all.")
    # The few-shot protocol of LM-BFF (Gao et al. 2021).
    k_shot: int | None = Field(None, ge=1, description="Few-shot protocol: K training examples per class drawn from "
                                                       "train_split and K selection examples per class from "
                                                       "selection_split (disjoint where that is the same split); "
                                                       "null: the whole splits.")
    sample_seed: Seed | None = Field(None, description="Seed of the k-shot sample. Unset: train.seed.")
    data_files: dict[str, str] | None = Field(None, description="Task custom: the file of each split, {split: "
                                                                "path} (jsonl, csv or tsv by extension).")
    text_fields: list[str] | None = Field(None, description="Tasks custom and hub: the one or two text columns.")
    label_column: str = Field("label", description="Tasks custom and hub: the label column.")
    labels: list[str] | None = Field(None, description="Tasks custom and hub: the label values, in option order.")
    label_words: list[str] | None = Field(None, description="Tasks custom and hub: what an LM says for each label "
                                                            "(default: the labels).")
    dataset: str | None = Field(None, description="Task hub: the dataset, as datasets.load_dataset(dataset, subset) "
                                                  "takes it; its splits are the hub's split names.")
    subset: str | None = Field(None, description="Task hub: the dataset's subset.")

    @model_validator(mode="before")
    @classmethod
    def _task_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        return {**cls.task_defaults(str(data.get("name", "rte"))), **data}

    @staticmethod
    def task_defaults(name: str) -> dict[str, str]:
        """The keys whose default is the task's own: its collection's folder and its split names. An unknown name
        takes the base defaults, so that its one error is the name's (see _known_task)."""
        task = TASKS.get(name.lower(), Task)
        return {"data_dir": default_data_dir(task.collection), **task.default_splits}

    @field_validator("name")
    @classmethod
    def _known_task(cls, v: str) -> str:
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


class ModelConfig(Strict):
    name: str = Field("minilm", description="The frozen backbone: an offline alias (minilm, smollm2-135m), a local "
                                            "folder, or a hub name where a network exists.")
    family: Literal["auto", "encoder", "causal", "seq2seq"] = Field(
        "auto", description="How the backbone scores options: encoder (a head over the pooled sequence), causal or "
                            "seq2seq (the LM's label words); auto detects it from the model's config when it loads.")
    dtype: Literal["fp32", "bf16"] = Field("fp32", description="The backbone's weights and activations.")
    dropout: bool = Field(False, description="Keep the backbone's dropout on while training (frozen backbones run "
                                             "in eval mode otherwise).")
    pooling: Literal["mean", "cls"] = Field("mean", description="Encoders: how the classification head reads the "
                                                                "sequence.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where training runs; auto: cuda when torch "
                                                                       "sees a GPU, else cpu.")


# Training length when neither train.epochs nor train.max_steps is set.
DEFAULT_EPOCHS = 10


class TrainConfig(Strict):
    epochs: float | None = Field(None, gt=0, description="Passes over the training set; train.max_steps wins when "
                                                         "set. Unset with max_steps unset: 10.")
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps; null: from train.epochs.")
    batch_size: int = Field(16, ge=1, description="Training examples per micro-batch (per worker).")
    eval_batch_size: int = Field(64, ge=1, description="Examples per evaluation batch.")
    group_by_length: bool = Field(True, description="Batch training examples of similar length (seeded and "
                                                    "jittered, so batches still vary): less padding.")
    pad_to_multiple_of: int | None = Field(
        None, ge=1, description="Round each batch's width up to a multiple of this (at most task.max_seq_length): a "
                                "GPU then meets a few shapes and reuses its kernels and attention plans. Unset: 64 on "
                                "a GPU, 1 (the longest row, no rounding) on a CPU, where every padded position costs.")
    read_loss_every: int | None = Field(
        None, ge=1, description="Read the training losses back from the device every N steps (and at each "
                                "evaluation) and check them for divergence then: between reads a GPU runs ahead of "
                                "the host instead of waiting for each step's loss. A diverged seed is still recorded "
                                "at the step its loss first went bad (it trains on, failed, until the read). Unset: "
                                "10 on a GPU, 1 on a CPU, where a read costs nothing.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    optimizer: Literal["adamw", "adafactor"] = Field("adamw", description="Optimizer of the trainable parameters.")
    lr: float = Field(0.03, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="Weight decay of the trainable parameters.")
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        "linear", description="Learning-rate schedule over the training steps.")
    warmup_ratio: float = Field(0.06, ge=0, lt=1, description="Fraction of the steps the learning rate warms up over.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping norm; null: no clipping.")
    eval_every: int = Field(20, ge=1, description="Evaluate on the selection split every N steps (and at the end).")
    early_stopping_patience: int | None = Field(None, ge=1, description="Stop after this many evaluations without "
                                                                        "improvement of the selection metric; null: "
                                                                        "never.")
    zero_stage: Literal[0, 1, 2, 3] = Field(0, description="DeepSpeed ZeRO stage (3 partitions the frozen weights).")
    max_loss: float = Field(100.0, gt=0, description="A loss above this (or NaN/inf) ends the seed as failed: "
                                                     "diverged.")
    seed: Seed = Field(0, description="The seed: of every source of seed variance whose own seed is unset.")
    # Sources of seed variance with their own seeds, so one can vary while the others hold (Dodge et al. 2020 separate
    # initialisation and data order); task.sample_seed is the third source. See ExperimentConfig.source_seeds.
    init_seed: Seed | None = Field(None, description="Seed of the initialisation: the prompt and the head. Unset: "
                                                     "train.seed.")
    order_seed: Seed | None = Field(None, description="Seed of the data order and the noise of training (dropout, "
                                                      "Gumbel draws, PTP perturbations). Unset: train.seed.")
    seed_pack: int = Field(1, ge=1, description="Train this many seeds of a config together in one process, over "
                                                "one loaded frozen backbone (ptray tune groups seeds by it); each "
                                                "keeps its own prompt, optimizer state, data order, random stream "
                                                "and result, and gets the numbers it would alone.")

    @model_validator(mode="after")
    def _length(self) -> "TrainConfig":
        if self.epochs is None and self.max_steps is None:
            self.epochs = DEFAULT_EPOCHS
        return self

    def pad_multiple(self, device_type: str) -> int:
        """train.pad_to_multiple_of, resolved for a device type ("cuda", "cpu", ...)."""
        if self.pad_to_multiple_of is not None:
            return self.pad_to_multiple_of
        return 64 if device_type == "cuda" else 1

    def read_every(self, device_type: str) -> int:
        """train.read_loss_every, resolved for a device type."""
        if self.read_loss_every is not None:
            return self.read_loss_every
        return 10 if device_type == "cuda" else 1


class TrackingConfig(Strict):
    """The `tracking:` section: where ptray tune and ptray report log to MLflow."""

    uri: str | None = Field(None, min_length=1,
                            description="MLflow tracking URI (a server http://host:port, sqlite:///file.db, ...). "
                                        "Unset: $MLFLOW_TRACKING_URI, else the experiment folder's mlflow.db.")


# Search-space entries of `tune.search`: a list is a grid; otherwise one of these forms.
SEARCH_KINDS = {
    "grid": "a list of values, each run as its own config",
    "choice": "a list of values, sampled",
    "uniform": "[low, high], sampled uniformly",
    "loguniform": "[low, high], sampled uniformly in log space (low > 0)",
    "randint": "[low, high], an integer sampled from low..high inclusive",
}


class TuneResources(Strict):
    """What one trial (one config on one seed) gets: 1 worker trains in the trial's own process; more run a Ray
    Train TorchTrainer of that many DeepSpeed workers."""

    workers: int = Field(1, ge=1, description="Training workers of a trial: 1 trains in the trial's process; more "
                                              "run a Ray Train TorchTrainer of that many DeepSpeed workers.")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs Ray reserves per worker.")
    gpus_per_worker: float = Field(0.0, ge=0, description="GPUs Ray reserves per worker (fractions share a GPU).")


class TuneScheduler(Strict):
    """fifo runs every trial to the end; asha stops weak trials early; pbt / pb2 evolve the continuous knobs of a
    population (one population per seed). pbt also evolves the prompt length (method.num_tokens as randint or choice):
    a member that takes over another's checkpoint resizes its prompt to its own length, keeping the kept tokens and
    their optimizer moments, appending fresh tokens at the end or dropping the last ones (ZeRO stage 0, one worker per
    trial, AdamW; not dynamic prompts). Intervals are in training steps."""

    name: Literal["fifo", "asha", "pbt", "pb2"] = Field(
        "fifo", description="fifo runs every trial to the end; asha stops weak trials early; pbt / pb2 evolve the "
                            "sampled knobs of a population (one per seed). A bare name is accepted for the section.")
    grace_period: int | None = Field(None, ge=1, description="asha: steps before a trial can be stopped. Unset: "
                                                             "train.eval_every.")
    reduction_factor: float = Field(2.0, gt=1, description="asha: 1/reduction_factor of the trials go on at each "
                                                           "rung.")
    max_t: int | None = Field(None, ge=1, description="asha: the last rung, where every trial stops. Unset: none (a "
                                                      "trial ends with its training).")
    perturbation_interval: int | None = Field(None, ge=1, description="pbt, pb2: steps between exploits. Unset: 2 * "
                                                                      "train.eval_every.")
    quantile_fraction: float = Field(0.25, gt=0, le=0.5, description="pbt, pb2: the bottom fraction that copies the "
                                                                     "top fraction.")
    resample_probability: float = Field(0.25, ge=0, le=1, description="pbt: probability of resampling a knob from "
                                                                      "its search entry instead of perturbing it.")
    # Without it, exploits depend on which trial reports first.
    synch: bool = Field(False, description="pbt, pb2: every member waits at each perturbation.")

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

    def resolved_grace_period(self, eval_every: int) -> int:
        return self.grace_period or eval_every

    def resolved_interval(self, eval_every: int) -> int:
        return self.perturbation_interval or 2 * eval_every


class TuneConfirm(Strict):
    """Re-run the top_k configs of the search (and the baseline) on fresh seeds the search never saw."""

    top_k: int = Field(1, ge=1, description="How many of the search's best configs are re-run.")
    seeds: list[Seed] | None = Field(None, description="The fresh seeds. Unset: num_seeds seeds after the search's "
                                                       "largest.")
    num_seeds: int | None = Field(None, ge=1, description="How many fresh seeds when seeds is unset. Unset: 5.")


class TuneConfig(Strict):
    """The `tune:` section: configs x seeds for `ptray tune`."""

    name: str | None = Field(None, description="The experiment's name (in MLflow and the reports). Unset: the "
                                               "config file's name.")
    # Every config runs on every seed: comparisons are paired.
    seeds: list[Seed] | None = Field(None, description="The seeds every config runs on. Unset: 0..num_seeds-1.")
    num_seeds: int | None = Field(None, ge=1, description="How many seeds when seeds is unset. Unset: 5.")
    search: dict[str, Any] = Field(
        default_factory=dict,
        description="Dotted config key -> values: a list (a grid), or one of {" + "; ".join(
            f"{k}: {d}" for k, d in SEARCH_KINDS.items()) + "}, e.g. {train.lr: {loguniform: [0.001, 0.3]}}.")
    searcher: Literal["grid", "random", "optuna"] | None = Field(
        None, description="grid: every combination; random / optuna: num_samples configs. Unset: grid when every "
                          "search entry is a list, else random.")
    num_samples: int = Field(1, ge=1, description="Configs drawn by random / optuna; the population size under pbt "
                                                  "/ pb2.")
    scheduler: TuneScheduler = Field(default_factory=TuneScheduler, description="Early stopping or population-based "
                                                                                "training of the trials.")
    confirm: TuneConfirm | None = Field(None, description="Re-run the best configs on fresh seeds; null: no "
                                                          "confirmation round.")
    baseline: dict[str, Any] | None = Field(None, description="The searched values of the config the others are "
                                                              "compared with, e.g. {method.name: vanilla}.")
    resources: TuneResources = Field(default_factory=TuneResources, description="What one trial gets.")
    max_failures: int = Field(1, ge=0, description="Retries of a crashed trial before its seed is recorded as "
                                                   "failed.")
    max_concurrent: int | None = Field(None, ge=1, description="Most trials at once. Unset: as many as the cluster's "
                                                               "resources hold. PBT / PB2 run every member of a "
                                                               "population at once (taking turns), so at least "
                                                               "tune.num_samples.")
    storage_path: str | None = Field(None, description="Ray Tune storage: a folder, NFS or s3://... Unset: the "
                                                       "experiment folder's ray/.")
    keep_checkpoints: int = Field(4, ge=2, description="Checkpoints Ray Tune keeps per trial.")
    reuse_actors: bool = Field(True, description="Start a trial in the process of an ended one with the same "
                                                 "resources (Ray Tune's reuse_actors), which skips the process start "
                                                 "and the imports of torch, transformers and DeepSpeed. false: a "
                                                 "fresh process per trial, as always with resources.workers > 1.")

    @field_validator("search")
    @classmethod
    def _search(cls, v: dict[str, Any]) -> dict[str, Any]:
        return {key: _search_entry(key, value) for key, value in v.items()}

    @field_validator("storage_path")
    @classmethod
    def _no_credentials(cls, v: str | None) -> str | None:
        if v is not None and redact(v) != v:
            # Ray keeps its storage path in the experiment's saved state, where ptray cannot redact it.
            raise ValueError("holds credentials (user:password@); Ray would save them with the experiment's state. "
                             "Write the path without them and give them through the environment "
                             "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or the node's instance profile)")
        return v

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


class ExperimentConfig(Strict):
    # Built when a config is: its defaults come from the task registry and the environment.
    task: TaskConfig = Field(default_factory=TaskConfig, description="What is learned, and from which data.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="The frozen backbone.")
    method: MethodConfig = Field(default_factory=METHODS[DEFAULT_METHOD],
                                 description=f"The prompt method, by name: {', '.join(sorted(METHODS))}; the other keys are "
                                             f"the method's own. Default: {DEFAULT_METHOD}.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="The training run of one seed.")
    perturbation: PerturbationConfig | None = Field(
        None, description=f"A PTP regularizer (Chen et al., EMNLP 2023) by space and kind: "
                          f"{', '.join(sorted(PERTURBATIONS))}; the other keys are its own. null: none.")
    # Sections read by other layers (ptray tune, tracking); the training core ignores them.
    tune: TuneConfig | None = Field(None, description="Configs x seeds for ptray tune; null: ptray tune refuses the "
                                                      "config.")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="Where runs are logged.")

    @field_validator("method", mode="before")
    @classmethod
    def _method(cls, v: Any) -> MethodConfig:
        if isinstance(v, MethodConfig):
            v = v.model_dump()
        if not isinstance(v, dict):
            raise ValueError(f"must be a mapping with a 'name' key, got {v!r}")
        name = str(v.get("name", DEFAULT_METHOD)).lower()
        if name not in METHODS:
            raise ValueError(f"unknown method {name!r}; allowed: {', '.join(sorted(METHODS))}")
        return METHODS[name].model_validate({**v, "name": name})

    @field_validator("perturbation", mode="before")
    @classmethod
    def _perturbation(cls, v: Any) -> PerturbationConfig | None:
        if v is None or isinstance(v, PerturbationConfig):
            return v
        if not isinstance(v, dict) or "space" not in v or "kind" not in v:
            raise ValueError(f"must be a mapping with 'space' and 'kind' keys (allowed pairs: {', '.join(sorted(PERTURBATIONS))})")
        key = f"{str(v['space']).lower()}/{str(v['kind']).lower()}"
        if key not in PERTURBATIONS:
            raise ValueError(f"unknown space/kind {key!r}; allowed: {', '.join(sorted(PERTURBATIONS))}")
        return PERTURBATIONS[key].model_validate(v)

    @field_validator("perturbation")
    @classmethod
    def _perturbed_prompt_exists(cls, v: PerturbationConfig | None, info) -> PerturbationConfig | None:
        method = info.data.get("method")
        if getattr(v, "prompt", False) and method is not None and method.prompt_tokens() == 0:
            raise ValueError(
                f"perturbation.prompt is true, but method {method.name} puts no prompt vectors into the input "
                f"sequence; set perturbation.prompt=false to perturb the input only"
            )
        return v

    @field_validator("tracking", mode="before")
    @classmethod
    def _no_tracking(cls, v: Any) -> Any:
        # Configs written before the section was typed hold tracking: null.
        return {} if v is None else v

    @model_validator(mode="after")
    def _packable(self) -> "ExperimentConfig":
        if self.train.seed_pack > 1:
            reason = self.unpackable()
            if reason:
                raise ValueError(f"train.seed_pack {self.train.seed_pack}: {reason}")
        return self

    def unpackable(self) -> str | None:
        """Why this config's seeds cannot be packed (ptray.core.packing), with the fix; None when they can."""
        reason = self.method.unpackable()
        if reason:
            return reason
        if self.task.k_shot is not None and self.task.sample_seed is None:
            return (f"task.k_shot {self.task.k_shot} with task.sample_seed unset draws each seed its own sample, but a "
                    f"pack trains its seeds on one; set task.sample_seed (the sample held fixed across seeds) or "
                    f"train.seed_pack=1")
        if self.train.zero_stage != 0 and self.train.max_grad_norm is not None:
            return (f"train.zero_stage {self.train.zero_stage} with train.max_grad_norm {self.train.max_grad_norm}: "
                    f"under ZeRO the gradients live in DeepSpeed's optimizer, which clips everything it holds by one "
                    f"norm, so a pack's seeds would be clipped together, not each by its own; set "
                    f"train.max_grad_norm=null, train.zero_stage=0 or train.seed_pack=1")
        return None

    def positions_problem(self, limit: int | None) -> str | None:
        """Why the prompt and the input overflow the model's `limit` positions (None: relative positions), with the
        fix; None when they fit."""
        prompt_len, seq = self.method.added_positions(), self.task.max_seq_length
        if limit is None or prompt_len + seq <= limit:
            return None
        return (f"method prompt length {prompt_len} + task.max_seq_length {seq} = {prompt_len + seq} exceeds the "
                f"{limit} positions of model {self.model.name!r}; lower task.max_seq_length to {limit - prompt_len} "
                f"or less")

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

    def derived(self, config_name: str | None = None) -> dict[str, tuple[Any, str]]:
        """Keys whose value follows from other keys where the config leaves them unset: dotted key -> (the value,
        where it comes from). The consumers read them through the same functions (source_seeds, TuneConfig's and
        TuneScheduler's resolved_*); `ptray config` and the training log show them. config_name: the config file's
        stem, the default tune.name."""
        t, tr, seed = self.task, self.train, self.train.seed
        out: dict[str, tuple[Any, str]] = {}
        own = TaskConfig(name=t.name)  # the task's own defaults, resolved as they are for this config
        collection = TASKS[t.name].collection
        where = {"data_dir": f"the {collection} collection of the shared data ($PTRAY_DATA_DIR, default "
                             f"../shared/data/superglue, or its sibling folder)",
                 "selection_split": f"task {t.name}'s default", "report_split": f"task {t.name}'s default"}
        out.update({f"task.{k}": (getattr(t, k), w) for k, w in where.items() if getattr(t, k) == getattr(own, k)})
        seeds = self.source_seeds()
        if t.sample_seed is None and t.k_shot is not None:
            out["task.sample_seed"] = (seeds["sample"], "train.seed")
        if tr.max_steps is None and tr.epochs == DEFAULT_EPOCHS:
            out["train.epochs"] = (tr.epochs, "train.epochs and train.max_steps unset")
        for key, source in (("init_seed", "init"), ("order_seed", "order")):
            if getattr(tr, key) is None:
                out[f"train.{key}"] = (seeds[source], "train.seed")
        u = self.tune
        if u is None:
            return out
        if u.name is None and config_name:
            out["tune.name"] = (config_name, "the config file's name")
        if u.seeds is None:
            out["tune.seeds"] = (u.seed_list(), "tune.num_seeds" if u.num_seeds else "5 seeds by default")
        if u.searcher is None:
            out["tune.searcher"] = (u.resolved_searcher(), "grid when every search entry is a list, else random")
        s = u.scheduler
        if s.name == "asha" and s.grace_period is None:
            out["tune.scheduler.grace_period"] = (s.resolved_grace_period(tr.eval_every), "train.eval_every")
        if s.name in ("pbt", "pb2") and s.perturbation_interval is None:
            out["tune.scheduler.perturbation_interval"] = (s.resolved_interval(tr.eval_every), "2 * train.eval_every")
        if u.confirm is not None and u.confirm.seeds is None:
            out["tune.confirm.seeds"] = (u.confirm_seeds(), "the seeds after the search's largest")
        return out

    def to_dict(self) -> dict[str, Any]:
        # serialize_as_any: method and perturbation hold subclasses whose own fields would otherwise be dropped.
        return self.model_dump(mode="json", serialize_as_any=True)


# Pydantic's words for an error, where they do not say the fix.
_FIXES = {"finite_number": "inf and NaN are not values here; give a finite number"}


def _format_error(err: ValidationError, source: str) -> str:
    problems = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-"))
        msg = _FIXES.get(e["type"], e["msg"].removeprefix("Value error, "))
        given = e.get("input")
        shown = "" if isinstance(given, dict) or e["type"] in ("unknown_key", "missing") else f" (got {given!r})"
        shown = redact(shown)  # a bad value may hold a credential: it is not echoed to the console
        problems.append(f"{key}: {msg}{shown}" if key else f"{msg}{shown}")
    # One problem: one line; several: one per line under the heading.
    if len(problems) == 1:
        return f"invalid config ({source}): {problems[0]}"
    return "\n  ".join([f"invalid config ({source}):", *problems])


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping: plain YAML keeps the last one silently, so a
    config would run with a value its author did not see."""


def _unique_keys(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, yaml.Mark] = {}
    for key_node, _ in node.value:
        if isinstance(key_node, yaml.ScalarNode):
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice in one section (first on line {seen[key].line + 1}); "
                                "keep one", key_node.start_mark)
            seen[key] = key_node.start_mark
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_keys)


def read_yaml(path: Path) -> Any:
    """A YAML file's content; a file that is not UTF-8 or not YAML is one ConfigError naming the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); re-save it as UTF-8") from None
    try:
        return yaml.load(text, _UniqueKeyLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML: {_yaml_problem(e)}") from None


def _yaml_problem(e: yaml.MarkedYAMLError) -> str:
    """The parser's own words, on one line: what it was reading and what it found."""
    return ", ".join(x for x in (e.context, e.problem) if x)


def _parse_value(text: str) -> Any:
    # YAML scalars: 1e-3 -> float, true -> bool, [0,1] -> list, null -> None.
    value = yaml.load(text, _UniqueKeyLoader)
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
            value = _parse_value(raw)
        except yaml.MarkedYAMLError as e:
            raise ConfigError(f"override {item!r}: the value {raw!r} is not valid YAML ({_yaml_problem(e)}); fix it, "
                              "or quote it to pass it as text") from None
        try:
            data = with_values(data, {key.strip(): value})
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
        data = read_yaml(path)
        if data is None:
            raise ConfigError(f"config file {str(path)!r} holds no config (it is empty, or comments only); write its "
                              "sections (task:, model:, method:, train:, ...) as the files in experiments/ do")
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
