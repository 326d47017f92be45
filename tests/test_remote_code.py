"""What `save_pretrained` ships as remote code, per encoder and head, and that it alone loads and runs the model.

A checkpoint carries the files loading and running its model needs and no others: no EfficientNet-Lite file unless its
encoder is EfficientNet-Lite, no ProtoSeg prototype modules for the linear head, and never the training-only pixel
contrast or the tools (visualisation, weight conversion). Every kind loads with `trust_remote_code=True` in a fresh
Python that cannot import this repository, and gives the original model's logits.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from isolated_python import run_python_without_repository
from tiny_models import (
    tiny_efficientnet_lite_encoder_config,
    tiny_linear_head_config,
    tiny_protoseg_config,
    tiny_swin_encoder_config,
)
from transformers import SegformerImageProcessor

import modeling_protoseg
from modeling_protoseg import ProtoSegForSemanticSegmentation, ProtoSegLinearHeadForSemanticSegmentation

SHARED_CODE = {
    "transformers_requirement.py", "remote_code_encoders.py", "configuration_encoders.py", "encoders.py",
    "batch_norm_statistics.py", "decode_head.py", "losses.py", "pipeline_registration.py",
}  # fmt: skip
PROTOSEG_CODE = SHARED_CODE | {
    "configuration_protoseg.py", "modeling_protoseg.py", "prototypes.py", "class_scores.py", "class_enrolment.py",
}  # fmt: skip
LINEAR_HEAD_CODE = SHARED_CODE | {"configuration_protoseg_linear_head.py", "modeling_protoseg_linear_head.py"}
EFFICIENTNET_LITE_CODE = {"configuration_efficientnet_lite.py", "modeling_efficientnet_lite.py"}
# Never shipped: training-only code and tools (they live in training/ and protoseg_tools/).
NEVER_SHIPPED = {"pixel_contrast.py", "visualize.py", "convert_efficientnet_lite0.py"}

KINDS = {
    "protoseg-mit": (lambda: ProtoSegForSemanticSegmentation(tiny_protoseg_config()), PROTOSEG_CODE),
    "protoseg-swin": (
        lambda: ProtoSegForSemanticSegmentation(tiny_protoseg_config(encoder_config=tiny_swin_encoder_config())),
        PROTOSEG_CODE,
    ),
    "protoseg-lite": (
        lambda: ProtoSegForSemanticSegmentation(
            tiny_protoseg_config(encoder_config=tiny_efficientnet_lite_encoder_config())
        ),
        PROTOSEG_CODE | EFFICIENTNET_LITE_CODE,
    ),
    "linear-mit": (lambda: ProtoSegLinearHeadForSemanticSegmentation(tiny_linear_head_config()), LINEAR_HEAD_CODE),
    "linear-lite": (
        lambda: ProtoSegLinearHeadForSemanticSegmentation(
            tiny_linear_head_config(encoder_config=tiny_efficientnet_lite_encoder_config())
        ),
        LINEAR_HEAD_CODE | EFFICIENTNET_LITE_CODE,
    ),
}
IMAGE_SIZE = 64


def save_kind(kind: str, folder: Path) -> torch.nn.Module:
    """A tiny model of `kind` saved to `folder` with its image processor (what the pipeline needs)."""
    model = KINDS[kind][0]().eval()
    model.save_pretrained(folder)
    normalization = model.config.input_normalization
    SegformerImageProcessor(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_mean=list(normalization.mean),
        image_std=list(normalization.std),
    ).save_pretrained(folder)  # fmt: skip
    return model


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_checkpoint_carries_exactly_the_code_its_encoder_and_head_need(kind, tmp_path):
    save_kind(kind, tmp_path)
    shipped = {name for name in os.listdir(tmp_path) if name.endswith(".py")}
    assert shipped == KINDS[kind][1], (sorted(shipped - KINDS[kind][1]), sorted(KINDS[kind][1] - shipped))
    assert not shipped & NEVER_SHIPPED
    encoder_config = json.loads((tmp_path / "config.json").read_text())["encoder_config"]
    if "lite" in kind:  # the nested auto_map that loading the copied encoder code reads
        assert encoder_config["auto_map"] == {
            "AutoBackbone": "modeling_efficientnet_lite.ProtoSegEfficientNetLiteBackbone",
            "AutoConfig": "configuration_efficientnet_lite.ProtoSegEfficientNetLiteConfig",
        }
    else:
        assert "auto_map" not in encoder_config and not shipped & EFFICIENTNET_LITE_CODE


def test_the_model_package_holds_no_training_only_code_or_tools():
    package_folder = Path(modeling_protoseg.__file__).parent
    assert not {source.name for source in package_folder.glob("*.py")} & NEVER_SHIPPED
    for source in package_folder.glob("*.py"):  # the model code never reaches into the training code
        assert "training" not in {line.split()[1].split(".")[0] for line in source.read_text().splitlines()
                                  if line.startswith(("import ", "from "))}, source.name  # fmt: skip


REMOTE_CODE_CHECK = """
    import json, os, sys
    import numpy as np, torch
    from PIL import Image
    from transformers import AutoModelForSemanticSegmentation, pipeline

    results = {}
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (48, 40, 3), dtype=np.uint8))
    for kind in sys.argv[1:]:
        model = AutoModelForSemanticSegmentation.from_pretrained(kind, trust_remote_code=True).eval()
        reference = torch.load(f"{kind}.pt")
        with torch.no_grad():
            logits = model(reference["pixel_values"]).logits
        segments = pipeline("image-segmentation", model=kind, trust_remote_code=True)(image)
        model.save_pretrained(f"{kind}-saved-again")
        results[kind] = {
            "model_module": type(model).__module__,
            "encoder_class": type(model.encoder).__name__,
            "max_logit_difference": float((logits - reference["logits"]).abs().max()),
            "mask_sizes": sorted({tuple(segment["mask"].size) for segment in segments}),
            "saved_again": sorted(name for name in os.listdir(f"{kind}-saved-again") if name.endswith(".py")),
        }
    assert not any(name.split(".")[0] == "modeling_protoseg" for name in sys.modules)
    print(json.dumps(results))
    """


def test_every_kind_loads_as_remote_code_in_a_python_without_the_repository(tmp_path):
    for kind in KINDS:
        model = save_kind(kind, tmp_path / kind)
        pixel_values = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE)
        with torch.no_grad():
            torch.save({"pixel_values": pixel_values, "logits": model(pixel_values).logits}, tmp_path / f"{kind}.pt")
    completed = run_python_without_repository(
        REMOTE_CODE_CHECK, *KINDS, cwd=tmp_path,
        environment={"HF_MODULES_CACHE": str(tmp_path / "modules"), "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert "is not supported for image-segmentation" not in completed.stderr, completed.stderr[-4000:]
    results = json.loads(completed.stdout.strip().splitlines()[-1])
    for kind, result in results.items():
        assert result["model_module"].startswith("transformers_modules."), (kind, result)
        assert result["max_logit_difference"] <= 1e-5, (kind, result)
        assert result["mask_sizes"] == [[40, 48]], (kind, result)
        assert set(result["saved_again"]) == KINDS[kind][1], (kind, result)  # the copied code ships itself again
    assert results["protoseg-lite"]["encoder_class"] == results["linear-lite"]["encoder_class"] == (
        "ProtoSegEfficientNetLiteBackbone"
    )
    assert results["protoseg-swin"]["encoder_class"] == "SwinBackbone"
    assert results["protoseg-mit"]["encoder_class"] == "SegformerModel"
