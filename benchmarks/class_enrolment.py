#!/usr/bin/env python
"""Enrol a held-out class from 1, 5 and 20 labelled images, with no gradient step, on the synthetic data.

    python benchmarks/class_enrolment.py                     # train (400 steps, ~8 min on 2 CPU cores), then measure
    python benchmarks/class_enrolment.py --train-oracle      # also train the same model with every class, for reference
    python benchmarks/class_enrolment.py --skip-training --oracle-checkpoint outputs/protoseg-synthetic-all-classes

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
   With `--oracle-checkpoint` (e.g. the default run outputs/protoseg-synthetic, trained with every class
   labelled), the held-out class's IoU of that model is given as a reference.

Writes benchmarks/results/class_enrolment.json and .md.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from modeling_protoseg import ProtoSegForSemanticSegmentation  # noqa: E402
from modeling_protoseg.class_enrolment import preprocess_image  # noqa: E402
from training.metrics import ConfusionMatrix  # noqa: E402
from training.synthetic import SYNTHETIC_CLASS_NAMES, synthetic_splits  # noqa: E402

IGNORE_INDEX = 255


# ----------------------------------------------------------------------------------------------
# 1. Training with one class held out (training/train.py, its synthetic source patched)


def held_out_label_maps(held_out: int) -> tuple[np.ndarray, dict[int, str]]:
    """(lookup original class -> training class (held-out -> ignore), training id2label)."""
    kept = [index for index in range(len(SYNTHETIC_CLASS_NAMES)) if index != held_out]
    lookup = np.full(256, IGNORE_INDEX, dtype=np.int64)
    for new_index, old_index in enumerate(kept):
        lookup[old_index] = new_index
    return lookup, {new_index: SYNTHETIC_CLASS_NAMES[old_index] for new_index, old_index in enumerate(kept)}


def train_without_class(held_out: int | None, output_dir: Path, extra_arguments: list[str]) -> dict[str, Any]:
    """Run training/train.py's `main` on the synthetic preset with `held_out`'s pixels ignored
    (`held_out=None`: every class, the same recipe, for the reference model)."""
    from training import train as train_module
    from training.data import SyntheticSource

    argv = ["--preset", "synthetic", "--output_dir", str(output_dir), "--report_to", "none", *extra_arguments]
    if held_out is None:
        return train_module.main(argv)

    lookup, id2label = held_out_label_maps(held_out)

    class HeldOutSyntheticSource(SyntheticSource):
        def load(self, index: int) -> tuple[Any, Any, str]:
            image, label, name = super().load(index)
            return image, lookup[label].astype(np.uint8), name

    with mock.patch.object(train_module, "SyntheticSource", HeldOutSyntheticSource), mock.patch.object(
        train_module, "SYNTHETIC_CLASS_NAMES", tuple(id2label.values())
    ):
        return train_module.main(argv)


# ----------------------------------------------------------------------------------------------
# 2. Evaluation with the original five classes


@torch.no_grad()
def predict(
    model: ProtoSegForSemanticSegmentation, images: list[np.ndarray], image_processor: Any, *, num_classes: int | None = None
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
    return torch.tensor([SYNTHETIC_CLASS_NAMES.index(model.config.id2label[index]) for index in range(model.config.num_labels)])


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
    iou_all = all_pixels.compute()["per_category_iou"]
    iou_old_pixels = old_pixels.compute()["per_category_iou"]
    return {
        "new_class_iou": iou_all[held_out],  # 0 before enrolment: the class is never predicted
        "old_miou_old_pixels": float(np.mean([iou_old_pixels[index] for index in old])),
        "old_miou_all_pixels": float(np.mean([iou_all[index] for index in old])),
        "per_class_iou_all_pixels": {SYNTHETIC_CLASS_NAMES[index]: iou_all[index] for index in range(num_classes)},
    }


# ----------------------------------------------------------------------------------------------
# 3. The experiment


def enrolment_pool(scenes: Any, held_out: int, *, pool_size: int, min_pixels: int) -> list[tuple[np.ndarray, np.ndarray]]:
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
    return {"mean": float(array.mean()), "std": float(array.std()), "min": float(array.min()), "max": float(array.max())}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--held-out-class", default="leaf", choices=SYNTHETIC_CLASS_NAMES[1:])
    parser.add_argument("--output-dir", default="outputs/protoseg-synthetic-without-{class}")
    parser.add_argument("--skip-training", action="store_true", help="reuse the checkpoint in --output-dir")
    parser.add_argument("--max-steps", type=int, default=400,
                        help="training steps (the synthetic preset's own 1000 take ~30 min on 2 shared CPU cores)")  # fmt: skip
    parser.add_argument("--train-arguments", nargs=argparse.REMAINDER, default=[],
                        help="further training/train.py flags, e.g. --num_threads 2")  # fmt: skip
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5, 20])
    parser.add_argument("--trials", type=int, default=5, help="random draws of the labelled images per shot count")
    parser.add_argument("--pool-size", type=int, default=200, help="training scenes to draw the labelled images from")
    parser.add_argument("--min-pixels", type=int, default=64, help="least held-out pixels for a scene to be drawable")
    parser.add_argument("--num-validation", type=int, default=100, help="validation scenes (as the training run)")
    parser.add_argument("--oracle-checkpoint", default=None, help="a model trained with every class, for reference")
    parser.add_argument("--train-oracle", action="store_true",
                        help="train that reference model first, with the same recipe, into --oracle-checkpoint "
                        "(default outputs/protoseg-synthetic-all-classes)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=42, help="the training seed (sets the synthetic splits)")
    parser.add_argument("--results", default=str(REPO_ROOT / "benchmarks" / "results" / "class_enrolment"))
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)))

    held_out = SYNTHETIC_CLASS_NAMES.index(args.held_out_class)
    output_dir = Path(args.output_dir.replace("{class}", args.held_out_class))
    training_seconds = None
    # No intermediate evaluation or resumable checkpoints (flags given in --train-arguments come later and win).
    extra = ["--seed", str(args.seed), "--max_steps", str(args.max_steps), "--eval_steps", "0", "--checkpointing_steps", "0",
             *args.train_arguments]  # fmt: skip
    if not args.skip_training:
        start = time.perf_counter()
        train_without_class(held_out, output_dir, extra)
        training_seconds = time.perf_counter() - start
    if args.train_oracle:
        args.oracle_checkpoint = args.oracle_checkpoint or "outputs/protoseg-synthetic-all-classes"
        train_without_class(None, Path(args.oracle_checkpoint), extra)

    from transformers import AutoImageProcessor

    model = ProtoSegForSemanticSegmentation.from_pretrained(output_dir).eval()
    image_processor = AutoImageProcessor.from_pretrained(output_dir)
    assert args.held_out_class not in model.config.id2label.values(), "the checkpoint already knows the class"
    train_scenes, validation_scenes = synthetic_splits(
        num_train=10_000, num_validation=args.num_validation, image_size=image_processor.size["height"], seed=args.seed
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
            enrolled.add_classes({args.held_out_class: [pool[index] for index in chosen]}, image_processor=image_processor)
            enrol_seconds = time.perf_counter() - start
            after = evaluate(enrolled, images, labels, held_out, image_processor)
            # The same enrolled model, its argmax taken over the old classes only: what the LayerNorm over
            # C + 1 class scores alone does to the old classes (the rest of any loss is pixels taken by the new class).
            old_only = evaluate(enrolled, images, labels, held_out, image_processor, num_classes=model.config.num_labels)
            runs.append({"shots": shots, "trial": trial, "images": [int(index) for index in chosen],
                         "enrol_seconds": enrol_seconds, **after,
                         "old_miou_old_pixels_argmax_over_old_classes": old_only["old_miou_old_pixels"]})  # fmt: skip
            print(f"{shots:>2} shots, trial {trial}: new IoU {after['new_class_iou']:.4f}, old mIoU (old pixels) "
                  f"{after['old_miou_old_pixels']:.4f}, (all pixels) {after['old_miou_all_pixels']:.4f}", flush=True)  # fmt: skip

    oracle = None
    if args.oracle_checkpoint and Path(args.oracle_checkpoint, "config.json").is_file():
        oracle_model = ProtoSegForSemanticSegmentation.from_pretrained(args.oracle_checkpoint).eval()
        oracle = {"checkpoint": args.oracle_checkpoint, **evaluate(oracle_model, images, labels, held_out, image_processor)}

    summary = {
        str(shots): {
            key: summarise([run[key] for run in runs if run["shots"] == shots])
            for key in ("new_class_iou", "old_miou_old_pixels", "old_miou_all_pixels",
                        "old_miou_old_pixels_argmax_over_old_classes", "enrol_seconds")  # fmt: skip
        }
        for shots in args.shots
    }
    results = {
        "held_out_class": args.held_out_class,
        "checkpoint": str(output_dir),
        "training_seconds": training_seconds,
        "train_results": json.loads((output_dir / "train_results.json").read_text()) if (output_dir / "train_results.json").is_file() else None,
        "num_prototypes_per_class": model.config.num_prototypes_per_class,
        "validation_scenes": len(images),
        "pool_size": len(pool),
        "trials": args.trials,
        "before": before,
        "summary": summary,
        "oracle": oracle,
        "runs": runs,
        "hardware": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "command": " ".join(["python benchmarks/class_enrolment.py", *(argv if argv is not None else sys.argv[1:])]),
    }
    results_path = Path(args.results)
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.with_suffix(".json").write_text(json.dumps(results, indent=2))
    results_path.with_suffix(".md").write_text(markdown_report(results))
    print(markdown_report(results))
    return results


def markdown_report(results: dict[str, Any]) -> str:
    name = results["held_out_class"]
    before = results["before"]
    steps = (results.get("train_results") or {}).get("global_step", "?")
    lines = [
        f"# Enrolling a held-out class without retraining: `{name}`",
        "",
        f"ProtoSeg trained on the synthetic scenes with `{name}` ignored ({steps} steps of the `synthetic` preset's "
        f"recipe, checkpoint `{results['checkpoint']}`), then "
        f"`model.add_classes` from n labelled training scenes (no gradient step; K = {results['num_prototypes_per_class']} "
        f"prototypes from Sinkhorn clustering). Validation: {results['validation_scenes']} scenes, all 5 classes. "
        f"Mean ± std over {results['trials']} random draws of the n scenes (from {results['pool_size']} scenes that "
        "contain the class). IoU in %.",
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
        "- *old pixels*: the held-out class's pixels are ignored before and after, so the column shows only what "
        "enrolment costs the old classes (forgetting).",
        "- *all pixels*: every pixel counts; before enrolment the held-out pixels are necessarily false positives "
        "of old classes.",
    ]
    shifts = [summary["old_miou_old_pixels_argmax_over_old_classes"]["mean"] - before["old_miou_old_pixels"]
              for summary in results["summary"].values()]  # fmt: skip
    lines.append(
        "- Where the old classes' loss comes from: taking the enrolled model's argmax over the old classes only "
        f"(so only the LayerNorm over C + 1 scores differs from before) changes their mIoU by "
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
        lines.append(f"- Training the held-out model took {train_seconds / 60:.1f} min ({results['hardware']}, shared machine).")
    lines += [
        "",
        f"Command: `{results['command']}`. From scratch (both trainings, then the measurements): "
        "`python benchmarks/class_enrolment.py --train-oracle --train-arguments --dataloader_num_workers 1 --num_threads 2`.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
