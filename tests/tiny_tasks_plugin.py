"""Two image-level tasks on 40 generated 3×16×16 images, small enough to grow a store of any
backbone in seconds (load it with `-p tests/tiny_tasks_plugin.py`): `tiny.left` (is the bright
square in the left half?) and `tiny.top` (in the top half?)."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from dmtcore import TaskData, TaskSpec, hookimpl

SIZE, SIDE = 16, 6


def make(seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, SIZE, SIZE, generator=g) * 0.2
    corners = torch.randint(0, SIZE - SIDE + 1, (n, 2), generator=g)
    for i, (y, x) in enumerate(corners.tolist()):
        images[i, :, y : y + SIDE, x : x + SIDE] += 0.7
    half = (SIZE - SIDE) // 2
    return images.clamp(0, 1), (corners[:, 1] < half).long(), (corners[:, 0] < half).long()


def factory(which: int):
    def datasets(request):
        train, val = make(1, 24), make(2, 16)
        return TaskData(
            TensorDataset(train[0], train[which]),
            TensorDataset(val[0], val[which]),
            deterministic=True,
        )

    return datasets


@hookimpl
def dmt_register_tasks(kinds):
    shape = (3, SIZE, SIZE)
    kinds.add_task(TaskSpec("tiny.left", "square in the left half", shape, "binary", factory(1)))
    kinds.add_task(TaskSpec("tiny.top", "square in the top half", shape, "binary", factory(2)))
