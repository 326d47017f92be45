"""Inference latency, ProtoSeg / SegFormer (MiT-B0, K = 10), 512x512, batch 1 and 8, 19 / 150 / 847 classes.

Both models run `model(pixel_values).logits` in eval mode under `torch.inference_mode()`. For each batch
size, the six (model, classes) candidates run in a shuffled order inside every repetition, so each
ProtoSeg/SegFormer ratio is taken within one repetition. Targets: <= 1.10x at 19 classes, <= 1.30x at 150.

    python -m benchmarks.latency [--setting gpu] [--repetitions N] [--quick]
"""

from __future__ import annotations

import os

import torch

from benchmarks.common import (
    CLASS_GRID,
    Summary,
    base_argument_parser,
    build_protoseg,
    build_segformer,
    device_for,
    free_memory,
    machine_description,
    machine_line,
    make_inference,
    markdown_table,
    results_suffix,
    set_threads,
    synthetic_batch,
    time_interleaved,
    write_json,
)
from benchmarks.plots import ratio_bars

TARGETS = {19: 1.10, 150: 1.30}


def measure_batch(batch_size: int, image_size: int, class_counts: tuple[int, ...], *, repetitions: int,
                  device: torch.device) -> list[dict]:
    """Latency of both models at every class count for one batch size, interleaved."""
    pixel_values, _ = synthetic_batch(batch_size, image_size, 2, device=device)
    candidates = {}
    for num_classes in class_counts:
        candidates[f"protoseg/{num_classes}"] = make_inference(build_protoseg(num_classes).to(device), pixel_values)
        candidates[f"segformer/{num_classes}"] = make_inference(build_segformer(num_classes).to(device), pixel_values)
    load_before = os.getloadavg()[0]
    times = time_interleaved(candidates, repetitions=repetitions, device=device)
    load_after = os.getloadavg()[0]
    cells = []
    for num_classes in class_counts:
        protoseg, segformer = f"protoseg/{num_classes}", f"segformer/{num_classes}"
        cells.append({
            "batch_size": batch_size, "image_size": image_size, "num_classes": num_classes,
            "repetitions": repetitions, "load_average": [load_before, load_after],
            "protoseg_seconds": Summary.of(times.wall[protoseg]).as_dict(),
            "segformer_seconds": Summary.of(times.wall[segformer]).as_dict(),
            "ratio": Summary.of(times.ratios(protoseg, segformer)).as_dict(),
            "ratio_cpu_time": Summary.of(times.ratios(protoseg, segformer, "cpu")).as_dict(),
            "target": TARGETS.get(num_classes),
            "raw_seconds": {"protoseg": times.wall[protoseg], "segformer": times.wall[segformer]},
        })
    del candidates
    free_memory(device)
    return cells


def _text(summary: dict, scale: float = 1.0, digits: int = 2) -> str:
    return f"{summary['median'] * scale:.{digits}f} [{summary['q1'] * scale:.{digits}f}, {summary['q3'] * scale:.{digits}f}]"


def markdown(cells: list[dict]) -> str:
    rows = []
    for cell in cells:
        target = cell["target"]
        verdict = "" if target is None else ("met" if cell["ratio"]["median"] <= target else "**missed**")
        rows.append([
            cell["batch_size"], f"{cell['image_size']}x{cell['image_size']}", cell["num_classes"],
            _text(cell["protoseg_seconds"], 1e3, 0), _text(cell["segformer_seconds"], 1e3, 0),
            _text(cell["ratio"]), _text(cell["ratio_cpu_time"]),
            f"<= {target:.2f}x {verdict}" if target else "report", cell["repetitions"],
        ])
    return markdown_table(
        ["batch", "size", "classes", "ProtoSeg ms", "SegFormer ms", "ratio (wall)", "ratio (CPU time)", "target", "reps"],
        rows,
    )


def main() -> None:
    parser = base_argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()
    device = device_for(args.setting)
    set_threads(args.threads)
    machine = machine_description(device)  # at the start: load average, commit and model files measured
    image_size, class_counts = (64, (19, 150)) if args.quick else (512, CLASS_GRID)
    cells = []
    for batch_size in args.batch_sizes:
        repetitions = args.repetitions or (2 if args.quick else (10 if batch_size == 1 else 5))
        if device.type == "cuda" and not args.repetitions:
            repetitions = 30
        print(f"latency: batch {batch_size}, {image_size}px, {repetitions} repetitions", flush=True)
        cells += measure_batch(batch_size, image_size, class_counts, repetitions=repetitions, device=device)
    suffix = results_suffix(args.setting, args.quick)
    write_json(args.output / f"latency{suffix}.json", {"machine": machine, "cells": cells})
    table = markdown(cells)
    text = (f"Machine: {machine_line(machine)}\n\nInference latency, median [q1, q3] over interleaved repetitions; "
            f"ratio = ProtoSeg / SegFormer per repetition.\n\n{table}\n")
    (args.output / f"latency{suffix}.md").write_text(text)
    groups = [f"{cell['num_classes']} cl." for cell in cells if cell["batch_size"] == args.batch_sizes[0]]
    series = {
        f"batch {batch_size}": [(c["ratio"]["median"], c["ratio"]["q1"], c["ratio"]["q3"])
                                for c in cells if c["batch_size"] == batch_size]
        for batch_size in args.batch_sizes
    }
    ratio_bars(args.output / f"latency{suffix}.png", groups, series,
               title=f"Inference latency ProtoSeg / SegFormer (MiT-B0, {image_size}px, {machine['device']})",
               ylabel="time ratio (median, [q1, q3])", targets={"target 19 cl.": 1.10, "target 150 cl.": 1.30})
    print(text)


if __name__ == "__main__":
    main()
