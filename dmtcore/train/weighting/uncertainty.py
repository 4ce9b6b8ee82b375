"""`uncertainty`: homoscedastic uncertainty weighting (Kendall, Gal and Cipolla, "Multi-Task
Learning Using Uncertainty to Weigh Losses for Scene Geometry and Semantics", CVPR 2018).

Each task t has a learned log variance s_t = log σ_t²; the step minimises
Σ_t L_t / (2 exp(s_t)) + s_t / 2, so a task whose loss stays large is weighed down and the
s_t / 2 term keeps the weights from collapsing to 0. This is the paper's regression form
(its eq. 7) for every task, as LibMTL's UW does; s_t starts at `init` (LibMTL's -0.5, a
weight of 0.82) and learns with the model at the base learning rate. The weight recorded
is 1 / (2 exp(s_t)).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dmtcore.hooks.kinds import Kinds, WeightingKind
from dmtcore.hooks.specs import hookimpl
from dmtcore.train.weighting import Weighting


class Uncertainty(Weighting):
    def __init__(self, tasks: list[str], options: dict[str, Any], seed: int = 0) -> None:
        super().__init__(tasks, options, seed)
        self.log_variance = nn.Parameter(torch.full((len(tasks),), float(options["init"])))
        self.last = self._weights()

    def _weights(self) -> dict[str, float]:
        values = (0.5 * torch.exp(-self.log_variance.detach())).tolist()
        return dict(zip(self.tasks, values, strict=True))

    def loss(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        self.last = self._weights()
        total = None
        for name, loss in losses.items():
            s = self.log_variance[self.index(name)]
            term = loss / (2 * torch.exp(s)) + s / 2
            total = term if total is None else total + term
        assert total is not None
        return total


@hookimpl
def dmt_register_weightings(kinds: Kinds) -> None:
    kinds.add_weighting(
        WeightingKind(
            name="uncertainty",
            description="learned homoscedastic uncertainty per task: L/(2σ²) + log σ",
            paper="Kendall, Gal and Cipolla, CVPR 2018",
            build=Uncertainty,
            default_options={"init": -0.5},
        )
    )
