"""Beyond the paper: look at the prototypes, and enrol or remove classes without a gradient step.

Because ProtoSeg classifies a pixel by its nearest non-learnable prototype, a class *is* its K prototypes
(plus one entry of the LayerNorm over class scores). So a new class can be added by embedding a few
labelled pixels with the frozen network and clustering them into K prototypes with the same
equipartitioned Sinkhorn clustering that training uses; a class can be removed by deleting its rows.

`ProtoSegClassEnrolmentMixin` is a base class of `ProtoSegForSemanticSegmentation`, giving it:
    model.prototype_similarity_maps(pixel_values, "leaf")   # nearest prototype + similarity to each of K
    model.add_classes({"leaf": [(image, mask), ...]})       # returns {"leaf": new class id}
    model.remove_classes(["leaf"])

This module is copied beside checkpoints as remote code: it imports only torch/numpy/PIL/transformers
and relative modules.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .configuration_encoders import InputNormalization, checked_input_normalization, input_normalization
from .encoders import minimum_input_size
from .prototypes import sinkhorn_assign_pixels

ImageInput = Any  # a PIL image or an (H, W, 3) array on the 0-255 scale
MaskInput = Any  # an (H, W) boolean array (0/1 integer arrays are accepted too)


class PrototypeSimilarityMaps(NamedTuple):
    """What `prototype_similarity_maps` returns (unpacks as a 3-tuple).

    Arguments:
        nearest_prototype_class: (B, h, w) long, class of each pixel's most similar prototype (any class).
        nearest_prototype_index: (B, h, w) long, index in [0, K) of that prototype within its class.
        class_similarities: (B, K, h, w) float32 cosine similarity of each pixel to the K prototypes of
            the chosen class. (h, w) = (H/4, W/4), the model's output resolution.
    """

    nearest_prototype_class: torch.Tensor
    nearest_prototype_index: torch.Tensor
    class_similarities: torch.Tensor


# ----------------------------------------------------------------------------------------------
# Input preparation (shared with `protoseg_tools/visualize.py`)


def image_to_array(image: ImageInput, *, what: str = "image") -> np.ndarray:
    """An (H, W, 3) float32 array on the 0-255 scale from a PIL image or an array; ValueError otherwise."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float32)
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{what} must be a PIL image or an (H, W, 3) array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{what} must have shape (H, W, 3) (RGB, channels last), got {tuple(image.shape)}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"{what} is empty: shape {tuple(image.shape)}")
    if not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
        raise ValueError(f"{what} must have a numeric dtype, got {image.dtype}")
    array = image.astype(np.float32)
    if not np.isfinite(array).all() or array.min() < 0 or array.max() > 255:
        raise ValueError(f"{what} values must be finite and on the 0-255 scale")
    return array


def mask_to_array(mask: MaskInput, *, image_shape: tuple[int, int], what: str = "mask") -> np.ndarray:
    """An (H, W) bool array matching `image_shape`; ValueError on a wrong shape, dtype or an empty mask."""
    if isinstance(mask, Image.Image):
        mask = np.asarray(mask)
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    if not isinstance(mask, np.ndarray):
        raise ValueError(f"{what} must be an (H, W) boolean array, got {type(mask).__name__}")
    if mask.ndim != 2:
        raise ValueError(f"{what} must be 2-D (H, W), got shape {tuple(mask.shape)}")
    if tuple(mask.shape) != tuple(image_shape):
        raise ValueError(f"{what} has shape {tuple(mask.shape)} but its image is {tuple(image_shape)} (H, W)")
    if mask.dtype != bool:
        if not np.isin(mask, (0, 1)).all():
            raise ValueError(f"{what} must be boolean (or 0/1), got dtype {mask.dtype} with other values")
        mask = mask.astype(bool)
    if not mask.any():
        raise ValueError(f"{what} marks no pixel of the new class")
    return mask


