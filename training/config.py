"""The settings of a training run, each declared once.

- The flags are the fields of a few argument dataclasses with their real defaults (data, augmentation, model,
  method, pixel contrast, optimisation, runtime, evaluation, output).
- The method flags (`ProtoSegArguments`) are the `ProtoSegConfig.__init__` parameters a user sets, their
  defaults read from it. Its other parameters are set from another flag or are internals a run leaves at their
  default (`PROTOSEG_SET_ELSEWHERE`, `PROTOSEG_INTERNALS`); a test checks every parameter is one of the three.
- `resolve_config` fills every setting in layers, each overriding the one before:
  defaults < SGD's defaults (with --optimizer sgd) < the named encoder's decoder width < dataset preset
  < the paper's method values (with --method paper) < flags given on the command line. `--help` prints the default and each preset's value.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from transformers import HfArgumentParser

from model_cards.records import check_license_choice
from modeling_protoseg import ProtoSegConfig
from modeling_protoseg.configuration_protoseg import CLASS_SCORE_NORMS, PROTOTYPE_INITS, PROTOTYPE_UPDATE_PIXELS
from training.dataset_layouts import detect_layout
from training.evaluation import EVAL_MODES, MULTISCALE_FACTORS
from training.presets import DATASET_PRESETS, ENCODER_CONFIGS, DatasetPreset, get_dataset_preset

logger = logging.getLogger("protoseg.train")


@dataclass
class DataArguments:
    """Where the data comes from and how its labels read."""

    preset: Optional[str] = field(default=None, metadata={"help": f"dataset preset: {', '.join(DATASET_PRESETS)}"})
    dataset_name: Optional[str] = field(
        default=None,
        metadata={"help": "Hub dataset id or local folder (Parquet, imagefolder, save_to_disk, or the manual download "
                  "of ADE20K (ADEChallengeData2016/) or Cityscapes (leftImg8bit/ + gtFine/), whose preset it selects)"},
    )
    dataset_config_name: Optional[str] = field(
        default=None, metadata={"help": "dataset configuration name (load_dataset's `name`)"}
    )
    dataset_data_dir: Optional[str] = field(
        default=None,
        metadata={"help": "folder of the dataset repository (or local folder) to read, load_dataset's `data_dir`: "
                  "e.g. one configuration of a script dataset's Parquet conversion"},
    )  # fmt: skip
    dataset_revision: Optional[str] = field(default=None, metadata={"help": "Hub revision (branch, tag, commit)"})
    train_split: str = field(default="train", metadata={"help": "training split"})
    validation_split: str = field(default="validation", metadata={"help": "split evaluated during and after training"})
    train_val_split: Optional[float] = field(
        default=0.15,
        metadata={"help": "fraction of the training split held out (seeded) when the dataset has no evaluation split"},
    )
    test_split: Optional[str] = field(
        default=None, metadata={"help": "also evaluate the final model on this split (test_results.json)"}
    )
    image_column: str = field(default="image", metadata={"help": "image column"})
    label_column: str = field(default="annotation", metadata={"help": "label-map column"})
    reduce_labels: bool = field(default=False, metadata={"help": "label 0 ('other') -> ignore, v -> v-1 (ADE20K)"})
    binary_mask_255: bool = field(default=False, metadata={"help": "binary masks stored as 0/255: read 255 as class 1"})
    id2label_file: Optional[str] = field(default=None, metadata={"help": 'JSON class names {"0": "sky", ...}'})
    num_labels: Optional[int] = field(default=None, metadata={"help": "number of classes if no names are known"})
    ignore_index: int = field(default=255, metadata={"help": "label value of pixels that are ignored"})
    max_train_samples: Optional[int] = field(default=None, metadata={"help": "use only the first N training samples"})
    max_eval_samples: Optional[int] = field(default=None, metadata={"help": "use only the first N evaluation samples"})
    synthetic_num_train: int = field(default=2000, metadata={"help": "synthetic preset: training scenes"})
    synthetic_num_validation: int = field(default=100, metadata={"help": "synthetic preset: validation scenes"})
    synthetic_image_size: int = field(default=96, metadata={"help": "synthetic preset: scene side length"})
    dataloader_num_workers: int = field(default=2, metadata={"help": "data loading processes"})
    check_data: bool = field(
        default=False, metadata={"help": "read every sample of every split before training; list all bad ones"}
    )
    skip_bad_samples: bool = field(
        default=False,
        metadata={"help": "read every sample before training and leave the bad ones out (counted in the log and "
                  "train_results.json) instead of failing"},
    )  # fmt: skip


@dataclass
class AugmentationArguments:
    """Training crops and the short side images are resized to (mmseg's recipe)."""

    crop_size: list[int] = field(default_factory=lambda: [512, 512], metadata={"help": "SIZE or HEIGHT WIDTH"})
    base_size: Optional[int] = field(default=None, metadata={"help": "short side at scale 1 and at evaluation"})
    min_scale: float = field(default=0.5, metadata={"help": "random rescale: smallest factor"})
    max_scale: float = field(default=2.0, metadata={"help": "random rescale: largest factor"})
    photometric_jitter: bool = field(default=True, metadata={"help": "brightness/contrast/saturation/hue jitter"})
    hflip_probability: float = field(default=0.5, metadata={"help": "probability of a horizontal flip"})


@dataclass
class ModelArguments:
    """The encoder and the classifier on top of it."""

    encoder: str = field(
        default="mit-b0",
        metadata={"help": "encoder name (random init: mit-b0..mit-b5, swin-tiny/small/base/large, mit-micro, mit-test) "
                  "or a pretrained checkpoint id/folder (e.g. nvidia/mit-b0)"},
    )  # fmt: skip
    head: str = field(
        default="protoseg",
        metadata={"help": "protoseg: nearest-prototype classifier; linear: a parametric 1x1 classifier on the same encoder and decoder (SegformerForSemanticSegmentation on MiT encoders)",
                  "choices": ["protoseg", "linear"]},
    )  # fmt: skip
    method: str = field(
        default="package",
        metadata={"help": "package: this package's defaults; paper: the paper's ProtoSeg (LayerNorm class scores, "
                  "random prototype init, correct-pixels-only update, loss weights 0.01/0.01), for the method "
                  "flags not given", "choices": ["package", "paper"]},
    )  # fmt: skip


@dataclass
class OptimizationArguments:
    """Steps, batches, optimizer and learning-rate schedule (defaults: SegFormer's AdamW recipe)."""

    max_steps: int = field(default=160_000, metadata={"help": "optimizer steps"})
    per_device_train_batch_size: int = field(default=2, metadata={"help": "images per process and step"})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    optimizer: str = field(
        default="adamw", metadata={"help": "adamw (SegFormer recipe) or sgd (FCN recipe)", "choices": ["adamw", "sgd"]}
    )
    learning_rate: float = field(default=6e-5, metadata={"help": "peak learning rate"})
    head_lr_multiplier: float = field(default=10.0, metadata={"help": "lr factor of everything but the encoder"})
    weight_decay: float = field(default=0.01, metadata={"help": "weight decay (none on norms and biases)"})
    sgd_momentum: float = field(default=0.9, metadata={"help": "SGD momentum"})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1"})
    adam_beta2: float = field(default=0.999, metadata={"help": "AdamW beta2"})
    poly_power: float = field(default=1.0, metadata={"help": "poly decay power"})
    min_learning_rate: float = field(default=0.0, metadata={"help": "poly schedule floor"})
    warmup_steps: int = field(default=1500, metadata={"help": "linear warm-up steps"})
    warmup_start_factor: float = field(default=1e-6, metadata={"help": "lr factor at the first warm-up step"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm; 0 disables"})


@dataclass
class PixelContrastArguments:
    """Cross-image pixel contrast (ContrastiveSeg): a training-only objective added to either head's loss."""

    pixel_contrast: bool = field(
        default=False,
        metadata={"help": "add the supervised pixel-to-pixel contrastive loss of ContrastiveSeg (training only: the "
                  "exported model is the plain model)"},
    )  # fmt: skip
    pixel_contrast_weight: float = field(default=0.1, metadata={"help": "weight of the contrastive loss"})
    pixel_contrast_temperature: float = field(default=0.1, metadata={"help": "InfoNCE temperature"})
    pixel_contrast_base_temperature: float = field(
        default=0.07, metadata={"help": "the loss is scaled by temperature / base temperature (official code)"}
    )
    pixel_contrast_max_anchors: int = field(default=1024, metadata={"help": "anchor pixels per process and step"})
    pixel_contrast_max_views: int = field(
        default=100,
        metadata={"help": "anchor pixels per (image, class) at most; a class needs more pixels than this in an image "
                  "(at 1/4 resolution) to be sampled there"},
    )  # fmt: skip
    pixel_contrast_dim: int = field(
        default=256,
        metadata={"help": "linear head: width of the training-only projection head; ProtoSeg contrasts its own "
                  "pixel embeddings (embedding_dim)"},
    )  # fmt: skip
    pixel_contrast_segment_memory: int = field(
        default=0, metadata={"help": "segment means kept per class in the memory (0: no segment memory)"}
    )
    pixel_contrast_pixel_memory: int = field(
        default=0, metadata={"help": "pixels kept per class in the memory (0: no pixel memory)"}
    )
    pixel_contrast_pixels_per_segment: int = field(
        default=10, metadata={"help": "pixels each (image, class) writes to the pixel memory per step"}
    )
    pixel_contrast_warmup_steps: int = field(
        default=0, metadata={"help": "optimizer steps before the contrastive loss counts (the memory fills meanwhile)"}
    )


@dataclass
class RuntimeArguments:
    """Processes, precision, threads and randomness."""

    mixed_precision: Optional[str] = field(
        default=None,
        metadata={"help": "no, fp16 or bf16; overrides the precision of `accelerate launch --mixed_precision` and "
                  "of accelerate's config file", "choices": ["no", "fp16", "bf16"]},
    )  # fmt: skip
    use_cpu: bool = field(default=False, metadata={"help": "train on CPU even when a GPU is available"})
    ddp_find_unused_parameters: bool = field(
        default=False, metadata={"help": "DDP option; the models here give every trainable parameter a gradient"}
    )
    seed: int = field(default=42, metadata={"help": "base seed (process i uses seed + i for dropout etc.)"})
    num_threads: Optional[int] = field(default=None, metadata={"help": "torch CPU threads per process"})


@dataclass
class EvaluationArguments:
    """How and how often the model is evaluated."""

    eval_mode: str = field(
        default="whole",
        metadata={"help": "whole (short side -> base size), slide (windows of the crop size), or multiscale "
                  "(whole at each of --eval_scales, with --eval_flip; softmax averaged)", "choices": list(EVAL_MODES)},
    )  # fmt: skip
    eval_stride: Optional[list[int]] = field(default=None, metadata={"help": "sliding-window stride"})
    eval_scales: list[float] = field(
        default_factory=lambda: list(MULTISCALE_FACTORS), metadata={"help": "multiscale: factors of the base size"}
    )
    eval_flip: bool = field(default=True, metadata={"help": "multiscale: also average the horizontally flipped image"})
    eval_steps: int = field(default=0, metadata={"help": "evaluate every N steps (0: only at the end)"})
    per_device_eval_batch_size: int = field(default=1, metadata={"help": "evaluation images per process"})


@dataclass
class OutputArguments:
    """Logging, resumable checkpoints, the exported folder and the Hub upload."""

    output_dir: Optional[str] = field(default=None, metadata={"help": "where the model, logs and checkpoints go"})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "train into an --output_dir that holds a finished run (or an unfinished run's checkpoints): "
                  "what that run wrote (model, results, card, logs, checkpoints) is deleted first"},
    )  # fmt: skip
    logging_steps: int = field(default=50, metadata={"help": "log every N steps"})
    report_to: str = field(default="tensorboard", metadata={"help": "accelerate tracker(s): tensorboard, all, none"})
    log_eval_images: int = field(
        default=4, metadata={"help": "validation images (image | truth | prediction) sent to the trackers at each "
                             "evaluation (0: none)"}
    )  # fmt: skip
    checkpointing_steps: int = field(default=1000, metadata={"help": "save a resumable state every N steps (0: never)"})
    checkpoints_total_limit: int = field(default=2, metadata={"help": "keep only the newest N checkpoints"})
    resume_from_checkpoint: Optional[str] = field(default=None, metadata={"help": "'latest' or a checkpoint folder"})
    push_to_hub: bool = field(default=False, metadata={"help": "upload the final folder and model card"})
    hub_model_id: Optional[str] = field(default=None, metadata={"help": "Hub repo id for --push_to_hub"})
    hub_token: Optional[str] = field(default=None, metadata={"help": "Hub token (default: the logged-in one)"})
    hub_private_repo: bool = field(default=False, metadata={"help": "create the Hub repo as private"})
    license: Optional[str] = field(
        default=None,
        metadata={"help": "Hub licence id of the weights for the model card (apache-2.0, mit, cc-by-nc-4.0, ..., or "
                  "other with --license_name and --license_link); recorded in training_summary.json"},
    )  # fmt: skip
    license_name: Optional[str] = field(default=None, metadata={"help": "with --license other: the licence's id"})
    license_link: Optional[str] = field(
        default=None, metadata={"help": "with --license other: LICENSE (a file in the repo) or a URL"}
    )


# ---------------------------------------------------------------------------------------------------------------------
# The method's knobs: parameters of ProtoSegConfig

# ProtoSegConfig.__init__'s defaults by parameter: the method flags take theirs from here, so each method default
# is written once, in ProtoSegConfig.
PROTOSEG_DEFAULTS: dict[str, Any] = {
    name: parameter.default
    for name, parameter in inspect.signature(ProtoSegConfig.__init__).parameters.items()
    if parameter.default is not inspect.Parameter.empty
}
# Every ProtoSegConfig parameter is a method flag (ProtoSegArguments) or named here (a test checks it), so a new
# parameter has to be classified. Set from another flag or from the data:
PROTOSEG_SET_ELSEWHERE: dict[str, str] = {
    "encoder_config": "--encoder",
    "semantic_loss_ignore_index": "--ignore_index",
    "image_mean": "the encoder's input normalisation",
    "image_std": "the encoder's input normalisation",
    # an inference choice, not a training one: from_pretrained(..., prototype_matching_dtype=...) or
    # `python -m training.evaluate FOLDER --prototype_matching_dtype bfloat16`
    "prototype_matching_dtype": "training.evaluate's --prototype_matching_dtype",
}
# Internals: a run keeps ProtoSegConfig's default; Python code and a saved config.json can still set them.
PROTOSEG_INTERNALS: tuple[str, ...] = (
    "class_score_scale",  # only the initial scale of the "affine" class scores (a learned parameter)
    "dead_prototype_patience",  # when prototype_health() counts a prototype as dead (a report, not training)
    "classifier_dropout_prob",  # SegFormer's decoder dropout, as the linear baseline keeps it
    "initializer_range",  # std of the random weight init
)
# Flags of earlier versions: a command line that still names one stops with what became of it.
RETIRED_FLAGS: dict[str, str] = {
    **{
        name: f"an internal of ProtoSegConfig now; a run keeps its default, {PROTOSEG_DEFAULTS[name]}"
        for name in PROTOSEG_INTERNALS
    },
    "step_delay_seconds": "a test hook now, the PROTOSEG_TEST_STEP_DELAY_SECONDS environment variable",
}


def _method_flag(name: str, help_text: str, choices: tuple[str, ...] | None = None) -> Any:
    """The field of ProtoSegConfig's parameter `name`: its default from `PROTOSEG_DEFAULTS`, a help text."""
    metadata: dict[str, Any] = {"help": help_text}
    if choices is not None:
        metadata["choices"] = list(choices)
    return field(default=PROTOSEG_DEFAULTS[name], metadata=metadata)


@dataclass
class ProtoSegArguments:
    """ProtoSeg's knobs a user sets: parameters of `ProtoSegConfig.__init__`, with its defaults."""

    decoder_hidden_size: int = _method_flag(
        "decoder_hidden_size", "width of the all-MLP decoder that fuses the four feature maps (both heads)"
    )
    embedding_dim: int = _method_flag("embedding_dim", "size D of the pixel embeddings and of the prototypes")
    num_prototypes_per_class: int = _method_flag("num_prototypes_per_class", "K, prototypes per class")
    prototype_momentum: float = _method_flag(
        "prototype_momentum", "mu of the prototype update p <- mu * p + (1 - mu) * mean, in [0, 1)"
    )
    sinkhorn_iterations: int = _method_flag("sinkhorn_iterations", "Sinkhorn-Knopp iterations of the clustering")
    sinkhorn_epsilon: float = _method_flag("sinkhorn_epsilon", "kappa, the entropy weight of the clustering, > 0")
    ppc_temperature: float = _method_flag("ppc_temperature", "tau of the pixel-prototype contrastive loss, > 0")
    ppc_loss_weight: float = _method_flag("ppc_loss_weight", "lambda1, weight of the pixel-prototype contrastive loss")
    ppd_loss_weight: float = _method_flag("ppd_loss_weight", "lambda2, weight of the pixel-prototype distance loss")
    prototype_update_pixels: str = _method_flag(
        "prototype_update_pixels",
        "which assigned pixels move a prototype: correct (the paper: the correctly classified ones), "
        "correct_else_all (the same, but all of them in a class with no pixel classified right), all",
        PROTOTYPE_UPDATE_PIXELS,
    )
    class_score_norm: str = _method_flag(
        "class_score_norm",
        "how the cosine class scores become logits: affine (a learned per-class scale and bias) or layer_norm "
        "(the paper's LayerNorm over the classes; degenerate for two classes)",
        CLASS_SCORE_NORMS,
    )
    prototype_init: str = _method_flag(
        "prototype_init",
        "data (a prototype's first update sets it to the mean of its pixels) or random (the paper: momentum "
        "from the random start)",
        PROTOTYPE_INITS,
    )


ARGUMENT_GROUPS: dict[str, type] = {
    "data": DataArguments,
    "augmentation": AugmentationArguments,
    "model": ModelArguments,
    "method": ProtoSegArguments,
    "contrast": PixelContrastArguments,
    "optimization": OptimizationArguments,
    "runtime": RuntimeArguments,
    "evaluation": EvaluationArguments,
    "output": OutputArguments,
}
FIELD_GROUPS: dict[str, str] = {}  # flag name -> its group
for _group, _arguments_class in ARGUMENT_GROUPS.items():
    for _field in dataclasses.fields(_arguments_class):
        if _field.name in FIELD_GROUPS:
            raise TypeError(f"setting {_field.name!r} is declared twice ({FIELD_GROUPS[_field.name]}, {_group})")
        FIELD_GROUPS[_field.name] = _group


@dataclass
class TrainingConfig:
    """Every setting of a run, resolved, by group; `chosen` names the settings a flag or the preset set."""

    data: DataArguments
    augmentation: AugmentationArguments
    model: ModelArguments
    method: ProtoSegArguments
    contrast: PixelContrastArguments
    optimization: OptimizationArguments
    runtime: RuntimeArguments
    evaluation: EvaluationArguments
    output: OutputArguments
    chosen: frozenset[str] = frozenset()

    @property
    def dataset_preset(self) -> DatasetPreset | None:
        """The `DatasetPreset` named by `data.preset`, or None."""
        return get_dataset_preset(self.data.preset) if self.data.preset else None

    def flat(self, *, redact_token: bool = True) -> dict[str, Any]:
        """All settings by flag name (the Hub token redacted)."""
        values = {name: getattr(getattr(self, group), name) for name, group in FIELD_GROUPS.items()}
        if redact_token and values.get("hub_token"):
            values["hub_token"] = "<redacted>"
        return values


# ---------------------------------------------------------------------------------------------------------------------
# Defaults that depend on another setting, and presets

# With --optimizer sgd (FCN recipe) these replace the AdamW defaults above.
SGD_DEFAULTS: dict[str, float] = {
    "learning_rate": 0.01,
    "weight_decay": 5e-4,
    "head_lr_multiplier": 1.0,
    "poly_power": 0.9,
}
# `--method paper`: ProtoSeg as the paper describes it, for the method flags not given. The official code's
# configs differ in one more place: their PPD weight is 0.001 (the paper says 0.01).
PAPER_METHOD: dict[str, Any] = {
    "class_score_norm": "layer_norm",
    "prototype_init": "random",
    "prototype_update_pixels": "correct",
    "num_prototypes_per_class": 10,
    "prototype_momentum": 0.999,
    "sinkhorn_iterations": 3,
    "sinkhorn_epsilon": 0.05,
    "ppc_temperature": 0.1,
    "ppc_loss_weight": 0.01,
    "ppd_loss_weight": 0.01,
}
# Settings whose default is computed from others when left at None.
DERIVED_DEFAULTS: dict[str, str] = {
    "preset": "synthetic when no --dataset_name",
    "base_size": "the crop's short side",
    "eval_stride": "2/3 of the crop",
    "num_threads": "CPU: the cores per process minus the data workers",
    "mixed_precision": "what accelerate launch or its config file set, else no",
    "output_dir": "outputs/<head>-<preset or dataset folder>[-pixel-contrast]",
}
_DATASET_FIELDS = ("dataset_name", "dataset_config_name", "dataset_data_dir", "dataset_revision", "train_split",
                   "validation_split", "image_column", "label_column", "reduce_labels")  # fmt: skip


def field_defaults() -> dict[str, Any]:
    """Every setting's declared default, by flag name."""
    defaults = {}
    for arguments_class in ARGUMENT_GROUPS.values():
        for item in dataclasses.fields(arguments_class):
            has_factory = item.default_factory is not dataclasses.MISSING
            defaults[item.name] = item.default_factory() if has_factory else item.default
    return defaults


def preset_values(preset: DatasetPreset) -> dict[str, Any]:
    """The settings a preset fills: where its data is and how it reads, plus its training overrides."""
    values = {name: getattr(preset, name) for name in _DATASET_FIELDS if getattr(preset, name) is not None}
    return {**values, **preset.overrides}


def encoder_decoder_width(encoder: str) -> int | None:
    """The decoder width that goes with a named random-init encoder (e.g. 768 for mit-b2), else None."""
    entry = ENCODER_CONFIGS.get(encoder.strip().lower().replace("_", "-"))
    return entry[0].get("decoder_hidden_size") if entry else None


def _preset_layer(flags: Mapping[str, Any], preset: DatasetPreset) -> dict[str, Any]:
    """The preset's values that apply: not its optimizer's numbers under another --optimizer, not its Hub
    configuration/revision for another --dataset_name; its data folder only where that dataset has it (a local
    copy of the Hub repository does, e.g. ADE20K's scene_parsing/)."""
    values = preset_values(preset)
    other_optimizer = "optimizer" in flags and flags["optimizer"] != values.get("optimizer", flags["optimizer"])
    other_dataset = "dataset_name" in flags and flags["dataset_name"] != preset.dataset_name
    skipped = set(SGD_DEFAULTS) if other_optimizer else set()
    if other_dataset:
        skipped |= {"dataset_config_name", "dataset_revision"}
        data_dir = preset.dataset_data_dir
        if not (data_dir and os.path.isdir(os.path.join(str(flags["dataset_name"]), data_dir))):
            skipped.add("dataset_data_dir")
    return {name: value for name, value in values.items() if name not in skipped}


def _preset_name(flags: Mapping[str, Any]) -> str | None:
    """The preset a run uses: --preset; else the one a --dataset_name folder's manual-download layout names
    (ADEChallengeData2016/ -> ade20k, leftImg8bit/ + gtFine/ -> cityscapes); else synthetic without a
    --dataset_name. A --preset that contradicts the folder's layout is a ValueError."""
    layout = detect_layout(flags.get("dataset_name"))
    given = flags.get("preset")
    if given and layout and get_dataset_preset(given).name != layout:
        raise ValueError(
            f"--dataset_name {flags['dataset_name']} is a {layout} download (its folder layout), but --preset is "
            f"{given!r}: pass --preset {layout} or leave it out"
        )
    if given:
        return given
    if layout:
        logger.info(
            "--dataset_name %s is laid out as the %s download: --preset %s", flags["dataset_name"], layout, layout
        )
        return layout
    return None if flags.get("dataset_name") else "synthetic"


def _finish_values(values: dict[str, Any], preset: DatasetPreset | None) -> None:
    """Derived settings (crop pair, base size, stride pair, output folder) and checks across settings."""
    crop = list(values["crop_size"])
    if len(crop) == 1:
        crop = [crop[0], crop[0]]
    if len(crop) != 2 or min(crop) < 1:
        raise ValueError(f"--crop_size takes SIZE or HEIGHT WIDTH, got {crop}")
    values["crop_size"] = crop
    if values["base_size"] is None:
        values["base_size"] = min(crop)
    if values["eval_stride"] is not None and len(values["eval_stride"]) == 1:
        values["eval_stride"] = list(values["eval_stride"]) * 2
    if values["output_dir"] is None:
        dataset_tag = values["preset"] or Path(str(values["dataset_name"]).rstrip("/")).name
        contrast_tag = "-pixel-contrast" if values["pixel_contrast"] else ""
        values["output_dir"] = os.path.join("outputs", f"{values['head']}-{dataset_tag}{contrast_tag}")
    if values["push_to_hub"] and not values["hub_model_id"]:
        raise ValueError("--push_to_hub needs --hub_model_id (e.g. your-name/protoseg-mit-b0-ade20k)")
    # checked now, not when the card is written at the end of the run
    check_license_choice(
        values["license"], values["license_name"], values["license_link"], source="", option_prefix="--"
    )
    if values["dataset_name"] is None and (preset is None or preset.source != "synthetic"):
        what = "the folder holding leftImg8bit/ and gtFine/" if values["preset"] == "cityscapes" else "its folder"
        raise ValueError(f"--preset {values['preset']} needs --dataset_name ({what})")


def resolve_config(flags: Mapping[str, Any] | None = None, /, **keyword_flags: Any) -> TrainingConfig:
    """Every setting of a run from the flags given (by flag name, e.g. `resolve_config(max_steps=10)`).

    Layers, each overriding the one before: declared defaults < SGD's defaults with `optimizer="sgd"` < the
    named encoder's decoder width < the dataset preset (the one a dataset_name folder's download layout names
    when no preset is given, synthetic when neither is) < the paper's method values with `method="paper"` < the
    given flags. Raises a ValueError for unknown names or inconsistent settings.
    """
    flags = {**(flags or {}), **keyword_flags}
    unknown = sorted(set(flags) - set(FIELD_GROUPS))
    if unknown:
        raise ValueError(f"unknown settings {unknown}; valid: {', '.join(FIELD_GROUPS)}")
    preset_name = _preset_name(flags)
    preset = get_dataset_preset(preset_name) if preset_name else None
    preset_layer = _preset_layer(flags, preset) if preset is not None else {}
    if preset is not None:
        preset_layer["preset"] = preset.name

    def chosen_value(name: str) -> Any:
        return flags.get(name, preset_layer.get(name, field_defaults()[name]))

    values = field_defaults()
    if chosen_value("optimizer") == "sgd":
        values.update(SGD_DEFAULTS)
    decoder_width = encoder_decoder_width(chosen_value("encoder"))
    if decoder_width is not None and "decoder_hidden_size" in values:
        values["decoder_hidden_size"] = decoder_width
    values.update(preset_layer)
    if chosen_value("method") == "paper":
        values.update(PAPER_METHOD)
    values.update(flags)
    _finish_values(values, preset)
    groups = {
        group: arguments_class(**{item.name: values[item.name] for item in dataclasses.fields(arguments_class)})
        for group, arguments_class in ARGUMENT_GROUPS.items()
    }
    return TrainingConfig(**groups, chosen=frozenset(flags) | frozenset(preset_layer))


# ---------------------------------------------------------------------------------------------------------------------
# The command line


def describe_default(name: str, default: Any) -> str:
    """E.g. "default: 6e-05; with --optimizer sgd: 0.01; preset synthetic: 0.001" for `--help`."""

    def text(value: Any) -> str:
        return " ".join(str(item) for item in value) if isinstance(value, (list, tuple)) else str(value)

    parts = [f"default: {DERIVED_DEFAULTS[name] if default is None and name in DERIVED_DEFAULTS else text(default)}"]
    if name in SGD_DEFAULTS:
        parts.append(f"with --optimizer sgd: {text(SGD_DEFAULTS[name])}")
    if name in PAPER_METHOD and PAPER_METHOD[name] != default:
        parts.append(f"with --method paper: {text(PAPER_METHOD[name])}")
    if name == "decoder_hidden_size":
        widths = {encoder: encoder_decoder_width(encoder) for encoder in ENCODER_CONFIGS}
        parts.append(", ".join(f"--encoder {encoder}: {width}" for encoder, width in widths.items() if width))
    for preset in DATASET_PRESETS.values():
        value = preset_values(preset).get(name)
        if value is not None and value != default:
            parts.append(f"preset {preset.name}: {text(value)}")
    return "; ".join(parts)


class _DefaultsHelpFormatter(argparse.HelpFormatter):
    """Appends what a flag will be when not given: its default, the value it takes with other settings, and
    each preset's value."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        if action.dest not in FIELD_GROUPS or action.option_strings[0].startswith("--no_"):
            return help_text
        return f"{help_text} ({describe_default(action.dest, action.default)})".replace("%", "%%")


def build_parser() -> HfArgumentParser:
    """The `train.py` command line: one flag per setting of every argument group."""
    return HfArgumentParser(
        list(ARGUMENT_GROUPS.values()),
        prog="training/train.py",
        description="Train ProtoSeg (or the linear-classifier baseline). Presets fill settings not given as flags.",
        formatter_class=_DefaultsHelpFormatter,
    )


class _NotGiven:
    def __repr__(self) -> str:
        return "<not given>"


_NOT_GIVEN = _NotGiven()


def _refuse_retired_flags(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """Stop as argparse does (exit status 2) at a flag of an earlier version, saying what became of it."""
    for argument in argv:
        name = argument.removeprefix("--").split("=", 1)[0].replace("-", "_")
        if argument.startswith("--") and name in RETIRED_FLAGS:
            parser.error(f"--{name} is no longer a flag: {RETIRED_FLAGS[name]}")


def parse_flags(argv: list[str] | None = None) -> dict[str, Any]:
    """Only the flags given on the command line, parsed and typed, by name (defaults left out)."""
    parser = build_parser()
    _refuse_retired_flags(parser, sys.argv[1:] if argv is None else argv)
    not_given = argparse.Namespace(**dict.fromkeys(FIELD_GROUPS, _NOT_GIVEN))
    namespace = parser.parse_args(argv, namespace=not_given)
    return {name: value for name, value in vars(namespace).items() if value is not _NOT_GIVEN}


def parse_config(argv: list[str] | None = None) -> TrainingConfig:
    """Command-line flags (default: sys.argv) -> the resolved `TrainingConfig`."""
    return resolve_config(parse_flags(argv))
