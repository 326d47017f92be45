"""ProtoSeg for transformers: semantic segmentation by nearest non-learnable prototype.

Importing the package registers with the Auto classes, and marks for remote code (so `save_pretrained` writes
`auto_map` and copies the modeling files beside the weights):
    "protoseg"                    ProtoSegConfig / ProtoSegForSemanticSegmentation (AutoModelForSemanticSegmentation)
    "protoseg_linear_head"        ProtoSegLinearHeadConfig / ProtoSegLinearHeadForSemanticSegmentation (the
                                  parametric baseline on any encoder)
    "protoseg_efficientnet_lite"  ProtoSegEfficientNetLiteConfig / ProtoSegEfficientNetLiteBackbone (AutoBackbone)
The EfficientNet-Lite classes register themselves with AutoConfig / AutoBackbone in their own modules, because
a remote-code checkpoint imports those copied modules without this file. Only this file imports them: the model
code finds encoders through AutoConfig / AutoBackbone, so only a checkpoint whose encoder is EfficientNet-Lite carries
their files (`remote_code_encoders.py`). Tools live in `protoseg_tools`, training-only code in `training`.
"""

from transformers import AutoConfig, AutoModelForSemanticSegmentation

from .configuration_efficientnet_lite import ProtoSegEfficientNetLiteConfig
from .configuration_protoseg import ProtoSegConfig
from .configuration_protoseg_linear_head import ProtoSegLinearHeadConfig
from .encoders import build_encoder, encoder_channels, encoder_feature_maps, load_pretrained_encoder
from .image_loading import load_image
from .modeling_efficientnet_lite import ProtoSegEfficientNetLiteBackbone
from .modeling_protoseg import (
    ProtoSegForSemanticSegmentation,
    ProtoSegPreTrainedModel,
    ProtoSegSemanticSegmenterOutput,
)
from .modeling_protoseg_linear_head import ProtoSegLinearHeadForSemanticSegmentation
from .prototypes import (
    PixelAssignment,
    assign_pixels_to_prototypes,
    momentum_update_prototypes,
    sinkhorn_assign_pixels,
    update_prototype_bank_,
)

AutoConfig.register(ProtoSegConfig.model_type, ProtoSegConfig, exist_ok=True)
AutoModelForSemanticSegmentation.register(ProtoSegConfig, ProtoSegForSemanticSegmentation, exist_ok=True)
ProtoSegConfig.register_for_auto_class()
ProtoSegForSemanticSegmentation.register_for_auto_class("AutoModelForSemanticSegmentation")

AutoConfig.register(ProtoSegLinearHeadConfig.model_type, ProtoSegLinearHeadConfig, exist_ok=True)
AutoModelForSemanticSegmentation.register(
    ProtoSegLinearHeadConfig, ProtoSegLinearHeadForSemanticSegmentation, exist_ok=True
)
ProtoSegLinearHeadConfig.register_for_auto_class()
ProtoSegLinearHeadForSemanticSegmentation.register_for_auto_class("AutoModelForSemanticSegmentation")

ProtoSegEfficientNetLiteConfig.register_for_auto_class()
ProtoSegEfficientNetLiteBackbone.register_for_auto_class("AutoBackbone")

__version__ = "0.1.0"

__all__ = [
    "load_image",
    "ProtoSegConfig",
    "ProtoSegEfficientNetLiteBackbone",
    "ProtoSegEfficientNetLiteConfig",
    "ProtoSegForSemanticSegmentation",
    "ProtoSegLinearHeadConfig",
    "ProtoSegLinearHeadForSemanticSegmentation",
    "ProtoSegPreTrainedModel",
    "ProtoSegSemanticSegmenterOutput",
    "build_encoder",
    "encoder_channels",
    "encoder_feature_maps",
    "load_pretrained_encoder",
    "momentum_update_prototypes",
    "PixelAssignment",
    "assign_pixels_to_prototypes",
    "update_prototype_bank_",
    "sinkhorn_assign_pixels",
]
