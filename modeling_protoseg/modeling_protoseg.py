"""ProtoSeg: semantic segmentation by nearest non-learnable prototype (Zhou et al., CVPR 2022).

Pipeline of `ProtoSegForSemanticSegmentation.forward`:
    encoder (MiT / Swin / any AutoBackbone)      -> 4 feature maps at strides 4, 8, 16, 32
    ProtoSegDecodeHead (SegFormer all-MLP)       -> (B, decoder_hidden_size, H/4, W/4)
    ProtoSegProjectionHead + LayerNorm + L2 norm -> pixel embeddings (B, D, H/4, W/4), unit length along D
    cosine similarity to the C*K prototypes, max over the K of each class, LayerNorm over the C class
    scores, then a learned per-class affine map (or the official code's LayerNorm) -> logits (B, C, H/4, W/4)
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

from .batch_norm_statistics import BatchNormStatisticsGuard
from .class_enrolment import ProtoSegClassEnrolmentMixin
from .class_scores import ProtoSegClassScoreNorm, is_exporting, nearest_prototype_scores
from .configuration_protoseg import ProtoSegConfig
from .decode_head import ProtoSegDecodeHead, channels_last_norm, eval_batch_norm_affine, relu_unless_recorded
from .encoders import (
    ProtoSegEncoderAttentionMixin,
    ProtoSegEncoderCheckpointMixin,
    build_encoder,
    encoder_channels,
    encoder_outputs,
    hidden_state_indices,
    minimum_input_size,
    model_from_pretrained_encoder,
    select_hidden_states,
)
from .losses import class_scores_and_prototype_losses, pixel_cross_entropy
from .pipeline_registration import register_for_segmentation_pipeline
from .prototypes import PixelAssignment, assign_pixels_to_prototypes, update_prototype_bank_


@dataclass
class ProtoSegSemanticSegmenterOutput(ModelOutput):
    """Output of [`ProtoSegForSemanticSegmentation`].

    Arguments:
        loss: CE + ppc_loss_weight * PPC + ppd_loss_weight * PPD (CE only in eval mode), when labels are given.
        logits: (B, C, H/4, W/4) class logits, as `SegformerForSemanticSegmentation`.
        ce_loss, ppc_loss, ppd_loss: the unweighted loss terms, for logging (PPC/PPD in training mode only).
        hidden_states: the encoder's 4 feature maps (strides 4..32), when `output_hidden_states` (argument, else
            `config.output_hidden_states`) is True; a list of indices keeps the tuple's length with None in place of
            the maps it does not select (transformers 5's list form).
        attentions: the encoder's attention maps, when `output_attentions` (argument, else
            `config.output_attentions`) is True and the encoder has attention layers (MiT, Swin; run it with
            `attn_implementation="eager"`, as SegFormer); None for convolutional encoders.
        pixel_embeddings: (B, D, H/4, W/4) L2-normalised embeddings, when `output_pixel_embeddings=True`.
        nearest_prototype_class, nearest_prototype_index: (B, H/4, W/4) long, class and index within
            the class of each pixel's most similar prototype, when `output_nearest_prototypes=True`.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    ce_loss: torch.FloatTensor | None = None
    ppc_loss: torch.FloatTensor | None = None
    ppd_loss: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor | None, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    pixel_embeddings: torch.FloatTensor | None = None
    nearest_prototype_class: torch.LongTensor | None = None
    nearest_prototype_index: torch.LongTensor | None = None


