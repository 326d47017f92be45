#!/usr/bin/env python
"""Train ProtoSeg (or the linear-classifier baseline) with accelerate.

    accelerate launch training/train.py                       # built-in synthetic data, a few minutes on CPU
    accelerate launch training/train.py --preset ade20k --encoder nvidia/mit-b0
    torchrun --nproc_per_node 2 training/train.py ...         # DDP (gloo on CPU, NCCL on GPUs)
    python training/train.py --help                           # every flag, with the value it will take

`run(config)` reads as its phases: setup (processes) -> data check -> model -> data (normalised as the model
expects) -> optimizer and resume -> loop ->
finish (final evaluation, export, upload). From Python: `run(parse_config([...]), datasets=...)`.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn
from tqdm.auto import tqdm

from training.augmentation import build_eval_transform, build_train_transform
from training.checkpointing import check_resume_matches, load_checkpoint, resolve_resume_checkpoint
from training.config import TrainingConfig, parse_config
from training.data import (
    BadSampleError,
    ResumableShardedSampler,
    SampleSource,
    SegmentationDataset,
    collate_eval,
    collate_train,
)
from training.distributed import (
    create_accelerator,
    divergence_across_processes,
    quiet_other_processes,
    release_wrapped_model,
    set_compute_threads,
    single_process_warning,
    synchronize_buffers,
)
from training.evaluation import EvaluationSetup, evaluate
from training.export import (
    eval_results,
    export_final_model,
    hardware_description,
    prototype_health,
    push_folder_to_hub,
    save_trained_model,
    training_summary,
)
from training.loop import TrainingState, iterate_forever, log_evaluation, train_steps
from training.models import build_model, segmentation_model_of
from training.output_folder import check_output_dir, model_code_file_names, remove_previous_run
from training.optimization import PolyWithWarmup, build_optimizer, set_schedule_step
from training.pixel_contrast import with_pixel_contrast
from training.preprocessing import (
    IMAGENET_NORMALIZATION,
    Normalization,
    build_image_processor,
    input_normalization,
)
from training.presets import EncoderSpec, resolve_encoder
from training.sources import DatasetSplits, SelectedSamples, load_dataset_splits

logger = logging.getLogger("protoseg.train")


MAX_SKIPPED_STEP_SHARE = 0.5  # a run that skipped more of its optimizer steps than this has failed


class TrainingFailedError(RuntimeError):
    """The loop ran to the end but the run did not train: no optimizer step happened, or more than
    `MAX_SKIPPED_STEP_SHARE` of the steps were skipped as non-finite."""


def skipped_steps_problem(skipped_steps: int, max_steps: int) -> str | None:
    """Why a run whose `skipped_steps` of `max_steps` optimizer steps were skipped (non-finite input, loss or
    gradient; counted over resumes) has failed, or None when enough steps happened."""
    if max_steps > 0 and skipped_steps >= max_steps:
        return f"no optimizer step happened: all {max_steps} were skipped for a non-finite input, loss or gradient"
    if skipped_steps > MAX_SKIPPED_STEP_SHARE * max_steps:
        return (
            f"{skipped_steps} of {max_steps} optimizer steps were skipped for a non-finite input, loss or gradient "
            f"(more than {MAX_SKIPPED_STEP_SHARE:.0%})"
        )
    return None


@dataclass
class TrainingResult:
    """What a run measured: final evaluation metrics (validation, and test with `--test_split`), the
    training facts of train_results.json, and the folder the model was saved to."""

    eval: dict[str, Any]
    train: dict[str, Any]
    output_dir: Path
    test: dict[str, Any] | None = None


@dataclass
class RunData:
    """The datasets and loaders of a run."""

    splits: DatasetSplits
    train_dataset: SegmentationDataset
    train_sampler: ResumableShardedSampler
    train_loader: torch.utils.data.DataLoader
    eval_loaders: dict[str, torch.utils.data.DataLoader]  # "validation" and, with --test_split, "test"
    eval_split_names: dict[str, str]


# ----------------------------------------------------------------------------------------------------- setup


def setup(config: TrainingConfig) -> tuple[Accelerator, EncoderSpec]:
    """Check the encoder and the output folder early, start the processes, delete an earlier run with
    `--overwrite_output_dir`, share CPU threads, quiet non-main processes."""
    encoder = resolve_encoder(config.model.encoder)  # unknown names fail here, before anything heavy
    output = config.output
    check_output_dir(
        output.output_dir, overwrite=output.overwrite_output_dir, resume_from_checkpoint=output.resume_from_checkpoint
    )
    accelerator = create_accelerator(config)
    if output.overwrite_output_dir and not output.resume_from_checkpoint:
        if accelerator.is_main_process:
            removed = remove_previous_run(output.output_dir, model_code_file_names())
            if removed:
                logger.info("--overwrite_output_dir: deleted the earlier run's %s in %s", ", ".join(removed),
                            output.output_dir)  # fmt: skip
        accelerator.wait_for_everyone()
    set_compute_threads(accelerator, config.runtime.num_threads, config.data.dataloader_num_workers)
    quiet_other_processes(accelerator)
    logger.info("config: %s", config.flat())
    logger.info(
        "processes: %d on %s, mixed precision: %s", accelerator.num_processes, accelerator.device,
        accelerator.mixed_precision,
    )  # fmt: skip
    warning = single_process_warning(accelerator.num_processes)
    if warning:
        logger.warning("%s", warning)
    return accelerator, encoder


# ------------------------------------------------------------------------------------------------------ data


def _segmentation_dataset(
    config: TrainingConfig, splits: DatasetSplits, source: SampleSource, *, train: bool, normalization: Normalization
) -> SegmentationDataset:
    common = dict(
        num_labels=len(splits.id2label), ignore_index=config.data.ignore_index, label_mapping=splits.label_mapping
    )
    if not train:
        transform = build_eval_transform(base_size=config.augmentation.base_size, normalization=normalization)
        return SegmentationDataset(source, transform=transform, keep_label_size=True, **common)
    transform = build_train_transform(
        crop_size=tuple(config.augmentation.crop_size),
        base_size=config.augmentation.base_size,
        scale_range=(config.augmentation.min_scale, config.augmentation.max_scale),
        ignore_index=config.data.ignore_index,
        photometric=config.augmentation.photometric_jitter,
        hflip_probability=config.augmentation.hflip_probability,
        normalization=normalization,
    )
    return SegmentationDataset(source, transform=transform, **common)


def _eval_loader(config: TrainingConfig, dataset: SegmentationDataset, accelerator: Accelerator):
    """Every process takes a disjoint shard (no padding duplicates); confusion matrices are summed."""
    shard = list(range(accelerator.process_index, len(dataset), accelerator.num_processes))
    return torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, shard),
        batch_size=config.evaluation.per_device_eval_batch_size,
        collate_fn=collate_eval,
        num_workers=config.data.dataloader_num_workers,
        generator=torch.Generator(),  # evaluating must not move the training RNG (dropout) either
    )


def build_datasets(
    config: TrainingConfig, splits: DatasetSplits, *, normalization: Normalization = IMAGENET_NORMALIZATION
) -> dict[str, SegmentationDataset]:
    """ "train" (augmented crops), "validation" and, with a test source, "test" (resized images, labels
    at their original size) as `SegmentationDataset`s, normalised as the model expects."""
    sources = {"train": splits.train, "validation": splits.validation}
    if splits.test is not None:
        sources["test"] = splits.test
    return {
        role: _segmentation_dataset(config, splits, source, train=role == "train", normalization=normalization)
        for role, source in sources.items()
    }


def check_first_samples(config: TrainingConfig, splits: DatasetSplits) -> DatasetSplits:
    """Read one sample of each split now (every sample with `--check_data` or `--skip_bad_samples`): empty splits,
    wrong columns, formats or labels fail before the model is built. Otherwise every other sample is checked when
    its batch is loaded. Returns the splits, without their bad samples under `--skip_bad_samples`."""
    datasets = build_datasets(config, splits)
    empty = [f"{role} ({getattr(dataset.source, 'split_name', role)!r})" for role, dataset in datasets.items()
             if len(dataset) == 0]  # fmt: skip
    if empty:
        raise ValueError(
            f"no samples in the {', '.join(empty)} split(s) of {splits.description or 'the dataset'}: check --train_split / "
            "--validation_split / --test_split and --max_train_samples / --max_eval_samples"
        )
    read_all = config.data.check_data or config.data.skip_bad_samples
    bad: dict[str, dict[int, str]] = {}  # role -> {index: message}
    for role, dataset in datasets.items():
        indices = range(len(dataset)) if read_all else [0]
        for index in tqdm(indices, desc=f"check {role} samples", disable=not read_all, unit="sample"):
            try:
                dataset.load_checked(index)
            except BadSampleError as error:
                if not read_all:
                    raise
                bad.setdefault(role, {})[index] = str(error)
    messages = [message for by_index in bad.values() for message in by_index.values()]
    if messages and not config.data.skip_bad_samples:
        listing = "\n  ".join(messages)
        raise ValueError(f"--check_data: {len(messages)} bad sample(s):\n  {listing}")
    if read_all:
        logger.info("read every sample: %d of %d valid", sum(map(len, datasets.values())) - len(messages),
                    sum(map(len, datasets.values())))  # fmt: skip
    return _without_bad_samples(splits, datasets, bad) if messages else splits


def _without_bad_samples(
    splits: DatasetSplits, datasets: dict[str, SegmentationDataset], bad: dict[str, dict[int, str]]
) -> DatasetSplits:
    """`splits` with the bad samples of each role left out (`--skip_bad_samples`); a split left empty is an error."""
    for role, by_index in bad.items():
        shown = "\n  ".join(list(by_index.values())[:10])
        logger.warning("--skip_bad_samples: leaving out %d bad %s sample(s):\n  %s", len(by_index), role, shown)
        if len(by_index) == len(datasets[role]):
            raise ValueError(f"--skip_bad_samples: every sample of the {role} split is bad, e.g.: {shown}")
    selected = {
        role: SelectedSamples(getattr(splits, role), [i for i in range(len(datasets[role])) if i not in by_index])
        for role, by_index in bad.items()
    }
    skipped = {role: len(by_index) for role, by_index in bad.items()}
    return dataclasses.replace(splits, **selected, skipped_bad_samples=skipped)


def prepare_data(
    config: TrainingConfig, splits: DatasetSplits, accelerator: Accelerator, *, normalization: Normalization
) -> RunData:
    """Datasets with their transforms (normalised as the model expects), the resumable sharded sampler and the
    loaders."""
    datasets = build_datasets(config, splits, normalization=normalization)
    train_dataset = datasets.pop("train")
    eval_datasets = datasets
    train_sampler = ResumableShardedSampler(
        len(train_dataset),
        batch_size=config.optimization.per_device_train_batch_size,
        num_replicas=accelerator.num_processes,
        rank=accelerator.process_index,
        seed=config.runtime.seed,
    )
    train_loader = torch.utils.data.DataLoader(
        train_dataset,
        batch_size=config.optimization.per_device_train_batch_size,
        sampler=train_sampler,
        collate_fn=collate_train,
        num_workers=config.data.dataloader_num_workers,
        drop_last=True,
        pin_memory=accelerator.device.type == "cuda",
        generator=torch.Generator(),  # the loader must not draw from the global RNG (exact resumes)
    )
    logger.info(
        "data: %d training / %d evaluation samples, %d classes, %d batches per epoch and process",
        len(train_dataset), len(eval_datasets["validation"]), len(splits.id2label), train_sampler.batches_per_epoch,
    )  # fmt: skip
    return RunData(
        splits=splits,
        train_dataset=train_dataset,
        train_sampler=train_sampler,
        train_loader=train_loader,
        eval_loaders={role: _eval_loader(config, dataset, accelerator) for role, dataset in eval_datasets.items()},
        eval_split_names={role: getattr(d.source, "split_name", role) for role, d in eval_datasets.items()},
    )


# ------------------------------------------------------------------------------ model, optimizer and resume


def prepare_model(config: TrainingConfig, encoder: EncoderSpec, id2label: dict[int, str], accelerator: Accelerator):
    """The model with the same initial weights on every process, then per-process seeds for dropout etc."""
    set_seed(config.runtime.seed)
    model = build_model(config, encoder, id2label)
    set_seed(config.runtime.seed + accelerator.process_index)
    logger.info("model: %s, %.2f M parameters", type(model).__name__, sum(p.numel() for p in model.parameters()) / 1e6)
    return model


def prepare_training(
    config: TrainingConfig, model: nn.Module, data: RunData, accelerator: Accelerator
) -> TrainingState:
    """Optimizer and schedule (stepped once per optimizer step), DDP wrapping, and the resume: weights,
    prototypes, optimizer, scheduler, RNG states and the data position."""
    optimizer = build_optimizer(model, config.optimization)
    lr_schedule = PolyWithWarmup(
        max_steps=config.optimization.max_steps,
        power=config.optimization.poly_power,
        warmup_steps=config.optimization.warmup_steps,
        warmup_start_factor=config.optimization.warmup_start_factor,
        min_factor=config.optimization.min_learning_rate / config.optimization.learning_rate,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule)
    prepared_model, optimizer = accelerator.prepare(model, optimizer)
    # The scheduler is not registered for checkpointing: accelerate would pickle it and unpickle it with
    # weights_only=False on resume. The schedule is a pure function of the step and is set from it instead.
    images_per_step = (
        config.optimization.per_device_train_batch_size
        * config.optimization.gradient_accumulation_steps
        * accelerator.num_processes
    )
    start_step, skipped_nonfinite_steps = 0, 0
    checkpoint_root = Path(config.output.output_dir) / "checkpoints"
    resume_folder = resolve_resume_checkpoint(config.output.resume_from_checkpoint, checkpoint_root)
    if resume_folder is not None:
        training_state = load_checkpoint(accelerator, resume_folder)
        check_resume_matches(
            training_state,
            {
                "num_processes": accelerator.num_processes,
                "per_device_train_batch_size": config.optimization.per_device_train_batch_size,
                "gradient_accumulation_steps": config.optimization.gradient_accumulation_steps,
                "global_batch_size": images_per_step,
            },
            max_steps=config.optimization.max_steps,
        )
        start_step = training_state["step"]
        skipped_nonfinite_steps = training_state.get("skipped_nonfinite_steps", 0)
        set_schedule_step(scheduler, start_step)
        logger.info("resumed from %s at step %d", resume_folder, start_step)
    elif config.output.resume_from_checkpoint:
        logger.info("no checkpoint in %s yet: starting from scratch", checkpoint_root)
    consumed_batches = start_step * config.optimization.gradient_accumulation_steps
    batches_per_epoch = data.train_sampler.batches_per_epoch
    batches = iterate_forever(
        data.train_loader,
        data.train_sampler,
        epoch=consumed_batches // batches_per_epoch,
        start_batch=consumed_batches % batches_per_epoch,
    )
    return TrainingState(
        prepared_model, optimizer, scheduler, batches, start_step, images_per_step, skipped_nonfinite_steps
    )


def evaluate_on(
    config: TrainingConfig,
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    num_labels: int,
    accelerator: Accelerator,
    *,
    mode: str | None = None,
    num_examples: int = 0,
) -> dict[str, Any]:
    """Dataset-level metrics of `model` on one split, each process evaluating its shard (in `mode`, default
    `--eval_mode`); with `num_examples`, also "examples" for the trackers' prediction images."""
    synchronize_buffers(model, accelerator)
    return evaluate(
        model,
        loader,
        num_labels=num_labels,
        ignore_index=config.data.ignore_index,
        mode=mode or config.evaluation.eval_mode,
        crop_size=tuple(config.augmentation.crop_size),
        stride=tuple(config.evaluation.eval_stride) if config.evaluation.eval_stride else None,
        scales=config.evaluation.eval_scales,
        flip=config.evaluation.eval_flip,
        device=accelerator.device,
        all_reduce_sum=lambda tensor: accelerator.reduce(tensor, reduction="sum"),
        num_examples=num_examples,
        autocast=accelerator.autocast,
        show_progress=accelerator.is_local_main_process,
    )


