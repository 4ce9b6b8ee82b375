"""Region-level labels: what a detection or box-attributes target must be, how a batch of them
is put together, and how boxes follow their image to the store's input size.

A region label is one dict per image, as torchvision's detection models take them:
`{"boxes": n×4, "labels": n}` for detection (corners x1, y1, x2, y2 in pixels of the image as
the dataset gives it, class ids) and `{"boxes": n×4, "attributes": n×A}` for box-attributes
(a 0/1 vector per box). The number of boxes differs from image to image, so a batch of labels
is a list, never one tensor: datasets of region tasks are map-style datasets (not
`TensorDataset`s) and their samples are collated by `collate_regions`.

Every batch is checked like any other (one line naming where, the value and what is valid);
the checks are per image but vectorised over its boxes, a few dozen tensor operations a batch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import default_collate

from dmtcore.errors import DataError
from dmtcore.tasks.dense_labels import class_id_out_of_range
from dmtcore.tasks.spec import TaskSpec

# Corners may stray this far (pixels) outside the image: a plugin's own rounding when it
# scales boxes. Targets are clipped to the image afterwards.
BOX_SLACK = 1e-2
# The keys of one image's label, by kind.
LABEL_KEYS = {"detection": ("boxes", "labels"), "box-attributes": ("boxes", "attributes")}
LABEL_LAYOUT = {
    "detection": "{'boxes': n×4 float xyxy pixels, 'labels': n int64 class ids}",
    "box-attributes": "{'boxes': n×4 float xyxy pixels, 'attributes': n×A of 0/1}",
}


def collate_regions(samples: Sequence[tuple[Any, Any, Any]]) -> tuple[Any, list[Any], Any]:
    """(images, labels, indices) of a batch of (image, label, index) samples: images and
    indices stacked as usual, labels kept as the list of per-image dicts they are."""
    images = default_collate([sample[0] for sample in samples])
    index = default_collate([sample[2] for sample in samples])
    return images, [sample[1] for sample in samples], index


def check_region_labels(
    origin: str, spec: TaskSpec, labels: Any, images: torch.Tensor, which: str
) -> None:
    """Fail, naming where, the image and the box, unless `labels` (a batch: one dict per image
    of `images`, N×C×H×W) fit the task's region output kind."""
    kind, layout = spec.output, LABEL_LAYOUT[spec.output]
    if torch.is_tensor(labels) or not isinstance(labels, Sequence) or isinstance(labels, str):
        raise DataError(
            f"{origin}: {kind} labels must be one dict per image, {layout}, got "
            f"{_described(labels)} for {which}"
        )
    if len(labels) != images.shape[0]:
        raise DataError(f"{origin}: {which} has {images.shape[0]} images but {len(labels)} labels")
    height, width = (int(s) for s in images.shape[-2:])
    for position, label in enumerate(labels):
        where = f"{which}, image {position}"
        if not isinstance(label, Mapping) or set(label) != set(LABEL_KEYS[kind]):
            got = f"keys {sorted(map(str, label))}" if isinstance(label, Mapping) else None
            raise DataError(
                f"{origin}: {where}: a {kind} label must be a dict {layout}, got "
                f"{got or _described(label)}"
            )
        boxes = _tensor(origin, where, "boxes", label["boxes"])
        _check_boxes(origin, where, boxes, height, width)
        if kind == "detection":
            _check_class_ids(
                origin, where, spec, _tensor(origin, where, "labels", label["labels"]), len(boxes)
            )
        else:
            attributes = _tensor(origin, where, "attributes", label["attributes"])
            _check_attributes(origin, where, spec, attributes, len(boxes))


def _described(value: Any) -> str:
    if torch.is_tensor(value):
        return f"a tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


def _tensor(origin: str, where: str, key: str, value: Any) -> torch.Tensor:
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise DataError(f"{origin}: {where}: {key!r} is not numbers: {exc}") from exc


