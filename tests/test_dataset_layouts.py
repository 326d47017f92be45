"""ADE20K and Cityscapes the way their users get them, each through a replica of its layout written here:

- ADE20K from the Hub: `zhoubolei/scene_parse_150` holds only a loading script on its main branch; what
  `datasets` >= 4 can load is the Hub's Parquet conversion (branch `refs/convert/parquet`), one folder per old
  configuration (`scene_parsing/`, `instance_segmentation/`), each with `train/`, `validation/`, `test/` shards
  and no README, so `datasets` sees one "default" configuration over all of them. The replica has that
  layout and those columns; the preset's own `load_dataset` call is made against it.
- ADE20K by hand: `ADEChallengeData2016/` (images/ and annotations/, training/ and validation/).
- Cityscapes by hand: leftImg8bit/ + gtFine/ at the real frame size (2048x1024), labelIds -> train ids.
- The evaluation setup of a run (sliding windows) is saved with the model and reused by `training.evaluate`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets  # noqa: E402

from training import train as train_script  # noqa: E402
from training.config import resolve_config  # noqa: E402
from training.data import to_label_array  # noqa: E402
from training.evaluation import EVALUATION_CONFIG_FILE, EvaluationSetup, sliding_windows  # noqa: E402
from training.sources import load_dataset_splits  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
ADE20K_HUB_ID = "zhoubolei/scene_parse_150"
SPLIT_SIZES = {"train": 3, "validation": 2, "test": 1}


def _ade_annotation(height: int = 12, width: int = 16) -> np.ndarray:
    """A SceneParse150 label map: 0 = "other" (top rows), 1 = "wall", 150 = "flag" (bottom rows)."""
    annotation = np.ones((height, width), np.uint8)
    annotation[:2] = 0
    annotation[-3:] = 150
    return annotation


def write_scene_parse_150_parquet_branch(root: Path) -> Path:
    """The files of `zhoubolei/scene_parse_150` at `refs/convert/parquet`: <config>/<split>/0000.parquet for both
    configurations of the old script, with its features (the test split is unlabelled) and no README."""
    image = Image.new("RGB", (16, 12), (90, 120, 30))
    scene_parsing = datasets.Features(
        {"image": datasets.Image(), "annotation": datasets.Image(),
         "scene_category": datasets.ClassLabel(names=["airport_terminal", "art_gallery"])}
    )  # fmt: skip
    instance_segmentation = datasets.Features({"image": datasets.Image(), "annotation": datasets.Image()})
    instance_ids = np.ones((12, 16), np.uint8)
    # instance annotations: R = class, G = instance
    instance_mask = Image.fromarray(np.dstack([_ade_annotation(), instance_ids, np.zeros_like(instance_ids)]))
    for split, size in SPLIT_SIZES.items():
        labelled = split != "test"
        rows = {
            "image": [image] * size,
            "annotation": [Image.fromarray(_ade_annotation()) if labelled else None] * size,
            "scene_category": [1 if labelled else None] * size,
        }
        for config, features in (("scene_parsing", scene_parsing), ("instance_segmentation", instance_segmentation)):
            folder = root / config / split
            folder.mkdir(parents=True)
            config_rows = rows if config == "scene_parsing" else {
                "image": rows["image"], "annotation": [instance_mask if labelled else None] * size,
            }  # fmt: skip
            datasets.Dataset.from_dict(config_rows, features=features).to_parquet(str(folder / "0000.parquet"))
    (root / ".gitattributes").write_text("*.parquet filter=lfs diff=lfs merge=lfs -text\n")
    return root


def write_ade_challenge_folder(parent: Path, sizes: dict[str, int] | None = None) -> Path:
    """ADEChallengeData2016/ as the benchmark's zip unpacks: images/<split>/ADE_*.jpg, annotations/<split>/*.png."""
    root = parent / "ADEChallengeData2016"
    for folder_name, size in (sizes or {"training": 3, "validation": 2}).items():
        prefix = "train" if folder_name == "training" else "val"
        (root / "images" / folder_name).mkdir(parents=True)
        (root / "annotations" / folder_name).mkdir(parents=True)
        for index in range(1, size + 1):
            name = f"ADE_{prefix}_{index:08d}"
            Image.new("RGB", (16, 12), (200, 10, 10)).save(root / "images" / folder_name / f"{name}.jpg")
            Image.fromarray(_ade_annotation()).save(root / "annotations" / folder_name / f"{name}.png")
    (root / "objectInfo150.txt").write_text("Idx\tRatio\tTrain\tVal\tName\n1\t0.1576\t11664\t1172\twall\n")
    (root / "sceneCategories.txt").write_text("ADE_train_00000001 airport_terminal\n")
    return root


