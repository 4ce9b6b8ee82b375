"""`equal`: the task losses summed, each with weight 1 (EW in LibMTL; dmt's default)."""

from __future__ import annotations

import functools
import operator

import torch

from dmtcore.hooks.kinds import Kinds, WeightingKind
from dmtcore.hooks.specs import hookimpl
from dmtcore.train.weighting import Weighting


class Equal(Weighting):
    def loss(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        # The same sum, in the same order, as before weightings existed: runs stay bit-identical.
        return functools.reduce(operator.add, losses.values())


@hookimpl
def dmt_register_weightings(kinds: Kinds) -> None:
    kinds.add_weighting(
        WeightingKind(
            name="equal",
            description="the losses summed with weight 1 each",
            paper="",
            build=Equal,
        )
    )
