"""What a prediction of a pixel-level task is, as arrays and as files a person can look at.

A dense task predicts one map per image at the store's input size: class ids (H×W) for
segmentation, depth (H×W) and unit normals (3×H×W). `dmt predict --out DIR` writes each map
twice, as a viewable PNG (a palette for classes, viridis for depth with near bright, the usual
(n + 1) / 2 RGB encoding for normals) and as the raw `.npy` array, so nothing is lost to
8-bit colour. Files are written as each batch is computed: memory stays flat on large inputs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dmtcore.errors import StoreError
from dmtcore.inference.region_outputs import readable_regions
from dmtcore.tasks.metrics import probabilities
from dmtcore.tasks.spec import DENSE_KINDS, REGION_KINDS

UNSAFE_FILE_CHARACTERS = re.compile(r"[^A-Za-z0-9._-]+")


def dense_maps(kind: str, logits: torch.Tensor) -> np.ndarray:
    """A batch's maps: class ids N×H×W (int32), depth N×H×W (float32), unit normals N×3×H×W."""
    values = probabilities(kind, logits.float())
    if kind == "segmentation":
        return values.argmax(1).to(torch.int32).numpy()
    if kind == "depth":
        return values[:, 0].numpy()
    return values.numpy()


def readable_outputs(kind: str, logits: Any, class_names: list[str] | None) -> dict[str, list[Any]]:
    """A batch's predictions as JSON-able lists: `prediction` per image (class name or index,
    0/1 labels, values, a map, or a list of boxes), and `probabilities` where the task has them
    (per pixel for segmentation; depth and normal maps are values, not probabilities; a
    region task's are inside each box)."""
    if kind in REGION_KINDS:
        return readable_regions(kind, logits, class_names)
    if kind in DENSE_KINDS:
        out: dict[str, list[Any]] = {"prediction": dense_maps(kind, logits).tolist()}
        if kind == "segmentation":
            out["probabilities"] = probabilities(kind, logits.float()).tolist()
        return out
    probs = probabilities(kind, logits.float())
    if kind in ("binary", "multiclass"):
        index = probs.argmax(1).tolist()
        prediction: list[Any] = [class_names[i] for i in index] if class_names else index
    elif kind == "multilabel":
        prediction = (probs > 0.5).int().tolist()
    else:
        prediction = probs.tolist()
    return {"prediction": prediction, "probabilities": probs.tolist()}


def map_image(kind: str, values: np.ndarray, num_classes: int) -> Any:
    """One predicted map as a PIL image."""
    from dmtcore.tasks.visualize import depth_image, normals_image, segmentation_image

    if kind == "segmentation":
        return segmentation_image(values, num_classes)
    if kind == "depth":
        return depth_image(values, valid=np.isfinite(values))
    return normals_image(values)


def file_stem(number: int, label: str) -> str:
    """`000003-room` for the fourth input `photos/room.png` (or `x.npy[3]`): numbered, so
    inputs of the same name never overwrite each other, and free of path characters."""
    name = Path(label.split("[")[0]).stem or "input"
    return f"{number:06d}-{UNSAFE_FILE_CHARACTERS.sub('_', name)[:60]}"


