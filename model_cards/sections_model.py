"""Card sections about the model: title, description, details, classes, usage, intended uses, limitations, citation.

Each function takes the `CardInputs` and returns Markdown (no heading; template.md holds the outline).
ProtoSeg and the built-in SegFormer baseline have their own text; any other model type is described
from the summary's `head` and the encoder in config.json. A dataset name in prose goes through `inline_text`.
"""

from __future__ import annotations

from .card_inputs import CardInputs
from .markdown import inline_text, table
from .naming import encoder_origin
from .protoseg_method import pixel_class_rule

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
    size = f"height / {facts.output_stride}, width / {facts.output_stride}" if facts.output_stride else "height', width'"
    rows.append(("Output", f"logits (batch, {len(facts.class_names)}, {size})"))
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
    size = f"height / {facts.output_stride}, width / {facts.output_stride}" if facts.output_stride else "height', width'"
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
    outputs = model(**inputs)  # outputs.logits: (batch, {len(facts.class_names)}, {size})
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
    return "\n".join(f"- {item}" for item in [*uses, not_for])


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
    return "\n".join(f"- {item}" for item in items)


def citation() -> str:
    """BibTeX of the ProtoSeg paper."""
    return CITATION
