"""Cross-image pixel contrast (ContrastiveSeg) with both heads: accuracy on CamVid, training-step time and memory.

Accuracy (`--part accuracy`): linear, linear + contrast, ProtoSeg, ProtoSeg + contrast, all through the same
`training/train.py` with the settings of `benchmarks.accuracy` (128x128 crops, batch 8, 500 AdamW steps, D = 64,
K = 10; `scratch` = random-init MiT "mit-micro", `lite0` = ImageNet EfficientNet-Lite0), seeds 0 1 2 by default;
validation mIoU from the run, test mIoU from `python -m training.evaluate`. The contrast runs add only
`--pixel_contrast` (the flag defaults = ContrastiveSeg's Cityscapes HRNet recipe: weight 0.1, temperature 0.1, base
temperature 0.07, 1024 anchors, at most 100 views per (image, class), projection width 256, no memory, no warm-up).
Runs share `--work_dir` with `benchmarks.accuracy` (same flags = same folder, reused with `--reuse_runs`).

Cost (`--part cost`): one training step (forward with losses, backward, AdamW) of the four models on the same
synthetic batch of the accuracy setting's shape (and of MiT-B0 at 256x256), interleaved and repeated, and of linear +
contrast with a full memory (400 segments + 4000 pixels per class: 1024 anchors against ~4,400 x C rows); the ratio
of each to the plain linear head in the same repetition. Memory: each (model, setting) in a fresh process: RSS
after building model and batch, peak RSS over two steps (`ru_maxrss`), and the growth between them (activations,
gradients, optimizer state) as a ratio to the linear head's.

    python -m benchmarks.pixel_contrast [--part accuracy cost] [--settings scratch lite0] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
from pathlib import Path
from typing import Any

import torch

from benchmarks import accuracy
from benchmarks.common import (
    RESULTS_DIR,
    Summary,
    build_protoseg,
    build_segformer,
    machine_description,
    machine_line,
    markdown_table,
    set_threads,
    summary_text,
    synthetic_batch,
    time_interleaved,
    write_json,
)

HEADS = {
    "linear": accuracy.Head("linear", ["--head", "linear"]),
    "linear+contrast": accuracy.Head("linear-contrast", ["--head", "linear", "--pixel_contrast"]),
    "protoseg": accuracy.Head("protoseg", ["--head", "protoseg"]),
    "protoseg+contrast": accuracy.Head("protoseg-contrast", ["--head", "protoseg", "--pixel_contrast"]),
}
# Variants (scratch only, asked for with --heads): the official anchor rule at this resolution, and the memory.
VARIANTS = {
    # 32x32 feature maps: the default 100 views make a class need 10% of a crop to give anchors (the official
    # 1024x512 crops: 0.3%); 10 views = 1% of a crop, at most 10 views per (image, class)
    "linear+contrast, 10 views": accuracy.Head(
        "linear-contrast-views10", ["--head", "linear", "--pixel_contrast", "--pixel_contrast_max_views", "10"],
        settings=("scratch",),
    ),
    "protoseg+contrast, 10 views": accuracy.Head(
        "protoseg-contrast-views10", ["--head", "protoseg", "--pixel_contrast", "--pixel_contrast_max_views", "10"],
        settings=("scratch",),
    ),
    # a memory holding about the last 50 steps' entries (8 images x 10 pixels per class and step)
    "linear+contrast, memory": accuracy.Head(
        "linear-contrast-memory",
        ["--head", "linear", "--pixel_contrast", "--pixel_contrast_segment_memory", "400",
         "--pixel_contrast_pixel_memory", "4000"],
        settings=("scratch",),
    ),
}  # fmt: skip
COST_HEADS = [*HEADS, "linear+contrast, memory"]  # the memory: 400 segments + 4000 pixels per class, full
# name: (encoder, decoder width = D (the encoder preset's), image size, batch size, classes)
COST_SETTINGS = {
    "accuracy-setting": ("mit-micro", 64, 128, 8, 11),
    "mit-b0-256": ("mit-b0", 256, 256, 8, 19),
}


# ----------------------------------------------------------------------------------------------
# Accuracy


def run_accuracy(args: argparse.Namespace) -> dict[str, Any]:
    """Train (or reuse) every (setting, head, seed) run on CamVid; per-run records and the summary."""
    extra = ["--max_steps", "5", "--warmup_steps", "1", "--max_eval_samples", "4"] if args.quick else []
    runs = []
    for seed in args.seeds:
        for setting in args.settings:
            for label in args.heads:
                head = {**HEADS, **VARIANTS}[label]
                if setting not in head.settings:
                    continue
                record = accuracy.train(
                    setting, "camvid", head, seed, args.work_dir, args.threads, extra, reuse=args.reuse_runs
                )
                folder = Path(record["folder"])
                run = {
                    "setting": setting, "task": "camvid", "head": label, "seed": seed, "commit": record["commit"],
                    "wall_seconds": record["wall_seconds"], "folder": str(folder),
                    "train": json.loads((folder / "train_results.json").read_text()),
                    "val": json.loads((folder / "eval_results.json").read_text()),
                    "test": accuracy.evaluate_test(folder, "camvid", args.work_dir),
                }  # fmt: skip
                runs.append(run)
                print(f"{setting} {label} seed {seed}: val {run['val']['mean_iou']:.4f} "
                      f"test {run['test']['mean_iou']:.4f} ({run['wall_seconds']:.0f} s)", flush=True)  # fmt: skip
    summary = accuracy.summarise(runs)
    for entry in summary:
        cell = [r for r in runs if (r["setting"], r["head"]) == (entry["setting"], entry["head"])]
        entry["train_seconds_per_step"] = accuracy._mean_spread(
            [r["train"]["train_runtime_seconds"] / r["train"]["global_step"] for r in cell]
        )
    return {"runs": runs, "summary": summary}


def accuracy_markdown(result: dict[str, Any]) -> str:
    rows = [
        [e["setting"], e["head"], e["val_miou"]["n"], accuracy._format(e["val_miou"]), accuracy._format(e["test_miou"]),
         f"{e['train_seconds_per_step']['mean']:.3f}", ", ".join(e["commits"])]
        for e in result["summary"]
    ]  # fmt: skip
    per_run = [
        [r["setting"], r["head"], r["seed"], f"{r['val']['mean_iou']:.4f}", f"{r['test']['mean_iou']:.4f}",
         ", ".join(f"{name} {value:.3f}" if value is not None else f"{name} n/a"
                   for name, value in r["test"]["per_category_iou"].items())]
        for r in result["runs"]
    ]  # fmt: skip
    header = ["setting", "head", "seeds", "val mIoU", "test mIoU", "train s/step (loop wall, shared CPU)", "code"]
    return (
        "Mean ± standard deviation over seeds (CamVid, 11 classes):\n\n" + markdown_table(header, rows)
        + "\n\nEvery run (test IoU per class):\n\n"
        + markdown_table(["setting", "head", "seed", "val mIoU", "test mIoU", "test IoU per class"], per_run)
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Cost


def build_cost_model(head: str, setting: str) -> torch.nn.Module:
    """The model of one cost cell: SegFormer or ProtoSeg on the setting's MiT (decoder width and D from the encoder
    preset), wrapped as train.py wraps it with `--pixel_contrast` (flag defaults) for the "+contrast" heads."""
    from training.config import PixelContrastArguments
    from training.pixel_contrast import PixelContrastTrainingModel
    from training.presets import resolve_encoder

    encoder_name, _, _, _, num_classes = COST_SETTINGS[setting]
    encoder_config = resolve_encoder(encoder_name).config
    if head.startswith("linear"):
        model = build_segformer(num_classes, encoder_config=encoder_config)
    else:
        model = build_protoseg(num_classes, encoder_config=encoder_config)
    if "+contrast" in head:
        memory = dict(pixel_contrast_segment_memory=400, pixel_contrast_pixel_memory=4000) if "memory" in head else {}
        model = PixelContrastTrainingModel(model, PixelContrastArguments(pixel_contrast=True, **memory))
        with torch.no_grad():  # a full memory (steady state): every slot written
            for kind in ("segment", "pixel"):
                queue = getattr(model, f"{kind}_memory")
                queue.copy_(torch.nn.functional.normalize(torch.randn(queue.shape), dim=-1))
                getattr(model, f"{kind}_memory_filled").fill_(queue.shape[1])
    return model


def make_step(model: torch.nn.Module, setting: str, seed: int = 0):
    _, _, image_size, batch_size, num_classes = COST_SETTINGS[setting]
    pixel_values, labels = synthetic_batch(batch_size, image_size, num_classes, device=torch.device("cpu"), seed=seed)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, foreach=True)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model(pixel_values=pixel_values, labels=labels).loss.backward()
        optimizer.step()

    return step


def _peak_rss_child(head: str, setting: str, threads: int, queue: multiprocessing.Queue) -> None:
    import psutil

    set_threads(threads)
    step = make_step(build_cost_model(head, setting), setting)
    before = psutil.Process().memory_info().rss
    step()
    step()
    queue.put((before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024))  # ru_maxrss: KiB on Linux


def peak_rss_bytes(head: str, setting: str, threads: int) -> tuple[int, int]:
    """RSS after building the model and the batch, and peak RSS over two training steps, of a fresh process.
    (Measured before the parent builds any model: a child's ru_maxrss starts at its parent's.)"""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_peak_rss_child, args=(head, setting, threads, queue))
    process.start()
    value = queue.get(timeout=1800)
    process.join()
    return value


def run_cost(args: argparse.Namespace) -> dict[str, Any]:
    set_threads(args.threads)
    memory = {
        (setting, head): peak_rss_bytes(head, setting, args.threads) for setting in COST_SETTINGS for head in COST_HEADS
    }
    cells = []
    for setting in COST_SETTINGS:
        candidates = {head: make_step(build_cost_model(head, setting), setting) for head in COST_HEADS}
        load_before = os.getloadavg()[0]
        times = time_interleaved(candidates, repetitions=args.repetitions, warmup=2)
        load_after = os.getloadavg()[0]
        linear_before, linear_peak = memory[(setting, "linear")]
        for head in COST_HEADS:
            before, peak = memory[(setting, head)]
            cells.append({
                "setting": setting, "head": head, "load_average": [load_before, load_after],
                "step_seconds": Summary.of(times.wall[head]).as_dict(),
                "ratio_to_linear": Summary.of(times.ratios(head, "linear")).as_dict(),
                "ratio_to_linear_cpu_time": Summary.of(times.ratios(head, "linear", "cpu")).as_dict(),
                "rss_before_steps_bytes": before, "peak_rss_bytes": peak,
                "peak_rss_ratio_to_linear": peak / linear_peak,
                "step_memory_ratio_to_linear": (peak - before) / (linear_peak - linear_before),
            })  # fmt: skip
            print(f"{setting} {head}: {summary_text(cells[-1]['step_seconds'], 1000)} ms, "
                  f"x{cells[-1]['ratio_to_linear']['median']:.3f}, peak RSS {peak / 2**20:.0f} MiB "
                  f"(+{(peak - before) / 2**20:.0f} MiB in the steps)", flush=True)  # fmt: skip
    return {"repetitions": args.repetitions, "threads": args.threads, "cells": cells}


def cost_markdown(result: dict[str, Any]) -> str:
    rows = []
    for cell in result["cells"]:
        encoder, width, size, batch, classes = COST_SETTINGS[cell["setting"]]
        growth = (cell["peak_rss_bytes"] - cell["rss_before_steps_bytes"]) / 2**20
        rows.append([
            f"{encoder}, {size}x{size}, batch {batch}, {classes} classes, width {width}", cell["head"],
            summary_text(cell["step_seconds"], 1000, 1), summary_text(cell["ratio_to_linear"], 1.0, 3),
            f"{cell['peak_rss_bytes'] / 2**20:.0f}", f"{growth:.0f}", f"{cell['step_memory_ratio_to_linear']:.3f}",
        ])  # fmt: skip
    header = ["setting", "model", "step ms, median [q1, q3]", "step / linear's step (same repetition)",
              "peak RSS MiB", "RSS growth in 2 steps MiB", "growth / linear's"]  # fmt: skip
    return (
        f"Training step (forward with losses, backward, AdamW), {result['repetitions']} interleaved repetitions, "
        f"{result['threads']} threads:\n\n" + markdown_table(header, rows)
    )


# ----------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", nargs="+", choices=["accuracy", "cost"], default=["accuracy", "cost"])
    parser.add_argument("--settings", nargs="+", choices=list(accuracy.SETTINGS), default=list(accuracy.SETTINGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--heads", nargs="+", choices=[*HEADS, *VARIANTS], default=list(HEADS), help="accuracy")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per training run / cost process")
    parser.add_argument("--repetitions", type=int, default=20, help="cost: interleaved repetitions")
    parser.add_argument("--work_dir", type=Path, default=Path("/tmp/protoseg_accuracy"))
    parser.add_argument("--reuse_runs", action="store_true", help="keep finished runs with the same flags")
    parser.add_argument("--quick", action="store_true", help="5-step runs, 4 evaluation images, 2 repetitions")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    if args.quick:
        args.repetitions = 2
    machine = machine_description(torch.device("cpu"))
    suffix = "_quick" if args.quick else ""
    for part in args.part:
        result = run_accuracy(args) if part == "accuracy" else run_cost(args)
        name = f"pixel_contrast_{part}{suffix}"
        write_json(args.output / f"{name}.json", {"machine": machine, **result})
        body = accuracy_markdown(result) if part == "accuracy" else cost_markdown(result)
        text = f"Machine: {machine_line(machine)}\n\n{__doc__.split(chr(10) * 2)[1 if part == 'accuracy' else 2]}\n\n{body}\n"
        (args.output / f"{name}.md").write_text(text)
        print(text)


if __name__ == "__main__":
    main()
