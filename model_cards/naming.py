"""How names from a training run appear in a card: Hub ids kept, local paths reduced to their last part, and the
data named for what it is (a Hub dataset, local data, or the package's built-in synthetic scenes)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .records import EvalResults, TrainingSummary
from .redaction import LOCAL

# The `dataset` training records for its built-in synthetic scenes (training/sources.py: DatasetSplits.description).
SYNTHETIC_DATASET = "synthetic"


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


@dataclass(frozen=True, kw_only=True)
class DatasetNames:
    """How the card names the data the model was trained and evaluated on.

    Fields:
        hub_id: the Hub dataset id, only when training read the data from the Hub (`TrainingSummary.dataset_id`):
            the only name that goes into the metadata (`datasets`, the model-index).
        name: the name in the title and prose, e.g. "someone/camvid", "camvid" (a local folder's own name),
            "synthetic (built-in, generated from seed 42)"; None when nothing names the data.
        described: `name` with what it is, for the training table, e.g. "camvid (local data, not a Hub dataset)".
        is_synthetic: the package's built-in synthetic scenes.
    """

    hub_id: str | None
    name: str | None
    described: str | None
    is_synthetic: bool = False


def dataset_names(results: EvalResults, summary: TrainingSummary) -> DatasetNames:
    """Name the data from the evaluation results and the training summary (never a path of the training machine)."""
    hub_id = summary.dataset_id if summary.dataset_id and not summary.dataset_id.startswith(LOCAL) else None
    recorded = results.dataset or summary.dataset or hub_id
    if hub_id is None and (recorded == SYNTHETIC_DATASET or (recorded is None and summary.preset == SYNTHETIC_DATASET)):
        seed = f", generated from seed {summary.seed}" if summary.seed is not None else ""
        name = f"synthetic (built-in{seed})"
        return DatasetNames(hub_id=None, name=name, described=name, is_synthetic=True)
    name = short_name(recorded)
    if hub_id is None and summary.dataset is not None:  # training records a Hub id for Hub data: this was not
        return DatasetNames(hub_id=None, name=name, described=f"{name} (local data, not a Hub dataset)")
    return DatasetNames(hub_id=hub_id, name=name, described=name)


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