def _tracker_config(config: TrainingConfig) -> dict[str, Any]:
    """The config as scalars/strings for the trackers' hyper-parameter tables (no tokens)."""
    values = config.flat()
    values.pop("hub_token", None)
    return {key: value if isinstance(value, (int, float, str, bool)) else str(value) for key, value in values.items()}


# ---------------------------------------------------------------------------------------------------- finish


def evaluation_setup(config: TrainingConfig) -> EvaluationSetup:
    """How this run evaluates (mode, windows, scales), saved with the model for `python -m training.evaluate`."""
    evaluation = config.evaluation
    return EvaluationSetup.from_settings(
        eval_mode=evaluation.eval_mode, crop_size=config.augmentation.crop_size, eval_stride=evaluation.eval_stride,
        eval_scales=evaluation.eval_scales, eval_flip=evaluation.eval_flip,
    )  # fmt: skip


def _image_processor(config: TrainingConfig, model: nn.Module):
    """The processor saved with the model: it resizes and normalises as evaluation does."""
    return build_image_processor(
        input_normalization(model.config),
        base_size=config.augmentation.base_size,
        crop_size=tuple(config.augmentation.crop_size),
    )


def export(
    config: TrainingConfig,
    model: nn.Module,
    encoder: EncoderSpec,
    data: RunData,
    accelerator: Accelerator,
    *,
    metrics: dict[str, dict[str, Any]],
    train_results: dict[str, Any],
) -> None:
    """Main process: write the final folder (model, processor, results, summary, card); upload it if asked."""
    id2label = data.splits.id2label
    health = prototype_health(model)
    results = {
        f"{'eval' if role == 'validation' else role}_results.json": eval_results(
            values,
            id2label,
            eval_mode=config.evaluation.eval_mode,
            split=data.eval_split_names[role],
            dataset=data.splits.description,
            prototype_health=health,
        )
        for role, values in metrics.items()
    }
    summary = training_summary(
        config,
        dataset=data.splits.description,
        dataset_id=data.splits.hub_dataset_id,
        num_train_images=len(data.train_dataset),
        encoder_pretrained=encoder.is_pretrained,
        global_batch_size=train_results["global_batch_size"],
        num_processes=accelerator.num_processes,
        hardware=hardware_description(accelerator),
        mixed_precision=accelerator.mixed_precision,
        train_runtime_seconds=train_results["train_runtime_seconds"],
    )
    folder = export_final_model(
        model, output_dir=config.output.output_dir, image_processor=_image_processor(config, model), results=results,
        train_results=train_results, summary=summary, hub_model_id=config.output.hub_model_id,
        evaluation_setup=evaluation_setup(config),
    )  # fmt: skip
    logger.info("saved the final model to %s", folder)
    if config.output.push_to_hub:
        push_folder_to_hub(
            folder,
            repo_id=config.output.hub_model_id,
            token=config.output.hub_token,
            private=config.output.hub_private_repo,
        )


