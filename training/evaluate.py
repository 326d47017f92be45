"""Evaluate a saved model folder on any split of a dataset, writing the JSON of training's eval_results.json.

    python -m training.evaluate FOLDER --dataset_name ID_OR_FOLDER --split test [--eval_mode whole|slide|multiscale]
        [--output FILE]   # plus training's dataset options: --preset, --image_column, --reduce_labels, ...

The model loads with `AutoModelForSemanticSegmentation.from_pretrained` (ProtoSeg registered by
`import modeling_protoseg`), images are resized to the folder's image processor size and normalised as the
model's encoder expects (`training.preprocessing`), predictions are scored at the labels' own resolution.
Defaults for the mode and crop come from the folder's training_summary.json when it has one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from model_cards import EvalResults
from training.augmentation import build_eval_transform
from training.config import DataArguments, parse_flags, resolve_config
from training.data import SegmentationDataset, collate_eval
from training.evaluation import EVAL_MODES, MULTISCALE_FACTORS, evaluate
from training.export import eval_results, prototype_health
from training.preprocessing import input_normalization
from training.sources import load_dataset_splits

logger = logging.getLogger("protoseg.evaluate")


@dataclasses.dataclass
class EvaluationSettings:
    """How to evaluate: the split, the mode and its sizes; None means "as the folder was trained/evaluated"."""

    split: str = "test"
    eval_mode: Optional[str] = None  # default: training_summary.json's eval_mode, else "whole"
    base_size: Optional[int] = None  # default: the folder's image processor height
    crop_size: Optional[Sequence[int]] = None  # slide windows; default: training_summary.json's crop_size
    eval_stride: Optional[Sequence[int]] = None  # default: 2/3 of the crop
    eval_scales: Sequence[float] = MULTISCALE_FACTORS
    eval_flip: bool = True
    batch_size: int = 1
    device: Optional[str] = None  # default: cuda when available


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _base_size(folder: Path) -> int | None:
    """The short side the folder's image processor resizes to (None: it keeps the size)."""
    processor_config = _read_json(folder / "preprocessor_config.json")
    if processor_config and processor_config.get("do_resize") is False:
        return None
    size = processor_config.get("size") or {}
    base_size = size.get("shortest_edge") or size.get("height")
    if base_size is None:
        raise ValueError(f"{folder} has no preprocessor_config.json with a size: pass --base_size")
    return int(base_size)


def _looks_like_a_path(name: str) -> bool:
    """Whether `name` is written as a file-system path rather than a Hub id ("owner/model"): absolute, relative to
    "." / "~", with a backslash, a trailing slash or more than one "/"."""
    return (
        Path(name).is_absolute()
        or name.startswith((".", "~"))
        or "\\" in name
        or name.endswith("/")
        or name.count("/") > 1
    )


def check_model_folder(folder: str | Path) -> Path:
    """The saved model folder `folder` as a Path; a ValueError saying it does not exist (or is a file) otherwise.
    A name that is not a local folder is never looked up on the Hub: evaluation reads the folder's own files."""
    path = Path(folder).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"{folder} is a file, not a saved model folder (save_pretrained + preprocessor_config.json)")
    hint = ""
    if str(folder).count("/") == 1 and not _looks_like_a_path(str(folder)):  # "owner/model": maybe a Hub id
        hint = (
            f"; to evaluate the Hub model {folder}, download it first (huggingface-cli download {folder} "
            "--local-dir <folder>) and pass that folder"
        )
    raise ValueError(f"the model folder {folder} does not exist{hint}")


def _split_source(data: DataArguments, split: str, seed: int) -> tuple[Any, Any]:
    """(sample source of `split`, the DatasetSplits it came from)."""
    is_validation = split == data.validation_split
    splits = load_dataset_splits(dataclasses.replace(data, test_split=None if is_validation else split), seed=seed)
    return (splits.validation if is_validation else splits.test), splits


