"""ProtoSeg for transformers: semantic segmentation by nearest non-learnable prototype.

Importing the package registers model type "protoseg" with `AutoConfig` and
`AutoModelForSemanticSegmentation`, and marks the classes for remote code, so `save_pretrained`
writes `auto_map` and copies the modeling files beside the weights.
"""

from transformers import AutoConfig, AutoModelForSemanticSegmentation

from .configuration_protoseg import ProtoSegConfig
from .modeling_protoseg import (
    ProtoSegForSemanticSegmentation,
    ProtoSegPreTrainedModel,
    ProtoSegSemanticSegmenterOutput,
)
from .prototypes import momentum_update_prototypes, sinkhorn_assign_pixels

AutoConfig.register(ProtoSegConfig.model_type, ProtoSegConfig, exist_ok=True)
AutoModelForSemanticSegmentation.register(ProtoSegConfig, ProtoSegForSemanticSegmentation, exist_ok=True)
ProtoSegConfig.register_for_auto_class()
ProtoSegForSemanticSegmentation.register_for_auto_class("AutoModelForSemanticSegmentation")

__version__ = "0.1.0"

__all__ = [
    "ProtoSegConfig",
    "ProtoSegForSemanticSegmentation",
    "ProtoSegPreTrainedModel",
    "ProtoSegSemanticSegmenterOutput",
    "momentum_update_prototypes",
    "sinkhorn_assign_pixels",
]
