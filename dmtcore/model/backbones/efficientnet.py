"""torchvision's EfficientNet-B0 in five stages, one per resolution (÷2, ÷4, ÷8, ÷16, ÷32:
16, 24, 40, 112 and 1280 channels), ending in global pooling (the classifier is not kept).
`spatial=true` keeps the last map (stride 32)."""

from __future__ import annotations

from typing import Any

from dmtcore.hooks.kinds import BackboneKind, Kinds
from dmtcore.hooks.specs import hookimpl
from dmtcore.model.backbones.pretrained import NO_WEIGHTS, torchvision_option
from dmtcore.model.backbones.sequential import cut_column


def build(input_spec: Any, options: dict[str, Any], weights: dict[str, Any] | None = None) -> Any:
    from torchvision.models import efficientnet_b0

    names = ["features0-1", "features2", "features3", "features4-5", "features6-8"]
    net = efficientnet_b0(weights=None)
    return cut_column("efficientnet_b0", input_spec, options, net, weights, (2, 3, 4, 6), names)


@hookimpl
def dmt_register_backbones(kinds: Kinds) -> None:
    kinds.add_backbone(
        BackboneKind(
            name="efficientnet_b0",
            description="torchvision EfficientNet-B0, a stage per resolution (5); weights=imagenet",
            build=build,
            default_options={"weights": NO_WEIGHTS, "spatial": False},
            init_only_options=("weights",),
            weights=torchvision_option("efficientnet_b0"),
        )
    )
