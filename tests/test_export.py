"""Export: ONNX (TorchScript-based and dynamo exporters, run in onnxruntime) and torch.jit.trace give PyTorch's
logits, also when inference would chunk the prototype similarities."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import tiny_protoseg_config

from modeling_protoseg import ProtoSegForSemanticSegmentation, class_scores


class LogitsOnly(torch.nn.Module):
    """pixel_values -> logits, the graph an exporter records (as optimum's ONNX config does)."""

    def __init__(self, model: ProtoSegForSemanticSegmentation) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


@pytest.fixture
def exported_model(monkeypatch) -> LogitsOnly:
    """A tiny trained-looking ProtoSeg whose eager inference chunks the similarities (64-row chunks)."""
    monkeypatch.setitem(class_scores.nearest_prototype_scores.__kwdefaults__, "chunk_bytes", 1024)
    model = ProtoSegForSemanticSegmentation(tiny_protoseg_config(3)).train()
    generator = torch.Generator().manual_seed(0)
    model(torch.randn(2, 3, 32, 32, generator=generator), labels=torch.randint(0, 3, (2, 32, 32), generator=generator))
    # The wrapper in eval mode too: the TorchScript exporter restores the wrapper's mode on every submodule.
    return LogitsOnly(model).eval()


def inputs(seed: int, height: int = 64, width: int = 96) -> torch.Tensor:
    return torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(seed))


def onnxruntime_logits(path, pixel_values: torch.Tensor) -> np.ndarray:
    onnxruntime = pytest.importorskip("onnxruntime")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {session.get_inputs()[0].name: pixel_values.numpy()})
    return logits


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript_exporter", "dynamo_exporter"])
def test_onnx_export_under_no_grad_gives_pytorchs_logits(exported_model, dynamo, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    if dynamo:
        pytest.importorskip("onnxscript")
    path = tmp_path / "protoseg.onnx"
    with torch.no_grad():
        if dynamo:
            torch.onnx.export(
                exported_model,
                (inputs(0),),
                str(path),
                input_names=["pixel_values"],
                output_names=["logits"],
                dynamic_shapes={
                    "pixel_values": {
                        0: torch.export.Dim("batch"),
                        2: 32 * torch.export.Dim("h32"),
                        3: 32 * torch.export.Dim("w32"),
                    }
                },
                dynamo=True,
            )
        else:
            torch.onnx.export(
                exported_model,
                (inputs(0),),
                str(path),
                input_names=["pixel_values"],
                output_names=["logits"],
                dynamic_axes={"pixel_values": {0: "batch", 2: "height", 3: "width"}},
                dynamo=False,
            )
        assert not exported_model.model.training
        for pixel_values in (inputs(1), inputs(2, height=96, width=64)):
            expected = exported_model(pixel_values).numpy()
            np.testing.assert_allclose(onnxruntime_logits(path, pixel_values), expected, rtol=1e-4, atol=1e-4)


def test_jit_trace_gives_pytorchs_logits(exported_model):
    with torch.no_grad():
        traced = torch.jit.trace(exported_model, (inputs(0),))
        for pixel_values in (inputs(1), inputs(2, height=96, width=64)):
            torch.testing.assert_close(traced(pixel_values), exported_model(pixel_values), rtol=1e-5, atol=1e-5)
