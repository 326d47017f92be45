"""Render the model card (README.md) of a checkpoint folder from its real numbers.

Inputs read from the folder:
  - `config.json` (written by `save_pretrained`): classes, K, encoder, embedding size. Cards are
    rendered for ProtoSeg models (`model_type: protoseg`) and for the linear SegFormer baseline that
    training/train.py trains for comparison (`model_type: segformer`);
  - `eval_results.json` (written by the evaluation): `mean_iou`, `per_category_iou` (list in class-id
    order, or dict by class name; `null`/NaN for classes absent from the evaluation set), optionally
    `overall_accuracy`, `mean_accuracy`, `per_category_accuracy`, `dataset_name` (or `dataset`),
    `dataset_id`, `split` (or `eval_split`), `eval_mode`, `num_images` (or `num_samples`). IoU and
    accuracy values are fractions in [0, 1], as returned by `evaluate`'s `mean_iou`;
  - `training_summary.json` if present (or the `training_summary` argument, which is then saved there,
    with secrets such as `--hub_token` values redacted);
  - the `model.safetensors` header (tensor shapes only, no torch needed) for the weight counts.

Nothing here imports torch or the model package: the card can be rendered (and re-rendered) anywhere.

Usage: `python -m model_cards.card FOLDER [--repo-id ID]`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import struct
import sys
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

TEMPLATE_PATH = Path(__file__).with_name("template.md")
EVAL_RESULTS_FILE = "eval_results.json"
TRAINING_SUMMARY_FILE = "training_summary.json"
CARD_FILE = "README.md"
# Written into every card rendered here, so `publish_folder` can tell our card from a hand-written
# or generic one (ours is re-rendered with the repo id before upload, a hand-written one is kept).
GENERATED_MARKER = "model card rendered by model_cards from config.json and eval_results.json"
DEFAULT_LICENSE = "other"
SUPPORTED_MODEL_TYPES = ("protoseg", "segformer")

# SegFormer Mix-Transformer sizes: (hidden_sizes, depths) -> name used by the original checkpoints.
MIT_VARIANTS: dict[tuple[tuple[int, ...], tuple[int, ...]], str] = {
    ((32, 64, 160, 256), (2, 2, 2, 2)): "MiT-b0",
    ((64, 128, 320, 512), (2, 2, 2, 2)): "MiT-b1",
    ((64, 128, 320, 512), (3, 4, 6, 3)): "MiT-b2",
    ((64, 128, 320, 512), (3, 4, 18, 3)): "MiT-b3",
    ((64, 128, 320, 512), (3, 8, 27, 3)): "MiT-b4",
    ((64, 128, 320, 512), (3, 6, 40, 3)): "MiT-b5",
}

# Alternative key names accepted in the inputs (training/train.py's names on the right).
EVAL_RESULTS_ALIASES = {"split": "eval_split", "dataset_name": "dataset", "num_images": "num_samples"}
SUMMARY_ALIASES = {"encoder_name": "encoder", "dataset_name": "dataset"}

# training_summary keys with a readable name, in display order. Other keys are shown after these.
TRAINING_SUMMARY_LABELS: dict[str, str] = {
    "dataset_name": "Training data",
    "dataset": "Training data",
    "dataset_id": "Training dataset id",
    "preset": "Preset",
    "train_split": "Training split",
    "num_train_images": "Training images",
    "num_train_steps": "Training steps",
    "max_steps": "Training steps",
    "steps": "Training steps",
    "epochs": "Epochs",
    "global_batch_size": "Batch size (total)",
    "batch_size": "Batch size (total)",
    "per_device_batch_size": "Batch size per device",
    "num_processes": "Processes",
    "crop_size": "Crop size",
    "optimizer": "Optimizer",
    "learning_rate": "Learning rate",
    "lr": "Learning rate",
    "encoder_learning_rate": "Encoder learning rate",
    "weight_decay": "Weight decay",
    "lr_schedule": "Learning-rate schedule",
    "warmup_steps": "Warm-up steps",
    "mixed_precision": "Mixed precision",
    "ppc_loss_weight": "PPC loss weight",
    "ppd_loss_weight": "PPD loss weight",
    "prototype_momentum": "Prototype momentum",
    "sinkhorn_iterations": "Sinkhorn iterations",
    "sinkhorn_epsilon": "Sinkhorn kappa",
    "ppc_temperature": "PPC temperature",
    "hardware": "Hardware",
    "device": "Hardware",
    "seed": "Seed",
    "train_runtime_seconds": "Wall time",
    "wall_time_seconds": "Wall time",
    "wall_time": "Wall time",
}
WALL_TIME_KEYS = {"train_runtime_seconds", "wall_time_seconds", "wall_time"}
# Summary keys never shown in the training table: metadata, facts shown elsewhere, local paths.
HIDDEN_SUMMARY_KEYS = {
    "license", "license_name", "license_link", "model_name", "language", "tags",  # metadata
    "encoder", "encoder_name", "encoder_pretrained", "head", "num_labels", "num_prototypes_per_class",  # details
    "eval_split", "eval_mode", "command",  # evaluation section / reproduction block
    "output_dir", "logging_dir", "cache_dir", "resume_from_checkpoint", "hub_token", "token",  # local / secret
}
DATASET_KEYS = {"dataset_name", "dataset", "dataset_id"}
# Secrets that must never reach a card or training_summary.json (e.g. a command line with --hub_token).
_TOKEN_ARGUMENT = re.compile(r"(--(?:hub[_-])?token[= ])\S+")
_TOKEN_VALUE = re.compile(r"\bhf_[A-Za-z0-9]{8,}\b")


class ModelCardInputError(ValueError):
    """The checkpoint folder lacks, or has malformed, inputs for the model card."""


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ModelCardInputError(f"{path} is not valid JSON: {error}") from error


def _with_aliases(values: dict[str, Any], aliases: dict[str, str]) -> dict[str, Any]:
    """Copy of `values` where each canonical key takes its alias's value when it is itself absent."""
    merged = dict(values)
    for canonical, alias in aliases.items():
        if merged.get(canonical) is None and merged.get(alias) is not None:
            merged[canonical] = merged[alias]
    return merged


