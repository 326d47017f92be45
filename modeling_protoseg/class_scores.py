"""From pixel embeddings and prototypes to class logits: the nearest-prototype class scores and their
normalisation into logits.

A class's score for a pixel is the cosine similarity to the nearest of the class's K prototypes
(`max_k <f_n, p_ck>`); `ProtoSegClassScoreNorm` turns the C scores into logits.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_protoseg import CLASS_SCORE_NORMS


class ClassScoreNormModeError(ValueError):
    """A checkpoint's class-score parameters were trained in another `class_score_norm` mode than the config's."""


def mode_mismatch_message(checkpoint_mode: str, config_mode: str) -> str:
    """What a user reads when a checkpoint's class-score parameters meet a config of the other mode."""
    return (
        f"class_score_norm: the checkpoint's class-score parameters (class_score_norm.weight / .bias) were trained "
        f"with class_score_norm={checkpoint_mode!r}, but the config asks for class_score_norm={config_mode!r}. "
        f"They mean something else in the other mode (the logits would change silently): set class_score_norm back "
        f"to {checkpoint_mode!r} in config.json (or leave it out of the from_pretrained arguments), or build a new "
        f"model and train its class scores in {config_mode!r} mode"
    )


class ProtoSegClassScoreNorm(nn.Module):
    """Class scores (N, C) -> logits (N, C), with a learned `weight` and `bias` per class.

    Modes:
        "affine": `logit_c = weight_c * score_c + bias_c`, weight starting at `scale` (an inverse
            temperature on cosine scores). The gradient to the embeddings never vanishes and the
            confidence grows with the margin between classes, for any number of classes.
        "layer_norm": the official code's `LayerNorm(C)` over the scores. With C = 2 it maps any two scores
            that differ by more than ~0.01 to -1/+1 (constant confidence, vanishing gradient).
    The parameters are named as `nn.LayerNorm`'s in both modes; the persistent buffer `mode_index` (the mode's index
    in `CLASS_SCORE_NORMS`) is saved beside them, so a checkpoint's parameters never load into the other mode:
    `load_state_dict` refuses them (`ClassScoreNormModeError`), and `from_pretrained` checks `check_loaded_mode()`.
    A state dict saved before the mode was recorded loads as the mode of the module it is loaded into.
    """

    def __init__(self, *, num_classes: int, mode: str, scale: float = 1.0, eps: float = 1e-5) -> None:
        super().__init__()
        if mode not in CLASS_SCORE_NORMS:
            raise ValueError(f"mode must be one of {', '.join(map(repr, CLASS_SCORE_NORMS))}, got {mode!r}")
        self.mode, self.eps = mode, eps
        self.weight = nn.Parameter(torch.full((num_classes,), scale if mode == "affine" else 1.0))
        self.bias = nn.Parameter(torch.zeros(num_classes))
        # () int64: the mode the parameters belong to, saved with them (an integer: dtype casts leave it alone)
        self.register_buffer("mode_index", torch.tensor(self.expected_mode_index, dtype=torch.long), persistent=True)

    @property
    def expected_mode_index(self) -> int:
        """The index of this module's mode in `CLASS_SCORE_NORMS`, what `mode_index` must hold."""
        return CLASS_SCORE_NORMS.index(self.mode)

    @staticmethod
    def mode_name(mode_index: int) -> str:
        """The mode an index in `CLASS_SCORE_NORMS` stands for; ValueError on an index no mode has."""
        if not 0 <= mode_index < len(CLASS_SCORE_NORMS):
            raise ValueError(
                f"class_score_norm.mode_index: {mode_index} names no class_score_norm mode; expected 0..."
                f"{len(CLASS_SCORE_NORMS) - 1} for {', '.join(map(repr, CLASS_SCORE_NORMS))}"
            )
        return CLASS_SCORE_NORMS[mode_index]

    def check_loaded_mode(self) -> None:
        """`ClassScoreNormModeError` when the loaded `mode_index` says the parameters belong to another mode."""
        loaded_mode = self.mode_name(int(self.mode_index))
        if loaded_mode != self.mode:
            raise ClassScoreNormModeError(mode_mismatch_message(loaded_mode, self.mode))

    def check_state_dict_mode(self, state_dict: dict[str, Any], prefix: str) -> None:
        """`ClassScoreNormModeError` when `state_dict` records (at `prefix + "mode_index"`) another mode than this
        module's; nothing when it records none (saved before the mode was recorded)."""
        recorded = state_dict.get(prefix + "mode_index")
        if recorded is not None and self.mode_name(int(recorded)) != self.mode:
            raise ClassScoreNormModeError(mode_mismatch_message(self.mode_name(int(recorded)), self.mode))

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # `load_state_dict` (resuming, a user's own loading) passes through here; the ProtoSeg model checks the
        # mode before any of its tensors is copied, and transformers' `from_pretrained` (which does not come here)
        # calls `check_loaded_mode()` after loading.
        self.check_state_dict_mode(state_dict, prefix)
        key = prefix + "mode_index"
        if key not in state_dict:  # saved before the mode was recorded: the parameters take this module's mode
            state_dict[key] = torch.tensor(self.expected_mode_index, dtype=torch.long)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0]

    def forward(self, class_scores: torch.Tensor, *, in_place: bool = False) -> torch.Tensor:
        """(N, C) scores -> (N, C) logits; `in_place` ("affine" mode, no autograd): written over `class_scores`."""
        if self.mode == "layer_norm":
            return F.layer_norm(class_scores, (self.num_classes,), self.weight, self.bias, self.eps)
        if in_place:
            if torch.is_grad_enabled():
                raise RuntimeError("ProtoSegClassScoreNorm(in_place=True) is for inference: call it without autograd")
            return class_scores.mul_(self.weight).add_(self.bias)
        return torch.addcmul(self.bias, class_scores, self.weight)

    def resized(self, keep_rows: torch.Tensor, *, num_added: int) -> "ProtoSegClassScoreNorm":
        """A copy over `len(keep_rows) + num_added` classes: kept rows copy their weight and bias, added
        rows take the mean weight and bias of the existing classes."""
        resized = ProtoSegClassScoreNorm(num_classes=len(keep_rows) + num_added, mode=self.mode, eps=self.eps)
        resized.to(device=self.weight.device, dtype=self.weight.dtype)
        rows = keep_rows.to(self.weight.device)
        with torch.no_grad():
            for name in ("weight", "bias"):
                old_values = getattr(self, name)
                added = old_values.mean().expand(num_added)
                getattr(resized, name).copy_(torch.cat([old_values[rows], added]))
                getattr(resized, name).requires_grad_(old_values.requires_grad)
        resized.train(self.training)
        return resized

    def extra_repr(self) -> str:
        return f"{self.num_classes}, mode={self.mode!r}"


