"""Which data a run uses: the dataset a config names, as raw sample sources plus class names.

`DatasetSplits` is also what a caller hands to `training.train.run(config, datasets=...)` to train on
data of its own (e.g. a benchmark that holds a class out) without touching the training code.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.config import DataArguments
from training.data import (
    FilePairSource,
    HubDatasetSource,
    LabelMapping,
    SampleSource,
    SyntheticSource,
    check_not_binary_255_masks,
    find_class_names,
    load_hub_dataset,
    pick_split,
    to_label_array,
)
from training.dataset_layouts import (
    ADE20K_LAYOUT,
    CITYSCAPES_LAYOUT,
    ade20k_file_pairs,
    cityscapes_file_pairs,
    detect_layout,
    not_a_cityscapes_folder_message,
)
from training.presets import (
    ADE20K_CLASS_NAMES,
    CITYSCAPES_CLASS_NAMES,
    CITYSCAPES_LABEL_ID_TO_TRAIN_ID,
    DatasetPreset,
    get_dataset_preset,
)
from training.synthetic import SYNTHETIC_CLASS_NAMES, SyntheticScenes, synthetic_splits

_REPO_ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger("protoseg.train")


@dataclass
class DatasetSplits:
    """Raw (image, label) sources of a run and their class names.

    Arguments:
        train: the training samples.
        validation: the samples evaluated during and at the end of training.
        id2label: class index -> name; its length is the number of classes.
        test: optional further split, evaluated once with the final model (`--test_split`).
        label_mapping: raw label value -> class index (default: identity, `ignore_index` kept).
        description: what the data is, for the summary and the model card (e.g. "synthetic", a Hub id).
        hub_dataset_id: the Hub id when the data came from the Hub (model card metadata), else None.
        id2label_source: where the class names came from, for messages (e.g. "<folder>/id2label.json").
    """

    train: SampleSource
    validation: SampleSource
    id2label: dict[int, str]
    test: SampleSource | None = None
    label_mapping: LabelMapping | None = None
    description: str | None = None
    hub_dataset_id: str | None = None
    id2label_source: str | None = None
    skipped_bad_samples: dict[str, int] = field(default_factory=dict)  # role -> samples left out (--skip_bad_samples)


class FirstSamples:
    """The first `count` samples of a source."""

    def __init__(self, source: SampleSource, count: int) -> None:
        self.source, self.count = source, min(count, len(source))
        self.split_name = getattr(source, "split_name", "")

    def __len__(self) -> int:
        return self.count

    def load(self, index: int) -> tuple[Any, Any, str]:
        if index >= self.count:
            raise IndexError(index)
        return self.source.load(index)


class SelectedSamples:
    """The samples of a source at `indices`, in that order (e.g. all but the bad ones)."""

    def __init__(self, source: SampleSource, indices: list[int]) -> None:
        self.source, self.indices = source, list(indices)
        self.split_name = getattr(source, "split_name", "")

    def __len__(self) -> int:
        return len(self.indices)

    def load(self, index: int) -> tuple[Any, Any, str]:
        return self.source.load(self.indices[index])


def preset_source(preset: DatasetPreset | None) -> str:
    """Where a preset's data comes from: "synthetic", "cityscapes" or "hub" (anything `load_dataset` reads)."""
    return preset.source if preset is not None else "hub"


def data_source_kind(data: DataArguments, preset: DatasetPreset | None) -> str:
    """Which reader a run uses: "synthetic"; "ade20k" or "cityscapes" for a local folder in that dataset's
    manual-download layout; else "hub" (`datasets.load_dataset`). The Cityscapes preset with anything but its
    download folder is a ValueError saying what it expects."""
    if preset_source(preset) == "synthetic":
        return "synthetic"
    layout = detect_layout(_dataset_path(data.dataset_name, preset)) if data.dataset_name else None
    if layout is not None:
        return layout
    if preset_source(preset) == "cityscapes":
        raise ValueError(not_a_cityscapes_folder_message(str(data.dataset_name)))
    return "hub"


