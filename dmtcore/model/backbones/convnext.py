"""torchvision's ConvNeXt-Tiny in its four stages (each with the downsampling layer before
it: ÷4, ÷8, ÷16, ÷32 with 96, 192, 384 and 768 channels), ending in global pooling and the
classifier's LayerNorm (its fc is not kept). `spatial=true` keeps the last map (stride 32)."""

from __future__ import annotations

from typing import Any

from dmtcore.hooks.kinds import BackboneKind, Kinds
from dmtcore.hooks.specs import hookimpl
from dmtcore.model.backbones.pretrained import NO_WEIGHTS, torchvision_option
from dmtcore.model.backbones.sequential import cut_column


def build(input_spec: Any, options: dict[str, Any], weights: dict[str, Any] | None = None) -> Any:
    from torchvision.models import convnext_tiny

    net = convnext_tiny(weights=None)
    names = ["stem-stage1", "stage2", "stage3", "stage4"]
    norm = [] if options.get("spatial") else [net.classifier[0]]
    return cut_column(
        "convnext_tiny",
        input_spec,
        options,
        net,
        weights,
        (2, 4, 6),
        names,
        tail=norm,
        skip=("classifier.2.",),
    )


@hookimpl
def dmt_register_backbones(kinds: Kinds) -> None:
    kinds.add_backbone(
        BackboneKind(
            name="convnext_tiny",
            description="torchvision ConvNeXt-Tiny in its 4 stages; weights=imagenet",
            build=build,
            default_options={"weights": NO_WEIGHTS, "spatial": False},
            init_only_options=("weights",),
            weights=torchvision_option("convnext_tiny"),
        )
    )
