"""Evaluate a saved model folder on any split of a dataset, writing the JSON of training's eval_results.json.

    python -m training.evaluate FOLDER --dataset_name ID_OR_FOLDER --split test [--eval_mode whole|slide|multiscale]
        [--output FILE]   # plus training's dataset options: --preset, --image_column, --reduce_labels, ...

The model loads with `AutoModelForSemanticSegmentation.from_pretrained` (ProtoSeg registered by
`import modeling_protoseg`), images are resized to the folder's image processor size and normalised as the
model's encoder expects (`training.preprocessing`), predictions are scored at the labels' own resolution.
The evaluation mode, windows, stride, scales and flip default to the run's own (the folder's
evaluation_config.json, written by training); each option given here replaces one of them.
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
from modeling_protoseg.configuration_protoseg import PROTOTYPE_MATCHING_DTYPES
from training.augmentation import build_eval_transform
from training.config import DataArguments, parse_flags, resolve_config
from training.data import SegmentationDataset, collate_eval
from training.evaluation import EVAL_MODES, EVALUATION_CONFIG_FILE, MULTISCALE_FACTORS, EvaluationSetup, evaluate
from training.export import eval_results, prototype_health
from training.preprocessing import input_normalization
from training.sources import load_dataset_splits

logger = logging.getLogger("protoseg.evaluate")


@dataclasses.dataclass
class EvaluationSettings:
    """How to evaluate: the split, the mode and its sizes; None means "as the folder's run evaluated" (its
    `evaluation_config.json`; for older folders the mode of its eval_results.json and the crop of its
    training_summary.json), else whole-image."""

    split: str = "test"
    eval_mode: Optional[str] = None
    base_size: Optional[int] = None  # default: the folder's image processor's short side
    crop_size: Optional[Sequence[int]] = None  # slide windows
    eval_stride: Optional[Sequence[int]] = None  # default: the run's, or 2/3 of a window given here
    eval_scales: Optional[Sequence[float]] = None
    eval_flip: Optional[bool] = None
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


def saved_evaluation_setup(folder: Path, base_size: int | None) -> tuple[EvaluationSetup, str]:
    """How the run that wrote `folder` evaluated, and which file says so: its `evaluation_config.json`; for a
    folder written before that file existed, the mode of its eval_results.json and the crop of its
    training_summary.json (stride 2/3 of the crop); else whole-image with square windows of the base size."""
    saved = EvaluationSetup.read(folder)
    if saved is not None:
        return saved, str(folder / EVALUATION_CONFIG_FILE)
    eval_mode = _read_json(folder / "eval_results.json").get("eval_mode")
    crop_size = _read_json(folder / "training_summary.json").get("crop_size")
    if eval_mode in EVAL_MODES:
        source = f"{folder / 'eval_results.json'}" + (f" and {folder / 'training_summary.json'}" if crop_size else "")
    else:
        eval_mode, source = "whole", "the default (the folder records no evaluation mode)"
    fallback_crop = [base_size or 512] * 2
    return EvaluationSetup.from_settings(eval_mode=eval_mode, crop_size=crop_size or fallback_crop), source


def resolve_evaluation_setup(saved: EvaluationSetup, settings: EvaluationSettings) -> EvaluationSetup:
    """`saved` with what `settings` gives instead; a new window size without a stride gets 2/3 of it."""
    crop_size = tuple(settings.crop_size) if settings.crop_size else saved.crop_size
    stride = settings.eval_stride or (saved.eval_stride if not settings.crop_size else None)
    return EvaluationSetup.from_settings(
        eval_mode=settings.eval_mode or saved.eval_mode,
        crop_size=crop_size,
        eval_stride=stride,
        eval_scales=settings.eval_scales if settings.eval_scales is not None else saved.eval_scales,
        eval_flip=settings.eval_flip if settings.eval_flip is not None else saved.eval_flip,
    )


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


@dataclasses.dataclass
class FolderEvaluation:
    """What evaluating a saved folder needs: the model (eval mode, on its device), the split's batches, and the setup."""

    model: torch.nn.Module
    loader: torch.utils.data.DataLoader
    setup: EvaluationSetup
    id2label: dict[int, str]
    split_name: str
    dataset_description: str
    device: torch.device


