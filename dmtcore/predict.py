"""Reading inputs for `dmt predict` and computing every requested task in one pass per batch.

Every input goes through one decoding function per format (`open_npy` + `decode_array` for
arrays, `decode_image` for encoded images) that validates it and brings it to float32 in the
model's scale, raising `DataError` naming the input. `dmt predict` and the registered pyfunc
model share them, so both read the same input the same way.

Scale: 8-bit images and uint8 arrays are divided by 255, 16-bit images and uint16 arrays by
65535; float images and float, bool or other integer arrays are taken as they are.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import struct
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dmtcore import interrupts
from dmtcore.data import adapt_images
from dmtcore.dense_outputs import PredictionWriter, readable_outputs
from dmtcore.errors import DataError
from dmtcore.model import MultiTaskModel
from dmtcore.names import InputSpec

MAX_IMAGE_PIXELS = 50_000_000  # far above any sane input, far below a decompression bomb
NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
VALID_ARRAYS = "expected a .npy file written by numpy.save holding H×W, C×H×W or N×C×H×W numbers"


def iter_batches(
    paths: Sequence[Path], input_spec: InputSpec, batch_size: int = 256
) -> Iterator[tuple[torch.Tensor, list[str]]]:
    """Images (PNG, JPEG, ...) and .npy arrays (H×W, C×H×W or N×C×H×W), decoded and adapted to
    the store's input spec, in batches of at most `batch_size`, with one label per image.
    Arrays are memory-mapped and read a batch at a time, so memory stays flat however many
    images there are."""
    pending: list[torch.Tensor] = []
    labels: list[str] = []

    def full() -> bool:
        return sum(len(b) for b in pending) >= batch_size

    for path in map(Path, paths):
        if not path.is_file():
            raise DataError(f"input {str(path)!r} does not exist")
        if path.suffix.lower() in (".npy", ".npz"):
            array = open_npy(path)
            single = len(array) == 1
            for start in range(0, len(array), batch_size):
                chunk = array[start : start + batch_size]
                pending.append(decode_array(chunk, input_spec, f"input {str(path)!r}"))
                labels += (
                    [str(path)] if single else [f"{path}[{start + i}]" for i in range(len(chunk))]
                )
                if full():
                    yield torch.cat(pending), labels
                    pending, labels = [], []
        else:
            image = decode_image(path, input_spec.channels, str(path))
            pending.append(adapt_images(image, input_spec))
            labels.append(str(path))
            if full():
                yield torch.cat(pending), labels
                pending, labels = [], []
    if pending:
        yield torch.cat(pending), labels


def open_npy(path: Path) -> np.ndarray:
    """A .npy file as an N×C×H×W view, memory-mapped rather than read, after checking what it
    is: numpy's own errors for an empty file, an .npz archive or a pickle are not about the
    user's file, and an empty dimension would only fail later, inside torch."""
    what = f"input {str(path)!r}"
    with path.open("rb") as file:
        magic = file.read(len(NPY_MAGIC))
    if not magic:
        raise DataError(f"{what} is empty; {VALID_ARRAYS}")
    if magic.startswith(ZIP_MAGIC):
        raise DataError(
            f"{what} is an .npz archive (numpy.savez), not a .npy array; "
            "save each array with numpy.save"
        )
    if magic != NPY_MAGIC:
        raise DataError(f"{what} is not a .npy file (no NUMPY header); {VALID_ARRAYS}")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{what} is not a readable .npy array: {exc}") from exc
    _check_dtype(array.dtype, what)
    shape = {2: (1, 1, *array.shape), 3: (1, *array.shape), 4: array.shape}.get(array.ndim)
    if shape is None:
        raise DataError(f"{what} has shape {array.shape}; {VALID_ARRAYS}")
    if shape[0] == 0:
        raise DataError(f"{what} holds no images")
    _check_not_empty(array.shape, what)
    return array.reshape(shape)


def decode_array(array: np.ndarray, input_spec: InputSpec, what: str) -> torch.Tensor:
    """A batch of numbers (N×C×H×W, or what `adapt_images` also takes) as float32 in the model's
    scale, finite, adapted to the store's input spec. The values are copied into memory torch
    may own: a memory-mapped array is read-only, and torch would warn about sharing it.
    `what` names the input in messages, e.g. "input 'x.npy'"."""
    _check_dtype(array.dtype, what)
    if array.ndim in (3, 4):
        _check_not_empty(array.shape, what)
    values = np.array(array, dtype=np.float32)
    if array.dtype.kind == "u" and array.dtype.itemsize <= 2:
        values /= np.float32(2 ** (8 * array.dtype.itemsize) - 1)
    images = torch.from_numpy(values)
    if not torch.isfinite(images).all():
        raise DataError(f"{what} has NaN or infinite values")
    return adapt_images(images, input_spec)


def _check_dtype(dtype: np.dtype, what: str) -> None:
    if dtype.kind not in "fiub":
        raise DataError(
            f"{what} has dtype {dtype}; expected numbers (uint8 and uint16 are scaled "
            "to [0, 1] by their range, floats are taken as they are)"
        )


