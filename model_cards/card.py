"""Render the model card (README.md) of a checkpoint folder from its real numbers.

Inputs read from the folder:
  - `config.json` (written by `save_pretrained`): model type, classes, encoder, K and D;
  - `eval_results.json`: an `EvalResults` record (model_cards.records), optionally with
    `prototype_health`;
  - `training_summary.json` if present (or the `training_summary` argument, which is then saved there
    with Hub tokens removed): a `TrainingSummary` record;
  - the `model.safetensors` header (tensor shapes only, no torch needed) for the weight counts.

Any model type gets a card: ProtoSeg and the built-in SegFormer baseline have their own description;
other heads are described from the summary's `head` and the encoder. The card's parts are rendered
by `card_metadata`, `sections_model` and `sections_run`; `template.md` holds the outline.

Nothing here imports torch or the model package: the card can be rendered (and re-rendered) anywhere.
Usage: `python -m model_cards.card FOLDER [--repo-id ID]`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard

from . import card_metadata, protoseg_method, sections_model, sections_run
from .card_inputs import CardInputs
from .checkpoint import read_checkpoint_facts, read_safetensors_shapes  # noqa: F401  (re-exported)
from .licenses import license_note
from .markdown import inline_text
from .naming import short_name
from .records import EVAL_RESULTS_FILE, TRAINING_SUMMARY_FILE, EvalResults, TrainingSummary
from .redaction import redact_secrets  # noqa: F401  (re-exported)
from .validation import ModelCardInputError

TEMPLATE_PATH = Path(__file__).with_name("template.md")
CARD_FILE = "README.md"
# Written into every card rendered here, so `publish_folder` can tell our card from a hand-written
# or generic one (ours is re-rendered with the repo id before upload, a hand-written one is kept).
GENERATED_MARKER = "model card rendered by model_cards from config.json and eval_results.json"

SummaryInput = TrainingSummary | Mapping[str, Any] | None


def read_eval_results(folder: str | os.PathLike[str]) -> EvalResults:
    """The folder's `eval_results.json`, with per-class lists of older files named from config.json."""
    return EvalResults.read(folder, class_names=read_checkpoint_facts(folder).class_names)


def as_training_summary(training_summary: SummaryInput) -> TrainingSummary | None:
    """A TrainingSummary from a record, a dict in today's layout (`TrainingSummary.from_dict`), or None."""
    if training_summary is None or isinstance(training_summary, TrainingSummary):
        return training_summary
    return TrainingSummary.from_dict(dict(training_summary))


def gather_card_inputs(folder: str | os.PathLike[str], summary: TrainingSummary | None, repo_id: str | None) -> CardInputs:
    """Read and check everything the card needs from `folder`."""
    folder = Path(folder)
    facts = read_checkpoint_facts(folder)
    results = EvalResults.read(folder, class_names=facts.class_names)
    summary = summary if summary is not None else TrainingSummary.read(folder) or TrainingSummary()
    # Snippets name the Hub repo when known, else the model's name (the folder may be a staging folder).
    model_id = repo_id or short_name(summary.model_name) or folder.resolve().name
    return CardInputs(facts=facts, results=results, summary=summary, model_id=model_id)


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
    data_name = inline_text(inputs.data.name) if inputs.data.name else None  # a user string, shown in title and prose
    split = inputs.results.eval_split
    evaluation_target = " ".join(
        part for part in (f"the {inline_text(split)} split of" if split else None, data_name or "the evaluation data") if part
    )
    return ModelCard.from_template(
        card_metadata.card_data(inputs),
        template_path=str(TEMPLATE_PATH),
        generated_marker=GENERATED_MARKER,
        title=sections_model.title(inputs),
        description=sections_model.description(inputs),
        model_details=sections_model.model_details(inputs),
        departures=protoseg_method.departures(inputs),
        classes=sections_model.classes(inputs),
        training_setup=sections_run.training_setup(inputs),
        results=sections_run.results(inputs, evaluation_target),
        prototype_health=sections_run.prototype_health(inputs),
        usage=sections_model.usage(inputs),
        intended_uses=sections_model.intended_uses(inputs),
        limitations=sections_model.limitations(inputs),
        license_note=license_note(inputs.summary, inputs.base_license, data_note=_data_terms(inputs, data_name)),
        citation=sections_model.citation(),
    )


def _data_terms(inputs: CardInputs, data_name: str | None) -> str:
    """The License section's sentence about the training data."""
    if inputs.data.is_synthetic:
        return "The training data are the package's built-in synthetic scenes, generated by its own code."
    named = f" ({data_name})" if data_name else ""
    return (
        f"The terms of the training data{named} apply as well: check them before any use, in particular commercial use."
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
