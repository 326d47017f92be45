"""Publish a ProtoSeg checkpoint folder to the Hugging Face Hub in one commit.

The commit holds every file of the folder that belongs to the model: `model.safetensors` (with the
prototype buffer), `config.json` (with `auto_map`), the modeling code copied by `save_pretrained`
(`configuration_protoseg.py`, `modeling_protoseg.py` and their relative imports),
`preprocessor_config.json`, the `README.md` model card, and `eval_results.json` /
`training_summary.json`. Training state (optimizer, scheduler, RNG states, `checkpoint-*` folders,
logs) is left out.

Order of work, so that nothing is ever reported as published when it is not:
  1. check the folder is complete and (re-)render our card — no network;
  2. refuse early, with what to do, when offline mode is on or no token can be found;
  3. `whoami` (token check), `create_repo(exist_ok=True)`, then a single `create_commit`. Large files
     are pre-uploaded by huggingface_hub (LFS/Xet) but only become visible with the commit, so a
     failure anywhere leaves the repository without our files and raises `PublishError`. Running the
     same publish again is safe: files already on the Hub unchanged are skipped.

A licence chosen here (`--license`, with `other` also `--license-name` / `--license-link`) is recorded in the
folder's training_summary.json and written into the card's metadata before anything is sent.

Usage: `python -m model_cards.publish FOLDER --repo-id USER/NAME [--token TOKEN] [--private] [--license ID]`.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import json
import os
import re
import sys
from pathlib import Path

from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi, constants, get_token
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

from .card import CARD_FILE, is_generated_card, write_model_card
from .card_inputs import read_safetensors_shapes
from .records import EVAL_RESULTS_FILE, ModelCardInputError, TrainingSummary, check_license_choice

DEFAULT_COMMIT_MESSAGE = "Upload ProtoSeg model (weights with prototypes, remote code, processor, card)"
REQUIRED_AUTO_CLASSES = ("AutoConfig", "AutoModelForSemanticSegmentation")
# Relative path patterns (fnmatch, matched against the path and each of its parts) never uploaded.
EXCLUDED_PATTERNS = (
    ".*",
    "__pycache__",
    "*.pyc",
    "checkpoint-*",
    "checkpoints",
    "runs",
    "logs",
    "optimizer*.pt",
    "optimizer*.bin",
    "scheduler*.pt",
    "scheduler*.bin",
    "scaler*.pt",
    "random_states*.pkl",
    "rng_state*.pth",
    "training_args.bin",
    "*.lock",
)
_RELATIVE_IMPORT = re.compile(r"^\s*from\s+\.(\w+)\s+import\s", re.MULTILINE)
_RELATIVE_MODULE_IMPORT = re.compile(r"^\s*from\s+\.\s+import\s+([\w\s,]+)$", re.MULTILINE)


class PublishError(RuntimeError):
    """Publishing did not happen; the message says why and what to do. Nothing was committed."""


class IncompleteCheckpointError(PublishError):
    """The checkpoint folder lacks files a user needs to load the model with transformers alone."""


def _network_error_types() -> tuple[type[BaseException], ...]:
    """Transport-level exceptions of the HTTP clients huggingface_hub may use (connection refused, DNS, timeout)."""
    error_types: list[type[BaseException]] = [OSError]
    for module_name, class_name in (("httpx2", "TransportError"), ("httpx", "TransportError")):
        try:
            module = __import__(module_name)
            error_types.append(getattr(module, class_name))
        except (ImportError, AttributeError):
            continue
    try:
        import requests

        error_types.append(requests.exceptions.ConnectionError)
        error_types.append(requests.exceptions.Timeout)
    except ImportError:
        pass
    return tuple(error_types)


NETWORK_ERRORS = _network_error_types()


def _is_excluded(relative_path: str) -> bool:
    parts = relative_path.split("/")
    return any(
        fnmatch.fnmatch(relative_path, pattern) or any(fnmatch.fnmatch(part, pattern) for part in parts)
        for pattern in EXCLUDED_PATTERNS
    )


def files_to_publish(folder: str | os.PathLike[str]) -> list[str]:
    """Relative (posix) paths of the folder's files that a publish uploads, sorted."""
    folder = Path(folder)
    return sorted(
        path.relative_to(folder).as_posix()
        for path in folder.rglob("*")
        if path.is_file() and not _is_excluded(path.relative_to(folder).as_posix())
    )


