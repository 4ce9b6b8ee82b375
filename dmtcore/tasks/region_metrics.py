"""Losses and metrics of region-level tasks: FCOS's loss, the attribute loss of the paper, and
mean average precision by torchmetrics (the `detection` extra: torchmetrics and pycocotools).

- `map_50`: AP at IoU 0.5, PASCAL VOC's criterion (the paper's Table 6), averaged over the
  classes; `map`: COCO's AP averaged over IoU 0.5, 0.55, ..., 0.95. Both from torchmetrics'
  `MeanAveragePrecision` with the pycocotools backend, so precision is interpolated at COCO's
  101 recall points (VOC 2007's devkit used 11, VOC 2010 on all points: the three differ by
  well under a point on most data). Classes without a ground-truth box in the split are left
  out of the mean, as COCO does.
- `attribute_map`: each attribute's average precision over every ground-truth box of the split
  (ranked by its predicted probability; torchmetrics' `multilabel_average_precision`, which
  sums precision at each positive, as scikit-learn does), averaged over the attributes that
  have at least one positive box. Attributes are predicted for the ground-truth boxes, as
  attribute-PASCAL's results are reported.

The metrics keep the split's detections on the CPU (a few per image) and compute once.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from dmtcore.errors import PluginError

DETECTION_EXTRA = "detection"


def import_torchmetrics_detection() -> Any:
    """torchmetrics' MeanAveragePrecision with its COCO backend, or a PluginError saying which
    extra to install (checked before a region task trains, not after its first epoch)."""
    try:
        import pycocotools  # noqa: F401  (MeanAveragePrecision's backend)
        from torchmetrics.detection import MeanAveragePrecision
    except ImportError as exc:
        raise PluginError(
            "detection metrics need torchmetrics and pycocotools: pip install "
            f"'dmt-vision[{DETECTION_EXTRA}]' (or pip install torchmetrics pycocotools); "
            f"missing: {exc.name or exc}"
        ) from exc
    return MeanAveragePrecision


def detection_loss(outputs: Any, targets: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    """FCOS's loss of the detection head's outputs (`region_heads.DetectionOutputs`)."""
    return outputs.loss(targets)


def attribute_bce(outputs: Any, targets: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    """Binary cross-entropy of the attributes of the ground-truth boxes only (the paper's
    foreground boxes), summed over the A attributes and scaled by 1/A (cross-stitch §6,
    'Scaling losses': 1/64 for attribute-PASCAL), averaged over the boxes: the mean over
    boxes × attributes. A batch without a box gives 0 (and no NaN)."""
    boxes = [t["boxes"] for t in targets]
    truth = torch.cat([t["attributes"] for t in targets])
    logits = outputs.logits(boxes).float()
    if not truth.numel():
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits, truth, reduction="mean")


REGION_LOSSES = {"fcos": detection_loss, "attribute_bce": attribute_bce}


class RegionMetricState:
    """A region task's metrics over a split, fed batch by batch (`MetricState` hands region
    kinds here)."""

    def __init__(self, kind: str, names: list[str], num_outputs: int) -> None:
        self.kind = kind
        self.names = list(names)
        self.num_outputs = num_outputs
        self.predictions: list[dict[str, torch.Tensor]] = []
        self.targets: list[dict[str, torch.Tensor]] = []
        self.scores: list[torch.Tensor] = []
        self.truth: list[torch.Tensor] = []
        import_torchmetrics_detection()

    def update(self, outputs: Any, labels: list[dict[str, torch.Tensor]]) -> None:
        if self.kind == "detection":
            for found, target in zip(outputs.detections(), labels, strict=True):
                self.predictions.append(
                    {
                        "boxes": found["boxes"].detach().float().cpu(),
                        "scores": found["scores"].detach().float().cpu(),
                        "labels": found["labels"].cpu(),
                    }
                )
                self.targets.append({k: v.cpu() for k, v in target.items()})
            return
        logits = outputs.logits([t["boxes"] for t in labels])
        self.scores.append(logits.detach().float().sigmoid().cpu())
        self.truth.append(torch.cat([t["attributes"] for t in labels]).cpu())

    def result(self) -> dict[str, float]:
        values = self._detection() if self.kind == "detection" else self._attributes()
        return {name: values[name] for name in self.names}

    def _detection(self) -> dict[str, float]:
        return detection_map(self.predictions, self.targets)

    def _attributes(self) -> dict[str, float]:
        scores = torch.cat(self.scores) if self.scores else torch.zeros(0, self.num_outputs)
        truth = torch.cat(self.truth) if self.truth else torch.zeros(0, self.num_outputs)
        return {"attribute_map": attribute_map(scores, truth)}


def detection_map(
    predictions: list[dict[str, torch.Tensor]], targets: list[dict[str, torch.Tensor]]
) -> dict[str, float]:
    """{"map_50", "map"} of per-image detections ({boxes, scores, labels}) against the truth
    ({boxes, labels}), boxes xyxy in pixels; NaN when the split has no ground-truth box."""
    if not any(len(t["boxes"]) for t in targets):
        return {"map_50": math.nan, "map": math.nan}
    mean_ap = import_torchmetrics_detection()(
        box_format="xyxy", iou_type="bbox", backend="pycocotools"
    )
    mean_ap.update(predictions, [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets])
    values = mean_ap.compute()
    return {"map_50": float(values["map_50"]), "map": float(values["map"])}


def attribute_map(scores: torch.Tensor, truth: torch.Tensor) -> float:
    """Mean over attributes with a positive box of each one's average precision; NaN when no
    attribute has one."""
    from torchmetrics.functional.classification import multilabel_average_precision

    present = truth.sum(0) > 0
    if not truth.numel() or not bool(present.any()):
        return math.nan
    per_attribute = multilabel_average_precision(
        scores[:, present], truth[:, present].long(), num_labels=int(present.sum()), average=None
    )
    return float(per_attribute.mean())
