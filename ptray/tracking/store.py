"""MLflow records of a ptray experiment: a parent run per configuration, a child run per seed.

    experiment (= experiment.json "name")
      parent run per config_id   params: the config without the seed; metrics: `ConfigResults.summary`, the numbers
                                  of the tune table and the report: report/<m>/<stat> over every finished seed,
                                  report/<m>/<stat>_nondegenerate over those above the majority class, and the counts
        child run per seed        tag mlflow.parentRunId; params + train.seed; per-step loss/selection metrics, logged
                                  as the seed reports them; prompt_length at step 0 and at each resize (PBT over
                                  method.num_tokens); final report/selection metrics; status FAILED with
                                  ptray.failure_reason on failure; ptray.at_majority

One writer: `Tracker` is used from one process only, the Ray Tune driver (through
`ptray.distributed.mlflow_callback.MLflowSeedCallback`) or the CLI, so concurrent trials never race on the store
(SQLite locks under concurrent writers). `Tracker.sync` writes the same structure from the result.json files alone:
idempotent, it fills in what the callback missed (seeds that crashed before their first report). A finished folder is
(re)logged by `ptray.analysis.report.log_experiment`, which adds each config's figures. No Ray import here: the report
and the UI use this module without a cluster.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any

from ptray import stats
from ptray.layout import (ADAPTER_FILE, ARTIFACTS_DIR, DB_FILE, flatten, read_experiment_json, redact,
                          without_redacted)
from ptray.tracking.results import (PROMPT_LENGTH, ConfigResults, Experiment, SeedResult, load_config_seeds,
                                    load_experiment)

EXPERIMENT_KIND = "mlflow.experimentKind"
# MLflow refuses longer tag values (8000 in MLflow 3); a traceback's head says enough.
_MAX_TAG = 5000
_MAX_PARAM = 6000
# Counts of the primary metric's summary; the statistics are logged for every report metric.
_COUNTS = ("n_seeds", "n_ok", "n_failed", "failure_rate", "n_at_majority", "majority_rate", "n_nondegenerate")
_STATISTICS = stats.SUMMARY_STATISTICS + tuple(k + stats.NONDEGENERATE for k in stats.SUMMARY_STATISTICS)


def own_store_uri(experiment_dir: str | Path) -> str:
    """The URI of the folder's own SQLite store, DIR/mlflow.db."""
    return f"sqlite:///{Path(experiment_dir).resolve() / DB_FILE}"


def resolve_tracking_uri(experiment_dir: str | Path, config: dict | None = None) -> str:
    """Where an experiment is tracked: the config's tracking.uri, else $MLFLOW_TRACKING_URI, else DIR/mlflow.db."""
    uri = ((config or {}).get("tracking") or {}).get("uri") or os.environ.get("MLFLOW_TRACKING_URI")
    # experiment.json keeps no credentials (ptray.layout.redact): MLflow takes them from MLFLOW_TRACKING_USERNAME /
    # MLFLOW_TRACKING_PASSWORD instead.
    return without_redacted(uri) if uri else own_store_uri(experiment_dir)


def open_tracker(experiment_dir: str | Path, tracking_uri: str | None = None) -> "Tracker":
    """The Tracker of an experiment folder: at `tracking_uri`, else where the folder's config says."""
    meta = read_experiment_json(experiment_dir)
    uri = tracking_uri or resolve_tracking_uri(experiment_dir, meta.get("config"))
    return Tracker(uri, meta.get("name") or Path(experiment_dir).name, experiment_dir)


