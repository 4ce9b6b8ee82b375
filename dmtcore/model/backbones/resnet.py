"""`resnet18`: torchvision's ResNet-18 split into four stages, randomly initialised.

`dilated=true` gives the column spatial features for pixel-level tasks: layer3 and layer4 keep
their input's resolution and use atrous 3×3 convolutions instead (rates 2 and 4), so the last
stage outputs a 512×H/8×W/8 map (output stride 8, the Deeplab setup of NDDR-CNN §4 and
cross-stitch §6.2), and the global pooling moves into the image-level heads. torchvision's
`replace_stride_with_dilation` works only for Bottleneck blocks, hence `dilate` below.

Pretrained weights are used only from a local safetensors file (`weights_file` option, e.g. a
converted torchvision checkpoint): dmt never downloads at run time and never unpickles weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dmtcore.errors import InvalidValueError
from dmtcore.hooks.kinds import BackboneKind, Kinds
from dmtcore.hooks.specs import hookimpl


def build(input_spec: Any, options: dict[str, Any]) -> Any:
    from torch import nn
    from torchvision.models import resnet18

    from dmtcore.model.backbones import Column

    net = resnet18(weights=None)
    weights_file = options.get("weights_file")
    if weights_file:
        load_local_weights(net, Path(weights_file))
    channels = input_spec.channels
    if channels != 3:
        old = net.conv1
        net.conv1 = nn.Conv2d(channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        if weights_file:  # keep pretrained filters: average over RGB, repeat for the new channels
            net.conv1.weight.data.copy_(
                old.weight.data.mean(1, keepdim=True).repeat(1, channels, 1, 1)
            )
    dilated = options.get("dilated", False)
    if not isinstance(dilated, bool):
        raise InvalidValueError(f"resnet18 dilated must be true or false, got {dilated!r}")
    if dilated:
        dilate(net.layer3, 2)
        dilate(net.layer4, 4)
    last = [net.layer4] if dilated else [net.layer4, net.avgpool, nn.Flatten()]
    stages = [
        nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1),
        net.layer2,
        net.layer3,
        nn.Sequential(*last),
    ]
    return Column(stages, input_spec.shape)


def dilate(layer: Any, rate: int) -> None:
    """Turn a stride-2 layer of BasicBlocks into a stride-1 atrous one (torchvision's
    `_make_layer(dilate=True)` scheme: the first block's first convolution keeps the previous
    rate, every other 3×3 convolution uses `rate`)."""
    previous = rate // 2
    for index, block in enumerate(layer):
        first = index == 0
        block.conv1.stride = (1, 1)
        block.conv1.dilation = block.conv1.padding = (previous, previous) if first else (rate, rate)
        block.conv2.dilation = block.conv2.padding = (rate, rate)
        if block.downsample is not None:
            block.downsample[0].stride = (1, 1)


def load_local_weights(net: Any, path: Path) -> None:
    from safetensors.torch import load_file

    if path.suffix != ".safetensors" or not path.is_file():
        raise InvalidValueError(
            f"resnet18 weights_file {str(path)!r} must be an existing .safetensors file "
            "(convert a torchvision checkpoint with safetensors.torch.save_file)"
        )
    state = {k: v for k, v in load_file(str(path)).items() if not k.startswith("fc.")}
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise InvalidValueError(
            f"{path} is not a ResNet-18 state dict: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )


@hookimpl
def dmt_register_backbones(kinds: Kinds) -> None:
    kinds.add_backbone(
        BackboneKind(
            name="resnet18",
            description=(
                "torchvision ResNet-18 in 4 stages (random init; optional local weights; "
                "dilated=true: spatial features at stride 8 for pixel-level tasks)"
            ),
            build=build,
            default_options={"weights_file": None, "dilated": False},
            init_only_options=("weights_file",),
        )
    )
