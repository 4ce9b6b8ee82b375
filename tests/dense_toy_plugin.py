"""A throwaway pixel-level task plugin for the tests (load it with `-p tests/dense_toy_plugin.py`).

3×16×16 images of dim noise with one bright 8×8 square. Tasks on the same images:
`toyd.seg` (2 classes: the square is class 1; the top row is unlabelled, -1), `toyd.depth`
(2 − mask: the square is nearer; the top row has no ground truth, 0), `toyd.normals` (the
square tilts right, the background faces the camera; the top row is all-zero) and the
image-level `toyd.left` (is the square in the left half?).

`DENSE_TOY_PROBLEM` (read when the data is requested) breaks the labels on purpose, as a
plugin author could: mask-size, mask-float, class-out-of-range, depth-nan, depth-negative,
normals-colour, normals-channels; train-unlabelled and val-unlabelled leave no labelled pixel
in that split. `DENSE_TOY_TRAIN` sets the number of training images.
"""

from __future__ import annotations

import os

import torch
from torch.utils.data import TensorDataset

from dmtcore import TaskData, TaskSpec, hookimpl

SIZE = 16
SIDE = 8
TILTED = (0.6, 0.0, 0.8)  # a unit normal


def make(seed: int, n: int) -> dict[str, torch.Tensor]:
    """Images and every task's labels, from one seed."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, SIZE, SIZE, generator=g) * 0.2
    mask = torch.zeros(n, SIZE, SIZE, dtype=torch.long)
    corners = torch.randint(0, SIZE - SIDE + 1, (n, 2), generator=g)
    for i, (y, x) in enumerate(corners.tolist()):
        images[i, :, y : y + SIDE, x : x + SIDE] += 0.7
        mask[i, y : y + SIDE, x : x + SIDE] = 1
    square = mask.float()
    normals = torch.stack([square * TILTED[0], square * TILTED[1], 1 - square * (1 - TILTED[2])], 1)
    segmentation, depth = mask.clone(), (2.0 - square)[:, None]
    segmentation[:, 0] = -1
    depth[:, :, 0] = 0.0
    normals[:, :, 0] = 0.0
    return {
        "images": images.clamp(0, 1),
        "seg": segmentation,
        "depth": depth,
        "normals": normals,
        "left": (corners[:, 1] < (SIZE - SIDE) // 2).long(),
    }


def broken(which: str, labels: torch.Tensor, problem: str) -> torch.Tensor:
    """The labels of task `which` with `problem` in them (unchanged if it is not theirs)."""
    if which != "left" and problem == "train-unlabelled":
        return torch.full_like(labels, -1) if which == "seg" else labels * 0
    if which == "seg" and problem == "mask-size":
        return labels[:, ::2, ::2].contiguous()
    if which == "seg" and problem == "mask-float":
        return labels.float()
    if which == "seg" and problem == "class-out-of-range":
        labels = labels.clone()
        labels[3, 5, 5] = 5
    if which == "depth" and problem in ("depth-nan", "depth-negative"):
        labels = labels.clone()
        labels[2, 0, 4, 4] = float("nan") if problem == "depth-nan" else -0.5
    if which == "normals" and problem == "normals-colour":
        return (labels + 1) / 2
    if which == "normals" and problem == "normals-channels":
        return labels[:, :2].contiguous()
    return labels


def factory(which: str):
    def datasets(request):
        problem = os.environ.get("DENSE_TOY_PROBLEM", "")
        train = make(1, int(os.environ.get("DENSE_TOY_TRAIN", "128")))
        val = make(2, 64)
        val_labels = val[which]
        if problem == "val-unlabelled" and which != "left":
            val_labels = torch.full_like(val_labels, -1) if which == "seg" else val_labels * 0
        return TaskData(
            TensorDataset(train["images"], broken(which, train[which], problem)),
            TensorDataset(val["images"], val_labels),
        )

    return datasets


@hookimpl
def dmt_register_tasks(registry):
    shape = (3, SIZE, SIZE)
    registry.add_task(
        TaskSpec(
            "toyd.seg", "the square", shape, "segmentation", factory("seg"), num_outputs=2,
            class_names=("background", "square"),
        )
    )  # fmt: skip
    registry.add_task(
        TaskSpec("toyd.depth", "the square is nearer", shape, "depth", factory("depth"))
    )
    registry.add_task(
        TaskSpec("toyd.normals", "the square tilts", shape, "normals", factory("normals"))
    )
    registry.add_task(
        TaskSpec("toyd.left", "square in the left half", shape, "binary", factory("left"))
    )
