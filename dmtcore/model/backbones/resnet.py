"""torchvision's ResNet-18/34/50/101, each split into four stages (one per residual stage).

The stem (conv1, bn1, relu, maxpool) joins layer1; connections sit after layer1, layer2 and
layer3, the boundaries of DMT's and NDDR-CNN's ResNet columns. The image-level column ends in
global average pooling (2048 or 512 features); the ImageNet classifier `fc` is never kept.

`dilated=true` gives the column spatial features for pixel-level tasks (the Deeplab setup of
NDDR-CNN §4 and cross-stitch §6.2): the last stages keep their input's resolution and use
atrous 3×3 convolutions instead, so the last stage outputs a map at `output_stride` 8
(layer3 and layer4 dilated, rates 2 and 4) or 16 (layer4 only, rate 2), and global pooling
moves into the image-level heads. Bottleneck ResNets use torchvision's own
`replace_stride_with_dilation`; it does not support BasicBlocks (18, 34), hence `dilate`.

`weights=imagenet` (or one of torchvision's names, e.g. `IMAGENET1K_V1`) starts columns from
torchvision's published ImageNet weights, read from its cache (see `pretrained`). For
ResNet-18, `weights_file=PATH.safetensors` still starts them from a local converted checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dmtcore.errors import InvalidValueError
from dmtcore.hooks.kinds import BackboneKind, Kinds
from dmtcore.hooks.specs import hookimpl
from dmtcore.model.backbones import check_flag
from dmtcore.model.backbones.pretrained import (
    NO_WEIGHTS,
    PublishedWeights,
    load_into,
    torchvision_option,
)

DEPTHS = {
    "resnet18": "basic",
    "resnet34": "basic",
    "resnet50": "bottleneck",
    "resnet101": "bottleneck",
}
OUTPUT_STRIDES = (8, 16)


def check_dilation(name: str, options: dict[str, Any]) -> tuple[bool, int]:
    dilated, stride = check_flag(name, options, "dilated"), options.get("output_stride", 8)
    if stride not in OUTPUT_STRIDES:
        raise InvalidValueError(
            f"{name} output_stride must be one of {', '.join(map(str, OUTPUT_STRIDES))}, got {stride!r}"
        )
    return dilated, stride


def make_build(name: str):
    def build(
        input_spec: Any, options: dict[str, Any], weights: dict[str, Any] | None = None
    ) -> Any:
        import torchvision.models as models
        from torch import nn

        from dmtcore.model.backbones import Column

        dilated, stride = check_dilation(name, options)
        bottleneck = DEPTHS[name] == "bottleneck"
        replace = [False, dilated and stride == 8, dilated] if bottleneck else None
        net = getattr(models, name)(
            weights=None, **({"replace_stride_with_dilation": replace} if replace else {})
        )
        if weights is not None:
            load_into(net, weights, name, skip=("fc.",))
        channels = input_spec.channels
        if channels != 3:
            net.conv1 = nn.Conv2d(channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        if dilated and not bottleneck:
            if stride == 8:
                dilate(net.layer3, 2)
                dilate(net.layer4, 4)
            else:
                dilate(net.layer4, 2)
        last = [net.layer4] if dilated else [net.layer4, net.avgpool, nn.Flatten()]
        stages = [
            nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1),
            net.layer2,
            net.layer3,
            nn.Sequential(*last),
        ]
        names = ["conv1-layer1", "layer2", "layer3", "layer4" if dilated else "layer4-avgpool"]
        return Column(stages, input_spec.shape, names)

    return build


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


def local_safetensors(name: str, path: Path) -> PublishedWeights:
    """A converted checkpoint on local disk (the `weights_file` option of ResNet-18)."""
    from safetensors.torch import load_file

    if path.suffix != ".safetensors" or not path.is_file():
        raise InvalidValueError(
            f"{name} weights_file {str(path)!r} must be an existing .safetensors file "
            "(convert a torchvision checkpoint with safetensors.torch.save_file), or use "
            "weights=imagenet to read torchvision's own"
        )
    # the file is there (checked above), so "fetching" it is finding it
    return PublishedWeights(
        name, f"file {path.name}", path, lambda: path, lambda p: load_file(str(p))
    )


def make_weights(name: str):
    def weights(options: dict[str, Any]) -> PublishedWeights | None:
        choice = options.get("weights") or NO_WEIGHTS
        file = options.get("weights_file")
        if file and choice != NO_WEIGHTS:
            raise InvalidValueError(
                f"{name}: give weights={choice} or weights_file={file}, not both"
            )
        if file:
            return local_safetensors(name, Path(file))
        return torchvision_option(name)(options)

    return weights


@hookimpl
def dmt_register_backbones(kinds: Kinds) -> None:
    for name, block in DEPTHS.items():
        depth = name.removeprefix("resnet")
        options: dict[str, Any] = {"weights": NO_WEIGHTS, "dilated": False, "output_stride": 8}
        init_only = ("weights",)
        if name == "resnet18":
            options["weights_file"] = None
            init_only = ("weights", "weights_file")
        kinds.add_backbone(
            BackboneKind(
                name=name,
                description=(
                    f"torchvision ResNet-{depth} ({block} blocks) in 4 stages; weights=imagenet "
                    "from torchvision's cache; dilated=true: spatial features at output_stride "
                    "8 or 16 for pixel-level tasks"
                ),
                build=make_build(name),
                default_options=options,
                init_only_options=init_only,
                weights=make_weights(name),
            )
        )
