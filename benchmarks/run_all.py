"""Run every benchmark, one fresh process each, and record how long each took.

    python benchmarks/run_all.py                    # the CPU setting, all benchmarks
    python benchmarks/run_all.py --skip camvid_accuracy
    python benchmarks/run_all.py --setting gpu      # the full grid on a CUDA machine
    python benchmarks/run_all.py --quick            # smoke run, tiny sizes (results/*_quick.*)

Results land in benchmarks/results/ (JSON, Markdown tables, PNG plots); run_all.json lists the runtimes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

BENCHMARKS = (
    "parameters", "latency", "train_step", "memory", "scaling", "profile_breakdown", "proposal_gain", "camvid_accuracy",
)
HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setting", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=None)
    parser.add_argument("--skip", nargs="+", choices=BENCHMARKS, default=[])
    parser.add_argument("--output", type=Path, default=HERE / "results")
    args = parser.parse_args()
    selected = [name for name in (args.only or BENCHMARKS) if name not in args.skip]
    runtimes: dict[str, float] = {}
    failures: list[str] = []
    start_all = time.perf_counter()
    for name in selected:
        command = [sys.executable, str(HERE / f"{name}.py"), "--output", str(args.output)]
        if name != "parameters":
            command += ["--setting", args.setting, "--threads", str(args.threads)]
        command += ["--quick"] if args.quick else []
        print(f"=== {name}: {' '.join(command[1:])}", flush=True)
        start = time.perf_counter()
        completed = subprocess.run(command, cwd=HERE.parent)
        runtimes[name] = round(time.perf_counter() - start, 1)
        if completed.returncode != 0:
            failures.append(name)
        print(f"=== {name}: {runtimes[name]:.0f} s{' (FAILED)' if completed.returncode else ''}", flush=True)
    total = round(time.perf_counter() - start_all, 1)
    suffix = ("" if args.setting == "cpu" else f"_{args.setting}") + ("_quick" if args.quick else "")
    record = {"setting": args.setting, "quick": args.quick, "threads": args.threads, "runtimes_seconds": runtimes,
              "total_seconds": total, "failed": failures, "load_average_at_end": list(os.getloadavg())}
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / f"run_all{suffix}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
