"""Accuracy on real data: CamVid (11 classes), ProtoSeg vs the linear (SegFormer) head, several seeds.

Both heads train through `training/train.py` with identical settings (only `--head` differs); each run's
validation mIoU comes from its `eval_results.json`, and the saved final model is then evaluated here on
the test split the same way (whole image, short side resized to the evaluation base size, metrics at
the label's original 480x360). For every ProtoSeg run the prototype diversity is measured too: the mean
pairwise cosine similarity between the K prototypes of a class (off-diagonal), averaged over classes
(the official code's prototypes collapse towards 1.0; these should not).

Settings:
  cpu  tiny random-init MiT ("mit-micro", decoder and D = 64), 128x128 crops, batch 8, 500 AdamW steps
       (lr 1e-3, 50 warm-up), K = 10, prototype momentum 0.99 (0.999 barely moves a prototype in 500
       steps), evaluation at short side 128; seeds 0, 1, 2. A run takes about 1.5 minutes on 2 quiet
       cores (up to 7 when the cores are shared), so the six runs take 10-15 minutes (up to ~40).
  gpu  the full CamVid preset: MiT-B0 (random init unless --encoder names a checkpoint), 360x480 crops,
       batch 8, 20,000 steps, paper defaults (K = 10, momentum 0.999), evaluation at short side 360;
       seeds 0, 1, 2. Not run on the CPU machine.

Checkpoints go to --work_dir (default /tmp/protoseg_camvid_benchmark), never into the repository.

    python benchmarks/camvid_accuracy.py [--setting gpu] [--seeds 0 1 2] [--encoder nvidia/mit-b0]
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks.common import (  # noqa: E402
    REPO_ROOT,
    base_argument_parser,
    device_for,
    machine_description,
    machine_line,
    markdown_table,
    write_json,
)

CAMVID = REPO_ROOT.parent / "shared" / "datasets" / "camvid"
HEADS = ("protoseg", "linear")
SETTINGS: dict[str, dict] = {
    "cpu": {
        "train_arguments": [
            "--encoder", "mit-micro", "--decoder_hidden_size", "64", "--embedding_dim", "64",
            "--crop_size", "128", "--base_size", "128", "--max_steps", "500", "--per_device_train_batch_size", "8",
            "--learning_rate", "1e-3", "--head_lr_multiplier", "1", "--warmup_steps", "50",
            "--num_prototypes_per_class", "10", "--prototype_momentum", "0.99",
            "--dataloader_num_workers", "1", "--use_cpu",
        ],
        "base_size": 128,
        "description": "mit-micro (random init), decoder/D 64, 128x128 crops, batch 8, 500 steps, AdamW lr 1e-3, "
                       "K 10, momentum 0.99, eval short side 128",
    },
    "gpu": {
        "train_arguments": [
            "--encoder", "mit-b0", "--crop_size", "360", "480", "--base_size", "360", "--max_steps", "20000",
            "--per_device_train_batch_size", "8", "--num_prototypes_per_class", "10", "--prototype_momentum", "0.999",
            "--dataloader_num_workers", "4",
        ],
        "base_size": 360,
        "description": "MiT-B0, 360x480 crops, batch 8, 20,000 steps, camvid preset optimizer, K 10, momentum 0.999, "
                       "eval short side 360",
    },
}


def train(
    head: str, seed: int, setting: str, work_dir: Path, threads: int, extra: list[str], *, reuse: bool
) -> tuple[Path, float]:
    """Run training/train.py for one (head, seed); returns the output folder and the wall time.

    With `reuse`, a finished run in the same folder made by the very same command is kept (its recorded
    wall time is read back) instead of training again."""
    output_dir = work_dir / setting / f"{head}-seed{seed}"
    command = [
        sys.executable, str(REPO_ROOT / "training" / "train.py"), "--preset", "camvid",
        "--dataset_name", str(CAMVID), "--head", head, "--seed", str(seed), "--output_dir", str(output_dir),
        "--eval_steps", "0", "--checkpointing_steps", "0", "--report_to", "none", "--logging_steps", "100",
        "--num_threads", str(threads), *SETTINGS[setting]["train_arguments"], *extra,
    ]
    record = output_dir / "benchmark_run.json"
    if reuse and record.exists() and (output_dir / "eval_results.json").exists():
        previous = json.loads(record.read_text())
        if previous["command"] == command[1:]:
            return output_dir, previous["wall_seconds"]
    start = time.perf_counter()
    completed = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"training failed ({head}, seed {seed}):\n{completed.stderr[-3000:]}")
    wall_seconds = time.perf_counter() - start
    record.write_text(json.dumps({"command": command[1:], "wall_seconds": wall_seconds}))
    return output_dir, wall_seconds


def evaluate_test(folder: Path, base_size: int, device: torch.device) -> dict:
    """mIoU of a saved model on CamVid's test split (whole image, as train.py evaluates validation)."""
    from transformers import AutoModelForSemanticSegmentation

    import modeling_protoseg  # noqa: F401  registers "protoseg" with the Auto classes
    from training.augmentation import build_eval_transform
    from training.data import HubDatasetSource, LabelMapping, SegmentationDataset, collate_eval, load_hub_dataset
    from training.evaluation import evaluate

    splits = load_hub_dataset(str(CAMVID))
    source = HubDatasetSource(splits["test"], image_column="image", label_column="annotation", split_name="test")
    dataset = SegmentationDataset(
        source, transform=build_eval_transform(base_size=base_size), keep_label_size=True, num_labels=11,
        ignore_index=255, label_mapping=LabelMapping(ignore_index=255),
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, collate_fn=collate_eval)
    model = AutoModelForSemanticSegmentation.from_pretrained(folder).to(device)
    return evaluate(model, loader, num_labels=11, ignore_index=255, mode="whole", device=device)


