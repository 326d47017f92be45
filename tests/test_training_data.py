"""Data loading, conversion, validation, augmentation, sampling and presets of `training/`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from training.augmentation import build_eval_transform, build_train_transform  # noqa: E402
from training.data import (  # noqa: E402
    FilePairSource,
    HubDatasetSource,
    LabelMapping,
    ResumableShardedSampler,
    SegmentationDataset,
    SyntheticSource,
    check_label,
    cityscapes_file_pairs,
    find_id2label,
    load_hub_dataset,
    pick_split,
    to_label_array,
    to_rgb_array,
)
from training.presets import CITYSCAPES_LABEL_ID_TO_TRAIN_ID, get_dataset_preset, resolve_encoder  # noqa: E402
from training.synthetic import CLASS_APPEARANCES, SyntheticScenes  # noqa: E402

RNG = np.random.default_rng(0)


def _write_parquet_dataset(folder: Path, splits: dict[str, list[tuple[Image.Image, Image.Image]]]) -> Path:
    """A local dataset folder in the Hub's Parquet layout: <split>.parquet with image/annotation columns."""
    import datasets

    folder.mkdir(parents=True, exist_ok=True)
    features = datasets.Features({"image": datasets.Image(), "annotation": datasets.Image()})
    for split, pairs in splits.items():
        table = {"image": [image for image, _ in pairs], "annotation": [label for _, label in pairs]}
        datasets.Dataset.from_dict(table, features=features).to_parquet(str(folder / f"{split}.parquet"))
    return folder


def _random_pair(height: int = 20, width: int = 24, num_labels: int = 3) -> tuple[Image.Image, Image.Image]:
    image = Image.fromarray(RNG.integers(0, 256, size=(height, width, 3), dtype=np.uint8))
    label = Image.fromarray(RNG.integers(0, num_labels, size=(height, width), dtype=np.uint8))
    return image, label


# ------------------------------------------------------------------------------ image conversion


@pytest.mark.parametrize("mode", ["L", "1", "LA", "RGBA", "P", "CMYK", "I;16", "I", "F"])
def test_any_pil_image_mode_becomes_rgb_uint8(mode: str) -> None:
    image = Image.fromarray(RNG.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)).convert(mode)
    array = to_rgb_array(image)
    assert array.shape == (6, 5, 3) and array.dtype == np.uint8


def test_sixteen_bit_images_are_scaled_to_eight_bits(tmp_path: Path) -> None:
    values = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "grey16.png")
    opened = Image.open(tmp_path / "grey16.png")
    assert opened.mode.startswith("I")
    array = to_rgb_array(opened)
    assert array[0, :, 0].tolist() == [0, 100, 255]
    assert (array[..., 0] == array[..., 2]).all()
    assert to_rgb_array(values)[0, :, 1].tolist() == [0, 100, 255]  # numpy uint16 too


def test_rgba_drops_alpha_and_palette_gives_colours() -> None:
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 10
    assert to_rgb_array(Image.fromarray(rgba, "RGBA"))[0, 0].tolist() == [200, 0, 0]
    palette_image = Image.new("P", (2, 2), 1)
    palette_image.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    assert to_rgb_array(palette_image)[0, 0].tolist() == [10, 20, 30]


def test_palette_label_keeps_indices_and_colour_label_is_rejected() -> None:
    label = Image.new("P", (3, 2), 2)
    label.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    assert to_label_array(label).tolist() == [[2, 2, 2], [2, 2, 2]]
    colour = np.zeros((2, 2, 3), dtype=np.uint8)
    colour[0, 0] = [255, 0, 0]
    with pytest.raises(ValueError, match="sample 7: the label map is a colour image"):
        to_label_array(colour, "sample 7")


# ------------------------------------------------------------------------------ label checks


def test_label_of_wrong_size_names_the_sample_and_sizes() -> None:
    with pytest.raises(ValueError, match=r"train sample 3 \(a.png\): the label map is 5x4 .* image is 6x4"):
        check_label(
            np.zeros((4, 5), np.int64), (4, 6), num_labels=3, ignore_index=255, sample_name="train sample 3 (a.png)"
        )


def test_label_values_outside_classes_name_the_sample_and_values() -> None:
    label = np.array([[0, 1, 7], [255, 9, 2]])
    with pytest.raises(ValueError, match=r"sample 4: label values \[7, 9\] are outside the 3 classes"):
        check_label(label, (2, 3), num_labels=3, ignore_index=255, sample_name="sample 4")
    check_label(np.array([[0, 255]]), (1, 2), num_labels=3, ignore_index=255, sample_name="ok")  # no error


def test_one_based_labels_suggest_reduce_labels() -> None:
    with pytest.raises(ValueError, match="reduce_labels"):
        check_label(np.array([[1, 2, 3]]), (1, 3), num_labels=3, ignore_index=255, sample_name="s")


