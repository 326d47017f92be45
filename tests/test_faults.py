"""Fault injection (issue 9): what a run survives and what it keeps. Runs alone: `pytest tests/test_faults.py`.

- resuming runs no code from the checkpoint folder (malicious pickles are refused, never executed);
- one non-finite batch or loss is skipped on every process: no parameter, BatchNorm or prototype change;
- resuming with changed arguments is refused or stops cleanly; a damaged newest checkpoint falls back;
- bad data names its split, index and file; the trained model is exported even when evaluation fails;
- distributed input errors fail on every process together instead of hanging.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from test_training_run import TINY_RUN, TRAIN_SCRIPT  # noqa: E402  (the same tiny synthetic run)
from test_training_run import run_training as _run_training  # noqa: E402


def run_training(args: list[str], *, timeout: int = 240) -> subprocess.CompletedProcess:
    """`python training/train.py ARGS` offline on one thread; returns the finished process (not checked)."""
    return _run_training(args, check=False, timeout=timeout)


@pytest.fixture(scope="module")
def checkpointed_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 6-step run with checkpoints at steps 2 and 4 (copied by each test that damages it)."""
    output_dir = tmp_path_factory.mktemp("checkpointed") / "run"
    result = run_training([*TINY_RUN, "--max_steps", "6", "--checkpointing_steps", "2",
                           "--checkpoints_total_limit", "5", "--output_dir", str(output_dir)])  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    return output_dir


def _copy_checkpoints(run: Path, destination: Path) -> Path:
    import shutil

    shutil.copytree(run / "checkpoints", destination / "checkpoints")
    return destination