def prototype_diversity(folder: Path) -> dict:
    """Mean off-diagonal cosine similarity between the K prototypes of each class, over classes."""
    from safetensors.torch import load_file

    state = load_file(str(folder / "model.safetensors"))
    prototypes = next(value for key, value in state.items() if key.endswith("prototypes")).float()  # (C, K, D)
    prototypes = F.normalize(prototypes, dim=-1)
    num_classes, num_prototypes, _ = prototypes.shape
    gram = prototypes @ prototypes.transpose(1, 2)  # (C, K, K)
    off_diagonal = ~torch.eye(num_prototypes, dtype=torch.bool)
    per_class = gram[:, off_diagonal].mean(dim=1)  # (C,)
    return {"mean": per_class.mean().item(), "min_class": per_class.min().item(),
            "max_class": per_class.max().item(), "per_class": per_class.tolist()}


def _mean_spread(values: list[float]) -> dict:
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values), "values": values}


def markdown(runs: list[dict], summary: dict) -> str:
    rows = [[r["head"], r["seed"], f"{r['val_miou']:.4f}", f"{r['test_miou']:.4f}",
             f"{r['diversity']['mean']:.3f}" if r.get("diversity") else "", f"{r['wall_seconds']:.0f}"] for r in runs]
    table = markdown_table(["head", "seed", "val mIoU", "test mIoU", "prototype diversity (mean cos)", "wall s"], rows)
    summary_rows = []
    for head, values in summary.items():
        diversity = values.get("diversity")
        summary_rows.append([
            head, values["val_miou"]["n"],
            f"{values['val_miou']['mean']:.4f} ± {values['val_miou']['std']:.4f}",
            f"{values['test_miou']['mean']:.4f} ± {values['test_miou']['std']:.4f}",
            f"[{values['test_miou']['min']:.4f}, {values['test_miou']['max']:.4f}]",
            f"{diversity['mean']:.3f} ± {diversity['std']:.3f}" if diversity else "n/a",
        ])
    return table + "\n\nMean ± standard deviation over seeds:\n\n" + markdown_table(
        ["head", "seeds", "val mIoU", "test mIoU", "test min/max", "prototype diversity"], summary_rows
    )


def main() -> None:
    parser = base_argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0 1 2")
    parser.add_argument("--reuse_runs", action="store_true",
                        help="keep finished runs of the same command found in --work_dir instead of retraining")
    parser.add_argument("--encoder", default=None, help="override the encoder (e.g. a local pretrained checkpoint)")
    parser.add_argument("--work_dir", type=Path, default=Path("/tmp/protoseg_camvid_benchmark"))
    args = parser.parse_args()
    device = device_for(args.setting)
    machine = machine_description(device)  # at the start: load average, commit and model files measured
    setting = SETTINGS[args.setting]
    args.seeds = args.seeds or [0, 1, 2]
    extra = ["--encoder", args.encoder] if args.encoder else []
    if args.quick:
        extra += ["--max_steps", "5", "--warmup_steps", "1", "--max_eval_samples", "4"]
    runs = []
    for seed in args.seeds[:1] if args.quick else args.seeds:
        for head in HEADS:
            print(f"camvid: {head}, seed {seed}", flush=True)
            folder, wall_seconds = train(head, seed, args.setting, args.work_dir, args.threads, extra,
                                         reuse=args.reuse_runs)
            val = json.loads((folder / "eval_results.json").read_text())
            test = evaluate_test(folder, setting["base_size"], device)
            run = {"head": head, "seed": seed, "val_miou": val["mean_iou"], "test_miou": test["mean_iou"],
                   "val_pixel_accuracy": val["overall_accuracy"], "test_pixel_accuracy": test["overall_accuracy"],
                   "test_per_category_iou": [None if v != v else v for v in test["per_category_iou"]],
                   "wall_seconds": wall_seconds, "folder": str(folder)}
            if head == "protoseg":
                run["diversity"] = prototype_diversity(folder)
            runs.append(run)
            print(f"  val {run['val_miou']:.4f} test {run['test_miou']:.4f} ({wall_seconds:.0f} s)", flush=True)
    summary = {}
    for head in HEADS:
        head_runs = [r for r in runs if r["head"] == head]
        summary[head] = {"val_miou": _mean_spread([r["val_miou"] for r in head_runs]),
                         "test_miou": _mean_spread([r["test_miou"] for r in head_runs])}
        if head == "protoseg":
            summary[head]["diversity"] = _mean_spread([r["diversity"]["mean"] for r in head_runs])
    suffix = ("" if args.setting == "cpu" else f"_{args.setting}") + ("_quick" if args.quick else "")
    description = setting["description"] + (f"; encoder {args.encoder}" if args.encoder else "")
    if args.quick:
        description += " -- QUICK SMOKE RUN: 5 steps, 4 validation images (numbers meaningless)"
    write_json(args.output / f"camvid_accuracy{suffix}.json",
               {"machine": machine, "setting": args.setting, "description": description, "runs": runs,
                "summary": summary})
    text = (f"Machine: {machine_line(machine)}\n\nCamVid (11 classes; 367 train / 101 val / 233 test), setting "
            f"`{args.setting}`: {description}. Identical `training/train.py` settings for both heads.\n\n"
            f"{markdown(runs, summary)}\n")
    (args.output / f"camvid_accuracy{suffix}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
