"""Model cards and Hub publishing for ProtoSeg checkpoints.

- `write_model_card(folder, training_summary=None)`: render README.md from config.json and
  eval_results.json (real measured numbers only).
- `publish_folder(folder, repo_id, token=None, private=False)`: upload the complete folder
  (weights with prototypes, config with auto_map, modeling code, image processor, card) in one commit.

CLIs: `python -m model_cards.card FOLDER`, `python -m model_cards.publish FOLDER --repo-id ID`.
This package imports neither torch nor the model package.
"""

from .card import ModelCardInputError, read_eval_results, render_model_card, write_model_card
from .publish import (
    IncompleteCheckpointError,
    PublishError,
    files_to_publish,
    find_missing_files,
    prepare_folder_for_publishing,
    publish_folder,
)

__all__ = [
    "IncompleteCheckpointError",
    "ModelCardInputError",
    "PublishError",
    "files_to_publish",
    "find_missing_files",
    "prepare_folder_for_publishing",
    "publish_folder",
    "read_eval_results",
    "render_model_card",
    "write_model_card",
]
