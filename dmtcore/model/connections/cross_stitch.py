"""`cross-stitch`: cross-stitch units (Misra et al., CVPR 2016, §3–6).

`granularity="channel"` (the default): one unit per channel, out_c = Σ_j a_{j,c} · h_{j,c}, as
for segmentation and surface normals (§5, §6.2). `granularity="layer"`: one unit per layer
activation map, out = Σ_j a_j · h_j, a weight per source, which the paper used for detection
and attributes because units per channel "led to unstable learning for these tasks" (§6). A
store written before the option has none and is per channel. The weights start as a convex
combination, (α_S, α_D) = (0.9, 0.1) with α_D spread evenly over the other sources (§5.1), and
learn at 100× the base learning rate with SGD (the paper's best range is 10²–10³, §5.2). The
default `lr_mult="auto"` takes LR_MULT_BY_OPTIMIZER's value for the training command's optimiser.
Unlike NDDR's, the units keep ×100 under Adam: measured against ×1, ×3 and ×10 on digits and
shapes, ×100 did as well or better (docs/papers.md).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dmtcore.errors import InvalidValueError
from dmtcore.hooks.kinds import AUTO_LR_MULT, ConnectionKind, Kinds, concrete_lr_mult
from dmtcore.hooks.specs import hookimpl
from dmtcore.model.connections import TransferConnection
from dmtcore.model.connections.nddr import diagonal_init

LR_MULT_BY_OPTIMIZER = {"sgd": 100.0, "adam": 100.0}
GRANULARITIES = ("channel", "layer")
DEFAULTS = {"alpha": 0.9, "beta": 0.1, "lr_mult": AUTO_LR_MULT, "granularity": "channel"}


def granularity(options: dict[str, Any]) -> str:
    """The options' unit granularity; a store written before the option is per channel."""
    return str(options.get("granularity", "channel"))


class CrossStitchUnit(TransferConnection):
    """Weights mixing same-position values of the sources: a (sources × channels) matrix per
    channel, or one weight per source per layer (`weights` of shape K)."""

    def __init__(
        self, own: int, num_sources: int, shape: tuple[int, ...], options: dict[str, Any]
    ) -> None:
        super().__init__(
            own, num_sources, concrete_lr_mult(options["lr_mult"], LR_MULT_BY_OPTIMIZER)
        )
        start = diagonal_init(own, num_sources, float(options["alpha"]), float(options["beta"]))
        per_source = torch.tensor(start)
        if granularity(options) == "layer":
            self.weights = nn.Parameter(per_source)
        else:
            self.weights = nn.Parameter(per_source.unsqueeze(1).repeat(1, shape[0]))
        self.spatial_dims = len(shape) - 1

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        stacked = torch.stack(features)  # K × N × C × ...
        channels = self.weights.shape[1] if self.weights.dim() == 2 else 1
        weights = self.weights.view(self.weights.shape[0], 1, channels, *[1] * self.spatial_dims)
        return (weights * stacked).sum(0)

    def drop_source(self, position: int) -> None:
        super().drop_source(position)
        keep = [j for j in range(self.weights.shape[0]) if j != position]
        self.weights = nn.Parameter(self.weights.detach()[keep].clone())

    def relation_weights(self) -> list[float]:
        """Each source's weight: per layer the unit's own, per channel the mean over them."""
        weights = self.weights.detach()
        return (weights.mean(1) if weights.dim() == 2 else weights).tolist()


def build(
    own: int, num_sources: int, shape: tuple[int, ...], options: dict[str, Any]
) -> CrossStitchUnit:
    for key in ("alpha", "beta"):
        if not 0.0 <= float(options[key]) <= 1.0:
            raise InvalidValueError(f"cross-stitch {key} must be in [0, 1], got {options[key]}")
    if concrete_lr_mult(options["lr_mult"], LR_MULT_BY_OPTIMIZER) <= 0:
        raise InvalidValueError(f"cross-stitch lr_mult must be positive, got {options['lr_mult']}")
    if granularity(options) not in GRANULARITIES:
        raise InvalidValueError(
            f"cross-stitch granularity {options['granularity']!r} is unknown; "
            f"valid: {', '.join(GRANULARITIES)}"
        )
    return CrossStitchUnit(own, num_sources, shape, options)


@hookimpl
def dmt_register_connections(kinds: Kinds) -> None:
    kinds.add_connection(
        ConnectionKind(
            name="cross-stitch",
            description="cross-stitch units: linear combination of the sources, per channel "
            "or (granularity=layer) per layer",
            build=build,
            default_options=dict(DEFAULTS),
            lr_mult_by_optimizer=dict(LR_MULT_BY_OPTIMIZER),
        )
    )
