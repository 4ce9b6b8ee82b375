"""`nddr` and `nddr-shortcut`: Neural Discriminative Dimensionality Reduction (Gao et al.,
CVPR 2019, §3).

An NDDR layer concatenates the K sources' features on the channel axis, batch-normalises them,
and projects K·C channels back to C with a 1×1 convolution (weight decay on its weights), then
ReLU as in the authors' code. The diagonal initialisation (§4.1) puts α on the own block's
diagonal and spreads β evenly over the other sources' diagonals, so training starts close to the
single-task network; `init="xavier"` is the paper's alternative. The layer learns at 100× the
base learning rate with SGD (§4.2). Adam's steps are about the learning rate in size whatever
the gradient's scale, so under Adam ×100 moves a weight initialised at 0.9 by up to 0.1 a step
and undoes the diagonal start: the default `lr_mult="auto"` takes LR_MULT_BY_OPTIMIZER's value
for the command's optimiser, ×1 with Adam as measured on digits, shapes and scenes (docs/papers.md).

NDDR-CNN-Shortcut (§3.3) adds, per task, a shortcut: every NDDR output is resized to the last
one's spatial size, all are concatenated, and a 1×1 convolution reduces them to the last one's
width before the final stage. It starts as the identity on the last NDDR output.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dmtcore.errors import InvalidValueError
from dmtcore.hooks.kinds import AUTO_LR_MULT, ConnectionKind, Kinds, concrete_lr_mult
from dmtcore.hooks.specs import hookimpl
from dmtcore.model.connections import ParamGroup, TransferConnection

LR_MULT_BY_OPTIMIZER = {"sgd": 100.0, "adam": 1.0}
DEFAULTS = {
    "init": "diagonal",
    "alpha": 0.9,
    "beta": 0.1,
    "lr_mult": AUTO_LR_MULT,
    "weight_decay": 1e-4,
    "relu": True,
}
INITS = ("diagonal", "xavier")


def _norm(channels: int, spatial: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if spatial else nn.BatchNorm1d(channels)


def _projection(in_channels: int, out_channels: int, spatial: bool) -> nn.Module:
    if spatial:
        return nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
    return nn.Linear(in_channels, out_channels, bias=False)


class NddrLayer(TransferConnection):
    """out = ReLU(W · BN([h_1, …, h_K])), W a 1×1 convolution from K·C to C channels."""

    def __init__(
        self, own: int, num_sources: int, shape: tuple[int, ...], options: dict[str, Any]
    ) -> None:
        super().__init__(
            own, num_sources, concrete_lr_mult(options["lr_mult"], LR_MULT_BY_OPTIMIZER)
        )
        self.channels = shape[0]
        self.spatial = len(shape) == 3
        self.weight_decay = float(options["weight_decay"])
        self.relu = bool(options["relu"])
        self.norm = _norm(num_sources * self.channels, self.spatial)
        self.project = _projection(num_sources * self.channels, self.channels, self.spatial)
        if options["init"] == "xavier":
            nn.init.xavier_uniform_(self.project.weight)
        else:
            self.set_block_weights(
                diagonal_init(own, num_sources, options["alpha"], options["beta"])
            )

    def set_block_weights(self, per_source: list[float]) -> None:
        """Set W to `per_source[j]` times the identity on each source's block, zero elsewhere."""
        c = self.channels
        weight = torch.zeros(c, len(per_source) * c)
        for j, value in enumerate(per_source):
            weight[:, j * c : (j + 1) * c] = value * torch.eye(c)
        with torch.no_grad():
            self.project.weight.copy_(weight.view_as(self.project.weight))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        out = self.project(self.norm(torch.cat(features, dim=1)))
        return F.relu(out) if self.relu else out

    def _blocks(self) -> list[torch.Tensor]:
        weight = self.project.weight.detach().reshape(self.channels, -1)
        return list(weight.split(self.channels, dim=1))

    def drop_source(self, position: int) -> None:
        c = self.channels
        keep = [
            i for i in range(self.num_sources * c) if not position * c <= i < (position + 1) * c
        ]
        super().drop_source(position)
        old_norm, old_weight = self.norm, self.project.weight.detach()
        where = {"device": old_weight.device, "dtype": old_weight.dtype}
        self.norm = _norm(len(keep), self.spatial).to(**where)
        with torch.no_grad():
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(self.norm, name).copy_(getattr(old_norm, name)[keep])
            self.norm.num_batches_tracked.copy_(old_norm.num_batches_tracked)
        self.project = _projection(len(keep), c, self.spatial).to(**where)
        with torch.no_grad():
            self.project.weight.copy_(old_weight[:, keep])
        self.train(self.training)  # the new modules take the layer's mode

    def relation_weights(self) -> list[float]:
        """Frobenius norm of each source's block of W, relative to the own block's."""
        norms = [float(b.norm()) for b in self._blocks()]
        own = norms[self.own] or 1.0
        return [n / own for n in norms]

    def param_groups(self) -> list[ParamGroup]:
        return [
            ParamGroup([self.project.weight], self.lr_mult, self.weight_decay),
            ParamGroup(list(self.norm.parameters()), self.lr_mult),
        ]


