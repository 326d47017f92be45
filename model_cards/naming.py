"""How names from a training run appear in a card: Hub ids kept, local paths reduced to their last part."""

from __future__ import annotations

import os
from pathlib import Path

from .records import EvalResults, TrainingSummary


def is_hub_id(name: str) -> bool:
    """True for 'owner/name'-style ids, false for local paths and plain names."""
    return (
        name.count("/") == 1
        and not name.startswith((".", "/", "~", "<"))  # "<local>/name": a local path hidden at training time
        and not name.endswith("/")
        and not os.path.exists(name)
        and " " not in name
    )


def short_name(name: str | None) -> str | None:
    """A dataset or checkpoint name as shown in text: a local folder is reduced to its own name."""
    if not name:
        return None
    if not is_hub_id(name) and ("/" in name or os.sep in name):
        return Path(name.rstrip("/")).name
    return name


def dataset_identity(results: EvalResults, summary: TrainingSummary) -> tuple[str | None, str | None]:
    """(dataset id for the metadata, display name) of the evaluation data.

    `summary.dataset_id` (a Hub id) is preferred for the metadata; otherwise the dataset name, reduced
    to the folder's own name when it is a local path (never a path of the machine that trained it).
    """
    display_name = short_name(results.dataset or summary.dataset or summary.dataset_id)
    return short_name(summary.dataset_id) or display_name, display_name


def encoder_origin(summary: TrainingSummary) -> tuple[str | None, str | None]:
    """(base_model Hub id or None, text for the "Encoder weights before training" row or None)."""
    encoder = summary.encoder
    if summary.encoder_pretrained is False:
        return None, "random initialisation" + (f" (`{short_name(encoder)}` architecture)" if encoder else "")
    if not encoder:
        return None, None
    if is_hub_id(encoder):
        return encoder, f"pretrained `{encoder}`"
    if "/" in encoder or os.sep in encoder:
        return None, f"local checkpoint `{short_name(encoder)}`"
    return None, f"`{encoder}` (as named to the training script)"
