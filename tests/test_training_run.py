"""`training/train.py` end to end: tiny runs as subprocesses (the way users launch it), a real SIGKILL
and resume, a 2-process torchrun (gloo) run, local Parquet data, bad data, and the config logic."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from training import config as training_config  # noqa: E402
from training import train as train_script  # noqa: E402
from training.checkpointing import find_latest_checkpoint, list_checkpoints, save_checkpoint  # noqa: E402
from training.export import eval_results, export_final_model, training_summary  # noqa: E402
from training.loop import STEP_DELAY_VARIABLE  # noqa: E402
from training.models import build_linear_baseline, build_model  # noqa: E402
from training.optimization import PolyWithWarmup, build_optimizer  # noqa: E402
from training.preprocessing import IMAGENET_NORMALIZATION, build_image_processor  # noqa: E402
from training.presets import DATASET_PRESETS, resolve_encoder  # noqa: E402
from training.sources import load_dataset_splits  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = REPO_ROOT / "training" / "train.py"
# A tiny ProtoSeg on tiny synthetic scenes: seconds per run on one CPU thread.
TINY_RUN = [
    "--encoder", "mit-test",
    "--synthetic_num_train", "24", "--synthetic_num_validation", "6", "--synthetic_image_size", "32",
    "--crop_size", "32", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "3",
    "--num_prototypes_per_class", "2", "--embedding_dim", "16", "--decoder_hidden_size", "16",
    "--warmup_steps", "2", "--dataloader_num_workers", "0", "--num_threads", "1",
    "--report_to", "none", "--logging_steps", "1", "--eval_steps", "0",
]  # fmt: skip


def _environment(overrides: dict[str, str] | None = None) -> dict[str, str]:
    """Offline, one thread. With an HF_ENDPOINT override (a local Hub stand-in), offline mode is lifted."""
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1",
                   "NO_ALBUMENTATIONS_UPDATE": "1"}  # fmt: skip
    if overrides and "HF_ENDPOINT" in overrides:
        environment.pop("HF_HUB_OFFLINE")
        environment.pop("TRANSFORMERS_OFFLINE", None)
    environment.update(overrides or {})
    return environment


def run_training(
    args: list[str],
    *,
    launcher: list[str] | None = None,
    check: bool = True,
    timeout: int = 300,
    environment: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    command = (launcher or [sys.executable]) + [str(TRAIN_SCRIPT), *args]
    result = subprocess.run(
        command, env=_environment(environment), capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT
    )
    if check and result.returncode != 0:
        raise AssertionError(f"training failed ({result.returncode}):\n{result.stderr[-6000:]}")
    return result


# ------------------------------------------------------------------------------ full runs


def saved_model_health(model) -> dict:
    """The eval_results.json fields of `prototype_health()`, computed from the saved model."""
    health = model.prototype_health()
    fields = ("num_prototypes", "dead_prototypes", "never_updated_prototypes", "within_class_cosine",
              "skipped_nonfinite_updates")  # fmt: skip
    return {name: health[name] for name in fields}


def test_tiny_protoseg_run_writes_a_loadable_folder_logs_loss_terms_and_pushes(tmp_path: Path) -> None:
    from hub_stand_in import HubStandIn
    from transformers import AutoModelForSemanticSegmentation

    import modeling_protoseg  # noqa: F401  (registers the model type)

    output_dir = tmp_path / "run"
    with HubStandIn(tmp_path / "hub", valid_token="hf_stand_in_write_token", user_name="someone") as hub:
        run_training(
            [*TINY_RUN, "--max_steps", "4", "--eval_steps", "2", "--checkpointing_steps", "2",
             "--report_to", "tensorboard", "--output_dir", str(output_dir),
             "--push_to_hub", "--hub_model_id", "someone/tiny-protoseg", "--hub_token", "hf_stand_in_write_token"],
            environment={"HF_ENDPOINT": hub.endpoint, "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(tmp_path / "hf_home")},
        )  # fmt: skip
        pushed = hub.repo_folder("someone/tiny-protoseg")
        assert {"model.safetensors", "config.json", "preprocessor_config.json", "README.md", "eval_results.json"} <= {
            path.name for path in pushed.iterdir()
        }
        assert not (pushed / "checkpoints").exists() and not (pushed / "runs").exists()
        assert "someone/tiny-protoseg" in (pushed / "README.md").read_text()

    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "README.md", "eval_results.json"):
        assert (output_dir / name).is_file(), name
    eval_results = json.loads((output_dir / "eval_results.json").read_text())
    assert set(eval_results["per_category_iou"]) == {"background", "ember", "leaf", "ice", "stone"}
    assert 0.0 <= eval_results["mean_iou"] <= 1.0 and 0.0 <= eval_results["overall_accuracy"] <= 1.0
    assert eval_results["num_samples"] == 6
    assert [step for step, _ in list_checkpoints(output_dir / "checkpoints")] == [2]
    assert "ProtoSeg" in (output_dir / "README.md").read_text()
    # prototype health: measured on the saved prototypes, in eval_results.json and the card
    health = eval_results["prototype_health"]
    saved_model = AutoModelForSemanticSegmentation.from_pretrained(output_dir)
    assert health == {**saved_model_health(saved_model), "dead_after_steps": saved_model.config.dead_prototype_patience}
    assert health["num_prototypes"] == 5 * saved_model.config.num_prototypes_per_class
    assert "Never updated (still at their initial value)" in (output_dir / "README.md").read_text()

    # TensorBoard got the three loss terms, the learning rate and the throughput
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    event_files = list((output_dir / "runs").rglob("events.out.tfevents.*"))
    tags, image_tags, final_scalars, images = set(), set(), {}, {}
    for event_file in event_files:
        accumulator = EventAccumulator(str(event_file), size_guidance={"images": 0, "scalars": 0})
        accumulator.Reload()
        tags |= set(accumulator.Tags()["scalars"])
        image_tags |= set(accumulator.Tags()["images"])
        final_scalars |= {tag: event.value for tag in accumulator.Tags()["scalars"]
                          for event in accumulator.Scalars(tag) if event.step == 4}  # fmt: skip
        images |= {tag: accumulator.Images(tag) for tag in accumulator.Tags()["images"]}
    assert {"train/loss", "train/ce_loss", "train/ppc_loss", "train/ppd_loss", "train/learning_rate",
            "train/images_per_second", "eval/mean_iou", "prototypes/mean_within_class_cosine",
            "prototypes/never_updated", "prototypes/dead", "prototypes/within_class_cosine/ember"} <= tags  # fmt: skip
    # each class's IoU at each evaluation (the final one equals eval_results.json), and 4 prediction images
    for name, iou in eval_results["per_category_iou"].items():
        if iou is not None:
            assert final_scalars[f"eval/iou/{name}"] == pytest.approx(iou, abs=1e-6), name
    assert image_tags == {f"eval/prediction_{index}" for index in range(4)}
    assert sorted(event.step for event in images["eval/prediction_0"]) == [2, 4]  # the step-2 and the final evaluation
    panel = images["eval/prediction_0"][-1]
    assert panel.width == 3 * panel.height  # image | truth | prediction of a square synthetic scene

    # the folder loads with from_pretrained and serves the image-segmentation pipeline
    from transformers import pipeline

    model = AutoModelForSemanticSegmentation.from_pretrained(output_dir)
    saved = load_file(output_dir / "model.safetensors")
    prototype_key = next(key for key in saved if key.endswith("prototypes"))
    torch.testing.assert_close(model.prototypes, saved[prototype_key])
    with torch.no_grad():
        assert model(pixel_values=torch.randn(1, 3, 32, 32)).logits.shape == (1, 5, 8, 8)
    segmenter = pipeline("image-segmentation", model=str(output_dir))
    segments = segmenter(Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)))
    assert segments and {"label", "mask"} <= set(segments[0]) and segments[0]["mask"].size == (48, 40)


def _write_local_dataset(folder: Path, *, bad_label_value: int | None = None) -> Path:
    """Parquet splits with images in awkward formats (greyscale, RGBA, palette, 16-bit) and 1-based
    labels (0 = "other"), plus id2label.json: the ADE20K conventions, at 24x20 pixels."""
    import datasets

    rng = np.random.default_rng(1)
    folder.mkdir(parents=True)
    (folder / "id2label.json").write_text(json.dumps({"0": "sky", "1": "road", "2": "car"}))
    features = datasets.Features({"img": datasets.Image(), "seg": datasets.Image()})
    for split, count in (("train", 8), ("validation", 3)):
        images, labels = [], []
        for index in range(count):
            rgb = rng.integers(0, 256, size=(20, 24, 3), dtype=np.uint8)
            image = Image.fromarray(rgb)
            kind = index % 4
            if kind == 1:
                image = image.convert("L")
            elif kind == 2:
                image = image.convert("RGBA")
            elif kind == 3:
                image = image.convert("P")
            if split == "validation" and index == 0:
                image = Image.fromarray((rgb[..., 0].astype(np.uint16) * 257))  # 16-bit greyscale
            label = rng.integers(0, 4, size=(20, 24)).astype(np.uint8)  # 0 = other, 1..3 classes
            if bad_label_value is not None and split == "train" and index == 5:
                label[3, 4] = bad_label_value
            images.append(image)
            labels.append(Image.fromarray(label))
        datasets.Dataset.from_dict({"img": images, "seg": labels}, features=features).to_parquet(
            str(folder / f"{split}.parquet")
        )
    return folder


def test_linear_baseline_on_a_local_parquet_dataset(tmp_path: Path) -> None:
    dataset = _write_local_dataset(tmp_path / "data")
    output_dir = tmp_path / "linear"
    run_training([*TINY_RUN, "--head", "linear", "--dataset_name", str(dataset), "--image_column", "img",
                  "--label_column", "seg", "--reduce_labels", "true", "--max_steps", "2",
                  "--eval_mode", "slide", "--output_dir", str(output_dir)])  # fmt: skip
    config = json.loads((output_dir / "config.json").read_text())
    assert config["model_type"] == "segformer" and config["id2label"] == {"0": "sky", "1": "road", "2": "car"}
    eval_results = json.loads((output_dir / "eval_results.json").read_text())
    assert eval_results["num_samples"] == 3 and eval_results["eval_mode"] == "slide"
    assert 0.0 <= eval_results["whole_image_mean_iou"] <= 1.0  # what a pipeline user gets, beside the slide number
    assert "mIoU, whole image as in `pipeline`" in (output_dir / "README.md").read_text()
    from transformers import SegformerForSemanticSegmentation

    assert SegformerForSemanticSegmentation.from_pretrained(output_dir).config.num_labels == 3


def test_bad_label_values_stop_the_run_naming_the_sample(tmp_path: Path) -> None:
    dataset = _write_local_dataset(tmp_path / "data", bad_label_value=9)
    result = run_training(
        [*TINY_RUN, "--dataset_name", str(dataset), "--image_column", "img", "--label_column", "seg",
         "--reduce_labels", "true", "--max_steps", "4", "--per_device_train_batch_size", "8",
         "--output_dir", str(tmp_path / "out")],
        check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "train sample 5: label values [8] are outside the 3 classes [0, 2]" in result.stderr


def test_sigkill_mid_run_then_resume_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    common = [*TINY_RUN, "--max_steps", "9", "--checkpointing_steps", "3", "--checkpoints_total_limit", "5"]
    uninterrupted, interrupted = tmp_path / "uninterrupted", tmp_path / "interrupted"
    # (the uninterrupted run also evaluates every 2 steps: evaluation must not change the training either)
    run_training([*common, "--output_dir", str(uninterrupted), "--eval_steps", "2"])

    # A slow copy of the same run (sleeping after each step), killed with SIGKILL once checkpoint-3 exists.
    process = subprocess.Popen(
        [sys.executable, str(TRAIN_SCRIPT), *common, "--output_dir", str(interrupted)],
        env={**_environment(), STEP_DELAY_VARIABLE: "1.0"}, cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.time() + 240
    while find_latest_checkpoint(interrupted / "checkpoints") is None:
        assert process.poll() is None, "the run ended before it could be interrupted"
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL
    assert not (interrupted / "model.safetensors").exists()  # it really stopped mid-way
    killed_at = [step for step, _ in list_checkpoints(interrupted / "checkpoints")]
    assert killed_at and max(killed_at) < 9

    run_training([*common, "--output_dir", str(interrupted), "--resume_from_checkpoint", "latest"])
    train_results = json.loads((interrupted / "train_results.json").read_text())
    assert train_results["resumed_from_step"] == max(killed_at)

    expected, resumed = load_file(uninterrupted / "model.safetensors"), load_file(interrupted / "model.safetensors")
    assert expected.keys() == resumed.keys()
    for name in expected:  # same prototypes, weights and BatchNorm statistics, bit for bit
        torch.testing.assert_close(resumed[name], expected[name], rtol=0, atol=0, msg=name)
    expected_eval = json.loads((uninterrupted / "eval_results.json").read_text())
    assert json.loads((interrupted / "eval_results.json").read_text())["mean_iou"] == expected_eval["mean_iou"]


def test_torchrun_two_processes_keep_prototypes_identical_and_evaluate_once(tmp_path: Path) -> None:
    output_dir = tmp_path / "ddp"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    run_training(
        [*TINY_RUN, "--max_steps", "3", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2",
         "--mixed_precision", "bf16", "--optimizer", "sgd", "--output_dir", str(output_dir)],
        launcher=launcher,
    )  # fmt: skip
    train_results = json.loads((output_dir / "train_results.json").read_text())
    assert train_results["num_processes"] == 2
    assert train_results["prototypes_max_abs_difference_across_processes"] == 0.0
    assert train_results["parameters_max_abs_difference_across_processes"] == 0.0
    eval_results = json.loads((output_dir / "eval_results.json").read_text())
    assert eval_results["num_samples"] == 6  # each image evaluated exactly once across the 2 processes
    assert json.loads((output_dir / "training_summary.json").read_text())["global_batch_size"] == 8  # 2 x 2 x 2

    # the prototypes did move (from the same seeded initialisation the script starts from)
    from accelerate.utils import set_seed

    config = _resolve(*TINY_RUN)
    set_seed(config.runtime.seed)
    initial = build_model(config, resolve_encoder(config.model.encoder), {i: str(i) for i in range(5)})
    trained = load_file(output_dir / "model.safetensors")
    trained_prototypes = trained[next(key for key in trained if key.endswith("prototypes"))]
    assert not torch.allclose(trained_prototypes, initial.prototypes)


# ------------------------------------------------------------------------------ in-process pieces


def _resolve(*args: str) -> training_config.TrainingConfig:
    return training_config.parse_config(list(args))


def test_no_arguments_means_the_synthetic_preset_and_flags_override_presets() -> None:
    config = _resolve()
    assert (
        config.dataset_preset.name == "synthetic"
        and config.model.encoder == "mit-micro"
        and config.output.output_dir == "outputs/protoseg-synthetic"
    )
    config = _resolve("--preset", "ade20k", "--crop_size", "256", "--optimizer", "sgd")
    assert config.augmentation.crop_size == [256, 256] and config.data.reduce_labels
    assert config.optimization.learning_rate == 0.01
    assert config.augmentation.base_size == 256 and config.optimization.head_lr_multiplier == 1.0
    fields = set(training_config.FIELD_GROUPS)
    for preset in DATASET_PRESETS.values():
        assert set(preset.overrides) <= fields, preset.name


def test_unknown_preset_encoder_and_choices_list_the_valid_ones(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(ValueError, match="valid presets: synthetic, ade20k, cityscapes, camvid"):
        _resolve("--preset", "voc")
    with pytest.raises(ValueError, match="needs --dataset_name"):
        _resolve("--preset", "cityscapes")
    with pytest.raises(SystemExit):
        _resolve("--head", "mlp")
    assert "choose from 'protoseg', 'linear'" in capsys.readouterr().err
    config = _resolve("--head", "linear")
    linear_on_swin = build_linear_baseline(config, resolve_encoder("swin-tiny"), {0: "a", 1: "b"}, {"a": 0, "b": 1})
    assert type(linear_on_swin).__name__ == "ProtoSegLinearHeadForSemanticSegmentation"  # any encoder now


def test_poly_schedule_with_warmup() -> None:
    schedule = PolyWithWarmup(max_steps=100, power=1.0, warmup_steps=10, warmup_start_factor=0.0, min_factor=0.0)
    assert schedule(0) == 0.0
    assert schedule(5) == pytest.approx(0.95 * 0.5)
    assert schedule(10) == pytest.approx(0.9)
    assert schedule(100) == 0.0


def test_optimizer_groups_give_the_head_more_lr_and_norms_no_decay() -> None:
    config = _resolve("--encoder", "mit-test", "--learning_rate", "1e-4", "--head_lr_multiplier", "10")
    model = build_model(config, resolve_encoder("mit-test"), {0: "a", 1: "b"})
    optimizer = build_optimizer(model, config.optimization)
    assert sum(len(group["params"]) for group in optimizer.param_groups) == len(list(model.parameters()))
    encoder_ids = {id(p) for p in model.encoder.parameters()}
    for group in optimizer.param_groups:
        in_encoder = {id(p) in encoder_ids for p in group["params"]}
        assert len(in_encoder) == 1
        assert group["lr"] == pytest.approx(1e-4 if in_encoder.pop() else 1e-3)
        assert (group["weight_decay"] == 0.0) == all(p.ndim <= 1 for p in group["params"])
    assert "prototypes" not in {name for name, _ in model.named_parameters()}


def test_interrupted_checkpoint_write_never_replaces_the_last_good_one(tmp_path: Path) -> None:
    class FakeAccelerator:
        is_main_process = True
        fail = False

        def wait_for_everyone(self) -> None:
            pass

        def save_state(self, folder: str) -> None:
            Path(folder).mkdir(parents=True, exist_ok=True)
            (Path(folder) / "model.safetensors").write_bytes(b"partial" if self.fail else b"complete")
            if self.fail:
                raise KeyboardInterrupt("killed while writing")

    accelerator = FakeAccelerator()
    save_checkpoint(accelerator, tmp_path, 3, {"note": "good"})
    accelerator.fail = True
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(accelerator, tmp_path, 6, {"note": "interrupted"})
    latest = find_latest_checkpoint(tmp_path)
    assert latest.name == "checkpoint-3" and (latest / "model.safetensors").read_bytes() == b"complete"
    accelerator.fail = False
    save_checkpoint(accelerator, tmp_path, 6, {}, total_limit=1)  # cleans the stale partial folder, keeps 1
    assert [path.name for path in tmp_path.iterdir()] == ["checkpoint-6"]


def test_pretrained_encoder_from_a_local_folder_for_both_heads(tmp_path: Path) -> None:
    from transformers import SegformerModel

    encoder_folder = tmp_path / "mit-test-pretrained"
    SegformerModel(resolve_encoder("mit-test").config).save_pretrained(encoder_folder)
    pretrained = load_file(encoder_folder / "model.safetensors")
    spec = resolve_encoder(str(encoder_folder))
    assert spec.is_pretrained
    id2label = {0: "a", 1: "b", 2: "c"}
    expected_values = torch.sort(torch.cat([tensor.flatten() for tensor in pretrained.values()])).values
    for head in ("protoseg", "linear"):
        config = _resolve("--head", head, "--encoder", str(encoder_folder))
        model = build_model(config, spec, id2label)
        encoder = model.encoder if head == "protoseg" else model.segformer
        # the same numbers, whatever the encoder module names its tensors
        loaded_values = torch.sort(torch.cat([tensor.flatten() for tensor in encoder.state_dict().values()])).values
        torch.testing.assert_close(loaded_values, expected_values, rtol=0, atol=0, msg=head)
        assert model.config.num_labels == 3


def test_swin_encoder_builds_a_protoseg_model() -> None:
    config = _resolve("--encoder", "swin-tiny", "--embedding_dim", "32")
    model = build_model(config, resolve_encoder("swin-tiny"), {0: "a", 1: "b"})
    assert model.config.encoder_config.model_type == "swin" and tuple(model.prototypes.shape) == (
        2,
        config.method.num_prototypes_per_class,
        32,
    )


def test_cityscapes_and_ade20k_presets_read_local_folders(tmp_path: Path) -> None:
    city_root = tmp_path / "cityscapes"
    for split in ("train", "val"):
        (city_root / "leftImg8bit" / split / "bonn").mkdir(parents=True)
        (city_root / "gtFine" / split / "bonn").mkdir(parents=True)
        Image.new("RGB", (64, 32)).save(
            city_root / "leftImg8bit" / split / "bonn" / "bonn_000000_000019_leftImg8bit.png"
        )
        label_ids = np.full((32, 64), 7, np.uint8)  # road
        label_ids[:, :8] = 3  # "out of roi" -> ignore
        Image.fromarray(label_ids).save(
            city_root / "gtFine" / split / "bonn" / "bonn_000000_000019_gtFine_labelIds.png"
        )
    config = _resolve("--preset", "cityscapes", "--dataset_name", str(city_root))
    assert config.augmentation.crop_size == [512, 1024] and config.evaluation.eval_mode == "slide"
    assert config.augmentation.base_size == 1024  # the frames' own short side (2048x1024)
    splits = load_dataset_splits(config.data, seed=config.runtime.seed)
    datasets, id2label = train_script.build_datasets(config, splits), splits.id2label
    train_dataset, eval_dataset = datasets["train"], datasets["validation"]
    assert len(id2label) == 19 and id2label[13] == "car"
    assert set(eval_dataset[0]["labels"].unique().tolist()) == {0, 255}
    assert tuple(eval_dataset[0]["pixel_values"].shape) == (3, 1024, 2048)
    assert train_dataset[(0, 1)]["pixel_values"].shape == (3, 512, 1024)

    import datasets

    ade_folder = tmp_path / "ade"
    ade_folder.mkdir()
    annotation = np.zeros((16, 16), np.uint8)
    annotation[8:] = 150  # "flag", the last class; 0 = "other"
    features = datasets.Features({"image": datasets.Image(), "annotation": datasets.Image()})
    for split in ("train", "validation"):
        datasets.Dataset.from_dict(
            {"image": [Image.new("RGB", (16, 16))], "annotation": [Image.fromarray(annotation)]}, features=features
        ).to_parquet(str(ade_folder / f"{split}.parquet"))
    config = _resolve("--preset", "ade20k", "--dataset_name", str(ade_folder), "--crop_size", "32")
    splits = load_dataset_splits(config.data, seed=config.runtime.seed)
    eval_dataset, id2label = train_script.build_datasets(config, splits)["validation"], splits.id2label
    assert len(id2label) == 150 and id2label[149] == "flag"
    labels = eval_dataset[0]["labels"]
    assert set(labels[:8].unique().tolist()) == {255} and set(labels[8:].unique().tolist()) == {149}


def test_license_flags_are_checked_before_training_and_recorded_in_the_summary() -> None:
    config = _resolve("--license", "other", "--license_name", "my-license-1.0", "--license_link", "LICENSE")
    summary = training_summary(
        config, dataset="synthetic", dataset_id=None, num_train_images=24, encoder_pretrained=False,
        global_batch_size=4, num_processes=1, hardware="1 x cpu", train_runtime_seconds=1.0,
    )  # fmt: skip
    assert (summary.license, summary.license_name, summary.license_link) == ("other", "my-license-1.0", "LICENSE")
    assert training_summary(
        _resolve("--license", "apache-2.0"), dataset=None, dataset_id=None, num_train_images=1,
        encoder_pretrained=False, global_batch_size=1, num_processes=1, hardware="cpu", train_runtime_seconds=1.0,
    ).license == "apache-2.0"  # fmt: skip
    for flags, message in (
        (["--license", "Apache-2.0"], "--license must be a Hub licence id in lower case"),
        (["--license", "other"], "--license other needs --license_name (an id such as my-license-1.0) and"),
        (["--license_link", "LICENSE"], "--license_name / --license_link go with --license other, got no --license"),
    ):
        with pytest.raises(ValueError, match=re.escape(message)):
            _resolve(*flags)


def test_export_writes_the_typed_records_and_the_model_card(tmp_path: Path) -> None:
    from model_cards import EvalResults, TrainingSummary
    from model_cards.card import GENERATED_MARKER

    config = _resolve(*TINY_RUN, "--output_dir", str(tmp_path / "out"))
    id2label = {0: "sky", 1: "road"}
    model = build_model(config, resolve_encoder(config.model.encoder), id2label)
    metrics = {"mean_iou": 0.5, "mean_accuracy": 0.6, "overall_accuracy": 0.7, "num_samples": 3,
               "per_category_iou": [1.0, float("nan")], "per_category_accuracy": [1.0, float("nan")]}  # fmt: skip
    results = eval_results(metrics, id2label, eval_mode="whole", split="validation", dataset="synthetic")
    summary = training_summary(
        config, dataset="synthetic", dataset_id=None, num_train_images=24, encoder_pretrained=False,
        global_batch_size=4, num_processes=1, hardware="1 x cpu", train_runtime_seconds=1.0,
    )  # fmt: skip
    assert isinstance(results, EvalResults) and isinstance(summary, TrainingSummary)
    folder = export_final_model(
        model,
        output_dir=config.output.output_dir,
        image_processor=build_image_processor(
            IMAGENET_NORMALIZATION,
            base_size=config.augmentation.base_size,
            crop_size=tuple(config.augmentation.crop_size),
        ),
        results={"eval_results.json": results},
        train_results={"global_step": 3},
        summary=summary,
    )
    assert json.loads((folder / "eval_results.json").read_text())["per_category_iou"] == {"sky": 1.0, "road": None}
    assert EvalResults.read(folder) == results and TrainingSummary.read(folder) == summary
    saved_summary = json.loads((folder / "training_summary.json").read_text())
    assert saved_summary["encoder"] == "mit-test" and saved_summary["protoseg"]["num_prototypes_per_class"] == 2
    assert not {"encoder_name", "eval_split", "eval_mode", "num_labels", "num_prototypes_per_class"} & set(saved_summary)
    assert json.loads((folder / "train_results.json").read_text()) == {"global_step": 3}
    card = (folder / "README.md").read_text()
    assert GENERATED_MARKER in card and "| road | n/a | n/a |" in card and "pipeline_tag: image-segmentation" in card
    assert "`transformers` >= 5.20.0" in card  # the saved model code checks it on import
    assert not (folder / ".tmp-final").exists()


# ------------------------------------------------------------------------------ settings declared once


# The method flags a user sets; every other ProtoSegConfig parameter is set elsewhere or an internal.
METHOD_FLAGS = {
    "decoder_hidden_size", "embedding_dim", "num_prototypes_per_class", "prototype_momentum", "sinkhorn_iterations",
    "sinkhorn_epsilon", "ppc_temperature", "ppc_loss_weight", "ppd_loss_weight", "prototype_update_pixels",
    "class_score_norm", "prototype_init",
}  # fmt: skip


def test_every_protoseg_config_parameter_is_a_flag_with_its_default_set_elsewhere_or_a_named_internal() -> None:
    import inspect

    from modeling_protoseg import ProtoSegConfig

    parameters = set(inspect.signature(ProtoSegConfig.__init__).parameters) - {"self", "kwargs"}
    flags = {field.name: field for field in dataclasses.fields(training_config.ProtoSegArguments)}
    elsewhere, internals = set(training_config.PROTOSEG_SET_ELSEWHERE), set(training_config.PROTOSEG_INTERNALS)
    assert set(flags) == METHOD_FLAGS
    assert not (set(flags) & elsewhere or set(flags) & internals or elsewhere & internals)
    unclassified = parameters - set(flags) - elsewhere - internals
    assert not unclassified, f"classify {sorted(unclassified)}: a ProtoSegArguments flag, or set elsewhere / internal"
    assert set(flags) | elsewhere | internals == parameters
    defaults = ProtoSegConfig()
    for name, field in flags.items():
        assert field.default == getattr(defaults, name), name
    assert not internals & set(training_config.FIELD_GROUPS)
    # A run leaves the internals at ProtoSegConfig's defaults.
    model = build_model(_resolve(*TINY_RUN), resolve_encoder("mit-test"), {0: "a", 1: "b"})
    for name in internals:
        assert getattr(model.config, name) == getattr(defaults, name), name


def test_help_lists_exactly_the_settings_and_a_retired_flag_says_what_it_became(
    capsys: pytest.CaptureFixture,
) -> None:
    with pytest.raises(SystemExit):
        _resolve("--help")
    listed = re.findall(r"^  --(\w+)", capsys.readouterr().out, flags=re.MULTILINE)
    negations = {"no_photometric_jitter", "no_eval_flip"}  # HfArgumentParser's for bools that default to True
    assert len(listed) == len(set(listed)) and set(listed) == set(training_config.FIELD_GROUPS) | negations
    assert METHOD_FLAGS <= set(listed) and not set(training_config.RETIRED_FLAGS) & set(listed)
    for arguments in (["--class_score_scale", "5"], ["--class-score-scale=5"]):  # an older run's command line
        with pytest.raises(SystemExit) as stopped:
            _resolve("--max_steps", "3", *arguments)
        assert stopped.value.code == 2
        message = "--class_score_scale is no longer a flag: an internal of ProtoSegConfig now; a run keeps its default"
        assert f"{message}, 10.0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _resolve("--step_delay_seconds", "1")
    assert "the PROTOSEG_TEST_STEP_DELAY_SECONDS environment variable" in capsys.readouterr().err


def test_presets_fill_only_what_no_flag_gave_and_help_prints_the_values_used(capsys: pytest.CaptureFixture) -> None:
    config = _resolve("--num_prototypes_per_class", "7", "--prototype_update_pixels", "all")
    assert config.method.num_prototypes_per_class == 7  # the synthetic preset says 4
    assert config.method.prototype_momentum == 0.99 and config.method.prototype_update_pixels == "all"
    assert config.method.decoder_hidden_size == 64  # preset
    assert _resolve("--preset", "camvid", "--encoder", "mit-b2").method.decoder_hidden_size == 768  # the encoder's
    assert _resolve("--preset", "camvid").method.decoder_hidden_size == 256
    assert training_config.resolve_config(max_steps=3).optimization.max_steps == 3
    with pytest.raises(ValueError, match="unknown settings \\['max_step'\\]"):
        training_config.resolve_config(max_step=3)
    with pytest.raises(SystemExit):
        _resolve("--help")
    help_text = " ".join(capsys.readouterr().out.split())
    assert "(default: 6e-05; with --optimizer sgd: 0.01; preset synthetic: 0.001)" in help_text
    assert "(default: 10; preset synthetic: 4)" in help_text  # --num_prototypes_per_class, from ProtoSegConfig
    assert "(default: the crop's short side; preset cityscapes: 1024)" in help_text  # --base_size


def test_method_paper_sets_the_papers_method_flags_that_were_not_given(capsys: pytest.CaptureFixture) -> None:
    package = _resolve("--preset", "camvid", "--dataset_name", "data").method
    paper = _resolve("--preset", "camvid", "--dataset_name", "data", "--method", "paper").method
    assert (package.class_score_norm, package.prototype_init, package.prototype_update_pixels) == (
        "affine", "data", "correct_else_all")
    assert (paper.class_score_norm, paper.prototype_init, paper.prototype_update_pixels) == (
        "layer_norm", "random", "correct")
    assert (paper.ppc_loss_weight, paper.ppd_loss_weight, paper.num_prototypes_per_class) == (0.01, 0.01, 10)
    # A flag given still wins, and the synthetic preset's K and momentum give way to the paper's.
    mixed = _resolve("--method", "paper", "--ppd_loss_weight", "0.001").method
    assert (mixed.ppd_loss_weight, mixed.class_score_norm) == (0.001, "layer_norm")
    assert (mixed.num_prototypes_per_class, mixed.prototype_momentum) == (10, 0.999)
    from modeling_protoseg import ProtoSegConfig

    config = ProtoSegConfig(**{name: getattr(paper, name) for name in training_config.PAPER_METHOD})
    assert config.prototype_update_pixels == "correct" and config.class_score_norm == "layer_norm"
    with pytest.raises(SystemExit):
        _resolve("--help")
    help_text = " ".join(capsys.readouterr().out.split())
    assert "with --method paper: layer_norm" in help_text and "with --method paper: correct" in help_text


# ------------------------------------------------------------------------------ evaluation on any split


def test_test_split_and_the_evaluate_command_agree_and_normalise_as_the_encoder_says(tmp_path: Path) -> None:
    from transformers import SegformerModel

    encoder_folder = tmp_path / "encoder"  # a "pretrained" encoder whose config asks for (x - 0.5) / 0.5
    encoder_config = resolve_encoder("mit-test").config
    encoder_config.image_mean, encoder_config.image_std = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]
    SegformerModel(encoder_config).save_pretrained(encoder_folder)
    output_dir = tmp_path / "run"
    run_training([*TINY_RUN, "--encoder", str(encoder_folder), "--max_steps", "2", "--test_split", "test",
                  "--output_dir", str(output_dir)])  # fmt: skip
    processor = json.loads((output_dir / "preprocessor_config.json").read_text())
    assert processor["image_mean"] == [0.5, 0.5, 0.5] and processor["image_std"] == [0.5, 0.5, 0.5]
    test_results = json.loads((output_dir / "test_results.json").read_text())
    eval_results = json.loads((output_dir / "eval_results.json").read_text())
    assert set(test_results) == set(eval_results) and test_results["eval_split"] == "test"
    assert test_results["num_samples"] == 6 and test_results["mean_iou"] != eval_results["mean_iou"]

    synthetic = ["--synthetic_num_train", "24", "--synthetic_num_validation", "6", "--synthetic_image_size", "32"]
    for split, expected in (("test", test_results), ("validation", eval_results)):
        output_file = tmp_path / f"{split}.json"
        command = [sys.executable, "-m", "training.evaluate", str(output_dir), "--split", split, *synthetic,
                   "--output", str(output_file)]  # fmt: skip
        result = subprocess.run(command, env=_environment(), capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
        assert result.returncode == 0, result.stderr[-3000:]
        evaluated = json.loads(output_file.read_text())
        assert evaluated["per_category_iou"] == pytest.approx(expected["per_category_iou"], nan_ok=True), split
        same_keys = ("eval_split", "eval_mode", "num_samples", "dataset", "prototype_health")
        assert {key: evaluated[key] for key in same_keys} == {key: expected[key] for key in same_keys}

    from training.config import DataArguments
    from training.evaluate import EvaluationSettings, evaluate_folder

    multiscale = evaluate_folder(
        output_dir,
        DataArguments(preset="synthetic", synthetic_num_train=24, synthetic_num_validation=6, synthetic_image_size=32),
        EvaluationSettings(split="test", eval_mode="multiscale", eval_scales=(1.0, 1.5), device="cpu"),  # MiT: >= 32 px
    )
    assert multiscale.eval_mode == "multiscale" and multiscale.num_samples == 6

    from training.evaluate import _build_parser, prepare_folder_evaluation

    arguments, _ = _build_parser().parse_known_args([str(output_dir), "--prototype_matching_dtype", "bfloat16"])
    rounded = prepare_folder_evaluation(
        output_dir, DataArguments(preset="synthetic", synthetic_num_train=24, synthetic_num_validation=6,
                                  synthetic_image_size=32),
        EvaluationSettings(split="test", device="cpu"),
        model_kwargs={"prototype_matching_dtype": arguments.prototype_matching_dtype},
    )  # fmt: skip
    assert rounded.model.config.prototype_matching_dtype == "bfloat16"
    assert rounded.model.prototypes.dtype == torch.float32 and len(rounded.loader.dataset) == 6


def test_help_starts_without_a_torchvision_warning() -> None:
    """The package builds the PIL image processor, which needs nothing missing here: no fallback warning."""
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    completed = subprocess.run(
        [sys.executable, str(TRAIN_SCRIPT), "--help"], capture_output=True, text=True, env=environment, timeout=240
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "torchvision" not in completed.stderr, completed.stderr[-2000:]


# ------------------------------------------------------------------------------ what accelerate launch asks for


@pytest.fixture
def fresh_accelerator_state():
    """accelerate keeps one process-wide state: reset it so each Accelerator here reads its settings anew."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_the_launchers_precision_is_used_unless_the_flag_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_accelerator_state: None
) -> None:
    from accelerate.state import AcceleratorState

    from training.distributed import create_accelerator

    def precision(launcher_precision: str | None, *flags: str) -> str:
        """The precision of the run's Accelerator when accelerate launch set `launcher_precision` (None: not
        launched by accelerate)."""
        AcceleratorState._reset_state(reset_partial_state=True)
        if launcher_precision is None:
            monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
        else:  # what `accelerate launch --mixed_precision X` or a config file's `mixed_precision: X` sets
            monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", launcher_precision)
        config = _resolve(*flags, "--report_to", "none", "--output_dir", str(tmp_path), "--use_cpu", "true")
        return create_accelerator(config).mixed_precision

    assert _resolve().runtime.mixed_precision is None  # the flag's default: let the launcher decide
    assert precision("bf16") == "bf16"
    assert precision("bf16", "--mixed_precision", "no") == "no"  # the script's flag wins
    assert precision(None) == "no"
    assert precision(None, "--mixed_precision", "bf16") == "bf16"


