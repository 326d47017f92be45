"""Accuracy at real scale: CamVid trained to convergence and scored on its test split at the native 480x360.

Both heads go through the same `training/train.py` with the same flags except `--head`: ProtoSeg with the
package defaults (K = 10, D = 256, momentum 0.999, ...) and the linear head (SegFormer's 1x1 classifier on
the same encoder and decoder), both on the ImageNet EfficientNet-Lite0 encoder (converted from the PyPI
package by `python -m protoseg_tools.convert_efficientnet_lite0`).

Recipe (sized for a 2-core CPU; every value is written into each run's record):
  training   the 367 training images at short side 360 (= native), random rescale 0.5-2.0, random 256x256
             crop, horizontal flip, photometric jitter; batch 8; AdamW, lr 1e-4 on the encoder and 1e-3 on
             decoder and head, 100 warm-up steps, poly decay to 0 at 1500 steps.
  validation the 101 validation images, whole image at 480x360, every 150 steps (the curve in the PNG).
  test       the 233 test images, whole image at 480x360, by `python -m training.evaluate` on the saved folder.

A run takes 60-90 minutes on the 2 cores, so runs are spread over sessions: each finished run is added to
benchmarks/results/camvid_full.json at once (the .md and .png are rebuilt from every run in it), and a
(head, seed) already in the JSON is not trained again unless `--replace` is given. Runs go to --work_dir,
never into the repository; an unfinished run's folder resumes from its latest checkpoint.

    python -m benchmarks.camvid_full --heads linear protoseg --seeds 0 [--threads 1]
    python -m benchmarks.camvid_full --report_only   # rebuild the .md and .png from the JSON
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.accuracy import CAMVID, _commit, _environment, converted_lite0, prototype_health
from benchmarks.common import REPO_ROOT, RESULTS_DIR, machine_description, machine_line, markdown_table, write_json

RESULTS_NAME = "camvid_full"
NATIVE_SHORT_SIDE = 360  # CamVid frames are 480x360
HEADS = ("linear", "protoseg")

# Published CamVid test mIoU (11 classes, 233 test images), with where each number was found and the resolution
# that source states. None of them is at 480x360 with certainty; they set the scale, not a like-for-like bar.
PUBLISHED = [
    ("SegNet", 46.4, "VGG-16", "Dilation paper (Yu & Koltun, ICLR 2016), Table 5; images at 640x480. "
     "The ENet paper lists SegNet at 55.6 (480x360)"),
    ("ENet", 51.3, "ENet (0.37M parameters)", "ENet paper (Paszke et al., 2016), CamVid table, class IoU (68.3 is its "
     "class-average accuracy), 480x360; read from a secondary copy of the table, not the paper"),
    ("FCN-8s", 57.0, "VGG-16", "as tabulated in issue 21 (attributed to the ICNet paper); not found in any source "
     "searched: unverified"),
    ("DeepLab-LargeFOV", 61.6, "VGG-16", "Dilation paper (Yu & Koltun, ICLR 2016), Table 5; images at 640x480"),
]  # fmt: skip
PLAN = (
    "Plan: 3 seeds (0, 1, 2) per head, one run at a time per core (60-90 minutes each on this 2-core CPU), spread "
    "over sessions; the tables show the runs finished so far. Cut to fit the CPU: 256x256 training crops (the "
    "preset's are 360x480), 1,500 steps of batch 8 (about 33 epochs of the 367 training images), validation every "
    "150 steps, single-scale whole-image evaluation only, no test-time flip."
)
TARGET_MIOU = 0.570  # FCN-8s
TARGET_MARGIN = 0.01  # ProtoSeg >= linear + 0.01


def training_arguments(head: str, seed: int, folder: Path, encoder: Path, args: argparse.Namespace) -> list[str]:
    """The train.py flags of one run (`--num_threads` last: it changes speed only)."""
    return [
        "--preset", "camvid", "--dataset_name", str(CAMVID), "--encoder", str(encoder), "--head", head,
        "--base_size", str(NATIVE_SHORT_SIDE), "--crop_size", str(args.crop_size),
        "--per_device_train_batch_size", str(args.batch_size), "--max_steps", str(args.max_steps),
        "--warmup_steps", str(args.warmup_steps), "--learning_rate", str(args.learning_rate),
        "--head_lr_multiplier", str(args.head_lr_multiplier), "--eval_steps", str(args.eval_steps),
        "--eval_mode", "whole", "--checkpointing_steps", str(args.eval_steps), "--checkpoints_total_limit", "1",
        "--dataloader_num_workers", "1", "--use_cpu", "--report_to", "none", "--logging_steps", "50",
        "--seed", str(seed), "--output_dir", str(folder), *args.extra, "--num_threads", str(args.threads),
    ]  # fmt: skip


def train(head: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Train one run to the end (resuming an unfinished folder); returns its flags, commit and wall time."""
    folder = args.work_dir / f"{head}-seed{seed}"
    arguments = training_arguments(head, seed, folder, converted_lite0(args.work_dir), args)
    if (folder / "eval_results.json").exists():
        raise RuntimeError(f"{folder} already holds a finished run: move it away or pick another --work_dir")
    if (folder / "checkpoints").is_dir() and any((folder / "checkpoints").iterdir()):
        arguments += ["--resume_from_checkpoint", "latest"]
    log = args.work_dir / f"{head}-seed{seed}.log"
    commit = _commit(REPO_ROOT)  # the code the run imports, read before it starts
    start = time.perf_counter()
    with open(log, "w") as log_file:
        completed = subprocess.run(
            [sys.executable, str(REPO_ROOT / "training" / "train.py"), *arguments],
            cwd=REPO_ROOT, stdout=log_file, stderr=subprocess.STDOUT, env=_environment(REPO_ROOT),
        )  # fmt: skip
    if completed.returncode != 0:
        raise RuntimeError(f"training failed ({head}, seed {seed}); log: {log}")
    return {"arguments": arguments, "commit": commit, "wall_seconds": time.perf_counter() - start}


