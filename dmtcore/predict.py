"""Reading inputs for `dmt predict` and computing every requested task in one pass per batch."""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dmtcore.data import adapt_images
from dmtcore.errors import DataError
from dmtcore.metrics import probabilities
from dmtcore.model import MultiTaskModel
from dmtcore.names import InputSpec

MAX_IMAGE_PIXELS = 50_000_000  # far above any sane input, far below a decompression bomb


def iter_batches(
    paths: Sequence[Path], input_spec: InputSpec, batch_size: int = 256
) -> Iterator[tuple[torch.Tensor, list[str]]]:
    """Images (PNG, JPEG, ...) as float in [0, 1], or .npy arrays (H×W, C×H×W or N×C×H×W),
    adapted to the store's input spec, in batches of at most `batch_size`, with one label per
    image. Arrays are memory-mapped and read a batch at a time, so memory stays flat however
    many images there are."""
    pending: list[torch.Tensor] = []
    labels: list[str] = []

    def full() -> bool:
        return sum(len(b) for b in pending) >= batch_size

    for path in map(Path, paths):
        if not path.is_file():
            raise DataError(f"input {str(path)!r} does not exist")
        if path.suffix.lower() == ".npy":
            array = _open_npy(path)
            single = len(array) == 1
            for start in range(0, len(array), batch_size):
                chunk = np.ascontiguousarray(array[start : start + batch_size], dtype=np.float32)
                pending.append(_adapted(torch.from_numpy(chunk), path, input_spec))
                labels += (
                    [str(path)] if single else [f"{path}[{start + i}]" for i in range(len(chunk))]
                )
                if full():
                    yield torch.cat(pending), labels
                    pending, labels = [], []
        else:
            pending.append(_adapted(_read_image(path, input_spec.channels), path, input_spec))
            labels.append(str(path))
            if full():
                yield torch.cat(pending), labels
                pending, labels = [], []
    if pending:
        yield torch.cat(pending), labels


def _adapted(batch: torch.Tensor, path: Path, input_spec: InputSpec) -> torch.Tensor:
    if not torch.isfinite(batch).all():
        raise DataError(f"input {str(path)!r} has NaN or infinite values")
    return adapt_images(batch, input_spec)


def _open_npy(path: Path) -> np.ndarray:
    """A .npy file as an N×C×H×W view, memory-mapped rather than read where possible."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise DataError(f"input {str(path)!r} is not a readable .npy array: {exc}") from exc
    if array.dtype.kind not in "fiub":
        raise DataError(f"input {str(path)!r} has dtype {array.dtype}; expected numbers")
    shape = {2: (1, 1, *array.shape), 3: (1, *array.shape), 4: array.shape}.get(array.ndim)
    if shape is None:
        raise DataError(
            f"input {str(path)!r} has shape {array.shape}; expected H×W, C×H×W or N×C×H×W"
        )
    if shape[0] == 0:
        raise DataError(f"input {str(path)!r} holds no images")
    return array.reshape(shape)


def _read_image(path: Path, channels: int) -> torch.Tensor:
    return decode_image(path, channels, str(path))


def decode_image(source: Path | io.BytesIO, channels: int, label: str) -> torch.Tensor:
    """One encoded image (a file, or bytes in a BytesIO) as a 1×C×H×W float batch in [0, 1],
    refusing anything above a sane pixel count before decoding it (decompression bombs)."""
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    try:
        with Image.open(source) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise DataError(
                    f"input {label!r} is {image.width}×{image.height} pixels, above the limit of "
                    f"{MAX_IMAGE_PIXELS}"
                )
            image = image.convert("L" if channels == 1 else "RGB")
            array = np.asarray(image, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise DataError(f"input {label!r} is not a readable image: {exc}") from exc
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(array))[None]


def decode_images(values: Sequence[Any], input_spec: InputSpec) -> torch.Tensor:
    """Images given as file paths, raw bytes, or base64 text (what JSON requests carry),
    adapted to the store's input spec."""
    batches = []
    for index, value in enumerate(values):
        label = f"image #{index}"
        if isinstance(value, bytes | bytearray):
            source: Path | io.BytesIO = io.BytesIO(value)
        elif isinstance(value, str) and Path(value).is_file():
            source, label = Path(value), value
        elif isinstance(value, str):
            try:
                source = io.BytesIO(base64.b64decode(value, validate=True))
            except (binascii.Error, ValueError) as exc:
                raise DataError(
                    f"{label} is neither an existing file nor base64-encoded image bytes"
                ) from exc
        else:
            raise DataError(
                f"{label} is a {type(value).__name__}; expected a path, bytes or base64 text"
            )
        batches.append(adapt_images(decode_image(source, input_spec.channels, label), input_spec))
    if not batches:
        raise DataError("no images given")
    return torch.cat(batches)


def predict(
    model: MultiTaskModel,
    batches: Iterable[torch.Tensor],
    tasks: Sequence[str],
    outputs: dict[str, dict[str, Any]],
) -> dict[str, dict[str, list[Any]]]:
    """Per task: the predicted class (or values) and probabilities of every image, computing all
    tasks in one forward pass per batch. `outputs` maps task -> {'kind', 'class_names'}."""
    model.eval()
    device = next(model.parameters()).device
    result: dict[str, dict[str, list[Any]]] = {
        t: {"prediction": [], "probabilities": []} for t in tasks
    }
    with torch.inference_mode():
        for batch in batches:
            for name, logits in model(batch.to(device), tasks).items():
                kind = outputs[name]["kind"]
                probs = probabilities(kind, logits.float().cpu())
                if kind in ("binary", "multiclass"):
                    index = probs.argmax(1).tolist()
                    names = outputs[name].get("class_names")
                    prediction: list[Any] = [names[i] for i in index] if names else index
                elif kind == "multilabel":
                    prediction = (probs > 0.5).int().tolist()
                else:
                    prediction = probs.tolist()
                result[name]["prediction"] += prediction
                result[name]["probabilities"] += probs.tolist()
    return result
