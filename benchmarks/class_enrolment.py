#!/usr/bin/env python
"""Enrol a held-out class from 1, 5 and 20 labelled images, with no gradient step, on the synthetic data.

    python -m benchmarks.class_enrolment                     # train (~3 min on 2 CPU cores), then measure (~2 min)
    python -m benchmarks.class_enrolment --skip-training     # measure again on the saved held-out checkpoint
    python -m benchmarks.class_enrolment --train-oracle      # also train the all-classes reference if it is missing

1. Train ProtoSeg with `training/train.py` (the synthetic preset's recipe) on the synthetic scenes with one
   class held out: its pixels become the ignore label and it is removed from the class list.
2. For each shot count n and trial t: draw n training scenes that contain the held-out class, call
   `model.add_classes({name: [(image, label == held_out), ...]})` on a copy of the model, and evaluate it on
   the validation scenes with all five classes.
3. Report the new class's IoU, and the old classes' mIoU before/after enrolment, measured two ways:
   "old mIoU (old pixels)": pixels of the held-out class ignored both before and after, i.e. only whether
       enrolment damages the old classes' predictions (pure forgetting);
   "old mIoU (all pixels)": every pixel counts, so before enrolment the held-out class's pixels are
       necessarily false positives of old classes, and enrolment can remove them.
   The default training run (outputs/protoseg-synthetic: the same recipe and seed, every class labelled) gives
   the held-out class's IoU when it is learnt with full supervision, as a reference.

Writes benchmarks/results/class_enrolment.json and .md.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.common import REPO_ROOT, machine_description
from modeling_protoseg import ProtoSegForSemanticSegmentation
from modeling_protoseg.class_enrolment import preprocess_image
from training.metrics import ConfusionMatrix
from training.synthetic import SYNTHETIC_CLASS_NAMES, synthetic_splits

IGNORE_INDEX = 255


# ----------------------------------------------------------------------------------------------
# 1. Training with one class held out (training.train.run on the synthetic sources, labels remapped)


def held_out_label_maps(held_out: int) -> tuple[np.ndarray, dict[int, str]]:
    """(lookup original class -> training class (held-out -> ignore), training id2label)."""
    kept = [index for index in range(len(SYNTHETIC_CLASS_NAMES)) if index != held_out]
    lookup = np.full(256, IGNORE_INDEX, dtype=np.int64)
    for new_index, old_index in enumerate(kept):
        lookup[old_index] = new_index
    return lookup, {new_index: SYNTHETIC_CLASS_NAMES[old_index] for new_index, old_index in enumerate(kept)}


class HeldOutLabels:
    """A sample source whose labels go through `lookup` (the held-out class -> ignore, the others renumbered)."""

    def __init__(self, source: Any, lookup: np.ndarray) -> None:
        self.source, self.lookup = source, lookup
        self.split_name = getattr(source, "split_name", "")

    def __len__(self) -> int:
        return len(self.source)

    def load(self, index: int) -> tuple[Any, Any, str]:
        image, label, name = self.source.load(index)
        return image, self.lookup[np.asarray(label)].astype(np.uint8), name


def train_without_class(held_out: int | None, output_dir: Path, extra_arguments: list[str]) -> Any:
    """Train with `training.train.run` on the synthetic preset with `held_out`'s pixels ignored
    (`held_out=None`: every class, the same recipe, for the reference model)."""
    import dataclasses
    import logging

    from training.config import parse_config
    from training.sources import load_dataset_splits
    from training.train import run

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    argv = ["--preset", "synthetic", "--output_dir", str(output_dir), "--overwrite_output_dir", "--report_to", "none",
            *extra_arguments]  # retraining replaces an earlier run in output_dir on purpose
    config = parse_config(argv)
    if held_out is None:
        return run(config)
    lookup, id2label = held_out_label_maps(held_out)
    splits = load_dataset_splits(config.data, seed=config.runtime.seed)
    held_out_splits = dataclasses.replace(
        splits,
        train=HeldOutLabels(splits.train, lookup),
        validation=HeldOutLabels(splits.validation, lookup),
        id2label=id2label,
    )
    return run(config, datasets=held_out_splits)


# ----------------------------------------------------------------------------------------------
# 2. Evaluation with the original five classes


@torch.no_grad()
def predict(
    model: ProtoSegForSemanticSegmentation,
    images: list[np.ndarray],
    image_processor: Any,
    *,
    num_classes: int | None = None,
) -> torch.Tensor:
    """(N, H, W) predicted class indices of the model's own class list, at the images' size; with
    `num_classes`, the argmax over the first `num_classes` logits only."""
    predictions = []
    for start in range(0, len(images), 25):
        batch = images[start : start + 25]
        pixel_values = torch.cat([preprocess_image(image, image_processor=image_processor) for image in batch])
        logits = model(pixel_values=pixel_values).logits[:, :num_classes]
        logits = F.interpolate(logits, size=batch[0].shape[:2], mode="bilinear", align_corners=False)
        predictions.append(logits.argmax(dim=1))
    return torch.cat(predictions)


def to_original_ids(model: ProtoSegForSemanticSegmentation) -> torch.Tensor:
    """Lookup: the model's class index -> the synthetic dataset's class index, by name."""
    return torch.tensor(
        [SYNTHETIC_CLASS_NAMES.index(model.config.id2label[index]) for index in range(model.config.num_labels)]
    )


def evaluate(
    model: ProtoSegForSemanticSegmentation,
    images: list[np.ndarray],
    labels: torch.Tensor,
    held_out: int,
    image_processor: Any,
    *,
    num_classes: int | None = None,
) -> dict[str, Any]:
    """IoUs in the synthetic class space: the held-out class's IoU and the old classes' mIoU, both ways.
    `num_classes`: predict with the first `num_classes` classes only (see `predict`)."""
    predictions = predict(model, images, image_processor, num_classes=num_classes)
    predictions = to_original_ids(model)[predictions]  # (N, H, W)
    num_classes = len(SYNTHETIC_CLASS_NAMES)
    old = [index for index in range(num_classes) if index != held_out]
    all_pixels = ConfusionMatrix(num_classes, ignore_index=IGNORE_INDEX)
    all_pixels.update(predictions, labels)
    old_pixels = ConfusionMatrix(num_classes, ignore_index=IGNORE_INDEX)
    old_pixels.update(predictions, labels.masked_fill(labels == held_out, IGNORE_INDEX))
    held_out_pixels = predictions[labels == held_out]
    predicted_as = torch.bincount(held_out_pixels, minlength=num_classes).double() / max(held_out_pixels.numel(), 1)
    iou_all = all_pixels.compute()["per_category_iou"]
    iou_old_pixels = old_pixels.compute()["per_category_iou"]
    return {
        "new_class_iou": iou_all[held_out],  # 0 before enrolment: the class is never predicted
        "old_miou_old_pixels": float(np.mean([iou_old_pixels[index] for index in old])),
        "old_miou_all_pixels": float(np.mean([iou_all[index] for index in old])),
        "per_class_iou_all_pixels": {SYNTHETIC_CLASS_NAMES[index]: iou_all[index] for index in range(num_classes)},
        "held_out_pixels_predicted_as": {
            SYNTHETIC_CLASS_NAMES[index]: float(predicted_as[index]) for index in range(num_classes)
        },
    }


# ----------------------------------------------------------------------------------------------
# 3. The experiment


def scene_size(image_processor: Any) -> int:
    """The side of the synthetic scenes a checkpoint was trained on: its processor's resize size (saved
    processors resize the short side, `{"shortest_edge": n}`; older ones saved `{"height": n, "width": n}`)."""
    size = image_processor.size
    side = size.get("shortest_edge") or size.get("height")
    if side is None:
        raise ValueError(f"the checkpoint's image processor has no resize size ({size}): cannot tell the scene size")
    return int(side)


def enrolment_pool(
    scenes: Any, held_out: int, *, pool_size: int, min_pixels: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The first `pool_size` training scenes with at least `min_pixels` of the held-out class: (image, mask)."""
    pool = []
    for index in range(len(scenes)):
        image, label = scenes.generate(index)
        mask = label == held_out
        if mask.sum() >= min_pixels:
            pool.append((image, mask))
            if len(pool) == pool_size:
                break
    return pool


