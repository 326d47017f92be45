"""What the proposals of `benchmarks/proposals/faster_forward.py` gain, side by side with the package.

1. Exactness: the package's log-domain Sinkhorn and the exp-domain one give the same plan and assignments
   (150 classes, 32,768 pixels).
2. Parts, interleaved: Sinkhorn clustering, 3 iterations, on the own-class similarities of a real
   training step (the package's `sinkhorn_assign_pixels` / `sinkhorn_assign_pixels_exp_domain`).
The folded eval-mode BatchNorms, measured here before they were ported (issue 17), are the package's own code
now; their inference timing is part of `benchmarks.latency`.

The exp-domain Sinkhorn is measured as a part only: running it inside the package's training forward
would mean patching the package. Its gain on a whole step is bounded by the clustering's share of the
step (`train_step.md`). The fused class scores + PPC + PPD, measured here before it was ported (commit
80df072), is the package's own code now; its reference is gone with `pixel_prototype_losses`.

    python -m benchmarks.proposals.proposal_gain [--setting gpu] [--quick]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from benchmarks.clustering import capture_training_step
from benchmarks.common import (
    Summary,
    base_argument_parser,
    build_protoseg,
    machine_line,
    markdown_table,
    results_suffix,
    start_run,
    summary_text,
    synthetic_batch,
    time_interleaved,
    write_json,
)
from benchmarks.proposals.faster_forward import sinkhorn_assign_pixels_exp_domain
from modeling_protoseg import sinkhorn_assign_pixels


def exactness() -> dict:
    """Largest differences between the package's Sinkhorn and the proposed one."""
    report = {}
    # Sinkhorn alone on a larger problem: 150 classes (+ the spare group), 32,768 pixels, K = 10
    generator = torch.Generator().manual_seed(0)
    embeddings = F.normalize(torch.randn(32768, 64, generator=generator), dim=1)
    prototypes = F.normalize(torch.randn(151, 10, 64, generator=generator), dim=-1)
    groups = torch.randint(0, 151, (32768,), generator=generator)
    similarities = torch.einsum("nd,nkd->nk", embeddings, prototypes[groups])
    assignments_ref, plan_ref = sinkhorn_assign_pixels(similarities, groups, 151, iterations=3, epsilon=0.05)
    assignments_new, plan_new = sinkhorn_assign_pixels_exp_domain(similarities, groups, 151, iterations=3, epsilon=0.05)
    report["sinkhorn_assignment_agreement"] = (assignments_ref == assignments_new).float().mean().item()
    report["sinkhorn_plan_max_abs_diff"] = (plan_ref - plan_new).abs().max().item()
    return report


def sinkhorn_timings(num_classes: int, batch_size: int, image_size: int, *, repetitions: int,
                     device: torch.device) -> dict:
    """The step's Sinkhorn clustering, package (log domain) vs proposed (exp domain), interleaved."""
    model = build_protoseg(num_classes).to(device)
    pixel_values, labels = synthetic_batch(batch_size, image_size, num_classes, device=device)
    clusters = capture_training_step(model, pixel_values, labels).clusters
    config, num_groups = model.config, num_classes + 1
    arguments = (clusters.own_class_similarities, clusters.pixel_groups, num_groups)
    options = {"iterations": config.sinkhorn_iterations, "epsilon": config.sinkhorn_epsilon}
    candidates = {
        "current": lambda: sinkhorn_assign_pixels(*arguments, **options),
        "exp domain": lambda: sinkhorn_assign_pixels_exp_domain(*arguments, **options),
    }
    times = time_interleaved(candidates, repetitions=repetitions, device=device)
    return {
        "num_classes": num_classes, "batch_size": batch_size, "image_size": image_size, "repetitions": repetitions,
        "wall_seconds": {name: Summary.of(times.wall[name]).as_dict() for name in candidates},
        "ratio_to_current": {name: Summary.of(times.ratios(name, "current")).as_dict() for name in candidates},
    }


def _markdown(payload: dict) -> str:
    title = "### Exactness: Sinkhorn alone, 150 classes, 32,768 pixels"
    lines = [title, ""]
    lines.append(markdown_table(["quantity", "value"], [[k, f"{v:.3g}"] for k, v in payload["exactness"].items()]))
    rows = []
    for part in payload["sinkhorn"]:
        cell = f"C={part['num_classes']} B={part['batch_size']} {part['image_size']}px, {part['repetitions']} reps"
        for name in part["wall_seconds"]:
            rows.append([cell, name, summary_text(part["wall_seconds"][name], 1e3, 1),
                         summary_text(part["ratio_to_current"][name])])
    lines += ["", "### Sinkhorn clustering of a training step, 3 iterations (interleaved repetitions)", ""]
    lines.append(markdown_table(["cell", "variant", "ms median [q1, q3]", "time / current"], rows))
    return "\n".join(lines)


def main() -> None:
    parser = base_argument_parser(__doc__.splitlines()[0])
    args, device, machine = start_run(parser)
    repetitions = args.repetitions or (2 if args.quick else 5)
    if args.quick:
        sinkhorn_cells = [(19, 2, 64)]
    elif args.setting == "gpu":
        sinkhorn_cells = [(150, 8, 512), (847, 8, 512)]
    else:
        sinkhorn_cells = [(150, 8, 256), (847, 2, 256)]
    payload = {"machine": machine, "threads": args.threads}
    print("exactness", flush=True)
    payload["exactness"] = exactness()
    payload["sinkhorn"] = []
    for cell in sinkhorn_cells:
        print("sinkhorn", cell, flush=True)
        payload["sinkhorn"].append(sinkhorn_timings(*cell, repetitions=repetitions, device=device))
    suffix = results_suffix(args.setting, args.quick)
    write_json(args.output / f"proposal_gain{suffix}.json", payload)
    text = _markdown(payload)
    (args.output / f"proposal_gain{suffix}.md").write_text(f"Machine: {machine_line(payload['machine'])}\n\n{text}\n")
    print(text)


if __name__ == "__main__":
    main()
