"""torch.compile training on two input sizes. With torch 2.13's inductor, the default (automatic dynamic shapes
after the first size) fails on the second size ("cannot determine truth value of Relational" while ordering the
symbolic strides of the `transpose(1, 2).reshape(...)` view in transformers' SegFormer attention, i.e. inside the
MiT encoder, not in ProtoSeg's own code); compiling with `dynamic=False` (every dimension marked static: one
graph per input size) trains on both sizes and matches eager exactly.

Inductor compiles take minutes on a busy 2-core CPU, so this runs only with PROTOSEG_COMPILE_TESTS=1."""

from __future__ import annotations

import copy
import os
import shutil

import pytest
import torch
from tiny_models import tiny_protoseg_config

from modeling_protoseg import ProtoSegForSemanticSegmentation

pytestmark = [
    pytest.mark.skipif(
        not os.environ.get("PROTOSEG_COMPILE_TESTS"),
        reason="inductor compiles take minutes on a CPU; set PROTOSEG_COMPILE_TESTS=1 to run",
    ),
    pytest.mark.skipif(
        shutil.which("c++") is None and shutil.which("g++") is None, reason="inductor needs a C++ compiler"
    ),
    pytest.mark.timeout(900),
]


def test_compiled_training_with_static_shapes_runs_two_input_sizes_as_eager():
    model = ProtoSegForSemanticSegmentation(tiny_protoseg_config(3)).train()
    eager_model = copy.deepcopy(model)
    compiled = torch.compile(model, dynamic=False)
    generator = torch.Generator().manual_seed(0)
    for height, width in ((32, 32), (64, 48)):
        pixel_values = torch.randn(2, 3, height, width, generator=generator)
        labels = torch.randint(0, 3, (2, height, width), generator=generator)
        loss = compiled(pixel_values, labels=labels).loss
        loss.backward()
        eager_loss = eager_model(pixel_values, labels=labels).loss
        eager_loss.backward()
        torch.testing.assert_close(loss, eager_loss, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(model.prototypes, eager_model.prototypes, rtol=1e-4, atol=1e-5)
