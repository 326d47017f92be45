"""The end of a run: results files, training summary, image processor, model card, and the Hub upload.

<output_dir>/
  model.safetensors, config.json (+ modeling code)   save_pretrained
  preprocessor_config.json                           the image processor evaluation used
  evaluation_config.json                             how the run evaluated (mode, windows): `EvaluationSetup`
  eval_results.json [test_results.json]              `results_json`
  train_results.json                                 runtime, throughput, divergence across processes
  README.md, training_summary.json                   `model_cards.write_model_card`
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn
from transformers import SegformerImageProcessorPil

from model_cards.redaction import publishable_command, publishable_path
from modeling_protoseg.transformers_requirement import MINIMUM_TRANSFORMERS_VERSION
from training.config import TrainingConfig
from training.evaluation import EvaluationSetup


def results_json(
    metrics: dict[str, Any],
    id2label: dict[int, str],
    *,
    eval_mode: str,
    split: str,
    dataset: str | None,
    prototype_health: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`evaluate`'s metrics as eval_results.json holds them: per-class values by name, NaN -> null; for
    ProtoSeg also the model's `prototype_health` (`prototype_health_json`)."""

    def by_name(values: list[float]) -> dict[str, float | None]:
        return {id2label[index]: (None if math.isnan(value) else value) for index, value in enumerate(values)}

    return {
        "mean_iou": metrics["mean_iou"],
        "mean_accuracy": metrics["mean_accuracy"],
        "overall_accuracy": metrics["overall_accuracy"],
        "per_category_iou": by_name(metrics["per_category_iou"]),
        "per_category_accuracy": by_name(metrics["per_category_accuracy"]),
        "eval_mode": eval_mode,
        **({"whole_image_mean_iou": metrics["whole_image_mean_iou"]} if "whole_image_mean_iou" in metrics else {}),
        "eval_split": split,
        "num_samples": metrics["num_samples"],
        "dataset": publishable_path(dataset),
        **({"prototype_health": prototype_health} if prototype_health is not None else {}),
    }


def prototype_health_json(model: nn.Module) -> dict[str, Any] | None:
    """A ProtoSeg model's prototype health as `eval_results.json` holds it (`model_cards.PrototypeHealth`
    fields); None for models without prototypes."""
    if not hasattr(model, "prototype_health"):
        return None
    health = model.prototype_health()
    return {
        "num_prototypes": health["num_prototypes"],
        "dead_prototypes": health["dead_prototypes"],
        "never_updated_prototypes": health["never_updated_prototypes"],
        "within_class_cosine": health["within_class_cosine"],
        "dead_after_steps": model.config.dead_prototype_patience,
        "skipped_nonfinite_updates": health["skipped_nonfinite_updates"],
    }


def hardware_description(accelerator: Accelerator) -> str:
    """E.g. "1 x cpu (Intel(R) Xeon(R) ..., 2 threads per process)" or "2 x NVIDIA H100 80GB HBM3"."""
    if accelerator.device.type == "cuda":
        return f"{accelerator.num_processes} x {torch.cuda.get_device_name(accelerator.device)}"
    cpu_name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_name = line.split(":", 1)[1].strip()
                break
    return (
        f"{accelerator.num_processes} x {accelerator.device.type} ({cpu_name}; {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} threads per process)"
    )


# ProtoSeg knobs the model card lists (the others are in config.json).
SUMMARY_METHOD_KNOBS = ("num_prototypes_per_class", "prototype_momentum", "ppc_loss_weight", "ppd_loss_weight")