def summarise(values: list[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(array.mean()),
        "std": float(array.std()),
        "min": float(array.min()),
        "max": float(array.max()),
    }


def run_held_out_class(args: argparse.Namespace, class_name: str) -> dict[str, Any]:
    """Train without `class_name` (unless --skip-training), enrol it n shots x trials times, evaluate."""
    from transformers import AutoImageProcessor

    held_out = SYNTHETIC_CLASS_NAMES.index(class_name)
    output_dir = Path(args.output_dir.replace("{class}", class_name))
    if not args.skip_training:
        train_without_class(held_out, output_dir, training_arguments(args))

    model = ProtoSegForSemanticSegmentation.from_pretrained(output_dir).eval()
    image_processor = AutoImageProcessor.from_pretrained(output_dir)
    if class_name in model.config.id2label.values():
        raise ValueError(f"{output_dir} already knows the class {class_name!r}: not a held-out checkpoint")
    train_scenes, validation_scenes = synthetic_splits(
        num_train=10_000, num_validation=args.num_validation, image_size=scene_size(image_processor), seed=args.seed
    )
    validation = [validation_scenes.generate(index) for index in range(len(validation_scenes))]
    images = [image for image, _ in validation]
    labels = torch.from_numpy(np.stack([label for _, label in validation]).astype(np.int64))

    before = evaluate(model, images, labels, held_out, image_processor)
    pool = enrolment_pool(train_scenes, held_out, pool_size=args.pool_size, min_pixels=args.min_pixels)
    rng = np.random.default_rng(0)
    runs: list[dict[str, Any]] = []
    for shots in args.shots:
        for trial in range(args.trials):
            chosen = rng.choice(len(pool), size=shots, replace=False)
            enrolled = copy.deepcopy(model)
            start = time.perf_counter()
            enrolled.add_classes({class_name: [pool[index] for index in chosen]}, image_processor=image_processor)
            enrol_seconds = time.perf_counter() - start
            after = evaluate(enrolled, images, labels, held_out, image_processor)
            # The same enrolled model, its argmax taken over the old classes only: what the LayerNorm over
            # C + 1 class scores alone does to the old classes (the rest of any loss is pixels taken by the new class).
            old_only = evaluate(
                enrolled, images, labels, held_out, image_processor, num_classes=model.config.num_labels
            )
            runs.append(
                {
                    "shots": shots,
                    "trial": trial,
                    "images": [int(index) for index in chosen],
                    "enrol_seconds": enrol_seconds,
                    **after,
                    "old_miou_old_pixels_argmax_over_old_classes": old_only["old_miou_old_pixels"],
                }
            )
            print(
                f"{class_name}: {shots:>2} shots, trial {trial}: new IoU {after['new_class_iou']:.4f}, old mIoU "
                f"(old pixels) {after['old_miou_old_pixels']:.4f}, (all pixels) {after['old_miou_all_pixels']:.4f}",
                flush=True,
            )

    oracle = None
    if args.oracle_checkpoint and Path(args.oracle_checkpoint, "config.json").is_file():
        oracle_model = ProtoSegForSemanticSegmentation.from_pretrained(args.oracle_checkpoint).eval()
        oracle = {
            "checkpoint": args.oracle_checkpoint,
            **evaluate(oracle_model, images, labels, held_out, image_processor),
        }

    summary = {
        str(shots): {
            key: summarise([run[key] for run in runs if run["shots"] == shots])
            for key in (
                "new_class_iou",
                "old_miou_old_pixels",
                "old_miou_all_pixels",
                "old_miou_old_pixels_argmax_over_old_classes",
                "enrol_seconds",
            )
        }
        for shots in args.shots
    }
    train_results_path = output_dir / "train_results.json"
    return {
        "held_out_class": class_name,
        "checkpoint": str(output_dir),
        "train_results": json.loads(train_results_path.read_text()) if train_results_path.is_file() else None,
        "num_prototypes_per_class": model.config.num_prototypes_per_class,
        "class_score_norm": model.config.class_score_norm,
        "validation_scenes": len(images),
        "pool_size": len(pool),
        "trials": args.trials,
        "before": before,
        "summary": summary,
        "oracle": oracle,
        "runs": runs,
    }


def write_example_figure(experiment: dict[str, Any], args: argparse.Namespace, path: Path, *, shots: int = 5) -> Path:
    """Image | ground truth | held-out model | after enrolling from the first `shots`-image draw, on the
    validation scene with the most pixels of the held-out class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from transformers import AutoImageProcessor

    class_name = experiment["held_out_class"]
    held_out = SYNTHETIC_CLASS_NAMES.index(class_name)
    model = ProtoSegForSemanticSegmentation.from_pretrained(experiment["checkpoint"]).eval()
    image_processor = AutoImageProcessor.from_pretrained(experiment["checkpoint"])
    train_scenes, validation_scenes = synthetic_splits(
        num_train=10_000, num_validation=args.num_validation, image_size=scene_size(image_processor), seed=args.seed
    )
    pool = enrolment_pool(train_scenes, held_out, pool_size=args.pool_size, min_pixels=args.min_pixels)
    draw = next(run for run in experiment["runs"] if run["shots"] == shots)
    enrolled = copy.deepcopy(model)
    enrolled.add_classes({class_name: [pool[index] for index in draw["images"]]}, image_processor=image_processor)
    scenes = [validation_scenes.generate(index) for index in range(len(validation_scenes))]
    image, label = max(scenes, key=lambda scene: int((scene[1] == held_out).sum()))

    colours = np.asarray(plt.get_cmap("tab10").colors[: len(SYNTHETIC_CLASS_NAMES)])
    panels = [(image / 255.0, "image"), (colours[label], "ground truth")]
    for title, segmenter in (
        (f"trained without '{class_name}'", model),
        (f"+ add_classes from {shots} images", enrolled),
    ):
        prediction = to_original_ids(segmenter)[predict(segmenter, [image], image_processor)][0].numpy()
        panels.append((colours[prediction], title))
    figure, axes = plt.subplots(1, 4, figsize=(9.6, 3.0), dpi=100)
    for axis, (picture, title) in zip(axes, panels):
        axis.imshow(picture, interpolation="nearest")
        axis.set_title(title, fontsize=9)
        axis.axis("off")
    handles = [
        plt.Rectangle((0, 0), 1, 1, color=colours[index], label=name)
        for index, name in enumerate(SYNTHETIC_CLASS_NAMES)
    ]
    figure.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    figure.subplots_adjust(left=0.01, right=0.99, top=0.9, bottom=0.12, wspace=0.05)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


def training_arguments(args: argparse.Namespace) -> list[str]:
    """training/train.py flags: the preset's recipe and seed, no intermediate evaluation or resumable
    checkpoints (flags given in --train-arguments come later and win)."""
    steps = ["--max_steps", str(args.max_steps)] if args.max_steps else []
    return ["--seed", str(args.seed), "--eval_steps", "0", "--checkpointing_steps", "0", *steps, *args.train_arguments]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--held-out-class",
        nargs="+",
        default=["leaf"],
        choices=SYNTHETIC_CLASS_NAMES[1:],
        help="one experiment (and one training run) per class",
    )
    parser.add_argument("--output-dir", default="outputs/protoseg-synthetic-without-{class}")
    parser.add_argument("--skip-training", action="store_true", help="reuse the checkpoints in --output-dir")
    parser.add_argument("--max-steps", type=int, default=None, help="training steps (default: the preset's, 1000)")
    parser.add_argument(
        "--train-arguments",
        nargs=argparse.REMAINDER,
        default=[],
        help="further training/train.py flags, e.g. --num_threads 2 (must come last)",
    )
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5, 20])
    parser.add_argument("--trials", type=int, default=5, help="random draws of the labelled images per shot count")
    parser.add_argument("--pool-size", type=int, default=200, help="training scenes to draw the labelled images from")
    parser.add_argument("--min-pixels", type=int, default=64, help="least held-out pixels for a scene to be drawable")
    parser.add_argument("--num-validation", type=int, default=100, help="validation scenes (as the training run)")
    parser.add_argument(
        "--oracle-checkpoint",
        default="outputs/protoseg-synthetic",
        help="a model trained the same way with every class labelled, for reference (default: the "
        "default training run, `accelerate launch training/train.py`); skipped if absent",
    )
    parser.add_argument(
        "--train-oracle",
        action="store_true",
        help="train that reference model into --oracle-checkpoint first if it does not exist",
    )
    parser.add_argument("--seed", type=int, default=42, help="the training seed (sets the synthetic splits)")
    parser.add_argument("--results", default=str(REPO_ROOT / "benchmarks" / "results" / "class_enrolment"))
    parser.add_argument(
        "--example-figure",
        default=None,
        help="also write a before/after PNG for the first held-out class (needs matplotlib)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)))

    start = time.perf_counter()
    if args.train_oracle and not Path(args.oracle_checkpoint, "config.json").is_file():
        train_without_class(None, Path(args.oracle_checkpoint), training_arguments(args))
    experiments = [run_held_out_class(args, class_name) for class_name in args.held_out_class]
    results = {
        "experiments": experiments,
        "total_seconds": time.perf_counter() - start,
        "hardware": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores",
        "command": " ".join(["python -m benchmarks.class_enrolment", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine_description(torch.device("cpu")),  # its command, commit and date index the result
    }
    if args.example_figure:
        print("example figure:", write_example_figure(experiments[0], args, Path(args.example_figure)))
    results_path = Path(args.results)
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.with_suffix(".json").write_text(json.dumps(results, indent=2))
    report = markdown_report(results)
    results_path.with_suffix(".md").write_text(report)
    print(report)
    return results


def experiment_report(results: dict[str, Any]) -> list[str]:
    """The Markdown section of one held-out class."""
    name = results["held_out_class"]
    before = results["before"]
    steps = (results.get("train_results") or {}).get("global_step", "?")
    lines = [
        f"## Held-out class `{name}`",
        "",
        (
            f"ProtoSeg trained on the synthetic scenes with `{name}` ignored ({steps} steps of the `synthetic` preset's "
            f"recipe, checkpoint `{results['checkpoint']}`), then "
            f"`model.add_classes` from n labelled training scenes (no gradient step; K = {results['num_prototypes_per_class']} "
            f"prototypes from Sinkhorn clustering). Validation: {results['validation_scenes']} scenes, all 5 classes. "
            f"Mean ± std over {results['trials']} random draws of the n scenes (from {results['pool_size']} scenes that "
            "contain the class). IoU in %."
        ),
        "",
        f"| labelled images | IoU `{name}` | old-class mIoU, old pixels (before → after) | old-class mIoU, all pixels (before → after) | enrol time (s) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for shots, summary in results["summary"].items():
        new, old, every = summary["new_class_iou"], summary["old_miou_old_pixels"], summary["old_miou_all_pixels"]
        lines.append(
            f"| {shots} | {100 * new['mean']:.1f} ± {100 * new['std']:.1f} | "
            f"{100 * before['old_miou_old_pixels']:.1f} → {100 * old['mean']:.1f} ± {100 * old['std']:.1f} "
            f"({100 * (old['mean'] - before['old_miou_old_pixels']):+.1f}) | "
            f"{100 * before['old_miou_all_pixels']:.1f} → {100 * every['mean']:.1f} ± {100 * every['std']:.1f} "
            f"({100 * (every['mean'] - before['old_miou_all_pixels']):+.1f}) | {summary['enrol_seconds']['mean']:.2f} |"
        )
    lines += [
        "",
        (
            "- *old pixels*: the held-out class's pixels are ignored before and after, so the column shows only what "
            "enrolment costs the old classes (forgetting)."
        ),
        (
            "- *all pixels*: every pixel counts; before enrolment the held-out pixels are necessarily false positives "
            "of old classes."
        ),
    ]
    absorbed = sorted(before["held_out_pixels_predicted_as"].items(), key=lambda item: -item[1])
    lines.append(
        f"- Before enrolment the `{name}` pixels are predicted as "
        + ", ".join(f"{label} {100 * share:.0f}%" for label, share in absorbed if share >= 0.005)
        + ": the network, which never had to tell them apart, embeds them next to those classes."
    )
    shifts = [
        summary["old_miou_old_pixels_argmax_over_old_classes"]["mean"] - before["old_miou_old_pixels"]
        for summary in results["summary"].values()
    ]
    lines.append(
        "- Where the old classes' loss comes from: taking the enrolled model's argmax over the old classes only "
        f"(so only the class-score normalisation, `{results.get('class_score_norm', 'layer_norm')}`, over C + 1 scores "
        "differs from before) changes their mIoU by "
        f"{', '.join(f'{100 * shift:+.2f}' for shift in shifts)} points ({', '.join(results['summary'])} images): the "
        "loss is old-class pixels now predicted as the new class, not the re-normalisation of the class scores."
    )
    if results.get("oracle"):
        oracle = results["oracle"]
        lines.append(
            f"- Reference: `{oracle['checkpoint']}`, trained the same way but with every class labelled, has IoU `{name}` "
            f"{100 * oracle['per_class_iou_all_pixels'][name]:.1f} and old-class mIoU (all pixels) "
            f"{100 * oracle['old_miou_all_pixels']:.1f}."
        )
    train_seconds = (results.get("train_results") or {}).get("train_runtime_seconds")
    if train_seconds:
        lines.append(f"- Training the held-out model took {train_seconds / 60:.1f} min.")
    return lines + [""]


def markdown_report(results: dict[str, Any]) -> str:
    lines = ["# Enrolling a held-out class without retraining", ""]
    for experiment in results["experiments"]:
        lines += experiment_report(experiment)
    lines += [
        (
            f"Command: `{results['command']}` ({results['total_seconds'] / 60:.1f} min in all, {results['hardware']}, "
            "a machine shared with other jobs). Add `--train-oracle` to train the all-classes reference too if "
            "`outputs/protoseg-synthetic` is missing."
        ),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
