"""Region-level heads, assembled from torchvision's detection parts on a column's stages.

Both heads read the task's own column at several stages, not only the last: in dmt each stage
of a column already takes in what the transfer connections bring from the frozen columns, so
a feature pyramid over them is where the other tasks' knowledge reaches the boxes.

- **Pyramid.** `pyramid_stages` picks, for every map size a spatial column produces at stride
  4 or coarser, the last stage of that size (dmt-cnn spatial=true at 48×48: stage2 12×12 and
  stage5 6×6; resnet18 dilated: layer1 and layer4). torchvision's `FeaturePyramidNetwork` makes
  them one width, top-down, so the fine level sees the deepest features.
- **Detection: FCOS** (`StageFCOS`, torchvision's `FCOS` with its `FCOSHead`, loss and
  post-processing). A one-stage, anchor-free detector: one location per map cell, no anchor
  shapes to tune for tiny objects, no proposal stage (Faster R-CNN's RPN and RoI heads double
  the work per image) and no 9 anchors per cell (RetinaNet): on a CPU and on 32..64 pixel
  images the cheapest of torchvision's detectors, and its loss has no sampling of boxes. The
  pyramid gets one more level by max pooling (`LastLevelMaxPool`) for objects as large as the
  image. FCOS's own `forward` (which resizes and normalises images, then runs a backbone on
  them) is not used: the column has run already.
- **Box attributes** (`BoxAttributeHead`): torchvision's `MultiScaleRoIAlign` pools each box
  from the pyramid level its size maps to, `TwoMLPHead` (Faster R-CNN's box head) and one
  linear layer give one logit per attribute. It classifies the boxes it is given: the
  ground-truth boxes in training and evaluation (the foreground boxes, as in the paper),
  the boxes a detection task found at `dmt predict`.

The heads return their outputs unreduced (`DetectionOutputs`, `BoxFeatures`): a detector's
loss needs the ground truth to assign locations, and the attribute head needs the boxes, so
the loss (`dmtcore.tasks.metrics`) and the metrics finish the computation with the labels.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dmtcore.errors import InvalidValueError

# Detections kept per image: scenes hold at most 3 objects, VOC images rarely more than 20.
DETECTIONS_PER_IMAGE = 50
# Score threshold for the detections evaluated (COCO practice: low, so that recall is
# measured) and the candidates kept per level before non-maximum suppression.
EVAL_SCORE_THRESHOLD = 0.05
TOPK_CANDIDATES = 200
NMS_THRESHOLD = 0.6  # torchvision's FCOS default
# RoI-aligned features per box: a 5×5 grid (boxes in 32..64 pixel images cover a handful of
# stride-4 cells), each cell averaged from 2×2 bilinear samples.
ROI_SIZE = 5
ROI_SAMPLING = 2
MIN_PYRAMID_STRIDE = 4
ATTRIBUTE_PYRAMID_WIDTH = 64  # the attribute head's pyramid channels (its `hidden` is the MLP's)


def pyramid_stages(stage_shapes: list[tuple[int, ...]], input_size: tuple[int, int]) -> list[int]:
    """Indices of the stages the pyramid reads: for each map size of stride ≥ 4, its last stage.

    Refused, naming the option to use, for a column whose last stage is flat."""
    if len(stage_shapes[-1]) != 3:
        raise InvalidValueError(
            f"a region head needs spatial features (C×H×W), but the column's last stage outputs "
            f"flat features of shape {tuple(stage_shapes[-1])}; create the store with a spatial "
            "column, e.g. --backbone dmt-cnn --backbone-option spatial=true, or --backbone "
            "resnet18 --backbone-option dilated=true"
        )
    chosen: dict[tuple[int, int], int] = {}
    for index, shape in enumerate(stage_shapes):
        if len(shape) == 3 and input_size[0] // shape[1] >= MIN_PYRAMID_STRIDE:
            chosen[tuple(shape[1:])] = index
    if not chosen:  # a column that never reaches stride 4 (tiny inputs): its last stage
        chosen[tuple(stage_shapes[-1][1:])] = len(stage_shapes) - 1
    return sorted(chosen.values())


def _pyramid(
    stage_shapes: list[tuple[int, ...]], stages: list[int], width: int, extra: bool
) -> nn.Module:
    from torchvision.ops import FeaturePyramidNetwork
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    return FeaturePyramidNetwork(
        [stage_shapes[i][0] for i in stages],
        width,
        extra_blocks=LastLevelMaxPool() if extra else None,
    )


def _levels(features: list[torch.Tensor], stages: list[int]) -> OrderedDict[str, torch.Tensor]:
    return OrderedDict((f"stage{i + 1}", features[i]) for i in stages)


@dataclass
class DetectionOutputs:
    """FCOS's raw outputs for a batch and its locations: what the loss and the detections
    are computed from (`StageFCOS.loss`, `StageFCOS.detections`)."""

    head: StageFCOS
    head_outputs: dict[str, torch.Tensor]
    anchors: list[torch.Tensor]
    num_anchors_per_level: list[int]

    def loss(self, targets: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        return self.head.loss(self, targets)

    def detections(self, score_threshold: float = EVAL_SCORE_THRESHOLD) -> list[dict[str, Any]]:
        return self.head.detections(self, score_threshold)


@dataclass
class BoxFeatures:
    """The attribute head's pyramid for a batch: attribute logits for any boxes of its images."""

    head: BoxAttributeHead
    levels: OrderedDict[str, torch.Tensor]

    def logits(self, boxes: list[torch.Tensor]) -> torch.Tensor:
        """(total boxes)×A logits, the boxes of image 0 first (each n_i×4, store pixels)."""
        return self.head.classify(self.levels, boxes)


