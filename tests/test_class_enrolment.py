"""Class enrolment without gradient steps, class removal, and the prototype similarity maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from isolated_python import run_python_without_repository
from tiny_models import tiny_efficientnet_lite_encoder_config, tiny_protoseg_config
from transformers import SegformerImageProcessor

from modeling_protoseg import ProtoSegForSemanticSegmentation, sinkhorn_assign_pixels
from modeling_protoseg.class_enrolment import (
    cluster_embeddings_into_prototypes,
    mask_to_feature_grid,
    preprocess_image,
)

IMAGE_SIZE = 32  # model output grid 8 x 8
RED = (220, 20, 20)


def tiny_model(num_classes: int = 3, **overrides) -> ProtoSegForSemanticSegmentation:
    return ProtoSegForSemanticSegmentation(tiny_protoseg_config(num_classes=num_classes, **overrides)).eval()


def noise_scene(seed: int, red_rows: slice, size: int = IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """A random-noise image with a band of rows painted red: (image (H, W, 3) uint8, red mask (H, W) bool)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    mask = np.zeros((size, size), dtype=bool)
    mask[red_rows] = True
    image[mask] = RED
    return image, mask


def colour_embedding_hooks(model: ProtoSegForSemanticSegmentation) -> list:
    """Make the model's pixel embeddings a fixed function of the mean colour of each 4x4 cell, so that
    colours are separable in embedding space (a random tiny network does not separate them)."""
    generator = torch.Generator().manual_seed(0)
    colour_to_embedding = torch.randn(model.config.embedding_dim, 3, generator=generator)
    captured: dict[str, torch.Tensor] = {}

    def capture_pixels(module, args, kwargs):
        captured["pixel_values"] = kwargs.get("pixel_values", args[0] if args else None)

    def colour_embeddings(module, args, output):
        cell_colours = F.avg_pool2d(captured["pixel_values"], kernel_size=4)  # (B, 3, h, w)
        return F.normalize(torch.einsum("dc,bchw->bdhw", colour_to_embedding, cell_colours) + 0.1, dim=1)

    return [
        model.register_forward_pre_hook(capture_pixels, with_kwargs=True),
        model.projection_head.register_forward_hook(colour_embeddings),
    ]


def state_snapshot(model: ProtoSegForSemanticSegmentation) -> tuple[dict, dict]:
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}, model.config.to_dict()


def assert_unchanged(model: ProtoSegForSemanticSegmentation, snapshot: tuple[dict, dict]) -> None:
    state, config = snapshot
    assert model.state_dict().keys() == state.keys()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[name]), name
    assert model.config.to_dict() == config


def reference_cell_embeddings(model, image: np.ndarray, cell_mask: np.ndarray) -> torch.Tensor:
    """(N, D) embeddings of the output cells in `cell_mask` (h, w), via a plain forward pass."""
    with torch.no_grad():
        pixel_values = preprocess_image(image, normalization=model.config.input_normalization)
        embeddings = model(pixel_values, output_pixel_embeddings=True).pixel_embeddings[0]
    return embeddings.permute(1, 2, 0)[torch.from_numpy(cell_mask)]


# ---------------------------------------------------------------------------------------------
# Clustering


def test_clustering_recovers_well_separated_sub_clusters():
    generator = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(3, 8, generator=generator), dim=-1)
    points = F.normalize(centres.repeat_interleave(40, dim=0) + 0.05 * torch.randn(120, 8, generator=generator), dim=-1)
    prototypes = cluster_embeddings_into_prototypes(points[torch.randperm(120, generator=generator)], 3)
    expected = F.normalize(points.view(3, 40, 8).mean(dim=1), dim=-1)  # the normalised mean of each blob
    matching = (prototypes @ expected.T).argmax(dim=1)
    assert sorted(matching.tolist()) == [0, 1, 2]
    torch.testing.assert_close(prototypes, expected[matching], atol=1e-5, rtol=0)


def test_clustering_ends_on_a_fixed_point_of_sinkhorn_assignment_and_means():
    generator = torch.Generator().manual_seed(1)
    points = F.normalize(torch.randn(200, 8, generator=generator), dim=-1)
    prototypes = cluster_embeddings_into_prototypes(points, 4, max_rounds=100)
    assert prototypes.shape == (4, 8)
    torch.testing.assert_close(prototypes.norm(dim=-1), torch.ones(4))
    assignments, _ = sinkhorn_assign_pixels(points @ prototypes.T, torch.zeros(200, dtype=torch.long), 1)
    counts = torch.bincount(assignments, minlength=4)
    assert (counts > 20).all(), counts  # equipartition: no prototype left empty or dominant
    means = torch.stack([F.normalize(points[assignments == k].mean(dim=0), dim=0) for k in range(4)])
    torch.testing.assert_close(prototypes, means, atol=1e-5, rtol=0)


