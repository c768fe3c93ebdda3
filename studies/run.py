"""Run a study: every experiment YAML in a claim's folder through `ptray tune` and `ptray report`, then write the
claim's RESULTS.md from the reports' own numbers (stats.json), so nothing in it is typed by hand.

    python studies/run.py studies/residual            # runs what has no result yet, then writes RESULTS.md
    python studies/run.py studies/residual trec cr    # only these tasks (in this order), then RESULTS.md
    python studies/run.py studies/residual --summary  # only rewrites RESULTS.md from the reports on disk

Each YAML <task>.yaml runs into <claim>/<task>/ (the whole experiment folder; only its report/ is committed).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from ptray.analysis.report import adjust_for_the_family, comparison_sentence
from ptray.layout import flatten


def run(folder: Path, tasks: list[str]) -> None:
    configs = [folder / f"{t}.yaml" for t in tasks] if tasks else sorted(folder.glob("*.yaml"))
    missing = [str(c) for c in configs if not c.is_file()]
    if missing:
        raise SystemExit(f"no experiment YAML {', '.join(missing)}; the tasks of {folder} are "
                         f"{', '.join(c.stem for c in sorted(folder.glob('*.yaml')))}")
    for config in configs:
        run_one(config, folder / config.stem)


def run_one(config: Path, out: Path) -> None:
    """`ptray tune` CONFIG into OUT (resumed if an earlier run was interrupted), `ptray report`, and timing.json;
    nothing when OUT already has its report."""
    if (out / "report" / "stats.json").is_file():
        return
    t0 = time.perf_counter()
    # --trust: the Tune state a resume loads is the one this script's own earlier run wrote.
    resumed = (out / "experiment.json").is_file()
    args = ["tune", "--resume", str(out), "--trust"] if resumed else ["tune", str(config), "--output", str(out)]
    subprocess.run([sys.executable, "-m", "ptray.cli", *args], check=True)
    subprocess.run([sys.executable, "-m", "ptray.cli", "report", str(out)], check=True)
    took = time.perf_counter() - t0
    # The load says how far the time is from an idle machine's (this machine is shared).
    # A resumed run's time leaves out what the interrupted run had done.
    timing = {"seconds": round(took), "resumed": resumed,
              "finished": datetime.now(timezone.utc).isoformat(timespec="minutes"),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "load_average_at_end": round(os.getloadavg()[0], 1)}
    (out / "report" / "timing.json").write_text(json.dumps(timing, indent=2))


def short_labels(configs) -> dict[str, str]:
    """{label: the same, naming only the dotted keys whose values differ between the configs}: a search over whole
    sections (`method: [{...}, {...}]`) labels a config with the section's every key otherwise."""
    flat = [flatten(c["overrides"]) for c in configs]
    keys = [k for k in dict.fromkeys(k for f in flat for k in f) if len({repr(f.get(k)) for f in flat}) > 1]
    return {c["label"]: ", ".join(f"{k}={f[k]}" for k in keys if k in f) or c["label"]
            for c, f in zip(configs, flat)}


def summary(folder: Path) -> str:
    lines = [f"# {folder.name}: results", "",
             f"Written by `python studies/run.py {folder}` from each experiment's `report/stats.json`; the full "
             "reports are linked. Where a task compares several configs with its baseline, each verdict decides on "
             "Holm's adjustment over them (the sentences are said again by the current `ptray report` code).", "",
             "| task | config | n | mean ± std | worst | ≤ majority | took |", "|---|---|---:|---|---:|---:|---:|"]
    sentences = []
    for config in sorted(folder.glob("*.yaml")):
        stats_file = folder / config.stem / "report" / "stats.json"
        if not stats_file.is_file():
            lines.append(f"| {config.stem} | not run yet | | | | | |")
            continue
        s = json.loads(stats_file.read_text())
        timing_file = stats_file.with_name("timing.json")
        took = "not timed"
        if timing_file.is_file():
            timing = json.loads(timing_file.read_text())
            # The load says how far the time is from an idle machine's (studies often share it).
            took = (f"{timing['seconds'] / 60:.1f} min (load {timing['load_average_at_end']} at the end"
                    + (", after a resume" if timing.get("resumed") else "") + ")")
        m = s["primary_metric"]
        short = short_labels(s["configs"].values())
        base = s["configs"][s["baseline_config_id"]]
        # Each sentence is said again from the report's numbers by the current report code, so every task reads
        # alike: reports written before the report adjusted for the family of comparisons (Holm) get it here too.
        adjust_for_the_family({cid: c["comparison"] for cid, c in s["configs"].items() if c["comparison"]})
        for c in s["configs"].values():
            h = c["summary"][m]
            lines.append(f"| [{config.stem}]({config.stem}/report/report.md) | {short[c['label']]} | {h['n_ok']} | "
                         f"{h['mean']:.4f} ± {h['std']:.4f} | {h['min']:.4f} | "
                         f"{int(h['n_at_majority'])}/{h['n_seeds']} | {took} |")
            if c["comparison"]:
                sentence = comparison_sentence(c["label"], base["label"], c["comparison"], h, base["summary"][m])
                for long, brief in short.items():
                    sentence = sentence.replace(long, brief)
                sentences.append(f"- **{config.stem}**: {sentence}")
    return "\n".join(lines + ["", *sentences, ""])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a claim's folder under studies/")
    parser.add_argument("tasks", nargs="*", help="run only these tasks (<task>.yaml in the folder), in this order")
    parser.add_argument("--summary", action="store_true", help="only rewrite RESULTS.md from the reports on disk")
    a = parser.parse_args()
    if not a.summary:
        run(a.folder, a.tasks)
    (a.folder / "RESULTS.md").write_text(summary(a.folder))
    print(f"wrote {a.folder / 'RESULTS.md'}")