class _RunsCode:
    """A pickle that, when unpickled with code execution allowed, creates `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('code from the checkpoint ran')",))


# ------------------------------------------------------------------------------ 3. no code from a checkpoint


def test_checkpoints_hold_no_pickled_objects_and_malicious_pickles_never_run(
    checkpointed_run: Path, tmp_path: Path
) -> None:
    for folder in (checkpointed_run / "checkpoints").iterdir():
        assert not list(folder.glob("custom_checkpoint_*")), f"{folder} holds a pickled object"
    for file_name in ("custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin"):
        output_dir = _copy_checkpoints(checkpointed_run, tmp_path / file_name)
        marker = tmp_path / f"{file_name}.ran"
        torch.save(_RunsCode(marker), output_dir / "checkpoints" / "checkpoint-4" / file_name)
        result = run_training([*TINY_RUN, "--max_steps", "6", "--output_dir", str(output_dir),
                               "--resume_from_checkpoint", str(output_dir / "checkpoints" / "checkpoint-4")])  # fmt: skip
        assert not marker.exists(), f"resuming ran code from {file_name}"
        assert result.returncode != 0, f"a resume with a malicious {file_name} went on"
        assert file_name in result.stderr or "weights_only" in result.stderr.lower(), result.stderr[-3000:]


def test_resume_sets_the_learning_rate_schedule_from_the_step() -> None:
    from training.optimization import PolyWithWarmup, set_schedule_step

    def scheduler() -> torch.optim.lr_scheduler.LambdaLR:
        optimizer = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.1},
                                     {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 1.0}])  # fmt: skip
        schedule = PolyWithWarmup(max_steps=10, power=0.9, warmup_steps=3, warmup_start_factor=0.1, min_factor=0.01)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

    stepped, restored = scheduler(), scheduler()
    for _ in range(7):
        stepped.optimizer.step()
        stepped.step()
    set_schedule_step(restored, 7)
    assert restored.get_last_lr() == stepped.get_last_lr()
    assert [group["lr"] for group in restored.optimizer.param_groups] == stepped.get_last_lr()
    restored.optimizer.step()
    restored.step()
    stepped.step()
    assert restored.get_last_lr() == stepped.get_last_lr()


# ------------------------------------------------------------------------------ 1. one NaN poisons nothing


def _tiny_training_state(batches: list[dict], max_grad_norm: float = 1.0):
    from accelerate import Accelerator

    from modeling_protoseg import ProtoSegForSemanticSegmentation
    from tiny_models import tiny_protoseg_config
    from training.config import resolve_config
    from training.loop import TrainingState

    config = resolve_config(max_steps=len(batches), max_grad_norm=max_grad_norm)
    accelerator = Accelerator(cpu=True)
    model = ProtoSegForSemanticSegmentation(tiny_protoseg_config())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    return config, accelerator, TrainingState(model, optimizer, scheduler, iter(batches), 0, 2)


def _batch(pixel_value: float | None = None) -> dict:
    pixel_values = torch.randn(2, 3, 32, 32)
    if pixel_value is not None:
        pixel_values[1, 0, 5, 7] = pixel_value
    return {"pixel_values": pixel_values, "labels": torch.randint(0, 3, (2, 32, 32))}


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()
            if not name.endswith("skipped_nonfinite_updates")}  # fmt: skip


@pytest.mark.parametrize("max_grad_norm", [1.0, 0.0], ids=["clipped", "unclipped"])
def test_a_non_finite_gradient_with_a_finite_loss_skips_the_step(max_grad_norm: float) -> None:
    """The gradient check: with clipping it is the clipping norm itself, without it a norm of its own."""
    from training.loop import RunningMeans, optimizer_step

    config, accelerator, state = _tiny_training_state([_batch(), _batch(), _batch()], max_grad_norm=max_grad_norm)
    running = RunningMeans()
    assert optimizer_step(config, accelerator, state, running)
    before = _snapshot(state.model)
    weight = accelerator.unwrap_model(state.model).decode_head.linear_fuse.weight
    handle = weight.register_hook(lambda grad: torch.full_like(grad, float("nan")))
    assert not optimizer_step(config, accelerator, state, running)
    handle.remove()
    after = _snapshot(state.model)
    for name, value in before.items():
        torch.testing.assert_close(after[name], value, rtol=0, atol=0, msg=name)
    assert optimizer_step(config, accelerator, state, running) and state.skipped_nonfinite_steps == 1


@pytest.mark.parametrize("bad_pixel", [float("nan"), float("inf"), 3e38], ids=["nan", "inf", "overflowing"])
def test_a_non_finite_batch_is_skipped_without_changing_weights_batchnorm_or_prototypes(bad_pixel: float) -> None:
    from training.loop import RunningMeans, optimizer_step

    config, accelerator, state = _tiny_training_state([_batch(), _batch(bad_pixel), _batch()])
    running = RunningMeans()
    assert optimizer_step(config, accelerator, state, running)  # a good step first: Adam state, moved prototypes
    before = _snapshot(state.model)
    assert not optimizer_step(config, accelerator, state, running)
    after = _snapshot(state.model)
    for name, value in before.items():  # weights, BatchNorm running stats, prototypes and their statistics
        torch.testing.assert_close(after[name], value, rtol=0, atol=0, msg=name)
    assert state.skipped_nonfinite_steps == 1
    assert all(p.grad is None for p in state.model.parameters())  # nothing left to leak into the next step
    assert optimizer_step(config, accelerator, state, running)  # training goes on, finite
    assert all(torch.isfinite(value).all() for value in state.model.state_dict().values())
    assert state.skipped_nonfinite_steps == 1
    assert all(value == value for value in running.log_values(2).values())  # no NaN in the logged means


# ------------------------------------------------------------------------------ 4. resuming with changed arguments


def _batch_norm_statistics(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: buffer.clone() for name, buffer in model.named_buffers()
            if name.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked")}  # fmt: skip


@pytest.mark.parametrize("head", ["protoseg", "linear"])
@pytest.mark.parametrize("bad_pixel", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_a_non_finite_batch_in_a_users_own_loop_leaves_batchnorm_finite(head: str, bad_pixel: float) -> None:
    """Outside train.py (a user's loop, transformers' Trainer) one NaN batch used to make the BatchNorm running
    statistics NaN, and every later prediction NaN."""
    from modeling_protoseg import ProtoSegLinearHeadConfig, ProtoSegLinearHeadForSemanticSegmentation
    from tiny_models import tiny_resnet_encoder_config

    torch.manual_seed(0)
    encoder_config = tiny_resnet_encoder_config()  # BatchNorm in the encoder as well as in the decoder
    if head == "linear":
        id2label = {index: f"class_{index}" for index in range(3)}
        config = ProtoSegLinearHeadConfig(encoder_config=encoder_config, decoder_hidden_size=16, id2label=id2label)
        model = ProtoSegLinearHeadForSemanticSegmentation(config)
    else:
        model = _tiny_model(encoder_config=encoder_config)
    model.train()
    finite = _batch()
    model(**finite)  # one finite batch: the statistics move
    statistics = _batch_norm_statistics(model)
    assert len(statistics) > 9 and statistics[next(iter(statistics))].abs().sum() > 0
    poisoned = _batch(bad_pixel)
    model(**poisoned)  # labels given
    model(pixel_values=poisoned["pixel_values"])  # and without labels
    for name, value in _batch_norm_statistics(model).items():
        assert torch.equal(value, statistics[name]), name
    model(**_batch())  # a finite batch still updates them
    assert not torch.equal(_batch_norm_statistics(model)[next(iter(statistics))], statistics[next(iter(statistics))])
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(pixel_values=finite["pixel_values"]).logits).all()


def test_resume_past_max_steps_is_refused(checkpointed_run: Path, tmp_path: Path) -> None:
    output_dir = _copy_checkpoints(checkpointed_run, tmp_path)
    result = run_training([*TINY_RUN, "--max_steps", "3", "--output_dir", str(output_dir),
                           "--resume_from_checkpoint", "latest"])  # fmt: skip
    assert result.returncode != 0
    assert "the checkpoint is at step 4, past --max_steps 3" in result.stderr
    assert not (output_dir / "train_results.json").exists()


@pytest.mark.parametrize(
    "changed, expected",
    [(["--per_device_train_batch_size", "2"], "per_device_train_batch_size: the checkpoint has 4, this run 2"),
     (["--gradient_accumulation_steps", "2"], "gradient_accumulation_steps: the checkpoint has 1, this run 2")],
)  # fmt: skip
def test_resume_with_another_batch_layout_is_refused_naming_both_values(
    checkpointed_run: Path, tmp_path: Path, changed: list[str], expected: str
) -> None:
    output_dir = _copy_checkpoints(checkpointed_run, tmp_path)
    result = run_training([*TINY_RUN, "--max_steps", "6", *changed, "--output_dir", str(output_dir),
                           "--resume_from_checkpoint", "latest"])  # fmt: skip
    assert result.returncode != 0
    assert expected in result.stderr


def test_a_different_number_of_processes_is_refused() -> None:
    from training.checkpointing import check_resume_matches

    with pytest.raises(ValueError, match="num_processes: the checkpoint has 2, this run 1"):
        check_resume_matches({"step": 4, "num_processes": 2}, {"num_processes": 1}, max_steps=6)


def test_a_truncated_newest_checkpoint_falls_back_to_the_previous_one(checkpointed_run: Path, tmp_path: Path) -> None:
    output_dir = _copy_checkpoints(checkpointed_run, tmp_path)
    weights = output_dir / "checkpoints" / "checkpoint-4" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    result = run_training([*TINY_RUN, "--max_steps", "6", "--output_dir", str(output_dir),
                           "--resume_from_checkpoint", "latest"])  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    assert "skipping the damaged checkpoint" in result.stderr and "checkpoint-4" in result.stderr
    train_results = json.loads((output_dir / "train_results.json").read_text())
    assert train_results["resumed_from_step"] == 2 and train_results["global_step"] == 6
    assert train_results["skipped_nonfinite_steps"] == 0


# ------------------------------------------------------------------------------ 2. bad data says where; the model is kept


def _file_pairs(folder: Path, count: int, *, split: str) -> list[tuple[Path, Path]]:
    """`count` valid 32x32 (image, label) PNG pairs with 3 classes."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    pairs = []
    for index in range(count):
        image_path, label_path = folder / f"{split}_{index}.png", folder / f"{split}_{index}_label.png"
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(image_path)
        Image.fromarray(rng.integers(0, 3, (32, 32), dtype=np.uint8)).save(label_path)
        pairs.append((image_path, label_path))
    return pairs


