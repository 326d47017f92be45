"""Named dataset presets and encoder sizes.

A dataset preset fills in everything a dataset needs (where it lives, its columns, label reduction,
class names, crop size, a schedule that fits it); any explicit command-line flag still wins.
An encoder name maps to a randomly initialised encoder config; a Hub id or local folder instead
means "load pretrained weights from there".
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

from transformers import PretrainedConfig, SegformerConfig, SwinConfig

from modeling_protoseg.configuration_efficientnet_lite import ProtoSegEfficientNetLiteConfig

IGNORE_INDEX = 255

# ----------------------------------------------------------------------------------------------
# Class names

ADE20K_CLASS_NAMES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion",
    "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper",
    "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow",
    "screen door", "stairway", "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower",
    "book", "hill", "bench", "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair",
    "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel", "pole",
    "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship",
    "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel",
    "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket",
    "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen",
    "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip
assert len(ADE20K_CLASS_NAMES) == 150

CITYSCAPES_CLASS_NAMES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip

# Cityscapes `labelIds` (gtFine_labelIds.png) -> the 19 evaluation train ids; every other id -> ignore.
CITYSCAPES_LABEL_ID_TO_TRAIN_ID: dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
    23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip

CAMVID_CLASS_NAMES: tuple[str, ...] = (
    "sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence", "car", "pedestrian",
    "bicyclist",
)  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Dataset presets


@dataclass(frozen=True)
class DatasetPreset:
    """Defaults for one dataset. `source` is "hub" (anything `datasets.load_dataset` reads),
    "cityscapes" (a local leftImg8bit/gtFine folder) or "synthetic" (generated, see `synthetic.py`); a local
    folder in a dataset's manual-download layout (`dataset_layouts.py`) is read as such whatever the source.
    `dataset_config_name`, `dataset_data_dir` and `dataset_revision` are passed to `datasets.load_dataset` as
    `name`, `data_dir` and `revision`."""

    name: str
    source: str
    description: str
    dataset_name: str | None = None
    dataset_config_name: str | None = None
    dataset_data_dir: str | None = None
    dataset_revision: str | None = None
    train_split: str = "train"
    validation_split: str = "validation"
    image_column: str = "image"
    label_column: str = "annotation"
    reduce_labels: bool = False
    class_names: tuple[str, ...] | None = None
    # training defaults (TrainingConfig fields); a flag given on the command line overrides them
    overrides: dict[str, Any] = field(default_factory=dict)


DATASET_PRESETS: dict[str, DatasetPreset] = {
    preset.name: preset
    for preset in (
        DatasetPreset(
            name="synthetic",
            source="synthetic",
            description="built-in generated scenes (no download): 5 classes, 2-3 appearances each",
            overrides=dict(
                encoder="mit-micro",
                crop_size=[96, 96],
                max_steps=1000,
                per_device_train_batch_size=8,
                per_device_eval_batch_size=16,
                optimizer="adamw",
                learning_rate=1e-3,
                head_lr_multiplier=1.0,
                warmup_steps=50,
                num_prototypes_per_class=4,
                prototype_momentum=0.99,
                embedding_dim=64,
                decoder_hidden_size=64,
                eval_steps=250,
                checkpointing_steps=500,
                logging_steps=25,
                dataloader_num_workers=1,
            ),
        ),
        DatasetPreset(
            name="ade20k",
            source="hub",
            description="ADE20K / SceneParse150 from the Hub (150 classes, label 0 'other' -> ignore), crop 512",
            # The repository's main branch holds only a loading script, which datasets >= 4 no longer runs. Its
            # Parquet conversion (branch refs/convert/parquet) holds one folder per script config,
            # <config>/<split>/NNNN.parquet, and no README: datasets sees a single "default" config over every
            # folder, so the scene-parsing part is chosen by data_dir, not by a config name.
            dataset_name="zhoubolei/scene_parse_150",
            dataset_data_dir="scene_parsing",
            dataset_revision="refs/convert/parquet",
            label_column="annotation",
            reduce_labels=True,
            class_names=ADE20K_CLASS_NAMES,
            overrides=dict(
                crop_size=[512, 512],
                max_steps=160_000,
                per_device_train_batch_size=2,
                optimizer="adamw",
                warmup_steps=1500,
                eval_steps=16_000,
                checkpointing_steps=4000,
            ),
        ),
        DatasetPreset(
            name="cityscapes",
            source="cityscapes",
            description="Cityscapes from a local folder with leftImg8bit/ and gtFine/ (labelIds -> 19 train ids), "
            "full resolution (short side 1024: 2048x1024 frames), crop 512x1024, sliding-window evaluation",
            dataset_name=None,  # must be given: --dataset_name /path/to/cityscapes
            validation_split="val",
            class_names=CITYSCAPES_CLASS_NAMES,
            overrides=dict(
                crop_size=[512, 1024],
                base_size=1024,  # the frames' own short side: training rescales 0.5-2x of it, evaluation keeps it
                max_steps=160_000,
                per_device_train_batch_size=1,
                optimizer="adamw",
                warmup_steps=1500,
                eval_mode="slide",
                eval_steps=16_000,
                checkpointing_steps=4000,
            ),
        ),
        DatasetPreset(
            name="camvid",
            source="hub",
            description="CamVid, 11 classes, the local Parquet copy in ../shared/datasets/camvid (void = 255)",
            dataset_name="../shared/datasets/camvid",
            label_column="annotation",
            class_names=CAMVID_CLASS_NAMES,
            overrides=dict(
                crop_size=[360, 480],
                max_steps=20_000,
                per_device_train_batch_size=8,
                optimizer="adamw",
                warmup_steps=500,
                eval_steps=2000,
                checkpointing_steps=2000,
            ),
        ),
    )
}


def get_dataset_preset(name: str) -> DatasetPreset:
    """The preset called `name` (case-insensitive); a ValueError listing the valid names otherwise."""
    key = name.strip().lower()
    if key not in DATASET_PRESETS:
        raise ValueError(f"Unknown dataset preset {name!r}; valid presets: {', '.join(DATASET_PRESETS)}")
    return DATASET_PRESETS[key]


# ----------------------------------------------------------------------------------------------
# Encoders


def _mit_config(hidden_sizes: list[int], depths: list[int], num_attention_heads: list[int], decoder: int) -> dict:
    return dict(
        model_type="segformer",
        hidden_sizes=hidden_sizes,
        depths=depths,
        num_attention_heads=num_attention_heads,
        decoder_hidden_size=decoder,
    )


def _swin_config(embed_dim: int, depths: list[int], num_heads: list[int]) -> dict:
    return dict(
        model_type="swin",
        embed_dim=embed_dim,
        depths=depths,
        num_heads=num_heads,
        window_size=7,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )


# name -> (config kwargs, the usual pretrained checkpoint on the Hub, or None)
ENCODER_CONFIGS: dict[str, tuple[dict[str, Any], str | None]] = {
    # tiny MiTs of this project: "mit-test" for unit tests, "mit-micro" for the synthetic default run
    "mit-test": (_mit_config([8, 16, 24, 32], [1, 1, 1, 1], [1, 1, 1, 1], 32), None),
    "mit-micro": (_mit_config([16, 32, 64, 96], [1, 1, 1, 1], [1, 1, 2, 2], 64), None),
    # the SegFormer paper's MiT-B0..B5
    "mit-b0": (_mit_config([32, 64, 160, 256], [2, 2, 2, 2], [1, 2, 5, 8], 256), "nvidia/mit-b0"),
    "mit-b1": (_mit_config([64, 128, 320, 512], [2, 2, 2, 2], [1, 2, 5, 8], 256), "nvidia/mit-b1"),
    "mit-b2": (_mit_config([64, 128, 320, 512], [3, 4, 6, 3], [1, 2, 5, 8], 768), "nvidia/mit-b2"),
    "mit-b3": (_mit_config([64, 128, 320, 512], [3, 4, 18, 3], [1, 2, 5, 8], 768), "nvidia/mit-b3"),
    "mit-b4": (_mit_config([64, 128, 320, 512], [3, 8, 27, 3], [1, 2, 5, 8], 768), "nvidia/mit-b4"),
    "mit-b5": (_mit_config([64, 128, 320, 512], [3, 6, 40, 3], [1, 2, 5, 8], 768), "nvidia/mit-b5"),
    # Swin-T/S/B/L (window 7)
    "swin-tiny": (_swin_config(96, [2, 2, 6, 2], [3, 6, 12, 24]), "microsoft/swin-tiny-patch4-window7-224"),
    "swin-small": (_swin_config(96, [2, 2, 18, 2], [3, 6, 12, 24]), "microsoft/swin-small-patch4-window7-224"),
    "swin-base": (_swin_config(128, [2, 2, 18, 2], [4, 8, 16, 32]), "microsoft/swin-base-patch4-window7-224"),
    "swin-large": (_swin_config(192, [2, 2, 18, 2], [6, 12, 24, 48]), None),
    # EfficientNet-Lite0 (this package's backbone). ImageNet weights: convert them to a local folder with
    # `python -m protoseg_tools.convert_efficientnet_lite0 FOLDER` and pass `--encoder FOLDER`.
    "efficientnet-lite0": (dict(model_type=ProtoSegEfficientNetLiteConfig.model_type), None),
}

_ENCODER_CONFIG_CLASSES: dict[str, type[PretrainedConfig]] = {
    "segformer": SegformerConfig,
    "swin": SwinConfig,
    ProtoSegEfficientNetLiteConfig.model_type: ProtoSegEfficientNetLiteConfig,
}

_HUB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


@dataclass(frozen=True)
class EncoderSpec:
    """What `--encoder` resolved to: a fresh config (random init) or a pretrained checkpoint."""

    name: str
    config: PretrainedConfig | None = None  # random init from this config
    pretrained_name_or_path: str | None = None  # or load encoder weights from here

    @property
    def is_pretrained(self) -> bool:
        return self.pretrained_name_or_path is not None


def resolve_encoder(name_or_path: str) -> EncoderSpec:
    """Map `--encoder` to an `EncoderSpec`.

    A known name ("mit-b0", "MiT-B2", "swin-tiny", "efficientnet-lite0", ...) gives a randomly initialised
    encoder; an existing local folder (e.g. the converted EfficientNet-Lite0 of `convert_efficientnet_lite0`) or a
    Hub id ("nvidia/mit-b0") gives pretrained weights. Anything else raises a ValueError listing the valid names.
    """
    key = name_or_path.strip().lower().replace("_", "-")
    if key in ENCODER_CONFIGS:
        config_kwargs = dict(ENCODER_CONFIGS[key][0])
        model_type = config_kwargs.pop("model_type")
        return EncoderSpec(name=key, config=_ENCODER_CONFIG_CLASSES[model_type](**config_kwargs))
    if os.path.isdir(name_or_path) or _HUB_ID_PATTERN.match(name_or_path):
        if os.path.isdir(name_or_path) and not os.path.isfile(os.path.join(name_or_path, "config.json")):
            raise ValueError(f"--encoder {name_or_path!r} is a folder without a config.json, not a checkpoint")
        return EncoderSpec(name=name_or_path, pretrained_name_or_path=name_or_path)
    raise ValueError(
        f"Unknown encoder {name_or_path!r}; valid names (random init): {', '.join(ENCODER_CONFIGS)}; "
        "or a Hub checkpoint id such as 'nvidia/mit-b0' or a local checkpoint folder (pretrained weights)"
    )
