"""from_pretrained / Auto classes / remote code / pipeline / pretrained encoders, all on local folders."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from isolated_python import run_python_without_repository
from tiny_models import tiny_protoseg_config, tiny_segformer_encoder_config, tiny_swin_encoder_config
from transformers import (
    AutoConfig,
    AutoModelForSemanticSegmentation,
    SegformerForSemanticSegmentation,
    SegformerImageProcessor,
    SegformerModel,
    SwinModel,
    pipeline,
)

from modeling_protoseg import ProtoSegConfig, ProtoSegForSemanticSegmentation


def save_checkpoint(folder, num_classes=3):
    model = ProtoSegForSemanticSegmentation(tiny_protoseg_config(num_classes=num_classes)).eval()
    model.save_pretrained(folder)
    SegformerImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return model


def test_auto_classes_load_a_saved_folder(tmp_path):
    model = save_checkpoint(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "protoseg"
    assert config["auto_map"] == {
        "AutoConfig": "configuration_protoseg.ProtoSegConfig",
        "AutoModelForSemanticSegmentation": "modeling_protoseg.ProtoSegForSemanticSegmentation",
    }
    assert isinstance(AutoConfig.from_pretrained(tmp_path), ProtoSegConfig)
    loaded = AutoModelForSemanticSegmentation.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, ProtoSegForSemanticSegmentation)
    pixel_values = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(loaded(pixel_values).logits, model(pixel_values).logits)


def test_loading_with_a_different_number_of_classes(tmp_path):
    model = save_checkpoint(tmp_path, num_classes=3)
    new_labels = {i: f"new_{i}" for i in range(5)}
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        ProtoSegForSemanticSegmentation.from_pretrained(tmp_path, id2label=new_labels)
    resized = ProtoSegForSemanticSegmentation.from_pretrained(
        tmp_path, id2label=new_labels, ignore_mismatched_sizes=True
    )
    assert resized.prototypes.shape == (5, 4, 8)
    torch.testing.assert_close(resized.prototypes.norm(dim=-1), torch.ones(5, 4))  # freshly initialised
    assert not torch.equal(resized.prototypes[:3], model.prototypes)
    for name, tensor in model.encoder.state_dict().items():  # the encoder still comes from the checkpoint
        assert torch.equal(resized.encoder.state_dict()[name], tensor), name


def test_pretrained_segformer_encoder_loads_into_a_new_model(tmp_path):
    encoder = SegformerModel(tiny_segformer_encoder_config()).eval()
    encoder.save_pretrained(tmp_path / "mit")
    model = ProtoSegForSemanticSegmentation.from_pretrained_encoder(
        str(tmp_path / "mit"), id2label={0: "a", 1: "b"}, num_prototypes_per_class=3, embedding_dim=8
    )
    assert model.prototypes.shape == (2, 3, 8) and model.config.encoder_config.model_type == "segformer"
    for name, tensor in encoder.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[name], tensor), name


def test_pretrained_encoder_from_a_segformer_segmentation_checkpoint(tmp_path):
    # e.g. "nvidia/segformer-b0-finetuned-ade-512-512": the encoder sits under the "segformer." prefix
    full = SegformerForSemanticSegmentation(tiny_segformer_encoder_config(num_labels=4)).eval()
    full.save_pretrained(tmp_path / "segformer")
    model = ProtoSegForSemanticSegmentation.from_pretrained_encoder(str(tmp_path / "segformer"), id2label={0: "a", 1: "b"})
    for name, tensor in full.segformer.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[name], tensor), name


def test_pretrained_swin_encoder_loads_into_a_new_model(tmp_path):
    swin = SwinModel(tiny_swin_encoder_config()).eval()
    swin.save_pretrained(tmp_path / "swin")
    model = ProtoSegForSemanticSegmentation.from_pretrained_encoder(str(tmp_path / "swin"), id2label={0: "a", 1: "b"})
    swin_weights = swin.state_dict()
    # SwinBackbone keeps the SwinModel weights under "swin."; its extra per-stage norms are new.
    encoder_weights = {name.removeprefix("swin."): t for name, t in model.encoder.state_dict().items()}
    for name, tensor in swin_weights.items():
        if not name.startswith("layernorm"):  # SwinModel's final norm is not part of the backbone
            assert torch.equal(encoder_weights[name], tensor), name
    assert model(torch.randn(1, 3, 64, 64)).logits.shape == (1, 2, 16, 16)


def test_pipeline_returns_one_labelled_mask_per_present_class_at_image_size(tmp_path):
    model = save_checkpoint(tmp_path)
    segmenter = pipeline("image-segmentation", model=str(tmp_path))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 40, 3), dtype=np.uint8))
    results = segmenter(image)
    inputs = SegformerImageProcessor.from_pretrained(tmp_path)(image, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    upsampled = torch.nn.functional.interpolate(logits, size=(48, 40), mode="bilinear", align_corners=False)
    expected = upsampled.argmax(dim=1)[0].numpy()
    assert sorted(r["label"] for r in results) == sorted(model.config.id2label[int(c)] for c in np.unique(expected))
    for result in results:
        assert result["mask"].size == (40, 48)
        class_index = model.config.label2id[result["label"]]
        assert np.array_equal(np.array(result["mask"]) > 0, expected == class_index)


# ------------------------------------------------------------------------------ the minimum transformers version


def test_the_version_check_names_the_version_needed_and_the_one_installed(monkeypatch):
    from modeling_protoseg import transformers_requirement

    monkeypatch.setattr(transformers_requirement.transformers, "__version__", "4.57.0")  # the module it reads
    with pytest.raises(ImportError, match=r"needs transformers >= 5\.20\.0, but transformers 4\.57\.0 is installed"):
        transformers_requirement.check_transformers_version()
    for older in ("4.99.9", "5.19.3", "5.2.0"):
        with pytest.raises(ImportError, match="pip install -U 'transformers>=5.20.0'"):
            transformers_requirement.check_transformers_version(older)
    for recent_enough in ("5.20.0", "5.20.0.dev0", "5.25.0", "6.0.0"):
        transformers_requirement.check_transformers_version(recent_enough)


def test_the_minimum_version_is_setup_cfgs_lower_bound():
    import re
    from pathlib import Path

    from modeling_protoseg.transformers_requirement import MINIMUM_TRANSFORMERS_VERSION

    setup_cfg = (Path(__file__).resolve().parents[1] / "setup.cfg").read_text()
    lower_bound = re.search(r"^\s*transformers>=([\d.]+)", setup_cfg, re.MULTILINE).group(1)
    assert MINIMUM_TRANSFORMERS_VERSION.removesuffix(".0") == lower_bound.removesuffix(".0")


@pytest.mark.parametrize("entry_module", ["configuration_protoseg.py", "configuration_protoseg_linear_head.py"])
def test_config_entry_modules_check_the_version_first_and_import_their_whole_tree_directly(entry_module):
    """transformers 4.x copies only the direct relative imports of the module `auto_map` names and reads the
    whole relative-import tree before running it: a module missing there fails with a FileNotFoundError
    before the version check can run."""
    from pathlib import Path

    from transformers.dynamic_module_utils import get_relative_import_files, get_relative_imports

    import modeling_protoseg

    path = Path(modeling_protoseg.__file__).parent / entry_module
    direct = get_relative_imports(str(path))
    tree = {Path(file).stem for file in get_relative_import_files(str(path))}
    assert tree <= set(direct), f"{entry_module} must import {sorted(tree - set(direct))} directly"
    assert direct[0] == "transformers_requirement" or path.read_text().index(
        "from .transformers_requirement"
    ) < min(path.read_text().index(f"from .{name}") for name in direct if name != "transformers_requirement")


def test_remote_code_on_an_older_transformers_fails_naming_the_version_needed(tmp_path):
    save_checkpoint(tmp_path / "checkpoint")
    assert "transformers_requirement.py" in os.listdir(tmp_path / "checkpoint")
    script = """
        import transformers
        transformers.__version__ = "4.57.0"  # what the copied code sees on an older installation
        from transformers import AutoConfig
        try:
            AutoConfig.from_pretrained("checkpoint", trust_remote_code=True)
        except ImportError as error:
            print("REFUSED:", error)
        """
    completed = run_python_without_repository(
        script, cwd=tmp_path, environment={"HF_MODULES_CACHE": str(tmp_path / "modules")}
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "REFUSED: This ProtoSeg model code needs transformers >= 5.20.0, but transformers 4.57.0" in completed.stdout
