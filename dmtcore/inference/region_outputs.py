"""What a prediction of a region-level task is: boxes, as tensors and as JSON.

`dmt predict --json` (and the MLflow pyfunc model) give, per task, one list per image:

- detection: `[{"box": [x1, y1, x2, y2], "label": class name (or id), "score": s}, ...]`,
  boxes in pixels of the store's input, best first, those scoring at least
  `PREDICT_SCORE_THRESHOLD` after FCOS's non-maximum suppression;
- box-attributes: `[{"box": [...], "attributes": [names with probability ≥ 0.5],
  "probabilities": [one per attribute]}, ...]` for the boxes its detection task found in the
  same pass (`boxes_from` in the manifest, else the store's one detection task).
"""

from __future__ import annotations

from typing import Any

import torch

from dmtcore.errors import InvalidValueError

# torchvision's FCOS keeps detections scoring 0.2 or more by default; evaluation keeps far
# lower ones (region_heads.EVAL_SCORE_THRESHOLD) so that mAP measures recall as well.
PREDICT_SCORE_THRESHOLD = 0.2
ATTRIBUTE_THRESHOLD = 0.5


def boxes_source(manifest: dict[str, Any], task: dict[str, Any]) -> str | None:
    """The detection task whose boxes a box-attributes task describes at predict: the one it
    declares when the store holds it, else the store's only detection task, else None."""
    detectors = [t["name"] for t in manifest["tasks"] if t["output"]["kind"] == "detection"]
    declared = task.get("boxes_from")
    if declared in detectors:
        return declared
    return detectors[0] if len(detectors) == 1 else None


def check_boxes_sources(tasks: list[str], outputs: dict[str, dict[str, Any]]) -> dict[str, str]:
    """task -> detection task, for the requested box-attributes tasks; a task with no
    detection task to take boxes from is refused, naming what the store holds."""
    sources = {}
    for name in tasks:
        spec = outputs[name]
        if spec["kind"] != "box-attributes":
            continue
        if spec.get("boxes_from") is None:
            detectors = [n for n, o in outputs.items() if o["kind"] == "detection"]
            held = ", ".join(detectors) if detectors else "none"
            raise InvalidValueError(
                f"task {name!r} predicts the attributes of detected boxes, but this store has no "
                f"one detection task to find them (detection tasks: {held}); add one, e.g. "
                "'dmt add-task scenes.detection', or leave the task out with --task"
            )
        sources[name] = spec["boxes_from"]
    return sources


def region_predictions(
    raw: dict[str, Any],
    tasks: list[str],
    outputs: dict[str, dict[str, Any]],
    sources: dict[str, str],
) -> dict[str, list[dict[str, torch.Tensor]]]:
    """Per region task of `tasks`, one dict of CPU tensors per image: {boxes, scores, labels}
    for detection, {boxes, probabilities} for box-attributes (of its source's boxes)."""
    found: dict[str, list[dict[str, torch.Tensor]]] = {}

    def detections(name: str) -> list[dict[str, torch.Tensor]]:
        if name not in found:
            found[name] = [
                {key: value.cpu() for key, value in image.items()}
                for image in raw[name].detections(PREDICT_SCORE_THRESHOLD)
            ]
        return found[name]

    result = {}
    for name in tasks:
        kind = outputs[name]["kind"]
        if kind == "detection":
            result[name] = detections(name)
        elif kind == "box-attributes":
            boxes = [image["boxes"] for image in detections(sources[name])]
            device = next(iter(raw[name].levels.values())).device
            logits = raw[name].logits([b.to(device) for b in boxes]).float().sigmoid().cpu()
            per_image = logits.split([len(b) for b in boxes])
            result[name] = [
                {"boxes": b, "probabilities": p} for b, p in zip(boxes, per_image, strict=True)
            ]
    return result


def attribute_names(probabilities: list[float], class_names: list[str] | None) -> list[Any]:
    """The attributes a box has (probability ≥ ATTRIBUTE_THRESHOLD), by name, else by index."""
    return [
        class_names[i] if class_names else i
        for i, p in enumerate(probabilities)
        if p >= ATTRIBUTE_THRESHOLD
    ]


def readable_regions(
    kind: str, values: list[dict[str, torch.Tensor]], class_names: list[str] | None
) -> dict[str, list[Any]]:
    """A batch's region predictions as JSON-able lists: `prediction` per image, a list of
    boxes (see the module's docstring)."""
    images = []
    for image in values:
        boxes = image["boxes"].tolist()
        if kind == "detection":
            labels = image["labels"].tolist()
            images.append(
                [
                    {
                        "box": box,
                        "label": class_names[label] if class_names else label,
                        "score": score,
                    }
                    for box, label, score in zip(
                        boxes, labels, image["scores"].tolist(), strict=True
                    )
                ]
            )
        else:
            rows = image["probabilities"].tolist()
            images.append(
                [
                    {
                        "box": box,
                        "attributes": attribute_names(row, class_names),
                        "probabilities": row,
                    }
                    for box, row in zip(boxes, rows, strict=True)
                ]
            )
    return {"prediction": images}
