"""`shapes`: generated images of one coloured shape each, with attributes of known relatedness.

Every image shows a circle, square or triangle, red, green or blue, small or large, in the
left or right half, on a noisy background. Tasks ask for one attribute, or for a composite
(`shapes.red-circle`) whose parents are known, so learned gates can be checked against the
truth. Images are drawn at the store's input size and are the same for a given size every time.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from dmtcore import DataRequest, TaskData, TaskSpec, hookimpl

NATIVE_SHAPE = (3, 16, 16)
KINDS = ("circle", "square", "triangle")
COLOURS = ("red", "green", "blue")
RGB = {"red": (0.9, 0.15, 0.1), "green": (0.1, 0.8, 0.2), "blue": (0.15, 0.25, 0.95)}
SPLIT_SIZES = {"train": 2400, "val": 600}
SPLIT_SEEDS = {"train": 1, "val": 2}


@lru_cache(maxsize=4)
def generate(split: str, height: int, width: int) -> dict[str, Any]:
    """Images (N×3×H×W float32 in [0, 1]) and every attribute, reproducible per split and size."""
    import numpy as np

    rng = np.random.default_rng(SPLIT_SEEDS[split])
    n = SPLIT_SIZES[split]
    kind = rng.integers(0, 3, n)
    colour = rng.integers(0, 3, n)
    large = rng.integers(0, 2, n)
    left = rng.integers(0, 2, n)
    side = min(height, width)
    radius = np.where(large == 1, 0.28, 0.16) * side * rng.uniform(0.9, 1.1, n)
    cx = np.where(left == 1, 0.27, 0.73) * width + rng.uniform(-0.06, 0.06, n) * width
    cy = rng.uniform(0.35, 0.65, n) * height
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    dx = xx[None] - cx[:, None, None]
    dy = yy[None] - cy[:, None, None]
    r = radius[:, None, None]
    circle = dx**2 + dy**2 <= r**2
    square = (np.abs(dx) <= 0.85 * r) & (np.abs(dy) <= 0.85 * r)
    triangle = (dy >= -r) & (dy <= 0.8 * r) & (np.abs(dx) <= (dy + r) * 0.6)
    mask = np.choose(kind[:, None, None], [circle, square, triangle])
    palette = np.array([RGB[c] for c in COLOURS], dtype=np.float32)
    tint = palette[colour] + rng.normal(0, 0.05, (n, 3)).astype(np.float32)
    images = rng.uniform(0.0, 0.25, (n, 3, height, width)).astype(np.float32)
    images = np.where(mask[:, None], tint[:, :, None, None], images).clip(0, 1).astype(np.float32)
    return {
        "images": images,
        "kind": kind,
        "colour": colour,
        "large": large,
        "left": left,
        "red-circle": ((kind == 0) & (colour == 0)).astype(np.int64),
    }


def _factory(attribute: str):
    def datasets(request: DataRequest) -> TaskData:
        import torch
        from torch.utils.data import TensorDataset

        spec = request.input_spec
        height, width = (spec.height, spec.width) if spec else NATIVE_SHAPE[1:]
        splits = {}
        for split in SPLIT_SIZES:
            data = generate(split, height, width)
            splits[split] = TensorDataset(
                torch.from_numpy(data["images"]), torch.as_tensor(data[attribute]).long()
            )
        return TaskData(**splits)

    return datasets


TASKS = (
    ("shapes.kind", "which shape: circle, square or triangle", "kind", KINDS),
    ("shapes.colour", "which colour: red, green or blue", "colour", COLOURS),
    ("shapes.size", "is the shape large", "large", ("small", "large")),
    ("shapes.position", "is the shape in the left half", "left", ("right", "left")),
    (
        "shapes.red-circle",
        "is it a red circle (composite of kind and colour)",
        "red-circle",
        ("no", "yes"),
    ),
)


@hookimpl
def dmt_register_tasks(kinds: Any) -> None:
    for name, description, attribute, classes in TASKS:
        kinds.add_task(
            TaskSpec(
                name=name,
                description=description,
                input_shape=NATIVE_SHAPE,
                output="binary" if len(classes) == 2 else "multiclass",
                num_outputs=len(classes),
                class_names=classes,
                datasets=_factory(attribute),
                data_status="built-in",
            )
        )
