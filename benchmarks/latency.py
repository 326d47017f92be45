"""Inference latency, ProtoSeg / SegFormer (MiT-B0, K = 10), 512x512, batch 1 and 8, 19 / 150 / 847 classes.

Both models run `model(pixel_values).logits` in eval mode under `torch.inference_mode()`. For each batch
size, the six (model, classes) candidates run in a shuffled order inside every repetition, so each
ProtoSeg/SegFormer ratio is taken within one repetition. Targets: <= 1.10x at 19 classes, <= 1.30x at 150.

    python -m benchmarks.latency [--setting gpu] [--repetitions N] [--quick]
"""

from __future__ import annotations

import torch

from benchmarks.common import (
    CLASS_GRID,
    base_argument_parser,
    build_protoseg,
    build_segformer,
    free_memory,
    machine_line,
    make_inference,
    paired_cells_table,
    results_suffix,
    start_run,
    synthetic_batch,
    time_paired_cells,
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
    cells, _ = time_paired_cells(
        candidates, class_counts, repetitions=repetitions, device=device, targets=TARGETS,
        batch_size=batch_size, image_size=image_size,
    )
    del candidates
    free_memory(device)
    return cells



def main() -> None:
    parser = base_argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 8])
    args, device, machine = start_run(parser)
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
    table = paired_cells_table(cells)
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