def prepare_folder_evaluation(
    folder: str | Path,
    data: DataArguments,
    settings: EvaluationSettings | None = None,
    *,
    seed: int = 42,
    model_kwargs: dict[str, Any] | None = None,
) -> FolderEvaluation:
    """Load the model saved in `folder` (`model_kwargs` go to `from_pretrained`, e.g. a config field) and the
    batches of `settings.split`, resized and normalised as the run evaluated. `seed` draws the synthetic scenes."""
    from transformers import AutoModelForSemanticSegmentation  # "protoseg" registered by importing modeling_protoseg

    folder, settings = check_model_folder(folder), settings or EvaluationSettings()
    base_size = settings.base_size or _base_size(folder)
    saved, saved_source = saved_evaluation_setup(folder, base_size)
    setup = resolve_evaluation_setup(saved, settings)
    logger.info(
        "evaluation: %s, base size %s, windows %s, stride %s (the run's setup from %s%s)", setup.eval_mode, base_size,
        setup.crop_size, setup.eval_stride, saved_source, "; changed by the options given" if setup != saved else "",
    )  # fmt: skip
    device = torch.device(settings.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = AutoModelForSemanticSegmentation.from_pretrained(folder, **(model_kwargs or {})).to(device).eval()
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
    return FolderEvaluation(
        model=model, loader=loader, setup=setup, id2label=id2label, dataset_description=splits.description,
        split_name=getattr(source, "split_name", settings.split), device=device,
    )  # fmt: skip


def evaluate_folder(
    folder: str | Path,
    data: DataArguments,
    settings: EvaluationSettings | None = None,
    *,
    seed: int = 42,
    model_kwargs: dict[str, Any] | None = None,
) -> EvalResults:
    """Metrics of the model saved in `folder` on `settings.split` of the dataset `data` names, as the
    `EvalResults` record eval_results.json holds (`mean_iou`, per-class IoU by name, `eval_mode`, `eval_split`, ...).
    `seed` draws the synthetic scenes (the synthetic preset); `model_kwargs` go to `from_pretrained`."""
    prepared = prepare_folder_evaluation(folder, data, settings, seed=seed, model_kwargs=model_kwargs)
    setup = prepared.setup
    metrics = evaluate(
        prepared.model, prepared.loader, num_labels=len(prepared.id2label), ignore_index=data.ignore_index,
        mode=setup.eval_mode, crop_size=setup.crop_size, stride=setup.eval_stride, scales=setup.eval_scales,
        flip=setup.eval_flip, device=prepared.device, show_progress=True,
    )  # fmt: skip
    return eval_results(
        metrics, prepared.id2label, eval_mode=setup.eval_mode, split=prepared.split_name,
        dataset=prepared.dataset_description, prototype_health=prototype_health(prepared.model),
    )  # fmt: skip


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.evaluate",
        description="Evaluate a saved model folder on a dataset split. Dataset options as training/train.py's.",
        epilog="Dataset options: --preset, --dataset_name, --dataset_config_name, --dataset_data_dir, "
        "--dataset_revision, --image_column, --label_column, --reduce_labels, --id2label_file, --num_labels, "
        "--ignore_index, --max_eval_samples, --validation_split, --synthetic_* and --seed (synthetic scenes).",
    )
    parser.add_argument("folder", help="a saved model folder (save_pretrained + preprocessor_config.json)")
    parser.add_argument("--split", default="test", help="the split to evaluate (default: test)")
    parser.add_argument(
        "--eval_mode", choices=EVAL_MODES, help="default: the run's (its evaluation_config.json), else whole"
    )
    parser.add_argument("--base_size", type=int, help="short side of the images (default: the folder's processor)")
    parser.add_argument("--crop_size", type=int, nargs="+", help="slide: window (default: the run's)")
    parser.add_argument(
        "--eval_stride", type=int, nargs="+", help="slide: stride (default: the run's; 2/3 of a --crop_size given)"
    )
    parser.add_argument(
        "--eval_scales", type=float, nargs="+",
        help=f"multiscale: factors (default: the run's, else {' '.join(map(str, MULTISCALE_FACTORS))})",
    )
    parser.add_argument("--eval_flip", dest="eval_flip", action="store_const", const=True, help="multiscale: flip too")
    parser.add_argument(
        "--no_eval_flip", dest="eval_flip", action="store_const", const=False, help="multiscale: no horizontal flip"
    )
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--device", help="default: cuda when available, else cpu")
    parser.add_argument(
        "--prototype_matching_dtype", choices=PROTOTYPE_MATCHING_DTYPES,
        help="ProtoSeg: the dtype of the class-score product (default: the saved config's)",
    )
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
        eval_flip=arguments.eval_flip, batch_size=arguments.batch_size, device=arguments.device,
    )  # fmt: skip
    model_kwargs = {"prototype_matching_dtype": arguments.prototype_matching_dtype}
    model_kwargs = {name: value for name, value in model_kwargs.items() if value is not None}
    results = evaluate_folder(
        arguments.folder, config.data, settings, seed=config.runtime.seed, model_kwargs=model_kwargs
    )
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
