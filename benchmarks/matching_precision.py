"""What bfloat16 prototype matching does to a trained model's predictions (issue 17, item 2).

For each saved ProtoSeg run folder, the model (its saved `prototype_matching_dtype`, "float32") and a copy set to
"bfloat16" predict every image of a split with the run's own evaluation setup
(`training.evaluate.prepare_folder_evaluation`: the same resizing, normalisation, windows). Reported per folder:
both mIoUs and their difference, the fraction of labelled pixels whose predicted class agrees, and the largest
logit difference at the model's output resolution.

    python -m benchmarks.matching_precision FOLDER [FOLDER ...] --preset camvid --dataset_name ../shared/datasets/camvid
    python -m benchmarks.matching_precision --report_only   # rebuild the .md from the JSON

Results: benchmarks/results/matching_precision.{json,md} (the folders' names and the runs' commits are recorded).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import RESULTS_DIR, machine_description, machine_line, markdown_table, set_threads, write_json
from training.config import resolve_config
from training.evaluate import EvaluationSettings, prepare_folder_evaluation
from training.evaluation import predict_segmentation
from training.metrics import ConfusionMatrix

RESULTS_NAME = "matching_precision"
MIOU_TOLERANCE = 0.001  # issue 17: bf16 may become the inference default only if mIoU moves by less


@torch.no_grad()
def compare_folder(folder: Path, dataset_flags: dict[str, Any], split: str) -> dict[str, Any]:
    """float32 vs bfloat16 matching of the model in `folder` on `split`: mIoUs, agreement, largest logit change."""
    data = resolve_config(dataset_flags).data
    settings = EvaluationSettings(split=split, device="cpu")
    exact = prepare_folder_evaluation(folder, data, settings)
    rounded_model = copy.deepcopy(exact.model)  # the same weights; only the matching dtype differs
    rounded_model.config.prototype_matching_dtype = "bfloat16"
    models = {"float32": exact.model, "bfloat16": rounded_model}
    # every forward's logits (1, C, h/4, w/4), recorded by a hook: the evaluation's own forwards, none added
    recorded: dict[str, list[torch.Tensor]] = {name: [] for name in models}
    for name, model in models.items():
        model.register_forward_hook(lambda module, inputs, output, name=name: recorded[name].append(output.logits))
    setup, num_labels = exact.setup, len(exact.id2label)
    confusions = {name: ConfusionMatrix(num_labels, ignore_index=data.ignore_index) for name in models}
    agreeing = labelled = 0
    largest_logit_change = 0.0
    started = time.perf_counter()
    for batch in exact.loader:
        for image, label in zip(batch["pixel_values"], batch["labels"], strict=True):
            pixel_values, labels = image[None], label[None]  # (1, 3, h, w), (1, H, W)
            predictions = {}
            for name, model in models.items():
                recorded[name].clear()
                predictions[name] = predict_segmentation(
                    model, pixel_values, tuple(label.shape), mode=setup.eval_mode, crop_size=setup.crop_size,
                    stride=setup.eval_stride, scales=setup.eval_scales, flip=setup.eval_flip,
                )  # fmt: skip
                confusions[name].update(predictions[name], labels)
            counted = labels != data.ignore_index
            agreeing += int((predictions["float32"] == predictions["bfloat16"])[counted].sum())
            labelled += int(counted.sum())
            for exact_logits, rounded_logits in zip(recorded["float32"], recorded["bfloat16"], strict=True):
                largest_logit_change = max(largest_logit_change, float((exact_logits - rounded_logits).abs().max()))
    mean_ious = {name: float(confusion.compute()["mean_iou"]) for name, confusion in confusions.items()}
    return {
        "folder": folder.name,
        "split": exact.split_name,
        "eval_mode": setup.eval_mode,
        "num_images": len(exact.loader.dataset),
        "mean_iou_float32": mean_ious["float32"],
        "mean_iou_bfloat16": mean_ious["bfloat16"],
        "mean_iou_change": mean_ious["bfloat16"] - mean_ious["float32"],
        "pixel_agreement": agreeing / max(labelled, 1),
        "labelled_pixels": labelled,
        "largest_logit_change": largest_logit_change,
        "seconds": time.perf_counter() - started,
    }


def report(payload: dict[str, Any]) -> str:
    """The Markdown page of the results."""
    rows = [
        [run["folder"], run["split"], run["num_images"], f"{run['mean_iou_float32']:.4f}",
         f"{run['mean_iou_bfloat16']:.4f}", f"{run['mean_iou_change']:+.5f}", f"{100 * run['pixel_agreement']:.3f} %",
         f"{run['largest_logit_change']:.3f}"]
        for run in payload["runs"]
    ]  # fmt: skip
    changes = [abs(run["mean_iou_change"]) for run in payload["runs"]]
    verdict = (
        f"Largest |mIoU change| {max(changes):.5f}: "
        + ("below" if max(changes) < MIOU_TOLERANCE else "**not** below")
        + f" the {MIOU_TOLERANCE} the issue allows for making bfloat16 the inference default."
    )
    return "\n".join([
        "# bfloat16 prototype matching on trained models",
        "",
        f"Command: `{payload['machine']['command']}`",
        "",
        f"Machine: {machine_line(payload['machine'])}.",
        "",
        f"Models: {payload['note']}",
        "",
        "Each model predicted every image twice, with `prototype_matching_dtype` float32 (exact) and bfloat16 "
        "(embeddings and prototypes rounded for the class-score product, scores returned in float32), with the run's "
        "own evaluation setup. Agreement: labelled pixels with the same predicted class. Logit change: the largest "
        "absolute difference of the logits at the model's output resolution (H/4 x W/4).",
        "",
        markdown_table(
            ["run folder", "split", "images", "mIoU fp32", "mIoU bf16", "change", "agreement", "max logit change"],
            rows,
        ),
        "",
        verdict,
        "",
        f"Mean change over runs: {statistics.mean(run['mean_iou_change'] for run in payload['runs']):+.5f}.",
        "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="*", type=Path, help="saved ProtoSeg run folders")
    parser.add_argument("--preset", default="camvid")
    parser.add_argument("--dataset_name")
    parser.add_argument("--report_only", action="store_true", help="rebuild the .md from the JSON")
    parser.add_argument("--split", default="test")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=RESULTS_DIR)
    parser.add_argument("--note", default="", help="where the folders' models come from (written into the results)")
    args = parser.parse_args()
    if args.report_only:
        payload = json.loads((args.output / f"{RESULTS_NAME}.json").read_text())
        (args.output / f"{RESULTS_NAME}.md").write_text(report(payload))
        return
    if not args.folders or not args.dataset_name:
        parser.error("give the run folders and --dataset_name (or --report_only)")
    set_threads(args.threads)
    machine = machine_description(torch.device("cpu"))
    dataset_flags = {"preset": args.preset, "dataset_name": args.dataset_name}
    runs = [compare_folder(folder, dataset_flags, args.split) for folder in args.folders]
    payload = {"machine": machine, "note": args.note, "tolerance": MIOU_TOLERANCE, "runs": runs}
    write_json(args.output / f"{RESULTS_NAME}.json", payload)
    (args.output / f"{RESULTS_NAME}.md").write_text(report(payload))
    print(report(payload))


if __name__ == "__main__":
    main()
