"""What the proposals of `benchmarks/proposals/faster_forward.py` gain, side by side with the package.

1. Exactness: after one training step (so the BatchNorms' running statistics are not trivial), the
   package's eval forward and `folded_inference_logits` give the same logits; the package's log-domain
   Sinkhorn and the exp-domain one give the same plan and assignments (150 classes, 32,768 pixels).
2. Parts, interleaved: Sinkhorn clustering, 3 iterations, on the own-class similarities of a real
   training step (the package's `sinkhorn_assign_pixels` / `sinkhorn_assign_pixels_exp_domain`).
3. Whole inference, interleaved: the package's forward / the folded forward / SegFormer.

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
    build_segformer,
    machine_line,
    make_inference,
    markdown_table,
    results_suffix,
    start_run,
    summary_text,
    synthetic_batch,
    time_interleaved,
    write_json,
)
from benchmarks.proposals.faster_forward import folded_inference_logits, sinkhorn_assign_pixels_exp_domain
from modeling_protoseg import sinkhorn_assign_pixels


def exactness(num_classes: int, image_size: int, *, device: torch.device) -> dict:
    """Largest differences between the package's eval forward / Sinkhorn and the proposed ones (MiT-B0)."""
    model = build_protoseg(num_classes).to(device)
    pixel_values, labels = synthetic_batch(2, image_size, num_classes, device=device)
    model.train()
    with torch.no_grad():
        model(pixel_values=pixel_values, labels=labels)  # moves the BatchNorms' running statistics
    model.eval()
    with torch.inference_mode():
        package_logits = model(pixel_values=pixel_values).logits
        folded_logits = folded_inference_logits(model, pixel_values)
    report = {
        "eval_logits_max_abs_diff": (package_logits - folded_logits).abs().max().item(),
        "eval_logits_max_abs": package_logits.abs().max().item(),
        "eval_argmax_agreement": (package_logits.argmax(1) == folded_logits.argmax(1)).float().mean().item(),
    }
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


def inference_timings(num_classes: int, batch_size: int, image_size: int, *, repetitions: int,
                      device: torch.device) -> dict:
    """Inference of the package's ProtoSeg, the folded one (same weights) and SegFormer, interleaved."""
    pixel_values, _ = synthetic_batch(batch_size, image_size, num_classes, device=device)
    protoseg = build_protoseg(num_classes).to(device).eval()

    def folded() -> None:
        with torch.inference_mode():
            folded_inference_logits(protoseg, pixel_values)

    candidates = {
        "protoseg (current)": make_inference(protoseg, pixel_values),
        "protoseg (folded)": folded,
        "segformer": make_inference(build_segformer(num_classes).to(device), pixel_values),
    }
    times = time_interleaved(candidates, repetitions=repetitions, device=device)
    return {
        "num_classes": num_classes, "batch_size": batch_size, "image_size": image_size, "repetitions": repetitions,
        "wall_seconds": {name: Summary.of(times.wall[name]).as_dict() for name in candidates},
        "ratio_to_segformer": {name: Summary.of(times.ratios(name, "segformer")).as_dict() for name in candidates},
        "proposed_over_current": Summary.of(times.ratios("protoseg (folded)", "protoseg (current)")).as_dict(),
    }



def _markdown(payload: dict) -> str:
    title = ("### Exactness: eval forward after one training step (MiT-B0, 19 classes, batch 2); Sinkhorn alone: "
             "150 classes, 32,768 pixels")
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
    rows = []
    for whole in payload["inference"]:
        cell = f"C={whole['num_classes']} B={whole['batch_size']} {whole['image_size']}px, {whole['repetitions']} reps"
        for name in whole["wall_seconds"]:
            rows.append([cell, name, summary_text(whole["wall_seconds"][name], digits=3),
                         summary_text(whole["ratio_to_segformer"][name])])
        rows.append(["", "folded / current", "", summary_text(whole["proposed_over_current"])])
    lines += ["", "### Whole inference (interleaved repetitions; ratios per repetition)", ""]
    lines.append(markdown_table(["cell", "model", "seconds median [q1, q3]", "ratio to SegFormer median [q1, q3]"], rows))
    return "\n".join(lines)


def main() -> None:
    parser = base_argument_parser(__doc__.splitlines()[0])
    args, device, machine = start_run(parser)
    repetitions = args.repetitions or (2 if args.quick else 5)
    if args.quick:
        sinkhorn_cells, inference_cells = [(19, 2, 64)], [(19, 2, 64)]
    elif args.setting == "gpu":
        sinkhorn_cells, inference_cells = [(150, 8, 512), (847, 8, 512)], [(19, 8, 512), (150, 8, 512)]
    else:
        sinkhorn_cells, inference_cells = [(150, 8, 256), (847, 2, 256)], [(19, 8, 512), (150, 8, 512)]
    payload = {"machine": machine, "threads": args.threads}
    print("exactness", flush=True)
    payload["exactness"] = exactness(19, 64 if args.quick else 128, device=device)
    payload["sinkhorn"] = []
    for cell in sinkhorn_cells:
        print("sinkhorn", cell, flush=True)
        payload["sinkhorn"].append(sinkhorn_timings(*cell, repetitions=repetitions, device=device))
    payload["inference"] = []
    for cell in inference_cells:
        print("inference", cell, flush=True)
        payload["inference"].append(inference_timings(*cell, repetitions=repetitions, device=device))
    suffix = results_suffix(args.setting, args.quick)
    write_json(args.output / f"proposal_gain{suffix}.json", payload)
    text = _markdown(payload)
    (args.output / f"proposal_gain{suffix}.md").write_text(f"Machine: {machine_line(payload['machine'])}\n\n{text}\n")
    print(text)


if __name__ == "__main__":
    main()
