"""A throwaway region-level task plugin for the tests (load it with `-p tests/region_toy_plugin.py`).

3×32×32 images of dim noise with one or two bright squares (6..14 pixels), each tinted red,
green or blue. `toyr.boxes` (detection): every square's box, its class the tint;
`toyr.traits` (box-attributes): per square, `large` (side ≥ 10) and `high` (in the top half).

`REGION_TOY_PROBLEM` (read when the data is requested) breaks one label on purpose, as a plugin
author could: x2-before-x1, outside, nan, int-boxes, float-classes, class-out-of-range,
boxes-shape, wrong-keys, attribute-value, attribute-count, tensor-labels. `REGION_TOY_TRAIN`
sets the number of training images.
"""

from __future__ import annotations

import os

import torch

from dmtcore import TaskData, TaskSpec, hookimpl

SIZE = 32


def make(seed: int, n: int) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, SIZE, SIZE, generator=g) * 0.2
    labels = []
    for i in range(n):
        count = int(torch.randint(1, 3, (), generator=g))
        boxes, classes, traits = [], [], []
        for slot in range(count):
            side = int(torch.randint(6, 15, (), generator=g))
            x = int(torch.randint(0, SIZE // 2 - side + 1, (), generator=g)) + slot * SIZE // 2
            y = int(torch.randint(0, SIZE - side + 1, (), generator=g))
            tint = int(torch.randint(0, 3, (), generator=g))
            images[i, tint, y : y + side, x : x + side] += 0.75
            boxes.append([x, y, x + side, y + side])
            classes.append(tint)
            traits.append([float(side >= 10), float(y + side / 2 < SIZE / 2)])
        labels.append(
            {
                "boxes": torch.tensor(boxes, dtype=torch.float32),
                "labels": torch.tensor(classes, dtype=torch.int64),
                "attributes": torch.tensor(traits, dtype=torch.float32),
            }
        )
    return images.clamp(0, 1), labels


def broken(label: dict[str, torch.Tensor], problem: str) -> dict[str, torch.Tensor]:
    label = dict(label)
    boxes = label["boxes"].clone()
    if problem == "x2-before-x1":
        boxes[0, 2] = boxes[0, 0] - 1
    elif problem == "outside":
        boxes[0, 3] = SIZE + 5
    elif problem == "nan":
        boxes[0, 1] = float("nan")
    elif problem == "int-boxes":
        boxes = boxes.long()
    elif problem == "boxes-shape":
        boxes = boxes[:, :3]
    elif problem == "float-classes":
        label["labels"] = label["labels"].float()
    elif problem == "class-out-of-range":
        label["labels"] = label["labels"].clone().fill_(3)
    elif problem == "wrong-keys":
        label["classes"] = label.pop("labels")
    elif problem == "attribute-value":
        label["attributes"] = label["attributes"] * 2 + 0.5
    elif problem == "attribute-count":
        label["attributes"] = label["attributes"][:, :1]
    label["boxes"] = boxes
    return label


class Squares:
    def __init__(self, images: torch.Tensor, labels: list[dict[str, torch.Tensor]], keys):
        self.images = images
        self.labels = [{k: label[k] for k in (*keys, "classes") if k in label} for label in labels]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.images[index], self.labels[index]


def factory(keys: tuple[str, str]):
    def datasets(request):
        problem = os.environ.get("REGION_TOY_PROBLEM", "")
        images, labels = make(1, int(os.environ.get("REGION_TOY_TRAIN", "64")))
        if problem:
            labels[3] = broken(labels[3], problem)
        train = Squares(images, labels, keys)
        if problem == "tensor-labels":
            train = torch.utils.data.TensorDataset(images, torch.zeros(len(images), 4))
        val = Squares(*make(2, 32), keys)
        return TaskData(train, val, deterministic=True)

    return datasets


@hookimpl
def dmt_register_tasks(registry):
    registry.add_task(
        TaskSpec(
            name="toyr.boxes",
            description="the squares' boxes, by tint",
            input_shape=(3, SIZE, SIZE),
            output="detection",
            num_outputs=3,
            class_names=("red", "green", "blue"),
            datasets=factory(("boxes", "labels")),
        )
    )
    registry.add_task(
        TaskSpec(
            name="toyr.traits",
            description="is each square large, is it high",
            input_shape=(3, SIZE, SIZE),
            output="box-attributes",
            num_outputs=2,
            class_names=("large", "high"),
            datasets=factory(("boxes", "attributes")),
            boxes_from="toyr.boxes",
        )
    )