def test_one_process_where_accelerate_launch_was_asked_for_more_is_a_warning_naming_the_fix() -> None:
    from training.distributed import single_process_warning

    # `accelerate launch --num_processes 2` on a CPU: one process, with MASTER_ADDR/PORT but no WORLD_SIZE
    plain_launcher = {"ACCELERATE_MIXED_PRECISION": "no", "ACCELERATE_USE_CPU": "False", "MASTER_ADDR": "127.0.0.1",
                      "MASTER_PORT": "29500"}  # fmt: skip
    warning = single_process_warning(1, plain_launcher)
    assert warning is not None and "started one" in warning
    assert "accelerate launch --multi_gpu --num_processes N training/train.py" in warning
    assert "torchrun --nproc_per_node N training/train.py" in warning
    assert single_process_warning(1, {"ACCELERATE_MIXED_PRECISION": "no"}) is None  # accelerate launch, 1 process
    assert single_process_warning(1, {}) is None  # python training/train.py
    assert single_process_warning(2, {**plain_launcher, "WORLD_SIZE": "2"}) is None  # --multi_gpu / torchrun
    assert single_process_warning(1, {"MASTER_ADDR": "127.0.0.1", "WORLD_SIZE": "1"}) is None  # torchrun, 1 process


def test_a_run_started_as_accelerate_launch_num_processes_2_mixed_precision_bf16_warns_and_trains_in_bf16(
    tmp_path: Path,
) -> None:
    # the environment `accelerate launch --num_processes 2 --mixed_precision bf16 training/train.py` gives the
    # script on a CPU (read from accelerate's launcher): one process, MASTER_ADDR/PORT, no WORLD_SIZE
    launcher_environment = {"ACCELERATE_MIXED_PRECISION": "bf16", "ACCELERATE_USE_CPU": "False",
                            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}  # fmt: skip
    output_dir = tmp_path / "launched"
    result = run_training([*TINY_RUN, "--max_steps", "1", "--output_dir", str(output_dir)],
                          environment=launcher_environment)  # fmt: skip
    summary = json.loads((output_dir / "training_summary.json").read_text())
    assert summary["mixed_precision"] == "bf16" and summary["num_processes"] == 1
    assert "WARNING" in result.stderr and "torchrun --nproc_per_node N training/train.py" in result.stderr
    assert "mixed precision: bf16" in result.stderr