def finish(
    config: TrainingConfig,
    model: nn.Module,
    encoder: EncoderSpec,
    data: RunData,
    state: TrainingState,
    accelerator: Accelerator,
    train_runtime: float,
) -> TrainingResult:
    """Final evaluation (once: each process a shard, results reduced), export and upload."""
    divergence = divergence_across_processes(model, accelerator)  # before any buffer sync
    if accelerator.is_main_process:  # a fault in the final evaluation or export must not lose the trained model
        save_trained_model(
            model, output_dir=config.output.output_dir, image_processor=_image_processor(config, model),
            evaluation_setup=evaluation_setup(config),
        )  # fmt: skip
        logger.info("saved the trained weights to %s (results and card follow the final evaluation)", config.output.output_dir)
    accelerator.wait_for_everyone()
    id2label = data.splits.id2label
    metrics = {
        role: evaluate_on(config, model, loader, len(id2label), accelerator,
                          num_examples=config.output.log_eval_images if role == "validation" else 0)
        for role, loader in data.eval_loaders.items()
    }  # fmt: skip
    examples = metrics["validation"].pop("examples", [])
    class_names = [id2label[index] for index in range(len(id2label))]
    log_evaluation(accelerator, metrics["validation"], config.optimization.max_steps, "final", class_names, examples)
    if config.evaluation.eval_mode != "whole":  # what a pipeline user gets, for the card
        for role, loader in data.eval_loaders.items():
            whole = evaluate_on(config, model, loader, len(id2label), accelerator, mode="whole")
            metrics[role]["whole_image_mean_iou"] = whole["mean_iou"]
    train_results = {
        "global_step": config.optimization.max_steps,
        "resumed_from_step": state.start_step,
        "train_runtime_seconds": train_runtime,
        "train_images_per_second": (config.optimization.max_steps - state.start_step)
        * state.images_per_step
        / max(train_runtime, 1e-9),
        "num_processes": accelerator.num_processes,
        "global_batch_size": state.images_per_step,
        "skipped_nonfinite_steps": state.skipped_nonfinite_steps,
        "skipped_bad_samples": data.splits.skipped_bad_samples,
        **divergence,
    }
    if accelerator.is_main_process:
        export(config, model, encoder, data, accelerator, metrics=metrics, train_results=train_results)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainingResult(
        eval=metrics["validation"],
        train=train_results,
        output_dir=Path(config.output.output_dir),
        test=metrics.get("test"),
    )