def _dataset_path(dataset_name: str, preset: DatasetPreset | None) -> str:
    """A preset's relative dataset path also works from another working directory (repository-relative)."""
    if preset is not None and not os.path.isabs(dataset_name) and not os.path.exists(dataset_name):
        repo_relative = _REPO_ROOT / dataset_name
        if repo_relative.exists():
            return str(repo_relative)
    return dataset_name


def _synthetic_splits(data: DataArguments, seed: int) -> DatasetSplits:
    train_scenes, validation_scenes = synthetic_splits(
        num_train=data.synthetic_num_train,
        num_validation=data.synthetic_num_validation,
        image_size=data.synthetic_image_size,
        seed=seed,
    )
    test = None
    if data.test_split:  # more scenes like the validation ones, from their own seed
        test_scenes = SyntheticScenes(
            num_samples=len(validation_scenes), image_size=data.synthetic_image_size, seed=seed * 2 + 3
        )
        test = SyntheticSource(test_scenes, split_name=data.test_split)
    return DatasetSplits(
        train=SyntheticSource(train_scenes, split_name="train"),
        validation=SyntheticSource(validation_scenes, split_name="validation"),
        test=test,
        id2label=dict(enumerate(SYNTHETIC_CLASS_NAMES)),
        label_mapping=LabelMapping(ignore_index=data.ignore_index),
        description="synthetic",
    )


def _download_folder_splits(data: DataArguments, layout: str) -> DatasetSplits:
    """The splits of a manual download (`dataset_layouts`): ADE20K's ADEChallengeData2016/ (labels 0 = "other",
    1..150; `--reduce_labels`, set by the preset, maps them to ignore and 0..149) or Cityscapes' leftImg8bit/ +
    gtFine/ (labelIds -> the 19 train ids, every other id ignored)."""
    if layout == ADE20K_LAYOUT:
        file_pairs, class_names = ade20k_file_pairs, ADE20K_CLASS_NAMES
        label_mapping = LabelMapping(ignore_index=data.ignore_index, reduce_labels=bool(data.reduce_labels))
    else:
        file_pairs, class_names = cityscapes_file_pairs, CITYSCAPES_CLASS_NAMES
        label_mapping = LabelMapping(ignore_index=data.ignore_index, id_to_train_id=CITYSCAPES_LABEL_ID_TO_TRAIN_ID)
    folder = _dataset_path(data.dataset_name, None)

    def split(name: str, split_name: str) -> FilePairSource:
        return FilePairSource(file_pairs(folder, name), split_name=split_name)

    id2label, id2label_source = find_class_names(
        id2label_file=data.id2label_file,
        dataset_name=None,
        class_names=class_names,
        num_labels=None,
        preset_name=layout,
    )
    return DatasetSplits(
        train=split(data.train_split, "train"),
        validation=split(data.validation_split, data.validation_split),
        test=split(data.test_split, data.test_split) if data.test_split else None,
        id2label=id2label,
        label_mapping=label_mapping,
        description=data.dataset_name,
        id2label_source=id2label_source,
    )


EVALUATION_SPLIT_FALLBACKS = ("validation", "val", "valid", "test")


def _split_off_validation(splits: Any, data: DataArguments, *, seed: int) -> dict[str, Any]:
    """The splits with a seeded `--train_val_split` fraction of the training split as "validation", when the
    dataset has no evaluation split (as transformers' semantic-segmentation example does); unchanged otherwise."""
    available = list(splits)
    if any(name in available for name in (data.validation_split, *EVALUATION_SPLIT_FALLBACKS)):
        return splits
    if data.train_val_split is None or data.train_split not in available:
        return splits
    if not 0.0 < data.train_val_split < 1.0:
        raise ValueError(f"--train_val_split must be a fraction in (0, 1), got {data.train_val_split}")
    parts = splits[data.train_split].train_test_split(test_size=data.train_val_split, seed=seed)
    logger.info(
        "no evaluation split in %s: %d of the %d %r samples are held out as 'validation' (--train_val_split %s, seed %d)",
        data.dataset_name, len(parts["test"]), len(splits[data.train_split]), data.train_split,
        data.train_val_split, seed,
    )  # fmt: skip
    return {**dict(splits), data.train_split: parts["train"], "validation": parts["test"]}