class PredictionWriter:
    """Writes every dense map of a prediction run into `directory` (PNG + .npy per image and
    task), a picture of every image's boxes per detection task (`region_pictures`), and the
    whole run's predictions as `predictions.json`, where a dense task's entry names its files
    instead of holding the map, and a row's `pictures` names each region task's picture."""

    def __init__(self, directory: Path, tasks: list[str], outputs: dict[str, dict[str, Any]]):
        from dmtcore.inference.region_pictures import picture_groups

        self.directory = Path(directory)
        self.tasks = tasks
        self.outputs = outputs
        self.pictures = picture_groups(
            [t for t in tasks if outputs[t]["kind"] in REGION_KINDS], outputs
        )
        self.rows: list[dict[str, Any]] = []
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the output folder {str(directory)!r}: {exc}") from exc

    def add(
        self, logits: dict[str, Any], labels: list[str], images: torch.Tensor | None = None
    ) -> None:
        """One batch: its predictions, the labels of its inputs, and (for the pictures of
        region tasks) the images as the model took them."""
        first = len(self.rows)
        rows = [{"input": label} for label in labels]
        for name in self.tasks:
            kind = self.outputs[name]["kind"]
            if kind in DENSE_KINDS:
                maps = dense_maps(kind, logits[name])
                for offset, (row, values) in enumerate(zip(rows, maps, strict=True)):
                    row[name] = self._write(first + offset, row["input"], name, kind, values)
            else:
                predicted = readable_outputs(
                    kind, logits[name], self.outputs[name].get("class_names")
                )["prediction"]
                for row, value in zip(rows, predicted, strict=True):
                    row[name] = value
        if self.pictures and images is not None:
            shown = [name for group in self.pictures.values() for name in group]
            for offset, row in enumerate(rows):
                values = {name: logits[name][offset] for name in shown}
                row["pictures"] = self._draw(first + offset, row["input"], images[offset], values)
        self.rows += rows

    def _draw(
        self, number: int, label: str, image: torch.Tensor, values: dict[str, Any]
    ) -> dict[str, str]:
        from dmtcore.inference.region_pictures import region_picture

        files = {}
        for name, shown in self.pictures.items():
            png = self.directory / f"{file_stem(number, label)}.{name}.png"
            picture = region_picture(image, shown, values, self.outputs)
            self._save(picture, png)
            files.update(dict.fromkeys(shown, png.name))
        return {task: files[task] for task in self.tasks if task in files}

    def _write(self, number: int, label: str, task: str, kind: str, values: np.ndarray) -> str:
        stem = f"{file_stem(number, label)}.{task}"
        png, npy = self.directory / f"{stem}.png", self.directory / f"{stem}.npy"
        try:
            np.save(npy, values, allow_pickle=False)
        except OSError as exc:
            raise StoreError(
                f"cannot write {npy.name} into {str(self.directory)!r}: {exc}"
            ) from exc
        self._save(map_image(kind, values, self.outputs[task]["size"]), png)
        return png.name

    def _save(self, picture: Any, png: Path) -> None:
        try:
            picture.save(png)
        except OSError as exc:
            raise StoreError(
                f"cannot write {png.name} into {str(self.directory)!r}: {exc}"
            ) from exc

    def finish(self, summary: dict[str, Any]) -> Path:
        path = self.directory / "predictions.json"
        try:
            path.write_text(json.dumps({**summary, "rows": self.rows}, indent=2) + "\n")
        except OSError as exc:
            raise StoreError(f"cannot write {path}: {exc}") from exc
        return path


PREVIEW_IMAGES = 4


def dense_preview(model: Any, spec: Any, batches: Any, count: int = PREVIEW_IMAGES) -> Any:
    """A grid of the first `count` validation images of a dense task: input, ground truth and
    prediction side by side (what MLflow shows for the run, to see at a glance what the
    numbers mean)."""
    from dmtcore.model.multitask import evaluating
    from dmtcore.tasks.visualize import depth_image, grid_image, image_from_array

    images, labels, _ = next(iter(batches.indexed()))
    images, labels = images[:count], labels[:count]
    with evaluating(model), torch.inference_mode():
        logits = model(images, [spec.name])[spec.name].float().cpu()
    predicted = dense_maps(spec.output, logits)
    truth = labels.cpu().numpy()
    size = int(spec.num_outputs or 1)
    rows = []
    for index in range(len(images)):
        if spec.output == "depth":  # 0 marks pixels without ground truth: black
            truth_image = depth_image(truth[index][0])
        else:
            truth_image = map_image(spec.output, truth[index], size)
        rows.append(
            [
                image_from_array(images[index].float().cpu().numpy()),
                truth_image,
                map_image(spec.output, predicted[index], size),
            ]
        )
    return grid_image(rows)
