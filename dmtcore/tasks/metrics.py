"""Losses and metrics by name, so a store records them as strings and needs no plugin code.

Image-level metrics are "higher is better" (regression errors are reported negated, as they
always were). Pixel-level metrics are reported as the papers report them, errors included
(mean angle, abs-rel): `dmtcore.tasks.spec.higher_is_better` gives each metric's direction.

Pixel-level metrics stream: a `MetricState` keeps sufficient statistics (a confusion matrix,
sums, an angle histogram) batch by batch, so a split of full-size maps is never held at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from dmtcore.errors import DataError, InvalidValueError
from dmtcore.tasks.names import unknown_name
from dmtcore.tasks.region_metrics import REGION_LOSSES, RegionMetricState
from dmtcore.tasks.spec import (
    DEFAULT_METRICS,
    DENSE_KINDS,
    IGNORE_LABEL,
    LOSS_NAMES,
    METRIC_NAMES,
    REGION_KINDS,
    higher_is_better,
)

# Median angle errors come from a histogram of this resolution (degrees): exact to half of it.
ANGLE_BIN = 0.01
ANGLE_THRESHOLDS = {"within_11_25": 11.25, "within_22_5": 22.5, "within_30": 30.0}


def pixel_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-pixel cross-entropy over labelled pixels (N×K×H×W logits, N×H×W ids)."""
    if not bool((labels != IGNORE_LABEL).any()):
        return logits.sum() * 0.0  # no labelled pixel in the batch: no signal, no NaN
    return F.cross_entropy(logits, labels, ignore_index=IGNORE_LABEL)


def _valid_depth(outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, ...]:
    valid = targets > 0
    return outputs[valid], targets[valid]