def _hub_splits(data: DataArguments, preset: DatasetPreset | None, *, seed: int) -> DatasetSplits:
    dataset_name = _dataset_path(data.dataset_name, preset)
    splits = load_hub_dataset(
        dataset_name, config_name=data.dataset_config_name, data_dir=data.dataset_data_dir,
        revision=data.dataset_revision,
    )  # fmt: skip
    splits = _split_off_validation(splits, data, seed=seed)

    def source(split_name: str) -> HubDatasetSource:
        return HubDatasetSource(
            splits[split_name],
            image_column=data.image_column,
            label_column=data.label_column,
            split_name=split_name,
        )

    train_split = pick_split(list(splits), data.train_split)
    eval_split = pick_split(list(splits), data.validation_split, fallbacks=EVALUATION_SPLIT_FALLBACKS)
    is_hub = not os.path.exists(data.dataset_name) and preset_source(preset) == "hub"
    preset_names = preset.class_names if preset is not None else None
    id2label, id2label_source = find_class_names(
        id2label_file=data.id2label_file,
        dataset_name=dataset_name,
        class_names=preset_names,
        num_labels=data.num_labels,
        preset_name=data.preset,
    )
    if preset_names and dict(enumerate(preset_names)) != id2label:
        logger.info(
            "class names: the %d from %s, not the %r preset's %d", len(id2label), id2label_source, data.preset,
            len(preset_names),
        )  # fmt: skip
    return DatasetSplits(
        train=source(train_split),
        validation=source(eval_split),
        test=source(pick_split(list(splits), data.test_split)) if data.test_split else None,
        id2label=id2label,
        label_mapping=LabelMapping(
            ignore_index=data.ignore_index,
            reduce_labels=bool(data.reduce_labels),
            binary_mask_255=bool(data.binary_mask_255),
        ),
        description=data.dataset_name,
        hub_dataset_id=data.dataset_name if is_hub else None,
        id2label_source=id2label_source,
    )


def _check_first_labels(splits: DatasetSplits, ignore_index: int, count: int = 8) -> None:
    """Binary 0/255 masks read as background + ignore are refused on the first `count` training labels."""
    mapping = splits.label_mapping or LabelMapping(ignore_index=ignore_index)
    labels = []
    for index in range(min(count, len(splits.train))):
        _, raw_label, sample_name = splits.train.load(index)
        labels.append(mapping(to_label_array(raw_label, sample_name)))
    check_not_binary_255_masks(labels, ignore_index=ignore_index, split_name="training")


def load_dataset_splits(data: DataArguments, *, seed: int) -> DatasetSplits:
    """The training and evaluation (and `test_split`) sources and class names that `data` names (synthetic,
    an ADE20K or Cityscapes download folder, or anything `datasets.load_dataset` reads), cut to
    `max_train_samples`/`max_eval_samples`.
    `seed` draws the synthetic scenes."""
    preset = get_dataset_preset(data.preset) if data.preset else None
    source_kind = data_source_kind(data, preset)
    if source_kind == "synthetic":
        splits = _synthetic_splits(data, seed)
    elif source_kind in (ADE20K_LAYOUT, CITYSCAPES_LAYOUT):
        splits = _download_folder_splits(data, source_kind)
    else:
        splits = _hub_splits(data, preset, seed=seed)
        _check_first_labels(splits, data.ignore_index)
    if data.num_labels is not None and data.num_labels != len(splits.id2label):
        raise ValueError(
            f"--num_labels {data.num_labels} disagrees with the {len(splits.id2label)} class names of "
            f"{splits.id2label_source or 'the dataset'}"
        )
    if data.max_train_samples is not None:
        splits.train = FirstSamples(splits.train, data.max_train_samples)
    if data.max_eval_samples is not None:
        splits.validation = FirstSamples(splits.validation, data.max_eval_samples)
        if splits.test is not None:
            splits.test = FirstSamples(splits.test, data.max_eval_samples)
    return splits
