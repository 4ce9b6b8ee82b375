"""`resnet18`: torchvision's ResNet-18 split into four stages, randomly initialised.

Pretrained weights are used only from a local safetensors file (`weights_file` option, e.g. a
converted torchvision checkpoint): dmt never downloads at run time and never unpickles weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dmtcore.errors import InvalidValueError
from dmtcore.hookspecs import hookimpl
from dmtcore.registry import BackboneKind, Registry


def build(input_spec: Any, options: dict[str, Any]) -> Any:
    from torch import nn
    from torchvision.models import resnet18

    from dmtcore.backbones import Column

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
    stages = [
        nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1),
        net.layer2,
        net.layer3,
        nn.Sequential(net.layer4, net.avgpool, nn.Flatten()),
    ]
    return Column(stages, input_spec.shape)


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
def dmt_register_backbones(registry: Registry) -> None:
    registry.add_backbone(
        BackboneKind(
            name="resnet18",
            description="torchvision ResNet-18 in 4 stages (random init; optional local weights)",
            build=build,
            default_options={"weights_file": None},
            init_only_options=("weights_file",),
        )
    )