def _remote_code_modules(folder: Path, auto_map: dict[str, str | list[str]]) -> list[str]:
    """Module names the auto classes need, with their relative imports, found recursively."""
    pending: list[str] = []
    for reference in auto_map.values():
        for entry in reference if isinstance(reference, list) else [reference]:
            if entry:
                pending.append(entry.split("--")[-1].rsplit(".", 1)[0])  # "repo--module.Class" -> "module"
    modules: list[str] = []
    while pending:
        module = pending.pop()
        if module in modules:
            continue
        modules.append(module)
        source_path = folder / f"{module}.py"
        if source_path.is_file():
            source = source_path.read_text(encoding="utf-8")
            pending.extend(_RELATIVE_IMPORT.findall(source))
            for names in _RELATIVE_MODULE_IMPORT.findall(source):
                pending.extend(name.strip() for name in names.split(",") if name.strip())
    return modules


def find_missing_files(folder: str | os.PathLike[str]) -> list[str]:
    """What the folder lacks to be published, one readable line per problem (empty when complete)."""
    folder = Path(folder)
    if not folder.is_dir():
        return [f"{folder} (the checkpoint folder itself does not exist)"]
    missing: list[str] = []
    config_path = folder / "config.json"
    is_protoseg = True
    if not config_path.is_file():
        missing.append("config.json (save the model with save_pretrained)")
    else:
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            return [f"config.json is not valid JSON ({error})"]
        is_protoseg = config.get("model_type") == "protoseg"
        auto_map = config.get("auto_map") or {}
        # ProtoSeg is not built into transformers: it loads only through auto_map + the copied code.
        # A built-in model (the linear SegFormer baseline) needs no remote code.
        for auto_class in REQUIRED_AUTO_CLASSES if is_protoseg else ():
            if auto_class not in auto_map:
                missing.append(
                    f"config.json auto_map['{auto_class}'] (import modeling_protoseg before save_pretrained, "
                    "so the classes are registered for remote code)"
                )
        for module in _remote_code_modules(folder, auto_map):
            if not (folder / f"{module}.py").is_file():
                missing.append(f"{module}.py (modeling code needed by trust_remote_code)")
        # an encoder whose code is not in transformers (EfficientNet-Lite, a user's backbone) names its own files
        encoder_auto_map = (config.get("encoder_config") or {}).get("auto_map") or {}
        for module in _remote_code_modules(folder, encoder_auto_map):
            if not (folder / f"{module}.py").is_file():
                missing.append(f"{module}.py (the encoder's code, named by config.json encoder_config.auto_map)")

    index_path = folder / "model.safetensors.index.json"
    if not (folder / "model.safetensors").is_file() and not index_path.is_file():
        missing.append("model.safetensors (the weights, with the prototype buffer)")
    else:
        if index_path.is_file():
            weight_map = json.loads(index_path.read_text(encoding="utf-8")).get("weight_map", {})
            for shard in sorted(set(weight_map.values())):
                if not (folder / shard).is_file():
                    missing.append(f"{shard} (weight shard listed in model.safetensors.index.json)")
        shapes = read_safetensors_shapes(folder)
        if is_protoseg and shapes and not any(name.split(".")[-1] == "prototypes" for name in shapes):
            missing.append("prototypes tensor in model.safetensors (the (C, K, D) prototype buffer)")

    if not (folder / "preprocessor_config.json").is_file():
        missing.append(
            "preprocessor_config.json (save the image processor beside the model, e.g. "
            "SegformerImageProcessorPil().save_pretrained(folder); the pipeline needs it)"
        )
    if not (folder / CARD_FILE).is_file() and not (folder / EVAL_RESULTS_FILE).is_file():
        missing.append(
            f"{CARD_FILE} or {EVAL_RESULTS_FILE} (the model card is rendered from the measured results: "
            "evaluate the checkpoint first)"
        )
    return missing


@dataclasses.dataclass(frozen=True)
class LicenseChoice:
    """A licence for the published weights: a Hub licence id; with "other", its id and link (`check_license_choice`)."""

    license: str
    license_name: str | None = None
    license_link: str | None = None

    def __post_init__(self) -> None:
        check_license_choice(self.license, self.license_name, self.license_link, source="publish: ")


