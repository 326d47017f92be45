"""What the exact reformulations of `benchmarks/faster_forward.py` gain (ported and proposed), side by side.

1. Exactness: the package's model and `FasterProtoSegForSemanticSegmentation` with the same weights, the
   same batch and the same random state give the same logits, losses, prototype update and gradients
   (differences reported; float rounding only).
2. Parts, interleaved: class scores + PPC + PPD on the (N, C*K) similarities, forward + backward
   (amax + `pixel_prototype_losses`, the package before commit 80df072 / the fused autograd function it
   ported); Sinkhorn clustering (the package's log domain / the proposed exp domain).
3. Whole training step and inference: the package / the package with the proposals (exp-domain
   Sinkhorn in training, BatchNorms folded at inference) / SegFormer, interleaved.

    python -m benchmarks.proposal_gain [--setting gpu] [--quick]
"""

from __future__ import annotations


import torch
import torch.nn.functional as F

from benchmarks.common import (
    Summary,
    base_argument_parser,
    build_protoseg,
    build_segformer,
    device_for,
    machine_description,
    machine_line,
    make_inference,
    make_train_step,
    markdown_table,
    results_suffix,
    set_threads,
    synthetic_batch,
    time_interleaved,
    write_json,
)
from benchmarks.proposals.faster_forward import (
    FasterForwardOptions,
    FasterProtoSegForSemanticSegmentation,
    sinkhorn_assign_pixels_exp_domain,
)
from modeling_protoseg.losses import class_scores_and_prototype_losses, pixel_prototype_losses
from modeling_protoseg.prototypes import sinkhorn_assign_pixels


def build_faster(num_classes: int, options: FasterForwardOptions | None = None) -> FasterProtoSegForSemanticSegmentation:
    reference = build_protoseg(num_classes)
    model = FasterProtoSegForSemanticSegmentation(reference.config)
    model.load_state_dict(reference.state_dict())
    model.faster_options = options or FasterForwardOptions()
    return model


def exactness(num_classes: int = 19, image_size: int = 128, device: torch.device = torch.device("cpu")) -> dict:
    """Largest differences between the package's forward/backward/update and the proposed one (MiT-B0)."""
    reference = build_protoseg(num_classes).to(device)
    proposed = build_faster(num_classes).to(device)
    pixel_values, labels = synthetic_batch(2, image_size, num_classes, device=device)
    outputs = {}
    for name, model in (("reference", reference), ("proposed", proposed)):
        # The decoder's dropout mask is drawn over NCHW in one and over rows in the other: switch it off.
        model.decode_head.dropout.p = 0.0
        model.train()
        torch.manual_seed(1)  # the same stochastic-depth draws in the encoder
        outputs[name] = model(pixel_values=pixel_values, labels=labels)
        outputs[name].loss.backward()
    report = {}
    for key in ("loss", "ce_loss", "ppc_loss", "ppd_loss"):
        report[f"{key}_abs_diff"] = abs(getattr(outputs["reference"], key).item() - getattr(outputs["proposed"], key).item())
    logits_ref, logits_new = outputs["reference"].logits, outputs["proposed"].logits
    report["train_logits_max_abs_diff"] = (logits_ref - logits_new).abs().max().item()
    report["train_logits_max_abs"] = logits_ref.abs().max().item()
    report["prototypes_max_abs_diff_after_update"] = (reference.prototypes - proposed.prototypes).abs().max().item()
    gradients_ref = torch.cat([p.grad.flatten() for p in reference.parameters()])
    gradients_new = torch.cat([p.grad.flatten() for p in proposed.parameters()])
    report["gradient_relative_l2_diff"] = ((gradients_ref - gradients_new).norm() / gradients_ref.norm()).item()
    worst = 0.0
    largest_norm = max(p.grad.norm().item() for p in reference.parameters())
    for p, q in zip(reference.parameters(), proposed.parameters()):
        if p.grad.norm().item() > 1e-4 * largest_norm:  # biases right before a BatchNorm have zero gradient
            worst = max(worst, ((p.grad - q.grad).norm() / p.grad.norm()).item())
    report["gradient_worst_relative_l2_diff_per_tensor"] = worst
    reference.eval(), proposed.eval()  # BatchNorm running statistics now moved by the step: folds non-trivial
    with torch.inference_mode():
        eval_ref = reference(pixel_values=pixel_values).logits
        eval_new = proposed(pixel_values=pixel_values).logits
    report["eval_logits_max_abs_diff"] = (eval_ref - eval_new).abs().max().item()
    report["eval_argmax_agreement"] = (eval_ref.argmax(1) == eval_new.argmax(1)).float().mean().item()
    # Sinkhorn alone on a larger problem: 150 classes, 32,768 pixels, K = 10, cosine similarities
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


