"""ProtoSeg configuration: an encoder sub-config plus the prototype method's knobs."""

from __future__ import annotations

import math
import numbers
from typing import Any

from transformers import AutoConfig, PretrainedConfig
from transformers.utils import logging

from .transformers_requirement import MINIMUM_TRANSFORMERS_VERSION  # noqa: F401 - first: checks the version
from .configuration_encoders import encoder_kind as _encoder_kind
from .configuration_encoders import MAX_MODEL_BYTES, encoder_stage_layout, estimate_encoder_parameters
from .configuration_encoders import InputNormalization, check_model_input_normalization, resolve_encoder_config
from .configuration_encoders import input_normalization as _input_normalization
from .remote_code_encoders import RemoteCodeEncoderConfigMixin

logger = logging.get_logger(__name__)


CLASS_SCORE_NORMS = ("affine", "layer_norm")
PROTOTYPE_INITS = ("data", "random")
PROTOTYPE_UPDATE_PIXELS = ("correct_else_all", "correct", "all")
PROTOTYPE_MATCHING_DTYPES = ("float32", "bfloat16")

# Upper bounds that no sensible configuration reaches: they turn a typo (10**9 iterations, a prototype bank of
# terabytes) into an error naming the field instead of a hang or an allocation failure deep inside a forward.
MAX_SINKHORN_ITERATIONS = 1000
MAX_PROTOTYPES_PER_CLASS = 1000
MAX_WIDTH = 65536  # embedding_dim, decoder_hidden_size
MAX_PROTOTYPE_BANK_BYTES = 4 * 1024**3  # C * K * D float32 prototypes

INTEGER_FIELDS = (
    "num_prototypes_per_class", "sinkhorn_iterations", "embedding_dim", "decoder_hidden_size",
    "dead_prototype_patience", "semantic_loss_ignore_index",
)  # fmt: skip
REAL_FIELDS = (
    "prototype_momentum", "sinkhorn_epsilon", "ppc_temperature", "ppc_loss_weight", "ppd_loss_weight",
    "class_score_scale", "classifier_dropout_prob", "initializer_range",
)  # fmt: skip


def _check_type(field: str, value: Any, *, integer: bool) -> None:
    """ValueError unless `value` is an int (`integer`) or a finite real number; bools and strings never pass."""
    if integer:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ValueError(f"{field} must be an int, got {value!r} ({type(value).__name__})")
    elif isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{field} must be a finite real number, got {value!r} ({type(value).__name__})")