def training_summary(
    config: TrainingConfig,
    *,
    dataset: str | None,
    dataset_id: str | None,
    num_train_images: int,
    eval_split: str,
    num_labels: int,
    encoder_pretrained: bool,
    global_batch_size: int,
    num_processes: int,
    hardware: str,
    train_runtime_seconds: float,
    mixed_precision: str | None = None,
) -> dict[str, Any]:
    """The facts of a run that the model card shows (`training_summary.json`); each value under one key,
    named as `model_cards` reads it. `mixed_precision`: the precision the run used (the flag's, else the
    launcher's)."""
    optimization = config.optimization
    method = (
        {name: getattr(config.method, name) for name in SUMMARY_METHOD_KNOBS} if config.model.head == "protoseg" else {}
    )
    return {
        "model_name": config.output.hub_model_id or Path(config.output.output_dir).name,
        "head": config.model.head,
        "encoder_name": publishable_path(config.model.encoder),
        "encoder_pretrained": encoder_pretrained,
        "dataset": publishable_path(dataset),
        "dataset_id": publishable_path(dataset_id),
        "preset": config.data.preset,
        "train_split": config.data.train_split,
        "num_train_images": num_train_images,
        "eval_split": eval_split,
        "eval_mode": config.evaluation.eval_mode,
        "num_labels": num_labels,
        "max_steps": optimization.max_steps,
        "optimizer": optimization.optimizer,
        "learning_rate": optimization.learning_rate,
        "weight_decay": optimization.weight_decay,
        "lr_schedule": f"poly (power {optimization.poly_power}), {optimization.warmup_steps} linear warm-up steps",
        "global_batch_size": global_batch_size,
        "per_device_batch_size": optimization.per_device_train_batch_size,
        "crop_size": list(config.augmentation.crop_size),
        "pixel_contrast": pixel_contrast_description(config),
        **method,
        "seed": config.runtime.seed,
        "mixed_precision": mixed_precision or config.runtime.mixed_precision or "no",
        "num_processes": num_processes,
        "hardware": hardware,
        "train_runtime_seconds": train_runtime_seconds,
        "command": publishable_command(sys.argv, working_directory=os.getcwd()),  # no token, no local path
    }


def pixel_contrast_description(config: TrainingConfig) -> str | None:
    """One line for the card when the run added ContrastiveSeg's loss (None otherwise)."""
    contrast = config.contrast
    if not contrast.pixel_contrast:
        return None
    memory = (
        f"memory {contrast.pixel_contrast_segment_memory} segments + {contrast.pixel_contrast_pixel_memory} pixels "
        "per class"
        if contrast.pixel_contrast_segment_memory or contrast.pixel_contrast_pixel_memory
        else "no memory"
    )
    return (
        f"ContrastiveSeg loss, weight {contrast.pixel_contrast_weight}, temperature "
        f"{contrast.pixel_contrast_temperature}, {contrast.pixel_contrast_max_anchors} anchors (at most "
        f"{contrast.pixel_contrast_max_views} per image and class), {memory}"
    )


def write_minimal_card(folder: Path, summary: dict[str, Any], eval_results: dict[str, Any]) -> None:
    """Fallback model card, used only when the `model_cards` package is not importable."""
    per_class = eval_results["per_category_iou"]
    rows = "\n".join(f"| {name} | {'n/a' if value is None else f'{value:.4f}'} |" for name, value in per_class.items())
    method = (
        'ProtoSeg, "Rethinking Semantic Segmentation: A Prototype View", CVPR 2022'
        if summary["head"] == "protoseg"
        else "the linear SegFormer baseline"
    )
    schedule = (
        f"{summary['max_steps']} steps, {summary['optimizer']} lr {summary['learning_rate']}, "
        f"global batch {summary['global_batch_size']}, crop {summary['crop_size']}"
    )
    requirement = (  # the saved model code checks this version when it is imported
        f"\nThe model code saved beside the weights needs `transformers` >= {MINIMUM_TRANSFORMERS_VERSION}.\n"
        if (folder / "transformers_requirement.py").is_file()
        else ""
    )
    card = f"""---
library_name: transformers
pipeline_tag: image-segmentation
tags: [protoseg, semantic-segmentation]
---
# {summary["model_name"]}

A semantic segmentation model ({method}) trained with `training/train.py`.

- Encoder: `{summary["encoder_name"]}`; dataset: `{summary["dataset"]}` ({summary["num_labels"]} classes)
- {schedule}
- Trained on {summary["hardware"]} in {summary["train_runtime_seconds"]:.0f} s

## Evaluation ({eval_results["eval_mode"]}, split `{eval_results["eval_split"]}`, {eval_results["num_samples"]} images)

mIoU **{eval_results["mean_iou"]:.4f}**, pixel accuracy {eval_results["overall_accuracy"]:.4f}.

| class | IoU |
|---|---|
{rows}

## Use

```python
from transformers import pipeline

segmenter = pipeline("image-segmentation", model="{summary["model_name"]}", trust_remote_code=True)
```
{requirement}"""
    (folder / "README.md").write_text(card)