# ------------------------------------------------------------------------------ the output folder


def test_default_output_folders_name_the_head_the_data_and_pixel_contrast() -> None:
    assert _resolve().output.output_dir == "outputs/protoseg-synthetic"
    assert _resolve("--head", "linear").output.output_dir == "outputs/linear-synthetic"
    assert _resolve("--pixel_contrast").output.output_dir == "outputs/protoseg-synthetic-pixel-contrast"
    assert _resolve("--head", "linear", "--pixel_contrast", "true").output.output_dir == (
        "outputs/linear-synthetic-pixel-contrast"
    )
    assert _resolve("--pixel_contrast", "--output_dir", "mine").output.output_dir == "mine"


def test_a_finished_or_checkpointed_run_is_replaced_only_with_overwrite_output_dir(tmp_path: Path) -> None:
    from training.output_folder import ExistingRunError, check_output_dir

    def check(folder: Path, **flags) -> None:
        check_output_dir(folder, **{"overwrite": False, "resume_from_checkpoint": None, **flags})

    check(tmp_path / "new")  # a folder that does not exist yet
    (tmp_path / "empty").mkdir()
    check(tmp_path / "empty")
    (tmp_path / "crashed" / "runs").mkdir(parents=True)  # a run that failed before its first checkpoint
    check(tmp_path / "crashed")
    for finished_file in ("config.json", "model.safetensors", "eval_results.json"):
        finished = tmp_path / f"finished-{finished_file}"
        finished.mkdir()
        (finished / finished_file).write_text("{}")
        with pytest.raises(ExistingRunError, match=f"--output_dir {finished} already holds a finished run "
                           rf"\({finished_file}\): pass --overwrite_output_dir to replace it"):  # fmt: skip
            check(finished)
        check(finished, overwrite=True)
    checkpointed = tmp_path / "checkpointed"
    (checkpointed / "checkpoints" / "checkpoint-4").mkdir(parents=True)
    (checkpointed / "checkpoints" / "checkpoint-4" / "training_state.json").write_text('{"step": 4}')
    with pytest.raises(ExistingRunError, match="unfinished run \\(newest: checkpoint-4\\): pass "
                       "--resume_from_checkpoint latest to continue it, --overwrite_output_dir to start over"):  # fmt: skip
        check(checkpointed)
    check(checkpointed, resume_from_checkpoint="latest")
    (checkpointed / "config.json").write_text("{}")  # finished, with checkpoints: resuming continues it
    with pytest.raises(ExistingRunError, match="--resume_from_checkpoint latest to continue it"):
        check(checkpointed)
    check(checkpointed, resume_from_checkpoint="latest")


