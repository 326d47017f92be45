"""ProtoSegForSemanticSegmentation: shapes, losses, prototype buffer, training-step reference, bad input."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from tiny_models import (
    tiny_protoseg_config,
    tiny_resnet_encoder_config,
    tiny_segformer_encoder_config,
    tiny_swin_encoder_config,
)
from transformers import SegformerForSemanticSegmentation

from modeling_protoseg import ProtoSegConfig, ProtoSegForSemanticSegmentation
from modeling_protoseg.class_scores import ProtoSegClassScoreNorm
from test_prototypes import reference_sinkhorn, reference_update


def make_batch(batch_size=2, size=32, num_classes=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(batch_size, 3, size, size, generator=generator)
    labels = torch.randint(0, num_classes, (batch_size, size, size), generator=generator)
    labels[:, :3] = 255  # a band of ignored pixels
    return pixel_values, labels


# ---------------------------------------------------------------- config


def test_config_defaults_are_the_papers():
    config = ProtoSegConfig()
    assert (config.num_prototypes_per_class, config.prototype_momentum) == (10, 0.999)
    assert (config.sinkhorn_iterations, config.sinkhorn_epsilon, config.ppc_temperature) == (3, 0.05, 0.1)
    assert (config.ppc_loss_weight, config.ppd_loss_weight) == (0.01, 0.01)
    assert config.semantic_loss_ignore_index == 255 and config.prototype_update_pixels == "correct_else_all"
    assert config.encoder_config.model_type == "segformer"


@pytest.mark.parametrize(
    "field, value",
    [
        ("num_prototypes_per_class", 0),
        ("prototype_momentum", 1.0),
        ("prototype_momentum", -0.1),
        ("sinkhorn_epsilon", 0.0),
        ("ppc_temperature", -1.0),
        ("sinkhorn_iterations", 0),
    ],
)
def test_config_rejects_invalid_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        tiny_protoseg_config(**{field: value})


def test_config_rejects_unknown_encoder_and_colliding_ignore_index():
    with pytest.raises(ValueError, match="encoder_config"):
        ProtoSegConfig(encoder_config={"model_type": "bert"})
    with pytest.raises(ValueError, match="encoder_config"):
        ProtoSegConfig(encoder_config={"hidden_sizes": [8]})
    with pytest.raises(ValueError, match="semantic_loss_ignore_index"):
        tiny_protoseg_config(num_classes=3, semantic_loss_ignore_index=1)


@pytest.mark.parametrize(
    "encoder_config", [tiny_segformer_encoder_config(), tiny_swin_encoder_config(), tiny_resnet_encoder_config()]
)
def test_config_round_trips_through_dict_with_nested_encoder(encoder_config, tmp_path):
    config = tiny_protoseg_config(encoder_config=encoder_config, num_prototypes_per_class=7)
    config.save_pretrained(tmp_path)
    loaded = ProtoSegConfig.from_pretrained(tmp_path)
    assert type(loaded.encoder_config) is type(encoder_config)
    assert loaded.encoder_config.to_dict() == config.encoder_config.to_dict()
    assert loaded.num_prototypes_per_class == 7 and loaded.id2label == config.id2label


# ---------------------------------------------------------------- forward


@pytest.mark.parametrize(
    "encoder_config", [tiny_segformer_encoder_config(), tiny_swin_encoder_config(), tiny_resnet_encoder_config()]
)
def test_logits_have_segformer_shape_for_every_encoder(encoder_config):
    model = ProtoSegForSemanticSegmentation(tiny_protoseg_config(num_classes=5, encoder_config=encoder_config)).eval()
    output = model(torch.randn(2, 3, 64, 96))
    assert output.logits.shape == (2, 5, 16, 24)
    assert output.loss is None and output.ppc_loss is None


@pytest.mark.parametrize("class_score_norm", ["affine", "layer_norm"])
def test_logits_are_the_normalised_max_similarity_to_the_class_prototypes(class_score_norm):
    model = ProtoSegForSemanticSegmentation(tiny_protoseg_config(class_score_norm=class_score_norm)).eval()
    with torch.no_grad():  # distinct per-class weights and biases, so a mix-up of classes would show
        model.class_score_norm.weight.copy_(torch.tensor([7.0, 10.0, 13.0]))
        model.class_score_norm.bias.copy_(torch.tensor([0.5, -0.2, 0.1]))
    output = model(torch.randn(1, 3, 32, 32), output_pixel_embeddings=True, output_nearest_prototypes=True)
    embeddings = output.pixel_embeddings  # (1, D, 8, 8)
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(1, 8, 8))  # unit length along channels
    similarities = torch.einsum("bdhw,ckd->bckhw", embeddings, model.prototypes)
    scores = similarities.amax(dim=2).permute(0, 2, 3, 1)  # (1, 8, 8, C)
    weight, bias = torch.tensor([7.0, 10.0, 13.0]), torch.tensor([0.5, -0.2, 0.1])
    if class_score_norm == "layer_norm":
        expected = (scores - scores.mean(-1, keepdim=True)) / torch.sqrt(scores.var(-1, unbiased=False, keepdim=True) + 1e-5)
        expected = expected * weight + bias
    else:
        expected = scores * weight + bias
    torch.testing.assert_close(output.logits, expected.permute(0, 3, 1, 2), rtol=1e-5, atol=1e-5)
    flat = similarities.flatten(1, 2).argmax(dim=1)  # (1, 8, 8) over C*K
    assert torch.equal(output.nearest_prototype_class, flat // 4)
    assert torch.equal(output.nearest_prototype_index, flat % 4)


def test_hidden_states_are_the_four_encoder_maps():
    model = ProtoSegForSemanticSegmentation(tiny_protoseg_config()).eval()
    hidden_states = model(torch.randn(1, 3, 64, 64), output_hidden_states=True).hidden_states
    assert [tuple(h.shape[1:]) for h in hidden_states] == [(8, 16, 16), (16, 8, 8), (24, 4, 4), (32, 2, 2)]


# ---------------------------------------------------------------- prototype buffer


def test_prototypes_are_a_normalised_float32_buffer_outside_the_optimizer():
    model = ProtoSegForSemanticSegmentation(tiny_protoseg_config())
    assert model.prototypes.shape == (3, 4, 8) and model.prototypes.dtype == torch.float32
    torch.testing.assert_close(model.prototypes.norm(dim=-1), torch.ones(3, 4))
    assert "prototype_bank.prototypes" in model.state_dict()
    assert all(tensor is not model.prototypes for tensor in model.parameters())
    before = model.prototypes.clone()
    model.to(torch.bfloat16)
    assert model.prototypes.dtype == torch.float32
    assert torch.equal(model.prototypes, before)  # no rounding through bf16
    assert model.class_score_norm.weight.dtype == torch.bfloat16
    model.half().float()
    assert torch.equal(model.prototypes, before)


def test_prototypes_round_trip_exactly_through_save_and_load(tmp_path):
    model = ProtoSegForSemanticSegmentation(tiny_protoseg_config()).train()
    pixel_values, labels = make_batch()
    model(pixel_values, labels=labels)  # move the prototypes away from their init
    model.save_pretrained(tmp_path)
    loaded = ProtoSegForSemanticSegmentation.from_pretrained(tmp_path)
    assert torch.equal(loaded.prototypes, model.prototypes)
    in_bf16 = ProtoSegForSemanticSegmentation.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert in_bf16.prototypes.dtype == torch.float32 and torch.equal(in_bf16.prototypes, model.prototypes)
    assert in_bf16.class_score_norm.weight.dtype == torch.bfloat16


def test_prototypes_move_only_in_training_mode_with_labels():
    model = ProtoSegForSemanticSegmentation(tiny_protoseg_config())
    pixel_values, labels = make_batch()
    before = model.prototypes.clone()
    model.eval()(pixel_values, labels=labels)
    model.train()(pixel_values)
    assert torch.equal(model.prototypes, before)
    output = model.train()(pixel_values, labels=labels)
    assert not torch.equal(model.prototypes, before)
    torch.testing.assert_close(model.prototypes.norm(dim=-1), torch.ones(3, 4))
    output.loss.backward()  # the in-place update must not break backward
    assert model.projection_head.output.weight.grad is not None


def test_training_step_matches_reference_clustering_losses_and_update():
    config = tiny_protoseg_config(
        prototype_momentum=0.9, prototype_update_pixels="all", prototype_init="random"
    )
    model = ProtoSegForSemanticSegmentation(config).train()
    pixel_values, labels = make_batch()
    before = model.prototypes.clone()
    output = model(pixel_values, labels=labels, output_pixel_embeddings=True)

    # Reference, class by class with the official per-class algorithm.
    embeddings = output.pixel_embeddings.detach().permute(0, 2, 3, 1).reshape(-1, 8)  # (N, D)
    feature_labels = F.interpolate(labels[:, None].float(), size=(8, 8), mode="nearest").long().reshape(-1)
    labelled = feature_labels != 255
    embeddings, classes = embeddings[labelled], feature_labels[labelled]
    similarities = embeddings @ before.reshape(12, 8).T  # (N, C*K)
    assignments = torch.empty_like(classes)
    for class_index in classes.unique():
        members = classes == class_index
        own = similarities[members].view(-1, 3, 4)[:, class_index]
        assignments[members] = reference_sinkhorn(own, 3, 0.05)[0]
    targets = classes * 4 + assignments
    expected_ppc = F.cross_entropy(similarities / 0.1, targets)
    expected_ppd = ((1 - similarities.gather(1, targets[:, None])) ** 2).mean()
    expected_ce = F.cross_entropy(
        F.interpolate(output.logits.detach(), size=(32, 32), mode="bilinear"), labels, ignore_index=255
    )
    torch.testing.assert_close(output.ppc_loss.detach(), expected_ppc, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(output.ppd_loss.detach(), expected_ppd, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(output.ce_loss.detach(), expected_ce, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(output.loss.detach(), expected_ce + 0.01 * expected_ppc + 0.01 * expected_ppd)
    expected_prototypes = reference_update(before, embeddings, classes, assignments, 0.9)
    torch.testing.assert_close(model.prototypes, expected_prototypes, rtol=1e-5, atol=1e-6)


def test_correct_only_update_ignores_misclassified_pixels():
    config = tiny_protoseg_config(
        num_classes=2, prototype_momentum=0.5, prototype_init="random", prototype_update_pixels="correct"
    )
    model = ProtoSegForSemanticSegmentation(config).train()
    pixel_values = torch.randn(2, 3, 32, 32)
    # Label every pixel with the class the model does NOT predict: nothing is correct, nothing moves.
    with torch.no_grad():
        train_prediction = model(pixel_values).logits.argmax(dim=1)  # (2, 8, 8), same BN batch statistics
    wrong = (1 - train_prediction).repeat_interleave(4, dim=1).repeat_interleave(4, dim=2)
    before = model.prototypes.clone()
    model(pixel_values, labels=wrong)
    assert torch.equal(model.prototypes, before)
    model(pixel_values, labels=1 - wrong)  # now every pixel is correct: prototypes move
    assert not torch.equal(model.prototypes, before)


def test_all_ignored_batch_gives_finite_zero_losses_and_keeps_prototypes():
    model = ProtoSegForSemanticSegmentation(tiny_protoseg_config()).train()
    pixel_values, _ = make_batch()
    before = model.prototypes.clone()
    output = model(pixel_values, labels=torch.full((2, 32, 32), 255))
    assert torch.isfinite(output.loss) and output.loss.item() == 0.0
    assert torch.equal(model.prototypes, before)
    output.loss.backward()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mixed_precision_training_step_stays_finite(dtype):
    model = ProtoSegForSemanticSegmentation(tiny_protoseg_config(sinkhorn_epsilon=0.01)).train()
    pixel_values, labels = make_batch()
    with torch.autocast("cpu", dtype=dtype):
        output = model(pixel_values, labels=labels)
    assert all(torch.isfinite(value) for value in (output.loss, output.ppc_loss, output.ppd_loss))
    output.loss.backward()
    assert model.prototypes.dtype == torch.float32 and torch.isfinite(model.prototypes).all()
    torch.testing.assert_close(model.prototypes.norm(dim=-1), torch.ones(3, 4))


def test_model_cast_to_half_precision_trains_with_float32_prototypes():
    model = ProtoSegForSemanticSegmentation(tiny_protoseg_config()).to(torch.bfloat16).train()
    pixel_values, labels = make_batch()
    output = model(pixel_values.to(torch.bfloat16), labels=labels)
    assert torch.isfinite(output.loss) and model.prototypes.dtype == torch.float32
    assert torch.isfinite(model.prototypes).all()


def test_learnable_parameters_do_not_grow_with_classes_beyond_the_class_norm():
    def count(num_classes):
        config = ProtoSegConfig(
            encoder_config=tiny_segformer_encoder_config(),
            id2label={i: str(i) for i in range(num_classes)},
            semantic_loss_ignore_index=-100,  # 255 would be a real class among 847
        )
        return sum(p.numel() for p in ProtoSegForSemanticSegmentation(config).parameters())

    assert count(847) - count(150) == 2 * (847 - 150)  # LayerNorm(C) weight + bias only

    def count_segformer(num_classes):
        config = tiny_segformer_encoder_config(decoder_hidden_size=256, num_labels=num_classes)
        return sum(p.numel() for p in SegformerForSemanticSegmentation(config).parameters())

    assert count_segformer(847) - count_segformer(150) == 257 * (847 - 150)


def test_gradient_checkpointing_gives_the_same_gradients():
    config = tiny_protoseg_config()
    reference = ProtoSegForSemanticSegmentation(config).train()
    checkpointed = ProtoSegForSemanticSegmentation(config).train()
    checkpointed.load_state_dict(reference.state_dict())
    checkpointed.gradient_checkpointing_enable()
    assert checkpointed.is_gradient_checkpointing
    pixel_values, labels = make_batch()
    for model in (reference, checkpointed):
        model(pixel_values, labels=labels).loss.backward()
    for (name, p), (_, q) in zip(reference.named_parameters(), checkpointed.named_parameters()):
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "pixel_shape, label_shape, label_fill, message",
    [
        ((3, 32, 32), None, None, "4-D"),
        ((2, 1, 32, 32), None, None, "4-D"),
        ((2, 3, 32, 32), (2, 16, 16), 0, r"labels must have shape"),
        ((2, 3, 32, 32), (32, 32), 0, r"labels must have shape"),
        ((2, 3, 32, 32), (2, 32, 32), 7, r"got values \[7\]"),
        ((2, 3, 32, 32), (2, 32, 32), -1, r"got values \[-1\]"),
    ],
)
def test_bad_input_raises_before_prototypes_are_touched(pixel_shape, label_shape, label_fill, message):
    model = ProtoSegForSemanticSegmentation(tiny_protoseg_config()).train()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    labels = None
    if label_shape is not None:
        labels = torch.zeros(label_shape, dtype=torch.long)
        labels[..., 0] = label_fill
    with pytest.raises(ValueError, match=message):
        model(torch.randn(pixel_shape), labels=labels)
    after = model.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)


def test_float_labels_are_rejected():
    model = ProtoSegForSemanticSegmentation(tiny_protoseg_config()).train()
    with pytest.raises(ValueError, match="integer"):
        model(torch.randn(1, 3, 32, 32), labels=torch.zeros(1, 32, 32))


@pytest.mark.parametrize(
    "encoder_config", [tiny_segformer_encoder_config(), tiny_swin_encoder_config(), tiny_resnet_encoder_config()]
)
def test_every_trainable_parameter_gets_a_gradient(encoder_config):
    # DistributedDataParallel (without find_unused_parameters) fails on a trainable parameter without gradient.
    model = ProtoSegForSemanticSegmentation(tiny_protoseg_config(encoder_config=encoder_config)).train()
    pixel_values, labels = make_batch(size=64)
    model(pixel_values, labels=labels).loss.backward()
    without_gradient = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert without_gradient == []


def test_folded_channels_last_heads_equal_segformers_formulation():
    model = ProtoSegForSemanticSegmentation(tiny_protoseg_config()).train()
    feature_maps = [torch.randn(2, c, 32 // 2**i, 32 // 2**i) for i, c in enumerate([8, 16, 24, 32])]
    head = model.decode_head
    # SegFormer's order: project each map, upsample, concatenate in reverse, fuse, BN, ReLU.
    projected = [
        F.interpolate(projection(feature_map), size=(32, 32), mode="bilinear", align_corners=False)
        for feature_map, projection in zip(feature_maps, head.linear_projections)
    ]
    reference_head = copy.deepcopy(head)
    expected = F.relu(reference_head.batch_norm(reference_head.linear_fuse(torch.cat(projected[::-1], 1))))
    decoded = head(feature_maps)
    torch.testing.assert_close(decoded, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(head.batch_norm.running_mean, reference_head.batch_norm.running_mean)
    projection = model.projection_head
    hidden = F.relu(projection.batch_norm(projection.hidden(expected)))
    reference_embeddings = F.normalize(
        projection.layer_norm(projection.output(hidden).permute(0, 2, 3, 1)).permute(0, 3, 1, 2), dim=1
    )
    torch.testing.assert_close(projection(decoded), reference_embeddings, rtol=1e-4, atol=1e-5)


def test_chunked_class_scores_equal_the_full_similarity_path():
    from modeling_protoseg.class_scores import nearest_prototype_scores

    embeddings = F.normalize(torch.randn(1000, 8), dim=-1)
    prototypes = F.normalize(torch.randn(5 * 4, 8), dim=-1)
    full = (embeddings @ prototypes.T).view(1000, 5, 4).amax(dim=-1)  # reference, (N, C)
    with torch.no_grad():
        chunked = nearest_prototype_scores(embeddings, prototypes, 5, chunk_bytes=100 * 20 * 4)  # 100-row chunks
        uneven = nearest_prototype_scores(embeddings, prototypes, 5, chunk_bytes=300 * 20 * 4)  # 300 x 3 + 100
        with torch.autocast("cpu", dtype=torch.bfloat16):  # the per-chunk path: autocast skips ops given out=
            autocast_chunked = nearest_prototype_scores(embeddings, prototypes, 5, chunk_bytes=100 * 20 * 4)
            autocast_full = (embeddings @ prototypes.T).view(1000, 5, 4).amax(dim=-1)
    torch.testing.assert_close(chunked, full)
    torch.testing.assert_close(uneven, full)
    assert autocast_chunked.dtype == torch.bfloat16
    torch.testing.assert_close(autocast_chunked, autocast_full)


def test_bfloat16_matching_rounds_the_product_not_the_scores_dtype():
    from modeling_protoseg.class_scores import nearest_prototype_scores

    embeddings = F.normalize(torch.randn(1000, 16), dim=-1)
    prototypes = F.normalize(torch.randn(5 * 4, 16), dim=-1)
    exact = (embeddings @ prototypes.T).view(1000, 5, 4).amax(dim=-1)
    # reference computed another way: the bf16-rounded inputs multiplied in float64, the products rounded to bf16
    rounded = embeddings.bfloat16().double() @ prototypes.bfloat16().double().T
    reference = rounded.bfloat16().float().view(1000, 5, 4).amax(dim=-1)
    with torch.no_grad():
        scores = nearest_prototype_scores(embeddings, prototypes, 5, matching_dtype=torch.bfloat16, chunk_bytes=100 * 20 * 2)
    assert scores.dtype == torch.float32
    assert torch.equal(scores.bfloat16().float(), scores)  # each score is a bf16 value, widened
    torch.testing.assert_close(scores, reference, rtol=0, atol=2**-8)  # one bf16 rounding step apart at most
    assert (scores - exact).abs().max() <= 2**-9 + 2**-8  # output rounding + both inputs rounded
    assert (scores - exact).abs().max() > 0  # the option really changes the product


def test_bfloat16_matching_is_saved_in_the_config_and_keeps_float32_prototypes(tmp_path):
    config = tiny_protoseg_config(num_classes=5)
    exact_model = ProtoSegForSemanticSegmentation(config).eval()
    exact_model.save_pretrained(tmp_path)
    model = ProtoSegForSemanticSegmentation.from_pretrained(tmp_path, prototype_matching_dtype="bfloat16").eval()
    model.save_pretrained(tmp_path / "bf16")
    reloaded = ProtoSegForSemanticSegmentation.from_pretrained(tmp_path / "bf16").eval()
    assert reloaded.config.prototype_matching_dtype == "bfloat16"
    assert reloaded.prototypes.dtype == torch.float32
    torch.testing.assert_close(reloaded.prototypes, exact_model.prototypes, rtol=0, atol=0)
    pixel_values = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        exact_logits, logits = exact_model(pixel_values).logits, reloaded(pixel_values).logits
    assert logits.dtype == torch.float32
    scale = reloaded.class_score_norm.weight.abs().max()
    assert 0 < (logits - exact_logits).abs().max() <= (2**-9 + 2**-8) * scale + 1e-5
    with pytest.raises(ValueError, match="prototype_matching_dtype must be one of 'float32', 'bfloat16', got 'int8'"):
        tiny_protoseg_config(prototype_matching_dtype="int8")


def test_eval_mode_heads_fold_their_batch_norms_exactly():
    model = ProtoSegForSemanticSegmentation(tiny_protoseg_config())
    for norm in (model.decode_head.batch_norm, model.projection_head.batch_norm):  # statistics of a trained model
        norm.running_mean.uniform_(-1, 1)
        norm.running_var.uniform_(0.5, 2)
        norm.weight.data.uniform_(0.5, 1.5)
        norm.bias.data.uniform_(-0.5, 0.5)
    model.eval()
    feature_maps = [torch.randn(2, c, 32 // 2**i, 32 // 2**i) for i, c in enumerate([8, 16, 24, 32])]
    head, projection = model.decode_head, model.projection_head
    # SegFormer's order, the BatchNorm applied as a module: project, upsample, concatenate in reverse, fuse, BN, ReLU
    projected = [
        F.interpolate(linear(feature_map), size=(32, 32), mode="bilinear", align_corners=False)
        for feature_map, linear in zip(feature_maps, head.linear_projections)
    ]
    expected = F.relu(head.batch_norm(head.linear_fuse(torch.cat(projected[::-1], 1))))
    hidden = F.relu(projection.batch_norm(projection.hidden(expected)))
    expected_embeddings = F.normalize(
        projection.layer_norm(projection.output(hidden).permute(0, 2, 3, 1)).permute(0, 3, 1, 2), dim=1
    )
    with torch.no_grad():
        decoded = head(feature_maps)
        embeddings = projection(decoded)
    torch.testing.assert_close(decoded, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(embeddings, expected_embeddings, rtol=1e-4, atol=1e-5)
    # with autograd the folded forward is still differentiable in the BatchNorm's own parameters
    head(feature_maps).sum().backward()
    assert head.batch_norm.weight.grad is not None and head.batch_norm.weight.grad.abs().sum() > 0


def test_class_score_norm_in_place_is_for_inference_only():
    norm = ProtoSegClassScoreNorm(num_classes=3, mode="affine", scale=2.0)
    norm.bias.data.copy_(torch.tensor([0.1, -0.2, 0.3]))
    scores = torch.rand(4, 3)
    expected = scores * 2.0 + norm.bias.detach()
    with torch.no_grad():
        logits = norm(scores.clone(), in_place=True)
    torch.testing.assert_close(logits, expected)
    with pytest.raises(RuntimeError, match="for inference"):
        norm(scores.clone(), in_place=True)


def test_inference_logits_equal_with_and_without_autograd():
    model = ProtoSegForSemanticSegmentation(tiny_protoseg_config(num_classes=5)).eval()
    pixel_values = torch.randn(2, 3, 64, 64)
    full = model(pixel_values).logits  # grad enabled: one product
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values).logits, full.detach())


def test_a_misspelt_forward_keyword_is_an_error_not_ignored():
    model = ProtoSegForSemanticSegmentation(tiny_protoseg_config()).eval()
    with pytest.raises(TypeError, match="lables"):
        model(torch.randn(1, 3, 32, 32), lables=torch.zeros(1, 32, 32, dtype=torch.long))
