"""Shared pieces of the benchmarks: models, synthetic batches, interleaved timing, statistics, results.

Every comparison here is a ratio measured side by side in one process: the candidates run in turn
inside each repetition (order shuffled per repetition), and the ratio is taken per repetition before
its median, so slow drifts of a shared machine's load cancel out of it.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import gc
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import SegformerConfig, SegformerForSemanticSegmentation

import modeling_protoseg
from modeling_protoseg import ProtoSegConfig, ProtoSegForSemanticSegmentation

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
IGNORE_INDEX = -1  # outside [0, C) for every class count of the grid (255 is a real class at 847)
CLASS_GRID = (19, 150, 847)  # Cityscapes, ADE20K, ADE20K-full
DEFAULT_THREADS = 2
CPU = torch.device("cpu")


# ----------------------------------------------------------------------------------------------
# Machine and settings


def set_threads(num_threads: int) -> None:
    """Pin torch's intra-op threads (and one inter-op thread) so every run uses the same number."""
    torch.set_num_threads(num_threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process
        pass


def machine_description(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on: CPU model and cores, memory, torch build, threads, GPU."""
    cpu_model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import psutil

        memory_gib = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        memory_gib = None
    description = {
        "cpu": cpu_model,
        "logical_cpus": os.cpu_count(),
        "memory_gib": memory_gib,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "date_utc": utc_timestamp(seconds=False),
        "git_commit": git_commit(),
        "model_files_sha256": model_files_digest(),
        "command": invocation(),
    }
    if device.type == "cuda":
        description["gpu"] = torch.cuda.get_device_name(device)
    return description


def repo_relative(text: str) -> str:
    """`text` with this checkout's absolute path replaced by a path relative to it (results name no machine)."""
    return text.replace(str(REPO_ROOT) + os.sep, "").replace(str(REPO_ROOT), ".")


def invocation() -> str:
    """This process's command line as `python -m <module> <flags>`, paths relative to the checkout."""
    main_spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    program = f"-m {main_spec.name}" if main_spec is not None else sys.argv[0]
    return repo_relative(" ".join(["python", program, *sys.argv[1:]]))


def utc_timestamp(*, seconds: bool = True) -> str:
    """The current UTC time as 'YYYY-MM-DD HH:MM[:SS]'."""
    now = datetime.datetime.now(datetime.timezone.utc)  # noqa: UP017 (datetime.UTC needs Python 3.11)
    return now.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")


def model_files_digest() -> str:
    """First 12 hex digits of the SHA-256 of the imported model package's sources: which model was
    measured, even when the working tree moves between benchmarks (or an installed copy was imported)."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(Path(modeling_protoseg.__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def git_commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def base_argument_parser(description: str) -> argparse.ArgumentParser:
    """Flags every benchmark shares: --setting cpu|gpu, --repetitions, --threads, --quick, --output."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--setting",
        choices=("cpu", "gpu"),
        default="cpu",
        help="cpu: the grid sized for a 2-core CPU (smaller crops for the heavy training cells); "
        "gpu: the full 512x512 grid on CUDA",
    )
    parser.add_argument("--repetitions", type=int, default=None, help="timed repetitions per cell")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="torch intra-op threads (CPU)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 2 repetitions: a smoke run")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR, help="results folder")
    return parser


def device_for(setting: str) -> torch.device:
    if setting == "gpu":
        if not torch.cuda.is_available():
            raise SystemExit("--setting gpu needs a CUDA device")
        return torch.device("cuda")
    return torch.device("cpu")


def start_run(parser: argparse.ArgumentParser) -> tuple[argparse.Namespace, torch.device, dict[str, Any]]:
    """Parse the flags, set the device and threads, and describe the machine at the start (load average,
    commit and model files measured): (args, device, machine)."""
    args = parser.parse_args()
    device = device_for(args.setting)
    set_threads(args.threads)
    return args, device, machine_description(device)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------------------------
# Models and data


def class_names(num_classes: int) -> dict[int, str]:
    return {index: f"class_{index}" for index in range(num_classes)}


