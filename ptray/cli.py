"""`ptray` command line. Heavy libraries are imported inside the commands, so `--help` stays instant."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _offline_defaults() -> None:
    # Nothing reaches a hub unless the user says so: offline aliases and local data work without a network.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


def cmd_train(args) -> int:
    import logging

    from ptray.config import load_config
    from ptray.core.train import prepare, train
    from ptray.layout import EXPERIMENT_FILE, RESULT_FILE, check_output_dir

    overrides = list(args.overrides)
    if args.seed is not None:
        overrides.append(f"train.seed={args.seed}")
    cfg = load_config(args.config, overrides)
    # Not outputs/<config>/: that is where `ptray tune` keeps the experiment of the same config.
    out = Path(args.output or f"outputs/train/{Path(args.config).stem}/seed{cfg.train.seed}")
    experiment = next((d for d in [out, *out.parents] if (d / EXPERIMENT_FILE).is_file()), None)
    if experiment is not None:
        raise SystemExit(f"error: {out} lies inside the tune experiment {experiment}; give `ptray train` another "
                         "--output (its runs are filed by `ptray tune` itself)")
    existing = out / RESULT_FILE
    if existing.exists() and not args.overwrite:
        raise SystemExit(
            f"error: {existing} already holds a finished result; pass --overwrite to replace it or --output to write elsewhere"
        )
    check_output_dir(out)
    prepared = prepare(cfg)
    # ptray's own log lines (the resolved config at the start) on stderr, beside the progress bar.
    logging.basicConfig(format="%(message)s")
    logging.getLogger("ptray").setLevel(logging.INFO)
    result = train(cfg, out, prepared=prepared)
    _print_result(result, out)
    return 0 if result["status"] == "ok" else 1


def cmd_config(args) -> int:
    from ptray.config import load_config
    from ptray.config_view import as_json, as_text, markdown

    if args.markdown:
        print(markdown())
        return 0
    overrides = list(args.overrides)
    # `ptray config key=value ...` without a file: the positional took the first override.
    if args.config is not None and "=" in args.config and not Path(args.config).is_file():
        overrides.insert(0, args.config)
        args.config = None
    cfg = load_config(args.config, overrides)
    name = Path(args.config).stem if args.config else None
    if args.json:
        print(as_json(cfg, name))
        return 0
    print(f"# {' '.join([args.config or 'defaults', *overrides])}, resolved. Above each key its description; after "
          f"it where a derived value comes from, or the default where the value differs.")
    print(as_text(cfg, name))
    return 0


def _print_result(result: dict, out: Path) -> None:
    from ptray.layout import RESULT_FILE

    if result["status"] != "ok":
        print(f"seed {result['seed']}: FAILED: {result['reason']}  ({out / RESULT_FILE})")
        return
    sel = ", ".join(f"{k}={v:.4f}" for k, v in (result["selection_metrics"] or {}).items())
    rep = ", ".join(f"{k}={v:.4f}" for k, v in result["report_metrics"].items())
    print(f"seed {result['seed']}: best step {result['best_step']}/{result['steps']}  "
          f"{result['selection_split']}: {sel}  |  {result['report_split']}: {rep}")
    print(f"trainable params {result['trainable_params']:,}  total {result['timings']['total_s']:.1f}s  -> {out}")


def cmd_report(args) -> int:
    from ptray.tracking.results import load_experiment

    try:
        load_experiment(args.dir).baseline(args.baseline)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from ptray.analysis.report import TrackingError, write_report
    from ptray.tracking.summary import print_summary

    try:
        md = write_report(args.dir, baseline=args.baseline, log_mlflow=not args.no_mlflow)
    except TrackingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print_summary(args.dir)
    print(f"report: {md}")
    return 0


def cmd_ui(args) -> int:
    from ptray.layout import DB_FILE, read_experiment_json
    from ptray.tracking.store import resolve_tracking_uri
    from ptray.tracking.ui import port_free, serve

    try:
        meta = read_experiment_json(args.dir)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    uri = resolve_tracking_uri(args.dir, meta.get("config"))
    if uri.startswith(("http://", "https://", "databricks")):
        print(f"{meta.get('name')} is tracked on {uri}: open that server's UI")
        return 0
    if uri.startswith("sqlite:") and not (Path(args.dir) / DB_FILE).is_file():
        print(f"error: no MLflow store at {Path(args.dir) / DB_FILE}; `ptray report {args.dir}` logs the folder",
              file=sys.stderr)
        return 2
    if not port_free("127.0.0.1", args.port):
        print(f"error: port {args.port} on 127.0.0.1 is already in use; pass --port with a free one",
              file=sys.stderr)
        return 2
    import mlflow

    experiment = mlflow.MlflowClient(uri).get_experiment_by_name(meta.get("name"))
    page = f"#/experiments/{experiment.experiment_id}" if experiment else ""
    print(f"MLflow UI for {meta.get('name')} ({uri}): http://127.0.0.1:{args.port}/{page}  (Ctrl-C stops it)",
          flush=True)
    return serve(uri, "127.0.0.1", args.port)


def cmd_landscape(args) -> int:
    from ptray.analysis.landscape import check_args

    try:
        check_args(Path(args.result_dir), args.directions, args.points, args.span, args.radius, args.split)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from ptray.analysis.landscape import landscape

    out = landscape(args.result_dir, args.directions, args.points, args.span, args.radius, args.split,
                    args.max_examples, args.seed, args.output, args.data_dir)
    print(f"loss at the trained prompt {out['center_loss']:.4f}; mean increase within radius {out['radius']}: "
          f"{out['mean_loss_increase']:.4f}  -> {out['png']}")
    return 0


def cmd_export(args) -> int:
    from ptray.core.export import ExportError, check_export

    try:
        check_export(args.run_dir, args.format, args.out, args.overwrite)
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from ptray.core.export import export

    try:
        info = export(args.run_dir, args.format, args.out, args.overwrite)
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{info['method']} prompt of seed {info['run']['seed']} as PEFT {info['peft_type']} "
          f"({info['task_type']}, {info['num_virtual_tokens']} virtual tokens) -> {args.out}")
    print(f"load: PeftModel.from_pretrained({info['auto_class']}.from_pretrained(...), {str(args.out)!r}); "
          f"scoring as ptray: {Path(args.out) / 'README.md'}")
    return 0


def cmd_tune(args) -> int:
    from ptray.distributed.runner import run_experiment

    return run_experiment(args.config, args.output, args.overrides, args.address, args.resume, args.verbose,
                          args.trust)


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port; give a number from 1 to 65535")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ptray", description="Seed-robust prompt tuning of frozen language models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one (config, seed) in this process")
    p.add_argument("config", help="experiment YAML (see experiments/)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. train.lr=0.01 method.num_tokens=10")
    p.add_argument("--seed", type=int, help="overrides train.seed")
    p.add_argument("--output", help="output folder (default outputs/train/<config>/seed<N>)")
    p.add_argument("--overwrite", action="store_true", help="replace a finished result in the output folder")
    p.set_defaults(func=cmd_train)

    what = "print a config with every key resolved: value, default, where a derived value comes from, description"
    p = sub.add_parser("config", help=what, description=what + "; nothing loads, so bad keys show here in a second")
    p.add_argument("config", nargs="?", help="experiment YAML (default: the defaults alone)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, as ptray train takes them")
    p.add_argument("--json", action="store_true", help="as JSON: {key: {value, default, derived_from, description}}")
    p.add_argument("--markdown", action="store_true", help="the reference of every key of every section, method and "
                                                           "perturbation instead (docs/config.md)")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("tune", help="run configs x seeds on Ray Tune (local Ray, or a cluster with --address)")
    p.add_argument("config", nargs="?", help="experiment YAML with a tune: section (see experiments/)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides of the config, e.g. tune.num_seeds=3")
    p.add_argument("--output", help="experiment folder (default outputs/<config>)")
    p.add_argument("--address", help="Ray cluster to join (host:port or ray://host:port; default $RAY_ADDRESS, "
                                     "else a local Ray in this process)")
    p.add_argument("--resume", metavar="DIR", help="continue the interrupted experiment in DIR")
    p.add_argument("--trust", action="store_true",
                   help="let --resume load Tune's saved state from DIR: Python pickles, which run any code they hold; "
                        "only for a folder you trust")
    p.add_argument("--verbose", action="store_true",
                   help="show Ray's own status tables and the trials' log lines (by default in DIR/logs/ and Ray's "
                        "session logs) instead of ptray's live view")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("report", help="stability report of an experiment folder: tables and figures in DIR/report")
    p.add_argument("dir", help="experiment folder (written by ptray tune; holds experiment.json)")
    p.add_argument("--baseline", help="config id or label to compare against (default: the vanilla config)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log the runs and the report to MLflow")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("ui", help="start the MLflow UI for an experiment folder's store on 127.0.0.1")
    p.add_argument("dir", help="experiment folder")
    p.add_argument("--port", type=_port, default=5000, help="port on 127.0.0.1 (1-65535; default 5000)")
    p.set_defaults(func=cmd_ui)

    p = sub.add_parser("landscape", help="loss surface around a trained prompt (PNG + JSON in RESULT_DIR/landscape)")
    p.add_argument("result_dir", help="a seed's folder holding result.json and adapter.safetensors")
    p.add_argument("--directions", default="gradient", choices=["gradient", "random"],
                   help="the gradient and an orthogonal direction, or two filter-normalised random ones")
    p.add_argument("--points", type=int, default=11, help="grid points per direction (odd)")
    p.add_argument("--span", type=float, default=1.0, help="the grid covers [-span, span] along each direction")
    p.add_argument("--radius", type=float, default=0.5, help="radius of the reported mean loss increase")
    p.add_argument("--split", default="train", choices=["train", "selection", "report"])
    p.add_argument("--max-examples", type=int, help="use the first N examples of the split")
    p.add_argument("--seed", type=int, default=0, help="seed of the random directions")
    p.add_argument("--output", help="output folder (default RESULT_DIR/landscape)")
    p.add_argument("--data-dir", help="task data folder, if not where the run found it")
    p.set_defaults(func=cmd_landscape)

    what = "a trained seed's prompt as a folder another library loads (--format peft: PeftModel.from_pretrained)"
    p = sub.add_parser("export", help=what, description=what + "; OUT/README.md says how to score as ptray does")
    p.add_argument("run_dir", help="a seed's folder holding result.json and adapter.safetensors")
    p.add_argument("out", help="output folder (new or empty)")
    # Checked by the command, not by choices, so a wrong format is one `error:` line like every other bad input.
    p.add_argument("--format", required=True, help="peft: Hugging Face PEFT prompt or prefix tuning")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty output folder, replacing a "
                                                            "previous export's files")
    p.set_defaults(func=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # key=value overrides may stand anywhere on the line, also after options; anything else unknown is an error.
    args, extra = parser.parse_known_args(argv)
    unknown = [a for a in extra if "=" not in a or a.startswith("-")]
    if unknown or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    _offline_defaults()
    from ptray.config import ConfigError

    try:
        return args.func(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