def is_exporting() -> bool:
    """True while torch.jit tracing or ONNX export records the forward (no data-dependent chunking)."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def nearest_prototype_scores(
    pixel_embeddings: torch.Tensor,
    flat_prototypes: torch.Tensor,
    num_classes: int,
    *,
    matching_dtype: torch.dtype | None = None,
    chunk_bytes: int = 64 * 2**20,
) -> torch.Tensor:
    """max over each class's K prototypes of the (N, C*K) cosine similarities.

    Without autograd (inference) the similarities are computed in row chunks of about `chunk_bytes`, so
    inference never holds all of them (4.4 GB for 847 classes, batch 8, 512x512); each chunk's product and
    maximum are written into one reused chunk buffer and the preallocated result (a fresh 64 MiB block per
    chunk cost +17% at 150-847 classes in page faults). With autograd, or while an exporter records the graph,
    in one product of the inputs' dtype.

    Arguments:
        pixel_embeddings: (N, D); flat_prototypes: (C*K, D).
        matching_dtype: the dtype of the inference product (e.g. torch.bfloat16, `config.prototype_matching_dtype`);
            None: the embeddings' dtype. The scores keep the embeddings' dtype.
    Returns:
        (N, C) class scores.
    """
    num_pixels, num_columns = pixel_embeddings.shape[0], flat_prototypes.shape[0]
    if pixel_embeddings.requires_grad or flat_prototypes.requires_grad or is_exporting():
        return (pixel_embeddings @ flat_prototypes.T).view(num_pixels, num_classes, -1).amax(dim=-1)
    product_dtype = matching_dtype or pixel_embeddings.dtype
    prototypes_t = flat_prototypes.T.to(product_dtype).contiguous()  # (D, C*K)
    rows_per_chunk = max(64, chunk_bytes // (product_dtype.itemsize * num_columns))
    if torch.is_autocast_enabled(pixel_embeddings.device.type) or pixel_embeddings.dtype != flat_prototypes.dtype:
        # autocast does not cast ops given out=: let each chunk's product pick its dtype
        chunks = [
            (chunk.to(product_dtype) @ prototypes_t).view(chunk.shape[0], num_classes, -1).amax(dim=-1)
            for chunk in pixel_embeddings.split(rows_per_chunk)
        ]
        return torch.cat(chunks)  # in the dtype autocast chose
    similarities = prototypes_t.new_empty(min(rows_per_chunk, num_pixels), num_columns)  # reused by every chunk
    scores = pixel_embeddings.new_empty(num_pixels, num_classes)  # (N, C)
    # the maxima in the product's dtype, widened into `scores` (bf16 matching); else written there directly
    chunk_scores = similarities.new_empty(similarities.shape[0], num_classes) if product_dtype != scores.dtype else None
    for start in range(0, num_pixels, rows_per_chunk):
        rows = min(rows_per_chunk, num_pixels - start)
        chunk_similarities = similarities[:rows]  # a row prefix of a contiguous tensor: contiguous
        torch.matmul(pixel_embeddings[start : start + rows].to(product_dtype), prototypes_t, out=chunk_similarities)
        if chunk_scores is None:
            torch.amax(chunk_similarities.view(rows, num_classes, -1), dim=-1, out=scores[start : start + rows])
        else:  # the maximum in the product's dtype (exact), then widened into the result
            torch.amax(chunk_similarities.view(rows, num_classes, -1), dim=-1, out=chunk_scores[:rows])
            scores[start : start + rows].copy_(chunk_scores[:rows])
    return scores


__all__ = [
    "ClassScoreNormModeError",
    "ProtoSegClassScoreNorm",
    "is_exporting",
    "mode_mismatch_message",
    "nearest_prototype_scores",
]