def check_processor_normalization(image_processor: Any, normalization: InputNormalization) -> None:
    """ValueError when `image_processor` normalises with another mean/std than `normalization` (the model's): its
    pixel values would not be what the encoder was trained on. A processor that does not normalise is not checked."""
    if not getattr(image_processor, "do_normalize", False):
        return
    processor_mean = getattr(image_processor, "image_mean", None)
    processor_std = getattr(image_processor, "image_std", None)
    if processor_mean is None or processor_std is None:
        return
    if not (
        np.allclose(np.ravel(processor_mean), normalization.mean, rtol=1e-6, atol=1e-7)
        and np.allclose(np.ravel(processor_std), normalization.std, rtol=1e-6, atol=1e-7)
    ):
        raise ValueError(
            f"the image processor normalises with mean {list(np.ravel(processor_mean))} / std "
            f"{list(np.ravel(processor_std))}, but the model expects {list(normalization.mean)} / "
            f"{list(normalization.std)} (config.image_mean / image_std); use the checkpoint's own processor"
        )


def preprocess_image(
    image: ImageInput,
    *,
    normalization: InputNormalization | tuple[Sequence[float], Sequence[float]] | None = None,
    image_processor: Any | None = None,
    image_size: int | tuple[int, int] | None = None,
    what: str = "image",
) -> torch.Tensor:
    """(1, 3, H', W') float32 pixel values for the model.

    With `image_processor` (e.g. the checkpoint's `SegformerImageProcessor`) the processor does everything (and must
    normalise as `normalization` says, when given); otherwise the image is resized to `image_size` (int or (height,
    width); None keeps its size) and normalised as `(pixel / 255 - mean) / std` with `normalization`, the model's
    (`model.config.input_normalization`), which is then required.
    """
    array = image_to_array(image, what=what)
    if normalization is not None:
        normalization = checked_input_normalization(*normalization, where="normalization: ")
    if image_processor is not None:
        if normalization is not None:
            check_processor_normalization(image_processor, normalization)
        pil_image = Image.fromarray(array.round().astype(np.uint8))
        pixel_values = image_processor(images=[pil_image], return_tensors="pt")["pixel_values"]
        pixel_values = torch.as_tensor(pixel_values, dtype=torch.float32)
        if pixel_values.ndim != 4 or pixel_values.shape[:2] != (1, 3):
            raise ValueError(f"image_processor returned pixel_values of shape {tuple(pixel_values.shape)}")
        return pixel_values
    if normalization is None:
        raise ValueError(
            "preprocess_image needs the model's input normalisation without an image_processor: pass "
            "normalization=model.config.input_normalization"
        )
    if image_size is not None:
        height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
        pil_image = Image.fromarray(array.round().astype(np.uint8)).resize((width, height), Image.BILINEAR)
        array = np.asarray(pil_image, dtype=np.float32)
    mean = np.asarray(normalization.mean, dtype=np.float32) * 255.0  # (3,), on the 0-255 scale of `array`
    std = np.asarray(normalization.std, dtype=np.float32) * 255.0
    normalised = (array - mean) / std  # (H, W, 3)
    return torch.from_numpy(normalised).permute(2, 0, 1)[None].contiguous()


def mask_to_feature_grid(mask: np.ndarray, size: tuple[int, int], *, min_coverage: float = 0.5) -> torch.Tensor:
    """(h, w) bool: the cells of the model's output grid that the (H, W) mask covers.

    A cell is selected when at least `min_coverage` of its area is masked (area-majority sampling). A mask
    too small to cover half of any cell still gives its best-covered cell(s), so no example is lost.
    """
    coverage = F.interpolate(torch.from_numpy(mask.astype(np.float32))[None, None], size=size, mode="area")[0, 0]
    selected = coverage >= min_coverage
    if not selected.any():
        selected = coverage >= coverage.max() - 1e-6
    return selected


# ----------------------------------------------------------------------------------------------
# Clustering a new class's pixel embeddings into K prototypes


