"""Tasks for the real-scale benchmarks, a dmt plugin loaded with `-p` (backbone_scale.py and
gpu_check.py): the built-in `shapes` images and attributes, but only as many images as a
benchmark wants, drawn directly at the store's input size.

`shapes` always draws 2400 training and 600 validation images; at 3×224×224 that is 1.4 GB of
float32 before any training starts. These tasks draw `DMT_SCALE_IMAGES` training images
(default 256) and `DMT_SCALE_VAL` validation images (default a quarter of that, at least 16),
read when the data is requested. Image-level: `scale.kind`, `scale.colour`, `scale.size`,
`scale.side` and `scale.red-circle` (the same attributes as shapes.kind, .colour, .size,
.position and .red-circle). Pixel-level, on the very same images: `scale.object-seg` (is the
pixel on the shape: 2 classes) and `scale.kind-seg` (background or which shape: 4 classes).

With `DMT_SCALE_TIMINGS=FILE`, the plugin also appends one JSON line to FILE at the start of
each run (`dmt_run_started`: right before training), at every epoch's end (`dmt_epoch_end`,
with the epoch's own seconds) and at the run's end (`dmt_run_finished`), each with the wall
clock (time.time()), so a benchmark can split a command's wall time into start-up, epochs and
commit.
"""

from __future__ import annotations

import json
import os
import time
from functools import lru_cache
from typing import Any

from dmt_plugins.shapes import COLOURS, KINDS
from dmt_plugins.shapes import RGB as SHAPE_RGB
from dmtcore import DataRequest, TaskData, TaskSpec, hookimpl

NATIVE_SHAPE = (3, 32, 32)
RGB = tuple(SHAPE_RGB[c] for c in COLOURS)  # the built-in shapes' palette, in label order
SEEDS = {"train": 11, "val": 12}


def sizes() -> dict[str, int]:
    train = int(os.environ.get("DMT_SCALE_IMAGES", "256"))
    val = int(os.environ.get("DMT_SCALE_VAL", str(max(train // 4, 16))))
    return {"train": train, "val": val}


@lru_cache(maxsize=4)
def generate(split: str, n: int, height: int, width: int) -> dict[str, Any]:
    """n images (float32 in [0, 1]), their attributes and their shape masks, drawn image by
    image (no n×H×W temporaries: 512 images at 224×224 stay under 400 MB)."""
    import numpy as np

    rng = np.random.default_rng(SEEDS[split])
    kind = rng.integers(0, 3, n)
    colour = rng.integers(0, 3, n)
    large = rng.integers(0, 2, n)
    left = rng.integers(0, 2, n)
    side = min(height, width)
    radius = np.where(large == 1, 0.28, 0.16) * side * rng.uniform(0.9, 1.1, n)
    cx = np.where(left == 1, 0.27, 0.73) * width + rng.uniform(-0.06, 0.06, n) * width
    cy = rng.uniform(0.35, 0.65, n) * height
    tint = np.asarray(RGB, dtype=np.float32)[colour] + rng.normal(0, 0.05, (n, 3))
    images = rng.uniform(0.0, 0.25, (n, 3, height, width)).astype(np.float32)
    masks = np.zeros((n, height, width), dtype=np.int64)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    for i in range(n):
        dx, dy, r = xx - cx[i], yy - cy[i], radius[i]
        if kind[i] == 0:
            mask = dx**2 + dy**2 <= r**2
        elif kind[i] == 1:
            mask = (np.abs(dx) <= 0.85 * r) & (np.abs(dy) <= 0.85 * r)
        else:
            mask = (dy >= -r) & (dy <= 0.8 * r) & (np.abs(dx) <= (dy + r) * 0.6)
        images[i][:, mask] = tint[i].astype(np.float32)[:, None]
        masks[i][mask] = kind[i] + 1
    return {
        "images": images.clip(0, 1),
        "kind": kind,
        "colour": colour,
        "large": large,
        "left": left,
        "red-circle": ((kind == 0) & (colour == 0)).astype(np.int64),
        "kind-seg": masks,
        "object-seg": (masks > 0).astype(np.int64),
    }


def _factory(attribute: str) -> Any:
    def datasets(request: DataRequest) -> TaskData:
        import torch
        from torch.utils.data import TensorDataset

        spec = request.input_spec
        height, width = (spec.height, spec.width) if spec else NATIVE_SHAPE[1:]
        splits = {}
        for split, n in sizes().items():
            data = generate(split, n, height, width)
            splits[split] = TensorDataset(
                torch.from_numpy(data["images"]), torch.from_numpy(data[attribute]).long()
            )
        return TaskData(**splits)

    return datasets


IMAGE_TASKS = (
    ("scale.kind", "which shape", "kind", KINDS),
    ("scale.colour", "which colour", "colour", COLOURS),
    ("scale.size", "is the shape large", "large", ("small", "large")),
    ("scale.side", "is the shape in the left half", "left", ("right", "left")),
    ("scale.red-circle", "is it a red circle", "red-circle", ("no", "yes")),
)
DENSE_TASKS = (
    ("scale.object-seg", "is the pixel on the shape", "object-seg", ("background", "shape")),
    ("scale.kind-seg", "which shape the pixel is on", "kind-seg", ("background", *KINDS)),
)


@hookimpl
def dmt_register_tasks(registry: Any) -> None:
    for tasks, dense in ((IMAGE_TASKS, False), (DENSE_TASKS, True)):
        for name, description, attribute, classes in tasks:
            image_output = "binary" if len(classes) == 2 else "multiclass"
            registry.add_task(
                TaskSpec(
                    name=name,
                    description=description,
                    input_shape=NATIVE_SHAPE,
                    output="segmentation" if dense else image_output,
                    num_outputs=len(classes),
                    class_names=classes,
                    datasets=_factory(attribute),
                )
            )


def _timing(event: str, **fields: Any) -> None:
    path = os.environ.get("DMT_SCALE_TIMINGS")
    if path:
        with open(path, "a") as file:
            file.write(json.dumps({"event": event, "time": time.time(), **fields}) + "\n")


@hookimpl
def dmt_run_started(run: Any) -> None:
    _timing("started")


@hookimpl
def dmt_epoch_end(run: Any, report: Any) -> None:
    _timing("epoch", epoch=report.epoch, seconds=report.seconds)


@hookimpl
def dmt_run_finished(run: Any, result: Any) -> None:
    _timing("finished")