def part_timings(num_classes: int, batch_size: int, image_size: int, *, repetitions: int, device: torch.device) -> dict:
    """Forward + backward of the parts the proposal changes, current vs proposed, interleaved."""
    model = build_protoseg(num_classes).to(device).train()
    config = model.config
    num_prototypes = config.num_prototypes_per_class
    pixel_values, labels = synthetic_batch(batch_size, image_size, num_classes, device=device)
    with torch.no_grad():
        feature_maps = [f.detach() for f in model._encode(pixel_values)]
        embeddings = model.projection_head(model.decode_head(feature_maps))
        rows = embeddings.permute(0, 2, 3, 1).reshape(-1, embeddings.shape[1])
        flat_prototypes = model.prototypes.reshape(num_classes * num_prototypes, -1)
        similarities = rows @ flat_prototypes.T
    similarities_leaf = similarities.clone().requires_grad_(True)
    num_pixels = similarities.shape[0]
    targets = torch.randint(0, num_classes * num_prototypes, (num_pixels,), device=device)
    weights = (torch.rand(num_pixels, device=device) > 0.05).float()
    class_grad = torch.randn(num_pixels, num_classes, device=device)

    def scores_losses_current() -> None:  # amax + pixel_prototype_losses: the package before 80df072
        scores = similarities_leaf.view(num_pixels, num_classes, num_prototypes).amax(dim=-1)
        ppc, ppd = pixel_prototype_losses(similarities_leaf, targets, weights, temperature=config.ppc_temperature)
        torch.autograd.backward([scores, ppc + ppd], [class_grad, None])
        similarities_leaf.grad = None

    def scores_losses_fused() -> None:
        scores, ppc, ppd = class_scores_and_prototype_losses(
            similarities_leaf, targets, weights, num_classes=num_classes, temperature=config.ppc_temperature
        )
        torch.autograd.backward([scores, ppc + ppd], [class_grad, None])
        similarities_leaf.grad = None

    groups_of_pixels = torch.randint(0, num_classes + 1, (num_pixels,), device=device)
    own_similarities = similarities.view(num_pixels, num_classes, num_prototypes)[:, 0].contiguous()

    def sinkhorn_current() -> None:
        sinkhorn_assign_pixels(own_similarities, groups_of_pixels, num_classes + 1, iterations=3, epsilon=0.05)

    def sinkhorn_exp_domain() -> None:
        sinkhorn_assign_pixels_exp_domain(own_similarities, groups_of_pixels, num_classes + 1, iterations=3,
                                          epsilon=0.05)

    groups = {
        "class scores + PPC + PPD (fwd+bwd); fused: ported in 80df072": {
            "current": scores_losses_current, "fused": scores_losses_fused,
        },
        "Sinkhorn clustering, 3 iterations (proposed)": {"current": sinkhorn_current, "exp domain": sinkhorn_exp_domain},
    }
    results = {}
    for group, candidates in groups.items():
        times = time_interleaved(candidates, repetitions=repetitions, device=device)
        results[group] = {
            name: {"wall_seconds": Summary.of(times.wall[name]).as_dict(),
                   "ratio_to_current": Summary.of(times.ratios(name, "current")).as_dict()}
            for name in candidates
        }
    return {"num_classes": num_classes, "batch_size": batch_size, "image_size": image_size,
            "repetitions": repetitions, "parts": results}


def whole_timings(num_classes: int, batch_size: int, image_size: int, *, mode: str, repetitions: int,
                  device: torch.device) -> dict:
    """Training step or inference of current ProtoSeg, proposed ProtoSeg and SegFormer, interleaved."""
    pixel_values, labels = synthetic_batch(batch_size, image_size, num_classes, device=device)
    models = {
        "protoseg (current)": build_protoseg(num_classes).to(device),
        "protoseg (proposed)": build_faster(num_classes).to(device),
        "segformer": build_segformer(num_classes).to(device),
    }
    if mode == "train":
        candidates = {name: make_train_step(model, pixel_values, labels) for name, model in models.items()}
    else:  # inference: the proposal folds the eval-mode BatchNorms
        candidates = {name: make_inference(model, pixel_values) for name, model in models.items()}
    times = time_interleaved(candidates, repetitions=repetitions, device=device)
    return {
        "mode": mode, "num_classes": num_classes, "batch_size": batch_size, "image_size": image_size,
        "repetitions": repetitions,
        "wall_seconds": {name: Summary.of(times.wall[name]).as_dict() for name in candidates},
        "ratio_to_segformer": {name: Summary.of(times.ratios(name, "segformer")).as_dict() for name in candidates},
        "proposed_over_current": Summary.of(times.ratios("protoseg (proposed)", "protoseg (current)")).as_dict(),
    }