def build_protoseg(
    num_classes: int,
    *,
    num_prototypes_per_class: int = 10,
    encoder_config: SegformerConfig | None = None,
    package: Any = modeling_protoseg,
) -> torch.nn.Module:
    """ProtoSeg on MiT-B0 (SegformerConfig defaults), decoder 256, embeddings 256, K prototypes per class; `package`:
    this checkout's `modeling_protoseg`, or an older one from `package_at_commit` (A/B timings)."""
    torch.manual_seed(0)
    encoder_config = encoder_config or SegformerConfig()
    config = package.ProtoSegConfig(
        encoder_config=encoder_config,
        id2label=class_names(num_classes),
        num_prototypes_per_class=num_prototypes_per_class,
        decoder_hidden_size=encoder_config.decoder_hidden_size,
        embedding_dim=encoder_config.decoder_hidden_size,
        semantic_loss_ignore_index=IGNORE_INDEX,
    )
    return package.ProtoSegForSemanticSegmentation(config)


def build_segformer(num_classes: int, *, encoder_config: SegformerConfig | None = None) -> SegformerForSemanticSegmentation:
    """The parametric baseline: `SegformerForSemanticSegmentation` with the same MiT-B0 encoder."""
    torch.manual_seed(0)
    config = copy.deepcopy(encoder_config) if encoder_config is not None else SegformerConfig()
    config.id2label = class_names(num_classes)
    config.label2id = {name: index for index, name in config.id2label.items()}
    config.semantic_loss_ignore_index = IGNORE_INDEX
    return SegformerForSemanticSegmentation(config)


def mit_feature_maps(encoder: torch.nn.Module, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The 4 feature maps of a MiT encoder (a `SegformerModel`: ProtoSeg's `model.encoder`, SegFormer's
    `model.segformer`), strides 4..32, each (B, C_i, H_i, W_i)."""
    return tuple(encoder(pixel_values, output_hidden_states=True).hidden_states)


def build_linear_head(num_classes: int) -> torch.nn.Module:
    """The package's own parametric baseline on the same MiT-B0: `ProtoSegLinearHeadForSemanticSegmentation` (the
    folded SegFormer decoder and a 1x1 classifier), a second baseline named as such, not SegFormer."""
    from modeling_protoseg import ProtoSegLinearHeadConfig, ProtoSegLinearHeadForSemanticSegmentation

    torch.manual_seed(0)
    encoder_config = SegformerConfig()
    config = ProtoSegLinearHeadConfig(
        encoder_config=encoder_config, id2label=class_names(num_classes),
        decoder_hidden_size=encoder_config.decoder_hidden_size, semantic_loss_ignore_index=IGNORE_INDEX,
    )  # fmt: skip
    return ProtoSegLinearHeadForSemanticSegmentation(config)


def worktree_at(commit: str, work_dir: Path) -> Path:
    """A detached git worktree of this repository at `commit` under `work_dir` (created once, then reused)."""
    worktree = work_dir / f"code-{commit}"
    if not worktree.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(worktree), commit], cwd=REPO_ROOT, check=True,
                       capture_output=True)  # fmt: skip
    return worktree


def package_at_commit(commit: str, work_dir: Path = Path("/tmp")) -> Any:
    """The `modeling_protoseg` package as it was at `commit`, imported beside this one under the name
    `modeling_protoseg_<commit>` from `worktree_at(commit, work_dir)`, for A/B timings in one process. Its relative
    imports resolve inside the alias; its Auto-class registrations are given back to this checkout after."""
    import importlib.util

    from transformers import AutoConfig, AutoModelForSemanticSegmentation

    name = f"modeling_protoseg_{commit}"
    if name in sys.modules:
        return sys.modules[name]
    package_dir = worktree_at(commit, work_dir) / "modeling_protoseg"
    spec = importlib.util.spec_from_file_location(
        name, package_dir / "__init__.py", submodule_search_locations=[str(package_dir)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    # the old package registered its own classes for "protoseg": give the name back to this checkout's
    AutoConfig.register(ProtoSegConfig.model_type, ProtoSegConfig, exist_ok=True)
    AutoModelForSemanticSegmentation.register(ProtoSegConfig, ProtoSegForSemanticSegmentation, exist_ok=True)
    return module


def operation_count(model: torch.nn.Module, pixel_values: torch.Tensor) -> int:
    """Floating-point operations of one eval-mode forward (matrix products, convolutions, attention), counted by
    `torch.utils.flop_counter.FlopCounterMode`; element-wise work (norms, activations, resizing) is not counted."""
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(pixel_values=pixel_values)
    return counter.get_total_flops()


MODEL_BUILDERS: dict[str, Callable[..., torch.nn.Module]] = {"protoseg": build_protoseg, "segformer": build_segformer}


def count_learnable_parameters(model: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)


def synthetic_batch(
    batch_size: int, image_size: int, num_classes: int, *, device: torch.device, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised random images and piecewise-constant labels (16x16 blocks of random classes per image,
    about 5% ignored), so every batch holds many classes in contiguous regions as real label maps do."""
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(batch_size, 3, image_size, image_size, generator=generator)
    grid = 16
    coarse = torch.randint(0, num_classes, (batch_size, 1, grid, grid), generator=generator)
    coarse[torch.rand(coarse.shape, generator=generator) < 0.05] = IGNORE_INDEX
    labels = torch.nn.functional.interpolate(coarse.float(), size=(image_size, image_size), mode="nearest")
    return pixel_values.to(device), labels[:, 0].long().to(device)