# ------------------------------------------------------------------------------------------------------- run


def run(config: TrainingConfig, *, datasets: DatasetSplits | None = None) -> TrainingResult:
    """Train, evaluate and export one model as `config` says.

    Arguments:
        config: a resolved config (`parse_config(argv)` or `resolve_config(max_steps=..., ...)`).
        datasets: raw sources and class names to train on instead of the dataset `config` names
            (transforms, sampling and evaluation still follow `config`).
    """
    accelerator, encoder = setup(config)
    splits = datasets if datasets is not None else load_dataset_splits(config.data, seed=config.runtime.seed)
    splits = check_first_samples(config, splits)
    model = prepare_model(config, encoder, splits.id2label, accelerator)
    data = prepare_data(config, splits, accelerator, normalization=input_normalization(model.config))
    trained = with_pixel_contrast(  # the model, or the model plus the training-only contrastive objective
        model, config.contrast, micro_batches_per_step=config.optimization.gradient_accumulation_steps
    )
    state = prepare_training(config, trained, data, accelerator)
    unwrapped_model = segmentation_model_of(accelerator.unwrap_model(state.model))
    if accelerator.is_main_process:
        accelerator.init_trackers("protoseg", config=_tracker_config(config))
    train_runtime = train_steps(
        config,
        accelerator,
        state,
        evaluate_validation=lambda: evaluate_on(
            config, unwrapped_model, data.eval_loaders["validation"], len(splits.id2label), accelerator,
            num_examples=config.output.log_eval_images,
        ),
        checkpoint_root=Path(config.output.output_dir) / "checkpoints",
    )
    state.model, state.optimizer, state.scheduler = unwrapped_model, None, None
    release_wrapped_model(accelerator)
    problem = skipped_steps_problem(state.skipped_nonfinite_steps, config.optimization.max_steps)
    if problem is not None:  # the same count on every process: all stop together, before evaluation and export
        if accelerator.is_main_process:
            processor = _image_processor(config, unwrapped_model)
            save_trained_model(unwrapped_model, output_dir=config.output.output_dir, image_processor=processor)
        accelerator.wait_for_everyone()
        accelerator.end_training()
        raise TrainingFailedError(
            f"the run failed: {problem}. The weights as they are were saved to {config.output.output_dir} and the "
            "checkpoints are kept, but there is no evaluation, card or upload; check the data, the learning rate and "
            "the loss settings (see the warnings above)"
        )
    return finish(config, unwrapped_model, encoder, data, state, accelerator, train_runtime)


def main(argv: list[str] | None = None) -> TrainingResult:
    """The command line: flags -> config -> `run`."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    return run(parse_config(argv))


if __name__ == "__main__":
    from model_cards import PublishError

    try:
        main()
    except (PublishError, TrainingFailedError) as error:  # the folder is saved: say what happened, no traceback
        logger.error("%s", error)
        sys.exit(1)