def depth_l1(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """L1 over pixels with ground truth (depth 0 marks the others)."""
    predicted, truth = _valid_depth(outputs, targets)
    return (predicted - truth).abs().mean() if truth.numel() else outputs.sum() * 0.0


def berhu(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Reverse Huber (Laina et al. 2016) over valid pixels: L1 for small errors, scaled L2
    beyond c = 1/5 of the batch's largest error."""
    predicted, truth = _valid_depth(outputs, targets)
    if not truth.numel():
        return outputs.sum() * 0.0
    error = (predicted - truth).abs()
    c = (0.2 * error.max().detach()).clamp_min(1e-6)
    return torch.where(error <= c, error, (error**2 + c**2) / (2 * c)).mean()


def _valid_normals(outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Predicted unit normals and truth at labelled pixels, as P×3 (all-zero truth: none)."""
    predicted = F.normalize(outputs.float(), dim=1).permute(0, 2, 3, 1).reshape(-1, 3)
    truth = targets.permute(0, 2, 3, 1).reshape(-1, 3)
    valid = truth.abs().sum(1) > 0
    return predicted[valid], truth[valid]


def cosine(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1 − cos(predicted, truth) over labelled pixels: NDDR-CNN §4's ℓ2 loss on normalised
    vectors, up to a factor of 2 (|a − b|² = 2 − 2 cos for unit a, b)."""
    predicted, truth = _valid_normals(outputs, targets)
    if not truth.numel():
        return outputs.sum() * 0.0
    return 1.0 - (predicted * truth).sum(1).mean()


def normals_l1(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between the normalised prediction and the unit truth, over the
    3 components of every labelled pixel: the L1 normals loss of Vandenhende et al.'s
    Multi-Task-Learning-PyTorch (`NormalsLoss(normalize=True, norm=1)`, which sums |p − t| over
    the labelled components and divides by their count)."""
    predicted, truth = _valid_normals(outputs, targets)
    if not truth.numel():
        return outputs.sum() * 0.0
    return (predicted - truth).abs().mean()


LOSSES: dict[str, Callable[[Any, Any], torch.Tensor]] = {
    "cross_entropy": F.cross_entropy,
    "bce_with_logits": F.binary_cross_entropy_with_logits,
    "mse": F.mse_loss,
    "l1": F.l1_loss,
    "pixel_cross_entropy": pixel_cross_entropy,
    "depth_l1": depth_l1,
    "berhu": berhu,
    "cosine": cosine,
    "normals_l1": normals_l1,
    **REGION_LOSSES,  # region heads' outputs and a list of box dicts: see region_metrics
}


def loss_function(name: str) -> Callable[[Any, Any], torch.Tensor]:
    if name not in LOSSES:
        raise unknown_name("loss", name, LOSSES)
    return LOSSES[name]


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(1) == labels).float().mean().item()


def balanced_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean of per-class recalls over the classes present (the DMT paper's imbalance metric)."""
    predictions = logits.argmax(1)
    recalls = [(predictions[labels == c] == c).float().mean() for c in labels.unique()]
    return torch.stack(recalls).mean().item()


def label_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return ((logits > 0).float() == labels).float().mean().item()


def neg_mae(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    return -(outputs - targets).abs().mean().item()


def neg_rmse(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    return -((outputs - targets) ** 2).mean().sqrt().item()


METRICS: dict[str, Callable[[torch.Tensor, torch.Tensor], float]] = {
    "accuracy": accuracy,
    "balanced_accuracy": balanced_accuracy,
    "label_accuracy": label_accuracy,
    "neg_mae": neg_mae,
    "neg_rmse": neg_rmse,
}


def compute_metrics(
    names: list[str], outputs: torch.Tensor, labels: torch.Tensor
) -> dict[str, float]:
    for name in names:
        if name not in METRICS:
            raise unknown_name("metric", name, METRICS)
    return {name: METRICS[name](outputs, labels) for name in names}


class MetricState:
    """A task's metrics over a split, fed batch by batch. Image-level metrics see the whole
    split at once (balanced accuracy needs every label), as they always did; pixel-level ones
    keep only sufficient statistics; region-level ones are `RegionMetricState`'s."""

    def __init__(self, kind: str, names: list[str], num_outputs: int) -> None:
        self.kind = kind
        self.regions = RegionMetricState(kind, names, num_outputs) if kind in REGION_KINDS else None
        self.names = list(names)
        self.num_outputs = num_outputs
        self.outputs: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        self.sums: dict[str, torch.Tensor] = {}

    def update(self, outputs: Any, labels: Any) -> None:
        if self.regions is not None:
            self.regions.update(outputs, labels)
            return
        outputs, labels = outputs.float(), labels.to(outputs.device)
        if self.kind not in DENSE_KINDS:
            self.outputs.append(outputs.cpu())
            self.labels.append(labels.cpu())
            return
        for key, value in DENSE_SUMS[self.kind](outputs, labels, self.num_outputs).items():
            value = value.detach().double().cpu()
            self.sums[key] = self.sums[key] + value if key in self.sums else value

    def result(self) -> dict[str, float]:
        if self.regions is not None:
            return self.regions.result()
        if self.kind not in DENSE_KINDS:
            return compute_metrics(self.names, torch.cat(self.outputs), torch.cat(self.labels))
        values = DENSE_SUMMARIES[self.kind](self.sums)
        return {name: values[name] for name in self.names}


def _segmentation_sums(logits: torch.Tensor, labels: torch.Tensor, k: int) -> dict[str, Any]:
    valid = labels != IGNORE_LABEL
    if bool(valid.any()):
        low, high = (int(v) for v in labels[valid].aminmax())
        if low < 0 or high >= k:  # checked data never gets here; a direct caller's might
            raise DataError(
                f"segmentation labels hold {low if low < 0 else high}; valid: class ids "
                f"0..{k - 1}, or {IGNORE_LABEL} for unlabelled pixels (the targets' mark; "
                "dmt's label check turns a task's declared ignore value into it)"
            )
    pairs = labels[valid] * k + logits.argmax(1)[valid]
    return {"confusion": torch.bincount(pairs, minlength=k * k).view(k, k)}


def _segmentation_metrics(sums: dict[str, torch.Tensor]) -> dict[str, float]:
    """Mean IoU over the classes present in truth or prediction, and pixel accuracy (the
    NDDR-CNN and cross-stitch tables' mIoU and PAcc)."""
    confusion = sums.get("confusion")
    if confusion is None or confusion.sum() == 0:
        return {"miou": math.nan, "pixel_accuracy": math.nan}
    hits = confusion.diagonal()
    union = confusion.sum(0) + confusion.sum(1) - hits
    present = union > 0
    return {
        "miou": float((hits[present] / union[present]).mean()),
        "pixel_accuracy": float(hits.sum() / confusion.sum()),
    }


def _depth_sums(outputs: torch.Tensor, labels: torch.Tensor, _: int) -> dict[str, Any]:
    predicted, truth = _valid_depth(outputs, labels)
    error = predicted - truth
    ratio = torch.maximum(predicted / truth, truth / predicted.clamp_min(1e-6))
    return {
        "count": torch.tensor(truth.numel()),
        "abs": error.abs().sum(),
        "rel": (error.abs() / truth).sum(),
        "squared": (error**2).sum(),
        "delta1": ((predicted > 0) & (ratio < 1.25)).sum(),
    }


def _depth_metrics(sums: dict[str, torch.Tensor]) -> dict[str, float]:
    """abs-rel, RMSE, δ < 1.25 and the absolute error over pixels with ground truth."""
    n = float(sums.get("count", 0))
    if not n:
        return dict.fromkeys(("abs_rel", "rmse", "delta1", "abs_err"), math.nan)
    return {
        "abs_rel": float(sums["rel"]) / n,
        "rmse": math.sqrt(float(sums["squared"]) / n),
        "delta1": float(sums["delta1"]) / n,
        "abs_err": float(sums["abs"]) / n,
    }


def _normal_sums(outputs: torch.Tensor, labels: torch.Tensor, _: int) -> dict[str, Any]:
    predicted, truth = _valid_normals(outputs, labels)
    truth = F.normalize(truth, dim=1)
    cos = (predicted * truth).sum(1).clamp(-1.0, 1.0)
    angles = torch.rad2deg(torch.acos(cos.double()))
    bins = round(180 / ANGLE_BIN) + 1
    sums: dict[str, Any] = {
        "count": torch.tensor(angles.numel()),
        "angle": angles.sum(),
        "histogram": torch.bincount((angles / ANGLE_BIN).floor().long(), minlength=bins),
    }
    for name, limit in ANGLE_THRESHOLDS.items():
        sums[name] = (angles < limit).sum()
    return sums


def _normal_metrics(sums: dict[str, torch.Tensor]) -> dict[str, float]:
    """Mean and median angle error (degrees) and the share of pixels within 11.25°, 22.5° and
    30° (NDDR-CNN Table 4); the median to ANGLE_BIN / 2."""
    n = float(sums.get("count", 0))
    names = ("mean_angle", "median_angle", *ANGLE_THRESHOLDS)
    if not n:
        return dict.fromkeys(names, math.nan)
    cumulative = sums["histogram"].cumsum(0)
    middle = int(torch.searchsorted(cumulative, torch.tensor(n / 2, dtype=cumulative.dtype)))
    return {
        "mean_angle": float(sums["angle"]) / n,
        "median_angle": (middle + 0.5) * ANGLE_BIN,
        **{name: float(sums[name]) / n for name in ANGLE_THRESHOLDS},
    }


# Per dense kind: a batch's sufficient statistics, and the metrics from their totals.
DENSE_SUMS = {"segmentation": _segmentation_sums, "depth": _depth_sums, "normals": _normal_sums}
DENSE_SUMMARIES = {
    "segmentation": _segmentation_metrics,
    "depth": _depth_metrics,
    "normals": _normal_metrics,
}


def probabilities(output_kind: str, logits: torch.Tensor) -> torch.Tensor:
    """What `predict` reports: softmax for one-of-N outputs (per pixel for segmentation),
    sigmoid for multilabel, unit vectors for normals, raw values for regression and depth."""
    if output_kind in ("binary", "multiclass", "segmentation"):
        return logits.softmax(1)
    if output_kind == "multilabel":
        return logits.sigmoid()
    if output_kind == "normals":
        return F.normalize(logits, dim=1)
    return logits


DENSE_METRICS = {m for kind in DENSE_KINDS + REGION_KINDS for m in DEFAULT_METRICS[kind]}
assert set(LOSSES) == set(LOSS_NAMES) and set(METRICS) | DENSE_METRICS == set(METRIC_NAMES)


def delta_m(metrics: dict[str, dict[str, float]], baseline: dict[str, dict[str, float]]) -> float:
    """Δm (Maninis et al. 2019; Vandenhende et al. 2021, eq. 10), in percent: each task's mean
    relative difference from `baseline` (usually the task trained alone) over the metrics
    both record, signed so that better is positive (an error metric counts down), then the
    mean over the tasks, as LibMTL computes it. Metrics missing from either side, or with a
    baseline of 0 or NaN, are left out; a task with none left is refused."""
    per_task = []
    for task, values in metrics.items():
        if task not in baseline:
            raise InvalidValueError(f"no baseline metrics for task {task!r} (Δm)")
        gains = []
        for name, value in values.items():
            base = baseline[task].get(name)
            if base is None or not math.isfinite(base) or base == 0 or not math.isfinite(value):
                continue
            sign = 1.0 if higher_is_better(name) else -1.0
            gains.append(sign * (value - base) / abs(base))
        if not gains:
            raise InvalidValueError(
                f"task {task!r}: no metric in common with its baseline for Δm "
                f"(has {sorted(values)}, baseline {sorted(baseline[task])})"
            )
        per_task.append(sum(gains) / len(gains))
    if not per_task:
        raise InvalidValueError("Δm needs at least one task")
    return 100.0 * sum(per_task) / len(per_task)