def make_train_step(
    model: torch.nn.Module, pixel_values: torch.Tensor, labels: torch.Tensor
) -> Callable[[], None]:
    """One full training step: forward (losses, and for ProtoSeg clustering + prototype update), backward,
    AdamW update. Both heads take the same optimizer and the same batch."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, foreach=True)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = model(pixel_values=pixel_values, labels=labels).loss
        loss.backward()
        optimizer.step()

    return step


def make_inference(model: torch.nn.Module, pixel_values: torch.Tensor) -> Callable[[], None]:
    """Eval-mode forward under `torch.inference_mode()` (the (B, C, H/4, W/4) logits are computed, then dropped)."""
    model.eval()

    def infer() -> None:
        with torch.inference_mode():
            model(pixel_values=pixel_values)

    return infer


# ----------------------------------------------------------------------------------------------
# Timing and statistics


@dataclass
class Summary:
    """Median and spread of a list of measurements."""

    median: float
    q1: float
    q3: float
    minimum: float
    maximum: float
    count: int

    @classmethod
    def of(cls, values: list[float]) -> Summary:
        ordered = sorted(values)
        if len(ordered) >= 2:
            q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
        else:
            q1 = q3 = ordered[0]
        return cls(statistics.median(ordered), q1, q3, ordered[0], ordered[-1], len(ordered))

    def as_dict(self) -> dict[str, float]:
        return {"median": self.median, "q1": self.q1, "q3": self.q3, "min": self.minimum, "max": self.maximum,
                "n": self.count}

    def text(self, unit_scale: float = 1.0, digits: int = 2) -> str:
        """'median [q1, q3]' in the given unit."""
        f = f"{{:.{digits}f}}"
        return f"{f.format(self.median * unit_scale)} [{f.format(self.q1 * unit_scale)}, {f.format(self.q3 * unit_scale)}]"


def summary_text(summary: dict[str, float], scale: float = 1.0, digits: int = 2) -> str:
    """'median [q1, q3]' of a `Summary.as_dict()`, in the given unit."""
    return Summary(summary["median"], summary["q1"], summary["q3"], summary["min"], summary["max"],
                   summary["n"]).text(scale, digits)


@dataclass
class InterleavedTimes:
    """Wall-clock and process CPU seconds of each candidate, one entry per repetition."""

    wall: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)

    def ratios(self, numerator: str, denominator: str, kind: str = "wall") -> list[float]:
        """Per-repetition ratios numerator / denominator (the two ran in the same repetition)."""
        times = self.wall if kind == "wall" else self.cpu
        return [a / b for a, b in zip(times[numerator], times[denominator])]

    def paired_cell(self, protoseg: str, segformer: str, **fields: Any) -> dict[str, Any]:
        """One ProtoSeg / SegFormer cell: both models' times, the per-repetition ratios (wall and CPU time)
        and the raw times, after the given descriptive `fields`."""
        return fields | {
            "protoseg_seconds": Summary.of(self.wall[protoseg]).as_dict(),
            "segformer_seconds": Summary.of(self.wall[segformer]).as_dict(),
            "ratio": Summary.of(self.ratios(protoseg, segformer)).as_dict(),
            "ratio_cpu_time": Summary.of(self.ratios(protoseg, segformer, "cpu")).as_dict(),
            "raw_seconds": {"protoseg": self.wall[protoseg], "segformer": self.wall[segformer]},
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "wall_seconds": {name: Summary.of(values).as_dict() for name, values in self.wall.items()},
            "cpu_seconds": {name: Summary.of(values).as_dict() for name, values in self.cpu.items()},
            "raw_wall_seconds": self.wall,
        }


def time_interleaved(
    candidates: dict[str, Callable[[], None]],
    *,
    repetitions: int,
    warmup: int = 1,
    device: torch.device = CPU,
    seed: int = 0,
) -> InterleavedTimes:
    """Run every candidate once per repetition, in a shuffled order, timing each call.

    Warm-up calls (not recorded) run first for every candidate. Wall time uses `time.perf_counter`
    around a device synchronisation; CPU time is this process's user+system time (`time.process_time`),
    which a busy neighbour inflates less than wall time.
    """
    order_rng = random.Random(seed)
    for _ in range(warmup):
        for run in candidates.values():
            run()
            synchronize(device)
    times = InterleavedTimes({name: [] for name in candidates}, {name: [] for name in candidates})
    names = list(candidates)
    for _ in range(repetitions):
        order_rng.shuffle(names)
        for name in names:
            gc.collect()
            synchronize(device)
            wall_start, cpu_start = time.perf_counter(), time.process_time()
            candidates[name]()
            synchronize(device)
            times.wall[name].append(time.perf_counter() - wall_start)
            times.cpu[name].append(time.process_time() - cpu_start)
    return times


# ----------------------------------------------------------------------------------------------
# Results


def results_suffix(setting: str, quick: bool) -> str:
    """File-name suffix of a run's results: '' for the full CPU setting, then '_gpu' and/or '_quick'."""
    return ("" if setting == "cpu" else f"_{setting}") + ("_quick" if quick else "")