def _linear_1x1(conv: nn.Conv2d, channels_last: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution applied to (..., C_in) channels-last values: (..., C_out)."""
    return F.linear(channels_last, conv.weight.flatten(1), conv.bias)


def _unit_length_(embeddings: torch.Tensor) -> torch.Tensor:
    """`F.normalize(embeddings, dim=-1)`, in place when no autograd records it (one (N, D) block fewer)."""
    if embeddings.requires_grad:
        return F.normalize(embeddings, dim=-1)
    return embeddings.div_(torch.linalg.vector_norm(embeddings, dim=-1, keepdim=True).clamp_min_(1e-12))


class ProtoSegProjectionHead(nn.Module):
    """Two-layer 1x1-conv MLP from the decoder to D-dim pixel embeddings, LayerNorm then L2-normalised along
    channels. In eval mode the BatchNorm is folded into the first 1x1 map, and without autograd the L2
    normalisation divides the LayerNorm's output in place."""

    def __init__(self, *, hidden_size: int, embedding_dim: int) -> None:
        super().__init__()
        self.hidden = nn.Conv2d(hidden_size, hidden_size, kernel_size=1)
        self.batch_norm = nn.BatchNorm2d(hidden_size)
        self.output = nn.Conv2d(hidden_size, embedding_dim, kernel_size=1)
        self.layer_norm = nn.LayerNorm(embedding_dim)

    def forward(self, decoded: torch.Tensor) -> torch.Tensor:
        """(B, hidden, h, w) -> (B, D, h, w) unit-length embeddings, a channels-last view."""
        channels_last = decoded.permute(0, 2, 3, 1)  # (B, h, w, hidden)
        eval_affine = eval_batch_norm_affine(self.batch_norm)
        if eval_affine is None:
            hidden = channels_last_norm(self.batch_norm, _linear_1x1(self.hidden, channels_last))
        else:  # BatchNorm(W x + b) = (s * W) x + (s * b + t)
            scale, shift = eval_affine
            weight, bias = self.hidden.weight.flatten(1), self.hidden.bias
            folded_bias = (bias.float() * scale + shift).to(bias.dtype)
            hidden = F.linear(channels_last, weight * scale.to(weight.dtype)[:, None], folded_bias)
        embeddings = self.layer_norm(_linear_1x1(self.output, relu_unless_recorded(hidden)))  # (B, h, w, D)
        return _unit_length_(embeddings).permute(0, 3, 1, 2)  # unit length along D, not along the width


class ProtoSegPrototypeBank(nn.Module):
    """Holds the (C, K, D) prototypes as a persistent float32 buffer, with their usage statistics.

    Buffers (all saved in `model.safetensors`, restored by `from_pretrained`, never in `parameters()`):
        prototypes: (C, K, D) float32, L2-normalised; stays float32 when the model is cast to bf16/fp16.
        update_counts: (C, K) int64, training steps in which each prototype moved.
        idle_steps: (C, K) int64, consecutive steps in which the prototype's class had labelled pixels but
            none of them moved it (reset when it moves).
        skipped_nonfinite_updates: () int64, prototype updates refused because their pixels were not finite.
    """

    STATISTICS = ("update_counts", "idle_steps")

    def __init__(self, *, num_classes: int, num_prototypes_per_class: int, embedding_dim: int) -> None:
        super().__init__()
        shape = (num_classes, num_prototypes_per_class, embedding_dim)
        self.register_buffer("prototypes", torch.zeros(shape, dtype=torch.float32), persistent=True)
        for name in self.STATISTICS:
            self.register_buffer(name, torch.zeros(shape[:2], dtype=torch.long), persistent=True)
        self.register_buffer("skipped_nonfinite_updates", torch.zeros((), dtype=torch.long), persistent=True)

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

    @torch.no_grad()
    def select_classes(self, keep_rows: torch.Tensor, appended_prototypes: torch.Tensor | None = None) -> None:
        """Keep the classes `keep_rows` (in that order) and append new ones, for every buffer. Appended
        classes were built from data: they count as updated once, never idle."""
        rows = keep_rows.to(self.prototypes.device)
        for name in ("prototypes", *self.STATISTICS):
            kept = getattr(self, name)[rows]
            if appended_prototypes is not None:
                num_added, num_prototypes = appended_prototypes.shape[:2]
                if name == "prototypes":
                    added = appended_prototypes.to(kept.device, kept.dtype)
                else:
                    fill = 1 if name == "update_counts" else 0
                    added = kept.new_full((num_added, num_prototypes), fill)
                kept = torch.cat([kept, added], dim=0)
            setattr(self, name, kept.contiguous())  # replaces the registered buffer

    @torch.no_grad()
    def health(self, *, dead_after_steps: int) -> dict[str, torch.Tensor]:
        """Per-class within-class cosine and per-prototype state, as tensors (see `prototype_health`)."""
        prototypes = F.normalize(self.prototypes.float(), dim=-1)
        num_prototypes = prototypes.shape[1]
        gram = prototypes @ prototypes.transpose(1, 2)  # (C, K, K)
        off_diagonal = ~torch.eye(num_prototypes, dtype=torch.bool, device=gram.device)
        within_class_cosine = gram[:, off_diagonal].mean(dim=1) if num_prototypes > 1 else gram[:, 0, 0] * 0
        return {
            "within_class_cosine": within_class_cosine,  # (C,)
            "never_updated": self.update_counts == 0,  # (C, K)
            "dead": self.idle_steps >= dead_after_steps,  # (C, K)
            "update_counts": self.update_counts,
        }


class ProtoSegPreTrainedModel(ProtoSegEncoderCheckpointMixin, ProtoSegEncoderAttentionMixin, PreTrainedModel):
    config: ProtoSegConfig
    config_class = ProtoSegConfig
    base_model_prefix = "encoder"  # the attribute holding the encoder, as "segformer" in SegFormer
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _keep_in_fp32_modules_strict = ["prototype_bank"]
    _keys_to_ignore_on_load_unexpected = [r"prototype_bank\.reseed_counts"]  # written before re-seeding was removed
    # written before the class-score mode was recorded: such a checkpoint's parameters take its config's mode
    _keys_to_ignore_on_load_missing = [r"class_score_norm\.mode_index"]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """As `PreTrainedModel.from_pretrained`; a `ClassScoreNormModeError` (a ValueError) when the checkpoint's
        class-score parameters were trained in another `class_score_norm` mode than the config's (config.json
        edited by hand, or a `class_score_norm=` argument)."""
        loaded = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # (model, loading info) with output_loading_info
        for module in model.modules():
            if isinstance(module, ProtoSegClassScoreNorm):
                module.check_loaded_mode()
        return loaded

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # `load_state_dict` loads this module before its children: refuse class scores of another mode here, before
        # any of the model's tensors (encoder first) is copied.
        for name, module in self.named_modules():
            if isinstance(module, ProtoSegClassScoreNorm):
                module.check_state_dict_mode(state_dict, f"{prefix}{name}.")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, ProtoSegPrototypeBank):
            random_directions = torch.randn(module.prototypes.shape, device=module.prototypes.device)
            init.copy_(module.prototypes, F.normalize(random_directions, dim=-1))
            for name in (*module.STATISTICS, "skipped_nonfinite_updates"):
                init.zeros_(getattr(module, name))
        elif isinstance(module, ProtoSegClassScoreNorm):
            init.constant_(module.weight, self.config.class_score_scale if module.mode == "affine" else 1.0)
            init.zeros_(module.bias)
            init.constant_(module.mode_index, module.expected_mode_index)  # kept when the checkpoint has one


