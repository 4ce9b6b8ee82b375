"""Extra tasks for the growth benchmarks, a dmt plugin loaded with `-p` (create_plugin_host).

The built-in plugins offer 6 digits tasks and 5 shapes tasks; measuring add-task with k = 8
frozen columns needs more. These are further binary attributes of the very same images:
`bench.digit-N` (is the digit N) on scikit-learn's digits, `bench.shape-KIND` and
`bench.colour-COLOUR` on the generated shapes, drawn at the store's input size. The dense
growth benchmark needs four frozen pixel-level columns, and `scenes` has three pixel-level
tasks: `bench.scenes-objects` (object or background) and `bench.scenes-curved` (curved surface,
flat surface or background) are two more segmentations of the very same rendered images.
"""

from __future__ import annotations

from typing import Any

from dmtcore import DataRequest, TaskData, TaskSpec, hookimpl


def _digit_factory(digit: int) -> Any:
    def datasets(request: DataRequest) -> TaskData:
        from dmt_plugins.digits import _factory

        return _factory({digit})(request)

    return datasets


def _shapes_factory(attribute: str, value: int) -> Any:
    def datasets(request: DataRequest) -> TaskData:
        import torch
        from torch.utils.data import TensorDataset

        from dmt_plugins.shapes import NATIVE_SHAPE, SPLIT_SIZES, generate

        spec = request.input_spec
        height, width = (spec.height, spec.width) if spec else NATIVE_SHAPE[1:]
        splits = {}
        for split in SPLIT_SIZES:
            data = generate(split, height, width)
            labels = torch.as_tensor(data[attribute] == value).long()
            splits[split] = TensorDataset(torch.from_numpy(data["images"]), labels)
        return TaskData(**splits)

    return datasets


SCENES_SEGMENTATIONS = {
    # name: (description, class names, new class of each scenes class: floor, wall, sphere,
    # box, cylinder)
    "objects": ("does the pixel show an object", ("background", "object"), (0, 0, 1, 1, 1)),
    "curved": (
        "is the pixel on a curved object, a flat-sided one, or the room",
        ("room", "curved", "flat"),
        (0, 0, 1, 2, 1),
    ),
}


def _scenes_factory(classes: tuple[int, ...]) -> Any:
    from dmt_plugins.scenes import split_datasets

    def relabel(segmentation: Any) -> Any:
        import torch

        lookup = torch.tensor([*classes, -1])  # index -1 (unlabelled) stays -1
        return lookup[segmentation.long()]

    return split_datasets("segmentation", relabel)


@hookimpl
def dmt_register_tasks(registry: Any) -> None:
    for digit in range(10):
        registry.add_task(
            TaskSpec(
                name=f"bench.digit-{digit}",
                description=f"the digit is {digit}",
                input_shape=(1, 8, 8),
                output="binary",
                class_names=("no", "yes"),
                datasets=_digit_factory(digit),
            )
        )
    for attribute, values in (
        ("kind", ("circle", "square", "triangle")),
        ("colour", ("red", "green", "blue")),
    ):
        prefix = "shape" if attribute == "kind" else "colour"
        for index, value in enumerate(values):
            registry.add_task(
                TaskSpec(
                    name=f"bench.{prefix}-{value}",
                    description=f"the {attribute} is {value}",
                    input_shape=(3, 16, 16),
                    output="binary",
                    class_names=("no", "yes"),
                    datasets=_shapes_factory(attribute, index),
                )
            )
    for suffix, (description, class_names, classes) in SCENES_SEGMENTATIONS.items():
        registry.add_task(
            TaskSpec(
                name=f"bench.scenes-{suffix}",
                description=description,
                input_shape=(3, 64, 64),
                output="segmentation",
                num_outputs=len(class_names),
                class_names=class_names,
                datasets=_scenes_factory(classes),
            )
        )