def _summary_text(summary: dict, digits: int = 2, scale: float = 1.0) -> str:
    return f"{summary['median'] * scale:.{digits}f} [{summary['q1'] * scale:.{digits}f}, {summary['q3'] * scale:.{digits}f}]"


def _markdown(payload: dict) -> str:
    lines = ["### Exactness of a training step and the eval forward after it (MiT-B0, 19 classes, batch 2, 128x128, same weights and random "
             "state); Sinkhorn alone: 150 classes, 32,768 pixels", ""]
    lines.append(markdown_table(["quantity", "value"], [[k, f"{v:.3g}"] for k, v in payload["exactness"].items()]))
    for part in payload["parts"]:
        lines += ["", f"### Parts: {part['num_classes']} classes, batch {part['batch_size']}, "
                  f"{part['image_size']}x{part['image_size']}, {part['repetitions']} interleaved repetitions", ""]
        rows = []
        for group, candidates in part["parts"].items():
            for name, values in candidates.items():
                rows.append([group, name, _summary_text(values["wall_seconds"], 1, 1e3),
                             _summary_text(values["ratio_to_current"])])
        lines.append(markdown_table(["part", "variant", "ms median [q1, q3]", "time / current"], rows))
    rows = []
    for whole in payload["whole"]:
        for name in whole["wall_seconds"]:
            rows.append([f"{whole['mode']} C={whole['num_classes']} B={whole['batch_size']} {whole['image_size']}px",
                         name, _summary_text(whole["wall_seconds"][name], 3), _summary_text(whole["ratio_to_segformer"][name])])
        rows.append(["", "proposed / current", "", _summary_text(whole["proposed_over_current"])])
    lines += ["", "### Whole training step / inference (interleaved repetitions; ratios per repetition)", ""]
    lines.append(markdown_table(["cell", "model", "seconds median [q1, q3]", "ratio median [q1, q3]"], rows))
    return "\n".join(lines)


def main() -> None:
    parser = base_argument_parser(__doc__.splitlines()[0])
    args = parser.parse_args()
    device = device_for(args.setting)
    set_threads(args.threads)
    repetitions = args.repetitions or (2 if args.quick else 5)
    if args.quick:
        part_cells, whole_cells = [(19, 2, 64)], [("train", 19, 2, 64), ("infer", 19, 2, 64)]
    elif args.setting == "gpu":
        part_cells = [(150, 8, 512), (847, 8, 512)]
        whole_cells = [("train", 150, 8, 512), ("train", 847, 8, 512), ("infer", 19, 8, 512), ("infer", 150, 8, 512)]
    else:
        part_cells = [(150, 8, 256), (847, 2, 256)]
        whole_cells = [("train", 150, 8, 256), ("train", 847, 2, 256), ("infer", 19, 8, 512), ("infer", 150, 8, 512)]
    payload = {"machine": machine_description(device), "threads": args.threads}
    print("exactness", flush=True)
    payload["exactness"] = exactness(19, 64 if args.quick else 128, device=device)
    payload["parts"] = []
    for cell in part_cells:
        print("parts", cell, flush=True)
        payload["parts"].append(part_timings(*cell, repetitions=repetitions, device=device))
    payload["whole"] = []
    for mode, *cell in whole_cells:
        print("whole", mode, cell, flush=True)
        payload["whole"].append(whole_timings(*cell, mode=mode, repetitions=repetitions, device=device))
    suffix = results_suffix(args.setting, args.quick)
    write_json(args.output / f"proposal_gain{suffix}.json", payload)
    text = _markdown(payload)
    (args.output / f"proposal_gain{suffix}.md").write_text(f"Machine: {machine_line(payload['machine'])}\n\n{text}\n")
    print(text)


if __name__ == "__main__":
    main()
