"""Inference latency, ProtoSeg / SegFormer (MiT-B0, K = 10), 512x512, batch 1 and 8, 19 / 150 / 847 classes.

Every model runs `model(pixel_values).logits` in eval mode under `torch.inference_mode()`. For each batch size,
all candidates run in a shuffled order inside every repetition, so each ratio is taken within one repetition:
    protoseg/C          this checkout's ProtoSeg (float32 matching)
    segformer/C         transformers' `SegformerForSemanticSegmentation` on the same encoder: the baseline
    linear/C            the package's own linear head (folded decoder + 1x1 classifier): a second baseline
    protoseg-bf16/C     ProtoSeg with `prototype_matching_dtype="bfloat16"`, only where the device multiplies
                        bfloat16 natively (CUDA, or a CPU with AVX512-BF16 / AMX); elsewhere a bfloat16 product is
                        emulated and the cell is replaced by the product's own timing (`matching_product`)
    protoseg@COMMIT/C   with --baseline_commit: ProtoSeg of the package at that commit (A/B, e.g. 3eae069)
The operation-count floor of each class count is ProtoSeg's / SegFormer's floating-point operations
(`benchmarks.common.operation_count`: products, convolutions, attention); the target is a measured ratio within
1.10x of it.

    python -m benchmarks.latency [--setting gpu] [--repetitions N] [--quick] [--baseline_commit 3eae069]
"""

from __future__ import annotations

import os
from typing import Any

import torch

from benchmarks.common import (
    CLASS_GRID,
    Summary,
    base_argument_parser,
    build_linear_head,
    build_protoseg,
    package_at_commit,
    build_segformer,
    free_memory,
    machine_line,
    make_inference,
    markdown_table,
    operation_count,
    results_suffix,
    start_run,
    summary_text,
    synthetic_batch,
    time_interleaved,
    write_json,
)
from benchmarks.plots import ratio_bars

TARGET_OVER_FLOOR = 1.10  # issue 17: ProtoSeg / SegFormer within 1.1x of the operation-count floor
BF16_TARGETS = {150: 1.10, 847: 2.2}  # issue 17: ProtoSeg with bfloat16 matching / SegFormer


def native_bfloat16(device: torch.device) -> bool:
    """Whether `device` multiplies bfloat16 matrices in hardware (else the product is emulated, far slower)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def floors(class_counts: tuple[int, ...], image_size: int, device: torch.device) -> dict[int, dict[str, float]]:
    """Per class count: the operation counts (batch 1) of the three models and ProtoSeg's floor ratio."""
    pixel_values = torch.zeros(1, 3, image_size, image_size, device=device)
    result = {}
    for num_classes in class_counts:
        counts = {
            name: operation_count(builder(num_classes).to(device), pixel_values)
            for name, builder in (("protoseg", build_protoseg), ("segformer", build_segformer),
                                  ("linear", build_linear_head))
        }  # fmt: skip
        result[num_classes] = {
            "gflops_per_image": {name: count / 1e9 for name, count in counts.items()},
            "floor": counts["protoseg"] / counts["segformer"],
            "linear_floor": counts["linear"] / counts["segformer"],
        }
    return result


def _ratio(times: Any, numerator: str, denominator: str) -> dict[str, float]:
    return Summary.of(times.ratios(numerator, denominator)).as_dict()


