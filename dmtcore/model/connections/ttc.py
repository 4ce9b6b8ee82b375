"""`ttc`: the task transfer connection of the DMT paper (Fang et al. 2017, §3, eq. 7–8).

    out = BN(h_i + Σ_{j≠i} α_ij · h_j),   α_ij = sigmoid(β_ij),   α_ii = 1 (fixed)

β starts where α is small so that a task's own signal dominates, and learns at a higher
learning rate (`lr_mult`) because the sigmoid damps its gradient.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from dmtcore.errors import InvalidValueError
from dmtcore.hooks.kinds import ConnectionKind, Kinds
from dmtcore.hooks.specs import hookimpl
from dmtcore.model.connections import SourceList, TransferConnection, feature_norm

DEFAULTS = {"init_alpha": 0.1, "lr_mult": 10.0}


class TaskTransferConnection(TransferConnection):
    """One β per other source; the own source enters with weight 1."""

    def __init__(
        self,
        own: int,
        num_sources: int,
        feature_shape: tuple[int, ...],
        init_alpha: float,
        lr_mult: float,
    ) -> None:
        super().__init__(own, num_sources, lr_mult)
        if not 0.0 < init_alpha < 1.0:
            raise InvalidValueError(f"ttc init_alpha must be in (0, 1), got {init_alpha}")
        if not lr_mult > 0:
            raise InvalidValueError(f"ttc lr_mult must be positive, got {lr_mult}")
        beta = math.log(init_alpha / (1.0 - init_alpha))
        self.beta = nn.Parameter(torch.full((num_sources - 1,), beta))
        self.norm = feature_norm(feature_shape)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        out = features[self.own]
        others = [h for i, h in enumerate(features) if i != self.own]
        if not others:
            return self.norm(out)
        alphas = torch.sigmoid(self.beta)
        given = isinstance(features, SourceList)  # stacked already: the feature cache's
        validating = given and not self.training
        if validating or (len(others) > 1 and self.beta.requires_grad and torch.is_grad_enabled()):
            # While this connection trains: one contraction over the stacked sources, forward
            # and backward, instead of a multiply-add and a reduction for β's gradient per
            # source; on small maps these per-source operations were 10-25% of a step (k = 8).
            # Evaluation keeps the sum below, so stored tasks give the same numbers as ever,
            # and so does BatchNorm recalibration (train mode, no gradients); the validation
            # of a task in training, which reads cached sources, contracts (float rounding).
            stacked = features.others if given else torch.stack(others)
            return self.norm(out + torch.tensordot(alphas, stacked, dims=1))
        for alpha, h in zip(alphas, others, strict=True):
            out = out + alpha * h
        return self.norm(out)

    def drop_source(self, position: int) -> None:
        other_index = position if position < self.own else position - 1
        super().drop_source(position)
        keep = [i for i in range(self.beta.numel()) if i != other_index]
        self.beta = nn.Parameter(self.beta.detach()[keep].clone())

    def relation_weights(self) -> list[float]:
        alphas = torch.sigmoid(self.beta.detach()).tolist()
        alphas.insert(self.own, 1.0)
        return alphas


def build(
    own: int, num_sources: int, feature_shape: tuple[int, ...], options: dict[str, Any]
) -> TaskTransferConnection:
    return TaskTransferConnection(
        own, num_sources, feature_shape, float(options["init_alpha"]), float(options["lr_mult"])
    )


def paper_head_fusion(backbone: str, backbone_options: dict[str, Any]) -> bool:
    """DMT fuses its FC-360 features into every classifier (Table 6, "layer 6 to layer 7"):
    on by default for the paper's column, `dmt-cnn` with its FC layer. Its `spatial` form
    (no FC, maps for pixel-level heads) is not the paper's column, and neither is any other."""
    return backbone == "dmt-cnn" and not backbone_options.get("spatial", False)


@hookimpl
def dmt_register_connections(kinds: Kinds) -> None:
    kinds.add_connection(
        ConnectionKind(
            name="ttc",
            description="DMT task transfer connection: h_i + Σ sigmoid(β_ij)·h_j, then BatchNorm",
            build=build,
            default_options=dict(DEFAULTS),
            head_fusion_default=paper_head_fusion,
        )
    )