def _check_not_empty(shape: tuple[int, ...], what: str) -> None:
    if 0 in shape:
        raise DataError(
            f"{what} has shape {tuple(shape)}; images need at least 1 channel and 1×1 pixels"
        )


def decode_image(source: Path | io.BytesIO, channels: int, label: str) -> torch.Tensor:
    """One encoded image (a file, or bytes in a BytesIO) as a 1×C×H×W float batch in [0, 1]
    (C is `channels`, or 1 for a one-band image of more than 8 bits), scaled by its bit depth,
    refusing anything above a sane pixel count before decoding it (decompression bombs)."""
    from PIL import Image, UnidentifiedImageError

    _check_declared_size(source, label)
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                array = _pixels(image, channels, label)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{found.group(1)} pixels" if found else "too large"
        raise DataError(
            f"input {label!r} is {size}, above the limit of {MAX_IMAGE_PIXELS}"
        ) from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"input {label!r} is not a readable image: {exc}") from exc
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return torch.from_numpy(np.array(array, dtype=np.float32, order="C"))[None]


def _pixels(image: Any, channels: int, label: str) -> np.ndarray:
    """H×W or H×W×C float32 in [0, 1], possibly read-only (Pillow's memory). Converting a 16-bit
    or 32-bit image to 8 bits would clip rather than scale it (a 16-bit PNG would read as
    white), so those are scaled here."""
    if image.mode.startswith("I;16"):
        return np.asarray(image, dtype=np.float32) / np.float32(65535)
    if image.mode == "I":
        values = np.asarray(image)
        low, high = int(values.min()), int(values.max())
        if low < 0 or high > 65535:
            raise DataError(
                f"input {label!r} has 32-bit integer pixels from {low} to {high}; expected "
                "0 to 65535 (16-bit)"
            )
        return values.astype(np.float32) / np.float32(65535)
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float32)
        if not np.isfinite(values).all():
            raise DataError(f"input {label!r} has NaN or infinite values")
        return values
    return np.asarray(image.convert("L" if channels == 1 else "RGB"), dtype=np.float32) / 255


def _check_declared_size(source: Path | io.BytesIO, label: str) -> None:
    """Name an empty PNG for what it is: Pillow refuses one as 'cannot identify image file'."""
    if isinstance(source, Path):
        with source.open("rb") as file:
            head = file.read(24)
    else:
        head = source.getvalue()[:24]
    if head[:8] == PNG_SIGNATURE and head[12:16] == b"IHDR" and len(head) == 24:
        width, height = struct.unpack(">II", head[16:24])
        if width == 0 or height == 0:
            raise DataError(
                f"input {label!r} is a PNG of {width}×{height} pixels; an image needs at least 1×1"
            )


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


def task_outputs(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """What `predict` needs to know of each stored task's output: kind, size, class names."""
    return {
        t["name"]: {
            "kind": t["output"]["kind"],
            "size": t["output"]["size"],
            "class_names": t.get("class_names"),
        }
        for t in manifest["tasks"]
    }


def predict_batches(
    model: MultiTaskModel, batches: Iterable[torch.Tensor], tasks: Sequence[str]
) -> Iterator[dict[str, torch.Tensor]]:
    """Every requested task's raw outputs per batch (float32, on the CPU), computing all tasks
    in one forward pass per batch; Ctrl-C stops at the next batch."""
    model.eval()
    device = next(model.parameters()).device
    with torch.inference_mode():
        for batch in batches:
            interrupts.check()
            yield {
                name: logits.float().cpu()
                for name, logits in model(batch.to(device), list(tasks)).items()
            }


def predict(
    model: MultiTaskModel,
    batches: Iterable[torch.Tensor],
    tasks: Sequence[str],
    outputs: dict[str, dict[str, Any]],
) -> dict[str, dict[str, list[Any]]]:
    """Per task: the prediction of every image (class, labels, values, or a map for dense
    tasks) and, where the task has them, probabilities (see `readable_outputs`).
    `outputs` is `task_outputs(manifest)`."""
    result: dict[str, dict[str, list[Any]]] = {t: {} for t in tasks}
    for logits in predict_batches(model, batches, tasks):
        for name, values in logits.items():
            spec = outputs[name]
            for key, items in readable_outputs(
                spec["kind"], values, spec.get("class_names")
            ).items():
                result[name].setdefault(key, []).extend(items)
    return result


def predict_to_folder(
    model: MultiTaskModel,
    labelled_batches: Iterable[tuple[torch.Tensor, list[str]]],
    tasks: Sequence[str],
    outputs: dict[str, dict[str, Any]],
    directory: Path,
) -> PredictionWriter:
    """`dmt predict --out`: every batch's dense maps written as files as soon as computed."""
    writer = PredictionWriter(directory, list(tasks), outputs)
    pending: list[list[str]] = []

    def batches() -> Iterator[torch.Tensor]:
        for images, labels in labelled_batches:
            pending.append(labels)
            yield images

    for logits in predict_batches(model, batches(), tasks):
        writer.add(logits, pending.pop(0))
    return writer
