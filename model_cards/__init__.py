"""Model cards and Hub publishing for ProtoSeg checkpoints.

- `EvalResults` (with optional `PrototypeHealth`) and `TrainingSummary` (with `ProtoSegSettings`):
  the typed records training writes (`eval_results.json`) and hands to the card (`training_summary.json`).
- `write_model_card(folder, training_summary=None, repo_id=None)`: render README.md from config.json and
  eval_results.json (real measured numbers only), for any model type.
- `publish_folder(folder, repo_id, token=None, private=False, license=None)`: upload the complete folder
  (weights with prototypes, config with auto_map, modeling code, image processor, card) in one commit; a
  `LicenseChoice` is recorded in the summary and the card first.

CLIs: `python -m model_cards.card FOLDER`, `python -m model_cards.publish FOLDER --repo-id ID`.
This package imports neither torch nor the model package. Names are loaded on first use, so that
`python -m model_cards.<module>` runs its module only once.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "EvalResults": "records",
    "PrototypeHealth": "records",
    "ProtoSegSettings": "records",
    "TrainingSummary": "records",
    "ModelCardInputError": "records",
    "RecordFormatError": "records",
    "render_model_card": "card",
    "write_model_card": "card",
    "IncompleteCheckpointError": "publish",
    "LicenseChoice": "publish",
    "PublishError": "publish",
    "files_to_publish": "publish",
    "find_missing_files": "publish",
    "prepare_folder_for_publishing": "publish",
    "publish_folder": "publish",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from .card import render_model_card, write_model_card
    from .publish import (
        IncompleteCheckpointError,
        LicenseChoice,
        PublishError,
        files_to_publish,
        find_missing_files,
        prepare_folder_for_publishing,
        publish_folder,
    )
    from .records import EvalResults, PrototypeHealth, ProtoSegSettings, TrainingSummary
    from .records import ModelCardInputError, RecordFormatError


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'model_cards' has no attribute {name!r}")
    value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
