"""ProtoSeg: semantic segmentation by nearest non-learnable prototype (Zhou et al., CVPR 2022).

Pipeline of `ProtoSegForSemanticSegmentation.forward`:
    encoder (MiT / Swin / any AutoBackbone)      -> 4 feature maps at strides 4, 8, 16, 32
    ProtoSegDecodeHead (SegFormer all-MLP)       -> (B, decoder_hidden_size, H/4, W/4)
    ProtoSegProjectionHead + LayerNorm + L2 norm -> pixel embeddings (B, D, H/4, W/4), unit length along D
    cosine similarity to the C*K prototypes, max over the K of each class, LayerNorm over the C class
    scores (a learned per-class temperature, as the official code) -> logits (B, C, H/4, W/4)
In training mode with labels, the same forward clusters each class's pixels onto its K prototypes
(Sinkhorn), computes CE + PPC + PPD, and moves the prototypes by momentum (no gradient reaches them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .class_enrolment import ProtoSegClassEnrolmentMixin
from .configuration_protoseg import ProtoSegConfig
from .encoders import build_encoder, encoder_channels, encoder_feature_maps, model_from_pretrained_encoder
from .losses import class_scores_and_prototype_losses, pixel_cross_entropy
from .prototypes import momentum_update_prototypes, sinkhorn_assign_pixels


@dataclass
class ProtoSegSemanticSegmenterOutput(ModelOutput):
    """Output of [`ProtoSegForSemanticSegmentation`].

    Arguments:
        loss: CE + ppc_loss_weight * PPC + ppd_loss_weight * PPD (CE only in eval mode), when labels are given.
        logits: (B, C, H/4, W/4) class logits, as `SegformerForSemanticSegmentation`.
        ce_loss, ppc_loss, ppd_loss: the unweighted loss terms, for logging (PPC/PPD in training mode only).
        hidden_states: the encoder's feature maps, when `output_hidden_states=True`.
        pixel_embeddings: (B, D, H/4, W/4) L2-normalised embeddings, when `output_pixel_embeddings=True`.
        nearest_prototype_class, nearest_prototype_index: (B, H/4, W/4) long, class and index within
            the class of each pixel's most similar prototype, when `output_nearest_prototypes=True`.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    ce_loss: torch.FloatTensor | None = None
    ppc_loss: torch.FloatTensor | None = None
    ppd_loss: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    pixel_embeddings: torch.FloatTensor | None = None
    nearest_prototype_class: torch.LongTensor | None = None
    nearest_prototype_index: torch.LongTensor | None = None


