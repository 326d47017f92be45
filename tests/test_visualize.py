"""The visualisation command renders valid PNGs of the expected size from a saved checkpoint."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import tiny_efficientnet_lite_encoder_config, tiny_protoseg_config
from transformers import SegformerImageProcessor

from modeling_protoseg import ProtoSegForSemanticSegmentation
from protoseg_tools import visualize
from protoseg_tools.visualize import (
    ASSIGNMENT_FIGURE_INCHES,
    PROJECTION_FIGURE_INCHES,
    figure_pixel_size,
    prototype_map_rgb,
    prototype_self_similarity,
    self_similarity_figure_inches,
)

pytest.importorskip("matplotlib")


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    model = ProtoSegForSemanticSegmentation(tiny_protoseg_config(num_classes=3)).eval()
    model.save_pretrained(tmp_path / "checkpoint")
    return tmp_path / "checkpoint"


def write_image(folder: Path, height: int = 40, width: int = 56, seed: int = 0) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    path = folder / f"image_{seed}.png"
    Image.fromarray(pixels).save(path)
    return path


def assert_png(path: Path, size: tuple[int, int]) -> np.ndarray:
    assert path.is_file() and path.suffix == ".png"
    with Image.open(path) as image:
        assert image.format == "PNG" and image.mode == "RGB"
        assert image.size == size
        pixels = np.asarray(image)
    assert pixels.std() > 0  # not a blank canvas
    return pixels


def test_command_writes_the_three_figures(checkpoint: Path, tmp_path: Path):
    image_path = write_image(tmp_path)
    output_dir = tmp_path / "figures"
    paths = visualize.main(
        [
            "--checkpoint",
            str(checkpoint),
            "--image",
            str(image_path),
            str(write_image(tmp_path, seed=1)),
            "--class-name",
            "class_1",
            "--output-dir",
            str(output_dir),
            "--num-samples",
            "300",
        ]
    )
    assert set(paths) == {"prototype_map", "prototype_assignment", "embedding_projection", "prototype_self_similarity"}
    assert all(Path(path).parent == output_dir for path in paths.values())
    assert_png(paths["prototype_map"], (56, 40))  # the image's own size
    assert_png(paths["prototype_assignment"], figure_pixel_size(*ASSIGNMENT_FIGURE_INCHES))
    assert_png(paths["embedding_projection"], figure_pixel_size(*PROJECTION_FIGURE_INCHES))
    assert_png(paths["prototype_self_similarity"], figure_pixel_size(*self_similarity_figure_inches(3)))


def test_command_runs_as_a_module_with_a_processor_and_labels(checkpoint: Path, tmp_path: Path):
    SegformerImageProcessor(size={"height": 32, "width": 32}).save_pretrained(checkpoint)
    image_path = write_image(tmp_path, height=48, width=48)
    label_path = tmp_path / "label.png"
    Image.fromarray(np.repeat(np.arange(3, dtype=np.uint8), 16)[None].repeat(48, axis=0)).save(label_path)
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "protoseg_tools.visualize",
            "--checkpoint",
            str(checkpoint),
            "--image",
            str(image_path),
            "--label",
            str(label_path),
            "--class-name",
            "class_0",
            "--output-dir",
            str(tmp_path / "out"),
        ],
        check=False,
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "embedding_projection:" in completed.stdout
    assert_png(tmp_path / "out" / "prototype_map_class_0.png", (48, 48))


def test_unknown_class_and_missing_checkpoint_are_clear_errors(checkpoint: Path, tmp_path: Path):
    image_path = write_image(tmp_path)
    with pytest.raises(ValueError, match="unknown class name"):
        visualize.main(
            [
                "--checkpoint",
                str(checkpoint),
                "--image",
                str(image_path),
                "--class-name",
                "sky",
                "--output-dir",
                str(tmp_path / "out"),
            ]
        )
    with pytest.raises(FileNotFoundError, match="no config.json"):
        visualize.main(
            [
                "--checkpoint",
                str(tmp_path),
                "--image",
                str(image_path),
                "--class-name",
                "class_0",
                "--output-dir",
                str(tmp_path / "out"),
            ]
        )


@pytest.mark.parametrize(
    "encoder, mean, std",
    [  # written out by hand: EfficientNet-Lite's weights expect (x - 0.5) / 0.5, MiT's the ImageNet statistics
        ("efficientnet_lite", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        ("mit", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ],
)
def test_figures_feed_the_encoder_the_normalisation_of_the_checkpoints_config(
    encoder, mean, std, tmp_path, monkeypatch
):
    encoder_config = tiny_efficientnet_lite_encoder_config() if encoder == "efficientnet_lite" else None
    checkpoint = tmp_path / "checkpoint"  # saved without a preprocessor_config.json: the config alone says how
    ProtoSegForSemanticSegmentation(tiny_protoseg_config(encoder_config=encoder_config)).save_pretrained(checkpoint)
    seen: list[torch.Tensor] = []
    load_checkpoint = visualize.load_checkpoint

    def load_and_watch_the_encoder(folder):
        model, image_processor = load_checkpoint(folder)
        model.encoder.register_forward_pre_hook(
            lambda module, args, kwargs: seen.append(kwargs.get("pixel_values", args[0] if args else None).clone()),
            with_kwargs=True,
        )
        return model, image_processor

    monkeypatch.setattr(visualize, "load_checkpoint", load_and_watch_the_encoder)
    image_path = write_image(tmp_path)
    visualize.main(["--checkpoint", str(checkpoint), "--image", str(image_path), "--class-name", "class_0",
                    "--output-dir", str(tmp_path / "figures"), "--num-samples", "50"])  # fmt: skip
    pixels = np.asarray(Image.open(image_path), dtype=np.float64)  # (40, 56, 3), 0-255
    expected = torch.from_numpy((pixels / 255.0 - np.array(mean)) / np.array(std)).permute(2, 0, 1)[None].float()
    assert len(seen) >= 2  # the prototype map and assignment, the embedding projection
    for pixel_values in seen:
        torch.testing.assert_close(pixel_values, expected, atol=1e-5, rtol=0)


def test_prototype_map_hue_is_the_closest_prototype_and_brightness_its_similarity():
    similarities = torch.tensor([[[0.9, -0.3]], [[0.2, 0.5]]])  # (K=2, h=1, w=2)
    colours = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    rgb = prototype_map_rgb(similarities, colours)  # (1, 2, 3)
    np.testing.assert_allclose(rgb[0, 0], [0.9, 0.0, 0.0], atol=1e-6)  # prototype 0, similarity 0.9
    np.testing.assert_allclose(rgb[0, 1], [0.0, 0.0, 0.5], atol=1e-6)  # prototype 1, similarity 0.5


def test_self_similarity_exposes_collapsed_prototypes():
    model = ProtoSegForSemanticSegmentation(tiny_protoseg_config(num_classes=2))
    with torch.no_grad():
        model.prototypes[1] = model.prototypes[1, :1].expand(4, -1)  # class 1 collapsed into one prototype
    similarity = prototype_self_similarity(model.prototypes)
    torch.testing.assert_close(similarity[1], torch.ones(4, 4))
    assert similarity[0].triu(diagonal=1).abs().max() < 0.99
