"""Few-class logits, data-initialised prototypes, the prototype update rules and prototype health statistics."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from tiny_models import tiny_protoseg_config

from modeling_protoseg import ProtoSegConfig, ProtoSegForSemanticSegmentation
from modeling_protoseg.class_scores import ProtoSegClassScoreNorm


def make_batch(batch_size=2, size=32, num_classes=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(batch_size, 3, size, size, generator=generator)
    labels = torch.randint(0, num_classes, (batch_size, size, size), generator=generator)
    return pixel_values, labels


def feature_labels(labels: torch.Tensor, size: int = 8) -> torch.Tensor:
    """Labels at feature resolution, flattened as the model does: (N,)."""
    return F.interpolate(labels[:, None].float(), size=(size, size), mode="nearest").long().reshape(-1)


def misclassified_labels(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """(B, H, W) labels of a 2-class model's *other* class at every pixel: nothing is classified correctly
    (predicted in training mode, so with the same BatchNorm batch statistics as the step that follows)."""
    with torch.no_grad():
        prediction = model(pixel_values).logits.argmax(dim=1)  # (B, H/4, W/4)
    return (1 - prediction).repeat_interleave(4, dim=1).repeat_interleave(4, dim=2)


# ---- two classes: a gradient and a confidence that depend on the margin


def two_class_score_gradient(mode: str, margin: float) -> tuple[float, float]:
    """|d CE / d scores| and the softmax confidence for a pixel of class 0 whose score leads by `margin`."""
    norm = ProtoSegClassScoreNorm(num_classes=2, mode=mode, scale=10.0)
    scores = torch.tensor([[0.3 + margin, 0.3]], requires_grad=True)
    logits = norm(scores)
    F.cross_entropy(logits, torch.tensor([0])).backward()
    return scores.grad.abs().max().item(), logits.softmax(-1)[0, 0].item()


@pytest.mark.parametrize("margin", [0.05, 0.1, 0.2, 0.3])
def test_two_class_affine_scores_keep_the_gradient_that_layer_norm_loses(margin):
    affine_gradient, _ = two_class_score_gradient("affine", margin)
    layer_norm_gradient, _ = two_class_score_gradient("layer_norm", margin)
    # Reference: d CE / d s_0 = scale * (p_0 - 1) with p_0 = sigmoid(scale * margin), computed by hand.
    expected = 10.0 * (1.0 - torch.sigmoid(torch.tensor(10.0 * margin)).item())
    assert affine_gradient == pytest.approx(expected, rel=1e-4)
    assert affine_gradient > 10 * layer_norm_gradient


def test_two_class_confidence_grows_with_the_margin_only_with_affine_scores():
    affine = [two_class_score_gradient("affine", margin)[1] for margin in (0.05, 0.1, 0.2, 0.4)]
    layer_norm = [two_class_score_gradient("layer_norm", margin)[1] for margin in (0.05, 0.1, 0.2, 0.4)]
    assert all(later > earlier for earlier, later in zip(affine, affine[1:]))
    assert max(layer_norm) - min(layer_norm) < 2e-3  # LayerNorm(2): ~0.88 at every margin from 0.05 to 0.4


def test_two_class_training_gradient_reaches_the_embeddings():
    gradients, margins = {}, {}
    for mode in ("affine", "layer_norm"):
        torch.manual_seed(0)
        config = tiny_protoseg_config(
            num_classes=2, num_prototypes_per_class=1, prototype_init="random", class_score_norm=mode,
            ppc_loss_weight=0.0, ppd_loss_weight=0.0,
        )  # fmt: skip
        model = ProtoSegForSemanticSegmentation(config).train()
        with torch.no_grad():  # opposite prototypes: every pixel's two scores differ, as once classes separate
            model.prototypes[1].copy_(-model.prototypes[0])
        prototypes = model.prototypes.clone()
        pixel_values, labels = make_batch(num_classes=2)
        output = model(pixel_values, labels=labels, output_pixel_embeddings=True)
        output.loss.backward()
        gradients[mode] = model.projection_head.output.weight.grad.norm().item()
        embeddings = output.pixel_embeddings.detach().permute(0, 2, 3, 1).reshape(-1, 8)
        scores = embeddings @ prototypes.reshape(2, 8).T  # (N, 2)
        margins[mode] = (scores[:, 0] - scores[:, 1]).abs().median().item()
    assert margins["affine"] > 0.1  # margins of the size seen in training
    assert gradients["affine"] > 10 * gradients["layer_norm"]


def test_one_class_is_a_clear_error():
    with pytest.raises(ValueError, match="num_labels must be >= 2.*background"):
        tiny_protoseg_config(num_classes=1)


def test_unknown_modes_are_clear_errors():
    with pytest.raises(ValueError, match="class_score_norm must be one of 'affine', 'layer_norm'"):
        tiny_protoseg_config(class_score_norm="softmax")
    with pytest.raises(ValueError, match="prototype_init must be one of"):
        tiny_protoseg_config(prototype_init="kmeans")


def test_configs_saved_before_the_option_load_with_the_layer_norm(tmp_path):
    tiny_protoseg_config().save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["class_score_norm"] == "affine"
    del saved["class_score_norm"]  # as package 0.1 wrote it
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert ProtoSegConfig.from_pretrained(tmp_path).class_score_norm == "layer_norm"
    assert ProtoSegConfig().class_score_norm == "affine"


# ---- data-initialised prototypes: no class left at its random start


def test_first_update_sets_each_prototype_to_the_mean_of_all_its_pixels():
    config = tiny_protoseg_config(prototype_momentum=0.9)  # correct-only update, data initialisation
    model = ProtoSegForSemanticSegmentation(config).train()
    pixel_values, labels = make_batch()
    before = model.prototypes.clone()
    output = model(pixel_values, labels=labels, output_pixel_embeddings=True)
    # Reference: recompute the assignment the model made, then the plain mean of every assigned pixel.
    embeddings = output.pixel_embeddings.detach().permute(0, 2, 3, 1).reshape(-1, 8)
    classes = feature_labels(labels)
    own = (embeddings @ before.reshape(12, 8).T).view(-1, 3, 4)[torch.arange(len(classes)), classes]  # (N, K)
    from modeling_protoseg.prototypes import sinkhorn_assign_pixels

    assignments, _ = sinkhorn_assign_pixels(own, classes, 3)
    for class_index in range(3):
        for k in range(4):
            members = (classes == class_index) & (assignments == k)
            expected = F.normalize(embeddings[members].mean(0), dim=0) if members.any() else before[class_index, k]
            torch.testing.assert_close(model.prototypes[class_index, k], expected, rtol=1e-4, atol=1e-5)
    assert model.prototype_health()["never_updated_prototypes"] == 0


def test_a_class_never_predicted_right_still_leaves_its_random_start():
    for init, should_move in (("data", True), ("random", False)):
        torch.manual_seed(0)
        config = tiny_protoseg_config(
            num_classes=2, prototype_momentum=0.5, prototype_init=init, prototype_update_pixels="correct"
        )
        model = ProtoSegForSemanticSegmentation(config).train()
        pixel_values = torch.randn(2, 3, 32, 32)
        wrong = misclassified_labels(model, pixel_values)
        before = model.prototypes.clone()
        model(pixel_values, labels=wrong)  # every pixel misclassified
        assert (not torch.equal(model.prototypes, before)) == should_move, init
        wrong = misclassified_labels(model, pixel_values)
        moved_once = model.prototypes.clone()
        model(pixel_values, labels=wrong)  # after the first update, the correct-only rule applies again
        assert torch.equal(model.prototypes, moved_once)


def _expected_momentum_update(model, before, embeddings, classes, weights, momentum):
    """Per-prototype reference: normalise(mu p + (1 - mu) normalise(mean of the weighted assigned pixels))."""
    num_classes, num_prototypes, dim = before.shape
    own = (embeddings @ before.reshape(-1, dim).T).view(-1, num_classes, num_prototypes)
    own = own[torch.arange(len(classes)), classes]  # (N, K)
    from modeling_protoseg.prototypes import sinkhorn_assign_pixels

    assignments, _ = sinkhorn_assign_pixels(own, classes, num_classes)
    expected = before.clone()
    for class_index in range(num_classes):
        for k in range(num_prototypes):
            members = (classes == class_index) & (assignments == k) & weights
            if members.any():
                mean = F.normalize(embeddings[members].mean(0), dim=0)
                expected[class_index, k] = F.normalize(momentum * before[class_index, k] + (1 - momentum) * mean, dim=0)
    return expected


@pytest.mark.parametrize("rule", ["correct_else_all", "all"])
def test_a_never_predicted_class_keeps_moving_towards_all_its_pixels(rule):
    torch.manual_seed(0)
    config = tiny_protoseg_config(num_classes=2, prototype_momentum=0.5, prototype_update_pixels=rule)
    model = ProtoSegForSemanticSegmentation(config).train()
    pixel_values = torch.randn(2, 3, 32, 32)
    model(pixel_values, labels=misclassified_labels(model, pixel_values))  # first update: data initialisation
    wrong = misclassified_labels(model, pixel_values)
    before = model.prototypes.clone()
    output = model(pixel_values, labels=wrong, output_pixel_embeddings=True)  # no pixel right, again
    embeddings = output.pixel_embeddings.detach().permute(0, 2, 3, 1).reshape(-1, before.shape[-1])
    classes = feature_labels(wrong)
    expected = _expected_momentum_update(model, before, embeddings, classes, torch.ones_like(classes, dtype=torch.bool), 0.5)
    assert not torch.equal(model.prototypes, before)
    torch.testing.assert_close(model.prototypes, expected, rtol=1e-4, atol=1e-5)
    assert model.prototype_health()["dead_prototypes"] == 0


@pytest.mark.parametrize("rule", ["correct_else_all", "correct"])
def test_prototypes_with_correct_pixels_move_with_those_alone(rule):
    torch.manual_seed(0)
    config = tiny_protoseg_config(prototype_momentum=0.5, prototype_update_pixels=rule)
    model = ProtoSegForSemanticSegmentation(config).train()
    pixel_values, labels = make_batch()
    model(pixel_values, labels=labels)  # first update: data initialisation
    with torch.no_grad():  # labels: the prediction for classes 0 and 1, class 2 only where 0 is predicted
        prediction = model(pixel_values).logits.argmax(dim=1)  # (B, H/4, W/4)
    checkerboard = (torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2 == 0
    labels = torch.where(prediction == 2, 0, prediction)
    labels = torch.where((prediction == 0) & checkerboard, 2, labels)
    labels = labels.repeat_interleave(4, dim=1).repeat_interleave(4, dim=2)
    before = model.prototypes.clone()
    output = model(pixel_values, labels=labels, output_pixel_embeddings=True)
    embeddings = output.pixel_embeddings.detach().permute(0, 2, 3, 1).reshape(-1, before.shape[-1])
    classes = feature_labels(labels)
    correct = output.logits.detach().permute(0, 2, 3, 1).reshape(-1, before.shape[0]).argmax(-1) == classes
    expected_correct = _expected_momentum_update(model, before, embeddings, classes, correct, 0.5)
    expected_all = _expected_momentum_update(model, before, embeddings, classes, torch.ones_like(correct), 0.5)
    own = (embeddings @ before.reshape(-1, before.shape[-1]).T).view(-1, *before.shape[:2])
    from modeling_protoseg.prototypes import sinkhorn_assign_pixels

    assignments, _ = sinkhorn_assign_pixels(own[torch.arange(len(classes)), classes], classes, before.shape[0])
    has_correct = torch.zeros(before.shape[:2], dtype=torch.bool)
    has_correct[classes[correct], assignments[correct]] = True
    class_has_correct = has_correct.any(dim=1)  # (C,)
    assert class_has_correct[:2].all() and not class_has_correct[2]  # class 2: labelled, never right
    # Per prototype: its correct pixels if its class has any (none: it stays); a class with no correct pixel at
    # all moves with all its pixels (fallback) or not at all (paper).
    fallback = expected_all if rule == "correct_else_all" else before
    expected = torch.where(class_has_correct[:, None, None], expected_correct, fallback)
    torch.testing.assert_close(model.prototypes, expected, rtol=1e-4, atol=1e-5)


def test_update_pixel_sums_falls_back_to_all_pixels_only_for_classes_never_right():
    from modeling_protoseg.prototypes import update_pixel_sums

    # 2 classes x 2 prototypes (slots 0..3); class 0: slot 0 has a correct pixel, slot 1 only a wrong one;
    # class 1: no correct pixel at all; the last pixel is ignored.
    embeddings = torch.arange(12, dtype=torch.float32).view(6, 2)
    flat_index = torch.tensor([0, 0, 1, 2, 3, 3])
    correct = torch.tensor([True, False, False, False, False, True])
    labelled = torch.tensor([True, True, True, True, True, False])
    first = torch.zeros(4, dtype=torch.bool)
    sums, counts = update_pixel_sums(
        embeddings, flat_index, labelled, correct & labelled, first, 4, num_prototypes=2, fall_back_to_all=True
    )
    assert counts.tolist() == [1, 0, 1, 1]  # slot 1 keeps the correct-pixel rule: its class is right elsewhere
    assert torch.equal(sums, torch.stack([embeddings[0], torch.zeros(2), embeddings[3], embeddings[4]]))
    _, paper_counts = update_pixel_sums(
        embeddings, flat_index, labelled, correct & labelled, first, 4, num_prototypes=2, fall_back_to_all=False
    )
    assert paper_counts.tolist() == [1, 0, 0, 0]
    _, first_counts = update_pixel_sums(
        embeddings, flat_index, labelled, correct & labelled, torch.tensor([False, True, False, False]), 4,
        num_prototypes=2, fall_back_to_all=False,
    )  # fmt: skip
    assert first_counts.tolist() == [1, 1, 0, 0]  # a first update takes all the prototype's labelled pixels


def test_configs_with_the_former_correct_only_flag_load_with_its_rule(tmp_path):
    tiny_protoseg_config().save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["prototype_update_pixels"] == "correct_else_all"
    for legacy, rule in ((True, "correct"), (False, "all")):
        del saved["prototype_update_pixels"]
        saved["update_prototypes_with_correct_only"] = legacy  # as written before the field existed
        (tmp_path / "config.json").write_text(json.dumps(saved))
        config = ProtoSegConfig.from_pretrained(tmp_path)
        assert config.prototype_update_pixels == rule and not hasattr(config, "update_prototypes_with_correct_only")
        saved = json.loads((tmp_path / "config.json").read_text())
        saved["prototype_update_pixels"] = rule


def test_checkpoints_of_the_removed_reseeding_load_with_a_warning(tmp_path, caplog):
    from safetensors.torch import load_file, save_file

    model = ProtoSegForSemanticSegmentation(tiny_protoseg_config()).train()
    model(*make_batch())
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    weights["prototype_bank.reseed_counts"] = torch.zeros(3, 4, dtype=torch.long)  # as saved before re-seeding was removed
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    saved = json.loads((tmp_path / "config.json").read_text())
    saved["reseed_dead_prototypes"] = True
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with caplog.at_level("WARNING"):
        loaded = ProtoSegForSemanticSegmentation.from_pretrained(tmp_path)
    assert "reseed_dead_prototypes=True is no longer supported" in caplog.text
    assert torch.equal(loaded.prototypes, model.prototypes) and not hasattr(loaded.config, "reseed_dead_prototypes")


# ---- health statistics


def test_health_reports_within_class_cosine_and_never_updated_prototypes():
    model = ProtoSegForSemanticSegmentation(tiny_protoseg_config()).train()
    pixel_values, labels = make_batch()
    labels[labels == 2] = 255  # class 2 never appears: its 4 prototypes are never updated
    model(pixel_values, labels=labels)
    health = model.prototype_health()
    prototypes = model.prototypes
    for class_index, name in enumerate(["class_0", "class_1", "class_2"]):
        gram = prototypes[class_index] @ prototypes[class_index].T
        expected = (gram.sum() - gram.diagonal().sum()) / (4 * 3)
        assert health["within_class_cosine"][name] == pytest.approx(expected.item(), abs=1e-5)
    assert health["num_prototypes"] == 12
    assert health["never_updated_prototypes"] == 4
    assert health["dead_prototypes"] == 0
    json.dumps(health)  # plain values, ready for eval_results.json


def test_prototypes_that_never_move_while_their_class_is_present_count_as_dead():
    model = ProtoSegForSemanticSegmentation(
        tiny_protoseg_config(
            num_classes=2, prototype_init="random", dead_prototype_patience=2, prototype_update_pixels="correct"
        )
    ).train()
    pixel_values = torch.randn(2, 3, 32, 32)
    wrong = misclassified_labels(model, pixel_values)
    model(pixel_values, labels=wrong)
    assert model.prototype_health()["dead_prototypes"] == 0  # idle for 1 step < patience 2
    model(pixel_values, labels=wrong)
    present = torch.zeros(2, dtype=torch.bool)
    present[feature_labels(wrong).unique()] = True
    assert model.prototype_health()["dead_prototypes"] == 4 * int(present.sum())
    assert torch.equal(model.prototype_bank.idle_steps, present[:, None].long().expand(2, 4) * 2)


def test_a_non_finite_pixel_never_reaches_the_prototypes():
    model = ProtoSegForSemanticSegmentation(tiny_protoseg_config()).train()
    pixel_values, labels = make_batch()
    pixel_values[0, :, 5, 5] = float("nan")
    model(pixel_values, labels=labels)
    assert torch.isfinite(model.prototypes).all()
    assert model.prototype_health()["skipped_nonfinite_updates"] > 0


def test_statistics_round_trip_and_follow_class_enrolment(tmp_path):
    model = ProtoSegForSemanticSegmentation(tiny_protoseg_config()).train()
    pixel_values, labels = make_batch()
    labels[labels == 2] = 255
    model(pixel_values, labels=labels)
    model.save_pretrained(tmp_path)
    loaded = ProtoSegForSemanticSegmentation.from_pretrained(tmp_path)
    for name in ("update_counts", "idle_steps", "skipped_nonfinite_updates"):
        assert torch.equal(getattr(loaded.prototype_bank, name), getattr(model.prototype_bank, name)), name
    loaded.eval().remove_classes(["class_1"])
    assert loaded.prototype_bank.update_counts.tolist() == [[1] * 4, [0] * 4]  # class_0, then class_2
    image = torch.rand(32, 32, 3).numpy()
    mask = torch.zeros(32, 32, dtype=torch.bool).numpy()
    mask[8:24, 8:24] = True
    loaded.add_classes({"new": [(image, mask)]}, image_size=32)
    assert loaded.prototype_bank.update_counts.shape == (3, 4)
    assert loaded.prototype_bank.update_counts[2].tolist() == [1] * 4  # built from data: not "never updated"
