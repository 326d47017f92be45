"""What the card states about the model itself, read from config.json and the safetensors header (no torch)."""

from __future__ import annotations

import json
import math
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .legacy_keys import upgrade_protoseg_config
from .validation import ModelCardInputError

# Model types whose decoder predicts logits at a quarter of the input resolution.
QUARTER_RESOLUTION_MODEL_TYPES = ("protoseg", "segformer")

# ProtoSeg config.json entries the card describes (the method, how a pixel's class is decided, departures).
PROTOSEG_METHOD_KEYS = (
    "embedding_dim",
    "num_prototypes_per_class",
    "prototype_momentum",
    "sinkhorn_iterations",
    "sinkhorn_epsilon",
    "ppc_temperature",
    "ppc_loss_weight",
    "ppd_loss_weight",
    "prototype_update_pixels",
    "prototype_init",
    "class_score_norm",
    "class_score_scale",
)

# SegFormer Mix-Transformer sizes: (hidden_sizes, depths) -> name used by the original checkpoints.
MIT_VARIANTS: dict[tuple[tuple[int, ...], tuple[int, ...]], str] = {
    ((32, 64, 160, 256), (2, 2, 2, 2)): "MiT-b0",
    ((64, 128, 320, 512), (2, 2, 2, 2)): "MiT-b1",
    ((64, 128, 320, 512), (3, 4, 6, 3)): "MiT-b2",
    ((64, 128, 320, 512), (3, 4, 18, 3)): "MiT-b3",
    ((64, 128, 320, 512), (3, 8, 27, 3)): "MiT-b4",
    ((64, 128, 320, 512), (3, 6, 40, 3)): "MiT-b5",
}


@dataclass(frozen=True, kw_only=True)
class CheckpointFacts:
    """The model as saved: type, classes, encoder, prototypes and weight counts."""

    model_type: str
    model_class: str | None  # config.json "architectures"[0]
    uses_remote_code: bool  # config.json has an auto_map: loading needs trust_remote_code=True
    class_names: list[str]
    encoder_type: str | None
    encoder_description: str
    decoder_hidden_size: int | None
    num_prototypes_per_class: int | None  # None for models without prototypes
    embedding_dim: int | None
    prototype_values: int
    other_weight_values: int | None  # None when the folder has no readable weights
    # The oldest transformers the saved model code runs on (its transformers_requirement.py), if it says
    minimum_transformers_version: str | None = None
    # ProtoSeg: the PROTOSEG_METHOD_KEYS of config.json (0.1's filled in by legacy_keys); None for other models
    method: dict[str, Any] | None = None
    # the weights hold a BatchNorm in the projection head (`projection_head.batch_norm.*`)
    projection_batch_norm: bool = False

    @property
    def has_prototypes(self) -> bool:
        return self.num_prototypes_per_class is not None

    @property
    def output_stride(self) -> int | None:
        return 4 if self.model_type in QUARTER_RESOLUTION_MODEL_TYPES else None

    @property
    def prototype_shape_text(self) -> str:
        return f"({len(self.class_names)}, {self.num_prototypes_per_class}, {self.embedding_dim})"


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ModelCardInputError(f"{path} is not valid JSON: {error}") from error


def read_safetensors_shapes(folder: str | os.PathLike[str]) -> dict[str, list[int]]:
    """Tensor name -> shape from the header(s) of the folder's safetensors weights (no tensor data read)."""
    folder = Path(folder)
    index_path = folder / "model.safetensors.index.json"
    if index_path.is_file():
        weight_files = sorted(set(read_json(index_path)["weight_map"].values()))
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


def class_names_of(config: dict[str, Any]) -> list[str]:
    """Class names in id order, from config.json's id2label."""
    id2label = config.get("id2label")
    if not id2label:
        raise ModelCardInputError("config.json has no id2label: cannot name the classes in the card.")
    by_id = {int(class_id): str(name) for class_id, name in id2label.items()}
    if sorted(by_id) != list(range(len(by_id))):
        raise ModelCardInputError(f"config.json id2label ids are not 0..C-1: {sorted(by_id)}")
    return [by_id[class_id] for class_id in range(len(by_id))]


def encoder_config_of(config: dict[str, Any]) -> dict[str, Any]:
    """The encoder's config: nested (`encoder_config` / `backbone_config`), or the SegFormer config itself."""
    for key in ("encoder_config", "backbone_config"):
        if isinstance(config.get(key), dict):
            return config[key]
    return config if config.get("model_type") == "segformer" else {}


