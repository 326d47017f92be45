"""Datasets as their users download them by hand: folder layouts read as (image file, label file) pairs.

- ADE20K / SceneParse150, `ADEChallengeData2016/` as the MIT Scene Parsing benchmark's zip unpacks:
      images/{training,validation}/ADE_<split>_<n>.jpg
      annotations/{training,validation}/ADE_<split>_<n>.png     8-bit, 0 = "other", 1..150 = objectInfo150.txt
  (the benchmark's test images come in a separate `release_test/` without annotations).
- Cityscapes, `leftImg8bit_trainvaltest.zip` + `gtFine_trainvaltest.zip` unpacked into one folder:
      leftImg8bit/{train,val,test}/<city>/<frame>_leftImg8bit.png
      gtFine/{train,val,test}/<city>/<frame>_gtFine_labelIds.png  ids 0..33, mapped to the 19 train ids

`detect_layout(path)` names the layout of a local folder ("ade20k", "cityscapes") or returns None, so that
`--dataset_name <folder>` picks the right reader (and preset) by itself.
"""

from __future__ import annotations

import os
from pathlib import Path

ADE20K_LAYOUT = "ade20k"
CITYSCAPES_LAYOUT = "cityscapes"
ADE20K_FOLDER_NAME = "ADEChallengeData2016"

# split name as a run names it -> the folder name of each layout
_ADE20K_SPLIT_FOLDERS = {"train": "training", "training": "training", "validation": "validation", "val": "validation"}
_CITYSCAPES_SPLIT_FOLDERS = {"training": "train", "validation": "val"}


def _entries(folder: Path, limit: int = 12) -> str:
    """The first `limit` entry names of `folder`, for error messages."""
    names = sorted(path.name + ("/" if path.is_dir() else "") for path in folder.iterdir()) if folder.is_dir() else []
    shown = ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")
    return shown or "nothing"


def ade20k_root(path: str | os.PathLike) -> Path | None:
    """The `ADEChallengeData2016` folder at or directly under `path` (images/ and annotations/ with a training or
    validation folder), or None."""
    for candidate in (Path(path), Path(path) / ADE20K_FOLDER_NAME):
        has_split = any((candidate / "images" / name).is_dir() for name in ("training", "validation"))
        if has_split and (candidate / "annotations").is_dir():
            return candidate
    return None


def is_cityscapes_root(path: str | os.PathLike) -> bool:
    """Whether `path` holds the leftImg8bit/ and gtFine/ folders of the Cityscapes download."""
    return (Path(path) / "leftImg8bit").is_dir() and (Path(path) / "gtFine").is_dir()


def detect_layout(path: str | os.PathLike | None) -> str | None:
    """"ade20k" or "cityscapes" when `path` is a local folder in that dataset's manual-download layout, else None
    (a Hub id, a Parquet or imagefolder dataset, ...)."""
    if path is None or not os.path.isdir(path):
        return None
    if is_cityscapes_root(path):
        return CITYSCAPES_LAYOUT
    if ade20k_root(path) is not None:
        return ADE20K_LAYOUT
    return None


def ade20k_file_pairs(root: str | os.PathLike, split: str) -> list[tuple[Path, Path]]:
    """(image, annotation) pairs of a split of `ADEChallengeData2016/`, sorted by file name. `split` is "train" /
    "training" or "validation" / "val"; a ValueError says what is missing and what the folder holds."""
    found = ade20k_root(root)
    if found is None:
        raise ValueError(
            f"ADE20K: {root} is not an {ADE20K_FOLDER_NAME} folder; expected images/training/*.jpg and "
            f"annotations/training/*.png (and .../validation/); it holds: {_entries(Path(root))}"
        )
    folder_name = _ADE20K_SPLIT_FOLDERS.get(split)
    image_dir, annotation_dir = found / "images" / str(folder_name), found / "annotations" / str(folder_name)
    if folder_name is None or not image_dir.is_dir():
        raise ValueError(
            f"ADE20K: no split {split!r} in {found}; its images/ holds: {_entries(found / 'images')} (splits: train, "
            "validation; the benchmark's test images, release_test/, have no annotations)"
        )
    pairs = []
    for image_path in sorted(path for path in image_dir.iterdir() if path.suffix.lower() in (".jpg", ".jpeg", ".png")):
        annotation_path = annotation_dir / f"{image_path.stem}.png"
        if not annotation_path.is_file():
            raise ValueError(f"ADE20K: image {image_path} has no annotation {annotation_path}")
        pairs.append((image_path, annotation_path))
    if not pairs:
        raise ValueError(f"ADE20K: no images (*.jpg) in {image_dir}")
    return pairs


def cityscapes_file_pairs(root: str | os.PathLike, split: str) -> list[tuple[Path, Path]]:
    """(leftImg8bit image, gtFine labelIds) pairs of a Cityscapes split ("train", "val", "test"; "training" and
    "validation" are read as "train" and "val"), sorted by file name.

    Expects the standard layout: root/leftImg8bit/<split>/<city>/<frame>_leftImg8bit.png and
    root/gtFine/<split>/<city>/<frame>_gtFine_labelIds.png.
    """
    root = Path(root)
    split = _CITYSCAPES_SPLIT_FOLDERS.get(split, split)
    image_dir = root / "leftImg8bit" / split
    if not image_dir.is_dir():
        available = sorted(p.name for p in (root / "leftImg8bit").glob("*") if p.is_dir())
        raise ValueError(
            f"Cityscapes: no folder {image_dir}; expected <root>/leftImg8bit/<split>/<city>/*_leftImg8bit.png "
            f"(splits found: {', '.join(available) or 'none'})"
        )
    pairs = []
    for image_path in sorted(image_dir.glob("*/*_leftImg8bit.png")):
        frame = image_path.name[: -len("_leftImg8bit.png")]
        label_path = root / "gtFine" / split / image_path.parent.name / f"{frame}_gtFine_labelIds.png"
        if not label_path.is_file():
            raise ValueError(f"Cityscapes: image {image_path} has no label file {label_path}")
        pairs.append((image_path, label_path))
    if not pairs:
        raise ValueError(f"Cityscapes: no *_leftImg8bit.png images under {image_dir}/<city>/")
    return pairs


def not_a_cityscapes_folder_message(dataset_name: str) -> str:
    """Why `--preset cityscapes --dataset_name <dataset_name>` cannot read it: what was expected, what came."""
    if os.path.isdir(dataset_name):
        found = f"the folder {dataset_name} holds: {_entries(Path(dataset_name))}"
    else:
        found = f"{dataset_name!r} is not a local folder (a Hub id?)"
    return (
        "--preset cityscapes reads the official download (cityscapes-dataset.com, an account is needed): "
        "leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip unpacked into one folder holding leftImg8bit/ and "
        f"gtFine/; {found}. Cityscapes has no official copy on the Hugging Face Hub (its terms do not "
        "allow redistribution); a copy whose labels are already train ids loads without the preset (--dataset_name ID "
        "--image_column ... --label_column ... --id2label_file ...)"
    )
