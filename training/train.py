#!/usr/bin/env python
"""Train ProtoSeg (or the linear SegFormer baseline) with accelerate.

    accelerate launch training/train.py                       # built-in synthetic data, a few minutes on CPU
    accelerate launch training/train.py --preset ade20k --encoder nvidia/mit-b0
    torchrun --nproc_per_node 2 training/train.py ...         # DDP (gloo on CPU, NCCL on GPUs)
    python training/train.py --help                           # every knob of TrainingConfig

Reads top to bottom: configuration -> processes -> data -> model -> optimizer and schedule ->
resume -> training loop (evaluation, checkpoints, logging) -> final evaluation and export.
"""

from __future__ import annotations

import sys
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parents[1]
if str(_REPO_ROOT) not in sys.path:  # `import training.x` / `modeling_protoseg` when run as a script
    sys.path.insert(0, str(_REPO_ROOT))

import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any, Iterator, Optional  # noqa: E402

import torch  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from accelerate.utils import DistributedDataParallelKwargs, set_seed  # noqa: E402
from torch import nn  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402
from transformers import HfArgumentParser, SegformerConfig, SegformerImageProcessor  # noqa: E402

from training.augmentation import IMAGENET_MEAN, IMAGENET_STD, build_eval_transform, build_train_transform  # noqa: E402
from training.checkpointing import load_checkpoint, resolve_resume_checkpoint, save_checkpoint  # noqa: E402
from training.data import (  # noqa: E402
    FilePairSource,
    HubDatasetSource,
    LabelMapping,
    ResumableShardedSampler,
    SegmentationDataset,
    SyntheticSource,
    cityscapes_file_pairs,
    collate_eval,
    collate_train,
    find_id2label,
    load_hub_dataset,
    pick_split,
)
from training.evaluation import evaluate  # noqa: E402
from training.presets import (  # noqa: E402
    CITYSCAPES_LABEL_ID_TO_TRAIN_ID,
    DATASET_PRESETS,
    EncoderSpec,
    get_dataset_preset,
    resolve_encoder,
)
from training.synthetic import SYNTHETIC_CLASS_NAMES, synthetic_splits  # noqa: E402

logger = logging.getLogger("protoseg.train")


# =============================================================================================
# Configuration: every knob. Fields left at None are filled by the dataset preset, then by
# GLOBAL_DEFAULTS; anything given on the command line wins.