def test_clustering_with_fewer_pixels_than_prototypes_reuses_them():
    points = F.normalize(torch.randn(2, 8), dim=-1)
    prototypes = cluster_embeddings_into_prototypes(points, 5)
    torch.testing.assert_close(prototypes, points[[0, 1, 0, 1, 0]])


def test_mask_reduction_is_area_majority_and_keeps_tiny_objects():
    mask = np.zeros((8, 8), dtype=bool)
    mask[:4, :3] = True  # 3/4 of the top-left 4x4 cell of a 2x2 grid: selected; 0 of the others
    assert mask_to_feature_grid(mask, (2, 2)).tolist() == [[True, False], [False, False]]
    tiny = np.zeros((8, 8), dtype=bool)
    tiny[7, 7] = True  # 1/16 of a cell: still gives that cell
    assert mask_to_feature_grid(tiny, (2, 2)).tolist() == [[False, False], [False, True]]


# ---------------------------------------------------------------------------------------------
# add_classes


def test_single_prototype_is_the_mean_direction_of_the_masked_pixels():
    model = tiny_model(num_prototypes_per_class=1)
    image, mask = noise_scene(0, slice(0, 12))  # rows 0-11 = output rows 0-2 exactly
    model.add_classes({"red": [(image, mask)]})
    cells = np.zeros((8, 8), dtype=bool)
    cells[:3] = True
    expected = F.normalize(reference_cell_embeddings(model, image, cells).mean(dim=0), dim=0)
    torch.testing.assert_close(model.prototypes[-1, 0], expected, atol=1e-5, rtol=0)


def test_enrolled_prototypes_equal_clustering_of_the_masked_pixels_of_all_images():
    model = tiny_model()
    examples = [noise_scene(0, slice(0, 16)), noise_scene(1, slice(8, 20))]
    old_prototypes = model.prototypes.clone()
    assert model.add_classes({"red": examples}) == {"red": 3}
    cells_0, cells_1 = np.zeros((8, 8), dtype=bool), np.zeros((8, 8), dtype=bool)
    cells_0[0:4], cells_1[2:5] = True, True
    pixels = torch.cat(
        [
            reference_cell_embeddings(model, examples[0][0], cells_0),
            reference_cell_embeddings(model, examples[1][0], cells_1),
        ]
    )
    expected = cluster_embeddings_into_prototypes(pixels, 4)
    assert model.prototypes.shape == (4, 4, 8) and model.prototypes.dtype == torch.float32
    torch.testing.assert_close(model.prototypes[3], expected, atol=1e-5, rtol=0)
    assert torch.equal(model.prototypes[:3], old_prototypes)  # existing classes untouched


def test_add_classes_extends_config_and_class_norm_with_the_mean_entry():
    model = tiny_model()
    with torch.no_grad():
        model.class_score_norm.weight.copy_(torch.tensor([1.0, 2.0, 3.0]))
        model.class_score_norm.bias.copy_(torch.tensor([0.3, 0.0, -0.6]))
    image, mask = noise_scene(0, slice(0, 16))
    ids = model.add_classes({"red": [(image, mask)], "blue": [(255 - image, ~mask)]})
    assert ids == {"red": 3, "blue": 4}
    assert model.config.num_labels == 5
    assert model.config.id2label == {0: "class_0", 1: "class_1", 2: "class_2", 3: "red", 4: "blue"}
    assert model.config.label2id == {"class_0": 0, "class_1": 1, "class_2": 2, "red": 3, "blue": 4}
    torch.testing.assert_close(model.class_score_norm.weight.detach(), torch.tensor([1.0, 2.0, 3.0, 2.0, 2.0]))
    torch.testing.assert_close(model.class_score_norm.bias.detach(), torch.tensor([0.3, 0.0, -0.6, -0.1, -0.1]))
    assert model.class_score_norm.weight.requires_grad
    logits = model(preprocess_image(image, normalization=model.config.input_normalization)).logits
    assert logits.shape == (1, 5, 8, 8)