def prepare_folder_for_publishing(
    folder: str | os.PathLike[str], repo_id: str, license: LicenseChoice | None = None
) -> list[str]:
    """Check completeness and (re-)render our card for `repo_id`; return the files to upload. No network.

    A card rendered by `model_cards` (or no card at all) is rendered again so its snippets name
    `repo_id`; a hand-written README.md is kept as it is. A `license` is recorded in training_summary.json and
    the card (a hand-written card cannot take it: an error says so). Raises IncompleteCheckpointError.
    """
    folder = Path(folder)
    missing = find_missing_files(folder)
    if missing:
        raise IncompleteCheckpointError(
            f"The checkpoint folder {folder} is not complete; nothing was published. Missing:\n"
            + "\n".join(f"  - {item}" for item in missing)
        )
    card_path = folder / CARD_FILE
    is_ours = not card_path.is_file() or is_generated_card(card_path)
    if license is not None and not is_ours:
        raise PublishError(
            f"{card_path} was not rendered by model_cards, so --license cannot be written into it; nothing was "
            "published. Set `license` in its metadata yourself, or delete it to have the card rendered."
        )
    if is_ours:
        try:
            summary = TrainingSummary.read(folder)
            if license is not None:
                summary = dataclasses.replace(summary or TrainingSummary(), **dataclasses.asdict(license))
            write_model_card(folder, summary, repo_id=repo_id)
        except (FileNotFoundError, ModelCardInputError) as error:
            raise IncompleteCheckpointError(
                f"Cannot render the model card of {folder}; nothing was published: {error}"
            ) from error
    return files_to_publish(folder)


def _retry_hint(folder: Path, repo_id: str) -> str:
    return (
        f"The checkpoint folder {folder} is complete; publish it later with:\n"
        f"  python -m model_cards.publish {folder} --repo-id {repo_id}"
    )


def resolve_token(token: str | None) -> str | None:
    """The token to use: the argument, else HF_TOKEN, else the cached `hf auth login` token."""
    return token or get_token()


def _publish_error(
    error: BaseException, *, stage: str, folder: Path, repo_id: str, endpoint: str | None
) -> PublishError:
    """The PublishError for a failure while `stage`: what happened, whether anything was published, how to retry."""
    retry_hint = _retry_hint(folder, repo_id)
    if isinstance(error, OfflineModeIsEnabled):
        return PublishError(f"Offline mode is on ({error}); nothing was published.\n{retry_hint}")
    if isinstance(error, HfHubHTTPError):
        status = error.response.status_code if error.response is not None else None
        if status == 401:
            advice = (
                "The Hub rejected the token (401). Log in again with `hf auth login`, or pass a valid token "
                "with write access (--token / --hub_token / HF_TOKEN)."
            )
        elif status == 403:
            advice = f"The token has no write access to {repo_id} (403). Use a write token for that namespace."
        else:
            advice = f"The Hub answered HTTP {status}."
        return PublishError(
            f"Publishing failed while {stage}: {advice} Nothing was published (no commit was made).\n"
            f"Details: {error}\n{retry_hint}"
        )
    if isinstance(error, (FileNotFoundError, PermissionError, IsADirectoryError)):
        return PublishError(
            f"Reading a file of {folder} failed while {stage}: {error}. Nothing was published.\n{retry_hint}"
        )
    if isinstance(error, ValueError):  # README.md metadata rejected by the Hub, malformed LFS answer, ...
        return PublishError(
            f"Publishing failed while {stage}: {error}. Nothing was published (no commit was made).\n{retry_hint}"
        )
    hub_url = endpoint or constants.ENDPOINT
    if stage.startswith("committing"):
        # The request may have reached the Hub before the connection broke: say so, never "published".
        outcome = (
            "The connection broke during the commit request, so its outcome is unknown: check the "
            "repository's commits before relying on it. Publishing again is safe (unchanged files are "
            "skipped)."
        )
    else:
        outcome = "Nothing was published (no commit was made)."
    return PublishError(
        f"Could not reach the Hub at {hub_url} while {stage} ({type(error).__name__}: {error}). "
        f"{outcome} Check the network connection or proxy.\n{retry_hint}"
    )