def diagonal_init(own: int, num_sources: int, alpha: float, beta: float) -> list[float]:
    """α on the own source, β spread evenly over the others (all α + β with no other source)."""
    if num_sources == 1:
        return [alpha + beta]
    return [alpha if j == own else beta / (num_sources - 1) for j in range(num_sources)]


class NddrShortcut(nn.Module):
    """Resize every NDDR output of a task to the last one's size, concatenate, 1×1 conv back
    to the last one's width (NDDR-CNN-Shortcut, §3.3)."""

    def __init__(self, shapes: list[tuple[int, ...]], lr_mult: float, weight_decay: float) -> None:
        super().__init__()
        if any(len(s) != 3 for s in shapes):
            raise InvalidValueError(
                "nddr-shortcut needs feature maps (C×H×W) at every stage boundary"
            )
        self.size = tuple(shapes[-1][1:])
        self.lr_mult, self.weight_decay = lr_mult, weight_decay
        widths = [s[0] for s in shapes]
        self.project = nn.Conv2d(sum(widths), widths[-1], kernel_size=1, bias=False)
        weight = torch.zeros(widths[-1], sum(widths))
        weight[:, sum(widths[:-1]) :] = torch.eye(widths[-1])  # start as the last NDDR output
        with torch.no_grad():
            self.project.weight.copy_(weight.view_as(self.project.weight))

    def forward(self, outputs: list[torch.Tensor]) -> torch.Tensor:
        resized = [
            h if h.shape[-2:] == self.size else F.interpolate(h, size=self.size, mode="bilinear")
            for h in outputs
        ]
        return self.project(torch.cat(resized, dim=1))

    def param_groups(self) -> list[ParamGroup]:
        return [ParamGroup([self.project.weight], self.lr_mult, self.weight_decay)]


def _check(options: dict[str, Any]) -> None:
    if options["init"] not in INITS:
        raise InvalidValueError(
            f"nddr init {options['init']!r} is unknown; valid: {', '.join(INITS)}"
        )
    for key in ("alpha", "beta"):
        if not 0.0 <= float(options[key]) <= 1.0:
            raise InvalidValueError(f"nddr {key} must be in [0, 1], got {options[key]}")
    lr_mult = concrete_lr_mult(options["lr_mult"], LR_MULT_BY_OPTIMIZER)
    if float(options["weight_decay"]) < 0 or lr_mult <= 0:
        raise InvalidValueError("nddr weight_decay must be >= 0 and lr_mult > 0")


def build(own: int, num_sources: int, shape: tuple[int, ...], options: dict[str, Any]) -> NddrLayer:
    _check(options)
    return NddrLayer(own, num_sources, shape, options)


def build_shortcut(shapes: list[tuple[int, ...]], options: dict[str, Any]) -> NddrShortcut:
    lr_mult = concrete_lr_mult(options["lr_mult"], LR_MULT_BY_OPTIMIZER)
    return NddrShortcut(shapes, lr_mult, float(options["weight_decay"]))


@hookimpl
def dmt_register_connections(kinds: Kinds) -> None:
    kinds.add_connection(
        ConnectionKind(
            name="nddr",
            description="NDDR layer: concat sources, BatchNorm, 1x1 conv K·C→C, ReLU",
            build=build,
            default_options=dict(DEFAULTS),
            lr_mult_by_optimizer=dict(LR_MULT_BY_OPTIMIZER),
        )
    )
    kinds.add_connection(
        ConnectionKind(
            name="nddr-shortcut",
            description="NDDR at every stage plus shortcuts from all stages into the last",
            build=build,
            default_options=dict(DEFAULTS),
            lr_mult_by_optimizer=dict(LR_MULT_BY_OPTIMIZER),
            build_shortcut=build_shortcut,
        )
    )
