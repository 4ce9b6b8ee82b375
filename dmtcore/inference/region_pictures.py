"""What `dmt predict --out` draws of region predictions: one picture per image and detection
task, its boxes in the colours of their classes, each labelled with its class and score and
with the attributes every requested box-attributes task found for the same box ("sphere 0.91
red tall"): one picture says all that is known of a box, where a picture per task would leave
the reader to match boxes across files by position.

A box-attributes task asked for without its detection task (`--task scenes.attributes`) gets a
picture of its own, its boxes in one colour labelled with the attributes only. The drawing
itself is `tasks.visualize_boxes`; this module only decides what goes on which picture.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from dmtcore.inference.region_outputs import attribute_names
from dmtcore.tasks.visualize_boxes import boxes_image


def picture_groups(tasks: list[str], outputs: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """Picture -> the requested region tasks it shows, the picture named after its first:
    every requested detection task with the requested box-attributes tasks describing its
    boxes, in the order asked; a box-attributes task whose detection task is not asked for,
    alone."""
    groups: dict[str, list[str]] = {}
    for name in tasks:
        kind = outputs[name]["kind"]
        if kind == "detection":
            groups[name] = [name]
    for name in tasks:
        if outputs[name]["kind"] == "box-attributes":
            source = outputs[name].get("boxes_from")
            groups.setdefault(source if source in groups else name, []).append(name)
    return groups


def region_picture(
    image: torch.Tensor,
    shown: list[str],
    values: dict[str, dict[str, torch.Tensor]],
    outputs: dict[str, dict[str, Any]],
) -> Image.Image:
    """The picture of one image for the tasks `shown` (one entry of `picture_groups`), from
    each task's prediction of that image (`values`, as `region_predictions` gives it)."""
    first, found = outputs[shown[0]], values[shown[0]]
    if first["kind"] == "detection":
        names = first.get("class_names")
        classes = [int(c) for c in found["labels"].tolist()]
        labels = [
            f"{names[c] if names else c} {score:.2f}"
            for c, score in zip(classes, found["scores"].tolist(), strict=True)
        ]
        described, num_classes = shown[1:], int(first["size"])
    else:
        classes, labels = [0] * len(found["boxes"]), [""] * len(found["boxes"])
        described, num_classes = shown, 1
    for name in described:
        rows = values[name]["probabilities"]
        names = outputs[name].get("class_names")
        labels = [
            " ".join([label, *map(str, attribute_names(row.tolist(), names))]).strip()
            for label, row in zip(labels, rows, strict=True)
        ]
    return boxes_image(image, found["boxes"], classes, [t or None for t in labels], num_classes)
