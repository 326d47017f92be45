"""Scaling of the training step and of the clustering with pixels per batch (x1, x4, x16) and classes (19 -> 847).

Pixel sweep: 150 classes, fixed batch, crop side doubled twice (4x and 16x the pixels). Class sweep: fixed
batch and crop, 19 / 150 / 300 / 500 / 847 classes. At every point the ProtoSeg step, the SegFormer step,
and ProtoSeg's clustering and prototype update alone run interleaved in each repetition. Expected: all
times linear in pixels; clustering + update flat in the number of classes (all classes are clustered at
once, no per-class loop); the ProtoSeg step growing with C only through the N x C*K similarity work.

    python -m benchmarks.scaling [--setting gpu] [--repetitions N] [--quick]
"""

from __future__ import annotations

import math
import os

import torch

from benchmarks.clustering import clustering_and_update
from benchmarks.common import (
    Summary,
    base_argument_parser,
    build_protoseg,
    build_segformer,
    free_memory,
    machine_line,
    make_train_step,
    markdown_table,
    results_suffix,
    start_run,
    synthetic_batch,
    time_interleaved,
    write_json,
)
from benchmarks.plots import lines

NAMES = ("protoseg step", "segformer step", "clustering", "prototype update")


def measure_point(num_classes: int, batch_size: int, image_size: int, *, repetitions: int, device: torch.device) -> dict:
    pixel_values, labels = synthetic_batch(batch_size, image_size, num_classes, device=device)
    protoseg = build_protoseg(num_classes).to(device)
    cluster, update = clustering_and_update(protoseg, pixel_values, labels)
    candidates = {
        "protoseg step": make_train_step(protoseg, pixel_values, labels),
        "segformer step": make_train_step(build_segformer(num_classes).to(device), pixel_values, labels),
        "clustering": cluster,
        "prototype update": update,
    }
    load_before = os.getloadavg()[0]
    times = time_interleaved(candidates, repetitions=repetitions, device=device)
    point = {
        "num_classes": num_classes, "batch_size": batch_size, "image_size": image_size,
        "pixels_per_batch": batch_size * image_size * image_size,
        "feature_pixels_per_batch": batch_size * (image_size // 4) ** 2,
        "repetitions": repetitions, "load_average": [load_before, os.getloadavg()[0]],
        "seconds": {name: Summary.of(times.wall[name]).as_dict() for name in NAMES},
        "step_ratio": Summary.of(times.ratios("protoseg step", "segformer step")).as_dict(),
    }
    del candidates, protoseg
    free_memory(device)
    return point


def _slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log(y) on log(x): 1 = linear."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def _series(points: list[dict], x_key: str, scale: float = 1.0) -> dict:
    xs = [p[x_key] for p in points]
    return {
        name: (xs, [p["seconds"][name]["median"] * scale for p in points],
               [p["seconds"][name]["q1"] * scale for p in points], [p["seconds"][name]["q3"] * scale for p in points])
        for name in NAMES
    }


def markdown(points: list[dict], x_key: str, x_label: str) -> str:
    rows = []
    for p in points:
        rows.append([p[x_key], f"{p['batch_size']} x {p['image_size']}px", p["num_classes"]]
                    + [f"{p['seconds'][n]['median'] * 1e3:.1f} [{p['seconds'][n]['q1'] * 1e3:.1f}, "
                       f"{p['seconds'][n]['q3'] * 1e3:.1f}]" for n in NAMES]
                    + [f"{p['step_ratio']['median']:.2f}"])
    xs = [p[x_key] for p in points]
    slopes = [f"{_slope(xs, [p['seconds'][n]['median'] for p in points]):.2f}" for n in NAMES]
    rows.append([f"log-log slope vs {x_label}", "", ""] + slopes + [""])
    return markdown_table([x_label, "batch x crop", "classes"] + [f"{n} ms" for n in NAMES] + ["step ratio"], rows)


def main() -> None:
    parser = base_argument_parser(__doc__.splitlines()[0])
    args, device, machine = start_run(parser)
    repetitions = args.repetitions or (2 if args.quick else (20 if device.type == "cuda" else 5))
    if args.quick:
        batch, sizes, class_batch, class_size, class_counts = 1, (32, 64), 1, 64, (19, 150)
    elif args.setting == "gpu":
        batch, sizes, class_batch, class_size, class_counts = 8, (128, 256, 512), 8, 512, (19, 150, 300, 500, 847)
    else:
        batch, sizes, class_batch, class_size, class_counts = 2, (128, 256, 512), 2, 256, (19, 150, 300, 500, 847)
    pixel_points, class_points = [], []
    for image_size in sizes:
        print(f"scaling: 150 classes, batch {batch}, {image_size}px", flush=True)
        pixel_points.append(measure_point(150 if not args.quick else 19, batch, image_size,
                                          repetitions=repetitions, device=device))
    for num_classes in class_counts:
        print(f"scaling: {num_classes} classes, batch {class_batch}, {class_size}px", flush=True)
        class_points.append(measure_point(num_classes, class_batch, class_size, repetitions=repetitions, device=device))
    suffix = results_suffix(args.setting, args.quick)
    write_json(args.output / f"scaling{suffix}.json",
               {"machine": machine, "pixel_sweep": pixel_points, "class_sweep": class_points})
    text = (
        f"Machine: {machine_line(machine)}\n\nMedian [q1, q3] over {repetitions} interleaved repetitions.\n\n"
        f"Pixels per batch (150 classes):\n\n{markdown(pixel_points, 'pixels_per_batch', 'pixels per batch')}\n\n"
        f"Classes (batch {class_batch}, {class_size}x{class_size}):\n\n"
        f"{markdown(class_points, 'num_classes', 'classes')}\n"
    )
    (args.output / f"scaling{suffix}.md").write_text(text)
    lines(args.output / f"scaling_pixels{suffix}.png", _series(pixel_points, "pixels_per_batch", 1e3),
          title=f"Time vs pixels per batch (150 classes, {machine['device']})", xlabel="pixels per batch",
          ylabel="ms (median, [q1, q3])", log=True, reference_slope=1.0)
    lines(args.output / f"scaling_classes{suffix}.png", _series(class_points, "num_classes", 1e3),
          title=f"Time vs classes (batch {class_batch}, {class_size}px, {machine['device']})",
          xlabel="number of classes", ylabel="ms (median, [q1, q3])", log=True)
    print(text)


if __name__ == "__main__":
    main()
