"""Learnable parameters vs number of classes (150 / 300 / 500 / 700 / 847), ProtoSeg vs SegFormer, MiT-B0.

The shape of the paper's Table 4 (there with MiT-B2: parametric 27.48 M -> 28.11 M from 150 to 847
classes, ProtoSeg flat at 27.37 M). Learnable = `requires_grad` parameters, what the optimizer updates;
the prototype buffer (C x K x D floats, saved in the checkpoint, never trained by gradient) is listed
apart. Exact counts: one run, no timing.

    python -m benchmarks.parameters        # --quick: the same counts, written as parameters_quick.*
"""

from __future__ import annotations

import torch

from benchmarks.common import (
    base_argument_parser,
    build_protoseg,
    build_segformer,
    count_learnable_parameters,
    machine_description,
    machine_line,
    markdown_table,
    results_suffix,
    write_json,
)
from benchmarks.plots import lines

CLASS_COUNTS = (150, 300, 500, 700, 847)
PAPER_TABLE_4_MIT_B2_MILLIONS = {  # (parametric K=1, ProtoSeg) learnable parameters, paper Table 4
    150: (27.48, 27.37), 300: (27.62, 27.37), 500: (27.80, 27.37), 700: (27.98, 27.37), 847: (28.11, 27.37),
}


def count(num_classes: int) -> dict:
    protoseg, segformer = build_protoseg(num_classes), build_segformer(num_classes)
    class_dependent = sum(p.numel() for p in protoseg.class_score_norm.parameters())
    return {
        "num_classes": num_classes,
        "protoseg_learnable": count_learnable_parameters(protoseg),
        "protoseg_class_dependent_learnable": class_dependent,
        "protoseg_prototype_buffer": protoseg.prototypes.numel(),
        "protoseg_projection_head": count_learnable_parameters(protoseg.projection_head),
        "segformer_learnable": count_learnable_parameters(segformer),
        "segformer_classifier": sum(p.numel() for p in segformer.decode_head.classifier.parameters()),
        "paper_mit_b2_millions": dict(zip(("parametric", "protoseg"), PAPER_TABLE_4_MIT_B2_MILLIONS[num_classes])),
    }


def main() -> None:
    parser = base_argument_parser(__doc__.splitlines()[0])
    args = parser.parse_args()
    rows_data = [count(num_classes) for num_classes in CLASS_COUNTS]
    million = 1e6
    rows = [[
        r["num_classes"], f"{r['protoseg_learnable'] / million:.4f}", f"{r['segformer_learnable'] / million:.4f}",
        f"{(r['segformer_learnable'] - r['protoseg_learnable']) / million:+.4f}",
        f"{r['segformer_classifier'] / million:.3f}", r["protoseg_class_dependent_learnable"],
        f"{r['protoseg_prototype_buffer'] / million:.3f}",
        f"{r['paper_mit_b2_millions']['parametric']:.2f} / {r['paper_mit_b2_millions']['protoseg']:.2f}",
    ] for r in rows_data]
    first, last = rows_data[0], rows_data[-1]
    growth_protoseg = last["protoseg_learnable"] - first["protoseg_learnable"]
    growth_segformer = last["segformer_learnable"] - first["segformer_learnable"]
    per_class_gap = (growth_segformer - growth_protoseg) / (last["num_classes"] - first["num_classes"])
    crossing = first["num_classes"] + (first["protoseg_learnable"] - first["segformer_learnable"]) / per_class_gap
    table = markdown_table(
        ["classes", "ProtoSeg learnable (M)", "SegFormer learnable (M)", "SegFormer - ProtoSeg (M)",
         "SegFormer classifier (M)", "ProtoSeg per-class learnable (class-score norm)",
         "ProtoSeg prototype buffer, not learnable (M floats)", "paper Table 4, MiT-B2: parametric / ProtoSeg (M)"],
        rows,
    )
    text = (
        f"Learnable parameters, MiT-B0 encoder, decoder width 256, ProtoSeg K = 10, D = 256 (torch {torch.__version__}).\n\n"
        f"{table}\n\nFrom {first['num_classes']} to {last['num_classes']} classes SegFormer grows by "
        f"{growth_segformer:,} learnable parameters (257 per class: a 256-wide classifier row and a bias); ProtoSeg by "
        f"{growth_protoseg:,} (2 per class: the weight and bias of `model.class_score_norm`, the "
        f"`ProtoSegClassScoreNorm` that turns class scores into logits, in its default 'affine' mode and in the paper's "
        f"'layer_norm' mode). ProtoSeg's prototypes are a non-learnable buffer (K x D = 2,560 floats per class) "
        f"that the checkpoint stores and the optimizer never sees. ProtoSeg's fixed extra is its projection head "
        f"({first['protoseg_projection_head']:,} parameters), so with this small encoder the two "
        f"counts cross at about {crossing:.0f} classes.\n"
    )
    machine = machine_description(torch.device("cpu"))
    suffix = results_suffix("cpu", args.quick)  # the counts need no GPU and no reduced size
    write_json(args.output / f"parameters{suffix}.json", {"machine": machine, "rows": rows_data})
    (args.output / f"parameters{suffix}.md").write_text(f"Machine: {machine_line(machine)}\n\n{text}")
    xs = list(CLASS_COUNTS)
    lines(
        args.output / f"parameters{suffix}.png",
        {
            "SegFormer (parametric) learnable": (xs, [r["segformer_learnable"] / million for r in rows_data], None, None),
            "ProtoSeg learnable": (xs, [r["protoseg_learnable"] / million for r in rows_data], None, None),
        },
        title="Learnable parameters vs classes (MiT-B0): the paper's Table 4 shape",
        xlabel="number of classes", ylabel="learnable parameters (M)",
    )
    print(text)


if __name__ == "__main__":
    main()