@dataclass
class TrainingConfig:
    # ---- data
    preset: Optional[str] = field(
        default=None,
        metadata={"help": f"dataset preset: {', '.join(DATASET_PRESETS)} (default: synthetic if no --dataset_name)"},
    )
    dataset_name: Optional[str] = field(
        default=None,
        metadata={"help": "Hub dataset id or local folder (Parquet, imagefolder, save_to_disk, Cityscapes)"},
    )
    dataset_config_name: Optional[str] = field(default=None, metadata={"help": "dataset configuration name"})
    dataset_revision: Optional[str] = field(default=None, metadata={"help": "Hub revision (branch, tag, commit)"})
    train_split: Optional[str] = field(default=None, metadata={"help": "training split (default: train)"})
    validation_split: Optional[str] = field(default=None, metadata={"help": "evaluation split (default: validation)"})
    image_column: Optional[str] = field(default=None, metadata={"help": "image column (default: image)"})
    label_column: Optional[str] = field(default=None, metadata={"help": "label-map column (default: annotation)"})
    reduce_labels: Optional[bool] = field(
        default=None, metadata={"help": "true: label 0 ('other') -> ignore, v -> v-1 (ADE20K)"}
    )
    id2label_file: Optional[str] = field(default=None, metadata={"help": 'JSON class names {"0": "sky", ...}'})
    num_labels: Optional[int] = field(default=None, metadata={"help": "number of classes if no names are known"})
    ignore_index: int = field(default=255, metadata={"help": "label value of pixels that are ignored"})
    max_train_samples: Optional[int] = field(default=None, metadata={"help": "use only the first N training samples"})
    max_eval_samples: Optional[int] = field(default=None, metadata={"help": "use only the first N evaluation samples"})
    synthetic_num_train: int = field(default=2000, metadata={"help": "synthetic preset: training scenes"})
    synthetic_num_validation: int = field(default=100, metadata={"help": "synthetic preset: validation scenes"})
    synthetic_image_size: int = field(default=96, metadata={"help": "synthetic preset: scene side length"})
    dataloader_num_workers: Optional[int] = field(default=None, metadata={"help": "data loading processes"})

    # ---- model
    encoder: Optional[str] = field(
        default=None,
        metadata={"help": "encoder name (random init: mit-b0..mit-b5, swin-tiny/small/base/large, mit-micro, mit-test) "
                  "or a pretrained checkpoint id/folder (e.g. nvidia/mit-b0)"},
    )  # fmt: skip
    head: str = field(
        default="protoseg",
        metadata={"help": "protoseg: nearest-prototype classifier; linear: SegFormer's parametric classifier",
                  "choices": ["protoseg", "linear"]},
    )  # fmt: skip
    num_prototypes_per_class: Optional[int] = field(default=None, metadata={"help": "K (paper: 10)"})
    prototype_momentum: Optional[float] = field(default=None, metadata={"help": "mu (paper: 0.999)"})
    sinkhorn_iterations: int = field(default=3, metadata={"help": "Sinkhorn-Knopp iterations"})
    sinkhorn_epsilon: float = field(default=0.05, metadata={"help": "kappa, entropy weight of the clustering"})
    ppc_temperature: float = field(default=0.1, metadata={"help": "tau of the PPC loss"})
    ppc_loss_weight: float = field(default=0.01, metadata={"help": "lambda1"})
    ppd_loss_weight: float = field(default=0.01, metadata={"help": "lambda2"})
    update_prototypes_with_correct_only: bool = field(
        default=True, metadata={"help": "move prototypes only with correctly classified pixels (official code)"}
    )
    decoder_hidden_size: Optional[int] = field(default=None, metadata={"help": "decoder width (default: encoder's)"})
    embedding_dim: Optional[int] = field(default=None, metadata={"help": "D, pixel embedding size (default 256)"})

    # ---- augmentation
    crop_size: Optional[list[int]] = field(default=None, metadata={"help": "training crop: SIZE or HEIGHT WIDTH"})
    base_size: Optional[int] = field(
        default=None, metadata={"help": "short side at scale 1 and at evaluation (default: the crop's short side)"}
    )
    min_scale: float = field(default=0.5, metadata={"help": "random rescale: smallest factor"})
    max_scale: float = field(default=2.0, metadata={"help": "random rescale: largest factor"})
    photometric_jitter: bool = field(default=True, metadata={"help": "brightness/contrast/saturation/hue jitter"})
    hflip_probability: float = field(default=0.5, metadata={"help": "probability of a horizontal flip"})

    # ---- optimisation
    max_steps: Optional[int] = field(default=None, metadata={"help": "optimizer steps"})
    per_device_train_batch_size: Optional[int] = field(default=None, metadata={"help": "images per process and step"})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    optimizer: Optional[str] = field(
        default=None, metadata={"help": "adamw (SegFormer recipe) or sgd (FCN recipe)", "choices": ["adamw", "sgd"]}
    )
    learning_rate: Optional[float] = field(default=None, metadata={"help": "peak lr (adamw 6e-5, sgd 0.01)"})
    head_lr_multiplier: Optional[float] = field(
        default=None, metadata={"help": "lr factor of everything but the encoder (adamw 10, sgd 1)"}
    )
    weight_decay: Optional[float] = field(default=None, metadata={"help": "adamw 0.01, sgd 5e-4; none on norms/biases"})
    sgd_momentum: float = field(default=0.9, metadata={"help": "SGD momentum"})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1"})
    adam_beta2: float = field(default=0.999, metadata={"help": "AdamW beta2"})
    poly_power: Optional[float] = field(default=None, metadata={"help": "poly decay power (adamw 1.0, sgd 0.9)"})
    min_learning_rate: float = field(default=0.0, metadata={"help": "poly schedule floor"})
    warmup_steps: Optional[int] = field(default=None, metadata={"help": "linear warm-up steps (default 1500)"})
    warmup_start_factor: float = field(default=1e-6, metadata={"help": "lr factor at the first warm-up step"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm; 0 disables"})
    mixed_precision: str = field(default="no", metadata={"help": "no, fp16 or bf16", "choices": ["no", "fp16", "bf16"]})
    use_cpu: bool = field(default=False, metadata={"help": "train on CPU even when a GPU is available"})
    ddp_find_unused_parameters: bool = field(
        default=False, metadata={"help": "DDP option; the models here give every trainable parameter a gradient"}
    )
    seed: int = field(default=42, metadata={"help": "base seed (process i uses seed + i for dropout etc.)"})
    num_threads: Optional[int] = field(default=None, metadata={"help": "torch CPU threads per process"})

    # ---- evaluation
    eval_mode: Optional[str] = field(
        default=None, metadata={"help": "whole (short side -> base size) or slide", "choices": ["whole", "slide"]}
    )
    eval_stride: Optional[list[int]] = field(
        default=None, metadata={"help": "sliding-window stride (default 2/3 crop)"}
    )
    eval_steps: Optional[int] = field(default=None, metadata={"help": "evaluate every N steps (0: only at the end)"})
    per_device_eval_batch_size: Optional[int] = field(default=None, metadata={"help": "evaluation images per process"})

    # ---- logging, checkpoints, export
    output_dir: Optional[str] = field(default=None, metadata={"help": "default outputs/<head>-<dataset>"})
    logging_steps: Optional[int] = field(default=None, metadata={"help": "log every N steps"})
    report_to: str = field(default="tensorboard", metadata={"help": "accelerate tracker(s): tensorboard, all, none"})
    checkpointing_steps: Optional[int] = field(default=None, metadata={"help": "save a resumable state every N steps"})
    checkpoints_total_limit: int = field(default=2, metadata={"help": "keep only the newest N checkpoints"})
    resume_from_checkpoint: Optional[str] = field(default=None, metadata={"help": "'latest' or a checkpoint folder"})
    push_to_hub: bool = field(default=False, metadata={"help": "upload the final folder and model card"})
    hub_model_id: Optional[str] = field(default=None, metadata={"help": "Hub repo id for --push_to_hub"})
    hub_token: Optional[str] = field(default=None, metadata={"help": "Hub token (default: the logged-in one)"})
    hub_private_repo: bool = field(default=False, metadata={"help": "create the Hub repo as private"})
    step_delay_seconds: float = field(
        default=0.0, metadata={"help": "testing aid: sleep after every step so a test can kill the run mid-way"}
    )


GLOBAL_DEFAULTS: dict[str, Any] = dict(
    encoder="mit-b0",
    train_split="train",
    validation_split="validation",
    image_column="image",
    label_column="annotation",
    reduce_labels=False,
    num_prototypes_per_class=10,
    prototype_momentum=0.999,
    embedding_dim=256,
    crop_size=[512, 512],
    max_steps=160_000,
    per_device_train_batch_size=2,
    optimizer="adamw",
    warmup_steps=1500,
    eval_mode="whole",
    eval_steps=0,
    per_device_eval_batch_size=1,
    logging_steps=50,
    checkpointing_steps=1000,
    dataloader_num_workers=2,
)
OPTIMIZER_DEFAULTS: dict[str, dict[str, float]] = {
    "adamw": dict(learning_rate=6e-5, weight_decay=0.01, head_lr_multiplier=10.0, poly_power=1.0),
    "sgd": dict(learning_rate=0.01, weight_decay=5e-4, head_lr_multiplier=1.0, poly_power=0.9),
}


def resolve_config(config: TrainingConfig) -> tuple[TrainingConfig, Any]:
    """Fill the None fields from the preset, then from the global and optimizer defaults; validate."""
    if config.preset is None and config.dataset_name is None:
        config = dataclasses.replace(config, preset="synthetic")
    preset = get_dataset_preset(config.preset) if config.preset else None
    values = dataclasses.asdict(config)
    if preset is not None:
        values["preset"] = preset.name
        preset_values = dict(
            dataset_name=preset.dataset_name,
            dataset_config_name=preset.dataset_config_name,
            dataset_revision=preset.dataset_revision,
            train_split=preset.train_split,
            validation_split=preset.validation_split,
            image_column=preset.image_column,
            label_column=preset.label_column,
            reduce_labels=preset.reduce_labels,
            **preset.overrides,
        )
        other_optimizer = values["optimizer"] is not None and values["optimizer"] != preset_values.get("optimizer")
        other_dataset = values["dataset_name"] is not None and values["dataset_name"] != preset.dataset_name
        for key, value in preset_values.items():
            if other_optimizer and key in OPTIMIZER_DEFAULTS["adamw"]:
                continue  # e.g. the preset's AdamW learning rate does not suit --optimizer sgd
            if other_dataset and key in ("dataset_config_name", "dataset_revision"):
                continue  # the preset's Hub configuration/revision does not apply to a local copy
            if values.get(key) is None:
                values[key] = value
    for key, value in GLOBAL_DEFAULTS.items():
        if values.get(key) is None:
            values[key] = value
    for key, value in OPTIMIZER_DEFAULTS[values["optimizer"]].items():
        if values.get(key) is None:
            values[key] = value
    crop = values["crop_size"]
    if len(crop) == 1:
        values["crop_size"] = crop = [crop[0], crop[0]]
    if len(crop) != 2 or min(crop) < 1:
        raise ValueError(f"--crop_size takes SIZE or HEIGHT WIDTH, got {crop}")
    if values["base_size"] is None:
        values["base_size"] = min(crop)
    if values["eval_stride"] is not None and len(values["eval_stride"]) == 1:
        values["eval_stride"] = values["eval_stride"] * 2
    if values["output_dir"] is None:
        dataset_tag = values["preset"] or Path(str(values["dataset_name"]).rstrip("/")).name
        values["output_dir"] = os.path.join("outputs", f"{values['head']}-{dataset_tag}")
    if values["push_to_hub"] and not values["hub_model_id"]:
        raise ValueError("--push_to_hub needs --hub_model_id (e.g. your-name/protoseg-mit-b0-ade20k)")
    if values["dataset_name"] is None and (preset is None or preset.source != "synthetic"):
        raise ValueError(f"--preset {values['preset']} needs --dataset_name (the dataset's local folder)")
    return TrainingConfig(**values), preset


# =============================================================================================
# Data


def build_datasets(
    config: TrainingConfig, preset: Any
) -> tuple[SegmentationDataset, SegmentationDataset, dict[int, str]]:
    """Training and evaluation datasets (with their transforms) and the class names."""
    source_kind = preset_source(preset)
    if source_kind == "synthetic":
        train_scenes, validation_scenes = synthetic_splits(
            num_train=config.synthetic_num_train,
            num_validation=config.synthetic_num_validation,
            image_size=config.synthetic_image_size,
            seed=config.seed,
        )
        train_source = SyntheticSource(train_scenes, split_name="train")
        eval_source = SyntheticSource(validation_scenes, split_name="validation")
        id2label = dict(enumerate(SYNTHETIC_CLASS_NAMES))
        label_mapping = LabelMapping(ignore_index=config.ignore_index)
    elif source_kind == "cityscapes":
        train_source = FilePairSource(
            cityscapes_file_pairs(config.dataset_name, config.train_split), split_name="train"
        )
        eval_source = FilePairSource(
            cityscapes_file_pairs(config.dataset_name, config.validation_split), split_name=config.validation_split
        )
        id2label = find_id2label(
            id2label_file=config.id2label_file, dataset_name=None, class_names=preset.class_names, num_labels=None
        )
        label_mapping = LabelMapping(ignore_index=config.ignore_index, id_to_train_id=CITYSCAPES_LABEL_ID_TO_TRAIN_ID)
    else:
        dataset_name = config.dataset_name
        if preset is not None and not os.path.isabs(dataset_name) and not os.path.exists(dataset_name):
            repo_relative = _REPO_ROOT / dataset_name  # presets' relative paths also work from another cwd
            if repo_relative.exists():
                dataset_name = str(repo_relative)
        splits = load_hub_dataset(
            dataset_name, config_name=config.dataset_config_name, revision=config.dataset_revision
        )
        train_split = pick_split(list(splits), config.train_split)
        eval_split = pick_split(list(splits), config.validation_split, fallbacks=("validation", "val", "valid", "test"))
        train_source = HubDatasetSource(
            splits[train_split],
            image_column=config.image_column,
            label_column=config.label_column,
            split_name=train_split,
        )
        eval_source = HubDatasetSource(
            splits[eval_split],
            image_column=config.image_column,
            label_column=config.label_column,
            split_name=eval_split,
        )
        id2label = find_id2label(
            id2label_file=config.id2label_file,
            dataset_name=dataset_name,
            class_names=preset.class_names if preset is not None else None,
            num_labels=config.num_labels,
        )
        label_mapping = LabelMapping(ignore_index=config.ignore_index, reduce_labels=bool(config.reduce_labels))
    if config.num_labels is not None and config.num_labels != len(id2label):
        raise ValueError(f"--num_labels {config.num_labels} disagrees with the {len(id2label)} class names found")
    if config.max_train_samples is not None:
        train_source = _first_samples(train_source, config.max_train_samples)
    if config.max_eval_samples is not None:
        eval_source = _first_samples(eval_source, config.max_eval_samples)

    common = dict(num_labels=len(id2label), ignore_index=config.ignore_index, label_mapping=label_mapping)
    train_dataset = SegmentationDataset(
        train_source,
        transform=build_train_transform(
            crop_size=tuple(config.crop_size),
            base_size=config.base_size,
            scale_range=(config.min_scale, config.max_scale),
            ignore_index=config.ignore_index,
            photometric=config.photometric_jitter,
            hflip_probability=config.hflip_probability,
        ),
        **common,
    )
    eval_dataset = SegmentationDataset(
        eval_source, transform=build_eval_transform(base_size=config.base_size), keep_label_size=True, **common
    )
    return train_dataset, eval_dataset, id2label


class _FirstSamples:
    """The first `count` samples of a source."""

    def __init__(self, source: Any, count: int) -> None:
        self.source, self.count = source, min(count, len(source))
        self.split_name = getattr(source, "split_name", "")

    def __len__(self) -> int:
        return self.count

    def load(self, index: int) -> tuple[Any, Any, str]:
        if index >= self.count:
            raise IndexError(index)
        return self.source.load(index)


def preset_source(preset: Any) -> str:
    """Where the data comes from: "synthetic", "cityscapes" or "hub" (anything `load_dataset` reads)."""
    return preset.source if preset is not None else "hub"


def _first_samples(source: Any, count: int) -> Any:
    return _FirstSamples(source, count)


def iterate_forever(
    loader: torch.utils.data.DataLoader, sampler: ResumableShardedSampler, epoch: int, start_batch: int
) -> Iterator[dict]:
    """Batches across epoch boundaries, starting at (epoch, start_batch)."""
    sampler.set_epoch(epoch, start_batch)
    while True:
        yield from loader
        epoch += 1
        sampler.set_epoch(epoch, 0)


# =============================================================================================
# Model


def build_model(config: TrainingConfig, encoder: EncoderSpec, id2label: dict[int, str]) -> nn.Module:
    """ProtoSeg, or the linear-classifier baseline, on the chosen encoder."""
    label2id = {name: index for index, name in id2label.items()}
    if config.head == "linear":
        return _build_linear_baseline(config, encoder, id2label, label2id)

    from modeling_protoseg import ProtoSegConfig, ProtoSegForSemanticSegmentation

    method_kwargs = dict(
        id2label=id2label,
        label2id=label2id,
        num_prototypes_per_class=config.num_prototypes_per_class,
        prototype_momentum=config.prototype_momentum,
        sinkhorn_iterations=config.sinkhorn_iterations,
        sinkhorn_epsilon=config.sinkhorn_epsilon,
        ppc_temperature=config.ppc_temperature,
        ppc_loss_weight=config.ppc_loss_weight,
        ppd_loss_weight=config.ppd_loss_weight,
        semantic_loss_ignore_index=config.ignore_index,
        update_prototypes_with_correct_only=config.update_prototypes_with_correct_only,
        embedding_dim=config.embedding_dim,
    )
    if encoder.is_pretrained:
        if config.decoder_hidden_size is not None:
            method_kwargs["decoder_hidden_size"] = config.decoder_hidden_size
        return ProtoSegForSemanticSegmentation.from_pretrained_encoder(encoder.pretrained_name_or_path, **method_kwargs)
    decoder_hidden_size = config.decoder_hidden_size or getattr(encoder.config, "decoder_hidden_size", None) or 256
    model_config = ProtoSegConfig(
        encoder_config=encoder.config, decoder_hidden_size=decoder_hidden_size, **method_kwargs
    )
    return ProtoSegForSemanticSegmentation(model_config)


def _encoder_model_type(encoder: EncoderSpec) -> str:
    """ "segformer", "swin", "protoseg_efficientnet_lite", ... of a named or pretrained encoder."""
    if not encoder.is_pretrained:
        return encoder.config.model_type
    from modeling_protoseg.encoders import pretrained_encoder_model_type

    return pretrained_encoder_model_type(encoder.pretrained_name_or_path)


def _build_linear_baseline(
    config: TrainingConfig, encoder: EncoderSpec, id2label: dict[int, str], label2id: dict[str, int]
) -> nn.Module:
    """The same encoder and all-MLP decoder as ProtoSeg with a 1x1-conv classifier: `SegformerForSemanticSegmentation`
    on MiT encoders (a plain transformers model), `ProtoSegLinearHeadForSemanticSegmentation` on every other one."""
    head_kwargs = dict(id2label=id2label, label2id=label2id, semantic_loss_ignore_index=config.ignore_index)
    if config.decoder_hidden_size is not None:
        head_kwargs["decoder_hidden_size"] = config.decoder_hidden_size
    if _encoder_model_type(encoder) == "segformer":
        from transformers import SegformerForSemanticSegmentation

        if encoder.is_pretrained:
            return SegformerForSemanticSegmentation.from_pretrained(
                encoder.pretrained_name_or_path, ignore_mismatched_sizes=True, **head_kwargs
            )
        segformer_config = SegformerConfig(**{**encoder.config.to_dict(), **head_kwargs})
        return SegformerForSemanticSegmentation(segformer_config)

    from modeling_protoseg import ProtoSegLinearHeadConfig, ProtoSegLinearHeadForSemanticSegmentation

    if encoder.is_pretrained:
        return ProtoSegLinearHeadForSemanticSegmentation.from_pretrained_encoder(
            encoder.pretrained_name_or_path, **head_kwargs
        )
    head_kwargs.setdefault("decoder_hidden_size", getattr(encoder.config, "decoder_hidden_size", None) or 256)
    return ProtoSegLinearHeadForSemanticSegmentation(
        ProtoSegLinearHeadConfig(encoder_config=encoder.config, **head_kwargs)
    )


# =============================================================================================
# Optimizer and schedule


def build_optimizer(model: nn.Module, config: TrainingConfig) -> torch.optim.Optimizer:
    """AdamW or SGD with 4 parameter groups: (encoder | head) x (decay | no decay on norms and biases).
    The head (decoder, projection, classifier) learns `head_lr_multiplier` times faster."""
    encoder_prefixes = ("encoder.", "segformer.")  # ProtoSeg's and SegFormer's encoder attributes
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        is_encoder = name.startswith(encoder_prefixes)
        decays = parameter.ndim > 1 and "pos_block" not in name
        groups.setdefault((is_encoder, decays), []).append(parameter)
    param_groups = [
        {
            "params": params,
            "lr": config.learning_rate * (1.0 if is_encoder else config.head_lr_multiplier),
            "weight_decay": config.weight_decay if decays else 0.0,
        }
        for (is_encoder, decays), params in sorted(groups.items())
    ]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(param_groups, lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2))
    return torch.optim.SGD(param_groups, lr=config.learning_rate, momentum=config.sgd_momentum)


class PolyWithWarmup:
    """lr factor at step t: poly decay (1 - t/T)^power (floored at min_lr), times a linear warm-up
    from `warmup_start_factor` to 1 over the first `warmup_steps` (mmseg's schedule)."""

    def __init__(
        self, *, max_steps: int, power: float, warmup_steps: int, warmup_start_factor: float, min_factor: float
    ) -> None:
        self.max_steps, self.power = max_steps, power
        self.warmup_steps, self.warmup_start_factor, self.min_factor = warmup_steps, warmup_start_factor, min_factor

    def __call__(self, step: int) -> float:
        progress = min(step / max(self.max_steps, 1), 1.0)
        factor = (1.0 - self.min_factor) * (1.0 - progress) ** self.power + self.min_factor
        if step < self.warmup_steps:
            factor *= self.warmup_start_factor + (1.0 - self.warmup_start_factor) * step / self.warmup_steps
        return factor


# =============================================================================================
# Helpers for multi-process runs, logging and export


def synchronize_buffers(model: nn.Module, accelerator: Accelerator) -> None:
    """Copy rank 0's BatchNorm statistics (and other buffers) to all ranks. The prototypes are left
    alone: the model keeps them identical itself, and `divergence_across_processes` checks that."""
    if accelerator.num_processes > 1 and torch.distributed.is_initialized():
        for name, buffer in model.named_buffers():
            if not name.endswith("prototypes"):
                torch.distributed.broadcast(buffer.data, src=0)


def divergence_across_processes(model: nn.Module, accelerator: Accelerator) -> dict[str, float]:
    """Largest difference between processes of the prototypes and of per-tensor parameter sums (0 = in sync)."""
    result = {}
    prototypes = getattr(model, "prototypes", None)
    if prototypes is not None:
        gathered = accelerator.gather(prototypes.detach().float()[None])  # (P, C, K, D)
        result["prototypes_max_abs_difference_across_processes"] = float((gathered - gathered[:1]).abs().max())
    parameter_sums = torch.stack([p.detach().double().sum() for p in model.parameters()])[None]  # (1, num_tensors)
    gathered_sums = accelerator.gather(parameter_sums)  # (P, num_tensors)
    result["parameters_max_abs_difference_across_processes"] = float((gathered_sums - gathered_sums[:1]).abs().max())
    return result


def _hardware_description(accelerator: Accelerator) -> str:
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


def _tracker_config(config: TrainingConfig) -> dict[str, Any]:
    """TrainingConfig as scalars/strings for the trackers' hyper-parameter tables (no tokens)."""
    values = dataclasses.asdict(config)
    values.pop("hub_token", None)
    return {key: value if isinstance(value, (int, float, str, bool)) else str(value) for key, value in values.items()}


def _write_minimal_card(folder: Path, summary: dict[str, Any], eval_results: dict[str, Any]) -> None:
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
    card = f"""---
library_name: transformers
pipeline_tag: image-segmentation
tags: [protoseg, semantic-segmentation]
---
# {summary["model_name"]}

A semantic segmentation model ({method}) trained with `training/train.py`.

- Encoder: `{summary["encoder"]}`; dataset: `{summary["dataset"]}` ({summary["num_labels"]} classes)
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
"""
    (folder / "README.md").write_text(card)


def export_final_model(
    model: nn.Module,
    config: TrainingConfig,
    id2label: dict[int, str],
    eval_results: dict[str, Any],
    train_results: dict[str, Any],
    summary: dict[str, Any],
) -> Path:
    """Write model + image processor + eval/train results + model card into output_dir.

    Everything is written to a temporary folder first and then moved file by file, so a crash never
    leaves a half-written `model.safetensors` under its final name."""
    output_dir = Path(config.output_dir)
    staging = output_dir / ".tmp-final"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    model.save_pretrained(staging)
    crop_height, crop_width = config.crop_size
    image_processor = SegformerImageProcessor(
        do_resize=True,
        size={"height": config.base_size, "width": round(config.base_size * crop_width / crop_height)},
        do_normalize=True,
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
        do_reduce_labels=False,
    )
    image_processor.save_pretrained(staging)
    per_category_iou = {
        id2label[index]: (None if math.isnan(value) else value)
        for index, value in enumerate(eval_results["per_category_iou"])
    }
    per_category_accuracy = {
        id2label[index]: (None if math.isnan(value) else value)
        for index, value in enumerate(eval_results["per_category_accuracy"])
    }
    eval_json = {
        "mean_iou": eval_results["mean_iou"],
        "mean_accuracy": eval_results["mean_accuracy"],
        "overall_accuracy": eval_results["overall_accuracy"],
        "per_category_iou": per_category_iou,
        "per_category_accuracy": per_category_accuracy,
        "eval_mode": config.eval_mode,
        "eval_split": summary["eval_split"],
        "num_samples": eval_results["num_samples"],
        "dataset": summary["dataset"],
    }
    (staging / "eval_results.json").write_text(json.dumps(eval_json, indent=2))
    (staging / "train_results.json").write_text(json.dumps(train_results, indent=2))
    try:
        import model_cards
    except ImportError:
        model_cards = None
    if model_cards is not None and hasattr(model_cards, "write_model_card"):
        model_cards.write_model_card(staging, summary, repo_id=config.hub_model_id)
    else:
        _write_minimal_card(staging, summary, eval_json)
    for written in sorted(staging.rglob("*")):
        if written.is_file():
            target = output_dir / written.relative_to(staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(written, target)
    shutil.rmtree(staging, ignore_errors=True)
    return output_dir


def push_folder_to_hub(folder: Path, config: TrainingConfig) -> None:
    """Upload the final folder with its model card through `model_cards.publish_folder`."""
    try:
        from model_cards import publish_folder
    except ImportError as error:
        raise RuntimeError(
            "--push_to_hub needs model_cards.publish_folder, which is not importable; the trained model is "
            f"saved in {folder}; upload it later with model_cards.publish_folder"
        ) from error
    publish_folder(folder, repo_id=config.hub_model_id, token=config.hub_token, private=config.hub_private_repo)


# =============================================================================================
# The run


def main(argv: list[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    (parsed,) = HfArgumentParser(TrainingConfig).parse_args_into_dataclasses(args=argv)
    config, preset = resolve_config(parsed)
    encoder = resolve_encoder(config.encoder)  # unknown names fail here, before anything heavy
    if config.head == "linear" and not encoder.is_pretrained and encoder.config.model_type != "segformer":
        _build_linear_baseline(config, encoder, {0: "x"}, {"x": 0})  # raises the clear error early

    # ---- processes: one per device, or torchrun/accelerate workers (DDP, gloo on CPU)
    log_with = None
    if config.report_to != "none":
        log_with = config.report_to
        if config.report_to == "tensorboard":
            try:
                import tensorboard  # noqa: F401
            except ImportError:
                log_with = None
    has_accelerator_device = torch.cuda.is_available() or torch.backends.mps.is_available()
    accelerator = Accelerator(
        cpu=config.use_cpu or not has_accelerator_device,  # cpu=True: torchrun on CPUs -> DDP over gloo
        # No buffer broadcast from rank 0 before each forward: the model itself reduces its prototype
        # updates across processes (checked after training); BatchNorm statistics are synchronised
        # before each evaluation.
        kwargs_handlers=[
            DistributedDataParallelKwargs(
                broadcast_buffers=False, find_unused_parameters=config.ddp_find_unused_parameters
            )
        ],
        mixed_precision=config.mixed_precision,
        log_with=log_with,
        project_dir=os.path.join(config.output_dir, "runs"),
    )
    if accelerator.device.type == "cpu":
        # Share the cores between processes and data workers: oversubscribed OpenMP threads are
        # many times slower than fewer threads on a busy machine.
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        cores_per_process = (os.cpu_count() or 1) // local_processes
        torch.set_num_threads(config.num_threads or max(1, cores_per_process - config.dataloader_num_workers))
    elif config.num_threads:
        torch.set_num_threads(config.num_threads)
    if not accelerator.is_local_main_process:
        logging.getLogger().setLevel(logging.WARNING)
        import datasets
        import transformers

        datasets.utils.logging.set_verbosity_error()
        transformers.utils.logging.set_verbosity_error()
    logger.info("config: %s", dataclasses.replace(config, hub_token="<redacted>" if config.hub_token else None))
    logger.info("processes: %d on %s", accelerator.num_processes, accelerator.device)
    checkpoint_root = Path(config.output_dir) / "checkpoints"

    # ---- data
    train_dataset, eval_dataset, id2label = build_datasets(config, preset)
    num_labels = len(id2label)
    train_sampler = ResumableShardedSampler(
        len(train_dataset),
        batch_size=config.per_device_train_batch_size,
        num_replicas=accelerator.num_processes,
        rank=accelerator.process_index,
        seed=config.seed,
    )
    train_loader = torch.utils.data.DataLoader(
        train_dataset,
        batch_size=config.per_device_train_batch_size,
        sampler=train_sampler,
        collate_fn=collate_train,
        num_workers=config.dataloader_num_workers,
        drop_last=True,
        pin_memory=accelerator.device.type == "cuda",
        generator=torch.Generator(),  # the loader must not draw from the global RNG (exact resumes)
    )
    # Evaluation: every process takes a disjoint shard (no padding duplicates); matrices are summed.
    eval_indices = list(range(accelerator.process_index, len(eval_dataset), accelerator.num_processes))
    eval_loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(eval_dataset, eval_indices),
        batch_size=config.per_device_eval_batch_size,
        collate_fn=collate_eval,
        num_workers=config.dataloader_num_workers,
        generator=torch.Generator(),  # evaluating must not move the training RNG (dropout) either
    )
    # Read one sample of each split now: wrong columns, formats or labels fail before the model is built
    # (every other sample is checked when its batch is loaded).
    for split_dataset in (train_dataset, eval_dataset):
        if len(split_dataset) == 0:
            raise ValueError(f"the {split_dataset.source.split_name!r} split has no samples")
        split_dataset.load_checked(0)
    logger.info(
        "data: %d training / %d evaluation samples, %d classes, %d batches per epoch and process",
        len(train_dataset), len(eval_dataset), num_labels, train_sampler.batches_per_epoch,
    )  # fmt: skip

    # ---- model (same initial weights on every process), then per-process seeds for dropout etc.
    set_seed(config.seed)
    model = build_model(config, encoder, id2label)
    set_seed(config.seed + accelerator.process_index)
    logger.info("model: %s, %.2f M parameters", type(model).__name__, sum(p.numel() for p in model.parameters()) / 1e6)

    # ---- optimizer and schedule (the scheduler is stepped by us once per optimizer step)
    optimizer = build_optimizer(model, config)
    lr_schedule = PolyWithWarmup(
        max_steps=config.max_steps,
        power=config.poly_power,
        warmup_steps=config.warmup_steps,
        warmup_start_factor=config.warmup_start_factor,
        min_factor=config.min_learning_rate / config.learning_rate,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    unwrapped_model = accelerator.unwrap_model(model)

    # ---- resume: weights, prototypes, optimizer, scheduler, RNG states and the data position
    start_step = 0
    resume_folder = resolve_resume_checkpoint(config.resume_from_checkpoint, checkpoint_root)
    if resume_folder is not None:
        start_step = load_checkpoint(accelerator, resume_folder)["step"]
        logger.info("resumed from %s at step %d", resume_folder, start_step)
    elif config.resume_from_checkpoint:
        logger.info("no checkpoint in %s yet: starting from scratch", checkpoint_root)
    consumed_batches = start_step * config.gradient_accumulation_steps
    batches = iterate_forever(
        train_loader,
        train_sampler,
        epoch=consumed_batches // train_sampler.batches_per_epoch,
        start_batch=consumed_batches % train_sampler.batches_per_epoch,
    )

    if accelerator.is_main_process:
        accelerator.init_trackers("protoseg", config=_tracker_config(config))

    def run_evaluation() -> dict[str, Any]:
        synchronize_buffers(unwrapped_model, accelerator)
        return evaluate(
            unwrapped_model,
            eval_loader,
            num_labels=num_labels,
            ignore_index=config.ignore_index,
            mode=config.eval_mode,
            crop_size=tuple(config.crop_size),
            stride=tuple(config.eval_stride) if config.eval_stride else None,
            device=accelerator.device,
            all_reduce_sum=lambda tensor: accelerator.reduce(tensor, reduction="sum"),
            autocast=accelerator.autocast,
            show_progress=accelerator.is_local_main_process,
        )

    # ---- training loop
    images_per_step = (
        config.per_device_train_batch_size * config.gradient_accumulation_steps * accelerator.num_processes
    )
    progress = tqdm(
        range(start_step, config.max_steps),
        initial=start_step,
        total=config.max_steps,
        desc="train",
        disable=not accelerator.is_local_main_process,
    )
    model.train()
    train_start = time.perf_counter()
    window_start, window_steps = time.perf_counter(), 0
    running = {"loss": 0.0, "ce_loss": 0.0, "ppc_loss": 0.0, "ppd_loss": 0.0}
    running_counts = dict.fromkeys(running, 0)
    for step in progress:
        for micro_step in range(config.gradient_accumulation_steps):
            batch = next(batches)
            pixel_values = batch["pixel_values"].to(accelerator.device, non_blocking=True)  # (B, 3, h, w)
            labels = batch["labels"].to(accelerator.device, non_blocking=True)  # (B, h, w)
            is_last_micro_step = micro_step == config.gradient_accumulation_steps - 1
            sync_context = contextlib.nullcontext() if is_last_micro_step else accelerator.no_sync(model)
            with sync_context:
                with accelerator.autocast():
                    outputs = model(pixel_values=pixel_values, labels=labels)
                accelerator.backward(outputs.loss / config.gradient_accumulation_steps)
            for name in running:
                value = getattr(outputs, name, None)
                if value is not None:
                    running[name] += float(value.detach())
                    running_counts[name] += 1
        if config.max_grad_norm > 0:
            accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        completed_steps = step + 1
        window_steps += 1
        if config.step_delay_seconds > 0:
            time.sleep(config.step_delay_seconds)

        if completed_steps % config.logging_steps == 0 or completed_steps == config.max_steps:
            elapsed = time.perf_counter() - window_start
            log_values = {
                f"train/{name}": running[name] / running_counts[name] for name in running if running_counts[name]
            }
            log_values["train/learning_rate"] = scheduler.get_last_lr()[0]
            log_values["train/images_per_second"] = window_steps * images_per_step / max(elapsed, 1e-9)
            accelerator.log(log_values, step=completed_steps)
            progress.set_postfix(
                loss=f"{log_values.get('train/loss', float('nan')):.4f}", lr=f"{log_values['train/learning_rate']:.2e}"
            )
            running = dict.fromkeys(running, 0.0)
            running_counts = dict.fromkeys(running, 0)
            window_start, window_steps = time.perf_counter(), 0

        if config.eval_steps and completed_steps % config.eval_steps == 0 and completed_steps < config.max_steps:
            metrics = run_evaluation()
            accelerator.log(
                {"eval/mean_iou": metrics["mean_iou"], "eval/overall_accuracy": metrics["overall_accuracy"]},
                step=completed_steps,
            )
            logger.info(
                "step %d: eval mIoU %.4f, pixel accuracy %.4f",
                completed_steps,
                metrics["mean_iou"],
                metrics["overall_accuracy"],
            )
            window_start = time.perf_counter()  # evaluation time is not training throughput

        if (
            config.checkpointing_steps
            and completed_steps % config.checkpointing_steps == 0
            and completed_steps < config.max_steps
        ):
            folder = save_checkpoint(
                accelerator,
                checkpoint_root,
                completed_steps,
                {"global_batch_size": images_per_step, "num_processes": accelerator.num_processes},
                total_limit=config.checkpoints_total_limit,
            )
            logger.info("saved %s", folder)
            window_start = time.perf_counter()
    progress.close()
    train_runtime = time.perf_counter() - train_start
    divergence = divergence_across_processes(unwrapped_model, accelerator)  # before any buffer sync

    # ---- final evaluation and export (evaluated once: each process a shard, results reduced)
    final_metrics = run_evaluation()
    accelerator.log(
        {"eval/mean_iou": final_metrics["mean_iou"], "eval/overall_accuracy": final_metrics["overall_accuracy"]},
        step=config.max_steps,
    )
    logger.info("final: mIoU %.4f, pixel accuracy %.4f", final_metrics["mean_iou"], final_metrics["overall_accuracy"])
    train_results = {
        "global_step": config.max_steps,
        "resumed_from_step": start_step,
        "train_runtime_seconds": train_runtime,
        "train_images_per_second": (config.max_steps - start_step) * images_per_step / max(train_runtime, 1e-9),
        "num_processes": accelerator.num_processes,
        **divergence,
    }
    if accelerator.is_main_process:
        dataset_description = (
            config.preset if preset is not None and preset.source == "synthetic" else config.dataset_name
        )
        is_hub_dataset = (
            bool(config.dataset_name) and not os.path.exists(config.dataset_name) and preset_source(preset) == "hub"
        )
        summary = {
            "model_name": Path(config.output_dir).name if not config.hub_model_id else config.hub_model_id,
            "head": config.head,
            "encoder": config.encoder,
            "encoder_name": config.encoder,
            "encoder_pretrained": encoder.is_pretrained,
            "dataset": dataset_description,
            "dataset_id": config.dataset_name if is_hub_dataset else None,
            "preset": config.preset,
            "train_split": config.train_split,
            "num_train_images": len(train_dataset),
            "eval_split": eval_dataset.source.split_name,
            "eval_mode": config.eval_mode,
            "num_labels": num_labels,
            "max_steps": config.max_steps,
            "optimizer": config.optimizer,
            "learning_rate": config.learning_rate,
            "weight_decay": config.weight_decay,
            "lr_schedule": f"poly (power {config.poly_power}), {config.warmup_steps} linear warm-up steps",
            "global_batch_size": images_per_step,
            "per_device_batch_size": config.per_device_train_batch_size,
            "crop_size": list(config.crop_size),
            **(
                {
                    "num_prototypes_per_class": config.num_prototypes_per_class,
                    "prototype_momentum": config.prototype_momentum,
                    "ppc_loss_weight": config.ppc_loss_weight,
                    "ppd_loss_weight": config.ppd_loss_weight,
                }
                if config.head == "protoseg"
                else {}
            ),
            "seed": config.seed,
            "mixed_precision": config.mixed_precision,
            "num_processes": accelerator.num_processes,
            "hardware": _hardware_description(accelerator),
            "train_runtime_seconds": train_runtime,
            "command": " ".join(sys.argv),
        }
        folder = export_final_model(unwrapped_model, config, id2label, final_metrics, train_results, summary)
        logger.info("saved the final model to %s", folder)
        if config.push_to_hub:
            push_folder_to_hub(folder, config)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return {"eval": final_metrics, "train": train_results}


if __name__ == "__main__":
    from model_cards import PublishError

    try:
        main()
    except PublishError as error:  # the trained folder is complete: say what to do, without a traceback
        logger.error("%s", error)
        sys.exit(1)
