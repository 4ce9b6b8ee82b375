"""torchvision's VGG-16 (and VGG-16-BN) split after every pooling layer, as NDDR-CNN does.

Stages: conv1_x+pool1, conv2_x+pool2, conv3_x+pool3, conv4_x+pool4, conv5_x+pool5, then fc6
and fc7 (4096 units each, after torchvision's adaptive 7×7 pooling, so any input of at least
32 pixels works); the ImageNet classifier fc8 is never kept. Connections sit after each pool
and after fc6 (NDDR-CNN §4.1 puts its layers after every pooling layer).

`spatial=true` is the Deeplab-LargeFOV form for pixel-level tasks (NDDR-CNN §4, cross-stitch
§6.2): pool4 and pool5 keep the resolution (3×3, stride 1), conv5 is atrous (rate 2) and there
are no fully connected layers, so the last stage outputs a 512×H/8×W/8 map.
"""

from __future__ import annotations

from typing import Any

from dmtcore.hooks.kinds import BackboneKind, Kinds
from dmtcore.hooks.specs import hookimpl
from dmtcore.model.backbones import check_flag
from dmtcore.model.backbones.pretrained import NO_WEIGHTS, load_into, torchvision_option

MODELS = {"vgg16": "VGG-16", "vgg16_bn": "VGG-16 with BatchNorm"}


def split_at_pools(features: Any) -> list[list[Any]]:
    from torch import nn

    blocks: list[list[Any]] = [[]]
    for layer in features:
        blocks[-1].append(layer)
        if isinstance(layer, nn.MaxPool2d):
            blocks.append([])
    return [b for b in blocks if b]


def make_build(name: str):
    def build(
        input_spec: Any, options: dict[str, Any], weights: dict[str, Any] | None = None
    ) -> Any:
        import torchvision.models as models
        from torch import nn

        from dmtcore.model.backbones import Column

        spatial = check_flag(name, options, "spatial")
        net = getattr(models, name)(weights=None)
        if weights is not None:
            load_into(net, weights, name, skip=("classifier.6.",))
        if input_spec.channels != 3:
            first = net.features[0]
            net.features[0] = nn.Conv2d(input_spec.channels, first.out_channels, 3, padding=1)
        blocks = split_at_pools(net.features)
        names = [f"conv{i + 1}-pool{i + 1}" for i in range(5)]
        if spatial:
            for block in blocks[3:]:
                block[-1] = nn.MaxPool2d(3, stride=1, padding=1)
            for layer in blocks[4]:
                if isinstance(layer, nn.Conv2d):
                    layer.dilation, layer.padding = (2, 2), (2, 2)
            stages = [nn.Sequential(*b) for b in blocks]
            return Column(stages, input_spec.shape, names)
        classifier = net.classifier  # fc6 relu drop fc7 relu drop fc8
        stages = [nn.Sequential(*b) for b in blocks]
        stages.append(nn.Sequential(net.avgpool, nn.Flatten(), *classifier[:3]))
        stages.append(nn.Sequential(*classifier[3:6]))
        return Column(stages, input_spec.shape, [*names, "fc6", "fc7"])

    return build


@hookimpl
def dmt_register_backbones(kinds: Kinds) -> None:
    for name, title in MODELS.items():
        kinds.add_backbone(
            BackboneKind(
                name=name,
                description=(
                    f"torchvision {title}: a stage after each of 5 pools, then fc6, fc7; "
                    "weights=imagenet; spatial=true: Deeplab-LargeFOV at stride 8"
                ),
                build=make_build(name),
                default_options={"weights": NO_WEIGHTS, "spatial": False},
                init_only_options=("weights",),
                weights=torchvision_option(name),
            )
        )
