"""Render what a ProtoSeg checkpoint's prototypes do, as PNG files.

    python -m protoseg_tools.visualize --checkpoint FOLDER --image IMG [IMG ...] --class-name NAME \
        --output-dir DIR [--label LABEL_PNG ...] [--image-size 512] [--num-samples 2000]

writes into DIR:
    prototype_map_<class>.png          the paper's Figure 3 at the image's own size: every pixel coloured by
                                       the closest of the class's K prototypes, brightness = similarity
    prototype_assignment_<class>.png   the same with the input image and the class's predicted region, legend
    embedding_projection.png           2-D PCA of sampled pixel embeddings (dots, coloured by class) and all
                                       prototypes (stars), as the paper's Figure 5
    prototype_self_similarity.png      per class, the K x K cosine similarities of its prototypes: a class
                                       whose prototypes collapsed into one shows a uniformly bright square

Not imported by the model (matplotlib is needed here only, imported lazily with the Agg backend).
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from modeling_protoseg.class_enrolment import image_to_array, preprocess_image
from modeling_protoseg.modeling_protoseg import ProtoSegForSemanticSegmentation

FIGURE_DPI = 100
ASSIGNMENT_FIGURE_INCHES = (9.6, 3.6)  # (width, height): image | prototype map | class region, legend below
PROJECTION_FIGURE_INCHES = (7.2, 6.0)
SELF_SIMILARITY_PANEL_INCHES = 2.0
SELF_SIMILARITY_MAX_COLUMNS = 5


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("protoseg_tools.visualize needs matplotlib: pip install matplotlib") from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_figure(figure: Any, path: Path) -> Path:
    """Write a matplotlib figure as an RGB PNG of exactly figsize * FIGURE_DPI pixels."""
    plt = _pyplot()
    figure.set_dpi(FIGURE_DPI)
    figure.canvas.draw()
    rgba = np.asarray(figure.canvas.buffer_rgba())  # (H, W, 4)
    Image.fromarray(rgba[..., :3].copy()).save(path, optimize=True)
    plt.close(figure)
    return path


def figure_pixel_size(width_inches: float, height_inches: float) -> tuple[int, int]:
    """(width, height) in pixels of a figure written by this module."""
    return round(width_inches * FIGURE_DPI), round(height_inches * FIGURE_DPI)


def self_similarity_figure_inches(num_classes: int) -> tuple[float, float]:
    columns = min(num_classes, SELF_SIMILARITY_MAX_COLUMNS)
    rows = math.ceil(num_classes / SELF_SIMILARITY_MAX_COLUMNS)
    return columns * SELF_SIMILARITY_PANEL_INCHES + 1.3, rows * (SELF_SIMILARITY_PANEL_INCHES + 0.3) + 0.5


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "class"


def distinct_colours(count: int) -> np.ndarray:
    """(count, 3) float RGB in [0, 1]: tab10 / tab20 when they suffice, evenly spaced hues otherwise."""
    plt = _pyplot()
    if count <= 10:
        return np.asarray(plt.get_cmap("tab10").colors[:count])
    if count <= 20:
        return np.asarray(plt.get_cmap("tab20").colors[:count])
    return plt.get_cmap("hsv")(np.linspace(0.0, 1.0, count, endpoint=False))[:, :3]


# ----------------------------------------------------------------------------------------------
# Loading


def load_checkpoint(checkpoint: str | os.PathLike) -> tuple[ProtoSegForSemanticSegmentation, Any | None]:
    """The model (eval mode) and, when the folder has a preprocessor_config.json, its image processor."""
    folder = Path(checkpoint)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not a checkpoint folder (no config.json)")
    model = ProtoSegForSemanticSegmentation.from_pretrained(folder).eval()
    image_processor = None
    if (folder / "preprocessor_config.json").is_file():
        from transformers import AutoImageProcessor

        image_processor = AutoImageProcessor.from_pretrained(folder)
    return model, image_processor


@torch.no_grad()
def embed_image(
    model: ProtoSegForSemanticSegmentation,
    image: np.ndarray,
    *,
    image_processor: Any | None = None,
    image_size: int | None = None,
) -> dict[str, torch.Tensor]:
    """Run one (H, W, 3) image: {"embeddings" (D, h, w), "prediction" (h, w), "nearest_class" (h, w),
    "nearest_index" (h, w)}."""
    pixel_values = preprocess_image(
        image, normalization=model.config.input_normalization, image_processor=image_processor, image_size=image_size
    )
    model.eval()
    outputs = model(
        pixel_values=pixel_values.to(model.device, dtype=model.dtype),
        output_pixel_embeddings=True,
        output_nearest_prototypes=True,
        return_dict=True,
    )
    return {
        "embeddings": outputs.pixel_embeddings[0].float().cpu(),
        "prediction": outputs.logits[0].argmax(dim=0).cpu(),
        "nearest_class": outputs.nearest_prototype_class[0].cpu(),
        "nearest_index": outputs.nearest_prototype_index[0].cpu(),
    }


def _resize_nearest(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """(h, w) or (h, w, c) -> (height, width[, c]) by nearest neighbour."""
    rows = (np.arange(height) * array.shape[0] // height).clip(0, array.shape[0] - 1)
    cols = (np.arange(width) * array.shape[1] // width).clip(0, array.shape[1] - 1)
    return array[rows][:, cols]


# ----------------------------------------------------------------------------------------------
# (a) the paper's Figure 3: closest prototype of one class, brightness = similarity


def prototype_map_rgb(class_similarities: torch.Tensor, colours: np.ndarray) -> np.ndarray:
    """(K, h, w) similarities -> (h, w, 3) float in [0, 1]: hue = closest prototype, brightness = its
    similarity clipped to [0, 1] (absolute, so maps of different images compare)."""
    best_similarity, closest = class_similarities.max(dim=0)  # (h, w)
    brightness = best_similarity.clamp(0.0, 1.0).numpy()[..., None]
    return colours[closest.numpy()] * brightness


@torch.no_grad()
def render_prototype_assignment(
    model: ProtoSegForSemanticSegmentation,
    image: Any,
    class_name: str,
    output_dir: str | os.PathLike,
    *,
    image_processor: Any | None = None,
    image_size: int | None = None,
) -> tuple[Path, Path]:
    """Write prototype_map_<class>.png (image size) and prototype_assignment_<class>.png (with context).

    Returns:
        (map path, figure path).
    """
    plt = _pyplot()
    image_array = image_to_array(image)
    height, width = image_array.shape[:2]
    class_id = model.resolve_class_id(class_name)
    pixel_values = preprocess_image(
        image_array,
        normalization=model.config.input_normalization,
        image_processor=image_processor,
        image_size=image_size,
    )
    maps = model.prototype_similarity_maps(pixel_values.to(model.dtype), class_id)
    class_similarities = maps.class_similarities[0].cpu()  # (K, h, w)
    num_prototypes = class_similarities.shape[0]
    colours = distinct_colours(num_prototypes)

    coloured = _resize_nearest(prototype_map_rgb(class_similarities, colours), height, width)  # (H, W, 3)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    map_path = output_dir / f"prototype_map_{_safe_name(class_name)}.png"
    Image.fromarray((coloured * 255).round().astype(np.uint8)).save(map_path)

    # The class's predicted region (argmax of the logits).
    with torch.no_grad():
        logits = model(pixel_values=pixel_values.to(model.device, dtype=model.dtype)).logits[0]
    in_class = _resize_nearest((logits.argmax(dim=0).cpu() == class_id).numpy(), height, width)  # (H, W)
    closest = _resize_nearest(class_similarities.argmax(dim=0).numpy(), height, width)
    image_unit = image_array / 255.0
    grey = image_unit.mean(axis=-1, keepdims=True).repeat(3, axis=-1) * 0.5
    region = np.where(in_class[..., None], 0.35 * image_unit + 0.65 * coloured, grey)

    figure, axes = plt.subplots(1, 3, figsize=ASSIGNMENT_FIGURE_INCHES, dpi=FIGURE_DPI)
    panels = [
        (image_unit, "input image"),
        (coloured, f"closest '{class_name}' prototype\n(brightness = similarity)"),
        (region, f"on pixels predicted '{class_name}'\n({in_class.mean():.0%} of the image)"),
    ]
    for axis, (picture, title) in zip(axes, panels):
        axis.imshow(np.clip(picture, 0, 1), interpolation="nearest")
        axis.set_title(title, fontsize=9)
        axis.axis("off")
    shares = [float((closest[in_class] == k).mean()) if in_class.any() else 0.0 for k in range(num_prototypes)]
    handles = [
        plt.Rectangle((0, 0), 1, 1, color=colours[k], label=f"prototype {k} ({shares[k]:.0%})")
        for k in range(num_prototypes)
    ]
    figure.legend(handles=handles, loc="lower center", ncol=min(num_prototypes, 5), fontsize=8, frameon=False)
    figure.subplots_adjust(left=0.01, right=0.99, top=0.86, bottom=0.06 + 0.06 * math.ceil(num_prototypes / 5))
    figure_path = _save_figure(figure, output_dir / f"prototype_assignment_{_safe_name(class_name)}.png")
    return map_path, figure_path


# ----------------------------------------------------------------------------------------------
# (b) the paper's Figure 5: 2-D projection of pixel embeddings and prototypes


def pca_projection(points: torch.Tensor, num_components: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean (D,), components (D, 2)) of the principal axes of (N, D) points (exact SVD)."""
    mean = points.mean(dim=0)
    _, _, right_vectors = torch.linalg.svd(points - mean, full_matrices=False)
    return mean, right_vectors[:num_components].T