def test_reduce_labels_maps_zero_to_ignore_and_shifts_the_rest() -> None:
    mapping = LabelMapping(ignore_index=255, reduce_labels=True)
    assert mapping(np.array([[0, 1, 150, 255]])).tolist() == [[255, 0, 149, 255]]


def test_cityscapes_label_ids_map_to_train_ids() -> None:
    mapping = LabelMapping(ignore_index=255, id_to_train_id=CITYSCAPES_LABEL_ID_TO_TRAIN_ID)
    assert mapping(np.array([[7, 8, 26, 33, 0, 1, 255]])).tolist() == [[0, 1, 13, 18, 255, 255, 255]]


def test_bad_sample_fails_at_load_with_its_file_name(tmp_path: Path) -> None:
    good = _random_pair()
    good[0].save(tmp_path / "frame_0042.png")
    good_image_from_file = Image.open(tmp_path / "frame_0042.png")  # parquet keeps the file name
    bad_size = (good_image_from_file, Image.fromarray(np.zeros((10, 10), np.uint8)))
    folder = _write_parquet_dataset(tmp_path / "ds", {"train": [good, bad_size], "validation": [good]})
    splits = load_hub_dataset(str(folder))
    source = HubDatasetSource(splits["train"], image_column="image", label_column="annotation", split_name="train")
    dataset = SegmentationDataset(source, transform=build_eval_transform(base_size=None), num_labels=3)
    dataset[0]
    with pytest.raises(ValueError, match=r"train sample 1 \(.*frame_0042.png\): the label map is 10x10"):
        dataset[1]


# ------------------------------------------------------------------------------ sources


def test_local_parquet_dataset_with_columns_and_id2label(tmp_path: Path) -> None:
    folder = _write_parquet_dataset(
        tmp_path / "ds", {"train": [_random_pair() for _ in range(3)], "validation": [_random_pair()]}
    )
    (folder / "id2label.json").write_text(json.dumps({"0": "sky", "1": "road", "2": "car"}))
    splits = load_hub_dataset(str(folder))
    assert sorted(splits) == ["train", "validation"]
    assert find_id2label(id2label_file=None, dataset_name=str(folder), class_names=None, num_labels=None) == {
        0: "sky", 1: "road", 2: "car",
    }  # fmt: skip
    source = HubDatasetSource(splits["train"], image_column="image", label_column="annotation", split_name="train")
    dataset = SegmentationDataset(
        source, transform=build_train_transform(crop_size=(16, 16), base_size=16), num_labels=3
    )
    sample = dataset[(0, 123)]
    assert sample["pixel_values"].shape == (3, 16, 16) and sample["labels"].shape == (16, 16)
    with pytest.raises(ValueError, match="valid columns: image, annotation"):
        HubDatasetSource(splits["train"], image_column="img", label_column="annotation", split_name="train")