def _fcos_class() -> type:
    from torchvision.models.detection.fcos import FCOS

    return FCOS


class StageFCOS(nn.Module):
    """torchvision's FCOS over a feature pyramid of the column's stages (see the module's
    docstring). Weights: `pyramid.*` (FeaturePyramidNetwork) and `fcos.head.*` (FCOSHead)."""

    reads_stages = True  # MultiTaskModel hands it every stage's output, not only the last

    def __init__(
        self,
        stage_shapes: list[tuple[int, ...]],
        width: int,
        num_classes: int,
        input_size: tuple[int, int],
        convolutions: int = 2,
    ) -> None:
        super().__init__()
        from torchvision.models.detection.anchor_utils import AnchorGenerator
        from torchvision.models.detection.fcos import FCOSHead

        self.input_size = tuple(input_size)
        self.stages = pyramid_stages(stage_shapes, self.input_size)
        self.pyramid = _pyramid(stage_shapes, self.stages, width, extra=True)
        strides = [self.input_size[0] // stage_shapes[i][1] for i in self.stages]
        strides.append(strides[-1] * 2)  # the max-pooled level
        # One location per cell, as wide as the level's stride (FCOS's convention).
        anchors = AnchorGenerator(tuple((s,) for s in strides), ((1.0,),) * len(strides))
        fcos_type = _fcos_class()
        backbone = nn.Identity()
        backbone.out_channels = width  # FCOS asks; its forward (and so this) is never run
        self.fcos = fcos_type(
            backbone,
            num_classes,
            min_size=min(self.input_size),
            max_size=max(self.input_size),
            image_mean=[0.0],
            image_std=[1.0],
            anchor_generator=anchors,
            head=FCOSHead(width, 1, num_classes, num_convs=convolutions),
            score_thresh=EVAL_SCORE_THRESHOLD,
            nms_thresh=NMS_THRESHOLD,
            detections_per_img=DETECTIONS_PER_IMAGE,
            topk_candidates=TOPK_CANDIDATES,
        )
        del self.fcos.backbone  # no weights of its own, and not part of this head

    def forward(self, features: list[torch.Tensor] | torch.Tensor) -> DetectionOutputs:
        from torchvision.models.detection.image_list import ImageList

        if torch.is_tensor(features):  # a model that hands over its last stage only
            features = [features]
        levels = list(self.pyramid(_levels(features, self.stages)).values())
        head_outputs = self.fcos.head(levels)
        count = levels[0].shape[0]
        # The anchor generator reads only the batch's image size (and its dtype and device).
        images = ImageList(
            levels[0].new_empty((count, 0, *self.input_size)), [self.input_size] * count
        )
        anchors = self.fcos.anchor_generator(images, levels)
        per_level = [level.shape[2] * level.shape[3] for level in levels]
        return DetectionOutputs(self, head_outputs, anchors, per_level)

    def loss(
        self, outputs: DetectionOutputs, targets: list[dict[str, torch.Tensor]]
    ) -> torch.Tensor:
        """FCOS's loss (focal classification + GIoU box regression + centre-ness, each per
        foreground location), summed."""
        head_outputs = {k: v.float() for k, v in outputs.head_outputs.items()}
        anchors = [a.float() for a in outputs.anchors]
        parts = self.fcos.compute_loss(
            targets, head_outputs, anchors, outputs.num_anchors_per_level
        )
        return sum(parts.values())

    def detections(self, outputs: DetectionOutputs, score_threshold: float) -> list[dict[str, Any]]:
        """Per image {boxes n×4 (store pixels, clipped), scores n, labels n}, after FCOS's
        per-level top-k, score threshold and class-wise non-maximum suppression."""
        per_level = outputs.num_anchors_per_level
        split = {
            key: list(value.float().split(per_level, dim=1))
            for key, value in outputs.head_outputs.items()
        }
        anchors = [list(a.float().split(per_level)) for a in outputs.anchors]
        previous, self.fcos.score_thresh = self.fcos.score_thresh, score_threshold
        try:
            count = len(outputs.anchors)
            return self.fcos.postprocess_detections(split, anchors, [self.input_size] * count)
        finally:
            self.fcos.score_thresh = previous


class BoxAttributeHead(nn.Module):
    """Attribute logits of given boxes: RoI-aligned pyramid features through Faster R-CNN's
    two-layer box head and a linear classifier (see the module's docstring)."""

    reads_stages = True

    def __init__(
        self,
        stage_shapes: list[tuple[int, ...]],
        width: int,
        num_attributes: int,
        input_size: tuple[int, int],
    ) -> None:
        super().__init__()
        from torchvision.models.detection.faster_rcnn import TwoMLPHead
        from torchvision.ops import MultiScaleRoIAlign

        self.input_size = tuple(input_size)
        self.stages = pyramid_stages(stage_shapes, self.input_size)
        pyramid_width = ATTRIBUTE_PYRAMID_WIDTH
        self.pyramid = _pyramid(stage_shapes, self.stages, pyramid_width, extra=False)
        self.pool = MultiScaleRoIAlign(
            [f"stage{i + 1}" for i in self.stages], ROI_SIZE, ROI_SAMPLING
        )
        self.box_head = TwoMLPHead(pyramid_width * ROI_SIZE * ROI_SIZE, width)
        self.classifier = nn.Linear(width, num_attributes)

    def forward(self, features: list[torch.Tensor] | torch.Tensor) -> BoxFeatures:
        if torch.is_tensor(features):  # a model that hands over its last stage only
            features = [features]
        return BoxFeatures(self, self.pyramid(_levels(features, self.stages)))

    def classify(
        self, levels: OrderedDict[str, torch.Tensor], boxes: list[torch.Tensor]
    ) -> torch.Tensor:
        count = next(iter(levels.values())).shape[0]
        if len(boxes) != count:
            raise ValueError(f"{len(boxes)} box lists for a batch of {count} images")
        boxes = [b.to(next(iter(levels.values())).dtype) for b in boxes]
        pooled = self.pool(levels, boxes, [self.input_size] * count)
        return self.classifier(self.box_head(pooled))


def build_region_head(
    kind: str,
    hidden: tuple[int, ...],
    stage_shapes: list[tuple[int, ...]],
    num_outputs: int,
    input_size: tuple[int, int],
) -> nn.Module:
    """`fcos`: a `StageFCOS` for `num_outputs` classes, its pyramid `hidden[0]` wide and each
    tower `len(hidden)` convolutions deep; `roi-mlp`: a `BoxAttributeHead` for `num_outputs`
    attributes, its fully connected layers `hidden[0]` wide."""
    if kind == "fcos":
        return StageFCOS(stage_shapes, hidden[0], num_outputs, input_size, len(hidden))
    return BoxAttributeHead(stage_shapes, hidden[0], num_outputs, input_size)