def save_trained_model(
    model: nn.Module,
    *,
    output_dir: str | os.PathLike,
    image_processor: SegformerImageProcessorPil,
    evaluation_setup: EvaluationSetup | None = None,
) -> Path:
    """Write the trained model and its image processor (and how the run evaluates it) into `output_dir` before
    the final evaluation, so a fault there (or in the card, the results or the upload) never loses the weights;
    `export_final_model` later replaces them with the same files plus results and card. Staged and moved file by
    file, as that does."""
    output_dir = Path(output_dir)
    staging = _staged_model(model, image_processor, output_dir / ".tmp-trained", evaluation_setup)
    return _move_into(staging, output_dir)


def _staged_model(
    model: nn.Module,
    image_processor: SegformerImageProcessorPil,
    staging: Path,
    evaluation_setup: EvaluationSetup | None = None,
) -> Path:
    """A fresh staging folder holding the saved model, image processor and `evaluation_config.json`."""
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    model.save_pretrained(staging)
    image_processor.save_pretrained(staging)
    if evaluation_setup is not None:
        evaluation_setup.save(staging)
    return staging


def _move_into(staging: Path, output_dir: Path) -> Path:
    """Move every file of `staging` to the same place under `output_dir` (each an atomic rename), then remove it."""
    for written in sorted(staging.rglob("*")):
        if written.is_file():
            target = output_dir / written.relative_to(staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(written, target)
    shutil.rmtree(staging, ignore_errors=True)
    return output_dir


def export_final_model(
    model: nn.Module,
    *,
    output_dir: str | os.PathLike,
    image_processor: SegformerImageProcessorPil,
    results: dict[str, dict[str, Any]],
    summary: dict[str, Any],
    hub_model_id: str | None = None,
    evaluation_setup: EvaluationSetup | None = None,
) -> Path:
    """Write model + image processor + `results` (file name -> JSON) + model card (+ `evaluation_config.json`,
    how the run evaluated, for `python -m training.evaluate`) into `output_dir`.

    Everything is written to a temporary folder first and then moved file by file, so a crash never
    leaves a half-written `model.safetensors` under its final name."""
    output_dir = Path(output_dir)
    staging = _staged_model(model, image_processor, output_dir / ".tmp-final", evaluation_setup)
    for file_name, values in results.items():
        (staging / file_name).write_text(json.dumps(values, indent=2))
    try:
        import model_cards
    except ImportError:
        model_cards = None
    if model_cards is not None and hasattr(model_cards, "write_model_card"):
        model_cards.write_model_card(staging, summary, repo_id=hub_model_id)
    else:
        write_minimal_card(staging, summary, results["eval_results.json"])
    return _move_into(staging, output_dir)


def push_folder_to_hub(folder: Path, *, repo_id: str, token: str | None, private: bool) -> None:
    """Upload the final folder with its model card through `model_cards.publish_folder`."""
    try:
        from model_cards import publish_folder
    except ImportError as error:
        raise RuntimeError(
            "--push_to_hub needs model_cards.publish_folder, which is not importable; the trained model is "
            f"saved in {folder}; upload it later with model_cards.publish_folder"
        ) from error
    publish_folder(folder, repo_id=repo_id, token=token, private=private)