def _farthest_point_initialisation(embeddings: torch.Tensor, num_prototypes: int) -> torch.Tensor:
    """K deterministic seeds: the pixel nearest the mean direction, then repeatedly the pixel least similar
    to every seed chosen so far (k-means++ without the randomness). (N, D) -> (K, D)."""
    mean_direction = F.normalize(embeddings.mean(dim=0), dim=0)
    chosen = [int((embeddings @ mean_direction).argmax())]
    best_similarity = embeddings @ embeddings[chosen[0]]  # (N,) similarity to the nearest seed
    for _ in range(1, num_prototypes):
        next_index = int(best_similarity.argmin())
        chosen.append(next_index)
        best_similarity = torch.maximum(best_similarity, embeddings @ embeddings[next_index])
    return embeddings[chosen].clone()


@torch.no_grad()
def cluster_embeddings_into_prototypes(
    embeddings: torch.Tensor,
    num_prototypes: int,
    *,
    max_rounds: int = 20,
    sinkhorn_iterations: int = 3,
    sinkhorn_epsilon: float = 0.05,
) -> torch.Tensor:
    """K L2-normalised prototypes for one class from its (N, D) pixel embeddings.

    Seeds by farthest-point picks, then alternates (a) the training-time within-class assignment,
    `sinkhorn_assign_pixels` (equipartitioned, hard argmax), and (b) prototype = normalised mean of its
    pixels, until the assignment stops changing or `max_rounds`. A prototype that receives no pixel keeps
    its seed. With N <= K pixels, each pixel becomes a prototype and the rest repeat them cyclically.
    Process-local: inside an initialised process group nothing is all-reduced.

    Returns:
        (K, D) float32 unit vectors.
    """
    embeddings = F.normalize(embeddings.detach().float(), dim=-1)  # (N, D)
    num_pixels = embeddings.shape[0]
    if num_pixels == 0:
        raise ValueError("cannot build prototypes from zero pixels")
    if num_pixels <= num_prototypes:
        return embeddings[torch.arange(num_prototypes, device=embeddings.device) % num_pixels].clone()

    prototypes = _farthest_point_initialisation(embeddings, num_prototypes)  # (K, D)
    single_group = torch.zeros(num_pixels, dtype=torch.long, device=embeddings.device)
    previous_assignments = None
    for _ in range(max_rounds):
        assignments, _ = sinkhorn_assign_pixels(
            embeddings @ prototypes.T,
            single_group,
            1,
            iterations=sinkhorn_iterations,
            epsilon=sinkhorn_epsilon,
            local=True,  # this process's examples only: enrolment never waits for other processes
        )  # (N,) in [0, K)
        if previous_assignments is not None and torch.equal(assignments, previous_assignments):
            break
        previous_assignments = assignments
        sums = embeddings.new_zeros(prototypes.shape).index_add_(0, assignments, embeddings)  # (K, D)
        counts = torch.bincount(assignments, minlength=num_prototypes)  # (K,)
        prototypes = torch.where(counts[:, None] > 0, F.normalize(sums, dim=-1), prototypes)
    return prototypes


# ----------------------------------------------------------------------------------------------
# The mixin


