"""Pixel-level labels: what a segmentation, depth or normals target must be, and how it is
brought to the store's input size.

A dense label is checked like an image: vectorised min/max and finiteness passes over every
batch, each failure one line naming where, the value and what is valid. Targets are resized
with nearest-neighbour (never averaged), so class ids stay ids, an unlabelled pixel never
blends into a labelled one, and a normal stays a unit vector.

A segmentation task's declared ignore value (`TaskSpec.ignore_label`: -1, 255, ...) is what
its data is checked against; the targets handed on mark those pixels with `IGNORE_LABEL`, so
the loss and the metrics have one convention whatever the dataset's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dmtcore.errors import DataError
from dmtcore.tasks.spec import IGNORE_LABEL, TaskSpec

# Normals this close to unit length are normalised; farther ones are refused: they are most
# likely colour-encoded ((n + 1) / 2 in [0, 1]) or unnormalised, and would train a wrong target.
NORMAL_LENGTH_TOLERANCE = 0.1
# Per-image label shape, without the batch dimension, by kind ("H×W" stands for the image's).
LABEL_LAYOUT = {"segmentation": "H×W", "depth": "1×H×W (or H×W)", "normals": "3×H×W"}
# The same as channel counts a batch's labels may have (None: H×W maps without a channel axis).
LABEL_CHANNELS = {"segmentation": (None,), "depth": (1, None), "normals": (3,)}


def check_dense_labels(origin: str, spec: TaskSpec, labels: torch.Tensor, which: str) -> None:
    """Fail, naming where, unless `labels` (a batch) fit the task's dense output kind."""
    kind = spec.output
    shape = tuple(labels.shape)
    expected = LABEL_LAYOUT[kind]
    if len(shape) not in (3, 4) or _channels(shape) not in LABEL_CHANNELS[kind]:
        raise DataError(
            f"{origin}: {kind} labels must be {expected} per image (a batch of "
            f"N×{expected.split(' ')[0]}), got a batch of {shape} in {which}"
        )
    if kind == "segmentation":
        _check_class_map(origin, spec, labels, which)
        return
    if not labels.is_floating_point():
        raise DataError(
            f"{origin}: {kind} labels in {which} have dtype {labels.dtype}; valid: float "
            "(torch.float32)"
        )
    low, high = (float(v) for v in labels.aminmax())
    if not (math.isfinite(low) and math.isfinite(high)):
        what = "0" if kind == "depth" else "an all-zero vector"
        raise DataError(
            f"{origin}: {which} has NaN or infinite {kind} values; mark pixels without ground "
            f"truth with {what} instead"
        )
    if kind == "depth" and low < 0:
        raise DataError(
            f"{origin}: depth labels in {which} go down to {low:.4g}; valid: depth >= 0 "
            "(0 marks pixels without ground truth)"
        )
    if kind == "normals":
        _check_unit_length(origin, labels, which)


def _channels(batch_shape: tuple[int, ...]) -> int | None:
    """A batch's per-image channel count: None for N×H×W maps."""
    return batch_shape[1] if len(batch_shape) == 4 else None


def _check_class_map(origin: str, spec: TaskSpec, labels: torch.Tensor, which: str) -> None:
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise DataError(
            f"{origin}: segmentation labels in {which} have dtype {labels.dtype}; valid: an "
            "integer dtype (torch.long) of class ids"
        )
    bad = class_id_out_of_range(labels[labels != spec.ignore_label], spec.num_outputs)
    if bad is not None:
        raise DataError(
            f"{origin}: {which} has segmentation class id {bad}; valid: 0..{spec.num_outputs - 1}"
            f", or {spec.ignore_label} for unlabelled pixels (the ignore value the task "
            "declares; a dataset marking them otherwise, e.g. 255, needs a task declaring it)"
        )


def class_id_out_of_range(ids: torch.Tensor, count: int) -> int | None:
    """A class id outside 0..count-1 among `ids` (the lowest if one is negative, else the
    highest), or None: one min/max pass, for every kind whose labels are class ids."""
    if not ids.numel():
        return None
    low, high = (int(v) for v in ids.aminmax())
    if low < 0:
        return low
    return high if high >= count else None


def _check_unit_length(origin: str, labels: torch.Tensor, which: str) -> None:
    lengths = labels.float().norm(dim=1)
    labelled = lengths[lengths > 0]
    if not labelled.numel():
        return
    deviation = (labelled - 1).abs()
    worst = int(deviation.argmax())
    if float(deviation[worst]) > NORMAL_LENGTH_TOLERANCE:
        raise DataError(
            f"{origin}: {which} has a surface normal of length {float(labelled[worst]):.3g}; "
            f"valid: unit vectors (length 1 ± {NORMAL_LENGTH_TOLERANCE}, normalised by dmt) or "
            "all-zero for unlabelled pixels (normals stored as colours in [0, 1] decode as "
            "2·v − 1)"
        )


def check_label_size(origin: str, labels: torch.Tensor, images: torch.Tensor, which: str) -> None:
    """A dense label map must cover its image pixel for pixel."""
    if tuple(labels.shape[-2:]) != tuple(images.shape[-2:]):
        raise DataError(
            f"{origin}: {which} has label maps of {labels.shape[-2]}×{labels.shape[-1]} for "
            f"images of {images.shape[-2]}×{images.shape[-1]}; a dense label must have its "
            "image's height and width"
        )


def dense_targets(spec: TaskSpec, labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Checked labels as the task's loss and metrics take them, at the store's size: class ids
    N×H×W (long), depth N×1×H×W, unit normals N×3×H×W."""
    if spec.output == "segmentation":
        labels = labels.long()
        if spec.ignore_label != IGNORE_LABEL:
            labels = labels.masked_fill(labels == spec.ignore_label, IGNORE_LABEL)
        if tuple(labels.shape[-2:]) != size:
            labels = F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0]
            labels = labels.long()
        return labels
    labels = labels.float()
    if labels.dim() == 3:
        labels = labels[:, None]
    if tuple(labels.shape[-2:]) != size:
        labels = F.interpolate(labels, size=size, mode="nearest")
    if spec.output == "normals":
        lengths = labels.norm(dim=1, keepdim=True)
        labels = torch.where(lengths > 0, labels / lengths.clamp_min(1e-12), labels)
    return labels


def has_labelled_pixels(kind: str, targets: torch.Tensor) -> bool:
    """Whether a batch of targets (as the loss takes them) labels any pixel at all."""
    if kind == "segmentation":
        return bool((targets != IGNORE_LABEL).any())
    if kind == "depth":
        return bool((targets > 0).any())
    return bool((targets != 0).any())


def no_labelled_pixels(origin: str) -> DataError:
    return DataError(
        f"{origin}: the whole split has no labelled pixel (every label is the task's ignore "
        "value, depth 0 or an all-zero normal), so nothing can be learned or measured; label "
        "some pixels"
    )
