"""The model card (README.md) of a checkpoint folder: its metadata and text, rendered from its real numbers.

Inputs, read and checked by `card_inputs.gather_card_inputs`:
  - `config.json` (written by `save_pretrained`): model type, classes, encoder, K and D;
  - `eval_results.json`: an `EvalResults` record (model_cards.records), optionally with
    `prototype_health`;
  - `training_summary.json` if present (or the `training_summary` argument, which is then saved there
    with Hub tokens removed): a `TrainingSummary` record;
  - the `model.safetensors` header (tensor shapes only, no torch needed) for the weight counts.

Any model type gets a card: ProtoSeg and the built-in SegFormer baseline have their own description;
other heads are described from the summary's `head` and the encoder. `template.md` holds the outline; each of
its slots is filled by the function (or constant) of that name below; a section function takes the `CardInputs`
and returns Markdown (no heading). Only recorded facts are shown: a field that is None is left out, never filled
in. A user string in prose (a dataset name, ...) goes through `inline_text`.

The licence stated is the one chosen (`train.py --license`, `python -m model_cards.publish --license`,
`TrainingSummary.license*`), else the base weights' licence when it is known (`card_inputs.BaseWeightsLicense`),
else the Hub's `unknown` (never a bare `other`).

Nothing here imports torch or the model package: the card can be rendered (and re-rendered) anywhere.
Usage: `python -m model_cards.card FOLDER [--repo-id ID]`.
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import math
import os
import sys
import unicodedata
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .card_inputs import BaseWeightsLicense, CardInputs, CheckpointFacts, encoder_origin, gather_card_inputs, short_name
from .records import EVAL_RESULTS_FILE, OTHER_LICENSE, TRAINING_SUMMARY_FILE, ModelCardInputError, TrainingSummary

TEMPLATE_PATH = Path(__file__).with_name("template.md")
CARD_FILE = "README.md"
# Written into every card rendered here, so `publish_folder` can tell our card from a hand-written
# or generic one (ours is re-rendered with the repo id before upload, a hand-written one is kept).
GENERATED_MARKER = "model card rendered by model_cards from config.json and eval_results.json"

SummaryInput = TrainingSummary | Mapping[str, Any] | None


# ---- Markdown and number formatting

def one_line(text: Any) -> str:
    """`text` on one line: newlines, tabs and other control or format characters become single spaces."""
    characters = (" " if unicodedata.category(character).startswith("C") else character for character in str(text))
    return " ".join("".join(characters).split())


def inline_text(text: Any) -> str:
    """A user string (a dataset name, ...) safe as plain text in the card's title or prose: on one line (no raw
    heading, metadata or paragraph it could start), HTML escaped (no `<img onerror=...>`), and the Markdown
    characters that open code, emphasis or links backslash-escaped."""
    escaped = html.escape(one_line(text), quote=False)
    return "".join("\\" + character if character in "\\`*[]" else character for character in escaped)


def escape_cell(text: Any) -> str:
    """Text safe inside one Markdown table cell: on one line, pipes escaped, and outside `code spans` the angle
    brackets that could open an HTML tag escaped."""
    parts = one_line(text).replace("|", "\\|").split("`")
    return "`".join(part if index % 2 else part.replace("<", "&lt;").replace(">", "&gt;") for index, part in enumerate(parts))


def table(rows: list[tuple[Any, ...]], header: tuple[str, ...] = ("", "")) -> str:
    """A Markdown table; cells are escaped. The default header is empty (a two-column fact table)."""
    lines = ["|" + "|".join(f" {name} " if name else " " for name in header) + "|", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(escape_cell(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def bullet_list(items: list[str]) -> str:
    """A Markdown bullet list, one item a line."""
    return "\n".join(f"- {item}" for item in items)


def percent(value: float | None) -> str:
    """A fraction as a percentage with two decimals; 'n/a' for None."""
    return "n/a" if value is None else f"{100.0 * value:.2f}"


def duration(seconds: float) -> str:
    """E.g. '12.3 s', '13 min 32 s', '1 h 02 min'."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    hours, rest = divmod(int(round(seconds)), 3600)
    minutes, seconds_left = divmod(rest, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {seconds_left:02d} s"


def plain_value(value: Any) -> str:
    """Readable text for a recorded value (floats as %g, lists and mappings comma-separated)."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        return ", ".join(f"{name}={plain_value(item)}" for name, item in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(plain_value(item) for item in value)
    return str(value)


# ---- The metadata: Hub tags, licence, datasets, base model and the model-index with the measured numbers.
# Only a Hub dataset (one training read from the Hub) is named in `datasets` and the model-index; local data and
# the built-in synthetic scenes are named in the card's text only, and their numbers too.

UNKNOWN_LICENSE = "unknown"  # the Hub's id for "no licence information"

TAGS_BY_KIND = {
    "protoseg": ["image-segmentation", "semantic-segmentation", "protoseg", "prototype-learning", "vision"],
    "segformer": ["image-segmentation", "semantic-segmentation", "protoseg-baseline", "vision"],
    "other": ["image-segmentation", "semantic-segmentation", "vision"],
}


def _tags(inputs: CardInputs) -> list[str]:
    tags = list(TAGS_BY_KIND[inputs.kind])
    if inputs.kind == "other" and inputs.head == "linear":
        tags.append("protoseg-baseline")
    extra = ["custom_code"] if inputs.facts.uses_remote_code else []
    extra += [inputs.facts.encoder_type] if inputs.facts.encoder_type else []
    extra += inputs.summary.tags or []
    return tags + [tag for index, tag in enumerate(extra) if tag not in tags and tag not in extra[:index]]


def _model_index(inputs: CardInputs) -> list[EvalResult] | None:
    """mIoU (and pixel accuracy) on the Hub dataset and split; None unless the data is a Hub dataset."""
    data = inputs.data
    if not data.hub_id:
        return None
    common = dict(
        task_type="image-segmentation",
        task_name="Semantic Segmentation",
        dataset_type=data.hub_id,
        dataset_name=data.name or data.hub_id,
        dataset_split=inputs.results.eval_split,
    )
    entries = [EvalResult(metric_type="mean_iou", metric_name="mIoU", metric_value=inputs.results.mean_iou, **common)]
    if inputs.results.overall_accuracy is not None:
        entries.append(
            EvalResult(
                metric_type="accuracy", metric_name="Pixel accuracy", metric_value=inputs.results.overall_accuracy, **common
            )
        )
    return entries


def card_data(inputs: CardInputs) -> ModelCardData:
    """The metadata block of the card."""
    base_model, _ = encoder_origin(inputs.summary)
    license_id, license_name, license_link = metadata_license(inputs.summary, inputs.base_license)
    return ModelCardData(
        model_name=inputs.model_id.split("/")[-1],
        library_name="transformers",
        pipeline_tag="image-segmentation",
        license=license_id,
        license_name=license_name,
        license_link=license_link,
        tags=_tags(inputs),
        datasets=[inputs.data.hub_id] if inputs.data.hub_id else None,
        base_model=base_model,
        metrics=["mean_iou"],
        eval_results=_model_index(inputs),
    )


def metadata_license(summary: TrainingSummary, base: BaseWeightsLicense | None) -> tuple[str, str | None, str | None]:
    """(license, license_name, license_link) for the card's metadata: the choice, else the base weights' licence,
    else the Hub's `unknown`."""
    if summary.license:
        return summary.license, summary.license_name, summary.license_link
    if base is not None and base.license:
        return base.license, base.license_name, base.license_link
    return UNKNOWN_LICENSE, None, None


# ---- Sections about the model: title, description, details, classes, usage, intended uses, limitations.
# ProtoSeg and the built-in SegFormer baseline have their own text; any other model type is described
# from the summary's `head` and the encoder in config.json.

PAPER = '"Rethinking Semantic Segmentation: A Prototype View", Zhou, Wang, Konukoglu and Van Gool, CVPR 2022'
CITATION = """```bibtex
@inproceedings{zhou2022rethinking,
  author    = {Zhou, Tianfei and Wang, Wenguan and Konukoglu, Ender and Van Gool, Luc},
  title     = {Rethinking Semantic Segmentation: A Prototype View},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2022},
  eprint    = {2203.15102},
  archivePrefix = {arXiv}
}
```"""


def _encoder_name(inputs: CardInputs) -> str:
    return inputs.facts.encoder_description.split(" (")[0]


def _data_name(inputs: CardInputs) -> str | None:
    """The data's name as safe prose (user strings are escaped), or None."""
    return inline_text(inputs.data.name) if inputs.data.name else None


def title(inputs: CardInputs) -> str:
    """E.g. 'ProtoSeg with SegFormer MiT-b0 on camvid', 'Linear head with Swin Transformer on camvid'."""
    head = {"protoseg": "ProtoSeg", "segformer": "Linear SegFormer baseline"}.get(
        inputs.kind, f"{inputs.head.capitalize()} head"
    )
    dataset_name = _data_name(inputs)
    return f"{head} with {_encoder_name(inputs)}" + (f" on {dataset_name}" if dataset_name else "")


def _what_it_labels(inputs: CardInputs) -> str:
    classes, dataset_name = len(inputs.facts.class_names), _data_name(inputs)
    return f"It labels every pixel of an image with one of {classes} classes" + (
        f" of {dataset_name}." if dataset_name else "."
    )


def _protoseg_description(inputs: CardInputs, labels_sentence: str) -> str:
    facts = inputs.facts
    return f"""A semantic segmentation model trained with **ProtoSeg** ({PAPER}). {labels_sentence}

A usual segmentation head learns one weight vector per class. ProtoSeg instead represents each class
by **{facts.num_prototypes_per_class} non-learnable prototypes**: the L2-normalised centres of
sub-clusters of that class's training pixel embeddings.

**How a pixel's class is decided.** {pixel_class_rule(facts)}

During training the prototypes receive no gradient. After every step, the pixels of each class are
assigned to that class's prototypes by a few Sinkhorn-Knopp iterations (online clustering under an
equal-partition constraint), and each prototype moves by momentum towards the mean embedding of the
pixels assigned to it. The gradient shapes only the embedding space, through cross-entropy plus the
pixel-prototype contrastive (PPC) and distance (PPD) losses. The prototypes ship in
`model.safetensors` as a buffer of shape {facts.prototype_shape_text}, so `from_pretrained` restores
exactly the prototypes the model was evaluated with."""


def _parametric_head_description(inputs: CardInputs) -> str:
    if inputs.kind == "segformer":
        model = "a SegFormer encoder and all-MLP decoder followed by a linear (1×1 convolution) classifier"
    else:
        model = f"a {inputs.facts.encoder_description} encoder followed by a {inputs.head} head"
    text = f"A semantic segmentation model with the usual parametric head: {model}, with one learned weight vector per class."
    if inputs.head == "linear":
        text += (
            " It is the baseline that this project trains with the same script, data and schedule as its "
            f"**ProtoSeg** models ({PAPER}), to measure what the non-learnable prototypes change."
        )
    return text


def description(inputs: CardInputs) -> str:
    """What the model is and does (for ProtoSeg: exactly how a pixel's class is decided)."""
    if inputs.kind == "protoseg":
        return _protoseg_description(inputs, _what_it_labels(inputs))
    return f"{_parametric_head_description(inputs)} {_what_it_labels(inputs)}"


def _architecture(inputs: CardInputs) -> str:
    if inputs.kind == "protoseg":
        return "ProtoSeg: encoder, decoder, non-learnable prototypes"
    if inputs.kind == "segformer":
        return "SegFormer: encoder, all-MLP decoder, linear (1×1 conv) classifier"
    return f"`{inputs.facts.model_type}`: encoder, {inputs.head} head"


def _logits_size(facts: CheckpointFacts) -> str:
    """The logits' height and width, e.g. 'height / 4, width / 4'."""
    stride = facts.output_stride
    return f"height / {stride}, width / {stride}" if stride else "height', width'"


def model_details(inputs: CardInputs) -> str:
    """Architecture, encoder and its initial weights, sizes and weight counts, output shape."""
    facts = inputs.facts
    rows = [("Architecture", _architecture(inputs)), ("Encoder", facts.encoder_description)]
    _, origin = encoder_origin(inputs.summary)
    if origin:
        rows.append(("Encoder weights before training", origin))
    if facts.decoder_hidden_size:
        rows.append(("Decoder width", facts.decoder_hidden_size))
    if facts.has_prototypes:
        rows.append(("Pixel embedding size D", facts.embedding_dim))
    rows.append(("Classes C", len(facts.class_names)))
    if facts.has_prototypes:
        rows.append(("Prototypes per class K", facts.num_prototypes_per_class))
    if facts.other_weight_values is not None and facts.has_prototypes:
        rows.append(("Stored weights (without prototypes)", f"{facts.other_weight_values:,}"))
        rows.append(("Prototype buffer", f"{facts.prototype_shape_text} = {facts.prototype_values:,} values"))
    elif facts.other_weight_values is not None:
        rows.append(("Stored weights", f"{facts.other_weight_values:,}"))
    rows.append(("Output", f"logits (batch, {len(facts.class_names)}, {_logits_size(facts)})"))
    return table(rows)


def classes(inputs: CardInputs) -> str:
    """The class id -> name table."""
    return table(list(enumerate(inputs.facts.class_names)), header=("id", "class"))


def usage(inputs: CardInputs) -> str:
    """How to load and run the model with pipeline and with from_pretrained."""
    facts, model_id = inputs.facts, inputs.model_id
    remote = ", trust_remote_code=True" if facts.uses_remote_code else ""
    if facts.uses_remote_code:
        minimum = facts.minimum_transformers_version
        requirement = (
            f"`transformers` >= {minimum} (with `torch` and `pillow`) is needed: the code checks the\n"
            "version when it is imported and fails on an older transformers with an error that says so"
            if minimum
            else "`transformers` (with `torch` and `pillow`) is needed"
        )
        intro = (
            f"The model code is stored next to the weights, so only {requirement}. Loading runs that code, hence\n"
            "`trust_remote_code=True`: read the modeling files in this repository first if you do not trust their source."
        )
    else:
        intro = f"This is a built-in `transformers` model (`{facts.model_class}`); only `transformers`\n(with `torch` and `pillow`) is needed."
    prototypes = f"\nprototypes = model.prototypes  # {facts.prototype_shape_text}, L2-normalised" if facts.has_prototypes else ""
    return f"""{intro}

With a pipeline:

```python
from PIL import Image
from transformers import pipeline

segmenter = pipeline("image-segmentation", model="{model_id}"{remote})
segments = segmenter(Image.open("street.png").convert("RGB"))
for segment in segments:
    print(segment["label"], segment["mask"].size)  # one binary PIL mask per class present
```

With the model and image processor:

```python
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

processor = AutoImageProcessor.from_pretrained("{model_id}")
model = AutoModelForSemanticSegmentation.from_pretrained("{model_id}"{remote})
model.eval()

image = Image.open("street.png").convert("RGB")
inputs = processor(images=image, return_tensors="pt")
with torch.no_grad():
    outputs = model(**inputs)  # outputs.logits: (batch, {len(facts.class_names)}, {_logits_size(facts)})
label_map = processor.post_process_semantic_segmentation(outputs, target_sizes=[image.size[::-1]])[0]
# label_map: (height, width) tensor of class ids, named by model.config.id2label{prototypes}
```"""


def intended_uses(inputs: CardInputs) -> str:
    """What the model is for, and what it was not made or measured for, as a bullet list."""
    classes, dataset_name = len(inputs.facts.class_names), _data_name(inputs)
    if inputs.data.is_synthetic:
        uses = [
            "Trying out and testing the code: the model was trained on the package's built-in synthetic scenes "
            f"(textured shapes on a background, {classes} classes), not on photographs, so it is a demonstration, "
            "not a segmenter of real images."
        ]
    else:
        data = f"images like those of {dataset_name}" if dataset_name else "images like its training data"
        uses = [
            f"Semantic segmentation of {data} into its {classes} classes (listed above), for research and "
            "evaluation, and comparisons with parametric segmentation heads trained the same way."
        ]
    if inputs.facts.has_prototypes:
        uses.append(
            "Inspecting how the model decides: the prototypes are in `model.prototypes`, and "
            "`output_nearest_prototypes=True` gives each pixel's nearest prototype."
        )
    not_for = (
        "Out of scope: decisions about people or safety (driving, medical or surveillance uses) without your own "
        "validation: the evaluation above is the only measurement of this model."
    )
    base = inputs.base_license
    if base is not None and base.non_commercial:
        not_for += " Commercial use: the encoder weights' licence allows only research or evaluation (see License)."
    return bullet_list([*uses, not_for])


def limitations(inputs: CardInputs) -> str:
    """What the numbers do not cover, as a bullet list (only statements true of this checkpoint)."""
    split, dataset_name = inputs.results.eval_split, _data_name(inputs)
    trained_on = f"on {dataset_name}" if dataset_name else "on a single dataset"
    items = [
        f"Closed set: the model was trained {trained_on} and can only output its {len(inputs.facts.class_names)} "
        "classes; every pixel is given one of them, including objects of classes it has never seen.",
        "Accuracy outside the training distribution (other cameras, places, weather, image sizes) was not "
        "measured; the numbers above hold for " + (f"the {split} split only." if split else "the evaluation set named above only."),
    ]
    if inputs.data.is_synthetic:
        items.append("Trained and evaluated on synthetic scenes only: its accuracy on real images was never measured.")
    if inputs.facts.output_stride:
        items.append(
            f"Logits are predicted at 1/{inputs.facts.output_stride} of the input resolution and upsampled, so thin "
            "structures and small objects are the least accurate."
        )
    if inputs.facts.uses_remote_code:
        items.append("Loading runs the Python code stored in this repository (`trust_remote_code=True`).")
    if any(iou is None for iou in inputs.per_class_iou):
        items.append("Some classes have no IoU (n/a): they do not occur in the evaluation set.")
    return bullet_list(items)


# ---- The ProtoSeg method, read from a checkpoint's config.json and weights: how a pixel's class is decided
# (exactly what the configured class-score normalisation computes), and where the configuration departs from the
# paper (Zhou et al., CVPR 2022) and from the official code (github.com/tfzhou/ProtoSeg).
#
# Reference values: the paper's K = 10, mu = 0.999, kappa = 0.05, 3 Sinkhorn iterations, tau = 0.1, lambda1 =
# lambda2 = 0.01, LayerNorm over the class scores, prototypes moved by momentum from a random start with the
# correctly classified pixels assigned to them. The official code's released config (HRNet-W48, Cityscapes) uses a
# PPD weight of 0.001, embeddings of D = 720 (the width of HRNet-W48's concatenated features), a projection head
# 1x1 conv -> ReLU -> 1x1 conv, and BatchNorm synchronised across GPUs (`bn_type: torchsyncbn`).

# config.json key -> (symbol shown, the paper's value), for the knobs whose paper value is stated.
PAPER_VALUES: dict[str, tuple[str, float]] = {
    "num_prototypes_per_class": ("prototypes per class K", 10),
    "prototype_momentum": ("prototype momentum μ", 0.999),
    "sinkhorn_iterations": ("Sinkhorn iterations", 3),
    "sinkhorn_epsilon": ("Sinkhorn κ", 0.05),
    "ppc_temperature": ("PPC temperature τ", 0.1),
    "ppc_loss_weight": ("PPC loss weight λ1", 0.01),
}
PAPER_PPD_LOSS_WEIGHT = 0.01
OFFICIAL_PPD_LOSS_WEIGHT = 0.001
OFFICIAL_EMBEDDING_DIM = 720
LAYER_NORM_EPS = 1e-5  # ProtoSegClassScoreNorm's


def _same(value: Any, reference: float) -> bool:
    return isinstance(value, (int, float)) and math.isclose(float(value), reference, rel_tol=1e-9)


def pixel_class_rule(facts: CheckpointFacts) -> str:
    """The exact rule from a pixel's embedding to its class under this checkpoint's `class_score_norm`."""
    method = facts.method or {}
    classes, k = len(facts.class_names), facts.num_prototypes_per_class
    scores = (
        f"The encoder, decoder and projection head map every pixel (at 1/{facts.output_stride} of the input "
        f"resolution) to a unit-length embedding `e` of size D = {facts.embedding_dim}. Its score for class `c` is the "
        f"cosine similarity to the nearest of that class's K = {k} prototypes, `s_c = max_k cos(e, p_ck)`."
    )
    pick = (
        "The logits are upsampled bilinearly to the image size and each pixel takes the class with the highest logit "
        "(`post_process_semantic_segmentation`, as the pipeline does)."
    )
    nearest = (
        "This is not always the class of the pixel's nearest prototype; `model(pixel_values, "
        "output_nearest_prototypes=True)` returns that one separately (`nearest_prototype_class`, "
        "`nearest_prototype_index`)."
    )
    norm = method.get("class_score_norm")
    if norm == "affine":
        scale = method.get("class_score_scale")
        start = "`b_c` started at 0"
        if isinstance(scale, (int, float)):
            start = f"`a_c` started at {scale:g} and `b_c` at 0"
        rule = (
            "The logits are a learned scale and bias per class, `logit_c = a_c * s_c + b_c` (`class_score_norm="
            f'"affine"`; {start}, both trained). Because `a_c` and `b_c` differ between classes, a class can win with '
            "a lower score than another's."
        )
    elif norm == "layer_norm":
        formula = f"logit_c = g_c * (s_c - mean(s)) / sqrt(var(s) + {LAYER_NORM_EPS:g}) + b_c"
        rule = (
            f"The logits are a LayerNorm over the C = {classes} scores of the pixel, `{formula}` (mean and variance "
            'over the classes; `class_score_norm="layer_norm"`, as the official code; `g_c`, `b_c` learned). Because '
            "`g_c` and `b_c` differ between classes, a class can win with a lower score than another's."
        )
        if classes == 2:
            rule += (
                " With two classes the normalised scores are -1 and +1 whenever they differ by more than about "
                "0.01, so the logits take the same two values for every such pixel: only which class scores higher "
                "matters."
            )
    else:
        return f"{scores} {pick}"
    return f"{scores} {rule} {pick} {nearest}"


def _paper_knob_items(method: dict[str, Any]) -> list[str]:
    items = []
    for key, (label, paper_value) in PAPER_VALUES.items():
        value = method.get(key)
        if value is not None and not _same(value, paper_value):
            items.append(f"{label[0].upper()}{label[1:]} = {value:g} (`{key}`); paper: {paper_value:g}.")
    return items


def _ppd_item(weight: Any) -> str | None:
    if not isinstance(weight, (int, float)):
        return None
    if _same(weight, PAPER_PPD_LOSS_WEIGHT):
        return (
            f"PPD loss weight λ2 = {weight:g}, the paper's value; the official code's config uses "
            f"{OFFICIAL_PPD_LOSS_WEIGHT:g}."
        )
    if _same(weight, OFFICIAL_PPD_LOSS_WEIGHT):
        return (
            f"PPD loss weight λ2 = {weight:g}, as the official code's config; the paper says {PAPER_PPD_LOSS_WEIGHT:g}."
        )
    return (
        f"PPD loss weight λ2 = {weight:g}; paper: {PAPER_PPD_LOSS_WEIGHT:g}, official code: "
        f"{OFFICIAL_PPD_LOSS_WEIGHT:g}."
    )


def _design_items(inputs: CardInputs) -> list[str]:
    facts, method = inputs.facts, inputs.facts.method or {}
    items = []
    if method.get("class_score_norm") == "affine":
        items.append(
            '**Class scores to logits**: a learned scale and bias per class (`class_score_norm="affine"`); paper and '
            'official code: a LayerNorm over the C class scores (`"layer_norm"`), which for two classes maps any two '
            "scores more than about 0.01 apart to -1 and +1 (the same confidence for every pixel, a vanishing "
            "gradient)."
        )
    if method.get("prototype_init") == "data":
        items.append(
            '**Prototype initialisation**: a prototype\'s first update sets it to the mean of the labelled pixels '
            'assigned to it (`prototype_init="data"`); paper and official code: momentum updates from a random start '
            '(`"random"`).'
        )
    update = method.get("prototype_update_pixels")
    if update == "correct_else_all":
        items.append(
            "**Pixels that move the prototypes**: the correctly classified pixels assigned to them, except in a class "
            "none of whose labelled pixels in the batch is classified correctly, whose prototypes move with all its "
            'labelled pixels (`prototype_update_pixels="correct_else_all"`); official code: the correctly classified '
            'ones only (`"correct"`), under which the prototypes of a class that is never predicted right never move.'
        )
    elif update == "all":
        items.append(
            "**Pixels that move the prototypes**: every labelled pixel assigned to them "
            '(`prototype_update_pixels="all"`); official code: the correctly classified ones only (`"correct"`).'
        )
    if facts.embedding_dim is not None and facts.embedding_dim != OFFICIAL_EMBEDDING_DIM:
        items.append(
            f"**Embedding size** D = {facts.embedding_dim} (`embedding_dim`); the official code's embeddings have "
            f"D = {OFFICIAL_EMBEDDING_DIM} (the width of HRNet-W48's concatenated features); the paper does not give D."
        )
    if facts.projection_batch_norm:
        items.append(
            "**Projection head**: 1×1 conv → BatchNorm → ReLU → 1×1 conv, then LayerNorm and L2 normalisation along "
            "the channels; the official projection head has no BatchNorm (1×1 conv → ReLU → 1×1 conv)."
        )
    processes = inputs.summary.num_processes
    if processes is not None and processes > 1:
        items.append(
            f"**BatchNorm across processes**: this run used {processes} processes, each normalising with its own batch "
            "statistics (no SyncBatchNorm; the saved running statistics are the main process's); the official config "
            "synchronises BatchNorm across GPUs (`torchsyncbn`)."
        )
    return items


def departures(inputs: CardInputs) -> str:
    """Bullet list of where this checkpoint's configuration differs from the paper and the official code; '' when
    the model is not ProtoSeg."""
    method = inputs.facts.method
    if inputs.kind != "protoseg" or method is None:
        return ""
    items = _design_items(inputs) + _paper_knob_items(method)
    ppd = _ppd_item(method.get("ppd_loss_weight"))
    if ppd:
        items.append(ppd)
    intro = (
        "Read from this checkpoint's `config.json` and weights (and, for the processes, its training summary). "
        "The paper is Zhou et al., CVPR 2022; the official code is github.com/tfzhou/ProtoSeg (its released config: "
        "HRNet-W48 on Cityscapes)."
    )
    if not items:
        return f"{intro}\n\nNone: this configuration has the paper's values."
    return intro + "\n\n" + bullet_list(items)


# ---- Sections about the run: training setup, results, prototype health

NO_TRAINING_DETAILS = "No training details were recorded with this checkpoint."
MISSING_CLASS_NOTE = "n/a: the class does not occur in the evaluation set."
SLIDE_NAMES = {"slide": "sliding-window", "multiscale": "multi-scale + flip"}


def _formatted(value: Any, value_format: str | None) -> str:
    if value_format == "duration":
        return duration(value)
    if value_format == "size":
        return " × ".join(str(side) for side in value)
    if value_format == "name":
        return short_name(value) or ""
    return plain_value(value)


def _labelled_rows(record: Any) -> list[tuple[str, str]]:
    """(label, text) for each labelled field of a record that holds a value, in field order (nested records inline)."""
    rows = []
    for record_field in dataclasses.fields(record):
        value = getattr(record, record_field.name)
        if dataclasses.is_dataclass(value):
            rows += _labelled_rows(value)
        elif "label" in record_field.metadata and value not in (None, "", []):
            rows.append((record_field.metadata["label"], _formatted(value, record_field.metadata.get("format"))))
    return rows


TRAINING_DATA_LABEL = "Training data"


def training_rows(inputs: CardInputs) -> list[tuple[str, str]]:
    """The training table: labelled summary fields in field order (ProtoSeg knobs inline), then `extra`. The data
    is named for what it is (a Hub dataset, local data, the built-in synthetic scenes)."""
    summary = inputs.summary
    rows = [
        (label, inputs.data.described if label == TRAINING_DATA_LABEL and inputs.data.described else value)
        for label, value in _labelled_rows(summary)
    ]
    extra = [(name.replace("_", " ").capitalize(), plain_value(value)) for name, value in sorted(summary.extra.items())]
    return rows + [row for row in extra if row[1] not in ("", "None")]


def training_setup(inputs: CardInputs) -> str:
    """The recorded training facts and the command line, or a note that none were recorded."""
    rows = training_rows(inputs)
    text = table(rows) if rows else NO_TRAINING_DETAILS
    if inputs.summary.command:
        text += "\n\nCommand:\n\n```bash\n" + inputs.summary.command.replace("```", "'''") + "\n```"
    return text


def results(inputs: CardInputs, evaluation_target: str) -> str:
    """Headline metrics, then the per-class IoU (and accuracy) table."""
    measured = inputs.results
    rows: list[tuple[str, str]] = [("mIoU (%)", percent(measured.mean_iou))]
    if measured.overall_accuracy is not None:
        rows.append(("Pixel accuracy (%)", percent(measured.overall_accuracy)))
    if measured.mean_accuracy is not None:
        rows.append(("Mean class accuracy (%)", percent(measured.mean_accuracy)))
    if measured.eval_mode:
        rows.append(("Inference", measured.eval_mode))
    if measured.eval_mode not in (None, "whole") and measured.whole_image_mean_iou is not None:
        rows.append(("mIoU, whole image as in `pipeline` (%)", percent(measured.whole_image_mean_iou)))
    if measured.num_samples is not None:
        rows.append(("Images evaluated", str(measured.num_samples)))
    names, ious, accuracies = inputs.facts.class_names, inputs.per_class_iou, inputs.per_class_accuracy
    if accuracies is None:
        per_class = table([(name, percent(iou)) for name, iou in zip(names, ious)], header=("class", "IoU (%)"))
    else:
        per_class = table(
            [(name, percent(iou), percent(accuracy)) for name, iou, accuracy in zip(names, ious, accuracies)],
            header=("class", "IoU (%)", "pixel accuracy (%)"),
        )
    note = f"\n\n{MISSING_CLASS_NOTE}" if any(iou is None for iou in ious) else ""
    mode_note = ""
    if measured.eval_mode not in (None, "whole"):
        mode_note = (
            f" The mIoU is of {SLIDE_NAMES.get(measured.eval_mode, measured.eval_mode)} inference; "
            '`pipeline("image-segmentation")` runs on the whole image'
            + (" (the whole-image row)." if measured.whole_image_mean_iou is not None else ".")
        )
    return (
        f"Measured on {evaluation_target}.{mode_note}\n\n{table(rows, header=('metric', 'value'))}\n\n"
        f"### Per-class IoU\n\n{per_class}{note}"
    )


def _check_health_matches_model(inputs: CardInputs) -> None:
    health, facts = inputs.results.prototype_health, inputs.facts
    unknown = sorted(set(health.within_class_cosine) - set(facts.class_names))
    if unknown:
        raise ModelCardInputError(f"eval_results.json prototype_health.within_class_cosine names classes not in config.json: {unknown}")
    expected = len(facts.class_names) * facts.num_prototypes_per_class
    if health.num_prototypes != expected:
        raise ModelCardInputError(
            f"eval_results.json prototype_health.num_prototypes is {health.num_prototypes}, but the model has "
            f"C x K = {len(facts.class_names)} x {facts.num_prototypes_per_class} = {expected} prototypes."
        )


def prototype_health(inputs: CardInputs) -> str:
    """Counts of dead / never-updated / re-seeded prototypes and the per-class cosine table; '' when not measured.

    Models without prototypes get no section, even if their results carry a prototype_health entry.
    """
    health = inputs.results.prototype_health
    if health is None or not inputs.facts.has_prototypes:
        return ""
    _check_health_matches_model(inputs)
    idle = f"{health.dead_after_steps} or more" if health.dead_after_steps is not None else "many"
    dead_label = f"Dead prototypes (did not move in the last {idle} steps in which their class had pixels)"
    rows = [("Prototypes (C × K)", str(health.num_prototypes)), (dead_label, str(health.dead_prototypes))]
    rows.append(("Never updated (still at their initial value)", str(health.never_updated_prototypes)))
    if health.reseeded_prototypes is not None:
        rows.append(("Re-seeded during training", str(health.reseeded_prototypes)))
    if health.skipped_nonfinite_updates:
        rows.append(("Updates refused (non-finite pixels)", str(health.skipped_nonfinite_updates)))
    cosines = [
        (name, "n/a" if health.within_class_cosine.get(name) is None else f"{health.within_class_cosine[name]:.3f}")
        for name in inputs.facts.class_names
        if name in health.within_class_cosine
    ]
    return (
        "How the prototypes were used, measured at the end of training.\n\n"
        f"{table(rows)}\n\n"
        "Mean cosine similarity between the K prototypes of each class: near 1 means they collapsed onto one "
        "direction (the class is effectively one prototype); lower means they cover distinct sub-clusters.\n\n"
        f"{table(cosines, header=('class', 'mean within-class cosine'))}"
    )


# ---- The License section: the choice (or that none was made), what is known of the base weights, the data's terms

def license_note(summary: TrainingSummary, base: BaseWeightsLicense | None, *, data_note: str) -> str:
    """The License section: the choice (or that none was made), what is known of the base weights, the data's terms."""
    if summary.license:
        named = f"`{summary.license}`"
        if summary.license == OTHER_LICENSE:
            named = f"`{summary.license_name}` ({summary.license_link})"
        parts = [f"{named}, chosen by whoever trained or published the model (`--license`)."]
    else:
        parts = [
            "No licence was chosen for these weights (`--license` was given neither to `training/train.py` nor to "
            "`python -m model_cards.publish`)."
        ]
        if base is not None and base.license:
            parts.append(f"The metadata names the licence of the weights they derive from, `{base.license_name}`.")
        else:
            parts.append(f"The metadata says `{UNKNOWN_LICENSE}`.")
    if base is None and summary.encoder_pretrained is False:
        parts.append("The encoder started from random weights: no pretrained weights' terms apply.")
    elif base is not None:
        parts.append(base.statement)
    parts.append(data_note)
    return " ".join(parts)


def _data_terms(inputs: CardInputs, data_name: str | None) -> str:
    """The License section's sentence about the training data."""
    if inputs.data.is_synthetic:
        return "The training data are the package's built-in synthetic scenes, generated by its own code."
    named = f" ({data_name})" if data_name else ""
    return (
        f"The terms of the training data{named} apply as well: check them before any use, in particular commercial use."
    )


# ---- Rendering and writing the card

def as_training_summary(training_summary: SummaryInput) -> TrainingSummary | None:
    """A TrainingSummary from a record, a dict in today's layout (`TrainingSummary.from_dict`), or None."""
    if training_summary is None or isinstance(training_summary, TrainingSummary):
        return training_summary
    return TrainingSummary.from_dict(dict(training_summary))


def render_model_card(
    folder: str | os.PathLike[str], training_summary: SummaryInput = None, repo_id: str | None = None
) -> ModelCard:
    """Build the `ModelCard` of a checkpoint folder (metadata + body) without writing it.

    Arguments:
        folder: checkpoint folder with `config.json` and `eval_results.json`.
        training_summary: a TrainingSummary (or its dict form); defaults to the folder's `training_summary.json`.
        repo_id: Hub repository id used in the code snippets; defaults to the model's name.
    Returns:
        the rendered `huggingface_hub.ModelCard`.
    """
    inputs = gather_card_inputs(folder, as_training_summary(training_summary), repo_id)
    data_name = _data_name(inputs)
    split = inputs.results.eval_split
    evaluation_target = " ".join(
        part for part in (f"the {inline_text(split)} split of" if split else None, data_name or "the evaluation data") if part
    )
    return ModelCard.from_template(
        card_data(inputs),
        template_path=str(TEMPLATE_PATH),
        generated_marker=GENERATED_MARKER,
        title=title(inputs),
        description=description(inputs),
        model_details=model_details(inputs),
        departures=departures(inputs),
        classes=classes(inputs),
        training_setup=training_setup(inputs),
        results=results(inputs, evaluation_target),
        prototype_health=prototype_health(inputs),
        usage=usage(inputs),
        intended_uses=intended_uses(inputs),
        limitations=limitations(inputs),
        license_note=license_note(inputs.summary, inputs.base_license, data_note=_data_terms(inputs, data_name)),
        citation=CITATION,
    )


def write_model_card(
    folder: str | os.PathLike[str], training_summary: SummaryInput = None, repo_id: str | None = None
) -> Path:
    """Render the model card of a checkpoint folder and write it to `folder/README.md`.

    Arguments:
        folder: checkpoint folder with `config.json` and `eval_results.json` (required).
        training_summary: a TrainingSummary (or its dict form, with today's key names). When
            given, it is also saved (tokens removed) as `training_summary.json` so the card can be
            re-rendered later; when None, that file is read.
        repo_id: Hub repository id used in the code snippets (defaults to the model's name).
    Returns:
        path of the written README.md.
    """
    folder = Path(folder)
    summary = as_training_summary(training_summary)
    card = render_model_card(folder, training_summary=summary, repo_id=repo_id)
    if summary is not None:
        summary.write(folder)
    card_path = folder / CARD_FILE
    card.save(card_path)
    return card_path


def is_generated_card(card_path: str | os.PathLike[str]) -> bool:
    """True if `card_path` is a card rendered by this module (and so safe to re-render)."""
    card_path = Path(card_path)
    return card_path.is_file() and GENERATED_MARKER in card_path.read_text(encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    """CLI: (re-)render README.md of a checkpoint folder."""
    parser = argparse.ArgumentParser(
        prog="python -m model_cards.card",
        description=f"Render the model card (README.md) of a checkpoint folder from {EVAL_RESULTS_FILE} "
        f"(and {TRAINING_SUMMARY_FILE} when present).",
    )
    parser.add_argument("folder", type=Path, help="checkpoint folder (config.json, eval_results.json, weights)")
    parser.add_argument("--repo-id", default=None, help="Hub repository id to show in the usage snippets")
    args = parser.parse_args(argv)
    try:
        card_path = write_model_card(args.folder, repo_id=args.repo_id)
    except (FileNotFoundError, ModelCardInputError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"Wrote {card_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
