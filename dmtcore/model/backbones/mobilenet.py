"""torchvision's MobileNetV3-Large in five stages, one per resolution (÷2, ÷4, ÷8, ÷16,
÷32: 16, 24, 40, 112 and 960 channels), ending in global pooling (the ImageNet classifier's
1280-unit layer and fc are not kept). `spatial=true` keeps the last map (stride 32)."""

from __future__ import annotations

from typing import Any

from dmtcore.hooks.kinds import BackboneKind, Kinds
from dmtcore.hooks.specs import hookimpl
from dmtcore.model.backbones.pretrained import NO_WEIGHTS, torchvision_option
from dmtcore.model.backbones.sequential import cut_column


def build(input_spec: Any, options: dict[str, Any], weights: dict[str, Any] | None = None) -> Any:
    from torchvision.models import mobilenet_v3_large

    names = ["features0-1", "features2-3", "features4-6", "features7-12", "features13-16"]
    net = mobilenet_v3_large(weights=None)
    return cut_column("mobilenet_v3_large", input_spec, options, net, weights, (2, 4, 7, 13), names)


@hookimpl
def dmt_register_backbones(kinds: Kinds) -> None:
    kinds.add_backbone(
        BackboneKind(
            name="mobilenet_v3_large",
            description="torchvision MobileNetV3-Large, a stage per resolution (5); weights=imagenet",
            build=build,
            default_options={"weights": NO_WEIGHTS, "spatial": False},
            init_only_options=("weights",),
            weights=torchvision_option("mobilenet_v3_large"),
        )
    )
