"""Datasets for training: Hub/local `datasets`, Cityscapes folders and the synthetic scenes.

Every source yields raw (image, label) pairs; `SegmentationDataset` turns one into tensors:
    image  -> RGB uint8 (greyscale, RGBA, palette and 16-bit images are converted)
    label  -> int64 class map, remapped (Cityscapes labelIds -> train ids, or ADE20K's reduce_labels)
    check  -> same size as the image, values in [0, num_labels) or the ignore index, else a ValueError
              naming the sample and the bad values
    augment (albumentations, reproducible per (seed, epoch, sample), see `ResumableShardedSampler`)
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence

import numpy as np
import torch
from PIL import Image

from modeling_protoseg.image_loading import open_image as _open_image
from modeling_protoseg.image_loading import to_rgb_array

from .augmentation import seed_transform
from .dataset_layouts import ade20k_file_pairs, cityscapes_file_pairs  # noqa: F401  (re-exported)
from .synthetic import SyntheticScenes

# ----------------------------------------------------------------------------------------------
# Image and label conversion


def to_label_array(label: Any, sample_name: str = "sample") -> np.ndarray:
    """A label map -> (H, W) int64 class indices. Palette images keep their indices (not colours);
    an RGB label is accepted only when its three channels are equal."""
    opened = _open_image(label, sample_name)
    if isinstance(opened, Image.Image):
        if opened.mode == "1":
            opened = opened.convert("L")
        array = np.asarray(opened)
    else:
        array = np.asarray(opened)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 3 and array.shape[-1] in (2, 3, 4):
        colour = array[..., :3] if array.shape[-1] >= 3 else array[..., :1]
        if not (colour == colour[..., :1]).all():
            raise ValueError(
                f"{sample_name}: the label map is a colour image (shape {array.shape}); expected one class index "
                "per pixel (a greyscale or palette PNG)"
            )
        array = array[..., 0]
    if array.ndim != 2:
        raise ValueError(f"{sample_name}: expected a label map of shape (H, W), got {array.shape}")
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.mod(array, 1) == 0):
            raise ValueError(f"{sample_name}: label map holds non-integer values; expected class indices")
    return array.astype(np.int64)


@dataclass(frozen=True)
class LabelMapping:
    """How raw label values become class indices.

    Arguments:
        id_to_train_id: raw value -> class index; every raw value not listed -> ignore (Cityscapes).
        reduce_labels: 0 -> ignore and v -> v - 1 (ADE20K's 0 = "other"); the ignore value stays.
        binary_mask_255: 255 -> 1, first (binary masks stored as 0/255 images).
    """

    ignore_index: int = 255
    id_to_train_id: dict[int, int] | None = None
    reduce_labels: bool = False
    binary_mask_255: bool = False

    def __call__(self, label: np.ndarray) -> np.ndarray:
        if self.binary_mask_255:
            label = np.where(label == 255, 1, label)
        if self.id_to_train_id is not None:
            lookup = np.full(max(int(label.max(initial=0)) + 1, 256), self.ignore_index, dtype=np.int64)
            for raw_value, class_index in self.id_to_train_id.items():
                if raw_value < len(lookup):
                    lookup[raw_value] = class_index
            label = lookup[np.clip(label, 0, None)]
        if self.reduce_labels:
            is_ignored = (label == 0) | (label == self.ignore_index)
            label = np.where(is_ignored, self.ignore_index, label - 1)
        return label


def check_label(
    label: np.ndarray, image_shape: tuple[int, int], *, num_labels: int, ignore_index: int, sample_name: str
) -> None:
    """Raise a ValueError naming the sample if the label map's size or values are wrong."""
    if tuple(label.shape) != tuple(image_shape):
        raise ValueError(
            f"{sample_name}: the label map is {label.shape[1]}x{label.shape[0]} (WxH) but the image is "
            f"{image_shape[1]}x{image_shape[0]}; every label map must have the size of its image"
        )
    values = np.unique(label)
    bad_values = values[((values < 0) | (values >= num_labels)) & (values != ignore_index)]
    if bad_values.size:
        hint = ""
        labelled = values[values != ignore_index]
        if labelled.min() >= 1 and labelled.max() == num_labels:
            hint = " (labels look 1-based: is this a dataset for --reduce_labels?)"
        raise ValueError(
            f"{sample_name}: label values {bad_values[:20].tolist()} are outside the {num_labels} classes "
            f"[0, {num_labels - 1}] and the ignore index {ignore_index}{hint}"
        )


def check_not_binary_255_masks(labels: Sequence[np.ndarray], *, ignore_index: int, split_name: str) -> None:
    """Raise a ValueError if the label maps (the first few of a split, after the label mapping) hold only 0 and the
    ignore index: binary masks stored as 0/255 images, which would train on background alone."""
    values = np.unique(np.concatenate([np.unique(label) for label in labels])) if labels else np.array([])
    if ignore_index in values and set(values.tolist()) <= {0, ignore_index}:
        raise ValueError(
            f"the first {len(labels)} {split_name} label maps hold only the values 0 and {ignore_index} (the ignore "
            f"index): binary masks stored as 0/{ignore_index}? As they are, every foreground pixel would be ignored. "
            f"Pass --binary_mask_255 to read 255 as class 1, or map the masks to 0/1"
        )


# ----------------------------------------------------------------------------------------------
# Sources of raw samples


class SampleSource(Protocol):
    """Anything with a length that returns (image, label, sample_name) by index."""

    def __len__(self) -> int: ...

    def load(self, index: int) -> tuple[Any, Any, str]: ...


class HubDatasetSource:
    """A split of a `datasets.Dataset` (Hub, Parquet, imagefolder, ...) with image and label columns."""

    def __init__(self, dataset: Any, *, image_column: str, label_column: str, split_name: str) -> None:
        import datasets

        for role, column in (("image", image_column), ("label", label_column)):
            if column not in dataset.column_names:
                raise ValueError(
                    f"--{role}_column {column!r} is not a column of split {split_name!r}; "
                    f"valid columns: {', '.join(dataset.column_names)}"
                )
        # Decode images ourselves: we keep the file name for error messages and handle 16-bit images.
        for column in (image_column, label_column):
            if isinstance(dataset.features[column], datasets.Image):
                dataset = dataset.cast_column(column, datasets.Image(decode=False))
        self.dataset = dataset.select_columns([image_column, label_column])
        self.image_column, self.label_column, self.split_name = image_column, label_column, split_name
        if len(self.dataset) and self.dataset[0][label_column] is None:
            raise ValueError(
                f"split {split_name!r} has no label maps (its first sample's {label_column!r} is empty): an "
                "unlabelled split, such as SceneParse150's test split, cannot be trained or evaluated on"
            )

    def __len__(self) -> int:
        return len(self.dataset)

    def load(self, index: int) -> tuple[Any, Any, str]:
        row = self.dataset[int(index)]
        image = row[self.image_column]
        path = image.get("path") if isinstance(image, dict) else None
        name = f"{self.split_name} sample {index}" + (f" ({path})" if path else "")
        if row[self.label_column] is None:
            raise ValueError(
                f"{name} has no label map (column {self.label_column!r} is empty): an unlabelled split, such as "
                "SceneParse150's test split, cannot be trained or evaluated on"
            )
        return image, row[self.label_column], name


class FilePairSource:
    """(image file, label file) pairs, e.g. a Cityscapes split."""

    def __init__(self, pairs: Sequence[tuple[Path, Path]], *, split_name: str) -> None:
        self.pairs, self.split_name = list(pairs), split_name

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> tuple[Any, Any, str]:
        image_path, label_path = self.pairs[index]
        return Image.open(image_path), Image.open(label_path), f"{self.split_name} sample {index} ({image_path})"


class SyntheticSource:
    """The generated scenes of `synthetic.py`."""

    def __init__(self, scenes: SyntheticScenes, *, split_name: str) -> None:
        self.scenes, self.split_name = scenes, split_name

    def __len__(self) -> int:
        return len(self.scenes)

    def load(self, index: int) -> tuple[Any, Any, str]:
        image, label = self.scenes.generate(int(index))
        return image, label, f"synthetic {self.split_name} sample {index}"


# ----------------------------------------------------------------------------------------------
# Loading splits and class names


def _dataset_folders(folder: str) -> list[str]:
    """Sub-folders of a local dataset folder that hold split folders or files of their own (e.g. one per
    configuration of a Parquet conversion: scene_parsing/, instance_segmentation/)."""
    split_words = ("train", "training", "validation", "valid", "val", "dev", "test")
    found = []
    for child in sorted(Path(folder).iterdir()):
        if child.is_dir() and not child.name.startswith("."):
            names = {entry.name.split(".")[0].split("-")[0].lower() for entry in child.iterdir()}
            if names & set(split_words):
                found.append(child.name)
    return found


def _error_chain(error: BaseException) -> str:
    """The messages of `error` and the exceptions it was raised from."""
    messages, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        messages.append(str(error))
        error = error.__cause__ or error.__context__
    return " <- ".join(messages)


def load_hub_dataset(
    name_or_path: str,
    *,
    config_name: str | None = None,
    data_dir: str | None = None,
    revision: str | None = None,
) -> Any:
    """A `datasets.DatasetDict` from a Hub id, a local folder `load_dataset` reads (Parquet shards,
    imagefolder with metadata) or a folder written by `save_to_disk`.

    `config_name`, `data_dir` and `revision` are `load_dataset`'s `name`, `data_dir` and `revision` (the revision
    applies to Hub ids only). A local folder and a Hub repository with the same files load the same way.
    A ValueError says what went wrong in the dataset's terms: a configuration the files do not define, several
    configurations' files mixed into one split, a repository that holds only a loading script.
    """
    import datasets

    if os.path.isdir(name_or_path) and os.path.isfile(os.path.join(name_or_path, "dataset_dict.json")):
        return datasets.load_from_disk(name_or_path)
    if os.path.isfile(name_or_path) and name_or_path.endswith(".parquet"):
        return datasets.load_dataset("parquet", data_files={"train": name_or_path})
    is_local = os.path.isdir(name_or_path)
    where = f"the folder {name_or_path}" if is_local else f"the Hub dataset {name_or_path}" + (
        f" (revision {revision})" if revision else ""
    )
    folders = _dataset_folders(name_or_path) if is_local else []
    folder_hint = f" (its dataset folders: {', '.join(folders)})" if folders else ""
    try:
        if is_local:
            return datasets.load_dataset(name_or_path, config_name, data_dir=data_dir)
        return datasets.load_dataset(name_or_path, config_name, data_dir=data_dir, revision=revision)
    except (ValueError, RuntimeError, datasets.exceptions.DatasetGenerationError) as error:
        chain = _error_chain(error)
        if "BuilderConfig" in chain and config_name:
            raise ValueError(
                f"{where} has no configuration {config_name!r} ({error}). A dataset that was a loading script is "
                "served as Parquet files with one folder per old configuration and a single 'default' "
                f"configuration: pass the folder as --dataset_data_dir{folder_hint} instead of --dataset_config_name"
            ) from error
        if "column names don't match" in chain:
            raise ValueError(
                f"{where}: the data files of one split do not share their columns, so files of several datasets "
                f"or configurations were mixed{folder_hint}: choose one with --dataset_data_dir"
                + (f" (now {data_dir!r})" if data_dir else "")
            ) from error
        if "Dataset scripts are no longer supported" in chain:
            raise ValueError(
                f"{where} holds only a loading script, which datasets >= 4 no longer runs. Its automatic Parquet "
                "conversion loads with --dataset_revision refs/convert/parquet and --dataset_data_dir <the old "
                f"configuration's name> ({error})"
            ) from error
        raise


def pick_split(available: Sequence[str], requested: str, *, fallbacks: Sequence[str] = ()) -> str:
    """`requested` if present, else the first present fallback; a ValueError listing the splits otherwise."""
    for candidate in (requested, *fallbacks):
        if candidate in available:
            return candidate
    raise ValueError(f"Unknown split {requested!r}; valid splits: {', '.join(available)}")


def read_id2label(source: str | os.PathLike | dict | Sequence[str]) -> dict[int, str]:
    """Class names from a JSON file ({"0": "sky", ...} or ["sky", ...]) or an already-loaded mapping."""
    if isinstance(source, (str, os.PathLike)):
        with open(source, encoding="utf-8") as file:
            source = json.load(file)
    if isinstance(source, dict):
        id2label = {int(key): str(value) for key, value in source.items()}
    else:
        id2label = {index: str(name) for index, name in enumerate(source)}
    if sorted(id2label) != list(range(len(id2label))):
        raise ValueError(f"id2label keys must be 0..{len(id2label) - 1}, got {sorted(id2label)[:20]}")
    return dict(sorted(id2label.items()))


def find_class_names(
    *,
    id2label_file: str | None,
    dataset_name: str | None,
    class_names: Sequence[str] | None,
    num_labels: int | None,
    preset_name: str | None = None,
) -> tuple[dict[int, str], str]:
    """Class names and where they came from (for messages), from the first that exists: `--id2label_file` (a
    local file, or a file in the Hub dataset repo), the dataset's own `id2label.json` (local folder or Hub repo),
    the preset's names, `--num_labels` (names "class_0", ...). The dataset's own names win over a preset's, so
    `--preset camvid --dataset_name <other folder>` trains on that folder's classes."""
    if id2label_file:
        if os.path.isfile(id2label_file):
            return read_id2label(id2label_file), f"--id2label_file {id2label_file}"
        if dataset_name and not os.path.exists(dataset_name):
            from huggingface_hub import hf_hub_download

            names = read_id2label(hf_hub_download(dataset_name, id2label_file, repo_type="dataset"))
            return names, f"{id2label_file} in the Hub dataset {dataset_name}"
        raise ValueError(f"--id2label_file {id2label_file!r}: no such file")
    if dataset_name and os.path.isdir(dataset_name):
        candidate = os.path.join(dataset_name, "id2label.json")
        if os.path.isfile(candidate):
            return read_id2label(candidate), candidate
    elif dataset_name:
        try:
            from huggingface_hub import hf_hub_download

            names = read_id2label(hf_hub_download(dataset_name, "id2label.json", repo_type="dataset"))
            return names, f"id2label.json in the Hub dataset {dataset_name}"
        except Exception:  # noqa: BLE001 - the repo may simply not have the file; fall through
            pass
    if class_names:
        return dict(enumerate(class_names)), f"the {preset_name or 'dataset'} preset's class names"
    if num_labels:
        return {index: f"class_{index}" for index in range(num_labels)}, f"--num_labels {num_labels}"
    raise ValueError(
        f"Could not find class names for dataset {dataset_name!r}: pass --id2label_file (JSON "
        '{"0": "name", ...}), put an id2label.json in the dataset, or pass --num_labels'
    )


def find_id2label(
    *,
    id2label_file: str | None,
    dataset_name: str | None,
    class_names: Sequence[str] | None,
    num_labels: int | None,
) -> dict[int, str]:
    """The class names of `find_class_names`, without their source."""
    names, _ = find_class_names(
        id2label_file=id2label_file, dataset_name=dataset_name, class_names=class_names, num_labels=num_labels
    )
    return names


# ----------------------------------------------------------------------------------------------
# Torch datasets, sampling, batching


class BadSampleError(ValueError):
    """A sample that cannot be read, decoded or validated; the message names split, index and file."""


def _file_name(value: Any) -> str | None:
    """The file a raw image/label came from, when known (PIL images, {"path": ...} rows, paths)."""
    if isinstance(value, Image.Image):
        return getattr(value, "filename", None) or None
    if isinstance(value, dict):
        return value.get("path") or None
    if isinstance(value, (str, Path)):
        return str(value)
    return None


@contextlib.contextmanager
def _naming(sample_name: str, what: str, file_name: str | None = None) -> Iterator[None]:
    """Re-raise any error as a `BadSampleError` naming the sample (PIL's errors name nothing) and `file_name`."""
    try:
        yield
    except BadSampleError:
        raise
    except Exception as error:  # noqa: BLE001 - truncated files raise OSError, bad values ValueError, ...
        file_part = f" (label file {file_name})" if file_name and file_name not in str(error) else ""
        if str(error).startswith(sample_name.split(" (")[0]):  # already names the sample
            raise BadSampleError(f"{error}{file_part}") from error
        raise BadSampleError(f"{sample_name}{file_part}: {what} cannot be decoded: {type(error).__name__}: {error}") from error


class SegmentationDataset(torch.utils.data.Dataset):
    """Raw samples -> {"pixel_values": (3, h, w) float32, "labels": (H, W) int64}.

    Index with an int, or with (index, augmentation_seed) as `ResumableShardedSampler` yields, which
    makes the random augmentation of that sample reproducible regardless of worker processes.
    With `keep_label_size=True` (evaluation) the label keeps its original size while the image is
    transformed (resized), so metrics are computed at the original resolution.
    """

    def __init__(
        self,
        source: SampleSource,
        *,
        transform: Any,
        num_labels: int,
        ignore_index: int = 255,
        label_mapping: LabelMapping | None = None,
        keep_label_size: bool = False,
    ) -> None:
        self.source, self.transform = source, transform
        self.num_labels, self.ignore_index = num_labels, ignore_index
        self.label_mapping = label_mapping or LabelMapping(ignore_index=ignore_index)
        self.keep_label_size = keep_label_size

    def __len__(self) -> int:
        return len(self.source)

    def load_checked(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(image (H, W, 3) uint8, label (H, W) int64) after conversion, remapping and validation. Any failure is
        a `BadSampleError` naming the split, the index and the file (the label file for label errors)."""
        split_name = getattr(self.source, "split_name", "")
        try:
            raw_image, raw_label, sample_name = self.source.load(index)
        except Exception as error:  # noqa: BLE001 - a row or file that cannot be read at all
            raise BadSampleError(f"{split_name} sample {index}: cannot be read: {error}") from error
        with _naming(sample_name, "the image"):
            image = to_rgb_array(raw_image, sample_name)
        with _naming(sample_name, "the label map", _file_name(raw_label)):
            label = self.label_mapping(to_label_array(raw_label, sample_name))
            check_label(
                label, image.shape[:2], num_labels=self.num_labels, ignore_index=self.ignore_index,
                sample_name=sample_name,
            )  # fmt: skip
        return image, label

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        index, augmentation_seed = key if isinstance(key, tuple) else (key, None)
        image, label = self.load_checked(index)
        if augmentation_seed is not None:
            seed_transform(self.transform, augmentation_seed)
        if self.keep_label_size:
            transformed_image = self.transform(image=image)["image"]
            transformed_label = label
        else:
            transformed = self.transform(image=image, mask=label.astype(np.int32))
            transformed_image, transformed_label = transformed["image"], transformed["mask"]
        pixel_values = torch.from_numpy(np.ascontiguousarray(transformed_image.transpose(2, 0, 1))).float()
        labels = torch.from_numpy(np.ascontiguousarray(transformed_label)).long()
        return {"pixel_values": pixel_values, "labels": labels}  # (3, h, w), (H, W)


def augmentation_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed that depends only on (run seed, epoch, sample index)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class ResumableShardedSampler(torch.utils.data.Sampler):
    """Shuffled, sharded, resumable order of (index, augmentation_seed) pairs.

    Epoch e is a permutation drawn from (seed, e) only; it is cut to a whole number of global batches
    (batch_size x num_replicas) and process `rank` takes every num_replicas-th sample, so all processes
    see the same number of batches. `set_epoch(e, start_batch=b)` resumes in the middle of an epoch.
    """

    def __init__(
        self,
        num_samples: int,
        *,
        batch_size: int,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        self.num_samples, self.batch_size = num_samples, batch_size
        self.num_replicas, self.rank, self.seed, self.shuffle = num_replicas, rank, seed, shuffle
        self.epoch, self.start_batch = 0, 0
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"The training split has {num_samples} samples, fewer than one global batch "
                f"({batch_size} per process x {num_replicas} processes)"
            )

    @property
    def batches_per_epoch(self) -> int:
        return self.num_samples // (self.batch_size * self.num_replicas)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.num_samples, generator=generator).tolist()
        else:
            order = list(range(self.num_samples))
        used = order[: self.batches_per_epoch * self.batch_size * self.num_replicas]
        own = used[self.rank :: self.num_replicas][self.start_batch * self.batch_size :]
        for index in own:
            yield index, augmentation_seed(self.seed, self.epoch, index)


def collate_train(samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack same-size crops: pixel_values (B, 3, h, w), labels (B, h, w)."""
    return {key: torch.stack([sample[key] for sample in samples]) for key in ("pixel_values", "labels")}


def collate_eval(samples: list[dict[str, torch.Tensor]]) -> dict[str, list[torch.Tensor]]:
    """Keep lists: evaluation images may differ in size."""
    return {key: [sample[key] for sample in samples] for key in ("pixel_values", "labels")}
