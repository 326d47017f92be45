"""benchmarks/results/manifest.json indexes every results file with the command that wrote it, by relative path."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.common import REPO_ROOT, RESULTS_DIR, repo_relative
from benchmarks.manifest import MANIFEST_NAME, build_file_index, update_manifest_files
from benchmarks.run_all import update_manifest


def test_committed_manifest_indexes_every_results_file_by_relative_path():
    manifest = json.loads((RESULTS_DIR / MANIFEST_NAME).read_text())
    on_disk = {path.relative_to(REPO_ROOT).as_posix() for path in RESULTS_DIR.rglob("*") if path.is_file()}
    expected, unknown = build_file_index(RESULTS_DIR, manifest["runs"])
    assert unknown == []
    assert set(manifest["files"]) == on_disk == set(expected)  # run `python -m benchmarks.manifest` after a change
    assert all(entry["command"] for entry in manifest["files"].values())
    assert str(REPO_ROOT) not in (RESULTS_DIR / MANIFEST_NAME).read_text()


def _write_result(folder: Path, name: str, command: str | None, commit: str = "abc1234") -> None:
    machine = {"git_commit": commit, "date_utc": "2026-12-07 03:00"} | ({"command": command} if command else {})
    (folder / f"{name}.json").write_text(json.dumps({"machine": machine, "rows": []}))
    (folder / f"{name}.md").write_text("table\n")


def test_index_takes_the_command_recorded_in_the_json_for_its_md_and_prefixed_png(tmp_path):
    _write_result(tmp_path, "scaling", "python -m benchmarks.scaling --threads 1")
    (tmp_path / "scaling_classes.png").write_bytes(b"png")
    _write_result(tmp_path, "mystery", command=None)  # records no command: its origin is unknown

    index, unknown = build_file_index(tmp_path, runs={})

    prefix = repo_relative(str(tmp_path))
    assert index[f"{prefix}/scaling.json"] == {
        "command": "python -m benchmarks.scaling --threads 1", "git_commit": "abc1234", "date_utc": "2026-12-07 03:00"
    }  # fmt: skip
    assert index[f"{prefix}/scaling_classes.png"]["written_with"] == "scaling.json"
    assert index[f"{prefix}/scaling.md"]["command"] == "python -m benchmarks.scaling --threads 1"
    assert sorted(unknown) == ["mystery.json", "mystery.md"]


def test_run_all_keeps_only_runs_that_last_wrote_a_file_and_indexes_their_files(tmp_path):
    _write_result(tmp_path, "latency", command=None)
    first = {"started_utc": "2026-12-01 00:00:00", "git_commit": "1111111",
             "benchmarks": {"latency": {"command": "python -m benchmarks.latency", "files": ["latency.json"]}}}
    second = {"started_utc": "2026-12-02 00:00:00", "git_commit": "2222222",
              "benchmarks": {"latency": {"command": "python -m benchmarks.latency --threads 1",
                                         "files": ["latency.json", "latency.md"]}}}
    update_manifest(tmp_path / MANIFEST_NAME, first)
    manifest = update_manifest(tmp_path / MANIFEST_NAME, second)

    assert list(manifest["runs"]) == ["2026-12-02 00:00:00"]  # the first run no longer owns a file
    prefix = repo_relative(str(tmp_path))
    assert manifest["files"][f"{prefix}/latency.json"]["git_commit"] == "2222222"
    assert manifest["files"][f"{prefix}/latency.md"]["command"] == "python -m benchmarks.latency --threads 1"
    assert manifest["files"][f"{prefix}/{MANIFEST_NAME}"]["command"] == "python -m benchmarks.manifest"


def test_rebuilding_makes_absolute_paths_of_older_manifests_relative(tmp_path):
    run = {"started_utc": "2026-12-01 00:00:00", "argv": ["--output", f"{REPO_ROOT}/benchmarks/results"],
           "benchmarks": {"parameters": {"command": f"python -m benchmarks.parameters --output {REPO_ROOT}/x",
                                         "files": []}}}
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({"files": {}, "runs": {run["started_utc"]: run}}))

    manifest, _ = update_manifest_files(tmp_path)

    record = manifest["runs"]["2026-12-01 00:00:00"]
    assert record["argv"] == ["--output", "benchmarks/results"]
    assert record["benchmarks"]["parameters"]["command"] == "python -m benchmarks.parameters --output x"