def test_enrolled_class_is_predicted_where_the_embedding_separates_it():
    model = tiny_model(num_classes=2)
    colour_embedding_hooks(model)
    image, mask = noise_scene(0, slice(0, 16))
    model.add_classes({"noise": [(image, ~mask)], "red": [(image, mask)]})
    model.remove_classes(["class_0", "class_1"])  # keep only the two enrolled classes
    assert model.config.id2label == {0: "noise", 1: "red"}
    test_image, test_mask = noise_scene(5, slice(12, 28))  # another image, the band elsewhere
    with torch.no_grad():
        pixel_values = preprocess_image(test_image, normalization=model.config.input_normalization)
        prediction = model(pixel_values).logits.argmax(dim=1)[0]  # (8, 8)
    cells = mask_to_feature_grid(test_mask, (8, 8))
    assert (prediction[cells] == 1).float().mean() == 1.0
    assert (prediction[~cells] == 0).float().mean() >= 0.9


def test_add_classes_through_an_image_processor_and_pil_images():
    from PIL import Image

    model = tiny_model()
    image, mask = noise_scene(0, slice(0, 24), size=48)  # resized to 32 by the processor
    processor = SegformerImageProcessor(size={"height": 32, "width": 32})
    model.add_classes({"red": [(Image.fromarray(image), mask)]}, image_processor=processor)
    pixel_values = processor(images=[Image.fromarray(image)], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        embeddings = model(pixel_values, output_pixel_embeddings=True).pixel_embeddings[0]
    red_cells = embeddings.permute(1, 2, 0)[:4]  # rows 0-23 of 48 = output rows 0-3 of 8
    expected = cluster_embeddings_into_prototypes(red_cells.reshape(-1, 8), 4)
    torch.testing.assert_close(model.prototypes[3], expected, atol=1e-5, rtol=0)


def capture_encoder_inputs(model: ProtoSegForSemanticSegmentation) -> list[torch.Tensor]:
    """The pixel values every forward of `model.encoder` receives, appended as it runs."""
    seen: list[torch.Tensor] = []

    def capture(module, args, kwargs):
        seen.append(kwargs.get("pixel_values", args[0] if args else None).detach().clone())

    model.encoder.register_forward_pre_hook(capture, with_kwargs=True)
    return seen


# (encoder config, mean, std) written out by hand: EfficientNet-Lite's weights expect (x - 0.5) / 0.5, MiT's ImageNet's
NORMALISATION_CASES = {
    "efficientnet_lite": (tiny_efficientnet_lite_encoder_config, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "mit": (lambda: None, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


@pytest.mark.parametrize("encoder", sorted(NORMALISATION_CASES))
def test_enrolment_feeds_the_encoder_the_normalisation_of_the_config(encoder):
    encoder_config, mean, std = NORMALISATION_CASES[encoder]
    model = tiny_model(encoder_config=encoder_config())
    seen = capture_encoder_inputs(model)
    image, mask = noise_scene(0, slice(0, 16))
    model.add_classes({"red": [(image, mask)]})
    # by hand, in float64: (pixel / 255 - mean) / std per channel, as (1, 3, H, W)
    expected = (image.astype(np.float64) / 255.0 - np.array(mean)) / np.array(std)
    expected = torch.from_numpy(expected).permute(2, 0, 1)[None].float()
    assert len(seen) == 1
    torch.testing.assert_close(seen[0], expected, atol=1e-5, rtol=0)
    if encoder == "efficientnet_lite":
        assert seen[0].min() < -0.99 and seen[0].max() > 0.99  # a 0-255 noise image spans [-1, 1]


def test_preprocessing_without_a_normalisation_or_with_another_processors_is_refused():
    model = tiny_model(encoder_config=tiny_efficientnet_lite_encoder_config())
    image, mask = noise_scene(0, slice(0, 16))
    with pytest.raises(ValueError, match="normalization=model.config.input_normalization"):
        preprocess_image(image)
    imagenet_processor = SegformerImageProcessor(size={"height": 32, "width": 32})  # ImageNet mean/std
    with pytest.raises(ValueError, match=r"the model expects \[0.5, 0.5, 0.5\] / \[0.5, 0.5, 0.5\]"):
        model.add_classes({"red": [(image, mask)]}, image_processor=imagenet_processor)
    assert model.config.num_labels == 3
    half = [0.5, 0.5, 0.5]
    lite_processor = SegformerImageProcessor(size={"height": 32, "width": 32}, image_mean=half, image_std=half)
    seen = capture_encoder_inputs(model)
    model.add_classes({"red": [(image, mask)]}, image_processor=lite_processor)
    expected = torch.from_numpy(image / 127.5 - 1.0).permute(2, 0, 1)[None].float()  # (x - 0.5) / 0.5 by hand
    torch.testing.assert_close(seen[0], expected, atol=1e-5, rtol=0)


def test_enrolment_changes_no_batchnorm_statistics_and_keeps_the_training_mode():
    model = tiny_model().train()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    model.add_classes({"red": [noise_scene(0, slice(0, 16))]})
    assert model.training and model.class_score_norm.training
    for name, tensor in model.state_dict().items():
        if not name.startswith(("prototype_bank", "class_score_norm")):
            assert torch.equal(tensor, before[name]), name


def test_enrolled_model_saves_and_loads_with_the_new_class_count(tmp_path):
    model = tiny_model()
    model.add_classes({"red": [noise_scene(0, slice(0, 16))]})
    model.save_pretrained(tmp_path)
    loaded = ProtoSegForSemanticSegmentation.from_pretrained(tmp_path).eval()
    assert loaded.config.num_labels == 4 and loaded.config.id2label[3] == "red"
    assert loaded.config.label2id["red"] == 3
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    pixel_values = preprocess_image(noise_scene(3, slice(4, 8))[0], normalization=model.config.input_normalization)
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values).logits, model(pixel_values).logits)


def test_enrolled_model_loads_as_remote_code_without_the_package(tmp_path):
    model = tiny_model()
    model.add_classes({"red": [noise_scene(0, slice(0, 16))]})
    model.save_pretrained(tmp_path / "checkpoint")
    assert (tmp_path / "checkpoint" / "class_enrolment.py").is_file()
    pixel_values = preprocess_image(noise_scene(3, slice(4, 8))[0], normalization=model.config.input_normalization)
    with torch.no_grad():
        torch.save({"pixel_values": pixel_values, "logits": model(pixel_values).logits}, tmp_path / "reference.pt")
    script = """
        import torch
        from transformers import AutoModelForSemanticSegmentation
        model = AutoModelForSemanticSegmentation.from_pretrained("checkpoint", trust_remote_code=True).eval()
        reference = torch.load("reference.pt")
        with torch.no_grad():
            torch.testing.assert_close(model(reference["pixel_values"]).logits, reference["logits"])
        assert model.config.id2label[3] == "red" and hasattr(model, "add_classes")
        model.remove_classes(["red"])
        print("REMOTE-OK", model.config.num_labels)
        """
    completed = run_python_without_repository(
        script, cwd=tmp_path, environment={"HF_MODULES_CACHE": str(tmp_path / "modules")}
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "REMOTE-OK 3" in completed.stdout


def _bad_inputs() -> list:
    image, mask = noise_scene(0, slice(0, 16))
    return [
        pytest.param({"red": [(image, np.zeros_like(mask))]}, "marks no pixel", id="empty-mask"),
        pytest.param({"class_1": [(image, mask)]}, "already exists", id="duplicate-name"),
        pytest.param({"red": [(image[..., 0], mask)]}, r"shape \(H, W, 3\)", id="grey-2d-image"),
        pytest.param({"red": [(np.dstack([image, image[..., :1]]), mask)]}, r"shape \(H, W, 3\)", id="rgba-array"),
        pytest.param({"red": [(image, mask[:16])]}, "has shape", id="mask-size-mismatch"),
        pytest.param({"red": [(image, mask.astype(np.uint8) * 7)]}, "boolean", id="non-boolean-mask"),
        pytest.param({"red": []}, "non-empty list", id="no-examples"),
        pytest.param({"red": [image]}, r"\(image, mask\) pair", id="not-a-pair"),
        pytest.param({"": [(image, mask)]}, "non-empty strings", id="empty-name"),
        pytest.param({}, "at least one class", id="no-class"),
        # the first class is fine, the second is broken: nothing at all may change
        pytest.param(
            {"red": [(image, mask)], "blue": [(image, mask), (image, ~mask[:, :8])]},
            "has shape",
            id="second-class-broken",
        ),
    ]


@pytest.mark.parametrize("examples, message", _bad_inputs())
def test_bad_enrolment_input_is_a_clear_error_and_leaves_the_model_unchanged(examples, message):
    model = tiny_model()
    snapshot = state_snapshot(model)
    with pytest.raises(ValueError, match=message):
        model.add_classes(examples)
    assert_unchanged(model, snapshot)


def test_enrolment_refuses_to_reach_the_ignore_index():
    model = tiny_model(num_classes=3, semantic_loss_ignore_index=3)
    snapshot = state_snapshot(model)
    with pytest.raises(ValueError, match="ignore index"):
        model.add_classes({"red": [noise_scene(0, slice(0, 16))]})
    assert_unchanged(model, snapshot)


# ---------------------------------------------------------------------------------------------
# remove_classes


def test_remove_classes_drops_rows_and_renumbers_the_rest():
    model = tiny_model(num_classes=4)
    with torch.no_grad():
        model.class_score_norm.weight.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    old_prototypes = model.prototypes.clone()
    assert model.remove_classes(["class_1"]) == {"class_0": 0, "class_2": 1, "class_3": 2}
    assert model.config.num_labels == 3 and model.config.label2id == {"class_0": 0, "class_2": 1, "class_3": 2}
    assert torch.equal(model.prototypes, old_prototypes[[0, 2, 3]])
    torch.testing.assert_close(model.class_score_norm.weight.detach(), torch.tensor([1.0, 3.0, 4.0]))
    assert model(torch.randn(1, 3, 32, 32)).logits.shape == (1, 3, 8, 8)


def test_adding_then_removing_a_class_restores_the_exact_model(tmp_path):
    model = tiny_model()
    snapshot = state_snapshot(model)
    model.add_classes({"red": [noise_scene(0, slice(0, 16))]})
    model.remove_classes(["red"])
    assert_unchanged(model, snapshot)


@pytest.mark.parametrize(
    "names, message",
    [
        (["sky"], "unknown class"),
        (["class_0", "class_0"], "repeated"),
        (["class_0", "class_1", "class_2"], "at least two must remain"),
        (["class_0", "class_1"], "at least two must remain"),
        ([], "at least one"),
    ],
)
def test_bad_removal_is_a_clear_error_and_leaves_the_model_unchanged(names, message):
    model = tiny_model()
    snapshot = state_snapshot(model)
    with pytest.raises(ValueError, match=message):
        model.remove_classes(names)
    assert_unchanged(model, snapshot)


# ---------------------------------------------------------------------------------------------
# prototype_similarity_maps


def test_similarity_maps_match_embeddings_times_the_class_prototypes():
    model = tiny_model()
    pixel_values = torch.randn(2, 3, 32, 32)
    nearest_class, nearest_index, class_similarities = model.prototype_similarity_maps(pixel_values, "class_2")
    with torch.no_grad():
        embeddings = model(pixel_values, output_pixel_embeddings=True).pixel_embeddings  # (2, D, 8, 8)
    expected = torch.einsum("bdhw,kd->bkhw", embeddings, model.prototypes[2])
    assert class_similarities.shape == (2, 4, 8, 8)
    torch.testing.assert_close(class_similarities, expected)
    all_similarities = torch.einsum("bdhw,ckd->bckhw", embeddings, model.prototypes).flatten(1, 2)  # (2, C*K, 8, 8)
    best = all_similarities.argmax(dim=1)
    assert torch.equal(nearest_class, best // 4) and torch.equal(nearest_index, best % 4)
    of_class_2 = nearest_class == 2
    assert torch.equal(nearest_index[of_class_2], class_similarities.argmax(dim=1)[of_class_2])
    by_index = model.prototype_similarity_maps(pixel_values, 2)
    torch.testing.assert_close(by_index.class_similarities, class_similarities)


@pytest.mark.parametrize("class_id_or_name", ["sky", 3, -1, 1.0])
def test_similarity_maps_reject_unknown_classes(class_id_or_name):
    with pytest.raises(ValueError):
        tiny_model().prototype_similarity_maps(torch.randn(1, 3, 32, 32), class_id_or_name)


def test_enrolment_and_maps_on_a_bfloat16_model_keep_float32_prototypes():
    model = tiny_model().to(torch.bfloat16)
    model.add_classes({"red": [noise_scene(0, slice(0, 16))]})
    assert model.prototypes.dtype == torch.float32 and model.prototypes.shape == (4, 4, 8)
    assert model.class_score_norm.weight.dtype == torch.bfloat16
    torch.testing.assert_close(model.prototypes[3].norm(dim=-1), torch.ones(4))  # the new class: exact float32
    maps = model.prototype_similarity_maps(torch.randn(1, 3, 32, 32), "red")  # float32 input, cast inside
    assert maps.class_similarities.dtype == torch.float32 and maps.class_similarities.shape == (1, 4, 8, 8)