# Cityscapes labelIds -> train ids, as cityscapesScripts' labels.py defines them (a few of each kind).
CITYSCAPES_ID_PAIRS = {7: 0, 8: 1, 11: 2, 21: 8, 23: 10, 24: 11, 26: 13, 33: 18, 0: 255, 1: 255, 3: 255, 6: 255}


def write_cityscapes_folder(root: Path, frames: dict[str, list[str]], size: tuple[int, int] = (1024, 2048)) -> Path:
    """leftImg8bit/<split>/<city>/<frame>_leftImg8bit.png and gtFine/.../<frame>_gtFine_labelIds.png, frames of
    `size` (height, width) whose label columns run through `CITYSCAPES_ID_PAIRS`' labelIds."""
    height, width = size
    label_ids = np.zeros((height, width), np.uint8)
    ids = list(CITYSCAPES_ID_PAIRS)
    for position, label_id in enumerate(ids):
        label_ids[:, position * width // len(ids) : (position + 1) * width // len(ids)] = label_id
    for split, names in frames.items():
        for frame in names:
            city = frame.split("_")[0]
            (root / "leftImg8bit" / split / city).mkdir(parents=True, exist_ok=True)
            (root / "gtFine" / split / city).mkdir(parents=True, exist_ok=True)
            image_path = root / "leftImg8bit" / split / city / f"{frame}_leftImg8bit.png"
            Image.new("RGB", (width, height), (70, 70, 70)).save(image_path)
            Image.fromarray(label_ids).save(root / "gtFine" / split / city / f"{frame}_gtFine_labelIds.png")
    return root


def _labels(splits, role: str, index: int = 0) -> np.ndarray:
    """The class indices of one sample after the dataset's label mapping (no resizing)."""
    _, raw_label, name = getattr(splits, role).load(index)
    return splits.label_mapping(to_label_array(raw_label, name))


def _expected_ade_classes() -> np.ndarray:
    expected = np.zeros((12, 16), np.int64)  # wall (1) -> 0
    expected[:2] = 255  # other (0) -> ignore
    expected[-3:] = 149  # flag (150) -> 149
    return expected


# ------------------------------------------------------------------------------------------------ ADE20K, Hub


def test_ade20k_preset_asks_for_the_scene_parsing_folder_of_the_parquet_conversion() -> None:
    data = resolve_config(preset="ade20k").data
    assert (data.dataset_name, data.dataset_config_name, data.dataset_data_dir, data.dataset_revision) == (
        ADE20K_HUB_ID, None, "scene_parsing", "refs/convert/parquet",
    )  # fmt: skip
    assert data.reduce_labels and (data.train_split, data.validation_split) == ("train", "validation")


def test_ade20k_preset_call_loads_only_scene_parsing_from_the_hub_layout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The preset's own `load_dataset` call, answered by the replica of the repository's Parquet branch (a local
    folder takes the place of the Hub id; `datasets` resolves data_dir the same way for both)."""
    replica = write_scene_parse_150_parquet_branch(tmp_path / "scene_parse_150@refs-convert-parquet")
    real_load_dataset, calls = datasets.load_dataset, []

    def hub_from_replica(path, name=None, **kwargs):
        calls.append((path, name, dict(kwargs)))
        if path != ADE20K_HUB_ID:
            return real_load_dataset(path, name, **kwargs)
        assert kwargs.pop("revision") == "refs/convert/parquet"
        return real_load_dataset(str(replica), name, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", hub_from_replica)
    config = resolve_config(preset="ade20k", crop_size=[8])
    splits = load_dataset_splits(config.data, seed=0)
    assert calls[0] == (ADE20K_HUB_ID, None, {"data_dir": "scene_parsing", "revision": "refs/convert/parquet"})
    assert (len(splits.train), len(splits.validation)) == (SPLIT_SIZES["train"], SPLIT_SIZES["validation"])
    assert len(splits.id2label) == 150 and splits.id2label[149] == "flag"
    assert splits.hub_dataset_id == ADE20K_HUB_ID
    np.testing.assert_array_equal(_labels(splits, "validation", 1), _expected_ade_classes())
    sample = train_script.build_datasets(config, splits)["validation"][0]
    assert sample["labels"].shape == (12, 16) and set(sample["labels"].unique().tolist()) == {0, 149, 255}


def test_a_downloaded_parquet_branch_loads_by_folder_and_wrong_choices_say_what_to_pass(tmp_path: Path) -> None:
    replica = write_scene_parse_150_parquet_branch(tmp_path / "scene_parse_150")
    config = resolve_config(preset="ade20k", dataset_name=str(replica))  # the folder has scene_parsing/
    assert config.data.dataset_data_dir == "scene_parsing" and config.data.dataset_revision is None
    splits = load_dataset_splits(config.data, seed=0)
    assert (len(splits.train), len(splits.validation)) == (3, 2) and splits.hub_dataset_id is None
    np.testing.assert_array_equal(_labels(splits, "train", 2), _expected_ade_classes())

    explicit = resolve_config(dataset_name=str(replica), dataset_data_dir="instance_segmentation", reduce_labels=True)
    assert explicit.data.dataset_data_dir == "instance_segmentation"  # any folder of the layout can be chosen
    mixed = r"not share their columns.*instance_segmentation, scene_parsing.*--dataset_data_dir"
    with pytest.raises(ValueError, match=mixed):
        load_dataset_splits(resolve_config(dataset_name=str(replica), reduce_labels=True).data, seed=0)
    with pytest.raises(ValueError, match=r"no configuration 'scene_parsing'.*--dataset_data_dir"):
        load_dataset_splits(
            resolve_config(dataset_name=str(replica), dataset_config_name="scene_parsing", reduce_labels=True).data,
            seed=0,
        )
    with pytest.raises(ValueError, match=r"split 'test' has no label maps .*SceneParse150's test split"):
        load_dataset_splits(resolve_config(preset="ade20k", dataset_name=str(replica), test_split="test").data, seed=0)


def test_a_script_only_hub_repository_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    def script_only(path, name=None, **kwargs):
        raise RuntimeError("Dataset scripts are no longer supported, but found scene_parse_150.py")

    monkeypatch.setattr(datasets, "load_dataset", script_only)
    with pytest.raises(ValueError, match=r"only a loading script.*--dataset_revision refs/convert/parquet"):
        load_dataset_splits(resolve_config(dataset_name=ADE20K_HUB_ID, reduce_labels=True).data, seed=0)


# ------------------------------------------------------------------------------------------- ADE20K, by hand


def test_ade_challenge_folder_loads_as_ade20k_with_or_without_the_preset(tmp_path: Path) -> None:
    root = write_ade_challenge_folder(tmp_path)
    for dataset_name, preset in ((root, None), (tmp_path, None), (root, "ade20k")):  # its parent folder works too
        config = resolve_config(dataset_name=str(dataset_name), **({"preset": preset} if preset else {}))
        assert config.data.preset == "ade20k" and config.data.reduce_labels
        assert config.data.dataset_data_dir is None and config.data.dataset_revision is None
        splits = load_dataset_splits(config.data, seed=0)
        assert (len(splits.train), len(splits.validation)) == (3, 2)
        assert splits.train.load(0)[2].endswith("ADE_train_00000001.jpg)") and len(splits.id2label) == 150
        np.testing.assert_array_equal(_labels(splits, "validation", 1), _expected_ade_classes())
    with pytest.raises(ValueError, match=r"no split 'test'.*release_test/, have no annotations"):
        load_dataset_splits(resolve_config(dataset_name=str(root), test_split="test").data, seed=0)
    (root / "annotations" / "training" / "ADE_train_00000002.png").unlink()
    with pytest.raises(ValueError, match=r"ADE_train_00000002.jpg has no annotation .*ADE_train_00000002.png"):
        load_dataset_splits(resolve_config(dataset_name=str(root)).data, seed=0)


# ------------------------------------------------------------------------------------------------ Cityscapes


def test_cityscapes_folder_trains_and_evaluates_at_the_frames_own_resolution(tmp_path: Path) -> None:
    root = write_cityscapes_folder(
        tmp_path / "cityscapes",
        {"train": ["aachen_000000_000019", "bochum_000000_000313"], "val": ["frankfurt_000000_000294"]},
    )
    config = resolve_config(dataset_name=str(root))  # the layout names the preset
    assert config.data.preset == "cityscapes" and config.data.validation_split == "val"
    assert config.augmentation.base_size == 1024 and config.augmentation.crop_size == [512, 1024]
    splits = load_dataset_splits(config.data, seed=0)
    assert (len(splits.train), len(splits.validation)) == (2, 1) and len(splits.id2label) == 19
    labels = _labels(splits, "validation")
    columns = np.linspace(0, 2047, len(CITYSCAPES_ID_PAIRS) * 4).astype(int)
    raw = np.asarray(Image.open(splits.validation.pairs[0][1]))[0, columns]
    assert {int(r): int(t) for r, t in zip(raw, labels[0, columns])} == CITYSCAPES_ID_PAIRS

    built = train_script.build_datasets(config, splits)
    evaluated = built["validation"][0]
    assert tuple(evaluated["pixel_values"].shape) == (3, 1024, 2048)  # a 2048x1024 frame is evaluated as it is
    assert tuple(evaluated["labels"].shape) == (1024, 2048)
    assert tuple(built["train"][(1, 7)]["pixel_values"].shape) == (3, 512, 1024)
    setup = train_script.evaluation_setup(config)
    assert (setup.eval_mode, setup.crop_size, setup.eval_stride) == ("slide", (512, 1024), (341, 682))
    assert len(sliding_windows(1024, 2048, setup.crop_size, setup.eval_stride)) == 9  # at base 512 it was 1


def test_cityscapes_preset_says_what_it_expects_and_what_came(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"leftImg8bit/ and gtFine/.*'someone/cityscapes' is not a local folder"):
        load_dataset_splits(resolve_config(preset="cityscapes", dataset_name="someone/cityscapes").data, seed=0)
    (tmp_path / "images").mkdir()
    with pytest.raises(ValueError, match=r"the folder .* holds: images/.*no official copy on the Hugging Face Hub"):
        load_dataset_splits(resolve_config(preset="cityscapes", dataset_name=str(tmp_path)).data, seed=0)
    root = write_cityscapes_folder(tmp_path / "cs", {"train": ["aachen_000000_000019"]}, size=(8, 16))
    with pytest.raises(ValueError, match=r"is a cityscapes download .* --preset is 'camvid'"):
        resolve_config(preset="camvid", dataset_name=str(root))
    with pytest.raises(ValueError, match=r"no folder .*leftImg8bit/val.*splits found: train"):
        load_dataset_splits(resolve_config(dataset_name=str(root)).data, seed=0)


# --------------------------------------------------------------------------------- the run's evaluation setup


def test_evaluation_setup_round_trips_and_refuses_bad_values(tmp_path: Path) -> None:
    setup = EvaluationSetup.from_settings(eval_mode="slide", crop_size=[512, 1024])
    assert setup.eval_stride == (341, 682)
    setup.save(tmp_path)
    assert EvaluationSetup.read(tmp_path) == setup and EvaluationSetup.read(tmp_path / "nowhere") is None
    (tmp_path / EVALUATION_CONFIG_FILE).write_text(json.dumps({**setup.to_json(), "eval_mode": "tiles"}))
    with pytest.raises(ValueError, match=r"evaluation_config.json: eval_mode 'tiles' is not one of whole, slide"):
        EvaluationSetup.read(tmp_path)


@pytest.mark.timeout(900)  # a training run and three evaluations, in subprocess and process
def test_evaluate_reuses_the_runs_sliding_windows_unless_told_otherwise(tmp_path: Path) -> None:
    from training.config import DataArguments
    from training.evaluate import EvaluationSettings, evaluate_folder

    output_dir = tmp_path / "run"
    synthetic = ["--synthetic_num_train", "4", "--synthetic_num_validation", "2", "--synthetic_image_size", "48"]
    command = [
        sys.executable, str(REPO_ROOT / "training" / "train.py"), *synthetic, "--encoder", "mit-test",
        "--crop_size", "32", "--base_size", "48", "--eval_mode", "slide", "--eval_stride", "16", "--max_steps", "2",
        "--per_device_train_batch_size", "4", "--num_prototypes_per_class", "2", "--embedding_dim", "16",
        "--decoder_hidden_size", "16", "--warmup_steps", "1", "--dataloader_num_workers", "0", "--num_threads", "1",
        "--report_to", "none", "--eval_steps", "0", "--output_dir", str(output_dir),
    ]  # fmt: skip
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-4000:]
    saved = json.loads((output_dir / EVALUATION_CONFIG_FILE).read_text())
    assert saved == {"eval_mode": "slide", "crop_size": [32, 32], "eval_stride": [16, 16],
                     "eval_scales": [0.5, 0.75, 1.0, 1.25, 1.5, 1.75], "eval_flip": True}  # fmt: skip
    eval_results = json.loads((output_dir / "eval_results.json").read_text())

    data = DataArguments(preset="synthetic", synthetic_num_train=4, synthetic_num_validation=2, synthetic_image_size=48)
    as_trained = evaluate_folder(output_dir, data, EvaluationSettings(split="validation", device="cpu"))
    assert as_trained.eval_mode == "slide"
    assert as_trained.mean_iou == pytest.approx(eval_results["mean_iou"], abs=1e-6)
    whole = evaluate_folder(output_dir, data, EvaluationSettings(split="validation", eval_mode="whole", device="cpu"))
    assert whole.eval_mode == "whole"
    assert whole.mean_iou == pytest.approx(eval_results["whole_image_mean_iou"], abs=1e-6)

    (output_dir / EVALUATION_CONFIG_FILE).unlink()  # a folder written before the file existed
    older = evaluate_folder(output_dir, data, EvaluationSettings(split="validation", eval_stride=[16], device="cpu"))
    assert older.eval_mode == "slide" and older.mean_iou == pytest.approx(eval_results["mean_iou"], abs=1e-6)