def publish_folder(
    folder: str | os.PathLike[str],
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    commit_message: str = DEFAULT_COMMIT_MESSAGE,
    endpoint: str | None = None,
    license: LicenseChoice | None = None,
) -> CommitInfo:
    """Upload a complete checkpoint folder to the Hub as one commit.

    Arguments:
        folder: checkpoint folder (weights, config.json with auto_map, modeling code,
            preprocessor_config.json, README.md or eval_results.json to render it from).
        repo_id: "user/name" (or "org/name") of the model repository; created if it does not exist.
        token: Hub token with write access; defaults to HF_TOKEN or the cached login.
        private: create the repository as private (an existing repository keeps its visibility).
        commit_message: summary of the commit.
        endpoint: Hub URL; defaults to HF_ENDPOINT or https://huggingface.co.
        license: the weights' licence, recorded in training_summary.json and the card before the upload (the
            folder's own choice, if any, is kept when None).
    Returns:
        the `CommitInfo` of the commit (a `str` equal to the commit URL; `.oid` is the commit hash).
    Raises:
        IncompleteCheckpointError before any network call if the folder is not complete;
        PublishError if offline mode is on, no token is found, the token is rejected, the Hub cannot
        be reached or the commit fails. Success is returned only once the commit call answered; if the
        connection breaks during the commit request itself the error says the outcome is unknown.
    """
    folder = Path(folder).resolve()
    relative_paths = prepare_folder_for_publishing(folder, repo_id, license)
    retry_hint = _retry_hint(folder, repo_id)

    if constants.is_offline_mode():
        raise PublishError(
            "HF_HUB_OFFLINE is set, so huggingface_hub makes no network call; nothing was published. "
            "Unset HF_HUB_OFFLINE (and TRANSFORMERS_OFFLINE) in a shell that can reach the Hub.\n" + retry_hint
        )
    resolved_token = resolve_token(token)
    if not resolved_token:
        raise PublishError(
            "No Hugging Face token found; nothing was published. Log in with `hf auth login` "
            "(or `huggingface-cli login`), or set HF_TOKEN, or pass a token with write access "
            "(--token here, --hub_token to training/train.py). Tokens: https://huggingface.co/settings/tokens\n"
            + retry_hint
        )

    api = HfApi(endpoint=endpoint, token=resolved_token)
    operations = [
        CommitOperationAdd(path_in_repo=relative_path, path_or_fileobj=str(folder / relative_path))
        for relative_path in relative_paths
    ]
    stage = "checking the token"
    try:
        api.whoami()
        stage = f"creating the repository {repo_id}"
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        stage = f"committing {len(operations)} files to {repo_id}"
        commit_info = api.create_commit(
            repo_id, operations, commit_message=commit_message, repo_type="model"
        )
    except (OfflineModeIsEnabled, HfHubHTTPError, ValueError, *NETWORK_ERRORS) as error:
        raise _publish_error(error, stage=stage, folder=folder, repo_id=repo_id, endpoint=endpoint) from error
    return commit_info


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m model_cards.publish",
        description="Publish a ProtoSeg checkpoint folder (weights with prototypes, remote code, image "
        "processor, model card) to the Hugging Face Hub in one commit.",
    )
    parser.add_argument("folder", type=Path, help="checkpoint folder written by training/train.py")
    parser.add_argument("--repo-id", required=True, help="Hub model repository, e.g. your-name/protoseg-mit-b0-camvid")
    parser.add_argument("--token", default=None, help="Hub token with write access (default: HF_TOKEN or `hf auth login`)")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--commit-message", default=DEFAULT_COMMIT_MESSAGE)
    parser.add_argument(
        "--license",
        default=None,
        help="Hub licence id of the weights (apache-2.0, mit, cc-by-nc-4.0, ...; other with --license-name and "
        "--license-link), recorded in training_summary.json and the card (default: the folder's own choice, if any)",
    )
    parser.add_argument("--license-name", "--license_name", dest="license_name", help="with --license other: its id")
    parser.add_argument(
        "--license-link", "--license_link", dest="license_link", help="with --license other: LICENSE or a URL"
    )
    args = parser.parse_args(argv)
    try:
        license = None
        if args.license is not None or args.license_name is not None or args.license_link is not None:
            check_license_choice(args.license, args.license_name, args.license_link, source="", option_prefix="--")
            license = LicenseChoice(args.license, args.license_name, args.license_link)
        commit_info = publish_folder(
            args.folder, args.repo_id, token=args.token, private=args.private, commit_message=args.commit_message,
            license=license,
        )  # fmt: skip
    except ModelCardInputError as error:  # a licence choice the Hub would refuse
        print(f"error: {error}", file=sys.stderr)
        return 2
    except PublishError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    uploaded = files_to_publish(args.folder)
    print(f"Published {len(uploaded)} files to {args.repo_id}: {', '.join(uploaded)}")
    print(f"Commit: {commit_info.commit_url}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