@torch.no_grad()
def render_embedding_projection(
    model: ProtoSegForSemanticSegmentation,
    images: Sequence[Any],
    output_dir: str | os.PathLike,
    *,
    labels: Sequence[np.ndarray | None] | None = None,
    image_processor: Any | None = None,
    image_size: int | None = None,
    num_samples: int = 2000,
    seed: int = 0,
) -> Path:
    """Write embedding_projection.png: sampled pixel embeddings (coloured by ground-truth class when a label
    map is given, else by predicted class) and every prototype (stars), in the PCA plane of the pixels."""
    plt = _pyplot()
    id2label = {int(index): str(name) for index, name in model.config.id2label.items()}
    ignore_index = model.config.semantic_loss_ignore_index
    all_embeddings, all_classes = [], []
    for position, image in enumerate(images):
        outputs = embed_image(model, image_to_array(image), image_processor=image_processor, image_size=image_size)
        embeddings = outputs["embeddings"]  # (D, h, w)
        pixel_classes = outputs["prediction"]  # (h, w)
        label = None if labels is None else labels[position]
        if label is not None:
            pixel_classes = torch.from_numpy(
                _resize_nearest(np.asarray(label), *embeddings.shape[-2:]).astype(np.int64)
            )
        all_embeddings.append(embeddings.flatten(1).T)  # (h*w, D)
        all_classes.append(pixel_classes.flatten())
    embeddings = torch.cat(all_embeddings)
    pixel_classes = torch.cat(all_classes)
    keep = pixel_classes != ignore_index
    embeddings, pixel_classes = embeddings[keep], pixel_classes[keep]
    generator = torch.Generator().manual_seed(seed)
    if embeddings.shape[0] > num_samples:
        chosen = torch.randperm(embeddings.shape[0], generator=generator)[:num_samples]
        embeddings, pixel_classes = embeddings[chosen], pixel_classes[chosen]

    prototypes = model.prototypes.detach().float().cpu()  # (C, K, D)
    num_classes, num_prototypes, _ = prototypes.shape
    mean, components = pca_projection(embeddings)
    pixel_points = ((embeddings - mean) @ components).numpy()  # (N, 2)
    prototype_points = ((prototypes.reshape(-1, prototypes.shape[-1]) - mean) @ components).numpy()  # (C*K, 2)
    colours = distinct_colours(num_classes)

    figure, axis = plt.subplots(figsize=PROJECTION_FIGURE_INCHES, dpi=FIGURE_DPI)
    for class_id in range(num_classes):
        of_class = (pixel_classes == class_id).numpy()
        if of_class.any():
            axis.scatter(*pixel_points[of_class].T, s=6, alpha=0.5, color=colours[class_id], linewidths=0)
        stars = prototype_points[class_id * num_prototypes : (class_id + 1) * num_prototypes]
        axis.scatter(
            *stars.T,
            marker="*",
            s=180,
            color=colours[class_id],
            edgecolors="black",
            linewidths=0.8,
            label=id2label.get(class_id, str(class_id)),
        )
    source = "ground-truth" if labels is not None and any(label is not None for label in labels) else "predicted"
    axis.set_title(f"pixel embeddings (dots, {source} class) and prototypes (stars), PCA", fontsize=10)
    axis.set_xlabel("principal axis 1")
    axis.set_ylabel("principal axis 2")
    axis.legend(fontsize=8, loc="best", markerscale=0.7, ncol=1 if num_classes <= 12 else 2)
    figure.tight_layout()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    return _save_figure(figure, output_dir / "embedding_projection.png")


