"""The README's speed table, built from the committed results (latency.json, train_step.json, memory.json).

    python -m benchmarks.speed_table            # print the table
    python -m benchmarks.speed_table --write    # replace it in README.md (between the speed-table markers)

Every number comes from the result files named in its row; the lines under the table say which commit, machine
and load produced them, so the README never holds a number that no file backs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchmarks.common import REPO_ROOT, RESULTS_DIR

START, END = "<!-- speed-table:start -->", "<!-- speed-table:end -->"
CLASSES = (19, 150, 847)


def _read(folder: Path, name: str) -> dict[str, Any]:
    return json.loads((folder / f"{name}.json").read_text())


def _median(summary: dict[str, float]) -> str:
    return f"{summary['median']:.2f}x"


def _row(label: str, cells: dict[int, str], target: str) -> str:
    return "| " + " | ".join([label, *(cells.get(count, "") for count in CLASSES), target]) + " |"


def latency_rows(latency: dict[str, Any]) -> list[str]:
    """Per batch size: ProtoSeg / SegFormer with its floor, the linear head, and the A/B against an older commit."""
    rows = []
    for batch_size in sorted({cell["batch_size"] for cell in latency["cells"]}):
        cells = {cell["num_classes"]: cell for cell in latency["cells"] if cell["batch_size"] == batch_size}
        ratios = {
            count: f"{_median(cell['ratio'])} (floor {cell['floor']:.2f}x)" for count, cell in cells.items()
        }
        met = all(cell["target_met"] for cell in cells.values())
        rows.append(_row(
            f"inference, batch {batch_size}, 512x512 (`latency.md`)", ratios,
            "<= 1.10 x floor: " + ("met" if met else "**missed** at " + ", ".join(
                str(count) for count, cell in cells.items() if not cell["target_met"]) + " classes"),
        ))  # fmt: skip
        rows.append(_row(
            f"... the package's linear head, batch {batch_size}",
            {count: f"{_median(cell['linear_ratio'])} (floor {cell['linear_floor']:.2f}x)" for count, cell in cells.items()},
            "second baseline",
        ))  # fmt: skip
        if latency.get("baseline_commit"):
            rows.append(_row(
                f"... ProtoSeg now / at {latency['baseline_commit']}, batch {batch_size}",
                {count: _median(cell["ratio_to_baseline_commit"]) for count, cell in cells.items()}, "A/B (< 1: faster now)",
            ))  # fmt: skip
    return rows


def train_step_rows(train_step: dict[str, Any]) -> list[str]:
    rows = []
    for batch_size in sorted({cell["batch_size"] for cell in train_step["cells"]}):
        cells = {cell["num_classes"]: cell for cell in train_step["cells"] if cell["batch_size"] == batch_size}
        size = next(iter(cells.values()))["image_size"]
        target = cells[150]["target"] if 150 in cells else None
        verdict = "report" if target is None else (
            f"<= {target:.2f}x at 150: " + ("met" if cells[150]["ratio"]["median"] <= target else "**missed**"))
        rows.append(_row(f"training step, batch {batch_size}, {size}x{size} (`train_step.md`)",
                         {count: _median(cell["ratio"]) for count, cell in cells.items()}, verdict))  # fmt: skip
    return rows


def memory_rows(memory: dict[str, Any]) -> list[str]:
    peaks: dict[tuple[int, int, int], dict[str, int]] = {}
    for cell in memory["cells"]:
        peaks.setdefault((cell["batch_size"], cell["image_size"], cell["num_classes"]), {})[cell["model"]] = cell[
            "peak_bytes"
        ]
    rows = []
    for batch_size, size in sorted({key[:2] for key in peaks}):
        ratios = {
            count: f"{models['protoseg'] / models['segformer']:.2f}x"
            for (b, s, count), models in peaks.items()
            if (b, s) == (batch_size, size) and {"protoseg", "segformer"} <= set(models)
        }
        rows.append(_row(f"peak RSS of a training step, batch {batch_size}, {size}x{size} (`memory.md`)", ratios,
                         "report"))  # fmt: skip
    return rows


def provenance(results: dict[str, dict[str, Any]]) -> str:
    """Which commit, date and load each file's numbers come from."""
    parts = []
    for name, payload in results.items():
        machine = payload["machine"]
        load = machine.get("load_average_at_start")
        parts.append(
            f"`{name}`: commit {machine['git_commit']}, {machine['date_utc']} UTC"
            + (f", load {load[0]:.1f} at start" if load else "")
        )
    machine = next(iter(results.values()))["machine"]
    return (
        f"Machine: {machine['cpu']}, {machine['logical_cpus']} logical CPUs, torch {machine['torch']} "
        f"({machine['torch_threads']} threads). " + "; ".join(parts) + "."
    )


def speed_table(folder: Path = RESULTS_DIR) -> str:
    results = {name: _read(folder, name) for name in ("latency", "train_step", "memory")}
    lines = [
        "| measure (ProtoSeg / SegFormer unless named) | 19 classes | 150 classes | 847 classes | target |",
        "|---|---|---|---|---|",
        *latency_rows(results["latency"]),
        *train_step_rows(results["train_step"]),
        *memory_rows(results["memory"]),
        "",
        provenance(results),
    ]
    return "\n".join(lines)


def write_into(readme: Path, table: str) -> None:
    text = readme.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{readme} has no {START} ... {END} block to replace")
    before, rest = text.split(START, 1)
    _, after = rest.split(END, 1)
    readme.write_text(f"{before}{START}\n{table}\n{END}{after}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="replace the table in README.md")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="the results folder to read")
    args = parser.parse_args()
    table = speed_table(args.results)
    if args.write:
        write_into(REPO_ROOT / "README.md", table)
    print(table)


if __name__ == "__main__":
    main()