def time_paired_cells(
    candidates: dict[str, Callable[[], None]],
    class_counts: tuple[int, ...],
    *,
    repetitions: int,
    device: torch.device,
    targets: dict[int, float],
    **fields: Any,
) -> tuple[list[dict[str, Any]], InterleavedTimes]:
    """Time `candidates` interleaved ('protoseg/C' and 'segformer/C' for every class count C, and any
    others) and return one ProtoSeg / SegFormer cell per class count (with the descriptive `fields`, the
    load average before and after, and the target ratio), and all the times."""
    load_before = os.getloadavg()[0]
    times = time_interleaved(candidates, repetitions=repetitions, device=device)
    load_average = [load_before, os.getloadavg()[0]]
    cells = [
        times.paired_cell(
            f"protoseg/{num_classes}", f"segformer/{num_classes}", **fields, num_classes=num_classes,
            repetitions=repetitions, load_average=load_average, target=targets.get(num_classes),
        )
        for num_classes in class_counts
    ]
    return cells, times


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (Summary,)):
        return value.as_dict()
    if isinstance(value, torch.device):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def paired_cells_table(cells: list[dict[str, Any]]) -> str:
    """Markdown table of `time_paired_cells` cells: times in ms, ratios (wall, CPU time), target verdict."""
    rows = []
    for cell in cells:
        target = cell["target"]
        verdict = "" if target is None else ("met" if cell["ratio"]["median"] <= target else "**missed**")
        rows.append([
            cell["batch_size"], f"{cell['image_size']}x{cell['image_size']}", cell["num_classes"],
            summary_text(cell["protoseg_seconds"], 1e3, 0), summary_text(cell["segformer_seconds"], 1e3, 0),
            summary_text(cell["ratio"]), summary_text(cell["ratio_cpu_time"]),
            f"<= {target:.2f}x {verdict}" if target else "report", cell["repetitions"],
        ])
    return markdown_table(
        ["batch", "size", "classes", "ProtoSeg ms", "SegFormer ms", "ratio (wall)", "ratio (CPU time)", "target", "reps"],
        rows,
    )


def machine_line(machine: dict[str, Any]) -> str:
    """One line naming the machine, for the Markdown results."""
    line = (
        f"{machine['cpu']}, {machine['logical_cpus']} logical CPUs, {machine['memory_gib']} GiB, "
        f"torch {machine['torch']} ({machine['torch_threads']} threads), transformers {machine['transformers']}, "
        f"device {machine['device']}"
    )
    if "gpu" in machine:
        line += f" ({machine['gpu']})"
    load = machine.get("load_average_at_start")
    if load:
        line += f"; load average at start {load[0]:.1f} (shared machine)"
    return line + (f"; {machine['date_utc']} UTC, commit {machine['git_commit']}, "
                   f"model files sha256 {machine.get('model_files_sha256')}")


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
