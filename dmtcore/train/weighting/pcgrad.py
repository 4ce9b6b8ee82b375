"""`pcgrad`: Projecting Conflicting Gradients (Yu, Kumar, Gupta, Levine, Hausman and Finn,
"Gradient Surgery for Multi-Task Learning", NeurIPS 2020, Algorithm 1).

For each task i, its gradient g_i on the shared parameters is projected, one other task j at a
time in a random order, onto the normal plane of g_j wherever the two conflict (g_i · g_j < 0):
g_i ← g_i − (g_i · g_j) / ‖g_j‖² g_j. The step is the sum of the projected gradients. The
order is drawn from a generator seeded by the run's --seed, so a run repeats exactly. The
weight recorded per task is the coefficient of its original gradient in that sum (1 where
nothing conflicts), as LibMTL reports it.
"""

from __future__ import annotations

from typing import Any

import torch

from dmtcore.hooks.kinds import Kinds, WeightingKind
from dmtcore.hooks.specs import hookimpl
from dmtcore.train.weighting import Weighting

TINY = 1e-12  # a zero gradient cannot conflict; this only keeps the division finite


class PCGrad(Weighting):
    uses_gradients = True

    def __init__(self, tasks: list[str], options: dict[str, Any], seed: int = 0) -> None:
        super().__init__(tasks, options, seed)
        self.generator = torch.Generator().manual_seed(seed)

    def combine(self, losses: dict[str, torch.Tensor], grads: torch.Tensor) -> torch.Tensor:
        names = list(losses)
        count = len(names)
        projected = grads.clone()
        coefficients = torch.eye(count, dtype=torch.float64)  # row i: g_i' in terms of the g_j
        squared = (grads * grads).sum(dim=1)
        for i in range(count):
            others = [j for j in range(count) if j != i]
            for k in torch.randperm(len(others), generator=self.generator).tolist():
                j = others[k]
                dot = projected[i] @ grads[j]
                if dot < 0:
                    scale = dot / (squared[j] + TINY)
                    projected[i] -= scale * grads[j]
                    coefficients[i, j] -= float(scale)
        self.last = {**self.last, **dict(zip(names, coefficients.sum(0).tolist(), strict=True))}
        return projected.sum(0)


@hookimpl
def dmt_register_weightings(kinds: Kinds) -> None:
    kinds.add_weighting(
        WeightingKind(
            name="pcgrad",
            description="gradient surgery: project away the conflicting part of each gradient",
            paper="Yu et al., NeurIPS 2020",
            build=PCGrad,
        )
    )
