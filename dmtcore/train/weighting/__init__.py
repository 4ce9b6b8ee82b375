"""Loss weighting and gradient methods: how a jointly trained group turns its tasks' losses
into one optimiser step.

A method is a `Weighting` made for the group's tasks by its kind (`WeightingKind`, registered
through `dmt_register_weightings` like connections and backbones). There are two sorts:

- **loss methods** (`uses_gradients = False`: equal, uncertainty, DWA) return one scalar from
  the task losses, `loss(losses)`, and that is backpropagated once;
- **gradient methods** (`uses_gradients = True`: GradNorm, PCGrad, Aligned-MTL) see every
  task's gradient on the shared parameters, `combine(losses, grads)`, and return the gradient
  the step takes there. `backward` computes those gradients: one backward pass per task.

Which parameters are shared is read from the graph, not from names: a parameter that two or
more of the step's task losses reach (a column another task reads through its connections,
the trunk of hard sharing). A parameter only one task reaches (its head, the top stage of its
column) takes that task's own gradient, as LibMTL gives its decoders theirs. Under a loss
method every parameter takes the gradient of the combined loss.

`weights()` is what the last step gave each task (for gradient methods: the coefficient of the
task's gradient in the step), averaged per epoch into the run's record and MLflow.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from dmtcore.errors import InvalidValueError

DEFAULT_WEIGHTING = "equal"


class Weighting(nn.Module):
    """One method over a fixed list of tasks. Subclasses implement `loss` (loss methods) or
    `combine` (gradient methods, with `uses_gradients = True`); `end_epoch` sees each
    epoch's mean task losses (DWA's weights come from them). Parameters a method learns (the
    uncertainty terms, GradNorm's weights) are `nn.Parameter`s of the module: the training
    command's optimiser learns them beside the model, at its base learning rate."""

    uses_gradients: ClassVar[bool] = False

    def __init__(self, tasks: Sequence[str], options: dict[str, Any], seed: int = 0) -> None:
        super().__init__()
        if len(set(tasks)) != len(tasks) or not tasks:
            raise ValueError(f"a weighting needs one or more distinct tasks, got {list(tasks)}")
        self.tasks = list(tasks)
        self.options = dict(options)
        self.seed = seed
        self.name = type(self).__name__  # the registered name, once `make_weighting` made it
        self.last: dict[str, float] = dict.fromkeys(self.tasks, 1.0)

    def index(self, name: str) -> int:
        return self.tasks.index(name)

    def loss(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        """The scalar to backpropagate (loss methods)."""
        raise NotImplementedError(f"{type(self).__name__} is a gradient method: use combine")

    def combine(self, losses: dict[str, torch.Tensor], grads: torch.Tensor) -> torch.Tensor:
        """The shared parameters' gradient for the step (gradient methods): `grads` is
        K × P, one row per task of `losses` in its order, flattened over the shared
        parameters."""
        raise NotImplementedError(f"{type(self).__name__} is a loss method: use loss")

    def end_epoch(self, epoch: int, mean_losses: dict[str, float]) -> None:
        """Called after every epoch with each task's mean training loss in it."""

    def weights(self) -> dict[str, float]:
        """Each task's weight in the last step (1.0 each before the first)."""
        return dict(self.last)


def backward(
    weighting: Weighting, losses: dict[str, torch.Tensor], params: Sequence[nn.Parameter]
) -> None:
    """Set `.grad` of `params` (and of the weighting's own parameters) for one step; the
    gradients must have been zeroed (set to None) before."""
    if not weighting.uses_gradients:
        weighting.loss(losses).backward()
        return
    if len(losses) == 1:  # a round in which the other tasks' data ran out: nothing to balance
        ((name, loss),) = losses.items()
        weighting.last = {**weighting.last, name: 1.0}
        loss.backward()
        return
    names = list(losses)
    params = list(params)
    per_task = [
        torch.autograd.grad(
            losses[name], params, retain_graph=i < len(names) - 1, allow_unused=True
        )
        for i, name in enumerate(names)
    ]
    shared = []
    for j, param in enumerate(params):
        reached = [grads[j] for grads in per_task if grads[j] is not None]
        if len(reached) >= 2:
            shared.append(j)
        elif reached:  # one task's own parameter: its gradient alone
            param.grad = reached[0].clone()

    def flat(grads: tuple[torch.Tensor | None, ...]) -> torch.Tensor:
        """A task's gradient over the shared parameters, as one vector (zeros where unused)."""
        pieces = [grads[j] if grads[j] is not None else torch.zeros_like(params[j]) for j in shared]
        return (
            torch.cat([piece.reshape(-1) for piece in pieces]) if pieces else params[0].new_zeros(0)
        )

    combined = weighting.combine(losses, torch.stack([flat(grads) for grads in per_task]))
    sizes = [params[j].numel() for j in shared]
    for j, piece in zip(shared, combined.split(sizes), strict=True):
        params[j].grad = piece.view_as(params[j]).clone()


def make_weighting(
    kinds: Any, name: str, options: dict[str, Any], tasks: Sequence[str], seed: int
) -> Weighting:
    """The method `name` for `tasks` (its options resolved and checked by its kind)."""
    kind = kinds.weighting(name)
    resolved = kind.resolve_options(options)
    made = kind.build(list(tasks), resolved, seed)
    if not isinstance(made, Weighting):
        raise InvalidValueError(
            f"weighting {name!r} (plugin {kinds.owner('weighting', name)!r}) built "
            f"{type(made).__name__}, not a dmtcore Weighting"
        )
    made.name = name
    return made
