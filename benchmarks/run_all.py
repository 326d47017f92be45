"""Run every measurement, one fresh process each, and record which files this run wrote.

    python -m benchmarks.run_all                          # the CPU setting, every measurement
    python -m benchmarks.run_all --skip accuracy          # speed / memory / parameters only
    python -m benchmarks.run_all --with_proposals         # also the code proposals' gains (benchmarks/proposals/)
    python -m benchmarks.run_all --setting gpu            # the full grid on a CUDA machine
    python -m benchmarks.run_all --quick --output /tmp/bench-quick   # smoke run, tiny sizes (*_quick.*)

Results land in --output (default benchmarks/results/). `manifest.json` there (`manifest_quick.json`, ...)
keeps the run_all invocations that last wrote a file (commit, model files digest, start and end time, settings,
each benchmark's runtime and exit status) and indexes every file of the folder with the command that wrote it
(benchmarks/manifest.py), so files from different runs are never mistaken for one run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    REPO_ROOT,
    RESULTS_DIR,
    git_commit,
    model_files_digest,
    repo_relative,
    results_suffix,
    utc_timestamp,
)
from benchmarks.manifest import build_file_index

MEASUREMENTS = (
    "parameters", "latency", "train_step", "memory", "scaling", "profile_breakdown", "accuracy", "pixel_contrast"
)  # fmt: skip
PROPOSALS = ("proposal_gain",)  # modules of benchmarks/proposals/, run only with --with_proposals


def benchmark_command(name: str, args: argparse.Namespace) -> list[str]:
    """The `python -m ...` command of one benchmark with the flags it accepts."""
    module = f"benchmarks.proposals.{name}" if name in PROPOSALS else f"benchmarks.{name}"
    command = [sys.executable, "-m", module, "--output", str(args.output)]
    if name not in ("parameters", "accuracy", "pixel_contrast"):  # the last two train on the CPU in any setting
        command += ["--setting", args.setting]
    if name != "parameters":
        command += ["--threads", str(args.threads)]
    return command + (["--quick"] if args.quick else [])


def _file_stamps(folder: Path) -> dict[str, int]:
    return {path.name: path.stat().st_mtime_ns for path in folder.iterdir() if path.is_file()}


def run_benchmarks(names: list[str], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Run each benchmark in a fresh process; per benchmark: command, seconds, exit status, files written."""
    records: dict[str, dict[str, Any]] = {}
    for name in names:
        command = benchmark_command(name, args)
        print(f"=== {name}: {' '.join(command[1:])}", flush=True)
        before = _file_stamps(args.output)
        start = time.perf_counter()
        returncode = subprocess.run(command, cwd=REPO_ROOT, check=False).returncode
        seconds = round(time.perf_counter() - start, 1)
        written = sorted(file for file, stamp in _file_stamps(args.output).items() if before.get(file) != stamp)
        records[name] = {"command": repo_relative(" ".join(["python", *command[1:]])), "seconds": seconds,
                         "returncode": returncode, "files": written}
        print(f"=== {name}: {seconds:.0f} s{' (FAILED)' if returncode else ''}", flush=True)
    return records


def update_manifest(path: Path, run: dict[str, Any]) -> dict[str, Any]:
    """Add this run, drop earlier runs that no longer wrote any file last, and re-index every results file."""
    manifest = json.loads(path.read_text()) if path.exists() else {"files": {}, "runs": {}}
    manifest["runs"][run["started_utc"]] = run
    last_writer = {name: run_id for run_id, record in sorted(manifest["runs"].items())
                   for benchmark in record["benchmarks"].values() for name in benchmark["files"]}
    manifest["runs"] = {run_id: record for run_id, record in manifest["runs"].items()
                        if run_id in last_writer.values()}
    manifest["files"], _ = build_file_index(path.parent, manifest["runs"])
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main() -> None:
    choices = MEASUREMENTS + PROPOSALS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setting", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="+", choices=choices, default=None)
    parser.add_argument("--skip", nargs="+", choices=choices, default=[])
    parser.add_argument("--with_proposals", action="store_true", help="also run benchmarks/proposals/")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    default = MEASUREMENTS + (PROPOSALS if args.with_proposals else ())
    selected = [name for name in (args.only or default) if name not in args.skip]
    args.output.mkdir(parents=True, exist_ok=True)
    run = {"started_utc": utc_timestamp(), "git_commit": git_commit(), "model_files_sha256": model_files_digest(),
           "setting": args.setting, "quick": args.quick, "threads": args.threads, "argv": [repo_relative(argument) for argument in sys.argv[1:]]}
    start = time.perf_counter()
    run["benchmarks"] = run_benchmarks(selected, args)
    run |= {"finished_utc": utc_timestamp(), "total_seconds": round(time.perf_counter() - start, 1),
            "load_average_at_end": list(os.getloadavg())}
    manifest_path = args.output / f"manifest{results_suffix(args.setting, args.quick)}.json"
    update_manifest(manifest_path, run)
    print(json.dumps(run, indent=2))
    failed = [name for name, record in run["benchmarks"].items() if record["returncode"]]
    sys.exit(f"failed: {', '.join(failed)}" if failed else 0)


if __name__ == "__main__":
    main()
