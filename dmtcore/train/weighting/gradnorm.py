"""`gradnorm`: Gradient Normalization (Chen, Badrinarayanan, Lee and Rabinovich, "GradNorm:
Gradient Normalization for Adaptive Loss Balancing in Deep Multitask Networks", ICML 2018).

Each task t has a learned weight w_t, kept summing to K as w = K softmax(v) (LibMTL's form of
the paper's renormalisation). Every step, over the shared parameters W:

- G_t = ‖w_t ∇_W L_t‖ and Ḡ its mean over the tasks;
- r_t = L̃_t / mean(L̃), with L̃_t = L_t / L_t(0) and L_t(0) the task's loss at its first step
  (the paper's "initial loss");
- v learns from L_grad = Σ_t |G_t − [Ḡ r_t^α]| (the bracket held constant, eq. 2), a task
  that trains slower (larger r_t) being pulled towards a larger gradient;
- the shared parameters step along Σ_t w_t ∇_W L_t with the weights as they were before
  this update.

α = 1.5 (the paper's value for NYUv2). Costs one backward pass per task. The gradient norms
are taken over every shared parameter, as LibMTL does (the paper allows the last shared
layer only, to save time).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dmtcore.hooks.kinds import Kinds, WeightingKind
from dmtcore.hooks.specs import hookimpl
from dmtcore.train.weighting import Weighting


class GradNorm(Weighting):
    uses_gradients = True

    def __init__(self, tasks: list[str], options: dict[str, Any], seed: int = 0) -> None:
        super().__init__(tasks, options, seed)
        self.alpha = float(options["alpha"])
        self.logits = nn.Parameter(torch.zeros(len(tasks)))
        self.initial: dict[str, float] = {}

    def combine(self, losses: dict[str, torch.Tensor], grads: torch.Tensor) -> torch.Tensor:
        names = list(losses)
        index = torch.tensor([self.index(n) for n in names])
        weights = len(self.tasks) * torch.softmax(self.logits, dim=0)[index]
        for name in names:
            self.initial.setdefault(name, float(losses[name].detach()))
        norms = weights * grads.norm(dim=1)
        ratios = torch.tensor(
            [float(losses[n].detach()) / self.initial[n] for n in names], dtype=grads.dtype
        )
        relative = ratios / ratios.mean()
        target = (norms.mean() * relative**self.alpha).detach()
        (norms - target).abs().sum().backward()
        used = weights.detach()
        self.last = {**self.last, **dict(zip(names, used.tolist(), strict=True))}
        return used.to(grads) @ grads


@hookimpl
def dmt_register_weightings(kinds: Kinds) -> None:
    kinds.add_weighting(
        WeightingKind(
            name="gradnorm",
            description="learned weights that equalise the tasks' gradient norms by training rate",
            paper="Chen, Badrinarayanan, Lee and Rabinovich, ICML 2018",
            build=GradNorm,
            default_options={"alpha": 1.5},
        )
    )