def evaluate_folder(
    folder: str | Path, data: DataArguments, settings: EvaluationSettings | None = None, *, seed: int = 42
) -> EvalResults:
    """Metrics of the model saved in `folder` on `settings.split` of the dataset `data` names, as the
    `EvalResults` record eval_results.json holds (`mean_iou`, per-class IoU by name, `eval_mode`, `eval_split`, ...).
    `seed` draws the synthetic scenes (the synthetic preset)."""
    from transformers import AutoModelForSemanticSegmentation

    import modeling_protoseg  # noqa: F401  (registers "protoseg" with the Auto classes)

    folder, settings = check_model_folder(folder), settings or EvaluationSettings()
    summary = _read_json(folder / "training_summary.json")
    eval_mode = settings.eval_mode or summary.get("eval_mode") or "whole"
    base_size = settings.base_size or _base_size(folder)
    crop_size = tuple(settings.crop_size or summary.get("crop_size") or (base_size, base_size))
    crop_size = crop_size * 2 if len(crop_size) == 1 else crop_size
    stride = (
        tuple(settings.eval_stride) * (2 if len(settings.eval_stride) == 1 else 1) if settings.eval_stride else None
    )
    device = torch.device(settings.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = AutoModelForSemanticSegmentation.from_pretrained(folder).to(device).eval()
    id2label = {int(index): name for index, name in model.config.id2label.items()}

    source, splits = _split_source(data, settings.split, seed)
    if len(splits.id2label) != len(id2label):
        raise ValueError(
            f"the model in {folder} has {len(id2label)} classes, the dataset {len(splits.id2label)}: "
            "pass the dataset options it was trained with (--preset, --id2label_file, --reduce_labels, ...)"
        )
    dataset = SegmentationDataset(
        source,
        transform=build_eval_transform(base_size=base_size, normalization=input_normalization(model.config)),
        keep_label_size=True,
        num_labels=len(id2label),
        ignore_index=data.ignore_index,
        label_mapping=splits.label_mapping,
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=settings.batch_size, collate_fn=collate_eval)
    metrics = evaluate(
        model, loader, num_labels=len(id2label), ignore_index=data.ignore_index, mode=eval_mode,
        crop_size=crop_size, stride=stride, scales=settings.eval_scales, flip=settings.eval_flip, device=device,
        show_progress=True,
    )  # fmt: skip
    split_name = getattr(source, "split_name", settings.split)
    return eval_results(
        metrics, id2label, eval_mode=eval_mode, split=split_name, dataset=splits.description,
        prototype_health=prototype_health(model),
    )  # fmt: skip


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.evaluate",
        description="Evaluate a saved model folder on a dataset split. Dataset options as training/train.py's.",
        epilog="Dataset options: --preset, --dataset_name, --dataset_config_name, --dataset_revision, "
        "--image_column, --label_column, --reduce_labels, --id2label_file, --num_labels, --ignore_index, "
        "--max_eval_samples, --validation_split, --synthetic_* and --seed (synthetic scenes).",
    )
    parser.add_argument("folder", help="a saved model folder (save_pretrained + preprocessor_config.json)")
    parser.add_argument("--split", default="test", help="the split to evaluate (default: test)")
    parser.add_argument("--eval_mode", choices=EVAL_MODES, help="default: the training run's, else whole")
    parser.add_argument("--base_size", type=int, help="short side of the images (default: the folder's processor)")
    parser.add_argument("--crop_size", type=int, nargs="+", help="slide: window (default: the training crop)")
    parser.add_argument("--eval_stride", type=int, nargs="+", help="slide: stride (default: 2/3 of the window)")
    parser.add_argument("--eval_scales", type=float, nargs="+", default=list(MULTISCALE_FACTORS))
    parser.add_argument("--no_eval_flip", action="store_true", help="multiscale: no horizontal flip")
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--device", help="default: cuda when available, else cpu")
    parser.add_argument("--output", help="write the JSON here (default: print it)")
    return parser


_DATASET_FLAGS = {item.name for item in dataclasses.fields(DataArguments)} | {"seed"}


def main(argv: list[str] | None = None) -> EvalResults:
    """The command line: evaluation flags here, dataset flags as training's (presets apply)."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    arguments, dataset_argv = _build_parser().parse_known_args(argv)
    dataset_flags = parse_flags(dataset_argv)
    unknown = sorted(set(dataset_flags) - _DATASET_FLAGS)
    if unknown:
        raise SystemExit(f"python -m training.evaluate: not an evaluation or dataset option: {unknown}")
    config = resolve_config(dataset_flags)
    settings = EvaluationSettings(
        split=arguments.split, eval_mode=arguments.eval_mode, base_size=arguments.base_size,
        crop_size=arguments.crop_size, eval_stride=arguments.eval_stride, eval_scales=arguments.eval_scales,
        eval_flip=not arguments.no_eval_flip, batch_size=arguments.batch_size, device=arguments.device,
    )  # fmt: skip
    results = evaluate_folder(arguments.folder, config.data, settings, seed=config.runtime.seed)
    text = results.to_json()
    if arguments.output:
        Path(arguments.output).parent.mkdir(parents=True, exist_ok=True)
        Path(arguments.output).write_text(text)
        logger.info("mIoU %.4f on %s: written to %s", results.mean_iou, results.eval_split, arguments.output)
    else:
        sys.stdout.write(text)
    return results


if __name__ == "__main__":
    main()
