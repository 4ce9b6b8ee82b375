"""torchvision's AlexNet split as the cross-stitch paper splits it (Misra et al. 2016, §4):
units after pool1, pool2, pool5, fc6 and fc7.

Stages: conv1+pool1, conv2+pool2, conv3–conv5+pool5, fc6, fc7 (4096 units; torchvision's
adaptive 6×6 pooling before fc6, so any input of at least 64 pixels works). Connections sit
after the first four; a store whose connection fuses into the head adds the fifth (after fc7).
The ImageNet classifier fc8 is never kept.
"""

from __future__ import annotations

from typing import Any

from dmtcore.hooks.kinds import BackboneKind, Kinds
from dmtcore.hooks.specs import hookimpl
from dmtcore.model.backbones.pretrained import NO_WEIGHTS, load_into, torchvision_option


def build(input_spec: Any, options: dict[str, Any], weights: dict[str, Any] | None = None) -> Any:
    from torch import nn
    from torchvision.models import alexnet

    from dmtcore.model.backbones import Column

    net = alexnet(weights=None)
    if weights is not None:
        load_into(net, weights, "alexnet", skip=("classifier.6.",))
    f, c = net.features, net.classifier  # c: drop fc6 relu drop fc7 relu fc8
    if input_spec.channels != 3:
        f[0] = nn.Conv2d(input_spec.channels, 64, kernel_size=11, stride=4, padding=2)
    stages = [
        nn.Sequential(*f[0:3]),
        nn.Sequential(*f[3:6]),
        nn.Sequential(*f[6:13]),
        nn.Sequential(net.avgpool, nn.Flatten(), *c[0:3]),
        nn.Sequential(*c[3:6]),
    ]
    return Column(
        stages, input_spec.shape, ["conv1-pool1", "conv2-pool2", "conv3-pool5", "fc6", "fc7"]
    )


@hookimpl
def dmt_register_backbones(kinds: Kinds) -> None:
    kinds.add_backbone(
        BackboneKind(
            name="alexnet",
            description=(
                "torchvision AlexNet, the cross-stitch column: stages end at pool1, pool2, "
                "pool5, fc6, fc7; weights=imagenet; inputs of 64 px or more"
            ),
            build=build,
            default_options={"weights": NO_WEIGHTS},
            init_only_options=("weights",),
            weights=torchvision_option("alexnet"),
        )
    )