def redact_secrets(value: Any) -> Any:
    """`value` with Hub tokens removed from every string in it (lists and dicts walked)."""
    if isinstance(value, str):
        return _TOKEN_VALUE.sub("<redacted>", _TOKEN_ARGUMENT.sub(r"\1<redacted>", value))
    if isinstance(value, dict):
        return {key: redact_secrets(item) for key, item in value.items() if key not in ("hub_token", "token")}
    if isinstance(value, (list, tuple)):
        return [redact_secrets(item) for item in value]
    return value


def _is_fraction(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0


def read_eval_results(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """Load and check `eval_results.json` (aliases resolved); raise a clear error if missing or malformed."""
    folder = Path(folder)
    path = folder / EVAL_RESULTS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing. The model card is rendered only from measured numbers: evaluate the "
            f"checkpoint first (training/train.py writes {EVAL_RESULTS_FILE} after its final evaluation), "
            f"then render the card with `python -m model_cards.card {folder}`."
        )
    results = _with_aliases(_read_json(path), EVAL_RESULTS_ALIASES)
    for key in ("mean_iou", "per_category_iou"):
        if key not in results:
            raise ModelCardInputError(f"{path} has no '{key}' (keys found: {sorted(results)}).")
    if not _is_fraction(results["mean_iou"]):
        raise ModelCardInputError(
            f"{path}: mean_iou must be a finite fraction in [0, 1] (as returned by evaluate's mean_iou), "
            f"got {results['mean_iou']!r}."
        )
    for key in ("overall_accuracy", "mean_accuracy"):
        if results.get(key) is not None and not _is_fraction(results[key]):
            raise ModelCardInputError(f"{path}: {key} must be a fraction in [0, 1], got {results[key]!r}.")
    return results


def read_training_summary(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """Load `training_summary.json` from the folder, or an empty dict if there is none."""
    path = Path(folder) / TRAINING_SUMMARY_FILE
    return _read_json(path) if path.is_file() else {}


def _class_names(config: dict[str, Any]) -> list[str]:
    id2label = config.get("id2label")
    if not id2label:
        raise ModelCardInputError("config.json has no id2label: cannot name the classes in the card.")
    by_id = {int(class_id): str(name) for class_id, name in id2label.items()}
    if sorted(by_id) != list(range(len(by_id))):
        raise ModelCardInputError(f"config.json id2label ids are not 0..C-1: {sorted(by_id)}")
    return [by_id[class_id] for class_id in range(len(by_id))]


def _per_class_values(values: Any, class_names: list[str], key: str) -> list[float | None]:
    """Align per-class values (list in id order, or dict by class name) with `class_names`."""
    if isinstance(values, dict):
        unknown = sorted(set(values) - set(class_names))
        if unknown:
            raise ModelCardInputError(f"eval_results.json {key} names classes not in config.json: {unknown}")
        aligned = [values.get(name) for name in class_names]
    elif isinstance(values, (list, tuple)):
        if len(values) != len(class_names):
            raise ModelCardInputError(
                f"eval_results.json {key} has {len(values)} values but config.json has {len(class_names)} classes."
            )
        aligned = list(values)
    else:
        raise ModelCardInputError(f"eval_results.json {key} must be a list or a dict, got {type(values).__name__}.")
    cleaned: list[float | None] = []
    for name, value in zip(class_names, aligned):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            cleaned.append(None)
        elif _is_fraction(value):
            cleaned.append(float(value))
        else:
            raise ModelCardInputError(f"eval_results.json {key}[{name!r}] must be a fraction in [0, 1], got {value!r}.")
    return cleaned


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100.0 * value:.2f}"


def _escape_table_cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _format_value(key: str, value: Any) -> str:
    """Readable text for one training-summary value."""
    if key in WALL_TIME_KEYS and isinstance(value, (int, float)):
        if value < 60:
            return f"{value:.1f} s"
        seconds = int(round(value))
        hours, rest = divmod(seconds, 3600)
        minutes, seconds = divmod(rest, 60)
        return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {seconds:02d} s"
    if key == "crop_size" and isinstance(value, (list, tuple)):
        return " × ".join(str(side) for side in value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        return ", ".join(f"{name}={_format_value(name, item)}" for name, item in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(str(item) for item in value)
    return str(value)


def _training_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    shown_labels: set[str] = set()
    known = [key for key in TRAINING_SUMMARY_LABELS if key in summary and key not in HIDDEN_SUMMARY_KEYS]
    others = sorted(key for key in summary if key not in TRAINING_SUMMARY_LABELS and key not in HIDDEN_SUMMARY_KEYS)
    for key in known + others:
        value = _short_name(summary[key]) if key in DATASET_KEYS else summary[key]
        if value is None or value == "" or value == [] or value == {}:
            continue
        label = TRAINING_SUMMARY_LABELS.get(key, key.replace("_", " ").capitalize())
        if label in shown_labels:  # e.g. both `dataset` and `dataset_name`: keep the first
            continue
        shown_labels.add(label)
        rows.append((_escape_table_cell(label), _escape_table_cell(_format_value(key, value))))
    return rows


def read_safetensors_shapes(folder: str | os.PathLike[str]) -> dict[str, list[int]]:
    """Tensor name -> shape from the header(s) of the folder's safetensors weights (no tensor data read)."""
    folder = Path(folder)
    index_path = folder / "model.safetensors.index.json"
    if index_path.is_file():
        weight_files = sorted(set(_read_json(index_path)["weight_map"].values()))
    else:
        weight_files = ["model.safetensors"]
    shapes: dict[str, list[int]] = {}
    for name in weight_files:
        path = folder / name
        if not path.is_file():
            return {}
        with path.open("rb") as weights:
            (header_length,) = struct.unpack("<Q", weights.read(8))
            header = json.loads(weights.read(header_length))
        shapes.update({key: entry["shape"] for key, entry in header.items() if key != "__metadata__"})
    return shapes


def _encoder_description(encoder_config: dict[str, Any]) -> str:
    model_type = encoder_config.get("model_type", "unknown")
    if model_type == "segformer":
        hidden_sizes = tuple(encoder_config.get("hidden_sizes", ()))
        depths = tuple(encoder_config.get("depths", ()))
        variant = MIT_VARIANTS.get((hidden_sizes, depths))
        sizes = "/".join(str(size) for size in hidden_sizes)
        blocks = "/".join(str(depth) for depth in depths)
        name = f"SegFormer {variant}" if variant else "SegFormer Mix-Transformer"
        return f"{name} (hidden sizes {sizes}, blocks per stage {blocks})"
    if model_type == "swin":
        depths = "/".join(str(depth) for depth in encoder_config.get("depths", ()))
        return f"Swin Transformer (embed dim {encoder_config.get('embed_dim')}, blocks per stage {depths})"
    return str(model_type)


def _encoder_config(config: dict[str, Any]) -> dict[str, Any]:
    """The encoder's config: the nested one of ProtoSeg, or the SegFormer config itself for the baseline."""
    if config.get("model_type") == "segformer":
        return config
    for key in ("encoder_config", "backbone_config"):
        if isinstance(config.get(key), dict):
            return config[key]
    return {}


def _is_hub_id(name: str) -> bool:
    """True for 'owner/name'-style ids, false for local paths and plain names."""
    return (
        name.count("/") == 1
        and not name.startswith((".", "/", "~"))
        and not name.endswith("/")
        and not os.path.exists(name)
        and " " not in name
    )


def _short_name(name: Any) -> str | None:
    """A dataset or checkpoint name as shown in text: local folders are reduced to their own name."""
    if name is None or name == "":
        return None
    name = str(name)
    if not _is_hub_id(name) and ("/" in name or os.sep in name):
        return Path(name.rstrip("/")).name
    return name


def _dataset_identity(eval_results: dict[str, Any], summary: dict[str, Any]) -> tuple[str | None, str | None]:
    """(dataset id for metadata, display name) of the evaluation data.

    `dataset_id` (a Hub id) is preferred for the metadata; otherwise the dataset name, reduced to the
    folder's own name when it is a local path (never a path of the machine that trained the model).
    """
    raw_id = eval_results.get("dataset_id") or summary.get("dataset_id")
    display_name = _short_name(eval_results.get("dataset_name") or summary.get("dataset_name") or raw_id)
    dataset_id = _short_name(raw_id) or display_name
    return dataset_id, display_name


def _encoder_origin(summary: dict[str, Any]) -> tuple[str | None, str | None]:
    """(base_model Hub id or None, text for the "Encoder weights" row or None)."""
    encoder_name = summary.get("encoder_name")
    pretrained = summary.get("encoder_pretrained")
    if pretrained is False:
        return None, "random initialisation" + (f" (`{_short_name(encoder_name)}` architecture)" if encoder_name else "")
    if not encoder_name:
        return None, None
    if _is_hub_id(str(encoder_name)):
        return str(encoder_name), f"pretrained `{encoder_name}`"
    if "/" in str(encoder_name) or os.sep in str(encoder_name):
        return None, f"local checkpoint `{_short_name(encoder_name)}`"
    return None, f"`{encoder_name}` (as named to the training script)"


def _license_note(card_data: ModelCardData) -> str:
    """Body text for the licence; explains the default `other` when no licence was named."""
    if card_data.license == DEFAULT_LICENSE and not card_data.license_name:
        return (
            "No licence was chosen for these weights when they were published (`license: other`). They "
            "derive from the encoder's initial weights and from the training data, so the terms of both "
            "apply: check them before any use, in particular commercial use."
        )
    name = card_data.license_name or card_data.license
    return f"`{name}`: {card_data.license_link}" if card_data.license_link else f"`{name}`."


def _limitations(
    *, is_protoseg: bool, num_classes: int, training_dataset: str | None, split: str | None, has_missing_classes: bool
) -> list[str]:
    trained_on = f"on {training_dataset}" if training_dataset else "on a single dataset"
    limitations = [
        f"Closed set: the model was trained {trained_on} and can only output its {num_classes} classes; "
        "every pixel is given one of them, including objects of classes it has never seen.",
        "Accuracy outside the training distribution (other cameras, places, weather, image sizes) was not "
        "measured; the numbers above hold for "
        + (f"the {split} split only." if split else "the evaluation set named above only."),
        "Logits are predicted at a quarter of the input resolution and upsampled, so thin structures "
        "and small objects are the least accurate.",
    ]
    if is_protoseg:
        limitations += [
            "Loading runs the Python code stored in this repository (`trust_remote_code=True`).",
            '`pipeline("image-segmentation")` logs that the custom model class is not in its list of '
            "supported models; the message is harmless and the output is correct.",
        ]
    if has_missing_classes:
        limitations.append("Some classes have no IoU (n/a): they do not occur in the evaluation set.")
    return limitations


def render_model_card(
    folder: str | os.PathLike[str],
    training_summary: dict[str, Any] | None = None,
    repo_id: str | None = None,
) -> ModelCard:
    """Build the `ModelCard` of a checkpoint folder (metadata + body) without writing it.

    Arguments:
        folder: checkpoint folder with `config.json` and `eval_results.json`.
        training_summary: training facts to show; defaults to the folder's `training_summary.json`.
        repo_id: Hub repository id used in the code snippets; defaults to the folder's name.
    Returns:
        the rendered `huggingface_hub.ModelCard`.
    """
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} is missing: save the model with save_pretrained first.")
    config = _read_json(config_path)
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ModelCardInputError(
            f"config.json has model_type {model_type!r}; model_cards renders cards for ProtoSeg models "
            "('protoseg') and the linear SegFormer baseline ('segformer')."
        )
    is_protoseg = model_type == "protoseg"
    eval_results = read_eval_results(folder)
    raw_summary = training_summary if training_summary is not None else read_training_summary(folder)
    summary = _with_aliases(redact_secrets(dict(raw_summary)), SUMMARY_ALIASES)

    class_names = _class_names(config)
    num_classes = len(class_names)
    per_class_iou = _per_class_values(eval_results["per_category_iou"], class_names, "per_category_iou")
    per_class_accuracy = (
        _per_class_values(eval_results["per_category_accuracy"], class_names, "per_category_accuracy")
        if eval_results.get("per_category_accuracy") is not None
        else None
    )
    shapes = read_safetensors_shapes(folder)
    prototype_shapes = {name: shape for name, shape in shapes.items() if name.split(".")[-1] == "prototypes"}
    prototype_shape = next(iter(prototype_shapes.values()), None)
    num_prototypes_per_class = embedding_dim = None
    if is_protoseg:
        num_prototypes_per_class = config.get("num_prototypes_per_class") or (prototype_shape or [None] * 3)[1]
        embedding_dim = config.get("embedding_dim") or (prototype_shape or [None] * 3)[2]
        if num_prototypes_per_class is None or embedding_dim is None:
            raise ModelCardInputError(
                "config.json has no num_prototypes_per_class/embedding_dim and the weights hold no prototypes."
            )
    prototype_shape_text = f"({num_classes}, {num_prototypes_per_class}, {embedding_dim})"

    encoder_config = _encoder_config(config)
    encoder_text = _encoder_description(encoder_config) if encoder_config else str(model_type)
    base_model, encoder_origin = _encoder_origin(summary)
    dataset_id, dataset_display_name = _dataset_identity(eval_results, summary)
    split = eval_results.get("split") or summary.get("eval_split")
    # Snippets name the Hub repo when known, else the model's name (the folder may be a staging folder).
    model_id = repo_id or _short_name(summary.get("model_name")) or folder.resolve().name

    if is_protoseg:
        model_details: list[tuple[str, str]] = [("Architecture", "ProtoSeg: encoder, decoder, non-learnable prototypes")]
    else:
        model_details = [("Architecture", "SegFormer: encoder, all-MLP decoder, linear (1×1 conv) classifier")]
    model_details.append(("Encoder", _escape_table_cell(encoder_text)))
    if encoder_origin:
        model_details.append(("Encoder weights before training", _escape_table_cell(encoder_origin)))
    if config.get("decoder_hidden_size"):
        model_details.append(("Decoder width", str(config["decoder_hidden_size"])))
    if is_protoseg:
        model_details.append(("Pixel embedding size D", str(embedding_dim)))
    model_details.append(("Classes C", str(num_classes)))
    if is_protoseg:
        model_details.append(("Prototypes per class K", str(num_prototypes_per_class)))
    if shapes:
        prototype_values = sum(math.prod(shape) for shape in prototype_shapes.values())
        other_values = sum(math.prod(shape) for name, shape in shapes.items() if name not in prototype_shapes)
        if is_protoseg:
            model_details.append(("Stored weights (without prototypes)", f"{other_values:,}"))
            model_details.append(("Prototype buffer", f"{prototype_shape_text} = {prototype_values:,} values"))
        else:
            model_details.append(("Stored weights", f"{other_values:,}"))
    model_details.append(("Output", f"logits (batch, {num_classes}, height / 4, width / 4)"))

    evaluation_rows: list[tuple[str, str]] = [("mIoU (%)", _percent(float(eval_results["mean_iou"])))]
    if eval_results.get("overall_accuracy") is not None:
        evaluation_rows.append(("Pixel accuracy (%)", _percent(float(eval_results["overall_accuracy"]))))
    if eval_results.get("mean_accuracy") is not None:
        evaluation_rows.append(("Mean class accuracy (%)", _percent(float(eval_results["mean_accuracy"]))))
    eval_mode = eval_results.get("eval_mode") or summary.get("eval_mode")
    if eval_mode:
        evaluation_rows.append(("Inference", _escape_table_cell(eval_mode)))
    if eval_results.get("num_images") is not None:
        evaluation_rows.append(("Images evaluated", _escape_table_cell(eval_results["num_images"])))

    target_parts = [f"the {split} split of" if split else None, dataset_display_name or "the evaluation data"]
    evaluation_target = " ".join(part for part in target_parts if part)
    per_class_rows = [
        (
            _escape_table_cell(name),
            _percent(iou),
            _percent(per_class_accuracy[index]) if per_class_accuracy is not None else "",
        )
        for index, (name, iou) in enumerate(zip(class_names, per_class_iou))
    ]
    has_missing_classes = any(iou is None for iou in per_class_iou)

    eval_result_entries: list[EvalResult] = []
    if dataset_id:
        common = dict(
            task_type="image-segmentation",
            task_name="Semantic Segmentation",
            dataset_type=dataset_id,
            dataset_name=dataset_display_name or dataset_id,
            dataset_split=split,
        )
        eval_result_entries.append(
            EvalResult(metric_type="mean_iou", metric_name="mIoU", metric_value=eval_results["mean_iou"], **common)
        )
        if eval_results.get("overall_accuracy") is not None:
            eval_result_entries.append(
                EvalResult(
                    metric_type="accuracy",
                    metric_name="Pixel accuracy",
                    metric_value=eval_results["overall_accuracy"],
                    **common,
                )
            )
    if is_protoseg:
        tags = ["image-segmentation", "semantic-segmentation", "protoseg", "prototype-learning", "vision", "custom_code"]
    else:
        tags = ["image-segmentation", "semantic-segmentation", "protoseg-baseline", "vision"]
    encoder_type = encoder_config.get("model_type")
    if encoder_type and encoder_type not in tags:
        tags.append(str(encoder_type))
    tags += [str(tag) for tag in summary.get("tags", []) if str(tag) not in tags]
    model_name = (_short_name(summary.get("model_name")) or folder.resolve().name).split("/")[-1]
    if repo_id:
        model_name = repo_id.split("/")[-1]
    card_data = ModelCardData(
        model_name=model_name,
        library_name="transformers",
        pipeline_tag="image-segmentation",
        license=summary.get("license", DEFAULT_LICENSE),
        license_name=summary.get("license_name"),
        license_link=summary.get("license_link"),
        tags=tags,
        datasets=[dataset_id] if dataset_id else None,
        base_model=base_model,
        metrics=["mean_iou"],
        eval_results=eval_result_entries or None,
    )
    title_parts = ["ProtoSeg" if is_protoseg else "Linear SegFormer baseline", f"with {encoder_text.split(' (')[0]}"]
    if dataset_display_name:
        title_parts.append(f"on {dataset_display_name}")
    command = summary.get("command")
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE_PATH),
        generated_marker=GENERATED_MARKER,
        is_protoseg=is_protoseg,
        title=" ".join(title_parts),
        num_classes=num_classes,
        dataset_display_name=dataset_display_name,
        num_prototypes_per_class=num_prototypes_per_class,
        embedding_dim=embedding_dim,
        prototype_shape_text=prototype_shape_text,
        model_details=model_details,
        classes=[(class_id, _escape_table_cell(name)) for class_id, name in enumerate(class_names)],
        training_rows=_training_rows(summary),
        training_command=str(command).replace("```", "'''") if command else "",
        evaluation_target=evaluation_target,
        evaluation_rows=evaluation_rows,
        per_class_rows=per_class_rows,
        per_class_has_accuracy=per_class_accuracy is not None,
        per_class_note="n/a: the class does not occur in the evaluation set." if has_missing_classes else "",
        model_id=model_id,
        remote_code_argument=", trust_remote_code=True" if is_protoseg else "",
        limitations=_limitations(
            is_protoseg=is_protoseg,
            num_classes=num_classes,
            training_dataset=_short_name(summary.get("dataset_name")) or dataset_display_name,
            split=split,
            has_missing_classes=has_missing_classes,
        ),
        license_note=_license_note(card_data),
    )