def measure_batch(
    batch_size: int,
    image_size: int,
    class_counts: tuple[int, ...],
    *,
    repetitions: int,
    device: torch.device,
    floor_of: dict[int, dict[str, Any]],
    with_bfloat16: bool,
    baseline_commit: str | None,
) -> list[dict[str, Any]]:
    """One cell per class count for one batch size, every candidate interleaved."""
    pixel_values, _ = synthetic_batch(batch_size, image_size, 2, device=device)
    candidates = {}
    for num_classes in class_counts:
        candidates[f"protoseg/{num_classes}"] = make_inference(build_protoseg(num_classes).to(device), pixel_values)
        candidates[f"segformer/{num_classes}"] = make_inference(build_segformer(num_classes).to(device), pixel_values)
        candidates[f"linear/{num_classes}"] = make_inference(build_linear_head(num_classes).to(device), pixel_values)
        if with_bfloat16:
            model = build_protoseg(num_classes)
            model.config.prototype_matching_dtype = "bfloat16"
            candidates[f"protoseg-bf16/{num_classes}"] = make_inference(model.to(device), pixel_values)
        if baseline_commit:
            old_model = build_protoseg(num_classes, package=package_at_commit(baseline_commit)).to(device)
            candidates[f"protoseg@{baseline_commit}/{num_classes}"] = make_inference(old_model, pixel_values)
    load_before = os.getloadavg()[0]
    times = time_interleaved(candidates, repetitions=repetitions, device=device)
    load_average = [load_before, os.getloadavg()[0]]
    cells = []
    for num_classes in class_counts:
        protoseg, segformer = f"protoseg/{num_classes}", f"segformer/{num_classes}"
        ratio = _ratio(times, protoseg, segformer)
        floor = floor_of[num_classes]["floor"]
        cell = {
            "batch_size": batch_size, "image_size": image_size, "num_classes": num_classes,
            "repetitions": repetitions, "load_average": load_average,
            "seconds": {name.split("/")[0]: Summary.of(times.wall[name]).as_dict()
                        for name in candidates if name.endswith(f"/{num_classes}")},
            "ratio": ratio, "ratio_cpu_time": Summary.of(times.ratios(protoseg, segformer, "cpu")).as_dict(),
            "floor": floor, "ratio_over_floor": ratio["median"] / floor,
            "target_met": ratio["median"] / floor <= TARGET_OVER_FLOOR,
            "linear_ratio": _ratio(times, f"linear/{num_classes}", segformer),
            "linear_floor": floor_of[num_classes]["linear_floor"],
            "ratio_to_linear": _ratio(times, protoseg, f"linear/{num_classes}"),
            "raw_seconds": {name: times.wall[name] for name in candidates if name.endswith(f"/{num_classes}")},
        }  # fmt: skip
        if with_bfloat16:
            cell["bf16_ratio"] = _ratio(times, f"protoseg-bf16/{num_classes}", segformer)
            cell["bf16_target"] = BF16_TARGETS.get(num_classes)
        if baseline_commit:
            cell["baseline_commit"] = baseline_commit
            cell["ratio_to_baseline_commit"] = _ratio(times, protoseg, f"protoseg@{baseline_commit}/{num_classes}")
        cells.append(cell)
    del candidates
    free_memory(device)
    return cells


def matching_product(device: torch.device, *, num_classes: int, num_pixels: int, repetitions: int) -> dict[str, Any]:
    """The class-score product alone (N x 256 embeddings against C*10 prototypes), float32 vs bfloat16, interleaved:
    what bfloat16 matching costs on a device without native bfloat16."""
    embeddings = torch.nn.functional.normalize(torch.randn(num_pixels, 256, device=device), dim=-1)
    prototypes = torch.nn.functional.normalize(torch.randn(num_classes * 10, 256, device=device), dim=-1)
    from modeling_protoseg.class_scores import nearest_prototype_scores

    def product(dtype: torch.dtype | None):
        def run() -> None:
            with torch.inference_mode():
                nearest_prototype_scores(embeddings, prototypes, num_classes, matching_dtype=dtype)

        return run

    times = time_interleaved({"float32": product(None), "bfloat16": product(torch.bfloat16)},
                             repetitions=repetitions, device=device)  # fmt: skip
    return {
        "num_classes": num_classes, "num_pixels": num_pixels, "repetitions": repetitions,
        "seconds": {name: Summary.of(values).as_dict() for name, values in times.wall.items()},
        "bf16_over_fp32": Summary.of(times.ratios("bfloat16", "float32")).as_dict(),
    }  # fmt: skip


