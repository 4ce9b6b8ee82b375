"""`cross-stitch`: cross-stitch units (Misra et al., CVPR 2016, §3–5).

One unit per channel: out_c = Σ_j a_{j,c} · h_{j,c}. The weights start as a convex
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
DEFAULTS = {"alpha": 0.9, "beta": 0.1, "lr_mult": AUTO_LR_MULT}


class CrossStitchUnit(TransferConnection):
    """A (sources × channels) matrix of weights mixing same-position channels."""

    def __init__(
        self, own: int, num_sources: int, shape: tuple[int, ...], options: dict[str, Any]
    ) -> None:
        super().__init__(
            own, num_sources, concrete_lr_mult(options["lr_mult"], LR_MULT_BY_OPTIMIZER)
        )
        start = diagonal_init(own, num_sources, float(options["alpha"]), float(options["beta"]))
        self.weights = nn.Parameter(torch.tensor(start).unsqueeze(1).repeat(1, shape[0]))
        self.spatial_dims = len(shape) - 1

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        stacked = torch.stack(features)  # K × N × C × ...
        weights = self.weights.view(*self.weights.shape[:1], 1, -1, *([1] * self.spatial_dims))
        return (weights * stacked).sum(0)

    def drop_source(self, position: int) -> None:
        super().drop_source(position)
        keep = [j for j in range(self.weights.shape[0]) if j != position]
        self.weights = nn.Parameter(self.weights.detach()[keep].clone())

    def relation_weights(self) -> list[float]:
        """The mean weight of each source over the channels."""
        return self.weights.detach().mean(1).tolist()


def build(
    own: int, num_sources: int, shape: tuple[int, ...], options: dict[str, Any]
) -> CrossStitchUnit:
    for key in ("alpha", "beta"):
        if not 0.0 <= float(options[key]) <= 1.0:
            raise InvalidValueError(f"cross-stitch {key} must be in [0, 1], got {options[key]}")
    if concrete_lr_mult(options["lr_mult"], LR_MULT_BY_OPTIMIZER) <= 0:
        raise InvalidValueError(f"cross-stitch lr_mult must be positive, got {options['lr_mult']}")
    return CrossStitchUnit(own, num_sources, shape, options)


@hookimpl
def dmt_register_connections(kinds: Kinds) -> None:
    kinds.add_connection(
        ConnectionKind(
            name="cross-stitch",
            description="cross-stitch units: per-channel linear combination of the sources",
            build=build,
            default_options=dict(DEFAULTS),
            lr_mult_by_optimizer=dict(LR_MULT_BY_OPTIMIZER),
        )
    )