def write_model_card(
    folder: str | os.PathLike[str],
    training_summary: dict[str, Any] | None = None,
    repo_id: str | None = None,
) -> Path:
    """Render the model card of a checkpoint folder and write it to `folder/README.md`.

    Arguments:
        folder: checkpoint folder with `config.json` and `eval_results.json` (required).
        training_summary: training facts (dataset, encoder, steps, batch size, crop size, optimizer,
            lr, wall time, ...). Only present keys are rendered. When given, it is also saved (with
            tokens redacted) as `training_summary.json` so the card can be re-rendered later; when
            None, that file is read.
        repo_id: Hub repository id used in the code snippets (defaults to the folder's name).
    Returns:
        path of the written README.md.
    """
    folder = Path(folder)
    card = render_model_card(folder, training_summary=training_summary, repo_id=repo_id)
    if training_summary is not None:
        (folder / TRAINING_SUMMARY_FILE).write_text(
            json.dumps(redact_secrets(dict(training_summary)), indent=2, sort_keys=True, default=str) + "\n",
            encoding="utf-8",
        )
    card_path = folder / CARD_FILE
    card.save(card_path)
    return card_path


def is_generated_card(card_path: str | os.PathLike[str]) -> bool:
    """True if `card_path` is a card rendered by this module (and so safe to re-render)."""
    card_path = Path(card_path)
    return card_path.is_file() and GENERATED_MARKER in card_path.read_text(encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    """CLI: (re-)render README.md of a checkpoint folder."""
    parser = argparse.ArgumentParser(
        prog="python -m model_cards.card",
        description="Render the model card (README.md) of a ProtoSeg checkpoint folder from eval_results.json.",
    )
    parser.add_argument("folder", type=Path, help="checkpoint folder (config.json, eval_results.json, weights)")
    parser.add_argument("--repo-id", default=None, help="Hub repository id to show in the usage snippets")
    args = parser.parse_args(argv)
    try:
        card_path = write_model_card(args.folder, repo_id=args.repo_id)
    except (FileNotFoundError, ModelCardInputError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"Wrote {card_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