def _open_store(uri: str, experiment_dir: Path):
    """An MlflowClient on the store. The folder's own SQLite store holds nothing the folder does not (every run is
    logged again from the result.json files), so one that cannot be opened, such as the half-migrated file of a
    process killed while MLflow created it, is moved aside (kept, not deleted) and started afresh."""
    import sys

    from mlflow import MlflowClient

    db = experiment_dir / DB_FILE
    try:
        client = MlflowClient(uri)
        client.search_experiments(max_results=1)  # MLflow opens (and migrates) a SQLite store lazily
        return client
    except Exception as e:  # noqa: BLE001 - any failure to open it; a store not ptray's own is re-raised
        # A busy store (another process writing) is sound: only a file that cannot be read as a store is replaced.
        if uri != own_store_uri(experiment_dir) or not db.is_file() or "locked" in str(e) or "busy" in str(e):
            raise
        aside = db.with_name(f"{DB_FILE}.broken-{int(time.time())}")
        db.rename(aside)
        journal = db.with_name(f"{DB_FILE}-journal")
        if journal.is_file():
            journal.rename(aside.with_name(f"{aside.name}-journal"))
        # MLflow keeps one engine per URI and one store per URI for the process; both still point at the file moved
        # aside, and a cached store never creates the tables of the new file (a sweep that reopens its store).
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
        from mlflow.tracking._tracking_service.utils import _tracking_store_registry

        engine = getattr(SqlAlchemyStore, "_engine_map", {}).pop(uri, None)
        if engine is not None:
            engine.dispose()
        _tracking_store_registry._get_store_with_resolved_uri.cache_clear()
        print(f"warning: the MLflow store {db} could not be opened ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
              f"moved it to {aside.name} and rebuilding it from the folder's results", file=sys.stderr)
        return MlflowClient(uri)


def _follow_move(db: Path, experiment_id: str, old: str, new: str, folder: Path) -> None:
    """The folder's own store, in a folder that was moved: its artifact URIs still name the old place, where MLflow
    would write (outside the folder) and where the UI finds nothing. MLflow has no call to change them, so the columns
    that hold them are rewritten, with the runs' ptray.dir tags; the store is the folder's own and holds this
    experiment only."""
    import sqlite3
    from contextlib import closing

    if not old.endswith("/" + ARTIFACTS_DIR):  # a location ptray did not choose is left as it is
        return
    with closing(sqlite3.connect(db, timeout=30)) as con, con:
        con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?", (new, int(experiment_id)))
        con.execute("UPDATE runs SET artifact_uri = ? || substr(artifact_uri, ?) "
                    "WHERE experiment_id = ? AND substr(artifact_uri, 1, ?) = ?",
                    (new, len(old) + 1, int(experiment_id), len(old), old))
        con.execute("UPDATE tags SET value = ? WHERE key = 'ptray.dir' "
                    "AND run_uuid IN (SELECT run_uuid FROM runs WHERE experiment_id = ?)",
                    (str(folder), int(experiment_id)))