class ProtoSegClassEnrolmentMixin:
    """Interpretability and class enrolment/removal for `ProtoSegForSemanticSegmentation`.

    Expects `self.config` (a ProtoSegConfig), `self.prototype_bank.prototypes` (C, K, D),
    `self.class_score_norm` (a `ProtoSegClassScoreNorm` over C) and a `forward` accepting `output_pixel_embeddings` /
    `output_nearest_prototypes`.
    """

    # ---- interpretability ------------------------------------------------------------------

    def _current_label2id(self) -> dict[str, int]:
        """{name: index} from `config.id2label`, the source of truth (`label2id` may be unset)."""
        return {str(label): int(index) for index, label in self.config.id2label.items()}

    def resolve_class_id(self, class_id_or_name: int | str) -> int:
        """The class index of a class name (from `config.label2id`) or a checked index."""
        num_classes = self.config.num_labels
        if isinstance(class_id_or_name, str):
            label2id = self._current_label2id()
            if class_id_or_name not in label2id:
                raise ValueError(f"unknown class name {class_id_or_name!r}; known: {sorted(label2id)}")
            return label2id[class_id_or_name]
        if isinstance(class_id_or_name, (int, np.integer)) and not isinstance(class_id_or_name, bool):
            if not 0 <= int(class_id_or_name) < num_classes:
                raise ValueError(f"class index {class_id_or_name} out of range [0, {num_classes})")
            return int(class_id_or_name)
        raise ValueError(f"expected a class name or index, got {type(class_id_or_name).__name__}")

    @torch.no_grad()
    def prototype_similarity_maps(
        self, pixel_values: torch.Tensor, class_id_or_name: int | str
    ) -> PrototypeSimilarityMaps:
        """Per pixel: the nearest prototype overall, and the similarity to each of one class's K prototypes.

        Arguments:
            pixel_values: (B, 3, H, W) normalised images (see `preprocess_image`).
            class_id_or_name: the class whose K prototypes to compare with.
        Returns:
            `PrototypeSimilarityMaps(nearest_prototype_class (B, h, w), nearest_prototype_index (B, h, w),
            class_similarities (B, K, h, w))`, (h, w) = (H/4, W/4).
        """
        class_id = self.resolve_class_id(class_id_or_name)
        was_training = self.training
        self.eval()
        try:
            outputs = self(
                pixel_values=pixel_values.to(self.device, dtype=self.dtype),
                output_pixel_embeddings=True,
                output_nearest_prototypes=True,
                return_dict=True,
            )
        finally:
            self.train(was_training)
        embeddings = outputs.pixel_embeddings.float()  # (B, D, h, w)
        class_prototypes = self.prototype_bank.prototypes[class_id].float()  # (K, D)
        class_similarities = torch.einsum("bdhw,kd->bkhw", embeddings, class_prototypes)
        return PrototypeSimilarityMaps(
            outputs.nearest_prototype_class, outputs.nearest_prototype_index, class_similarities
        )

    # ---- enrolment -----------------------------------------------------------------------------

    def _prepare_examples(
        self,
        examples: Sequence[tuple[ImageInput, MaskInput]],
        *,
        image_processor: Any | None,
        image_size: int | tuple[int, int] | None,
        class_name: str,
    ) -> list[tuple[torch.Tensor, np.ndarray]]:
        """Validate one class's (image, mask) pairs: [(pixel_values (1, 3, H', W'), mask (H, W) bool)]."""
        if isinstance(examples, (str, bytes)) or not isinstance(examples, Sequence) or len(examples) == 0:
            raise ValueError(f"class {class_name!r}: expected a non-empty list of (image, mask) pairs")
        prepared = []
        for position, example in enumerate(examples):
            what = f"class {class_name!r}, example {position}"
            if not isinstance(example, (tuple, list)) or len(example) != 2:
                raise ValueError(f"{what}: expected an (image, mask) pair")
            image, mask = example
            image_array = image_to_array(image, what=f"{what}: image")
            mask_array = mask_to_array(mask, image_shape=image_array.shape[:2], what=f"{what}: mask")
            pixel_values = preprocess_image(
                image_array,
                normalization=input_normalization(self.config),
                image_processor=image_processor,
                image_size=image_size,
                what=f"{what}: image",
            )
            minimum_size = minimum_input_size(self.config.encoder_config)
            if min(pixel_values.shape[-2:]) < minimum_size:
                raise ValueError(
                    f"{what}: the image reaches the model as {pixel_values.shape[-2]} x {pixel_values.shape[-1]} "
                    f"pixels, too small for the encoder: height and width must be >= {minimum_size} "
                    "(pass a larger image, or image_size=...)"
                )
            prepared.append((pixel_values, mask_array))
        return prepared

    @torch.no_grad()
    def embed_labelled_pixels(
        self,
        examples: Sequence[tuple[ImageInput, MaskInput]],
        *,
        image_processor: Any | None = None,
        image_size: int | tuple[int, int] | None = None,
        class_name: str = "new class",
    ) -> torch.Tensor:
        """(N, D) float32 embeddings of the masked pixels of `examples`, at the model's output grid.

        Each image goes through the model alone (sizes may differ) in eval mode; its mask is reduced to the
        (H/4, W/4) grid by area majority (`mask_to_feature_grid`). Nothing in the model changes.
        """
        prepared = self._prepare_examples(
            examples, image_processor=image_processor, image_size=image_size, class_name=class_name
        )
        return self._embed_prepared(prepared)

    def _embed_prepared(self, prepared: list[tuple[torch.Tensor, np.ndarray]]) -> torch.Tensor:
        was_training = self.training
        self.eval()  # BatchNorm running statistics and dropout must not change
        try:
            selected_embeddings = []
            for pixel_values, mask_array in prepared:
                outputs = self(
                    pixel_values=pixel_values.to(self.device, dtype=self.dtype),
                    output_pixel_embeddings=True,
                    return_dict=True,
                )
                embeddings = outputs.pixel_embeddings[0].float()  # (D, h, w)
                cells = mask_to_feature_grid(mask_array, tuple(embeddings.shape[-2:])).to(embeddings.device)
                selected_embeddings.append(embeddings.permute(1, 2, 0)[cells])  # (n_i, D)
        finally:
            self.train(was_training)
        return torch.cat(selected_embeddings, dim=0)

    def _check_new_class_names(self, names: Iterable[Any]) -> list[str]:
        existing = set(self._current_label2id())
        checked: list[str] = []
        for name in names:
            if not isinstance(name, str) or not name.strip():
                raise ValueError(f"class names must be non-empty strings, got {name!r}")
            if name in existing or name in checked:
                raise ValueError(f"class {name!r} already exists; remove it first or choose another name")
            checked.append(name)
        if not checked:
            raise ValueError("add_classes needs at least one class")
        ignore_index = self.config.semantic_loss_ignore_index
        new_count = self.config.num_labels + len(checked)
        if 0 <= ignore_index < new_count:
            raise ValueError(
                f"cannot grow to {new_count} classes: class index {ignore_index} is the ignore index "
                f"(config.semantic_loss_ignore_index); change it first"
            )
        return checked

    @torch.no_grad()
    def add_classes(
        self,
        examples_by_class: Mapping[str, Sequence[tuple[ImageInput, MaskInput]]],
        *,
        image_processor: Any | None = None,
        image_size: int | tuple[int, int] | None = None,
        max_clustering_rounds: int = 20,
    ) -> dict[str, int]:
        """Enrol new classes from a few labelled images, with no gradient step.

        For each class, the masked pixels are embedded by the frozen model, clustered into K prototypes
        (`cluster_embeddings_into_prototypes`: the training Sinkhorn assignment + means) and appended to
        the prototype buffer; `config.id2label` / `label2id` / `num_labels` grow; the LayerNorm over class
        scores gets one more entry whose weight and bias are the *mean* of the existing ones (a new class
        is given the average learned temperature and offset, favouring no class). Every input is validated
        and every embedding computed before anything changes: on error the model is untouched. A class whose
        masks cover fewer cells of the output grid than `num_prototypes_per_class`, or an image smaller than
        the encoder's minimum size, is a ValueError.

        Arguments:
            examples_by_class: {"name": [(image, mask), ...]}; image a PIL image or (H, W, 3) array
                (0-255), mask an (H, W) boolean array marking the new class's pixels.
            image_processor: e.g. the checkpoint's `SegformerImageProcessor`; it must resize the whole image
                (no crop), as SegFormer's does, and normalise as the model's config says (checked). Default: the
                config's normalisation (`config.input_normalization`) at `image_size` (None: as is).
            max_clustering_rounds: cap on assignment/mean rounds of the clustering.
        Returns:
            {name: new class index}. Build a new optimizer afterwards if you fine-tune:
            `class_score_norm` is a new module.
        """
        if not isinstance(examples_by_class, Mapping):
            raise ValueError("add_classes expects a dict {class name: [(image, mask), ...]}")
        names = self._check_new_class_names(examples_by_class.keys())
        num_prototypes = self.config.num_prototypes_per_class
        prepared_by_class = [
            self._prepare_examples(
                examples_by_class[name], image_processor=image_processor, image_size=image_size, class_name=name
            )
            for name in names
        ]  # every input validated before the first forward pass
        new_prototypes = []
        for name, prepared in zip(names, prepared_by_class):
            embeddings = self._embed_prepared(prepared)
            if embeddings.shape[0] < num_prototypes:
                raise ValueError(
                    f"class {name!r}: the masks select {embeddings.shape[0]} pixel(s) of the model's output grid "
                    f"(1/4 of the input resolution), fewer than num_prototypes_per_class = {num_prototypes}: its "
                    "prototypes would be copies of one another. Mark larger regions or give more examples"
                )
            new_prototypes.append(
                cluster_embeddings_into_prototypes(
                    embeddings,
                    num_prototypes,
                    max_rounds=max_clustering_rounds,
                    sinkhorn_iterations=self.config.sinkhorn_iterations,
                    sinkhorn_epsilon=self.config.sinkhorn_epsilon,
                )
            )
        # ---- nothing above modified the model; apply the change ----
        keep_rows = torch.arange(self.config.num_labels)
        first_id = self.config.num_labels
        id2label = {int(index): str(label) for index, label in self.config.id2label.items()}
        id2label.update({first_id + offset: name for offset, name in enumerate(names)})
        self._set_classes(keep_rows, id2label, appended_prototypes=torch.stack(new_prototypes))  # (n, K, D)
        return {name: first_id + offset for offset, name in enumerate(names)}

    @torch.no_grad()
    def remove_classes(self, names: Sequence[str]) -> dict[str, int]:
        """Remove classes by name: their prototypes and LayerNorm entries go; the classes after them move
        down so ids stay contiguous. At least one class must remain; unknown or repeated names raise a
        ValueError with the model unchanged.

        Returns:
            the new {name: index} of every remaining class.
        """
        if isinstance(names, str):
            names = [names]
        names = list(names)
        label2id = self._current_label2id()
        if not names:
            raise ValueError("remove_classes needs at least one class name")
        for name in names:
            if name not in label2id:
                raise ValueError(f"unknown class name {name!r}; known: {sorted(label2id)}")
        if len(set(names)) != len(names):
            raise ValueError(f"class names repeated in {names}")
        if self.config.num_labels - len(names) < 2:
            raise ValueError(
                f"cannot remove {len(names)} of {self.config.num_labels} classes: at least two must remain "
                "(a pixel takes the class of its nearest prototype)"
            )

        removed = {label2id[name] for name in names}
        keep_rows = torch.tensor([c for c in range(self.config.num_labels) if c not in removed], dtype=torch.long)
        old_id2label = {int(index): str(label) for index, label in self.config.id2label.items()}
        id2label = {new_id: old_id2label[int(old_id)] for new_id, old_id in enumerate(keep_rows.tolist())}
        self._set_classes(keep_rows, id2label)
        return {label: index for index, label in id2label.items()}

    def _set_classes(
        self, keep_rows: torch.Tensor, id2label: dict[int, str], *, appended_prototypes: torch.Tensor | None = None
    ) -> None:
        """Install a new class set: the kept classes in `keep_rows` order, then the appended ones, in the
        prototype buffers, the class-score normalisation and the config's label maps together."""
        num_added = 0 if appended_prototypes is None else appended_prototypes.shape[0]
        self.class_score_norm = self.class_score_norm.resized(keep_rows, num_added=num_added)
        self.prototype_bank.select_classes(keep_rows, appended_prototypes)
        self.config.id2label = dict(sorted(id2label.items()))  # num_labels is len(id2label)
        self.config.label2id = {label: index for index, label in self.config.id2label.items()}


__all__ = [
    "ProtoSegClassEnrolmentMixin",
    "PrototypeSimilarityMaps",
    "check_processor_normalization",
    "cluster_embeddings_into_prototypes",
    "image_to_array",
    "mask_to_array",
    "mask_to_feature_grid",
    "preprocess_image",
]