def _linear_1x1(conv: nn.Conv2d, channels_last: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution applied to (..., C_in) channels-last values: (..., C_out)."""
    return F.linear(channels_last, conv.weight.flatten(1), conv.bias)


def _channels_last_norm(norm: nn.Module, channels_last: torch.Tensor) -> torch.Tensor:
    """A BatchNorm2d on (B, h, w, C) values, through a free NCHW view (SyncBatchNorm-compatible)."""
    return norm(channels_last.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class ProtoSegDecodeHead(nn.Module):
    """SegFormer's all-MLP decoder without its classifier: fuse 4 maps at stride 4.

    Computes `linear_fuse(concat_i(upsample(linear_projection_i(map_i))))` exactly as SegFormer defines
    it, in a cheaper order: the 1x1 projection and the fusion act on channels only and the bilinear
    upsampling on space only (its weights sum to 1, so it commutes with the affine maps). So each map is
    taken straight to the output width by the folded matrix `fuse_block_i @ projection_i` at its own
    resolution and then upsampled, and the (hidden x 4*hidden) fusion at stride 4 is never run.
    All activations are channels-last, (B, h, w, C), so no layout copies are made.
    """

    def __init__(self, *, in_channels: list[int], hidden_size: int, dropout_prob: float) -> None:
        super().__init__()
        # 1x1 convolutions = SegFormer's per-pixel linear projections to a common width
        self.linear_projections = nn.ModuleList(nn.Conv2d(c, hidden_size, kernel_size=1) for c in in_channels)
        self.linear_fuse = nn.Conv2d(hidden_size * len(in_channels), hidden_size, kernel_size=1, bias=False)
        self.batch_norm = nn.BatchNorm2d(hidden_size)
        self.activation = nn.ReLU()
        self.dropout = nn.Dropout(dropout_prob)

    def forward(self, feature_maps: list[torch.Tensor]) -> torch.Tensor:
        """(B, C_i, H_i, W_i) maps -> (B, hidden, H/4, W/4), a channels-last view."""
        hidden_size = self.linear_fuse.out_channels
        num_maps = len(feature_maps)
        target_size = feature_maps[0].shape[-2:]  # (H/4, W/4)
        fuse_weight = self.linear_fuse.weight.flatten(1)  # (hidden, num_maps * hidden); maps concatenated in reverse
        fused = None
        for index, (feature_map, projection) in enumerate(zip(feature_maps, self.linear_projections)):
            block = fuse_weight[:, (num_maps - 1 - index) * hidden_size : (num_maps - index) * hidden_size]
            folded_weight = block @ projection.weight.flatten(1)  # (hidden, C_i)
            folded_bias = block @ projection.bias  # (hidden,)
            mapped = F.linear(feature_map.permute(0, 2, 3, 1), folded_weight, folded_bias)  # (B, H_i, W_i, hidden)
            if mapped.shape[1:3] != target_size:
                mapped = F.interpolate(
                    mapped.permute(0, 3, 1, 2), size=target_size, mode="bilinear", align_corners=False
                ).permute(0, 2, 3, 1)
            fused = mapped if fused is None else fused + mapped
        decoded = self.dropout(self.activation(_channels_last_norm(self.batch_norm, fused)))  # (B, h, w, hidden)
        return decoded.permute(0, 3, 1, 2)


class ProtoSegProjectionHead(nn.Module):
    """Two-layer 1x1-conv MLP from the decoder to D-dim pixel embeddings, L2-normalised along channels."""

    def __init__(self, *, hidden_size: int, embedding_dim: int) -> None:
        super().__init__()
        self.hidden = nn.Conv2d(hidden_size, hidden_size, kernel_size=1)
        self.batch_norm = nn.BatchNorm2d(hidden_size)
        self.activation = nn.ReLU()
        self.output = nn.Conv2d(hidden_size, embedding_dim, kernel_size=1)
        self.layer_norm = nn.LayerNorm(embedding_dim)

    def forward(self, decoded: torch.Tensor) -> torch.Tensor:
        """(B, hidden, h, w) -> (B, D, h, w) unit-length embeddings, a channels-last view."""
        hidden = _linear_1x1(self.hidden, decoded.permute(0, 2, 3, 1))  # (B, h, w, hidden)
        hidden = self.activation(_channels_last_norm(self.batch_norm, hidden))
        embeddings = self.layer_norm(_linear_1x1(self.output, hidden))  # (B, h, w, D)
        return F.normalize(embeddings, dim=-1).permute(0, 3, 1, 2)  # unit length along D, not along the width


class ProtoSegPrototypeBank(nn.Module):
    """Holds the (C, K, D) prototypes as a persistent float32 buffer.

    The buffer is saved in `model.safetensors`, restored by `from_pretrained`, never in `parameters()`,
    and stays float32 when the model is cast to bf16/fp16 (`_apply` casts it back).
    """

    def __init__(self, *, num_classes: int, num_prototypes_per_class: int, embedding_dim: int) -> None:
        super().__init__()
        shape = (num_classes, num_prototypes_per_class, embedding_dim)
        self.register_buffer("prototypes", torch.zeros(shape, dtype=torch.float32), persistent=True)

    def _apply(self, fn, recurse: bool = True):
        # Keep the prototypes out of the cast: a bf16 round trip would round them (up to ~2e-3).
        prototypes = self._buffers.pop("prototypes")
        try:
            super()._apply(fn, recurse)
        finally:
            self._buffers["prototypes"] = prototypes
        moved = fn(prototypes)
        if moved.dtype != torch.float32:  # a dtype cast: follow the device move only
            moved = prototypes.to(device=moved.device)
        self._buffers["prototypes"] = moved
        return self


def _chunked_class_scores(
    pixel_embeddings: torch.Tensor, flat_prototypes: torch.Tensor, num_classes: int, chunk_bytes: int = 64 * 2**20
) -> torch.Tensor:
    """max over each class's K prototypes of the (N, C*K) similarities, computed in row chunks into one
    reused buffer, so inference never holds all similarities (4.4 GB for 847 classes, batch 8, 512x512).

    Arguments:
        pixel_embeddings: (N, D); flat_prototypes: (C*K, D).
    Returns:
        (N, C) class scores.
    """
    num_pixels, num_columns = pixel_embeddings.shape[0], flat_prototypes.shape[0]
    rows_per_chunk = max(64, chunk_bytes // (pixel_embeddings.element_size() * num_columns))
    prototypes_t = flat_prototypes.T.contiguous()  # (D, C*K)
    class_scores = pixel_embeddings.new_empty(num_pixels, num_classes)
    buffer = pixel_embeddings.new_empty(min(rows_per_chunk, num_pixels), num_columns)
    for start in range(0, num_pixels, rows_per_chunk):
        chunk = pixel_embeddings[start : start + rows_per_chunk]
        similarities = torch.mm(chunk, prototypes_t, out=buffer[: chunk.shape[0]])
        chunk_scores = class_scores[start : start + rows_per_chunk]
        torch.amax(similarities.view(chunk.shape[0], num_classes, -1), dim=-1, out=chunk_scores)
    return class_scores


class ProtoSegPreTrainedModel(PreTrainedModel):
    config: ProtoSegConfig
    config_class = ProtoSegConfig
    base_model_prefix = "encoder"  # the attribute holding the encoder, as "segformer" in SegFormer
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _keep_in_fp32_modules_strict = ["prototype_bank"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, ProtoSegPrototypeBank):
            random_directions = torch.randn(module.prototypes.shape, device=module.prototypes.device)
            init.copy_(module.prototypes, F.normalize(random_directions, dim=-1))


class ProtoSegForSemanticSegmentation(ProtoSegClassEnrolmentMixin, ProtoSegPreTrainedModel):
    """Encoder + all-MLP decoder + projection head, classifying each pixel by its nearest prototype."""

    def __init__(self, config: ProtoSegConfig) -> None:
        super().__init__(config)
        self.encoder = build_encoder(config.encoder_config)
        self.decode_head = ProtoSegDecodeHead(
            in_channels=encoder_channels(self.encoder),
            hidden_size=config.decoder_hidden_size,
            dropout_prob=config.classifier_dropout_prob,
        )
        self.projection_head = ProtoSegProjectionHead(
            hidden_size=config.decoder_hidden_size, embedding_dim=config.embedding_dim
        )
        self.prototype_bank = ProtoSegPrototypeBank(
            num_classes=config.num_labels,
            num_prototypes_per_class=config.num_prototypes_per_class,
            embedding_dim=config.embedding_dim,
        )
        # LayerNorm over the C class scores: the official code's "mask_norm", a learned temperature.
        self.class_score_norm = nn.LayerNorm(config.num_labels)
        self.post_init()

    @property
    def prototypes(self) -> torch.Tensor:
        """(C, K, D) float32 L2-normalised prototypes (the persistent buffer itself)."""
        return self.prototype_bank.prototypes

    @classmethod
    def from_pretrained_encoder(
        cls, encoder_name_or_path: str, **config_kwargs
    ) -> "ProtoSegForSemanticSegmentation":
        """A new ProtoSeg model whose encoder weights come from a SegFormer/MiT, Swin or other backbone
        checkpoint (Hub id or local folder, e.g. one written by `modeling_protoseg.convert_efficientnet_lite0`);
        decoder, projection head and prototypes are freshly initialised.

        `config_kwargs` go to `ProtoSegConfig` (e.g. `id2label`, `num_prototypes_per_class`).
        Example: `ProtoSegForSemanticSegmentation.from_pretrained_encoder("nvidia/mit-b0", id2label=...)`.
        """
        return model_from_pretrained_encoder(cls, encoder_name_or_path, **config_kwargs)

    def _check_inputs(self, pixel_values: torch.Tensor, labels: torch.Tensor | None) -> None:
        """Raise a ValueError on malformed inputs, before anything (prototypes included) is touched."""
        num_channels = getattr(self.config.encoder_config, "num_channels", 3)
        if pixel_values.ndim != 4 or pixel_values.shape[1] != num_channels:
            raise ValueError(
                f"pixel_values must be a 4-D tensor (batch, {num_channels}, height, width), "
                f"got shape {tuple(pixel_values.shape)}"
            )
        if labels is None:
            return
        expected_shape = (pixel_values.shape[0], *pixel_values.shape[2:])
        if tuple(labels.shape) != expected_shape:
            raise ValueError(
                f"labels must have shape (batch, height, width) = {expected_shape} to match pixel_values, "
                f"got {tuple(labels.shape)}"
            )
        if labels.is_floating_point() or labels.is_complex():
            raise ValueError(f"labels must be an integer tensor of class indices, got dtype {labels.dtype}")
        ignore_index = self.config.semantic_loss_ignore_index
        invalid = ((labels < 0) | (labels >= self.config.num_labels)) & (labels != ignore_index)
        if invalid.any():  # one host synchronisation per step, for a clear error
            bad_values = torch.unique(labels[invalid]).tolist()[:10]
            raise ValueError(
                f"labels must be class indices in [0, {self.config.num_labels - 1}] or the ignore index "
                f"{ignore_index}; got values {bad_values}"
            )

    def _encode(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The encoder's 4 feature maps, strides 4..32, each (B, C_i, H_i, W_i)."""
        return encoder_feature_maps(self.encoder, pixel_values)

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        output_pixel_embeddings: bool = False,
        output_nearest_prototypes: bool = False,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ProtoSegSemanticSegmenterOutput | tuple:
        r"""
        Arguments:
            pixel_values: (B, 3, H, W) normalised images.
            labels: (B, H, W) class indices, `config.semantic_loss_ignore_index` for ignored pixels. In
                training mode they also drive the online clustering and the in-place prototype update.
        """
        self._check_inputs(pixel_values, labels)
        return_dict = return_dict if return_dict is not None else self.config.return_dict

        feature_maps = self._encode(pixel_values)
        embeddings = self.projection_head(self.decode_head(list(feature_maps)))  # (B, D, h, w)
        batch_size, embedding_dim, height, width = embeddings.shape
        num_classes, num_prototypes = self.config.num_labels, self.config.num_prototypes_per_class
        updates_prototypes = self.training and labels is not None

        pixel_embeddings = embeddings.permute(0, 2, 3, 1).reshape(-1, embedding_dim)  # (N, D), N = B*h*w, a view
        prototypes = self.prototypes.to(pixel_embeddings.dtype)
        if updates_prototypes and prototypes is self.prototypes:
            prototypes = prototypes.clone()  # autograd keeps it for backward; the buffer moves in place below
        flat_prototypes = prototypes.reshape(num_classes * num_prototypes, embedding_dim)  # (C*K, D)
        similarities = None  # (N, C*K), materialised only when training or asked for the nearest prototypes
        ppc_loss = ppd_loss = assignment = None
        if updates_prototypes:
            similarities = pixel_embeddings @ flat_prototypes.T  # one GEMM against all C*K prototypes
            assignment = self._assign_pixels_to_prototypes(pixel_embeddings, similarities, labels, height, width)
            class_scores, ppc_loss, ppd_loss = class_scores_and_prototype_losses(
                similarities,
                assignment.target_prototypes,
                assignment.labelled,
                num_classes=num_classes,
                temperature=self.config.ppc_temperature,
            )
        elif output_nearest_prototypes or torch.is_grad_enabled():
            similarities = pixel_embeddings @ flat_prototypes.T
            class_scores = similarities.view(-1, num_classes, num_prototypes).amax(dim=-1)  # (N, C)
        else:
            class_scores = _chunked_class_scores(pixel_embeddings, flat_prototypes, num_classes)
        pixel_logits = self.class_score_norm(class_scores.to(pixel_embeddings.dtype))  # (N, C)
        # (B, C, h, w) as a channels-last view of the (N, C) rows: no copy
        logits = pixel_logits.view(batch_size, height, width, num_classes).permute(0, 3, 1, 2)

        loss = ce_loss = None
        if labels is not None:
            ce_loss = pixel_cross_entropy(logits, labels, self.config.semantic_loss_ignore_index)
            loss = ce_loss
        if updates_prototypes:
            loss = ce_loss + self.config.ppc_loss_weight * ppc_loss + self.config.ppd_loss_weight * ppd_loss
            self._update_prototypes(pixel_embeddings, pixel_logits, assignment)

        nearest_class = nearest_index = None
        if output_nearest_prototypes:
            nearest_flat = similarities.detach().argmax(dim=-1).view(batch_size, height, width)
            nearest_class, nearest_index = nearest_flat // num_prototypes, nearest_flat % num_prototypes

        output = ProtoSegSemanticSegmenterOutput(
            loss=loss,
            logits=logits,
            ce_loss=ce_loss,
            ppc_loss=ppc_loss,
            ppd_loss=ppd_loss,
            hidden_states=feature_maps if output_hidden_states else None,
            pixel_embeddings=embeddings if output_pixel_embeddings else None,
            nearest_prototype_class=nearest_class,
            nearest_prototype_index=nearest_index,
        )
        return output if return_dict else output.to_tuple()

    @torch.no_grad()
    def _assign_pixels_to_prototypes(
        self,
        pixel_embeddings: torch.Tensor,
        similarities: torch.Tensor,
        labels: torch.Tensor,
        height: int,
        width: int,
    ) -> "_PixelAssignment":
        """Within-class online clustering: each labelled pixel goes to one of its class's K prototypes.

        Arguments:
            pixel_embeddings: (N, D) unit embeddings; similarities: (N, C*K).
            labels: (B, H, W) at input resolution, resized here to (B, h, w) by nearest neighbour.
        """
        config = self.config
        num_classes, num_prototypes = config.num_labels, config.num_prototypes_per_class
        pixel_labels = F.interpolate(labels[:, None].float(), size=(height, width), mode="nearest")
        pixel_labels = pixel_labels.long().reshape(-1)  # (N,)
        labelled = pixel_labels != config.semantic_loss_ignore_index
        pixel_classes = torch.where(labelled, pixel_labels, torch.zeros_like(pixel_labels))  # (N,) in [0, C)

        # Clustering in float32: recompute the similarities if the forward ran in bf16/fp16.
        if similarities.dtype == torch.float32:
            similarities32 = similarities.detach()
        else:
            with torch.autocast(device_type=similarities.device.type, enabled=False):
                flat_prototypes = self.prototypes.reshape(num_classes * num_prototypes, -1)
                similarities32 = pixel_embeddings.detach().float() @ flat_prototypes.T
        own_class_similarities = similarities32.view(-1, num_classes, num_prototypes)
        own_class_similarities = own_class_similarities.gather(
            1, pixel_classes[:, None, None].expand(-1, 1, num_prototypes)
        ).squeeze(1)  # (N, K)
        # Ignored pixels go to an extra group C, so they never weigh on a real class's marginals.
        groups = torch.where(labelled, pixel_classes, torch.full_like(pixel_classes, num_classes))
        assignments, _ = sinkhorn_assign_pixels(
            own_class_similarities,
            groups,
            num_classes + 1,
            iterations=config.sinkhorn_iterations,
            epsilon=config.sinkhorn_epsilon,
        )
        return _PixelAssignment(pixel_labels, labelled, pixel_classes, assignments, num_prototypes)

    @torch.no_grad()
    def _update_prototypes(
        self, pixel_embeddings: torch.Tensor, pixel_logits: torch.Tensor, assignment: "_PixelAssignment"
    ) -> None:
        """Momentum update of the prototype buffer, in place (paper eq. 14)."""
        update_weights = assignment.labelled
        if self.config.update_prototypes_with_correct_only:
            update_weights = update_weights & (pixel_logits.argmax(dim=-1) == assignment.pixel_labels)
        updated = momentum_update_prototypes(
            self.prototypes,
            pixel_embeddings.detach(),
            assignment.pixel_classes,
            assignment.assignments,
            momentum=self.config.prototype_momentum,
            pixel_weights=update_weights.float(),
        )
        self.prototypes.copy_(updated)


@dataclass
class _PixelAssignment:
    """Result of the within-class clustering, all (N,) over the pixels at feature resolution."""

    pixel_labels: torch.Tensor  # class index or the ignore index
    labelled: torch.Tensor  # bool, not ignored
    pixel_classes: torch.Tensor  # class index, 0 for ignored pixels (which carry weight 0 everywhere)
    assignments: torch.Tensor  # prototype index within the class, in [0, K)
    num_prototypes: int

    @property
    def target_prototypes(self) -> torch.Tensor:
        """Flat index `class * K + k` of each pixel's assigned prototype, in [0, C*K)."""
        return self.pixel_classes * self.num_prototypes + self.assignments


__all__ = [
    "ProtoSegDecodeHead",
    "ProtoSegForSemanticSegmentation",
    "ProtoSegPreTrainedModel",
    "ProtoSegProjectionHead",
    "ProtoSegPrototypeBank",
    "ProtoSegSemanticSegmenterOutput",
    "build_encoder",
    "encoder_channels",
]