# ----------------------------------------------------------------------------------------------
# (c) prototype self-similarity per class: collapse shows at once


def prototype_self_similarity(prototypes: torch.Tensor) -> torch.Tensor:
    """(C, K, D) -> (C, K, K) cosine similarities between the prototypes of each class."""
    prototypes = torch.nn.functional.normalize(prototypes.float(), dim=-1)
    return prototypes @ prototypes.transpose(1, 2)


@torch.no_grad()
def render_prototype_self_similarity(
    model: ProtoSegForSemanticSegmentation, output_dir: str | os.PathLike, *, max_classes: int = 20
) -> Path:
    """Write prototype_self_similarity.png: one K x K heatmap per class (the first `max_classes`), titled
    with the mean off-diagonal similarity (1.0 = all K prototypes collapsed into one)."""
    plt = _pyplot()
    id2label = {int(index): str(name) for index, name in model.config.id2label.items()}
    similarity = prototype_self_similarity(model.prototypes.detach().cpu())  # (C, K, K)
    num_classes = min(similarity.shape[0], max_classes)
    num_prototypes = similarity.shape[1]
    columns = min(num_classes, SELF_SIMILARITY_MAX_COLUMNS)
    rows = math.ceil(num_classes / SELF_SIMILARITY_MAX_COLUMNS)
    figure, axes = plt.subplots(
        rows, columns, figsize=self_similarity_figure_inches(num_classes), dpi=FIGURE_DPI, squeeze=False
    )
    off_diagonal = ~torch.eye(num_prototypes, dtype=torch.bool)
    # Sequential colours from min(0, lowest value) to 1: trained prototypes of one class are mostly positively
    # similar, and a diverging [-1, 1] scale would hide the difference between 0.7 and 0.95.
    lowest = min(0.0, float(similarity[:num_classes].min()))
    image = None
    for class_id in range(rows * columns):
        axis = axes[class_id // columns][class_id % columns]
        axis.set_xticks([])
        axis.set_yticks([])
        if class_id >= num_classes:
            axis.axis("off")
            continue
        matrix = similarity[class_id]
        image = axis.imshow(matrix.numpy(), vmin=lowest, vmax=1.0, cmap="magma", interpolation="nearest")
        mean_off = float(matrix[off_diagonal].mean()) if num_prototypes > 1 else 1.0
        axis.set_title(f"{id2label.get(class_id, class_id)}\nmean off-diag {mean_off:+.2f}", fontsize=8)
    width_inches, _ = self_similarity_figure_inches(num_classes)
    right = 1.0 - 1.2 / width_inches  # keep 1.2 inch on the right for the colour bar and its label
    figure.subplots_adjust(left=0.02, right=right, top=0.88, bottom=0.04, wspace=0.15, hspace=0.45)
    colour_bar_axis = figure.add_axes([right + 0.25 / width_inches, 0.1, 0.15 / width_inches, 0.75])
    figure.colorbar(image, cax=colour_bar_axis, label="cosine similarity")
    figure.suptitle(f"prototype self-similarity (K = {num_prototypes})", fontsize=10)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    return _save_figure(figure, output_dir / "prototype_self_similarity.png")


# ----------------------------------------------------------------------------------------------
# Command line


def render_all(
    checkpoint: str | os.PathLike,
    images: Sequence[Any],
    class_name: str,
    output_dir: str | os.PathLike,
    *,
    labels: Sequence[np.ndarray | None] | None = None,
    image_size: int | None = None,
    num_samples: int = 2000,
    max_classes: int = 20,
    seed: int = 0,
) -> dict[str, Path]:
    """Load a checkpoint folder and write the three figures; returns {figure name: path}."""
    model, image_processor = load_checkpoint(checkpoint)
    if image_size is not None:
        image_processor = None  # an explicit size: the config's normalisation at that size
    model.resolve_class_id(class_name)  # fail early on an unknown class
    map_path, assignment_path = render_prototype_assignment(
        model, images[0], class_name, output_dir, image_processor=image_processor, image_size=image_size
    )
    projection_path = render_embedding_projection(
        model,
        images,
        output_dir,
        labels=labels,
        image_processor=image_processor,
        image_size=image_size,
        num_samples=num_samples,
        seed=seed,
    )
    self_similarity_path = render_prototype_self_similarity(model, output_dir, max_classes=max_classes)
    return {
        "prototype_map": map_path,
        "prototype_assignment": assignment_path,
        "embedding_projection": projection_path,
        "prototype_self_similarity": self_similarity_path,
    }


def _read_label(path: str) -> np.ndarray:
    array = np.asarray(Image.open(path))
    if array.ndim == 3:
        array = array[..., 0]
    return array.astype(np.int64)


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    parser = argparse.ArgumentParser(prog="python -m protoseg_tools.visualize", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="folder written by save_pretrained")
    parser.add_argument("--image", required=True, nargs="+", help="image file(s); the first one is used for (a)")
    parser.add_argument("--class-name", required=True, help="class whose prototypes figure (a) shows")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument(
        "--label",
        nargs="*",
        default=None,
        help="label map PNG(s), one per image, to colour the projection by ground truth",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="resize to this square size, normalised as the checkpoint's config says (image_mean / image_std), "
        "instead of using its image processor (default: the processor, or the image as is)",
    )
    parser.add_argument("--num-samples", type=int, default=2000, help="pixels drawn for the projection")
    parser.add_argument("--max-classes", type=int, default=20, help="classes shown in the self-similarity figure")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.label is not None and len(args.label) != len(args.image):
        parser.error(f"--label needs one file per --image ({len(args.image)}), got {len(args.label)}")
    images = [Image.open(path).convert("RGB") for path in args.image]
    labels = [_read_label(path) for path in args.label] if args.label else None
    paths = render_all(
        args.checkpoint,
        images,
        args.class_name,
        args.output_dir,
        labels=labels,
        image_size=args.image_size,
        num_samples=args.num_samples,
        max_classes=args.max_classes,
        seed=args.seed,
    )
    for name, path in paths.items():
        print(f"{name}: {path}")
    return paths


if __name__ == "__main__":
    main()
