"""Index every file under benchmarks/results/: the command that wrote it, at which commit, when.

    python -m benchmarks.manifest            # rebuild results/manifest.json's "files"; fail on a file of unknown origin
    python -m benchmarks.manifest --check    # only check that the committed index covers every file (CI-safe)

Where a file's source is found, in order: the `benchmarks.run_all` invocation that last wrote it (the manifest's
"runs"); the `machine` record of the result's JSON (its "command", recorded since this module exists, commit and
date); `EARLIER_SOURCES`, written by hand from benchmarks/README.md for files produced before commands were recorded.
A `.md` / `.png` belongs to the `.json` with the same name or the longest name it starts with (`scaling_classes.png`
-> `scaling.json`). Paths are relative to the repository root.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import REPO_ROOT, RESULTS_DIR, repo_relative

MANIFEST_NAME = "manifest.json"

# Files written before result JSONs recorded their command (see benchmarks/README.md, "Which run each file comes from").
EARLIER_SOURCES: dict[str, dict[str, str]] = {
    "accuracy.json": {"command": "python -m benchmarks.accuracy --report_only",
                      "note": "table over runs trained at the commits it lists"},
    "camvid_full.json": {"command": "python -m benchmarks.camvid_full --heads linear protoseg --seeds 0 1 2",
                         "note": "one run per (head, seed) added at a time; each run's flags and commit in its 'runs'"},
    "class_enrolment.json": {"command": "python -m benchmarks.class_enrolment --held-out-class leaf ice"},
    "pixel_contrast_accuracy.json": {"command": "python -m benchmarks.pixel_contrast --part accuracy --reuse_runs",
                                     "note": "plus the 10-view variants with --heads; runs trained at 1fb8700 / 8f39f48"},
    "pixel_contrast_accuracy_08099bf.json": {"command": "python -m benchmarks.pixel_contrast --part accuracy",
                                             "note": "the scratch grid before the training rescale followed the "
                                                     "image processor"},
    "pixel_contrast_cost.json": {"command": "python -m benchmarks.pixel_contrast --part cost"},
    "proposal_gain.json": {"command": "python -m benchmarks.run_all --with_proposals",
                           "note": "the first full run_all"},
    "update_rules/scratch_172e392.json": {
        "command": "python -m benchmarks.accuracy --settings scratch --tasks camvid --heads protoseg "
                   "protoseg-correct-only --threads 1",
        "note": "accuracy.json / .md of that command, renamed"},
    "update_rules/per_prototype_fallback_dbe0046.json": {
        "command": "python -m benchmarks.accuracy --settings scratch lite0 --tasks camvid --heads protoseg --threads 1",
        "note": "accuracy.json / .md of that command, renamed"},
    "update_rules/README.md": {"command": "written by hand from the files beside it"},
}


def _json_source(path: Path) -> dict[str, Any] | None:
    """Command, commit and date recorded inside a result JSON (None when it records none of them)."""
    try:
        payload = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    machine = payload.get("machine") if isinstance(payload, dict) else None
    if not isinstance(machine, dict):
        return None
    source = {key: machine[key] for key in ("command", "git_commit", "date_utc") if machine.get(key)}
    return source or None


def _owner_json(relative: str, json_files: set[str]) -> str | None:
    """The result JSON a .md / .png belongs to: same name, else the longest name it starts with."""
    stem, _, _ = relative.rpartition(".")
    candidates = [name for name in json_files if stem == name[:-5] or stem.startswith(name[:-5] + "_")]
    return max(candidates, key=len) if candidates else None


def build_file_index(results_dir: Path, runs: dict[str, dict[str, Any]]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Every file under `results_dir` -> its source; and the files whose source is unknown."""
    files = sorted(path.relative_to(results_dir).as_posix() for path in results_dir.rglob("*") if path.is_file())
    json_files = {name for name in files if name.endswith(".json") and name != MANIFEST_NAME}
    written_by_run: dict[str, dict[str, Any]] = {}
    for run_id, run in sorted(runs.items()):  # later runs overwrite earlier ones
        for record in run.get("benchmarks", {}).values():
            for name in record.get("files", []):
                written_by_run[name] = {"command": repo_relative(record["command"]), "git_commit": run.get("git_commit"),
                                        "date_utc": run_id, "run_all": run_id}
    index: dict[str, dict[str, Any]] = {}
    unknown: list[str] = []
    for name in files:
        owner = name if name in json_files else _owner_json(name, json_files)
        source: dict[str, Any] | None = None
        if name == MANIFEST_NAME:
            source = {"command": "python -m benchmarks.manifest"}
        elif name in written_by_run:
            source = written_by_run[name]
        else:
            earlier = EARLIER_SOURCES.get(name) or EARLIER_SOURCES.get(owner or "") or written_by_run.get(owner or "")
            recorded = _json_source(results_dir / owner) if owner else None  # the JSON's own record wins
            if earlier or (recorded and recorded.get("command")):
                source = {**(earlier or {}), **(recorded or {})}
                if owner is not None and owner != name:
                    source["written_with"] = owner
        if source is None:
            unknown.append(name)
            continue
        results_prefix = Path(repo_relative(str(results_dir))).as_posix()
        index[f"{results_prefix}/{name}"] = source
    return index, unknown


def update_manifest_files(results_dir: Path) -> tuple[dict[str, Any], list[str]]:
    """Rebuild the manifest's file index in place, keeping its run_all records; returns (manifest, unknown files)."""
    path = results_dir / MANIFEST_NAME
    manifest = json.loads(path.read_text()) if path.exists() else {"files": {}, "runs": {}}
    for run in manifest["runs"].values():  # older manifests named the checkout's absolute path
        run["argv"] = [repo_relative(argument) for argument in run.get("argv", [])]
        for record in run.get("benchmarks", {}).values():
            record["command"] = repo_relative(record["command"])
    manifest["files"], unknown = build_file_index(results_dir, manifest["runs"])
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest, unknown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=RESULTS_DIR, help="results folder")
    parser.add_argument("--check", action="store_true", help="only check the index covers every file")
    args = parser.parse_args()
    if args.check:
        manifest = json.loads((args.output / MANIFEST_NAME).read_text())
        expected, unknown = build_file_index(args.output, manifest["runs"])
        missing = sorted(set(expected) - set(manifest["files"]))
        if missing or unknown:
            sys.exit(f"manifest is stale: not indexed {missing}; of unknown origin {unknown}")
        return
    _, unknown = update_manifest_files(args.output)
    if unknown:
        sys.exit(f"of unknown origin (add their command to EARLIER_SOURCES or record it in the JSON): {unknown}")


if __name__ == "__main__":
    main()