def test_local_imagefolder_dataset_with_label_files(tmp_path: Path) -> None:
    split_folder = tmp_path / "folder" / "train"
    split_folder.mkdir(parents=True)
    rows = []
    for index in range(2):
        image, label = _random_pair()
        image.convert("L").save(split_folder / f"img{index}.png")  # greyscale input on purpose
        label.save(split_folder / f"lab{index}.png")
        rows.append(json.dumps({"file_name": f"img{index}.png", "label_file_name": f"lab{index}.png"}))
    (split_folder / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    splits = load_hub_dataset(str(tmp_path / "folder"))
    source = HubDatasetSource(splits["train"], image_column="image", label_column="label", split_name="train")
    dataset = SegmentationDataset(
        source, transform=build_eval_transform(base_size=None), num_labels=3, keep_label_size=True
    )
    assert dataset[1]["pixel_values"].shape == (3, 20, 24)
    assert "img0.png" in source.load(0)[2]  # sample names carry the file name


def test_cityscapes_folder_layout(tmp_path: Path) -> None:
    for split, city, frame in [("train", "aachen", "aachen_000000_000019"), ("val", "lindau", "lindau_000001_000019")]:
        (tmp_path / "leftImg8bit" / split / city).mkdir(parents=True)
        (tmp_path / "gtFine" / split / city).mkdir(parents=True)
        _random_pair(8, 16)[0].save(tmp_path / "leftImg8bit" / split / city / f"{frame}_leftImg8bit.png")
        Image.fromarray(np.full((8, 16), 26, np.uint8)).save(
            tmp_path / "gtFine" / split / city / f"{frame}_gtFine_labelIds.png"
        )
    pairs = cityscapes_file_pairs(tmp_path, "val")
    assert [p.name for p, _ in pairs] == ["lindau_000001_000019_leftImg8bit.png"]
    dataset = SegmentationDataset(
        FilePairSource(pairs, split_name="val"),
        transform=build_eval_transform(base_size=None),
        num_labels=19,
        label_mapping=LabelMapping(id_to_train_id=CITYSCAPES_LABEL_ID_TO_TRAIN_ID),
        keep_label_size=True,
    )
    assert set(dataset[0]["labels"].unique().tolist()) == {13}  # car
    with pytest.raises(ValueError, match="splits found: train, val"):
        cityscapes_file_pairs(tmp_path, "test")


def test_id2label_sources_and_errors(tmp_path: Path) -> None:
    names_file = tmp_path / "names.json"
    names_file.write_text(json.dumps(["a", "b"]))
    assert find_id2label(id2label_file=str(names_file), dataset_name=None, class_names=None, num_labels=None) == {
        0: "a",
        1: "b",
    }
    assert find_id2label(id2label_file=None, dataset_name=None, class_names=None, num_labels=2) == {
        0: "class_0",
        1: "class_1",
    }
    with pytest.raises(ValueError, match="--id2label_file"):
        find_id2label(id2label_file=None, dataset_name=str(tmp_path), class_names=None, num_labels=None)


def test_unknown_split_preset_and_encoder_list_the_valid_choices() -> None:
    with pytest.raises(ValueError, match="valid splits: train, test"):
        pick_split(["train", "test"], "validation")
    assert pick_split(["train", "val"], "validation", fallbacks=("val",)) == "val"
    with pytest.raises(ValueError, match="valid presets: synthetic, ade20k, cityscapes, camvid"):
        get_dataset_preset("pascal")
    with pytest.raises(ValueError, match="mit-b0, mit-b1.*swin-tiny"):
        resolve_encoder("resnet-9000")
    assert resolve_encoder("MiT-B2").config.depths == [3, 4, 6, 3]
    assert resolve_encoder("swin-tiny").config.embed_dim == 96
    assert resolve_encoder("nvidia/mit-b0").pretrained_name_or_path == "nvidia/mit-b0"


# ------------------------------------------------------------------------------ augmentation


def test_train_transform_pads_with_ignore_and_keeps_label_values() -> None:
    image = RNG.integers(0, 256, size=(40, 30, 3), dtype=np.uint8)
    label = RNG.integers(0, 4, size=(40, 30)).astype(np.int32)
    transform = build_train_transform(  # short side 30 -> 15: the 20x15 image is padded to the 64x64 crop
        crop_size=(64, 64), base_size=30, scale_range=(0.5, 0.5), hflip_probability=0.0, photometric=False
    )
    out = transform(image=image, mask=label)
    assert out["image"].shape == (64, 64, 3) and out["mask"].shape == (64, 64)
    assert set(np.unique(out["mask"]).tolist()) <= {0, 1, 2, 3, 255}  # nearest neighbour: no new values
    assert (out["mask"][20:, :] == 255).all() and (out["mask"][:, 15:] == 255).all()  # padding is ignored
    assert np.abs(out["image"][30:, 30:]).max() < 0.05  # padded image is the mean colour -> ~0 after normalising


def test_augmentation_is_reproducible_per_sample_seed() -> None:
    scenes = SyntheticScenes(num_samples=4, image_size=32, seed=3)
    dataset = SegmentationDataset(
        SyntheticSource(scenes, split_name="train"),
        transform=build_train_transform(crop_size=(24, 24), base_size=32),
        num_labels=5,
    )
    first, again, other = dataset[(2, 11)], dataset[(2, 11)], dataset[(2, 12)]
    assert (first["pixel_values"] == again["pixel_values"]).all() and (first["labels"] == again["labels"]).all()
    assert not (first["pixel_values"] == other["pixel_values"]).all()


# ------------------------------------------------------------------------------ sampler, synthetic data


def test_sampler_shards_are_disjoint_equal_and_resumable() -> None:
    samplers = [ResumableShardedSampler(23, batch_size=3, num_replicas=2, rank=rank, seed=5) for rank in (0, 1)]
    for sampler in samplers:
        sampler.set_epoch(4)
    shards = [list(sampler) for sampler in samplers]
    indices = [[index for index, _ in shard] for shard in shards]
    assert len(indices[0]) == len(indices[1]) == 9  # 3 global batches of 6, remainder dropped
    assert not set(indices[0]) & set(indices[1])
    samplers[0].set_epoch(4, start_batch=2)
    assert list(samplers[0]) == shards[0][6:]  # resuming mid-epoch continues with the same samples and seeds
    samplers[0].set_epoch(5)
    assert [index for index, _ in samplers[0]] != indices[0]  # a new epoch, a new order


def test_synthetic_scenes_are_deterministic_and_varied() -> None:
    scenes = SyntheticScenes(num_samples=40, image_size=48, seed=7)
    image, label = scenes.generate(5)
    again_image, again_label = SyntheticScenes(num_samples=40, image_size=48, seed=7).generate(5)
    assert (image == again_image).all() and (label == again_label).all()
    assert not (SyntheticScenes(num_samples=40, image_size=48, seed=8).generate(5)[0] == image).all()
    present = set()
    for index in range(40):
        present |= set(np.unique(scenes.generate(index)[1]).tolist())
    assert present == {0, 1, 2, 3, 4}
    assert all(len(modes) >= 2 for modes in CLASS_APPEARANCES.values())  # K > 1 has something to capture


def test_camvid_preset_points_at_the_shared_parquet_copy() -> None:
    preset = get_dataset_preset("CamVid")
    assert preset.dataset_name.endswith("shared/datasets/camvid") and len(preset.class_names) == 11
    assert get_dataset_preset("ade20k").reduce_labels and len(get_dataset_preset("ade20k").class_names) == 150


# ------------------------------------------------------------------------------ a dataset's own habits


def test_preset_with_another_folder_takes_the_folders_class_names(tmp_path: Path) -> None:
    from training.config import DataArguments
    from training.sources import load_dataset_splits

    folder = _write_parquet_dataset(tmp_path / "ds", {"train": [_random_pair()] * 2, "validation": [_random_pair()]})
    (folder / "id2label.json").write_text(json.dumps({"0": "sky", "1": "road", "2": "car"}))
    splits = load_dataset_splits(DataArguments(preset="camvid", dataset_name=str(folder)), seed=0)
    assert splits.id2label == {0: "sky", 1: "road", 2: "car"}  # not CamVid's 11 classes
    assert splits.id2label_source == str(folder / "id2label.json")
    with pytest.raises(ValueError, match=r"--num_labels 5 disagrees with the 3 class names of .*ds/id2label.json"):
        load_dataset_splits(DataArguments(dataset_name=str(folder), num_labels=5), seed=0)
    (folder / "id2label.json").unlink()
    with pytest.raises(ValueError, match="--num_labels 5 disagrees with the 11 class names of the camvid preset's"):
        load_dataset_splits(DataArguments(preset="camvid", dataset_name=str(folder), num_labels=5), seed=0)


def test_a_train_only_dataset_gets_a_seeded_validation_part(tmp_path: Path) -> None:
    from training.config import DataArguments
    from training.sources import load_dataset_splits

    folder = _write_parquet_dataset(tmp_path / "ds", {"train": [_random_pair() for _ in range(20)]})
    data = DataArguments(dataset_name=str(folder), num_labels=3, train_val_split=0.25)
    splits = load_dataset_splits(data, seed=3)
    assert (len(splits.train), len(splits.validation)) == (15, 5)
    again = load_dataset_splits(data, seed=3)
    validation_images = [np.asarray(splits.validation.load(index)[0]) for index in range(5)]
    assert all(np.array_equal(a, np.asarray(again.validation.load(i)[0])) for i, a in enumerate(validation_images))
    train_images = [np.asarray(splits.train.load(index)[0]).tobytes() for index in range(15)]
    assert not {image.tobytes() for image in validation_images} & set(train_images)  # disjoint
    other_seed = load_dataset_splits(data, seed=4)
    assert not all(
        np.array_equal(a, np.asarray(other_seed.validation.load(i)[0])) for i, a in enumerate(validation_images)
    )


def test_binary_masks_stored_as_0_255_are_refused_or_mapped_on_request(tmp_path: Path) -> None:
    from training.config import DataArguments
    from training.sources import load_dataset_splits

    def binary_pair() -> tuple[Image.Image, Image.Image]:
        image, _ = _random_pair()
        return image, Image.fromarray((RNG.integers(0, 2, size=(20, 24)) * 255).astype(np.uint8))

    folder = _write_parquet_dataset(
        tmp_path / "ds", {"train": [binary_pair() for _ in range(3)], "validation": [binary_pair()]}
    )
    (folder / "id2label.json").write_text(json.dumps({"0": "background", "1": "lesion"}))
    with pytest.raises(ValueError, match="only the values 0 and 255.*--binary_mask_255"):
        load_dataset_splits(DataArguments(dataset_name=str(folder)), seed=0)
    splits = load_dataset_splits(DataArguments(dataset_name=str(folder), binary_mask_255=True), seed=0)
    dataset = SegmentationDataset(
        splits.validation, transform=build_eval_transform(base_size=None), num_labels=2,
        label_mapping=splits.label_mapping, keep_label_size=True,
    )  # fmt: skip
    assert set(dataset[0]["labels"].unique().tolist()) == {0, 1}