class ProtoSegForSemanticSegmentation(ProtoSegClassEnrolmentMixin, ProtoSegPreTrainedModel):
    """Encoder + all-MLP decoder + projection head, classifying each pixel by its nearest prototype."""

    def __init__(self, config: ProtoSegConfig) -> None:
        config._validate_method_values()  # values set after the config was built, before any allocation
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
        # C class scores -> logits: learned per-class affine map, or the official code's LayerNorm ("mask_norm").
        self.class_score_norm = ProtoSegClassScoreNorm(
            num_classes=config.num_labels, mode=config.class_score_norm, scale=config.class_score_scale
        )
        self.post_init()

    @property
    def _matching_dtype(self) -> torch.dtype | None:
        """The dtype of the inference class-score product: None (the embeddings' own) or bfloat16."""
        return torch.bfloat16 if self.config.prototype_matching_dtype == "bfloat16" else None

    @property
    def prototypes(self) -> torch.Tensor:
        """(C, K, D) float32 L2-normalised prototypes (the persistent buffer itself)."""
        return self.prototype_bank.prototypes

    @classmethod
    def from_pretrained_encoder(
        cls, encoder_name_or_path: str, **config_kwargs
    ) -> "ProtoSegForSemanticSegmentation":
        """A new ProtoSeg model whose encoder weights come from a SegFormer/MiT, Swin or other backbone
        checkpoint (Hub id or local folder, e.g. one written by `protoseg_tools.convert_efficientnet_lite0`);
        decoder, projection head and prototypes are freshly initialised.

        `config_kwargs` go to `ProtoSegConfig` (e.g. `id2label`, `num_prototypes_per_class`).
        Example: `ProtoSegForSemanticSegmentation.from_pretrained_encoder("nvidia/mit-b0", id2label=...)`.
        """
        return model_from_pretrained_encoder(cls, encoder_name_or_path, **config_kwargs)

    def _check_inputs(self, pixel_values: torch.Tensor, labels: torch.Tensor | None) -> None:
        """Raise a ValueError on malformed inputs, before anything (prototypes included) is touched."""
        num_channels = getattr(self.config.encoder_config, "num_channels", 3)
        if not isinstance(pixel_values, torch.Tensor):
            raise ValueError(f"pixel_values must be a torch.Tensor, got {type(pixel_values).__name__}")
        if pixel_values.ndim != 4 or pixel_values.shape[1] != num_channels:
            raise ValueError(
                f"pixel_values must be a 4-D tensor (batch, {num_channels}, height, width), "
                f"got shape {tuple(pixel_values.shape)}"
            )
        if not pixel_values.is_floating_point():
            raise ValueError(
                f"pixel_values must be a floating-point tensor of normalised images, got dtype {pixel_values.dtype}; "
                "the image processor converts 0-255 images (or use .float() and normalise)"
            )
        if pixel_values.shape[0] == 0:
            raise ValueError("pixel_values holds a batch of 0 images; the batch size must be >= 1")
        minimum_size = minimum_input_size(self.config.encoder_config)
        if min(pixel_values.shape[2:]) < minimum_size:
            raise ValueError(
                f"pixel_values of height x width {pixel_values.shape[2]} x {pixel_values.shape[3]} are too small "
                f"for the {self.config.encoder_config.model_type} encoder: both must be >= {minimum_size}"
            )
        if labels is None:
            return
        expected_shape = (pixel_values.shape[0], *pixel_values.shape[2:])
        if tuple(labels.shape) != expected_shape:
            raise ValueError(
                f"labels must have shape (batch, height, width) = {expected_shape} to match pixel_values, "
                f"got {tuple(labels.shape)}"
            )
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise ValueError(
                f"labels must be an integer tensor of class indices (e.g. torch.long), got dtype {labels.dtype}"
            )
        ignore_index = self.config.semantic_loss_ignore_index
        invalid = ((labels < 0) | (labels >= self.config.num_labels)) & (labels != ignore_index)
        if invalid.any():  # one host synchronisation per step, for a clear error
            bad_values = torch.unique(labels[invalid]).tolist()[:10]
            raise ValueError(
                f"labels must be class indices in [0, {self.config.num_labels - 1}] or the ignore index "
                f"{ignore_index}; got values {bad_values}"
            )

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.LongTensor | None = None,
        output_hidden_states: bool | int | list[int] | None = None,
        output_pixel_embeddings: bool = False,
        output_nearest_prototypes: bool = False,
        return_dict: bool | None = None,
        output_attentions: bool | None = None,
    ) -> ProtoSegSemanticSegmenterOutput | tuple:
        r"""
        Arguments:
            pixel_values: (B, 3, H, W) normalised images.
            labels: (B, H, W) class indices, `config.semantic_loss_ignore_index` for ignored pixels. In
                training mode they also drive the online clustering and the in-place prototype update.
            output_hidden_states: True for the encoder's 4 maps, or the indices of the maps to return;
                None reads `config.output_hidden_states`.
            output_attentions: the encoder's attention maps (None reads `config.output_attentions`).
        """
        self._check_inputs(pixel_values, labels)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        selected_maps = hidden_state_indices(output_hidden_states)  # a bad request fails before anything runs
        if output_attentions is None:
            output_attentions = self.config.output_attentions

        # a non-finite batch must not reach the BatchNorm running statistics (a user's loop does not skip it)
        batch_norm_guard = BatchNormStatisticsGuard(self) if self.training else None
        feature_maps, attentions = encoder_outputs(self.encoder, pixel_values, output_attentions=output_attentions)
        embeddings = self.projection_head(self.decode_head(list(feature_maps)))  # (B, D, h, w)
        if batch_norm_guard is not None:
            batch_norm_guard.restore_if_non_finite()
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
        elif output_nearest_prototypes:
            similarities = pixel_embeddings @ flat_prototypes.T
            class_scores = similarities.view(-1, num_classes, num_prototypes).amax(dim=-1)  # (N, C)
        else:
            class_scores = nearest_prototype_scores(
                pixel_embeddings, flat_prototypes, num_classes, matching_dtype=self._matching_dtype
            )  # (N, C)
        class_scores = class_scores.to(pixel_embeddings.dtype)
        # without autograd the logits overwrite the fresh scores: one (N, C) block fewer (444 MB at 847 classes)
        overwrite_scores = similarities is None and not torch.is_grad_enabled() and not is_exporting()
        pixel_logits = self.class_score_norm(class_scores, in_place=overwrite_scores)
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
            hidden_states=select_hidden_states(feature_maps, selected_maps),
            attentions=attentions,
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
    ) -> PixelAssignment:
        """Within-class online clustering (`prototypes.assign_pixels_to_prototypes`) in float32.

        Arguments:
            pixel_embeddings: (N, D) unit embeddings; similarities: (N, C*K).
            labels: (B, H, W) at input resolution, resized here to (B, h, w) by nearest neighbour.
        """
        config = self.config
        pixel_labels = F.interpolate(labels[:, None].float(), size=(height, width), mode="nearest")
        pixel_labels = pixel_labels.long().reshape(-1)  # (N,)
        # Clustering in float32: recompute the similarities if the forward ran in bf16/fp16.
        if similarities.dtype == torch.float32:
            similarities32 = similarities.detach()
        else:
            with torch.autocast(device_type=similarities.device.type, enabled=False):
                flat_prototypes = self.prototypes.reshape(-1, self.prototypes.shape[-1])
                similarities32 = pixel_embeddings.detach().float() @ flat_prototypes.T
        return assign_pixels_to_prototypes(
            similarities32, pixel_labels, config.num_prototypes_per_class,
            ignore_index=config.semantic_loss_ignore_index, iterations=config.sinkhorn_iterations,
            epsilon=config.sinkhorn_epsilon,
        )  # fmt: skip

    @torch.no_grad()
    def _update_prototypes(
        self, pixel_embeddings: torch.Tensor, pixel_logits: torch.Tensor, assignment: PixelAssignment
    ) -> None:
        """Momentum update of the prototype buffer and its statistics, in place (`prototypes.update_prototype_bank_`)."""
        config = self.config
        update_prototype_bank_(
            self.prototype_bank, pixel_embeddings, pixel_logits, assignment, momentum=config.prototype_momentum,
            prototype_init=config.prototype_init, update_pixels=config.prototype_update_pixels,
        )  # fmt: skip

    @torch.no_grad()
    def prototype_health(self) -> dict:
        """How the prototypes are doing, for logs, `eval_results.json` and the model card.

        Returns a dict of plain Python values:
            within_class_cosine: {class name: mean cosine between the class's K prototypes (off-diagonal)};
                near 1 means the K prototypes collapsed into one.
            mean_within_class_cosine: its mean over classes.
            num_prototypes: C * K.
            never_updated_prototypes: prototypes still at their initial value (never moved in training).
            dead_prototypes: prototypes idle for `dead_prototype_patience` steps in which their class had
                labelled pixels.
            skipped_nonfinite_updates: prototype updates refused because their pixels were not finite.
        """
        health = self.prototype_bank.health(dead_after_steps=self.config.dead_prototype_patience)
        names = [self.config.id2label.get(index, str(index)) for index in range(self.config.num_labels)]
        cosines = health["within_class_cosine"].tolist()
        return {
            "within_class_cosine": dict(zip(names, cosines)),
            "mean_within_class_cosine": sum(cosines) / len(cosines),
            "num_prototypes": int(health["update_counts"].numel()),
            "never_updated_prototypes": int(health["never_updated"].sum()),
            "dead_prototypes": int(health["dead"].sum()),
            "skipped_nonfinite_updates": int(self.prototype_bank.skipped_nonfinite_updates),
        }


# pipeline("image-segmentation") checks class names against its own table (installed package and remote code)
register_for_segmentation_pipeline(
    ProtoSegForSemanticSegmentation.config_class.model_type, ProtoSegForSemanticSegmentation.__name__
)

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
