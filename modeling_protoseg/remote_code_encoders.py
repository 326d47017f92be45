"""Encoders whose code is not part of transformers travel with a checkpoint only when the checkpoint uses them.

Such an encoder is an `AutoBackbone` marked with `register_for_auto_class("AutoBackbone")`: this package's
EfficientNet-Lite, or a user's own. The ProtoSeg model code imports none of them (it finds every encoder through
AutoConfig / AutoBackbone), so `save_pretrained` of a MiT or Swin model copies no EfficientNet-Lite file.

- Saving (`save_encoder_code`, called by the configs' `save_pretrained`): the backbone's modeling file and the files
  it imports relatively (its configuration among them) are copied into the folder, and the nested encoder config
  gets the `auto_map` that saving the backbone alone would write.
- Loading as remote code (`load_encoder_code`, called by the configs' `get_config_dict`): before the encoder config
  is built, the backbone named in that `auto_map` is imported from the same repository (whose code the user already
  trusts: the config class running this is that repository's remote code) and registered with AutoConfig and
  AutoBackbone, where `encoders.build_encoder` finds it.
"""

from __future__ import annotations

import os
from typing import Any

from transformers import AutoBackbone, AutoConfig, PretrainedConfig
from transformers.dynamic_module_utils import (
    TRANSFORMERS_DYNAMIC_MODULE_NAME,
    custom_object_save,
    get_class_from_dynamic_module,
)
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_BACKBONE_MAPPING

# The `from_pretrained` keyword arguments that say where a repository's files come from, passed on to the code loader.
HUB_ARGUMENTS = ("cache_dir", "force_download", "proxies", "token", "revision", "local_files_only")


def remote_code_backbone_class(encoder_config: PretrainedConfig) -> type | None:
    """The AutoBackbone class registered for an encoder config when it is marked for remote code, else None
    (SegFormer, transformers' own backbones)."""
    try:
        backbone_class = MODEL_FOR_BACKBONE_MAPPING[type(encoder_config)]
    except KeyError:  # not a backbone config (SegFormer), or not registered
        return None
    return backbone_class if getattr(backbone_class, "_auto_class", None) is not None else None


def _module_entry(cls: type) -> str:
    """"module.ClassName" as `auto_map` names a class: the module's file name, as copied beside the weights."""
    return f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}"


def save_encoder_code(encoder_config: PretrainedConfig, folder: str | os.PathLike) -> list[str]:
    """Copy the code of a remote-code encoder into `folder` and set `encoder_config.auto_map` to name it; nothing for
    an encoder transformers defines. Returns the paths written."""
    backbone_class = remote_code_backbone_class(encoder_config)
    if backbone_class is None:
        return []
    os.makedirs(folder, exist_ok=True)
    written = custom_object_save(backbone_class, folder)  # its module and every module it imports relatively
    auto_map = {"AutoBackbone": _module_entry(backbone_class)}
    if getattr(type(encoder_config), "_auto_class", None) is not None:  # not a config class of transformers
        written += custom_object_save(type(encoder_config), folder)  # usually among the backbone's imports already
        auto_map["AutoConfig"] = _module_entry(type(encoder_config))
    encoder_config.auto_map = auto_map
    return sorted({str(path) for path in written})


def is_remote_code(cls: type) -> bool:
    """True for a class imported by transformers from a repository's copied code (`trust_remote_code=True`)."""
    return cls.__module__.split(".", 1)[0] == TRANSFORMERS_DYNAMIC_MODULE_NAME


def load_encoder_code(
    encoder_config: Any, pretrained_model_name_or_path: str | os.PathLike, **hub_arguments: Any
) -> None:
    """Import and register the backbone a saved encoder config (a dict from config.json) names in its `auto_map`, from
    the repository `pretrained_model_name_or_path`; nothing when its model_type is already known to AutoConfig."""
    if not isinstance(encoder_config, dict):
        return
    auto_map = encoder_config.get("auto_map") or {}
    model_type = encoder_config.get("model_type")
    if "AutoBackbone" not in auto_map or model_type in CONFIG_MAPPING:
        return
    backbone_class = get_class_from_dynamic_module(
        auto_map["AutoBackbone"], pretrained_model_name_or_path, **hub_arguments
    )
    # The backbone's own copy of its config class: transformers imports each remote-code module with its relative
    # imports into a folder of its own, so another copy of the configuration file is another class.
    config_class = backbone_class.config_class
    AutoConfig.register(model_type, config_class, exist_ok=True)
    AutoBackbone.register(config_class, backbone_class, exist_ok=True)
    # marked, so that saving the loaded model copies the encoder's code again
    config_class.register_for_auto_class()
    backbone_class.register_for_auto_class("AutoBackbone")


class RemoteCodeEncoderConfigMixin:
    """For model configs with an `encoder_config`: saves a remote-code encoder's code with the config, and loads it
    back when the config class itself is running as remote code."""

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs: Any) -> None:
        """As `PretrainedConfig.save_pretrained`, after copying a remote-code encoder's files into the folder."""
        save_encoder_code(self.encoder_config, save_directory)
        super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)

    @classmethod
    def get_config_dict(
        cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """As `PretrainedConfig.get_config_dict`; loaded as remote code, it also imports the encoder's code the
        checkpoint carries (see `load_encoder_code`)."""
        hub_arguments = {name: kwargs[name] for name in HUB_ARGUMENTS if name in kwargs}
        config_dict, unused_kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        if is_remote_code(cls):
            load_encoder_code(config_dict.get("encoder_config"), pretrained_model_name_or_path, **hub_arguments)
        return config_dict, unused_kwargs


__all__ = [
    "RemoteCodeEncoderConfigMixin",
    "is_remote_code",
    "load_encoder_code",
    "remote_code_backbone_class",
    "save_encoder_code",
]
