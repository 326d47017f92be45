"""Build a small, complete ProtoSeg checkpoint folder as training/train.py leaves it, for card and publish tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import SegformerImageProcessor

from modeling_protoseg import ProtoSegForSemanticSegmentation
from tiny_models import tiny_protoseg_config

CLASS_NAMES = ("sky", "road", "car")
IMAGE_SIZE = 64

# Numbers as training/metrics.py writes them (fractions); mean_iou is the mean of per_category_iou. Written to
# eval_results.json in the package 0.1 layout (`split`, `dataset_name`, per-class lists in class-id order).
EVAL_RESULTS: dict[str, Any] = {
    "mean_iou": (0.8123 + 0.4321 + 0.1257) / 3,
    "mean_accuracy": 0.6034,
    "overall_accuracy": 0.9012,
    "per_category_iou": [0.8123, 0.4321, 0.1257],
    "per_category_accuracy": [0.9511, 0.6489, 0.2102],
    "dataset_name": "camvid",
    "split": "validation",
}

# A training summary in today's layout (`model_cards.TrainingSummary` fields).
TRAINING_SUMMARY: dict[str, Any] = {
    "dataset": "camvid",
    "encoder": "nvidia/mit-b0",
    "max_steps": 200,
    "global_batch_size": 8,
    "crop_size": [IMAGE_SIZE, IMAGE_SIZE],
    "optimizer": "AdamW",
    "learning_rate": 6e-5,
    "train_runtime_seconds": 3725.0,
}
# The same facts as a package 0.1 training_summary.json held them (older key names, read through the
# "Files of package 0.1" section of model_cards/records.py).
PACKAGE_0_1_TRAINING_SUMMARY: dict[str, Any] = {
    "dataset_name": "camvid",
    "encoder_name": "nvidia/mit-b0",
    "num_train_steps": 200,
    "batch_size": 8,
    "crop_size": [IMAGE_SIZE, IMAGE_SIZE],
    "optimizer": "AdamW",
    "learning_rate": 6e-5,
    "wall_time_seconds": 3725.0,
}


def build_model() -> ProtoSegForSemanticSegmentation:
    """A tiny model whose prototypes are set to distinctive unit vectors (not the init values)."""
    config = tiny_protoseg_config(
        num_classes=len(CLASS_NAMES), id2label={index: name for index, name in enumerate(CLASS_NAMES)}
    )
    model = ProtoSegForSemanticSegmentation(config).eval()
    generator = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        model.prototypes.copy_(F.normalize(torch.randn(model.prototypes.shape, generator=generator), dim=-1))
    return model


def save_checkpoint_folder(
    folder: Path,
    model: ProtoSegForSemanticSegmentation,
    *,
    eval_results: dict[str, Any] | None = EVAL_RESULTS,
) -> Path:
    """save_pretrained + image processor + eval_results.json, as the training script does."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    SegformerImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(folder)
    if eval_results is not None:
        (folder / "eval_results.json").write_text(json.dumps(eval_results, indent=2), encoding="utf-8")
    return folder


def add_training_leftovers(folder: Path) -> list[str]:
    """Files a training run may leave beside the model that must never be published; returns their paths."""
    leftovers = {
        "optimizer.pt": b"optimizer state",
        "scheduler.pt": b"scheduler state",
        "checkpoint-100/model.safetensors": b"intermediate weights",
        "checkpoints/step_00000100/model.safetensors": b"resumable training state",
        "runs/events.out.tfevents.1.host": b"tensorboard log",
        "__pycache__/modeling_protoseg.cpython-311.pyc": b"bytecode",
        ".DS_Store": b"finder",
    }
    for relative_path, content in leftovers.items():
        path = folder / relative_path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return sorted(leftovers)
