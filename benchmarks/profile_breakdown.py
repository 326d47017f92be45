"""Where ProtoSeg's time goes, stage by stage, next to SegFormer's, for one training step and one inference.

Each stage runs alone on inputs captured from a real forward (detached leaves that require grad, so
its backward runs too, seeded with a gradient of the output's shape), and all stages of both models are
timed interleaved in the same repetitions. Training stages (forward + backward each):
    encoder | decode head (SegFormer: with its classifier) | projection head | similarity GEMM |
    class scores + PPC + PPD (the package's fused function) | class-score norm + logits layout |
    CE (upsample + cross-entropy) | clustering (no grad) | prototype update (no grad) | AdamW step
The stages follow `ProtoSegForSemanticSegmentation.forward` through the model's public submodules and
functions; the clustering and the update, which the package runs only inside its forward, are those of
`benchmarks/clustering.py` (checked there against the public forward). Stages run alone pay a little
more (fresh gradient buffers, no overlap), so their sum is reported beside a measured full step: read the
shares, not the absolute sum.

    python -m benchmarks.profile_breakdown                 # CPU setting
    python -m benchmarks.profile_breakdown --setting gpu
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from benchmarks.clustering import capture_training_step, cluster_pixels, update_prototypes
from benchmarks.common import (
    base_argument_parser,
    build_protoseg,
    build_segformer,
    machine_line,
    make_inference,
    make_train_step,
    markdown_table,
    mit_feature_maps,
    results_suffix,
    start_run,
    synthetic_batch,
    time_interleaved,
    write_json,
)
from modeling_protoseg.class_scores import nearest_prototype_scores
from modeling_protoseg.losses import class_scores_and_prototype_losses, pixel_cross_entropy

Stage = Callable[[], None]


def _leaf(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().clone().requires_grad_(True)


def _forward_backward(function: Callable[[], torch.Tensor | tuple[torch.Tensor, ...]], seeds) -> Stage:
    """A stage that runs `function` and back-propagates the fixed `seeds` (one per output)."""

    def run() -> None:
        outputs = function()
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        torch.autograd.backward(outputs, seeds)

    return run


def _seed_like(outputs: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    return tuple(torch.randn_like(output) if output.ndim else torch.ones_like(output) for output in outputs)


def protoseg_training_stages(model, pixel_values: torch.Tensor, labels: torch.Tensor) -> dict[str, Stage]:
    """The training step of the package's model, cut into separately timed stages (its public submodules,
    its fused class-score/PPC/PPD function, and the clustering and update of `benchmarks.clustering`,
    checked there against the public forward)."""
    model.train()
    config = model.config
    num_classes = config.num_labels
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, foreach=True)
    step = capture_training_step(model, pixel_values, labels)  # clustering/update inputs, rebuild checked

    with torch.no_grad():
        feature_maps = mit_feature_maps(model.encoder, pixel_values)
        decoded = model.decode_head(list(feature_maps))
        embeddings = model.projection_head(decoded)
    batch_size, embedding_dim, height, width = embeddings.shape
    feature_leaves = [_leaf(feature_map) for feature_map in feature_maps]
    decoded_leaf, embeddings_leaf = _leaf(decoded), _leaf(embeddings)  # clones keep the channels-last strides
    flat_prototypes = model.prototypes.reshape(-1, embedding_dim).clone()

    def similarity_gemm() -> torch.Tensor:
        rows = embeddings_leaf.permute(0, 2, 3, 1).reshape(-1, embedding_dim)  # a view
        return rows @ flat_prototypes.T

    similarities_leaf = _leaf(step.similarities)

    def scores_and_losses() -> tuple[torch.Tensor, torch.Tensor]:
        class_scores, ppc, ppd = class_scores_and_prototype_losses(
            similarities_leaf, step.clusters.target_prototypes, step.clusters.labelled,
            num_classes=num_classes, temperature=config.ppc_temperature,
        )
        return class_scores, ppc + ppd

    class_scores_leaf = _leaf(step.similarities.view(-1, num_classes, config.num_prototypes_per_class).amax(dim=-1))

    def norm_and_layout() -> torch.Tensor:
        pixel_logits = model.class_score_norm(class_scores_leaf)
        return pixel_logits.view(batch_size, height, width, num_classes).permute(0, 3, 1, 2)  # channels-last view

    with torch.no_grad():
        logits = norm_and_layout()
    logits_leaf = _leaf(logits)

    for parameter in model.parameters():  # give AdamW gradients to step on
        parameter.grad = torch.randn_like(parameter) * 1e-3

    return {
        "encoder": _forward_backward(lambda: mit_feature_maps(model.encoder, pixel_values), _seed_like(feature_maps)),
        "decode head": _forward_backward(lambda: model.decode_head(feature_leaves), _seed_like(decoded)),
        "projection head": _forward_backward(lambda: model.projection_head(decoded_leaf), _seed_like(embeddings)),
        "similarity GEMM": _forward_backward(similarity_gemm, _seed_like(step.similarities)),
        "class scores + PPC + PPD (fused)": _forward_backward(
            scores_and_losses, (torch.randn_like(class_scores_leaf), torch.ones(()))
        ),
        "class-score norm + layout": _forward_backward(norm_and_layout, _seed_like(logits)),
        "CE loss": _forward_backward(
            lambda: pixel_cross_entropy(logits_leaf, labels, config.semantic_loss_ignore_index), None
        ),
        "clustering": lambda: cluster_pixels(config, step.similarities, labels, step.height, step.width),
        "prototype update": lambda: update_prototypes(
            config, step.bank, step.pixel_embeddings, step.pixel_logits, step.clusters
        ),
        "optimizer step": optimizer.step,
    }


def segformer_training_stages(model, pixel_values: torch.Tensor, labels: torch.Tensor) -> dict[str, Stage]:
    """The SegFormer training step cut into the same stages (its decode head includes the classifier)."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, foreach=True)
    with torch.no_grad():
        feature_maps = mit_feature_maps(model.segformer, pixel_values)
        logits = model.decode_head(list(feature_maps))
    feature_leaves = [_leaf(feature_map) for feature_map in feature_maps]
    logits_leaf = _leaf(logits)

    def segformer_loss() -> torch.Tensor:  # as SegformerForSemanticSegmentation.forward computes it
        upsampled = F.interpolate(logits_leaf, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        return F.cross_entropy(upsampled, labels, ignore_index=model.config.semantic_loss_ignore_index)

    for parameter in model.parameters():
        parameter.grad = torch.randn_like(parameter) * 1e-3
    return {
        "encoder": _forward_backward(lambda: mit_feature_maps(model.segformer, pixel_values), _seed_like(feature_maps)),
        "decode head": _forward_backward(lambda: model.decode_head(feature_leaves), _seed_like(logits)),
        "CE loss": _forward_backward(segformer_loss, None),
        "optimizer step": optimizer.step,
    }


def protoseg_inference_stages(model, pixel_values: torch.Tensor) -> dict[str, Stage]:
    model.eval()
    config = model.config
    num_classes, num_prototypes = config.num_labels, config.num_prototypes_per_class
    with torch.inference_mode():
        feature_maps = mit_feature_maps(model.encoder, pixel_values)
        decoded = model.decode_head(list(feature_maps))
        embeddings = model.projection_head(decoded)
    batch_size, embedding_dim, height, width = embeddings.shape
    flat_prototypes = model.prototypes.reshape(num_classes * num_prototypes, embedding_dim)

    def matching() -> None:  # as the package's forward: chunked GEMM + max over K, norm, channels-last view
        rows = embeddings.permute(0, 2, 3, 1).reshape(-1, embedding_dim)
        class_scores = nearest_prototype_scores(rows, flat_prototypes, num_classes)
        model.class_score_norm(class_scores).view(batch_size, height, width, num_classes).permute(0, 3, 1, 2)

    def similarity_gemm() -> None:
        embeddings.permute(0, 2, 3, 1).reshape(-1, embedding_dim) @ flat_prototypes.T

    def inference_mode(function: Callable[[], object]) -> Stage:
        def run() -> None:
            with torch.inference_mode():
                function()

        return run

    return {
        "encoder": inference_mode(lambda: mit_feature_maps(model.encoder, pixel_values)),
        "decode head": inference_mode(lambda: model.decode_head(list(feature_maps))),
        "projection head": inference_mode(lambda: model.projection_head(decoded)),
        "matching (chunked GEMM + max over K + norm)": inference_mode(matching),
        "(of which the similarity GEMM alone)": inference_mode(similarity_gemm),
    }


def segformer_inference_stages(model, pixel_values: torch.Tensor) -> dict[str, Stage]:
    model.eval()
    with torch.inference_mode():
        feature_maps = mit_feature_maps(model.segformer, pixel_values)

    def run_encoder() -> None:
        with torch.inference_mode():
            mit_feature_maps(model.segformer, pixel_values)

    def run_decoder() -> None:
        with torch.inference_mode():
            model.decode_head(list(feature_maps))

    return {"encoder": run_encoder, "decode head": run_decoder}


def breakdown(
    num_classes: int, batch_size: int, image_size: int, *, mode: str, repetitions: int, device: torch.device
) -> dict:
    """Stage times of both models (interleaved), plus the measured full step/forward of each."""
    pixel_values, labels = synthetic_batch(batch_size, image_size, num_classes, device=device)
    protoseg, segformer = build_protoseg(num_classes).to(device), build_segformer(num_classes).to(device)
    if mode == "train":
        stages = {f"protoseg/{k}": v for k, v in protoseg_training_stages(protoseg, pixel_values, labels).items()}
        stages |= {f"segformer/{k}": v for k, v in segformer_training_stages(segformer, pixel_values, labels).items()}
        stages["protoseg/FULL STEP"] = make_train_step(protoseg, pixel_values, labels)
        stages["segformer/FULL STEP"] = make_train_step(segformer, pixel_values, labels)
    else:
        stages = {f"protoseg/{k}": v for k, v in protoseg_inference_stages(protoseg, pixel_values).items()}
        stages |= {f"segformer/{k}": v for k, v in segformer_inference_stages(segformer, pixel_values).items()}
        stages["protoseg/FULL FORWARD"] = make_inference(protoseg, pixel_values)
        stages["segformer/FULL FORWARD"] = make_inference(segformer, pixel_values)
    times = time_interleaved(stages, repetitions=repetitions, device=device)
    return {
        "mode": mode, "num_classes": num_classes, "batch_size": batch_size, "image_size": image_size,
        "repetitions": repetitions, "stages": times.as_dict()["wall_seconds"],
        "stages_cpu_seconds": times.as_dict()["cpu_seconds"],
    }


def _markdown(result: dict) -> str:
    stages = result["stages"]
    rows = []
    for model_name in ("protoseg", "segformer"):
        full_key = next(key for key in stages if key.startswith(model_name + "/FULL"))
        parts = [key for key in stages if key.startswith(model_name + "/") and key != full_key]
        counted = [key for key in parts if "(of which" not in key]
        total = sum(stages[key]["median"] for key in counted)
        for key in parts:
            median = stages[key]["median"]
            rows.append([model_name, key.split("/", 1)[1], f"{median * 1e3:.1f}",
                         f"[{stages[key]['q1'] * 1e3:.1f}, {stages[key]['q3'] * 1e3:.1f}]", f"{100 * median / total:.1f}%" if key in counted else ""])
        rows.append([model_name, "sum of stages", f"{total * 1e3:.1f}", "", "100%"])
        rows.append([model_name, full_key.split("/", 1)[1].lower() + " (measured)", f"{stages[full_key]['median'] * 1e3:.1f}",
                     f"[{stages[full_key]['q1'] * 1e3:.1f}, {stages[full_key]['q3'] * 1e3:.1f}]", ""])
    title = (f"{result['mode']}: {result['num_classes']} classes, batch {result['batch_size']}, "
             f"{result['image_size']}x{result['image_size']}, {result['repetitions']} interleaved repetitions")
    return f"#### {title}\n\n" + markdown_table(["model", "stage", "median ms", "[q1, q3] ms", "share of sum"], rows)


def main() -> None:
    parser = base_argument_parser(__doc__.splitlines()[0])
    args, device, machine = start_run(parser)
    repetitions = args.repetitions or (2 if args.quick else 5)
    if args.quick:
        cells = [("train", 19, 2, 64), ("infer", 19, 1, 64)]
    elif args.setting == "gpu":
        cells = [("train", 150, 8, 512), ("train", 847, 8, 512), ("infer", 150, 8, 512), ("infer", 847, 8, 512)]
    else:  # CPU: crops of the CPU grid of train_step.py / latency.py (847 classes at batch 2 to save time)
        cells = [("train", 150, 8, 256), ("train", 847, 2, 256), ("infer", 19, 8, 512), ("infer", 847, 1, 512)]
    results = []
    for mode, num_classes, batch_size, image_size in cells:
        print(f"breakdown {mode} C={num_classes} B={batch_size} {image_size}px", flush=True)
        results.append(breakdown(num_classes, batch_size, image_size, mode=mode, repetitions=repetitions, device=device))
    suffix = results_suffix(args.setting, args.quick)
    write_json(args.output / f"profile_breakdown{suffix}.json", {"machine": machine, "results": results})
    text = "\n\n".join(_markdown(result) for result in results)
    (args.output / f"profile_breakdown{suffix}.md").write_text(f"Machine: {machine_line(machine)}\n\n{text}\n")
    print(text)


if __name__ == "__main__":
    main()