def report(payload: dict[str, Any]) -> str:
    """The Markdown page."""
    cells, baseline = payload["cells"], payload.get("baseline_commit")
    rows = []
    for cell in cells:
        verdict = "met" if cell["target_met"] else "**missed**"
        row = [
            cell["batch_size"], cell["num_classes"], summary_text(cell["seconds"]["protoseg"], 1e3, 0),
            summary_text(cell["seconds"]["segformer"], 1e3, 0), summary_text(cell["ratio"]), f"{cell['floor']:.2f}x",
            f"{cell['ratio_over_floor']:.2f} ({verdict})", summary_text(cell["linear_ratio"]),
            f"{cell['linear_floor']:.2f}x", summary_text(cell["ratio_to_linear"]),
        ]  # fmt: skip
        if baseline:
            row.append(summary_text(cell["ratio_to_baseline_commit"]))
        if "bf16_ratio" in cell:
            target = cell["bf16_target"]
            row.append(summary_text(cell["bf16_ratio"]) + (f" (<= {target}x)" if target else ""))
        rows.append(row)
    header = ["batch", "classes", "ProtoSeg ms", "SegFormer ms", "ProtoSeg / SegFormer", "floor", "ratio / floor",
              "linear head / SegFormer", "linear floor", "ProtoSeg / linear head"]  # fmt: skip
    if baseline:
        header.append(f"ProtoSeg / ProtoSeg@{baseline}")
    if cells and "bf16_ratio" in cells[0]:
        header.append("ProtoSeg bf16 matching / SegFormer")
    lines = [
        "# Inference latency",
        "",
        f"Command: `{payload['machine']['command']}`",
        "",
        f"Machine: {machine_line(payload['machine'])}. {payload['quiet']}",
        "",
        f"MiT-B0, K = 10, D = 256, {cells[0]['image_size']}x{cells[0]['image_size']}, eval mode, inference_mode; "
        "median [q1, q3] over interleaved repetitions, ratios taken per repetition. SegFormer = transformers' "
        "`SegformerForSemanticSegmentation`; linear head = this package's parametric head (a second baseline). "
        f"floor = ProtoSeg's / SegFormer's counted operations; target: ratio / floor <= {TARGET_OVER_FLOOR}.",
        "",
        markdown_table(header, rows),
        "",
        f"Operations per {cells[0]['image_size']}x{cells[0]['image_size']} image (GFLOP, FlopCounterMode): "
        + "; ".join(f"{count} classes: " + ", ".join(f"{name} {value:.1f}" for name, value in floor["gflops_per_image"].items())
                    for count, floor in payload["floors"].items()),  # fmt: skip
        "",
    ]
    product = payload.get("matching_product")
    if product:
        lines += [
            f"bfloat16 matching: {payload['bfloat16']}. The class-score product alone ({product['num_pixels']} "
            f"pixels x {product['num_classes'] * 10} prototypes, D = 256): float32 "
            f"{summary_text(product['seconds']['float32'], 1e3, 0)} ms, bfloat16 "
            f"{summary_text(product['seconds']['bfloat16'], 1e3, 0)} ms, ratio {summary_text(product['bf16_over_fp32'])}.",
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = base_argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--baseline_commit", help="also time ProtoSeg of the package at this commit (A/B)")
    parser.add_argument("--quiet_note", default="", help="how the machine was kept quiet (written into the results)")
    args, device, machine = start_run(parser)
    image_size, class_counts = (64, (19, 150)) if args.quick else (512, CLASS_GRID)
    with_bfloat16 = native_bfloat16(device)
    floor_of = floors(class_counts, image_size, device)
    cells = []
    for batch_size in args.batch_sizes:
        repetitions = args.repetitions or (2 if args.quick else (10 if batch_size == 1 else 5))
        if device.type == "cuda" and not args.repetitions:
            repetitions = 30
        print(f"latency: batch {batch_size}, {image_size}px, {repetitions} repetitions", flush=True)
        cells += measure_batch(
            batch_size, image_size, class_counts, repetitions=repetitions, device=device, floor_of=floor_of,
            with_bfloat16=with_bfloat16, baseline_commit=args.baseline_commit,
        )  # fmt: skip
    payload = {"machine": machine, "quiet": args.quiet_note, "floors": floor_of, "cells": cells,
               "baseline_commit": args.baseline_commit,
               "bfloat16": "timed in every cell (native on this device)" if with_bfloat16 else
               "not timed in the cells: this device has no native bfloat16 matrix product (emulated)"}  # fmt: skip
    if not with_bfloat16:
        num_pixels = (image_size // 4) ** 2
        payload["matching_product"] = matching_product(
            device, num_classes=class_counts[1], num_pixels=num_pixels, repetitions=2 if args.quick else 3
        )
    suffix = results_suffix(args.setting, args.quick)
    write_json(args.output / f"latency{suffix}.json", payload)
    text = report(payload)
    (args.output / f"latency{suffix}.md").write_text(text)
    groups = [f"{cell['num_classes']} cl." for cell in cells if cell["batch_size"] == args.batch_sizes[0]]
    series = {
        f"batch {batch_size}": [(c["ratio"]["median"], c["ratio"]["q1"], c["ratio"]["q3"])
                                for c in cells if c["batch_size"] == batch_size]
        for batch_size in args.batch_sizes
    }
    series["operation-count floor"] = [(floor_of[int(g.split()[0])]["floor"],) * 3 for g in groups]
    ratio_bars(args.output / f"latency{suffix}.png", groups, series,
               title=f"Inference latency ProtoSeg / SegFormer (MiT-B0, {image_size}px, {machine['device']})",
               ylabel="time ratio (median, [q1, q3])", targets={})
    print(text)


if __name__ == "__main__":
    main()
