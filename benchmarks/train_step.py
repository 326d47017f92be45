"""Training-step time, ProtoSeg / SegFormer (MiT-B0, K = 10), batch 1 and 8, 19 / 150 / 847 classes.

A step is forward (CE; for ProtoSeg also clustering, PPC, PPD and the prototype update), backward and an
AdamW update, for both models on the same batch. Per batch size the six (model, classes) candidates run
shuffled inside every repetition. Also measured, interleaved with the ProtoSeg step at 150 classes,
batch 8: the clustering + prototype update alone, as a share of that step (target <= 5%), and the paper's
figure: 10,000 pixels into 10 prototypes (paper: ~2.5 ms on a GPU). Target: step ratio <= 1.10x at 150 (issue 17).

CPU setting (2 cores): batch 1 at 512x512, batch 8 at 256x256 (the 512x512 batch-8 steps take 15-25 s
each and at 847 classes need more memory than the machine has). GPU setting: batch 1 and 8 at 512x512.

    python -m benchmarks.train_step [--setting gpu] [--repetitions N] [--quick]
"""

from __future__ import annotations

import torch
import torch.utils.benchmark as torch_benchmark

from benchmarks.clustering import clustering_and_update, paper_clustering_problem
from benchmarks.common import (
    CLASS_GRID,
    Summary,
    base_argument_parser,
    build_protoseg,
    build_segformer,
    free_memory,
    machine_line,
    make_train_step,
    markdown_table,
    paired_cells_table,
    results_suffix,
    start_run,
    summary_text,
    synthetic_batch,
    time_paired_cells,
    write_json,
)
from benchmarks.plots import ratio_bars

STEP_TARGETS = {150: 1.10}
CLUSTERING_SHARE_TARGET = 0.05


def grid(setting: str, quick: bool) -> list[tuple[int, int]]:
    """(batch size, image size) cells."""
    if quick:
        return [(1, 64), (2, 64)]
    if setting == "gpu":
        return [(1, 512), (8, 512)]
    return [(1, 512), (8, 256)]


def measure_batch(batch_size: int, image_size: int, class_counts: tuple[int, ...], *, repetitions: int,
                  device: torch.device, share_classes: int | None) -> tuple[list[dict], dict | None]:
    """Step times of both models at every class count (interleaved) and, when `share_classes` is given,
    the clustering + update of ProtoSeg at that class count interleaved with the same steps."""
    candidates = {}
    share_candidates = {}
    for num_classes in class_counts:
        pixel_values, labels = synthetic_batch(batch_size, image_size, num_classes, device=device)
        protoseg = build_protoseg(num_classes).to(device)
        candidates[f"protoseg/{num_classes}"] = make_train_step(protoseg, pixel_values, labels)
        candidates[f"segformer/{num_classes}"] = make_train_step(
            build_segformer(num_classes).to(device), pixel_values, labels
        )
        if num_classes == share_classes:
            cluster, update = clustering_and_update(protoseg, pixel_values, labels)
            share_candidates = {"clustering": cluster, "prototype update": update}
    candidates |= share_candidates
    cells, times = time_paired_cells(
        candidates, class_counts, repetitions=repetitions, device=device, targets=STEP_TARGETS,
        batch_size=batch_size, image_size=image_size,
    )
    share = None
    if share_candidates:
        step = times.wall[f"protoseg/{share_classes}"]
        both = [c + u for c, u in zip(times.wall["clustering"], times.wall["prototype update"])]
        share = {
            "batch_size": batch_size, "image_size": image_size, "num_classes": share_classes,
            "repetitions": repetitions,
            "clustering_seconds": Summary.of(times.wall["clustering"]).as_dict(),
            "update_seconds": Summary.of(times.wall["prototype update"]).as_dict(),
            "clustering_plus_update_seconds": Summary.of(both).as_dict(),
            "share_of_step": Summary.of([b / s for b, s in zip(both, step)]).as_dict(),
            "target": CLUSTERING_SHARE_TARGET,
        }
    del candidates
    free_memory(device)
    return cells, share