class Tracker:
    """Writes one experiment folder's runs to MLflow. Use from a single process (the Tune driver, or the CLI)."""

    def __init__(self, tracking_uri: str, experiment_name: str, experiment_dir: str | Path):
        self.uri = tracking_uri
        self.dir = Path(experiment_dir).resolve()
        self.client = _open_store(tracking_uri, self.dir)
        self.meta = read_experiment_json(self.dir)
        self.experiment_id = self._experiment(experiment_name)
        self._parents: dict[str, str] = {}
        self._children: dict[tuple[str, int], str] = {}
        # Seeds finished in this process, by config: they win over what is on disk (a result.json may not be
        # visible to the driver when workers write to their own node's disk).
        self._finals: dict[str, dict[int, SeedResult]] = {}

    # --- runs ------------------------------------------------------------------------------------------------
    def _experiment(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        # A local SQLite store would otherwise put artifacts in ./mlruns of whatever folder the command ran in.
        location = (self.dir / ARTIFACTS_DIR).as_uri() if self.uri.startswith("sqlite:") else None
        if exp is not None:
            if EXPERIMENT_KIND not in exp.tags:  # stores written before ptray set the kind
                self.client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND, "custom_model_development")
            own_store = self.uri == own_store_uri(self.dir)
            if own_store and exp.artifact_location != location:  # the folder was moved
                _follow_move(self.dir / DB_FILE, exp.experiment_id, exp.artifact_location, location, self.dir)
                self.client.set_experiment_tag(exp.experiment_id, "ptray.dir", str(self.dir))
            return exp.experiment_id
        # MLflow 3's UI opens an experiment of unknown kind on its GenAI/traces view; these are training runs.
        return self.client.create_experiment(name, artifact_location=location,
                                             tags={"ptray.dir": str(self.dir), EXPERIMENT_KIND: "custom_model_development"})

    def _key(self, **tags: str) -> str:
        """What a run is found by (its ptray.key tag), so a resumed sweep or a second log_experiment reuses it: a hash
        of the experiment's uid (two folders may share a name on one tracking server; the uid moves with the folder)
        and the run's role, config and seed. Folders written before experiment.json had a uid are known by their
        path. A hash, because MLflow's filter strings have no escape for a quote, which a folder's path may hold."""
        identity = self.meta.get("uid") or str(self.dir)
        return hashlib.sha1(json.dumps([identity, tags], sort_keys=True).encode()).hexdigest()

    def _find(self, **tags: str) -> str | None:
        runs = self.client.search_runs([self.experiment_id], f"tags.`ptray.key` = '{self._key(**tags)}'",
                                       max_results=1)
        return runs[0].info.run_id if runs else None

    def parent(self, config_id: str, label: str, overrides: dict) -> str:
        if config_id not in self._parents:
            run_id = self._find(role="parent", config_id=config_id)
            if run_id is None:
                tags = {"ptray.key": self._key(role="parent", config_id=config_id), "ptray.role": "parent",
                        "ptray.dir": str(self.dir), "ptray.config_id": config_id, "ptray.label": label,
                        "ptray.overrides": json.dumps(overrides, sort_keys=True)}
                run_id = self.client.create_run(self.experiment_id, tags=tags, run_name=run_name(overrides)).info.run_id
                self._add_params(run_id, self._params(overrides))
            self._parents[config_id] = run_id
        return self._parents[config_id]

    def child(self, config_id: str, seed: int, label: str, overrides: dict, trial_id: str | None = None) -> str:
        key = (config_id, seed)
        if key not in self._children:
            run_id = self._find(role="seed", config_id=config_id, seed=str(seed))
            if run_id is None:
                tags = {"mlflow.parentRunId": self.parent(config_id, label, overrides),
                        "ptray.key": self._key(role="seed", config_id=config_id, seed=str(seed)),
                        "ptray.role": "seed", "ptray.dir": str(self.dir), "ptray.config_id": config_id,
                        "ptray.seed": str(seed), "ptray.label": label}
                run_id = self.client.create_run(self.experiment_id, tags=tags,
                                                run_name=f"{run_name(overrides)} seed {seed}").info.run_id
                self._add_params(run_id, {**self._params(overrides), "train.seed": seed})
            self._children[key] = run_id
        if trial_id:
            self.client.set_tag(self._children[key], "ptray.trial_id", trial_id)
        return self._children[key]

    def _params(self, overrides: dict) -> dict:
        """Everything that defines a config but the seed: the base config with the searched values on top."""
        flat = flatten({k: v for k, v in (self.meta.get("config") or {}).items() if k not in ("tune", "tracking")})
        flat.update(overrides)
        flat.pop("train.seed", None)
        return flat

    def _add_params(self, run_id: str, params: dict) -> None:
        from mlflow.entities import Param

        # MLflow forbids changing a logged param; params learnt later (the full config of a result) only add keys.
        have = self.client.get_run(run_id).data.params
        new = [Param(k, _text(v, _MAX_PARAM)) for k, v in params.items() if k not in have]
        if new:
            self.client.log_batch(run_id, params=new)

    # --- metrics ---------------------------------------------------------------------------------------------
    def log_step(self, config_id: str, seed: int, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = _now_ms()
        run_id = self._children[(config_id, seed)]
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, int(step)) for k, v in metrics.items()])

    def finish_seed(self, config: ConfigResults, result: SeedResult) -> None:
        """Record a finished (or failed) seed on its child run: history, final metrics, status and reason."""
        from mlflow.entities import Metric

        run_id = self.child(config.config_id, result.seed, config.label, config.overrides, result.trial_id)
        if result.raw.get("config"):
            full = {k: v for k, v in result.raw["config"].items() if k not in ("tune", "tracking")}
            # seeds.*: the seed each source of variance had (sample, init, order), resolved where the config left it unset.
            seeds = {f"seeds.{k}": v for k, v in (result.raw.get("seeds") or {}).items()}
            self._add_params(run_id, {**flatten(full), **seeds, **config.overrides})
        now = _now_ms()
        # Per-step history from result.json: only the steps the live callback did not already log.
        points = []
        selection = dict.fromkeys(k for h in result.history for k in h.get("selection") or {})
        # The prompt length at the start and at each change, so the UI shows every seed's length over time.
        length = [PROMPT_LENGTH] if result.prompt_length is not None else []
        for key in ["loss", *(f"selection/{m}" for m in selection), *length]:
            have = {m.step for m in self.client.get_metric_history(run_id, key)}
            points += [Metric(key, v, now, int(s)) for s, v in result.curve(key) if int(s) not in have]
        finals = {f"report/{k}": v for k, v in result.report.items()}
        finals.update({f"best_selection/{k}": v for k, v in result.selection.items()})
        raw = result.raw
        finals.update({k: raw[k] for k in ("best_step", "steps", "trainable_params") if raw.get(k) is not None})
        finals["majority_baseline"] = result.majority_baseline
        if raw.get("throughput"):
            finals["train_examples_per_s"] = raw["throughput"]["train_examples_per_s"]
        finals.update({f"time/{k}": v for k, v in (raw.get("timings") or {}).items()})
        run = self.client.get_run(run_id).data
        points += [Metric(k, float(v), now, 0) for k, v in finals.items() if not _same(run.metrics.get(k), float(v))]
        if points:
            self.client.log_batch(run_id, metrics=points)

        failed = any(s is result for s in config.failed_seeds())
        tags = {"ptray.status": result.status, "ptray.failed": str(failed).lower()}
        if config.at_majority() is not None:
            tags["ptray.at_majority"] = str(any(s is result for s in config.majority_seeds())).lower()
        if failed:
            tags["ptray.failure_reason"] = _text(config.failure_reason(result), _MAX_TAG)
        if raw.get("warnings"):
            tags["ptray.warnings"] = _text("\n".join(raw["warnings"]), _MAX_TAG)
        # What the seed's numbers depend on besides config and seeds (ptray.core.train.environment): searchable in the UI.
        tags.update({f"ptray.env.{k}": str(v) for k, v in (raw.get("environment") or {}).items()})
        if raw.get("traceback"):
            tags["ptray.traceback"] = redact(raw["traceback"])[-_MAX_TAG:]  # the end of a traceback says what broke
        for k, v in tags.items():
            self.client.set_tag(run_id, k, v)
        # What an earlier outcome of this seed left (it failed, then a resume finished it) must not outlive it.
        for k in ("ptray.failure_reason", "ptray.warnings", "ptray.traceback"):
            if k in run.tags and k not in tags:
                self.client.delete_tag(run_id, k)
        if result.path is not None:
            self.client.log_artifact(run_id, str(result.path))
        status = {"ok": "FINISHED", "stopped": "KILLED"}.get(result.status, "FAILED")
        self.client.set_terminated(run_id, status)

    def update_parent(self, config: ConfigResults) -> None:
        """The config's summary (the tune table's and the report's numbers), logged at step = number of seeds so far."""
        from mlflow.entities import Metric

        run_id = self.parent(config.config_id, config.label, config.overrides)
        metrics: dict[str, float] = {}
        for name in dict.fromkeys([config.primary_metric, *(k for s in config.seeds for k in s.report)]):
            s = config.summary(name)
            metrics.update({f"report/{name}/{k}": s[k] for k in _STATISTICS})
            if name == config.primary_metric:
                metrics.update({k: s[k] for k in _COUNTS})
        latest = self.client.get_run(run_id).data.metrics
        step, now = len(config.seeds), _now_ms()
        changed = [Metric(k, float(v), now, step) for k, v in metrics.items() if not _same(latest.get(k), float(v))]
        if changed:
            self.client.log_batch(run_id, metrics=changed)

    def log_artifacts(self, config_id: str, files: list[Path], artifact_path: str | None = None) -> None:
        run_id = self._parents.get(config_id) or self._find(role="parent", config_id=config_id)
        for f in files:
            self.client.log_artifact(run_id, str(f), artifact_path)

    def seed_finished(self, config_id: str, label: str, overrides: dict, result: SeedResult) -> None:
        """A seed that just ended in this process (the callback): record it and refresh its parent."""
        self._finals.setdefault(config_id, {})[result.seed] = result
        config = self.config_results(config_id, label, overrides)
        self.finish_seed(config, next(s for s in config.seeds if s.seed == result.seed))
        self.update_parent(config)

    # --- whole folder ----------------------------------------------------------------------------------------
    def config_results(self, config_id: str, label: str, overrides: dict) -> ConfigResults:
        """The config's finished seeds: what is on disk, with those finished in this process on top. Seeds still
        to run are not counted yet (the closing sync counts the ones that never wrote a result as missing)."""
        on_disk = load_config_seeds(self.dir, config_id, [])
        seeds = {s.seed: s for s in on_disk} | self._finals.get(config_id, {})
        first = next((s.raw for s in seeds.values() if s.raw.get("config")), {})
        primary = first.get("primary_metric") or "accuracy"
        return ConfigResults(config_id, label, overrides, first.get("config") or self.meta.get("config") or {},
                             primary, [seeds[k] for k in sorted(seeds)])

    def sync(self) -> Experiment:
        """Every config and seed of the folder from its result.json files; parents end. Returns the folder's results.
        While another process's `ptray tune` runs the folder, its seeds without a result are `running`: their runs,
        and the parents of their configs, are left as they are (that sweep ends them)."""
        exp = load_experiment(self.dir)
        for c in exp.configs.values():
            for r in c.seeds:
                if r.status == "running":
                    continue
                known = (c.config_id, r.seed) in self._children or self._find(
                    role="seed", config_id=c.config_id, seed=str(r.seed))
                if r.status == "missing" and known:
                    continue  # the callback recorded why the trial died; "no result.json" would say less
                self.finish_seed(c, r)
            self.update_parent(c)
            if not any(r.status == "running" for r in c.seeds):
                self.client.set_terminated(self.parent(c.config_id, c.label, c.overrides), "FINISHED")
        self._log_best_adapter(exp)
        return exp

    def _log_best_adapter(self, exp: Experiment) -> None:
        """The adapter a user would take away: of the config with the best mean selection score over its seeds,
        the seed with the best selection score, with its result.json (the full config), as `best_adapter/` of that
        config's parent run (tagged ptray.best). Chosen on the selection split only, never the report split."""
        def score(r):  # as `ptray tune` ranks configs: a failed seed scores 0 (failing is not robust)
            value = r.selection.get(r.raw.get("primary_metric") or "accuracy", math.nan)
            return value if r.ok and math.isfinite(value) else 0.0

        ranked = [c for c in exp.configs.values() if any(r.ok for r in c.seeds)]
        if not ranked:
            return
        config = max(ranked, key=lambda c: sum(map(score, c.seeds)) / len(c.seeds))
        best = max(config.seeds, key=score)
        adapter = best.path.parent / ADAPTER_FILE if best.path is not None else None
        if adapter is None or not adapter.is_file():
            return
        chosen = f"{config.config_id}/seed{best.seed}"
        for c in exp.configs.values():
            run_id = self.parent(c.config_id, c.label, c.overrides)
            tags = self.client.get_run(run_id).data.tags
            if c is config and tags.get("ptray.best") != chosen:
                self.client.log_artifact(run_id, str(adapter), "best_adapter")
                self.client.log_artifact(run_id, str(best.path), "best_adapter")
                self.client.set_tag(run_id, "ptray.best", chosen)
            elif c is not config and "ptray.best" in tags:
                self.client.delete_tag(run_id, "ptray.best")


def run_name(overrides: dict) -> str:
    """A short run name for the MLflow UI's run list (the full label is the ptray.label tag): each searched value
    without its section, a `.name` key by its value alone (`residual, num_tokens=10`; a searched section by its keys)."""
    parts = [str(v) if k.endswith(".name") else f"{k.rsplit('.', 1)[-1]}={v}" for k, v in flatten(overrides).items()]
    return ", ".join(parts) or "base"


def _text(v: Any, limit: int) -> str:
    s = redact(v if isinstance(v, str) else json.dumps(v))
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _same(old: float | None, new: float) -> bool:
    return old is not None and (old == new or (math.isnan(old) and math.isnan(new)))


def _now_ms() -> int:
    return int(time.time() * 1000)