def _damage(pairs: list[tuple[Path, Path]]) -> tuple[Path, Path]:
    """Truncate the image of sample 1 and put class 7 into the label of sample 2; returns those two files."""
    import numpy as np
    from PIL import Image

    truncated_image = pairs[1][0]
    truncated_image.write_bytes(truncated_image.read_bytes()[:200])
    bad_label = pairs[2][1]
    Image.fromarray(np.full((32, 32), 7, dtype=np.uint8)).save(bad_label)
    return truncated_image, bad_label


def _file_splits(folder: Path, *, damaged: bool):
    from training.data import FilePairSource
    from training.sources import DatasetSplits

    train_pairs = _file_pairs(folder / "train", 8, split="train")
    damaged_files = _damage(train_pairs) if damaged else None
    splits = DatasetSplits(
        train=FilePairSource(train_pairs, split_name="train"),
        validation=FilePairSource(_file_pairs(folder / "val", 3, split="val"), split_name="val"),
        id2label={0: "a", 1: "b", 2: "c"},
        description="files",
    )
    return splits, damaged_files


def test_bad_images_and_labels_name_split_index_and_file(tmp_path: Path) -> None:
    from training.augmentation import build_eval_transform
    from training.data import BadSampleError, SegmentationDataset
    from training.preprocessing import IMAGENET_NORMALIZATION

    splits, (truncated_image, bad_label) = _file_splits(tmp_path, damaged=True)
    dataset = SegmentationDataset(splits.train, transform=build_eval_transform(base_size=32, normalization=IMAGENET_NORMALIZATION), num_labels=3)  # fmt: skip
    with pytest.raises(BadSampleError, match=r"train sample 1") as image_error:
        dataset[1]
    assert str(truncated_image) in str(image_error.value)
    with pytest.raises(BadSampleError, match=r"train sample 2.*label values \[7\]") as label_error:
        dataset[2]
    assert f"label file {bad_label}" in str(label_error.value)


def _tiny_config(tmp_path: Path, *extra: str):
    from training.config import parse_config

    args = [*TINY_RUN, "--max_steps", "2", "--output_dir", str(tmp_path / "out"), *extra]
    return parse_config(args)


