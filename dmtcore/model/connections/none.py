"""`none`: no transfer at all, every task reads only its own column (the single-task baseline)."""

from __future__ import annotations

from typing import Any

import torch

from dmtcore.hooks.kinds import ConnectionKind, Kinds
from dmtcore.hooks.specs import hookimpl
from dmtcore.model.connections import TransferConnection


class OwnFeatures(TransferConnection):
    """out = h_i."""

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return features[self.own]


def build(
    own: int, num_sources: int, feature_shape: tuple[int, ...], options: dict[str, Any]
) -> OwnFeatures:
    return OwnFeatures(own, num_sources)


@hookimpl
def dmt_register_connections(kinds: Kinds) -> None:
    kinds.add_connection(
        ConnectionKind(
            name="none",
            description="no transfer: each task uses its own column only (single-task baseline)",
            build=build,
            isolated=True,
        )
    )
