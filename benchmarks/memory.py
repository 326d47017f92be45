"""Peak memory of a training step, ProtoSeg vs SegFormer (MiT-B0, K = 10), on the train_step.py grid.

Each (model, classes, batch) cell runs in a fresh Python process, so peaks are separable: the child
builds the model, the batch and the optimizer, records its resident set size (RSS), runs one training
step (forward with losses, clustering and prototype update; backward; AdamW), and reports its peak RSS
(`ru_maxrss`) — or, on a GPU, `torch.cuda.max_memory_allocated` around the step.

    python -m benchmarks.memory [--setting gpu] [--quick]
    python -m benchmarks.memory --cell protoseg 150 8 256     # one cell, prints JSON (what the parent runs)
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys

import torch

from benchmarks.common import (
    CLASS_GRID,
    MODEL_BUILDERS,
    REPO_ROOT,
    base_argument_parser,
    device_for,
    machine_description,
    machine_line,
    make_train_step,
    markdown_table,
    results_suffix,
    set_threads,
    synthetic_batch,
    write_json,
)
from benchmarks.plots import ratio_bars
from benchmarks.train_step import grid


def _rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def measure_cell(model_name: str, num_classes: int, batch_size: int, image_size: int, device: torch.device) -> dict:
    """Run in the child process: memory before and at the peak of one training step."""
    model = MODEL_BUILDERS[model_name](num_classes).to(device)
    pixel_values, labels = synthetic_batch(batch_size, image_size, num_classes, device=device)
    step = make_train_step(model, pixel_values, labels)
    result = {"model": model_name, "num_classes": num_classes, "batch_size": batch_size, "image_size": image_size}
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        result |= {"before_step_bytes": before, "peak_bytes": torch.cuda.max_memory_allocated(),
                   "kind": "CUDA max_memory_allocated"}
    else:
        before = _rss_bytes()
        step()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        result |= {"before_step_bytes": before, "peak_bytes": peak, "kind": "CPU peak RSS (ru_maxrss)"}
    result["step_increment_bytes"] = result["peak_bytes"] - result["before_step_bytes"]
    return result


def run_child(model_name: str, num_classes: int, batch_size: int, image_size: int, setting: str, threads: int) -> dict:
    command = [sys.executable, "-m", "benchmarks.memory", "--cell", model_name, str(num_classes), str(batch_size),
               str(image_size), "--setting", setting, "--threads", str(threads)]
    completed = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        return {"model": model_name, "num_classes": num_classes, "batch_size": batch_size, "image_size": image_size,
                "error": completed.stderr.strip().splitlines()[-1] if completed.stderr.strip() else "failed"}
    return json.loads(completed.stdout.strip().splitlines()[-1])


def markdown(cells: list[dict]) -> str:
    gib = 2**30
    by_key = {(c["model"], c["num_classes"], c["batch_size"], c["image_size"]): c for c in cells}
    rows = []
    for (model, num_classes, batch_size, image_size), cell in by_key.items():
        if model != "protoseg":
            continue
        baseline = by_key.get(("segformer", num_classes, batch_size, image_size))
        if "error" in cell or baseline is None or "error" in baseline:
            rows.append([batch_size, f"{image_size}x{image_size}", num_classes, cell.get("error", ""), "", "", "", ""])
            continue
        rows.append([
            batch_size, f"{image_size}x{image_size}", num_classes,
            f"{cell['peak_bytes'] / gib:.2f}", f"{baseline['peak_bytes'] / gib:.2f}",
            f"{cell['peak_bytes'] / baseline['peak_bytes']:.2f}",
            f"{cell['step_increment_bytes'] / gib:.2f}", f"{baseline['step_increment_bytes'] / gib:.2f}",
        ])
    return markdown_table(
        ["batch", "size", "classes", "ProtoSeg peak GiB", "SegFormer peak GiB", "peak ratio",
         "ProtoSeg step increment GiB", "SegFormer step increment GiB"],
        rows,
    )


def main() -> None:
    parser = base_argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--cell", nargs=4, metavar=("MODEL", "CLASSES", "BATCH", "SIZE"), help="run one cell")
    args = parser.parse_args()
    device = device_for(args.setting)
    set_threads(args.threads)
    if args.cell:
        model_name, num_classes, batch_size, image_size = args.cell
        print(json.dumps(measure_cell(model_name, int(num_classes), int(batch_size), int(image_size), device)))
        return
    machine = machine_description(device)  # at the start: load average, commit and model files measured
    class_counts = (19, 150) if args.quick else CLASS_GRID
    cells = []
    for batch_size, image_size in grid(args.setting, args.quick):
        for num_classes in class_counts:
            for model_name in ("protoseg", "segformer"):
                print(f"memory: {model_name} {num_classes} classes, batch {batch_size}, {image_size}px", flush=True)
                cells.append(run_child(model_name, num_classes, batch_size, image_size, args.setting, args.threads))
    suffix = results_suffix(args.setting, args.quick)
    kind = cells[0].get("kind", "")
    write_json(args.output / f"memory{suffix}.json", {"machine": machine, "cells": cells})
    text = (f"Machine: {machine_line(machine)}\n\nPeak memory of one training step ({kind}), one fresh process per "
            f"cell, one run each (peaks are deterministic to a few MB). 'Step increment' = peak minus the memory "
            f"held after building model, batch and optimizer.\n\n{markdown(cells)}\n")
    (args.output / f"memory{suffix}.md").write_text(text)
    ok = [c for c in cells if "error" not in c]
    batch_keys = sorted({(c["batch_size"], c["image_size"]) for c in ok})
    series = {}
    for b, s in batch_keys:
        values = []
        for num_classes in class_counts:
            pair = {c["model"]: c for c in ok if (c["batch_size"], c["image_size"], c["num_classes"]) == (b, s, num_classes)}
            ratio = pair["protoseg"]["peak_bytes"] / pair["segformer"]["peak_bytes"] if len(pair) == 2 else float("nan")
            values.append((ratio, ratio, ratio))
        series[f"batch {b}, {s}px"] = values
    ratio_bars(args.output / f"memory{suffix}.png", [f"{c} cl." for c in class_counts], series,
               title=f"Peak training-step memory ProtoSeg / SegFormer ({kind})", ylabel="peak memory ratio")
    print(text)


if __name__ == "__main__":
    main()