def evaluate_test(folder: Path) -> dict[str, Any]:
    """The saved model on the 233 test images, whole image at the native 480x360."""
    output = folder / "test_results.json"
    command = [
        sys.executable, "-m", "training.evaluate", str(folder), "--preset", "camvid", "--dataset_name", str(CAMVID),
        "--split", "test", "--eval_mode", "whole", "--base_size", str(NATIVE_SHORT_SIDE), "--output", str(output),
    ]  # fmt: skip
    subprocess.run(command, cwd=REPO_ROOT, check=True, capture_output=True, env=_environment(REPO_ROOT))
    return json.loads(output.read_text())


def validation_curve(folder: Path, final_step: int, final_metrics: dict[str, Any]) -> list[dict[str, float]]:
    """[{step, mean_iou}] from the run's eval_history.jsonl, ending with the final evaluation."""
    history = folder / "eval_history.jsonl"
    lines = history.read_text().splitlines() if history.exists() else []
    curve = [{"step": entry["step"], "mean_iou": entry["mean_iou"]} for entry in map(json.loads, filter(None, lines))]
    return [*curve, {"step": final_step, "mean_iou": final_metrics["mean_iou"]}]


def run_record(head: str, seed: int, trained: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    folder = args.work_dir / f"{head}-seed{seed}"
    val = json.loads((folder / "eval_results.json").read_text())
    train_results = json.loads((folder / "train_results.json").read_text())
    test = evaluate_test(folder)
    return {
        "head": head,
        "seed": seed,
        "commit": trained["commit"],
        "steps": args.max_steps,
        "crop": args.crop_size,
        "batch": args.batch_size,
        "learning_rate_encoder": args.learning_rate,
        "learning_rate_head": args.learning_rate * args.head_lr_multiplier,
        "warmup_steps": args.warmup_steps,
        "threads": args.threads,
        "beside": args.note,
        "arguments": trained["arguments"],
        "wall_seconds": trained["wall_seconds"],
        "train_runtime_seconds": train_results.get("train_runtime_seconds"),
        "finished_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "test_mean_iou": test["mean_iou"],
        "test_per_category_iou": test["per_category_iou"],
        "val_mean_iou": val["mean_iou"],
        "val_curve": validation_curve(folder, args.max_steps, val),
        "health": prototype_health(folder) if head == "protoseg" else None,
    }


# ----------------------------------------------------------------------------------------------
# Report


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per head: test and final validation mIoU over seeds (mean, sample std, values)."""
    summary = {}
    for head in HEADS:
        head_runs = sorted((run for run in runs if run["head"] == head), key=lambda run: run["seed"])
        if not head_runs:
            continue
        test = [run["test_mean_iou"] for run in head_runs]
        val = [run["val_mean_iou"] for run in head_runs]
        summary[head] = {
            "seeds": [run["seed"] for run in head_runs],
            "test_mean_iou": {"mean": statistics.mean(test), "std": _std(test), "values": test},
            "val_mean_iou": {"mean": statistics.mean(val), "std": _std(val), "values": val},
        }
    return summary


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else float("nan")


def _spread(cell: dict[str, Any]) -> str:
    std = "n/a (1 seed)" if cell["std"] != cell["std"] else f"{100 * cell['std']:.1f}"
    return f"{100 * cell['mean']:.1f} ± {std}"


def markdown(payload: dict[str, Any]) -> str:
    runs, summary = payload["runs"], payload["summary"]
    rows = [
        [head, len(cell["seeds"]), _spread(cell["test_mean_iou"]), _spread(cell["val_mean_iou"]),
         ", ".join(f"{100 * value:.1f}" for value in cell["test_mean_iou"]["values"])]
        for head, cell in summary.items()
    ]  # fmt: skip
    published = [[name, f"{miou:.1f}", encoder, source] for name, miou, encoder, source in PUBLISHED]
    class_names = list(runs[0]["test_per_category_iou"]) if runs else []
    per_run = []
    for run in sorted(runs, key=lambda run: (run["head"], run["seed"])):
        health = run.get("health") or {}
        per_run.append([
            run["head"], run["seed"], run["commit"], f"{100 * run['test_mean_iou']:.1f}",
            *(f"{100 * value:.1f}" if value is not None else "n/a" for value in run["test_per_category_iou"].values()),
            f"{run['wall_seconds'] / 60:.0f} ({run['threads']} thread{'s' if run['threads'] > 1 else ''})",
            f"{health['dead_prototypes']}/{health['never_updated_prototypes']}/{health['mean_within_class_cosine']:.2f}"
            if health else "",
        ])  # fmt: skip
    beside = [[run["head"], run["seed"], run.get("beside") or "not recorded"]
              for run in sorted(runs, key=lambda run: (run["head"], run["seed"]))]
    curves = [
        [run["head"], run["seed"], " ".join(f"{point['step']}:{100 * point['mean_iou']:.1f}" for point in run["val_curve"])]
        for run in sorted(runs, key=lambda run: (run["head"], run["seed"]))
    ]  # fmt: skip
    targets = _targets(summary)
    return "\n\n".join([
        f"Machine of the last report: {machine_line(payload['machine'])}",
        f"Command: `python -m benchmarks.camvid_full` (recipe in its docstring; every run's flags are in "
        f"`{RESULTS_NAME}.json`). mIoU in %, mean ± sample std over seeds; test = the 233 test images, whole image "
        f"at the native 480x360; val = the 101 validation images, same resolution, after the last step.",
        PLAN,
        markdown_table(["head (EfficientNet-Lite0, ImageNet)", "seeds", "test mIoU", "val mIoU", "test per seed"], rows),
        "Published CamVid test mIoU (11 classes), with the source and resolution each was verified in:",
        markdown_table(["method", "test mIoU", "encoder", "source"], published),
        "Targets: " + targets,
        "Every run (test IoU per class; wall minutes of the whole run with its torch threads; ProtoSeg health = dead / never-updated prototypes of 110 / "
        "mean within-class cosine):",
        markdown_table(["head", "seed", "commit", "test mIoU", *class_names, "wall min", "health"], per_run),
        "What else ran on the machine during each run (wall times depend on it; accuracy does not):",
        markdown_table(["head", "seed", "beside"], beside),
        f"Validation mIoU along training (step:mIoU), also `{RESULTS_NAME}.png`:",
        markdown_table(["head", "seed", "validation curve"], curves),
    ]) + "\n"  # fmt: skip


def _targets(summary: dict[str, dict[str, Any]]) -> str:
    if "protoseg" not in summary:
        return "not evaluated yet (no ProtoSeg run)."
    protoseg = summary["protoseg"]["test_mean_iou"]["mean"]
    parts = [f"ProtoSeg >= {100 * TARGET_MIOU:.1f}: {'met' if protoseg >= TARGET_MIOU else 'missed'} "
             f"({100 * (protoseg - TARGET_MIOU):+.1f})"]  # fmt: skip
    if "linear" in summary:
        margin = protoseg - summary["linear"]["test_mean_iou"]["mean"]
        parts.append(f"ProtoSeg >= linear + {100 * TARGET_MARGIN:.0f}: "
                     f"{'met' if margin >= TARGET_MARGIN else 'missed'} (difference {100 * margin:+.1f})")  # fmt: skip
    return "; ".join(parts) + "."


def plot_curves(runs: list[dict[str, Any]], path: Path) -> None:
    from benchmarks.plots import plt

    figure, axis = plt.subplots(figsize=(7, 4))
    colours = {"linear": "tab:blue", "protoseg": "tab:red"}
    for run in sorted(runs, key=lambda run: (run["head"], run["seed"])):
        steps = [point["step"] for point in run["val_curve"]]
        values = [100 * point["mean_iou"] for point in run["val_curve"]]
        axis.plot(steps, values, marker=".", color=colours[run["head"]], alpha=0.5 + 0.25 * (run["seed"] == 0),
                  label=f"{run['head']} seed {run['seed']}")  # fmt: skip
    axis.set_xlabel("optimizer step (batch 8, 256x256 crops)")
    axis.set_ylabel("validation mIoU % (480x360, whole image)")
    axis.set_title("CamVid, EfficientNet-Lite0 encoder: ProtoSeg vs linear head", fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_report(payload: dict[str, Any], output: Path) -> None:
    payload["summary"] = summarise(payload["runs"])
    write_json(output / f"{RESULTS_NAME}.json", payload)
    (output / f"{RESULTS_NAME}.md").write_text(markdown(payload))
    if payload["runs"]:
        plot_curves(payload["runs"], output / f"{RESULTS_NAME}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", nargs="+", choices=HEADS, default=list(HEADS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the training run")
    parser.add_argument("--max_steps", type=int, default=1500)
    parser.add_argument("--crop_size", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--warmup_steps", type=int, default=100)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--head_lr_multiplier", type=float, default=10.0)
    parser.add_argument("--eval_steps", type=int, default=150)
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more train.py flags (last)")
    parser.add_argument("--work_dir", type=Path, default=Path("/tmp/protoseg_camvid_full"))
    parser.add_argument("--replace", action="store_true", help="train again a (head, seed) already in the results")
    parser.add_argument("--report_only", action="store_true", help="train nothing: rebuild the .md and .png")
    parser.add_argument("--note", default="", help="what else ran on the machine meanwhile (kept with each run)")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()

    results_file = args.output / f"{RESULTS_NAME}.json"
    payload = json.loads(results_file.read_text()) if results_file.exists() else {"runs": []}
    payload["machine"] = machine_description(__import__("torch").device("cpu"))
    if not args.report_only:
        args.work_dir.mkdir(parents=True, exist_ok=True)
        for seed in args.seeds:
            for head in args.heads:
                done = [run for run in payload["runs"] if (run["head"], run["seed"]) == (head, seed)]
                if done and not args.replace:
                    print(f"{head} seed {seed}: already in {results_file} (--replace to train it again)", flush=True)
                    continue
                record = run_record(head, seed, train(head, seed, args), args)
                # Re-read: another invocation may have added runs while this one trained.
                payload = json.loads(results_file.read_text()) if results_file.exists() else payload
                payload["machine"] = machine_description(__import__("torch").device("cpu"))
                payload["runs"] = [run for run in payload["runs"] if (run["head"], run["seed"]) != (head, seed)]
                payload["runs"].append(record)
                write_report(payload, args.output)
                print(f"{head} seed {seed}: test mIoU {record['test_mean_iou']:.4f} "
                      f"({record['wall_seconds'] / 60:.0f} min)", flush=True)  # fmt: skip
    write_report(payload, args.output)
    print((args.output / f"{RESULTS_NAME}.md").read_text())


if __name__ == "__main__":
    main()
