"""`dwa`: Dynamic Weight Average (Liu, Johns and Davison, "End-to-End Multi-Task Learning with
Attention", CVPR 2019, eq. 5).

The weights change once per epoch, from how fast each task's loss fell over the two epochs
before: with r_t = L_t(e-1) / L_t(e-2) (mean training losses of whole epochs),
w_t(e) = K exp(r_t / T) / Σ_i exp(r_i / T), so a task whose loss falls slowly gains weight and
the weights sum to K. The first two epochs weigh every task 1. T (the temperature) is 2, as
in the paper; losses are weighed inside every step, one backward pass.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from dmtcore.errors import InvalidValueError
from dmtcore.hooks.kinds import Kinds, WeightingKind
from dmtcore.hooks.specs import hookimpl
from dmtcore.train.weighting import Weighting


class DynamicWeightAverage(Weighting):
    def __init__(self, tasks: list[str], options: dict[str, Any], seed: int = 0) -> None:
        super().__init__(tasks, options, seed)
        self.temperature = float(options["temperature"])
        if not self.temperature > 0:
            raise InvalidValueError(
                f"weighting 'dwa' option 'temperature' must be positive, got {self.temperature!r}"
            )
        self.history: list[dict[str, float]] = []  # mean losses of the epochs so far

    def loss(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        total = None
        for name, loss in losses.items():
            term = self.last[name] * loss
            total = term if total is None else total + term
        assert total is not None
        return total

    def end_epoch(self, epoch: int, mean_losses: dict[str, float]) -> None:
        self.history.append(dict(mean_losses))
        if len(self.history) < 2:
            return
        before, last = self.history[-2], self.history[-1]
        if not all(before.get(t, 0) > 0 and t in last for t in self.tasks):
            return  # a task without a loss in both epochs: keep the weights as they are
        rates = [last[t] / before[t] / self.temperature for t in self.tasks]
        top = max(rates)
        exps = [math.exp(r - top) for r in rates]
        self.last = {
            t: len(self.tasks) * e / sum(exps) for t, e in zip(self.tasks, exps, strict=True)
        }


@hookimpl
def dmt_register_weightings(kinds: Kinds) -> None:
    kinds.add_weighting(
        WeightingKind(
            name="dwa",
            description="weights from each task's rate of loss descent over the last two epochs",
            paper="Liu, Johns and Davison, CVPR 2019",
            build=DynamicWeightAverage,
            default_options={"temperature": 2.0},
        )
    )
