"""transformers' common model contract, as SegFormer meets it, for both models: hidden states and attentions by
argument and by config, transformers 5's list form of `output_hidden_states`, the attention implementation
declared as the encoder declares it (eager == sdpa), and the linear head's `num_labels=1` as SegFormer's.

In the manner of transformers' `ModelTester`: `ContractTester` builds a tiny config and inputs in one place for
each model class; every test compares real values (with the full tuple, with the encoder run alone, with SegFormer,
with torch's own losses)."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from tiny_models import (
    tiny_linear_head_config,
    tiny_protoseg_config,
    tiny_resnet_encoder_config,
    tiny_segformer_encoder_config,
    tiny_swin_encoder_config,
)
from transformers import AutoModelForSemanticSegmentation, SegformerForSemanticSegmentation, SegformerModel
from transformers.utils import logging as transformers_logging

from modeling_protoseg import ProtoSegForSemanticSegmentation, ProtoSegLinearHeadForSemanticSegmentation

MODEL_CLASSES = [ProtoSegForSemanticSegmentation, ProtoSegLinearHeadForSemanticSegmentation]


class ContractTester:
    """A tiny config (MiT encoder by default), a batch, and models built from them for one model class."""

    def __init__(self, model_class: type, *, encoder_config=None, num_classes: int = 3) -> None:
        self.model_class = model_class
        self.encoder_config = encoder_config
        self.num_classes = num_classes
        self.batch_size, self.image_size = 2, 64  # maps of 16, 8, 4, 2 pixels a side

    def config(self, **overrides):
        build = tiny_protoseg_config if self.model_class is ProtoSegForSemanticSegmentation else tiny_linear_head_config
        encoder_config = self.encoder_config if self.encoder_config is not None else tiny_segformer_encoder_config()
        return build(num_classes=self.num_classes, encoder_config=encoder_config, **overrides)

    def model(self, config=None, attn_implementation: str | None = None):
        """An eval-mode model, through the Auto class as a user builds one; seeded, so two calls agree."""
        torch.manual_seed(0)
        kwargs = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
        model = AutoModelForSemanticSegmentation.from_config(config or self.config(), **kwargs)
        assert type(model) is self.model_class
        return model.eval()

    def inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(1)
        size = self.image_size
        pixel_values = torch.randn(self.batch_size, 3, size, size, generator=generator)
        labels = torch.randint(0, self.num_classes, (self.batch_size, size, size), generator=generator)
        labels[:, :4] = 255  # a band of ignored pixels
        return pixel_values, labels


@pytest.fixture(params=MODEL_CLASSES, ids=["protoseg", "linear_head"])
def tester(request) -> ContractTester:
    return ContractTester(request.param)


# ---------------------------------------------------------------- hidden states


def test_hidden_states_by_argument_and_by_config(tester):
    pixel_values, _ = tester.inputs()
    model = tester.model()
    with torch.no_grad():
        by_argument = model(pixel_values, output_hidden_states=True).hidden_states
        encoder_maps = model.encoder(pixel_values, output_hidden_states=True).hidden_states  # MiT run alone
        assert model(pixel_values).hidden_states is None  # off by default
    assert [tuple(h.shape) for h in by_argument] == [(2, 8, 16, 16), (2, 16, 8, 8), (2, 24, 4, 4), (2, 32, 2, 2)]
    assert all(torch.equal(ours, encoder) for ours, encoder in zip(by_argument, encoder_maps))

    config = tester.config()
    config.output_hidden_states = True
    model = tester.model(config)
    with torch.no_grad():
        by_config = model(pixel_values).hidden_states
        assert model(pixel_values, output_hidden_states=False).hidden_states is None  # the argument wins
        as_tuple = model(pixel_values, return_dict=False)
    assert len(by_config) == 4 and all(torch.equal(a, b) for a, b in zip(by_config, by_argument))
    assert any(isinstance(item, tuple) and len(item) == 4 and torch.equal(item[0], by_argument[0]) for item in as_tuple)


@pytest.mark.parametrize(
    "request_form, selected",
    [([0, 2], {0, 2}), ([-1], {3}), (1, {1}), ((3, -4), {0, 3}), ([7], set()), ([], None), (0, None)],
)
def test_list_form_selects_maps_of_the_full_tuple(tester, request_form, selected):
    pixel_values, _ = tester.inputs()
    model = tester.model()
    with torch.no_grad():
        full = model(pixel_values, output_hidden_states=True).hidden_states
        chosen = model(pixel_values, output_hidden_states=request_form).hidden_states
    if selected is None:  # falsy requests (0, []) ask for nothing, as in transformers
        assert chosen is None
        return
    assert len(chosen) == len(full) == 4  # indices keep their meaning: None where a map is not selected
    for index, (full_map, chosen_map) in enumerate(zip(full, chosen)):
        assert (chosen_map is not None) == (index in selected)
        if chosen_map is not None:
            assert torch.equal(chosen_map, full_map)


def test_list_form_by_config_and_a_bad_request(tester):
    pixel_values, labels = tester.inputs()
    config = tester.config()
    config.output_hidden_states = [1, 3]
    model = tester.model(config)
    with torch.no_grad():
        hidden_states = model(pixel_values).hidden_states
    assert [h is not None for h in hidden_states] == [False, True, False, True]
    model.train()
    before = {name: buffer.clone() for name, buffer in model.named_buffers()}
    with pytest.raises(ValueError, match="output_hidden_states must be a bool, an int or a list of ints"):
        model(pixel_values, labels=labels, output_hidden_states=["stage1"])
    assert all(torch.equal(buffer, before[name]) for name, buffer in model.named_buffers())  # nothing ran


# ---------------------------------------------------------------- attentions


def test_attentions_by_argument_and_by_config_are_the_mits(tester):
    pixel_values, _ = tester.inputs()
    model = tester.model(attn_implementation="eager")
    with torch.no_grad():
        attentions = model(pixel_values, output_attentions=True).attentions
        encoder_attentions = model.encoder(pixel_values, output_attentions=True).attentions
        assert model(pixel_values).attentions is None  # off by default
    # one map per MiT block: (B, heads, N_i, N_i / sr_i^2) = 256, 64, 16, 4 queries on 4 reduced keys each
    assert [tuple(a.shape) for a in attentions] == [(2, 1, 256, 4), (2, 1, 64, 4), (2, 1, 16, 4), (2, 1, 4, 4)]
    assert all(torch.equal(ours, encoder) for ours, encoder in zip(attentions, encoder_attentions))
    for attention in attentions:  # softmax rows
        torch.testing.assert_close(attention.sum(-1), torch.ones(attention.shape[:-1]))

    config = tester.config()
    config.output_attentions = True  # before any implementation is chosen: transformers picks eager
    model = tester.model(config)
    assert model.config._attn_implementation == model.encoder.config._attn_implementation == "eager"
    with torch.no_grad():
        by_config = model(pixel_values).attentions
        assert model(pixel_values, output_attentions=False).attentions is None  # the argument wins
    assert len(by_config) == 4 and all(torch.equal(a, b) for a, b in zip(by_config, attentions))


def test_swin_encoder_gives_its_attentions():
    tester = ContractTester(ProtoSegForSemanticSegmentation, encoder_config=tiny_swin_encoder_config())
    pixel_values, _ = tester.inputs()
    model = tester.model(attn_implementation="eager")
    with torch.no_grad():
        attentions = model(pixel_values, output_attentions=True).attentions
        encoder_attentions = model.encoder(pixel_values, output_attentions=True).attentions
    assert len(attentions) == 4  # Swin: the last block's windowed attention of each stage
    assert all(torch.equal(ours, encoder) for ours, encoder in zip(attentions, encoder_attentions))


@pytest.mark.parametrize("model_class", MODEL_CLASSES, ids=["protoseg", "linear_head"])
def test_convolutional_encoder_gives_no_attentions_and_says_so(model_class, caplog):
    tester = ContractTester(model_class, encoder_config=tiny_resnet_encoder_config())
    pixel_values, _ = tester.inputs()
    model = tester.model()
    assert model.config._attn_implementation == "eager"  # the default: ResNet has no attention to run otherwise
    transformers_logging.warning_once.cache_clear()  # the warning is logged once per process
    with torch.no_grad(), caplog.at_level(logging.WARNING):
        output = model(pixel_values, output_attentions=True)
        plain = model(pixel_values)
    assert output.attentions is None
    assert torch.equal(output.logits, plain.logits)
    assert any("has no attention layers, so `attentions` is None" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------- attention implementation


def test_attention_flags_follow_the_encoder():
    # On the class: the default encoder's (MiT), as transformers' class-level checks read them.
    for model_class in MODEL_CLASSES:
        for flag in ("_supports_sdpa", "_supports_flash_attn", "_supports_flex_attn"):
            assert getattr(model_class, flag) is getattr(SegformerModel, flag) is True
    # On a model: its encoder's.
    swin = ProtoSegForSemanticSegmentation(tiny_protoseg_config(encoder_config=tiny_swin_encoder_config()))
    resnet_config = tiny_linear_head_config(encoder_config=tiny_resnet_encoder_config())
    resnet = ProtoSegLinearHeadForSemanticSegmentation(resnet_config)
    assert (swin._supports_sdpa, swin._supports_flash_attn, swin._supports_flex_attn) == (True, False, False)
    assert (resnet._supports_sdpa, resnet._supports_flash_attn, resnet._supports_flex_attn) == (False, False, False)


@pytest.mark.parametrize(
    "encoder_config, attn_implementation, message",
    [
        (tiny_swin_encoder_config(), "flex_attention", r"'swin' encoder \(SwinBackbone\) supports only eager, sdpa"),
        (tiny_resnet_encoder_config(), "sdpa", r"'resnet' encoder \(ResNetBackbone\) has no attention layers"),
    ],
)
@pytest.mark.parametrize("model_class", MODEL_CLASSES, ids=["protoseg", "linear_head"])
def test_an_implementation_the_encoder_lacks_is_a_clear_error(
    model_class, encoder_config, attn_implementation, message
):
    tester = ContractTester(model_class, encoder_config=encoder_config)
    with pytest.raises(ValueError, match=message):
        tester.model(attn_implementation=attn_implementation)


def test_sdpa_is_accepted_reaches_the_encoder_and_equals_eager(tester, tmp_path):
    pixel_values, labels = tester.inputs()
    default = tester.model()
    sdpa = tester.model(attn_implementation="sdpa")  # raised "does not support sdpa" before
    eager = tester.model(attn_implementation="eager")
    for model, expected in ((default, "sdpa"), (sdpa, "sdpa"), (eager, "eager")):
        assert model.config._attn_implementation == model.encoder.config._attn_implementation == expected
    eager.load_state_dict(sdpa.state_dict())
    with torch.no_grad():
        # the setting reached the encoder's attention layers: only eager computes attention maps
        assert len(eager(pixel_values, output_attentions=True).attentions) == 4
        assert sdpa(pixel_values, output_attentions=True).attentions == ()  # transformers warns, as for SegFormer
        sdpa_output = sdpa(pixel_values, labels=labels, output_hidden_states=True)
        eager_output = eager(pixel_values, labels=labels, output_hidden_states=True)
    torch.testing.assert_close(eager_output.logits, sdpa_output.logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(eager_output.loss, sdpa_output.loss, rtol=1e-4, atol=1e-5)
    for eager_map, sdpa_map in zip(eager_output.hidden_states, sdpa_output.hidden_states):
        torch.testing.assert_close(eager_map, sdpa_map, rtol=1e-4, atol=1e-5)

    # switched after building, and chosen at load time, it reaches the encoder too
    sdpa.set_attn_implementation("eager")
    assert sdpa.encoder.config._attn_implementation == "eager"
    sdpa.save_pretrained(tmp_path)
    loaded = tester.model_class.from_pretrained(tmp_path, attn_implementation="eager")
    assert loaded.config._attn_implementation == loaded.encoder.config._attn_implementation == "eager"


# ---------------------------------------------------------------- one class


def segformer_state_for_linear_head(segformer: SegformerForSemanticSegmentation) -> dict[str, torch.Tensor]:
    """SegFormer's weights under the linear head's names: the encoder as is, each MLP projection as a 1x1 conv."""
    state = {}
    for name, value in segformer.state_dict().items():
        if name.startswith("segformer."):
            state["encoder." + name.removeprefix("segformer.")] = value
        elif name.startswith("decode_head.classifier."):
            state[name.removeprefix("decode_head.")] = value
        elif ".proj." in name:  # (hidden, C_i) linear -> (hidden, C_i, 1, 1) convolution
            target = name.replace(".proj.", ".")
            state[target] = value[:, :, None, None] if value.ndim == 2 else value
        else:
            state[name] = value
    return state


def test_linear_head_with_one_label_is_segformers_binary_loss():
    tester = ContractTester(ProtoSegLinearHeadForSemanticSegmentation, num_classes=1)
    pixel_values, _ = tester.inputs()
    labels = (torch.rand(2, 64, 64, generator=torch.Generator().manual_seed(2)) > 0.5).long()
    labels[:, :4] = 255
    model = tester.model()
    torch.manual_seed(0)
    segformer = SegformerForSemanticSegmentation(tiny_segformer_encoder_config(num_labels=1)).eval()
    model.load_state_dict(segformer_state_for_linear_head(segformer))

    output = model(pixel_values, labels=labels)
    assert output.logits.shape == (2, 1, 16, 16)
    # by hand: BCE-with-logits of the upsampled logits, ignored pixels count 0, mean over all pixels (SegFormer's)
    upsampled = F.interpolate(output.logits.detach(), size=(64, 64), mode="bilinear", align_corners=False)[:, 0]
    valid = labels != 255
    per_pixel = F.binary_cross_entropy_with_logits(upsampled, labels.float().clamp(max=1), reduction="none")
    expected = (per_pixel * valid).sum() / labels.numel()
    torch.testing.assert_close(output.loss.detach(), expected, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        reference = segformer(pixel_values, labels=labels)
    torch.testing.assert_close(output.logits.detach(), reference.logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(output.loss.detach(), reference.loss, rtol=1e-4, atol=1e-6)

    output.loss.backward()  # a real loss, with a gradient
    assert model.classifier.weight.grad is not None and model.classifier.weight.grad.abs().sum() > 0
    with torch.no_grad():  # all-background labels: a positive loss, not 0 as the cross-entropy over one class gave
        assert model(pixel_values, labels=torch.zeros_like(labels)).loss > 0
    with pytest.raises(ValueError, match=r"num_labels=1 .* must be 0, 1 or the ignore index 255; got values \[2\]"):
        model(pixel_values, labels=torch.full_like(labels, 2))


def test_one_label_configs():
    with pytest.raises(ValueError, match="semantic_loss_ignore_index"):  # label 1 is a target in the binary case
        tiny_linear_head_config(num_classes=1, semantic_loss_ignore_index=1)
    # ProtoSeg classifies a pixel by its most similar class prototypes: it needs classes to choose between.
    with pytest.raises(ValueError, match=r"num_labels must be >= 2.*background"):
        tiny_protoseg_config(num_classes=1)