def paper_figure(device: torch.device, threads: int) -> dict:
    """10,000 pixels into 10 prototypes (one class), with `torch.utils.benchmark.Timer`."""
    cluster, update = paper_clustering_problem(device=device)
    result = {"num_pixels": 10_000, "num_prototypes": 10, "embedding_dim": 256, "paper_gpu_ms": 2.5}
    for name, function in (("clustering (similarities + 3 Sinkhorn iterations + argmax)", cluster),
                           ("prototype update", update)):
        timer = torch_benchmark.Timer(stmt="function()", globals={"function": function}, num_threads=threads)
        measurement = timer.blocked_autorange(min_run_time=2.0)
        times = measurement.times
        result[name] = {**Summary.of(times).as_dict(), "runs": measurement.number_per_run, "blocks": len(times)}
    return result



def markdown(cells: list[dict], shares: list[dict], paper: dict) -> str:
    text = paired_cells_table(cells)
    share_rows = []
    for share in shares:
        verdict = "met" if share["share_of_step"]["median"] <= share["target"] else "**missed**"
        share_rows.append([
            share["batch_size"], f"{share['image_size']}x{share['image_size']}", share["num_classes"],
            summary_text(share["clustering_seconds"], 1e3, 1), summary_text(share["update_seconds"], 1e3, 1),
            summary_text(share["share_of_step"], 100, 1) + " %", f"<= 5 % {verdict}", share["repetitions"],
        ])
    text += "\n\nClustering + prototype update alone, interleaved with the ProtoSeg steps above:\n\n" + markdown_table(
        ["batch", "size", "classes", "clustering ms", "update ms", "share of step", "target", "reps"], share_rows
    )
    paper_rows = [[name, summary_text(values, 1e3, 2), values["blocks"], values["runs"]]
                  for name, values in paper.items() if isinstance(values, dict)]
    text += ("\n\nThe paper's figure, 10,000 pixels (D = 256) into 10 prototypes (paper: ~2.5 ms on a GPU), "
             "`torch.utils.benchmark.Timer.blocked_autorange`:\n\n"
             + markdown_table(["part", "ms median [q1, q3]", "blocks", "runs per block"], paper_rows))
    return text


def main() -> None:
    parser = base_argument_parser(__doc__.splitlines()[0])
    args, device, machine = start_run(parser)
    class_counts = (19, 150) if args.quick else CLASS_GRID
    share_classes = 150 if not args.quick else 19
    cells, shares = [], []
    for batch_size, image_size in grid(args.setting, args.quick):
        repetitions = args.repetitions or (2 if args.quick else 5)
        if device.type == "cuda" and not args.repetitions:
            repetitions = 20
        print(f"train step: batch {batch_size}, {image_size}px, {repetitions} repetitions", flush=True)
        batch_cells, share = measure_batch(
            batch_size, image_size, class_counts, repetitions=repetitions, device=device,
            share_classes=share_classes if batch_size == max(b for b, _ in grid(args.setting, args.quick)) else None,
        )
        cells += batch_cells
        shares += [share] if share else []
    print("paper figure: 10,000 pixels into 10 prototypes", flush=True)
    paper = paper_figure(device, args.threads)
    suffix = results_suffix(args.setting, args.quick)
    write_json(args.output / f"train_step{suffix}.json",
               {"machine": machine, "cells": cells, "clustering_share": shares, "paper_figure": paper})
    text = (f"Machine: {machine_line(machine)}\n\nTraining step (forward, losses, clustering, prototype update, "
            f"backward, AdamW), median [q1, q3] over interleaved repetitions; ratio = ProtoSeg / SegFormer per "
            f"repetition.\n\n{markdown(cells, shares, paper)}\n")
    (args.output / f"train_step{suffix}.md").write_text(text)
    batch_keys = sorted({(c["batch_size"], c["image_size"]) for c in cells})
    groups = [f"{c} cl." for c in class_counts]
    series = {
        f"batch {b}, {s}px": [(c["ratio"]["median"], c["ratio"]["q1"], c["ratio"]["q3"])
                              for c in cells if (c["batch_size"], c["image_size"]) == (b, s)]
        for b, s in batch_keys
    }
    ratio_bars(args.output / f"train_step{suffix}.png", groups, series,
               title=f"Training step ProtoSeg / SegFormer (MiT-B0, {machine['device']})",
               ylabel="time ratio (median, [q1, q3])", targets={"target 150 cl.": STEP_TARGETS[150]})
    print(text)


if __name__ == "__main__":
    main()