def test_check_data_lists_every_bad_sample_before_training(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    from training import train as train_script

    splits, (truncated_image, bad_label) = _file_splits(tmp_path / "data", damaged=True)
    with pytest.raises(ValueError, match="--check_data: 2 bad sample") as error:
        train_script.run(_tiny_config(tmp_path, "--check_data", "true"), datasets=splits)
    assert str(truncated_image) in str(error.value) and str(bad_label) in str(error.value)
    assert not (tmp_path / "out" / "model.safetensors").exists()
    progress = capfd.readouterr().err  # a progress bar per split while every sample is read
    for role, count in (("train", len(splits.train)), ("validation", len(splits.validation))):
        assert f"check {role} samples" in progress and f"{count}/{count}" in progress, progress[-2000:]


def test_skip_bad_samples_trains_without_them_and_counts_them(tmp_path: Path) -> None:
    import json

    from training import train as train_script

    splits, _ = _file_splits(tmp_path / "data", damaged=True)  # train samples 1 and 2 are bad
    result = train_script.run(_tiny_config(tmp_path, "--skip_bad_samples", "true"), datasets=splits)
    train_results = json.loads((tmp_path / "out" / "train_results.json").read_text())
    assert train_results["skipped_bad_samples"] == {"train": 2}
    assert result.eval["num_samples"] == 3  # the validation split is intact and complete


def test_skip_bad_samples_refuses_a_split_with_no_good_sample(tmp_path: Path) -> None:
    from training import train as train_script
    from training.data import FilePairSource

    splits, _ = _file_splits(tmp_path / "data", damaged=False)
    broken = _file_pairs(tmp_path / "broken", 2, split="val")
    for image_path, _ in broken:
        image_path.write_bytes(b"not a png")
    splits.validation = FilePairSource(broken, split_name="val")
    with pytest.raises(ValueError, match="every sample of the validation split is bad"):
        train_script.run(_tiny_config(tmp_path, "--skip_bad_samples", "true"), datasets=splits)


def test_empty_splits_give_one_clear_message(tmp_path: Path) -> None:
    from training import train as train_script
    from training.data import FilePairSource

    splits, _ = _file_splits(tmp_path / "data", damaged=False)
    splits.validation = FilePairSource([], split_name="val")
    with pytest.raises(ValueError, match=r"no samples in the validation \('val'\) split"):
        train_script.run(_tiny_config(tmp_path), datasets=splits)


def test_a_failing_final_evaluation_keeps_the_trained_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from modeling_protoseg import ProtoSegForSemanticSegmentation
    from training import train as train_script

    def failing_evaluation(*args, **kwargs):
        raise RuntimeError("the evaluation data vanished")

    monkeypatch.setattr(train_script, "evaluate_on", failing_evaluation)
    splits, _ = _file_splits(tmp_path / "data", damaged=False)
    with pytest.raises(RuntimeError, match="vanished"):
        train_script.run(_tiny_config(tmp_path, "--eval_steps", "0"), datasets=splits)
    model = ProtoSegForSemanticSegmentation.from_pretrained(tmp_path / "out")
    assert model.prototype_health()["never_updated_prototypes"] < model.prototype_health()["num_prototypes"]
    assert (tmp_path / "out" / "preprocessor_config.json").is_file()


@pytest.mark.parametrize("skipped_steps", [(1, 2, 3), (2, 3)], ids=["every-step", "more-than-half"])
def test_a_run_that_skipped_too_many_steps_fails_and_keeps_its_weights(
    skipped_steps: tuple[int, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every step (or 2 of 3) skipped as non-finite used to end with success and an exported untrained model."""
    from training import loop
    from training import train as train_script

    calls = iter(range(1, 100))
    monkeypatch.setattr(loop, "check_batch_on_every_process", lambda *args: next(calls) not in skipped_steps)
    splits, _ = _file_splits(tmp_path / "data", damaged=False)
    config = _tiny_config(tmp_path, "--max_steps", "3", "--checkpointing_steps", "1", "--eval_steps", "0")
    expected = "no optimizer step happened: all 3" if len(skipped_steps) == 3 else r"2 of 3 optimizer steps .* 50%"
    with pytest.raises(train_script.TrainingFailedError, match=expected):
        train_script.run(config, datasets=splits)
    output = tmp_path / "out"
    assert (output / "model.safetensors").is_file() and (output / "preprocessor_config.json").is_file()
    assert not (output / "README.md").exists() and not (output / "eval_results.json").exists()  # no card, no results
    assert [path.name for path in sorted((output / "checkpoints").iterdir())] == ["checkpoint-1", "checkpoint-2"]


def test_half_the_steps_skipped_is_still_a_run() -> None:
    from training.train import skipped_steps_problem

    assert skipped_steps_problem(1, 2) is None and skipped_steps_problem(0, 5) is None
    assert "all 2" in skipped_steps_problem(2, 2) and "3 of 5" in skipped_steps_problem(3, 5)


@pytest.mark.parametrize("name", ["missing_run", "./missing_run", "runs/2024/missing", "someone/missing-model"])
def test_evaluating_a_missing_folder_says_it_does_not_exist(name: str, tmp_path: Path, monkeypatch) -> None:
    """It used to say "has no preprocessor_config.json ... pass --base_size", then "Repo id must be in the form"."""
    from training import evaluate

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=f"the model folder {name} does not exist") as error:
        evaluate.main([name])
    assert "base_size" not in str(error.value) and "Repo id" not in str(error.value)
    assert ("huggingface-cli download" in str(error.value)) == (name == "someone/missing-model")
    (tmp_path / "a_file").write_text("{}")
    with pytest.raises(ValueError, match="a_file is a file, not a saved model folder"):
        evaluate.main(["a_file", "--base_size", "32"])


@pytest.mark.parametrize("contents", [b"garbage, not a torch file", "pickle"], ids=["garbage", "non-tensor-pickle"])
def test_the_lite0_converter_refuses_a_wrong_file_without_suggesting_weights_only_false(
    contents: bytes | str, tmp_path: Path
) -> None:
    from protoseg_tools import convert_efficientnet_lite0

    weights = tmp_path / "lite0.pth"
    if contents == "pickle":
        torch.save({"stem.weight": torch.zeros(1), "note": "a string"}, weights)
    else:
        weights.write_bytes(contents)
    with pytest.raises(SystemExit) as error:
        convert_efficientnet_lite0.main([str(tmp_path / "out"), "--weights_path", str(weights)])
    message = str(error.value.code)
    assert f"{weights} is not an EfficientNet-PyTorch efficientnet-lite0 .pth state dict" in message
    assert "weights_only" not in message and not (tmp_path / "out").exists()
    with pytest.raises(SystemExit, match="does not exist"):
        convert_efficientnet_lite0.main([str(tmp_path / "out"), "--weights_path", str(tmp_path / "missing.pth")])


# ------------------------------------------------------------------------------ 6. clear errors before anything moves


def _tiny_model(**overrides):
    from modeling_protoseg import ProtoSegForSemanticSegmentation
    from tiny_models import tiny_protoseg_config

    return ProtoSegForSemanticSegmentation(tiny_protoseg_config(**overrides))


@pytest.mark.parametrize(
    "pixel_values, labels, message",
    [
        (torch.randn(2, 3, 32, 32), torch.zeros(2, 32, 32, dtype=torch.bool), r"labels must be an integer .*torch\.bool"),
        (torch.randint(0, 255, (2, 3, 32, 32)), None, r"pixel_values must be a floating-point .*torch\.int64"),
        (torch.randn(0, 3, 32, 32), torch.zeros(0, 32, 32, dtype=torch.long), r"batch of 0 images.*>= 1"),
        (torch.randn(2, 3, 28, 32), torch.zeros(2, 28, 32, dtype=torch.long), r"28 x 32 are too small.*>= 29"),
    ],
    ids=["bool-labels", "int64-pixel-values", "empty-batch", "smaller-than-the-encoder-minimum"],
)  # fmt: skip
def test_malformed_inputs_are_value_errors_before_any_state_changes(pixel_values, labels, message) -> None:
    model = _tiny_model().train()
    before = _snapshot(model)
    with pytest.raises(ValueError, match=message):
        model(pixel_values, labels=labels)
    for name, value in _snapshot(model).items():
        assert torch.equal(value, before[name]), name


def test_the_stated_minimum_size_runs() -> None:
    from modeling_protoseg.encoders import minimum_input_size

    model = _tiny_model().eval()
    assert minimum_input_size(model.config.encoder_config) == 29
    assert model(torch.randn(1, 3, 29, 29)).logits.shape[-2:] == (8, 8)


def _enrolment_scene(size: int = 32):
    import numpy as np

    image = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
    return image, np.zeros((size, size), dtype=bool)


def test_add_classes_refuses_a_one_pixel_image_and_a_one_pixel_mask_leaving_the_model_unchanged() -> None:
    model = _tiny_model()
    before, labels_before = _snapshot(model), dict(model.config.id2label)
    tiny_image, tiny_mask = _enrolment_scene(size=1)
    tiny_mask[0, 0] = True
    with pytest.raises(ValueError, match=r"class 'leaf', example 0: the image .* 1 x 1 pixels, too small .*>= 29"):
        model.add_classes({"leaf": [(tiny_image, tiny_mask)]})
    image, single_pixel = _enrolment_scene()
    single_pixel[10, 10] = True
    with pytest.raises(ValueError, match=r"class 'leaf': the masks select 1 pixel\(s\).*num_prototypes_per_class = 4"):
        model.add_classes({"leaf": [(image, single_pixel)]})
    assert model.config.id2label == labels_before
    for name, value in _snapshot(model).items():
        assert torch.equal(value, before[name]), name


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("num_prototypes_per_class", 2.5, r"num_prototypes_per_class must be an int, got 2\.5 \(float\)"),
        ("num_prototypes_per_class", "4", r"num_prototypes_per_class must be an int, got '4' \(str\)"),
        ("sinkhorn_iterations", True, r"sinkhorn_iterations must be an int, got True \(bool\)"),
        ("prototype_momentum", "0.9", r"prototype_momentum must be a finite real number, got '0\.9'"),
        ("sinkhorn_epsilon", float("nan"), r"sinkhorn_epsilon must be a finite real number"),
        ("update_prototypes_with_correct_only", "yes", r"update_prototypes_with_correct_only must be a bool"),
        ("prototype_update_pixels", "often", r"prototype_update_pixels must be one of"),
        ("sinkhorn_iterations", 10**9, r"sinkhorn_iterations must be in \[1, 1000\], got 1000000000"),
        ("num_prototypes_per_class", 10**6, r"num_prototypes_per_class must be in \[1, 1000\]"),
        ("embedding_dim", 10**7, r"embedding_dim must be in \[1, 65536\]"),
    ],
)  # fmt: skip
def test_config_fields_of_the_wrong_type_or_absurd_size_name_the_field_and_the_range(field, value, message) -> None:
    from tiny_models import tiny_protoseg_config

    with pytest.raises(ValueError, match=message):
        tiny_protoseg_config(**{field: value})


def test_a_prototype_bank_over_the_limit_is_refused_before_it_is_allocated(tmp_path: Path) -> None:
    from modeling_protoseg import ProtoSegForSemanticSegmentation
    from tiny_models import tiny_protoseg_config

    with pytest.raises(ValueError, match=r"30 \* 1000 \* 65536 float32 prototypes take 7,864,320,000 bytes.*4 GiB"):
        tiny_protoseg_config(num_classes=30, num_prototypes_per_class=1000, embedding_dim=65536)
    _tiny_model().save_pretrained(tmp_path)
    overrides = [{"sinkhorn_iterations": 10**9},
                 {"num_prototypes_per_class": 1000, "embedding_dim": 65536,
                  "id2label": {index: str(index) for index in range(30)}}]  # fmt: skip
    for override in overrides:  # set after the config's __init__ by from_pretrained: still checked
        with pytest.raises(ValueError, match=next(iter(override)) if "id2label" not in override else "4 GiB"):
            ProtoSegForSemanticSegmentation.from_pretrained(tmp_path, ignore_mismatched_sizes=True, **override)
    config = tiny_protoseg_config()
    config.sinkhorn_iterations = 10**9  # set by hand after the config was built
    with pytest.raises(ValueError, match=r"sinkhorn_iterations must be in \[1, 1000\]"):
        ProtoSegForSemanticSegmentation(config)


@pytest.mark.parametrize(
    "encoder_field, value, message",
    [
        ("depths", [1, 1, 1, 10**6], r"encoder_config.depths: 1000003 blocks in all .* at most 1000"),
        ("hidden_sizes", [8, 16, 24, 10**5], r"encoder_config.hidden_sizes: stage widths .* must be in \[1, 65536\]"),
        ("hidden_sizes", [8, 16, 24, 60000], r"encoder_config \(depths and widths\): the model would hold .* 8 GiB"),
    ],
)  # fmt: skip
def test_absurd_encoder_sizes_in_config_json_are_refused_before_building(
    encoder_field: str, value: list[int], message: str, tmp_path: Path
) -> None:
    """depths [1, 1, 1, 10^6] used to build for minutes; a width of 10^5 asked for 40 GB."""
    from modeling_protoseg import ProtoSegForSemanticSegmentation
    from tiny_models import tiny_protoseg_config

    _tiny_model().save_pretrained(tmp_path)
    config_path = tmp_path / "config.json"
    saved = json.loads(config_path.read_text())
    saved["encoder_config"][encoder_field] = value
    config_path.write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=message):
        ProtoSegForSemanticSegmentation.from_pretrained(tmp_path, ignore_mismatched_sizes=True)
    config = tiny_protoseg_config()
    setattr(config.encoder_config, encoder_field, value)  # set by hand on a built config
    with pytest.raises(ValueError, match=message):
        ProtoSegForSemanticSegmentation(config)


def test_a_decoder_too_large_to_allocate_is_refused_by_name(tmp_path: Path) -> None:
    """decoder_hidden_size 65536 passes its own range check but asked for 17+ GB with ignore_mismatched_sizes."""
    from modeling_protoseg import ProtoSegForSemanticSegmentation

    _tiny_model().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"decoder_hidden_size: the model would hold about .* more than the limit of 8"):
        ProtoSegForSemanticSegmentation.from_pretrained(tmp_path, ignore_mismatched_sizes=True, decoder_hidden_size=65536)


def _model_with_trained_class_scores(mode: str):
    """A tiny model in eval mode whose class-score weight and bias are far from their initial values."""
    model = _tiny_model(class_score_norm=mode).eval()
    with torch.no_grad():
        model.class_score_norm.weight.copy_(torch.tensor([3.0, 0.5, 7.0]))
        model.class_score_norm.bias.copy_(torch.tensor([0.2, -0.4, 0.1]))
    return model


CLASS_SCORE_MODE_EDITS = [("affine", "layer_norm"), ("layer_norm", "affine")]


@pytest.mark.parametrize("saved_mode, edited_mode", CLASS_SCORE_MODE_EDITS)
def test_a_class_score_norm_edited_in_config_json_is_refused_naming_both_modes(
    saved_mode: str, edited_mode: str, tmp_path: Path
) -> None:
    """The trained class-score weight and bias belong to one mode: loaded into the other, the logits changed
    silently."""
    from modeling_protoseg import ProtoSegForSemanticSegmentation

    model = _model_with_trained_class_scores(saved_mode)
    model.save_pretrained(tmp_path)
    pixel_values = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected_logits = model(pixel_values).logits
        loaded = ProtoSegForSemanticSegmentation.from_pretrained(tmp_path).eval()  # the unedited round trip
        assert loaded.config.class_score_norm == saved_mode
        assert torch.equal(loaded(pixel_values).logits, expected_logits)

    message = (
        rf"class_score_norm: .* trained with class_score_norm='{saved_mode}', but the config asks for "
        rf"class_score_norm='{edited_mode}'.* set class_score_norm back to '{saved_mode}' in config\.json"
    )
    with pytest.raises(ValueError, match=message):
        ProtoSegForSemanticSegmentation.from_pretrained(tmp_path, class_score_norm=edited_mode)
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "class_score_norm": edited_mode}))
    with pytest.raises(ValueError, match=message):
        ProtoSegForSemanticSegmentation.from_pretrained(tmp_path)


@pytest.mark.parametrize("saved_mode, edited_mode", CLASS_SCORE_MODE_EDITS)
def test_load_state_dict_refuses_class_scores_of_the_other_mode_before_copying_anything(
    saved_mode: str, edited_mode: str
) -> None:
    other_mode_state = _model_with_trained_class_scores(saved_mode).state_dict()
    model = _tiny_model(class_score_norm=edited_mode)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    with pytest.raises(ValueError, match=rf"trained with class_score_norm='{saved_mode}', but the config asks"):
        model.load_state_dict(other_mode_state)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def test_a_checkpoint_saved_before_the_mode_was_recorded_loads_in_its_configs_mode(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from modeling_protoseg import ProtoSegForSemanticSegmentation

    model = _model_with_trained_class_scores("layer_norm")
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["class_score_norm.mode_index"]  # as written before the mode was recorded
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    pixel_values = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    loaded, loading_info = ProtoSegForSemanticSegmentation.from_pretrained(tmp_path, output_loading_info=True)
    assert not loading_info["missing_keys"]  # the record is not reported missing
    assert int(loaded.class_score_norm.mode_index) == 1  # "layer_norm", the config's
    state_without_mode = dict(model.state_dict())
    del state_without_mode["class_score_norm.mode_index"]
    strictly_loaded = _tiny_model(class_score_norm="layer_norm").eval()
    strictly_loaded.load_state_dict(state_without_mode)  # strict: the missing record is not a missing key
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
        assert torch.equal(strictly_loaded.state_dict()[name], tensor), name
    with torch.no_grad():
        expected_logits = model(pixel_values).logits
        assert torch.equal(strictly_loaded(pixel_values).logits, expected_logits)
        # equal weights; the rewritten file maps them at other byte offsets, whose alignment moves the float sums
        # by ~1e-5 (so does rewriting the file with its key kept). The other mode moves these logits by ~1.
        torch.testing.assert_close(loaded.eval()(pixel_values).logits, expected_logits, atol=1e-4, rtol=1e-5)


# ------------------------------------------------------------------------------ 7. what is published does not leak


SECRET = "s3cretTokenWithoutPrefix"


@pytest.mark.parametrize(
    "argv",
    [
        ["train.py", "--hub_token", SECRET],
        ["train.py", f"--hub_token={SECRET}"],
        ["train.py", "--hub_tok", SECRET],  # argparse accepts unique abbreviations
        ["train.py", f"--hub_t={SECRET}"],
        ["train.py", "--hub-token", SECRET],
        ["train.py", "--hub_token", f"hf_{SECRET}"],
    ],
    ids=["space", "equals", "abbreviation", "abbreviation-equals", "dashes", "hf-prefix"],
)
def test_hub_tokens_are_redacted_by_argument_whatever_they_look_like(argv: list[str]) -> None:
    from model_cards import TrainingSummary
    from model_cards.redaction import publishable_command

    command = publishable_command([*argv, "--hub_model_id", "me/model"])
    assert SECRET not in command and "<redacted>" in command and "--hub_model_id me/model" in command
    joined = " ".join([*argv, "--hub_model_id", "me/model"])  # an older summary holds the joined string
    assert SECRET not in TrainingSummary(command=joined).command


def test_the_card_and_the_published_json_hold_no_token_and_no_local_path(tmp_path: Path) -> None:
    from training import train as train_script

    splits, _ = _file_splits(tmp_path / "data", damaged=False)
    splits.description = str(tmp_path / "data" / "my_scenes")  # a local dataset folder, as --dataset_name gives it
    output_dir = tmp_path / "out"
    argv = [str(TRAIN_SCRIPT), *TINY_RUN, "--max_steps", "1", "--output_dir", str(output_dir), "--hub_tok", SECRET]
    config = _tiny_config(tmp_path)
    config.output.hub_token = SECRET
    import unittest.mock

    with unittest.mock.patch.object(sys, "argv", argv):
        train_script.run(config, datasets=splits)
    published = {name: (output_dir / name).read_text() for name in
                 ("README.md", "training_summary.json", "eval_results.json", "train_results.json", "config.json")}  # fmt: skip
    for name, text in published.items():
        assert SECRET not in text, name
        assert str(tmp_path) not in text and "/tmp" not in text, f"{name} publishes a local path"
    summary = json.loads(published["training_summary.json"])
    assert summary["dataset"] == "<local>/my_scenes"
    assert summary["command"].startswith("training/train.py --encoder mit-test")  # relative to the working directory
    assert "--output_dir <local>/out --hub_tok <redacted>" in summary["command"]
    assert json.loads(published["eval_results.json"])["dataset"] == "<local>/my_scenes"
    assert "| Training data | my_scenes (local data, not a Hub dataset) |" in published["README.md"]


def test_hub_ids_and_names_are_published_as_they_are() -> None:
    from model_cards.redaction import publishable_command, publishable_path

    assert publishable_path("nvidia/mit-b0") == "nvidia/mit-b0" and publishable_path("camvid") == "camvid"
    assert publishable_path("../shared/datasets/camvid") == "<local>/camvid"
    assert publishable_path("/data/x/", working_directory="/data") == "x"
    assert publishable_command(["train.py", "--encoder", "nvidia/mit-b0", "--crop_size", "512", "512"]) == (
        "train.py --encoder nvidia/mit-b0 --crop_size 512 512"
    )


# ------------------------------------------------------------------------------ 5. distributed faults do not hang


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _spawn_two(worker, args: tuple, *, timeout: float) -> None:
    """Run `worker(rank, *args)` on 2 spawned processes; fail (killing them) if they are not done in `timeout` s."""
    import time

    import torch.multiprocessing as mp

    context = mp.start_processes(worker, args=args, nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the two processes were still running after {timeout} s: a hang")


def _label_fault_worker(rank: int, port: int, output_dir: str) -> None:
    import gc

    import torch.distributed as dist

    from training.loop import RunningMeans, optimizer_step

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", OMP_NUM_THREADS="1")  # fmt: skip
    torch.set_num_threads(1)
    torch.manual_seed(0)
    batch = _batch()
    if rank == 1:
        batch["labels"][1, 3, 4] = 7  # one out-of-range label on one process
    config, accelerator, state = _tiny_training_state([batch])
    assert accelerator.num_processes == 2
    prototypes_before = accelerator.unwrap_model(state.model).prototypes.clone()
    try:
        optimizer_step(config, accelerator, state, RunningMeans())
        outcome = "stepped"
    except ValueError as error:
        outcome = f"ValueError: {error}"
    unchanged = torch.equal(accelerator.unwrap_model(state.model).prototypes, prototypes_before)
    Path(output_dir, f"rank{rank}.json").write_text(json.dumps({"outcome": outcome, "unchanged": unchanged}))
    del state  # release DDP before the group goes (DESIGN.md: gloo teardown)
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


def test_labels_out_of_range_on_one_process_stop_every_process_together(tmp_path: Path) -> None:
    _spawn_two(_label_fault_worker, (_free_port(), str(tmp_path)), timeout=240)
    outcomes = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert outcomes[1]["outcome"].startswith("ValueError: labels must be class indices in [0, 2]"), outcomes
    assert "got values [7]" in outcomes[1]["outcome"]
    assert outcomes[0]["outcome"].startswith("ValueError: process 0: stopping because another process"), outcomes
    assert all(outcome["unchanged"] for outcome in outcomes)  # nothing moved on either process


def _enrolment_worker(rank: int, init_file: str, output_dir: str) -> None:
    import time

    import numpy as np
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    done = Path(output_dir, "rank0.pt")
    if rank == 0:  # only this process enrols a class: its clustering must not wait for process 1
        torch.manual_seed(0)
        model = _tiny_model()
        image, mask = _enrolment_scene()
        mask[8:24, 4:28] = True
        model.add_classes({"leaf": [(image, mask)]})
        torch.save(model.prototypes[-1].clone(), Path(output_dir, "partial.pt"))
        Path(output_dir, "partial.pt").rename(done)
    else:  # the other process waits outside any collective until process 0 is done (or gives up)
        deadline = time.monotonic() + 120
        while not done.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
    dist.barrier()
    dist.destroy_process_group()


def test_add_classes_inside_a_process_group_is_process_local(tmp_path: Path) -> None:
    _spawn_two(_enrolment_worker, (str(tmp_path / "init"), str(tmp_path)), timeout=240)
    torch.manual_seed(0)
    model = _tiny_model()
    image, mask = _enrolment_scene()
    mask[8:24, 4:28] = True
    model.add_classes({"leaf": [(image, mask)]})  # the same enrolment without any process group
    torch.testing.assert_close(torch.load(tmp_path / "rank0.pt"), model.prototypes[-1], rtol=0, atol=0)


def test_a_16_bit_greyscale_png_reaches_inference_as_training_reads_it(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image
    from transformers.image_utils import load_image as transformers_load_image

    from modeling_protoseg import load_image
    from training.data import SegmentationDataset  # noqa: F401  (training reads images through the same converter)
    from training.data import to_rgb_array

    gradient = (np.arange(32 * 32, dtype=np.uint32).reshape(32, 32) * 64).astype(np.uint16)  # 0..65472
    path = tmp_path / "scan.png"
    Image.fromarray(gradient).save(path)
    expected = np.repeat(np.round(gradient / 257.0).astype(np.uint8)[..., None], 3, axis=-1)  # by hand
    np.testing.assert_array_equal(np.asarray(load_image(path)), expected)
    np.testing.assert_array_equal(to_rgb_array(str(path)), expected)
    # what the plain pipeline input path does (documented): PIL's convert("RGB") clips to white
    assert np.asarray(transformers_load_image(str(path))).mean() > 250