def _check_boxes(origin: str, where: str, boxes: torch.Tensor, height: int, width: int) -> None:
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise DataError(
            f"{origin}: {where}: boxes must be n×4 (x1, y1, x2, y2 per box; 0×4 for an image "
            f"without objects), got shape {tuple(boxes.shape)}"
        )
    if not boxes.is_floating_point():
        raise DataError(
            f"{origin}: {where}: boxes have dtype {boxes.dtype}; valid: float (torch.float32) "
            "corners in pixels (convert integer corners with .float(); VOC's 1-based inclusive "
            "corners are x1 - 1, y1 - 1, x2, y2)"
        )
    if not boxes.numel():
        return
    boxes = boxes.double()
    finite = torch.isfinite(boxes).all(1)
    if not bool(finite.all()):
        bad = int((~finite).nonzero()[0])
        raise DataError(
            f"{origin}: {where}: box {bad} is {_corners(boxes[bad])}; valid: finite corners "
            "(no NaN or infinity)"
        )
    x1, y1, x2, y2 = boxes.unbind(1)
    inside = (
        f"inside the {height}×{width} image (0 ≤ x ≤ {width}, 0 ≤ y ≤ {height} pixels, "
        "in the image's own pixels as the dataset gives it)"
    )
    for bad_mask, problem in (
        (x2 <= x1, "x2 <= x1"),
        (y2 <= y1, "y2 <= y1"),
    ):
        if bool(bad_mask.any()):
            bad = int(bad_mask.nonzero()[0])
            raise DataError(
                f"{origin}: {where}: box {bad} is {_corners(boxes[bad])} (x1, y1, x2, y2), with "
                f"{problem}; valid: x1 < x2 and y1 < y2, {inside}"
            )
    outside = (
        (x1 < -BOX_SLACK) | (y1 < -BOX_SLACK) | (x2 > width + BOX_SLACK) | (y2 > height + BOX_SLACK)
    )
    if bool(outside.any()):
        bad = int(outside.nonzero()[0])
        raise DataError(
            f"{origin}: {where}: box {bad} is {_corners(boxes[bad])} (x1, y1, x2, y2), outside "
            f"the image; valid: corners {inside}"
        )


def _corners(box: torch.Tensor) -> str:
    return "[" + ", ".join(f"{float(v):.4g}" for v in box) + "]"


def _check_class_ids(
    origin: str, where: str, spec: TaskSpec, ids: torch.Tensor, count: int
) -> None:
    if ids.dim() != 1 or len(ids) != count:
        raise DataError(
            f"{origin}: {where}: labels must hold one class id per box ({count} boxes), got "
            f"shape {tuple(ids.shape)}"
        )
    if ids.is_floating_point() or ids.dtype == torch.bool or ids.is_complex():
        raise DataError(
            f"{origin}: {where}: class ids have dtype {ids.dtype}; valid: an integer dtype "
            "(torch.int64)"
        )
    bad = class_id_out_of_range(ids, spec.num_outputs)
    if bad is not None:
        raise DataError(
            f"{origin}: {where}: class id {bad}; valid: 0..{spec.num_outputs - 1} (the task's "
            f"{spec.num_outputs} classes; there is no background id: boxes are objects)"
        )


def _check_attributes(
    origin: str, where: str, spec: TaskSpec, attributes: torch.Tensor, count: int
) -> None:
    size = spec.num_outputs
    if attributes.dim() != 2 or tuple(attributes.shape) != (count, size):
        raise DataError(
            f"{origin}: {where}: attributes must be one 0/1 vector of {size} per box "
            f"({count}×{size}), got shape {tuple(attributes.shape)}"
        )
    if attributes.is_complex():
        raise DataError(f"{origin}: {where}: attributes have dtype {attributes.dtype}")
    if attributes.numel() and not bool(((attributes == 0) | (attributes == 1)).all()):
        values = attributes[(attributes != 0) & (attributes != 1)]
        shown = float(values[0]) if values.numel() else math.nan
        raise DataError(
            f"{origin}: {where}: attribute value {shown:g}; valid: 0 or 1 (a multi-hot vector "
            "per box; float, integer or bool)"
        )


def region_targets(
    spec: TaskSpec,
    labels: Sequence[Mapping[str, Any]],
    source: tuple[int, int],
    size: tuple[int, int],
) -> list[dict[str, torch.Tensor]]:
    """Checked labels as the loss and metrics take them: boxes float32 in pixels of the
    store's input (scaled with the image from `source` (H, W) to `size`, then clipped to it),
    class ids int64, attributes float32."""
    scale = torch.tensor([size[1] / source[1], size[0] / source[0]] * 2, dtype=torch.float32)
    limit = torch.tensor([size[1], size[0]] * 2, dtype=torch.float32)
    targets = []
    for label in labels:
        boxes = torch.as_tensor(label["boxes"]).float().reshape(-1, 4) * scale
        target = {"boxes": torch.minimum(boxes.clamp_min(0.0), limit)}
        if spec.output == "detection":
            target["labels"] = torch.as_tensor(label["labels"]).long().reshape(-1)
        else:
            target["attributes"] = (
                torch.as_tensor(label["attributes"]).float().reshape(-1, spec.num_outputs)
            )
        targets.append(target)
    return targets


def targets_to(
    targets: list[dict[str, torch.Tensor]], device: torch.device, non_blocking: bool = False
) -> list[dict[str, torch.Tensor]]:
    return [
        {key: value.to(device, non_blocking=non_blocking) for key, value in target.items()}
        for target in targets
    ]