class ProtoSegConfig(RemoteCodeEncoderConfigMixin, PretrainedConfig):
    r"""
    Configuration of [`ProtoSegForSemanticSegmentation`].

    Arguments:
        encoder_config (`PretrainedConfig` or `dict`, *optional*):
            The hierarchical encoder: a `SegformerConfig` (MiT), a `SwinConfig`, any transformers `AutoBackbone`
            config (ResNet, ConvNeXt, ...), one registered with `AutoBackbone.register`, or this package's
            `ProtoSegEfficientNetLiteConfig`. A dict must carry its `model_type`.
            Defaults to `SegformerConfig()` (MiT-B0).
        decoder_hidden_size (`int`): width of the all-MLP decoder that fuses the four feature maps.
        embedding_dim (`int`): size D of the pixel embeddings and of the prototypes.
        num_prototypes_per_class (`int`): K, non-learnable prototypes per class (paper: 10).
        prototype_momentum (`float`): mu in `p <- mu * p + (1 - mu) * mean` (paper: 0.999), in [0, 1).
        sinkhorn_iterations (`int`): Sinkhorn-Knopp iterations of the online clustering (paper: 3).
        sinkhorn_epsilon (`float`): kappa, the entropy weight of the clustering (paper: 0.05), > 0.
        ppc_temperature (`float`): tau of the pixel-prototype contrastive loss (paper: 0.1), > 0.
        ppc_loss_weight (`float`): lambda1 (paper: 0.01).
        ppd_loss_weight (`float`): lambda2 (paper: 0.01).
        semantic_loss_ignore_index (`int`): label value of pixels that take part in nothing.
        prototype_update_pixels (`str`): which assigned pixels move a prototype. `"correct"`: the official code,
            only pixels the model already classifies correctly, so a class that is never predicted right keeps
            its prototypes frozen. `"correct_else_all"` (default): the same, except that a class none of whose
            labelled pixels in the (global) batch is classified right moves its prototypes with all of them.
            `"all"`: every labelled pixel. Checkpoints saved with the former boolean
            `update_prototypes_with_correct_only` load as `"correct"` (True) or `"all"` (False).
        class_score_norm (`str`): how the C class scores (each a cosine similarity in [-1, 1]) become logits.
            `"affine"` (default): a learned per-class scale and bias, `logit_c = scale_c * score_c + bias_c`,
            the scale starting at `class_score_scale`; it keeps a useful gradient and a graded confidence
            for any number of classes. `"layer_norm"`: the official code's `LayerNorm(C)` over the scores
            (a learned temperature for many classes, but with C = 2 it maps any two scores that differ by
            more than ~0.01 to -1/+1: the gradient vanishes and every pixel gets the same confidence).
            Checkpoints saved before this option existed load as `"layer_norm"`.
        class_score_scale (`float`): initial per-class scale of the `"affine"` normalisation, an inverse
            temperature (default 10 = 1 / the paper's PPC temperature), > 0.
        prototype_init (`str`): `"data"` (default): the first update a prototype receives sets it to the mean
            of the labelled pixels assigned to it (all of them, correctly classified or not), so no prototype
            stays at its random start, rare classes included. `"random"`: the paper, momentum from the
            random start.
        dead_prototype_patience (`int`): a prototype counts as dead once its class had labelled pixels in
            this many consecutive training steps without any of them moving it (reported by
            `prototype_health()`), >= 1.
        prototype_matching_dtype (`str`): the dtype of the inference product between pixel embeddings and
            prototypes (the class scores without autograd). `"float32"` (default): in the embeddings' own dtype
            (float32 unless the model was cast). `"bfloat16"`: the
            embeddings and prototypes are rounded to bfloat16 for the product (accumulated in float32 by the
            matrix-multiply kernels, each similarity rounded to bfloat16: at most 2^-8 + 2^-9 ~ 6e-3 off) and the class scores
            are returned in float32; the prototypes stay float32 in the model and the checkpoint. Faster only where
            the hardware multiplies bfloat16 natively (GPUs, CPUs with AVX512-BF16 or AMX); training, the nearest-
            prototype outputs and exported graphs (ONNX, `torch.jit.trace`) always match in float32.
        classifier_dropout_prob (`float`): dropout after the decoder fusion.
        initializer_range (`float`): std of the truncated-normal init of weights and prototypes.
        image_mean, image_std (`list[float]`, *optional*): the input normalisation `(x - image_mean) / image_std`
            (RGB, x = pixel / 255) the model expects. Left unset, the encoder's: its config's own (EfficientNet-Lite:
            0.5 / 0.5), else ImageNet's (MiT, Swin, ...). Saved in config.json; `config.input_normalization` is what
            training, evaluation, the saved image processor, class enrolment and visualisation use.
    """

    model_type = "protoseg"
    sub_configs = {"encoder_config": AutoConfig}
    # `Trainer.evaluate` / `predict` hand `compute_metrics` every output but these: the logits alone.
    keys_to_ignore_at_inference = [
        "ce_loss",
        "ppc_loss",
        "ppd_loss",
        "hidden_states",
        "attentions",
        "pixel_embeddings",
        "nearest_prototype_class",
        "nearest_prototype_index",
    ]

    def __init__(
        self,
        encoder_config: PretrainedConfig | dict[str, Any] | None = None,
        decoder_hidden_size: int = 256,
        embedding_dim: int = 256,
        num_prototypes_per_class: int = 10,
        prototype_momentum: float = 0.999,
        sinkhorn_iterations: int = 3,
        sinkhorn_epsilon: float = 0.05,
        ppc_temperature: float = 0.1,
        ppc_loss_weight: float = 0.01,
        ppd_loss_weight: float = 0.01,
        semantic_loss_ignore_index: int = 255,
        prototype_update_pixels: str = "correct_else_all",
        class_score_norm: str = "affine",
        class_score_scale: float = 10.0,
        prototype_init: str = "data",
        dead_prototype_patience: int = 100,
        prototype_matching_dtype: str = "float32",
        classifier_dropout_prob: float = 0.1,
        initializer_range: float = 0.02,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        **kwargs: Any,
    ) -> None:
        encoder_config = resolve_encoder_config(encoder_config)
        self.encoder_config = encoder_config
        if image_mean is None and image_std is None:  # the encoder's own, else ImageNet's
            image_mean, image_std = _input_normalization(encoder_config)
        # lists, as config.json holds them; checked in _validate_method_values (a missing one there too)
        self.image_mean = list(image_mean) if isinstance(image_mean, tuple) else image_mean
        self.image_std = list(image_std) if isinstance(image_std, tuple) else image_std

        self.decoder_hidden_size = decoder_hidden_size
        self.embedding_dim = embedding_dim
        self.num_prototypes_per_class = num_prototypes_per_class
        self.prototype_momentum = prototype_momentum
        self.sinkhorn_iterations = sinkhorn_iterations
        self.sinkhorn_epsilon = sinkhorn_epsilon
        self.ppc_temperature = ppc_temperature
        self.ppc_loss_weight = ppc_loss_weight
        self.ppd_loss_weight = ppd_loss_weight
        self.semantic_loss_ignore_index = semantic_loss_ignore_index
        if kwargs.pop("reseed_dead_prototypes", False):  # written before re-seeding was removed
            logger.warning(
                "reseed_dead_prototypes=True is no longer supported and is ignored: it moved dead prototypes onto "
                "single pixels without improving them; prototype_update_pixels='correct_else_all' keeps every "
                "prototype of a labelled class moving instead"
            )
        legacy_correct_only = kwargs.pop("update_prototypes_with_correct_only", None)  # written before prototype_update_pixels existed
        if legacy_correct_only is not None:
            if not isinstance(legacy_correct_only, bool):
                raise ValueError(
                    f"update_prototypes_with_correct_only must be a bool (True or False), got {legacy_correct_only!r}"
                )
            prototype_update_pixels = "correct" if legacy_correct_only else "all"
        self.prototype_update_pixels = prototype_update_pixels
        self.class_score_norm = class_score_norm
        self.class_score_scale = class_score_scale
        self.prototype_init = prototype_init
        self.dead_prototype_patience = dead_prototype_patience
        self.prototype_matching_dtype = prototype_matching_dtype
        self.classifier_dropout_prob = classifier_dropout_prob
        self.initializer_range = initializer_range
        super().__init__(**kwargs)
        if self.id2label is not None and not self.label2id:  # transformers 5 leaves it None
            self.label2id = {label: index for index, label in self.id2label.items()}
        self._validate_method_values()

    def _validate_method_values(self) -> None:
        """Raise a ValueError naming the first field whose value the method cannot use: its type (an int
        field takes an int, a float field a real number, never a bool or a string), its range, and the size of
        the prototype bank (`C * K * D * 4` bytes at most `MAX_PROTOTYPE_BANK_BYTES`)."""
        for field in INTEGER_FIELDS:
            _check_type(field, getattr(self, field), integer=True)
        for field in REAL_FIELDS:
            _check_type(field, getattr(self, field), integer=False)
        checks = [
            ("num_prototypes_per_class", self.num_prototypes_per_class,
             1 <= self.num_prototypes_per_class <= MAX_PROTOTYPES_PER_CLASS, f"in [1, {MAX_PROTOTYPES_PER_CLASS}]"),
            ("prototype_momentum", self.prototype_momentum, 0.0 <= self.prototype_momentum < 1.0, "in [0, 1)"),
            ("sinkhorn_iterations", self.sinkhorn_iterations,
             1 <= self.sinkhorn_iterations <= MAX_SINKHORN_ITERATIONS, f"in [1, {MAX_SINKHORN_ITERATIONS}]"),
            ("sinkhorn_epsilon", self.sinkhorn_epsilon, self.sinkhorn_epsilon > 0, "> 0"),
            ("ppc_temperature", self.ppc_temperature, self.ppc_temperature > 0, "> 0"),
            ("ppc_loss_weight", self.ppc_loss_weight, self.ppc_loss_weight >= 0, ">= 0"),
            ("ppd_loss_weight", self.ppd_loss_weight, self.ppd_loss_weight >= 0, ">= 0"),
            ("embedding_dim", self.embedding_dim, 1 <= self.embedding_dim <= MAX_WIDTH, f"in [1, {MAX_WIDTH}]"),
            ("decoder_hidden_size", self.decoder_hidden_size,
             1 <= self.decoder_hidden_size <= MAX_WIDTH, f"in [1, {MAX_WIDTH}]"),
            ("class_score_scale", self.class_score_scale, self.class_score_scale > 0, "> 0"),
            ("dead_prototype_patience", self.dead_prototype_patience, self.dead_prototype_patience >= 1, ">= 1"),
            ("classifier_dropout_prob", self.classifier_dropout_prob, 0.0 <= self.classifier_dropout_prob < 1.0,
             "in [0, 1)"),
            ("initializer_range", self.initializer_range, self.initializer_range >= 0, ">= 0"),
        ]  # fmt: skip
        for field, value, valid, expected in checks:
            if not valid:
                raise ValueError(f"{field} must be {expected}, got {value!r}")
        choices = [
            ("class_score_norm", self.class_score_norm, CLASS_SCORE_NORMS),
            ("prototype_init", self.prototype_init, PROTOTYPE_INITS),
            ("prototype_update_pixels", self.prototype_update_pixels, PROTOTYPE_UPDATE_PIXELS),
            ("prototype_matching_dtype", self.prototype_matching_dtype, PROTOTYPE_MATCHING_DTYPES),
        ]
        for field, value, allowed in choices:
            if value not in allowed:
                raise ValueError(f"{field} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
        if self.num_labels < 2:
            raise ValueError(
                f"num_labels must be >= 2, got {self.num_labels}: a pixel takes the class of its nearest prototype, "
                "so there must be classes to choose between. For one foreground class, label the rest as a "
                'background class: id2label={0: "background", 1: "<your class>"}'
            )
        bank_bytes = self.num_labels * self.num_prototypes_per_class * self.embedding_dim * 4
        if bank_bytes > MAX_PROTOTYPE_BANK_BYTES:
            raise ValueError(
                f"num_labels * num_prototypes_per_class * embedding_dim = {self.num_labels} * "
                f"{self.num_prototypes_per_class} * {self.embedding_dim} float32 prototypes take {bank_bytes:,} bytes, "
                f"more than the limit of {MAX_PROTOTYPE_BANK_BYTES:,} (4 GiB); lower one of them"
            )
        check_model_input_normalization(self)
        self._check_model_size()
        if 0 <= self.semantic_loss_ignore_index < self.num_labels:
            raise ValueError(
                f"semantic_loss_ignore_index ({self.semantic_loss_ignore_index}) collides with a class index "
                f"(num_labels = {self.num_labels}); use a value outside [0, {self.num_labels})"
            )

    def _check_model_size(self) -> None:
        """ValueError naming the largest part's field when the model this config builds is estimated (from the
        config alone) to hold more than `MAX_MODEL_BYTES` of float32 parameters and prototypes."""
        stages = encoder_stage_layout(self.encoder_config)  # also bounds the encoder's depths and widths
        in_channels = sum(width for _, width, _ in stages[-4:])  # the decoder reads the last four maps
        hidden = self.decoder_hidden_size
        parts = {
            "encoder_config (depths and widths)": estimate_encoder_parameters(self.encoder_config),
            "decoder_hidden_size": in_channels * hidden + 4 * hidden * hidden + hidden * hidden,  # decoder + head
            "embedding_dim": (hidden + self.num_labels * self.num_prototypes_per_class) * self.embedding_dim,
        }
        total_bytes = 4 * sum(parts.values())
        if total_bytes > MAX_MODEL_BYTES:
            field = max(parts, key=parts.get)
            raise ValueError(
                f"{field}: the model would hold about {sum(parts.values()):,} float32 parameters and prototypes "
                f"({total_bytes / 1024**3:.1f} GiB; {field} alone {parts[field]:,}), more than the limit of "
                f"{MAX_MODEL_BYTES / 1024**3:.0f} GiB; lower it (decoder_hidden_size = {hidden}, embedding_dim = "
                f"{self.embedding_dim})"
            )

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> "ProtoSegConfig":
        """As `PretrainedConfig.from_dict`; a saved config without `class_score_norm` (package 0.1, whose
        weights were trained with the LayerNorm) loads as `"layer_norm"`, not as the newer default. Values given
        as keyword arguments (`from_pretrained(folder, sinkhorn_iterations=...)`) are validated as well."""
        if "class_score_norm" not in config_dict:
            config_dict = {**config_dict, "class_score_norm": "layer_norm"}
        config = super().from_dict(config_dict, **kwargs)
        # from_pretrained(..., num_prototypes_per_class=...) sets such values after __init__: check them too
        (config[0] if isinstance(config, tuple) else config)._validate_method_values()
        return config

    @property
    def encoder_kind(self) -> str:
        """"segformer" for MiT encoders, "backbone" for transformers AutoBackbone encoders."""
        return _encoder_kind(self.encoder_config)

    @property
    def input_normalization(self) -> InputNormalization:
        """(mean, std) of the `(x - mean) / std` input normalisation, from `image_mean` / `image_std`."""
        return _input_normalization(self)


__all__ = ["ProtoSegConfig"]
