"""ProtoSeg inference of this checkout against the package at earlier commits, in one process (A/B).

Each older package is imported beside this one from a git worktree (`benchmarks.common.package_at_commit`); the
same MiT-B0 ProtoSeg (K = 10, D = 256, built with the same seed) of every version runs
`model(pixel_values).logits` in eval mode under `torch.inference_mode()`, all versions interleaved in a shuffled
order inside every repetition; ratios (this checkout / an older commit) are taken per repetition.

    python -m benchmarks.inference_ab --commits 4984f67 d591a35 [--classes 19 150] [--batch_size 8]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from benchmarks.common import (
    CPU,
    RESULTS_DIR,
    Summary,
    build_protoseg,
    package_at_commit,
    machine_description,
    machine_line,
    make_inference,
    markdown_table,
    set_threads,
    summary_text,
    synthetic_batch,
    time_interleaved,
    write_json,
)

RESULTS_NAME = "inference_ab"


def measure(commits: list[str], num_classes: int, batch_size: int, image_size: int, repetitions: int) -> dict[str, Any]:
    """One cell: this checkout and each commit's ProtoSeg at `num_classes`, interleaved."""
    pixel_values, _ = synthetic_batch(batch_size, image_size, 2, device=CPU)
    candidates = {"this checkout": make_inference(build_protoseg(num_classes), pixel_values)}
    for commit in commits:
        candidates[commit] = make_inference(build_protoseg(num_classes, package=package_at_commit(commit)), pixel_values)
    load_before = os.getloadavg()[0]
    times = time_interleaved(candidates, repetitions=repetitions)
    return {
        "num_classes": num_classes, "batch_size": batch_size, "image_size": image_size, "repetitions": repetitions,
        "load_average": [load_before, os.getloadavg()[0]],
        "seconds": {name: Summary.of(values).as_dict() for name, values in times.wall.items()},
        "ratio_to_commit": {commit: Summary.of(times.ratios("this checkout", commit)).as_dict() for commit in commits},
        "raw_seconds": times.wall,
    }  # fmt: skip


def report(payload: dict[str, Any]) -> str:
    commits = payload["commits"]
    rows = [
        [cell["batch_size"], cell["num_classes"], summary_text(cell["seconds"]["this checkout"], 1e3, 0),
         *(summary_text(cell["seconds"][commit], 1e3, 0) for commit in commits),
         *(summary_text(cell["ratio_to_commit"][commit]) for commit in commits), cell["repetitions"]]
        for cell in payload["cells"]
    ]  # fmt: skip
    header = ["batch", "classes", "this checkout ms", *(f"{c} ms" for c in commits),
              *(f"this / {c}" for c in commits), "reps"]  # fmt: skip
    return "\n".join([
        "# ProtoSeg inference against earlier commits (A/B in one process)",
        "",
        f"Command: `{payload['machine']['command']}`",
        "",
        f"Machine: {machine_line(payload['machine'])}. {payload['quiet']}",
        "",
        f"MiT-B0, K = 10, D = 256, {payload['cells'][0]['image_size']}x{payload['cells'][0]['image_size']}, eval mode, "
        "inference_mode, every version built with the same seed; median [q1, q3] over interleaved repetitions.",
        "",
        markdown_table(header, rows),
        "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commits", nargs="+", required=True)
    parser.add_argument("--classes", type=int, nargs="+", default=[19, 150])
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--image_size", type=int, default=512)
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quiet_note", default="", help="how the machine was kept quiet (written into the results)")
    parser.add_argument("--output", default=RESULTS_DIR, type=Path)
    args = parser.parse_args()
    set_threads(args.threads)
    machine = machine_description(CPU)
    cells = [measure(args.commits, count, args.batch_size, args.image_size, args.repetitions) for count in args.classes]
    payload = {"machine": machine, "quiet": args.quiet_note, "commits": args.commits, "cells": cells}
    write_json(args.output / f"{RESULTS_NAME}.json", payload)
    text = report(payload)
    (args.output / f"{RESULTS_NAME}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