def test_overwrite_output_dir_replaces_the_earlier_run_and_nothing_else(tmp_path: Path) -> None:
    output_dir = tmp_path / "run"
    flags = [*TINY_RUN, "--max_steps", "1", "--output_dir", str(output_dir)]
    output_dir.mkdir()
    earlier_run = {"config.json": "{}", "eval_results.json": '{"mean_iou": 0.99}', "test_results.json": "{}",
                   "README.md": "the earlier card", "eval_history.jsonl": '{"step": 500}\n', "modeling_protoseg.py": "#"}
    for name, text in earlier_run.items():  # fmt: skip
        (output_dir / name).write_text(text)
    (output_dir / "checkpoints" / "checkpoint-500").mkdir(parents=True)
    (output_dir / "checkpoints" / "checkpoint-500" / "training_state.json").write_text('{"step": 500}')
    (output_dir / "notes.txt").write_text("mine")

    with pytest.raises(FileExistsError, match=f"{output_dir} already holds a finished run .*--overwrite_output_dir"):
        train_script.run(_resolve(*flags))
    assert (output_dir / "eval_results.json").read_text() == earlier_run["eval_results.json"]  # untouched

    result = train_script.run(_resolve(*flags, "--overwrite_output_dir"))
    assert result.train["global_step"] == 1
    assert json.loads((output_dir / "eval_results.json").read_text())["mean_iou"] == result.eval["mean_iou"]
    assert not (output_dir / "test_results.json").exists()  # the earlier run's, not rewritten by this one
    assert not (output_dir / "checkpoints" / "checkpoint-500").exists()
    assert "the earlier card" not in (output_dir / "README.md").read_text()
    assert (output_dir / "modeling_protoseg.py").read_text() != "#"  # the model code saved again
    assert (output_dir / "notes.txt").read_text() == "mine"  # not written by a run: kept