def describe_encoder(encoder_config: dict[str, Any]) -> str:
    """E.g. 'SegFormer MiT-b0 (hidden sizes 32/64/160/256, blocks per stage 2/2/2/2)'."""
    model_type = encoder_config.get("model_type", "unknown")
    depths = "/".join(str(depth) for depth in encoder_config.get("depths", ()))
    if model_type == "segformer":
        hidden_sizes = tuple(encoder_config.get("hidden_sizes", ()))
        variant = MIT_VARIANTS.get((hidden_sizes, tuple(encoder_config.get("depths", ()))))
        name = f"SegFormer {variant}" if variant else "SegFormer Mix-Transformer"
        return f"{name} (hidden sizes {'/'.join(str(size) for size in hidden_sizes)}, blocks per stage {depths})"
    if model_type == "swin":
        return f"Swin Transformer (embed dim {encoder_config.get('embed_dim')}, blocks per stage {depths})"
    return str(model_type)


def _prototype_size(config: dict[str, Any], prototype_shape: list[int] | None) -> tuple[int | None, int | None]:
    """(K, D) of a ProtoSeg model, from config.json or else the prototype tensor's shape."""
    from_weights = prototype_shape if prototype_shape and len(prototype_shape) == 3 else [None, None, None]
    num_prototypes_per_class = config.get("num_prototypes_per_class") or from_weights[1]
    embedding_dim = config.get("embedding_dim") or from_weights[2]
    if num_prototypes_per_class is None or embedding_dim is None:
        raise ModelCardInputError("config.json has no num_prototypes_per_class/embedding_dim and the weights hold no prototypes.")
    return num_prototypes_per_class, embedding_dim


# The saved model code states its minimum transformers version in this file (modeling_protoseg/transformers_requirement.py).
TRANSFORMERS_REQUIREMENT_FILE = "transformers_requirement.py"
_MINIMUM_VERSION_PATTERN = re.compile(r"""^MINIMUM_TRANSFORMERS_VERSION\s*=\s*["']([^"']+)["']""", re.MULTILINE)


def minimum_transformers_version(folder: str | os.PathLike[str]) -> str | None:
    """The minimum transformers version that the model code saved in `folder` states (read as text, never run),
    or None when the folder holds no such statement."""
    path = Path(folder) / TRANSFORMERS_REQUIREMENT_FILE
    if not path.is_file():
        return None
    match = _MINIMUM_VERSION_PATTERN.search(path.read_text(encoding="utf-8"))
    return match.group(1) if match else None


def read_checkpoint_facts(folder: str | os.PathLike[str]) -> CheckpointFacts:
    """Read config.json and the weights' header of a checkpoint folder saved with save_pretrained."""
    config_path = Path(folder) / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} is missing: save the model with save_pretrained first.")
    config = read_json(config_path)
    model_type = config.get("model_type")
    if not model_type:
        raise ModelCardInputError(f"{config_path} has no model_type.")
    shapes = read_safetensors_shapes(folder)
    prototype_shapes = {name: shape for name, shape in shapes.items() if name.split(".")[-1] == "prototypes"}
    has_prototypes = model_type == "protoseg" or bool(prototype_shapes)
    num_prototypes_per_class, embedding_dim = (
        _prototype_size(config, next(iter(prototype_shapes.values()), None)) if has_prototypes else (None, None)
    )
    encoder_config = encoder_config_of(config)
    return CheckpointFacts(
        model_type=str(model_type),
        model_class=(config.get("architectures") or [None])[0],
        uses_remote_code=bool(config.get("auto_map")),
        class_names=class_names_of(config),
        encoder_type=encoder_config.get("model_type"),
        encoder_description=describe_encoder(encoder_config) if encoder_config else str(model_type),
        decoder_hidden_size=config.get("decoder_hidden_size"),
        num_prototypes_per_class=num_prototypes_per_class,
        embedding_dim=embedding_dim,
        prototype_values=sum(math.prod(shape) for shape in prototype_shapes.values()),
        other_weight_values=(
            sum(math.prod(shape) for name, shape in shapes.items() if name not in prototype_shapes) if shapes else None
        ),
        minimum_transformers_version=minimum_transformers_version(folder) if config.get("auto_map") else None,
        method=_protoseg_method(config) if model_type == "protoseg" else None,
        projection_batch_norm=any(name.startswith("projection_head.batch_norm.") for name in shapes),
    )


def _protoseg_method(config: dict[str, Any]) -> dict[str, Any]:
    """The method entries of a ProtoSeg config.json, as the checkpoint was trained (package 0.1 configs upgraded)."""
    upgraded = upgrade_protoseg_config(config)
    return {key: upgraded[key] for key in PROTOSEG_METHOD_KEYS if key in upgraded}
