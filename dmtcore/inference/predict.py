"""Reading inputs for `dmt predict` and computing every requested task in one pass per batch.

Every input goes through one decoding function per format (`open_npy` + `decode_array` for
arrays, `decode_image` for encoded images) that validates it and brings it to float32 in the
model's scale, raising `DataError` naming the input. `dmt predict`, the registered pyfunc
model and the `imagefolder` plugin's training images (`read_image`) share them, so every
path reads the same pixels the same way.

Scale: 8-bit images and uint8 arrays are divided by 255, 16-bit images and uint16 arrays by
65535; float images and float, bool or other integer arrays are taken as they are, and an
array must then be in [0, 1]: raw 0–16 or 0–255 floats would give confident wrong answers.

Layouts (`array_layout`): an array is read the one way its shape allows, whatever its height
and width, and refused, naming its shape, when no way or more than one way fits.

Size: one limit for every format, `MAX_IMAGE_PIXELS` per image (H × W), checked before any
pixel is decoded or copied: from an image's header (Pillow's decompression-bomb guard, and a
PNG's IHDR) and from a .npy file's header, so a 9000 × 9000 array is refused as its PNG is,
without the gigabytes that reading it would take.

Conversions: every image of any format is brought to the store's input by `adapt_images`:
colour → grey by luminance, grey → colour by repeating, any other height × width resized
bilinearly (antialiased). What was done is counted in `Conversions` (`conversions_noted`), so
that a command can say it in one line.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import re
import stat
import struct
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dmtcore.errors import DataError
from dmtcore.inference.dense_outputs import PredictionWriter, readable_outputs
from dmtcore.inference.region_outputs import (
    boxes_source,
    check_boxes_sources,
    region_predictions,
)
from dmtcore.model.multitask import MultiTaskModel
from dmtcore.runtime import interrupts
from dmtcore.tasks.data import adapt_images
from dmtcore.tasks.names import InputSpec
from dmtcore.tasks.spec import REGION_KINDS

# Pixels (H × W) per image, for every input format: far above any sane input, far below a
# decompression bomb (one image of this size takes 200 MB as float32).
MAX_IMAGE_PIXELS = 50_000_000
NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
VALID_ARRAYS = "expected a .npy file written by numpy.save holding images as numbers"
# Floats may stray this far outside [0, 1] (rounding in the user's own conversion).
VALUE_SLACK = 1e-3

# How `adapt_images` resizes, said in the conversion line.
RESIZING = "bilinear, antialiased"
# Distinct source sizes named one by one in a conversion line; more are given as a range.
SIZES_NAMED = 3
# Pillow modes of one band (the rest are colour, read as RGB).
GREY_MODES = ("1", "L", "LA", "La", "I", "F")


@dataclass
class Conversions:
    """What was done to a command's images to bring them to the store's input: per kind of
    change (channels, size, value range), how many images had it. `line` says it in one line,
    or None when every image was taken as it is."""

    input_spec: InputSpec | None = None
    images: int = 0
    converted: int = 0
    channels: Counter[str] = field(default_factory=Counter)
    sizes: Counter[tuple[int, int]] = field(default_factory=Counter)
    values: Counter[int] = field(default_factory=Counter)

    def add(
        self,
        count: int,
        channels: int,
        size: tuple[int, int],
        full_range: int | None,
        input_spec: InputSpec,
    ) -> None:
        """`count` images of `channels` channels and `size` (H, W), whose values were divided
        by `full_range` (None: taken as they are), adapted to `input_spec`."""
        self.input_spec = input_spec
        self.images += count
        changed = False
        if channels != input_spec.channels:
            self.channels[_channel_change(channels, input_spec.channels)] += count
            changed = True
        if tuple(size) != (input_spec.height, input_spec.width):
            self.sizes[(int(size[0]), int(size[1]))] += count
            changed = True
        if full_range:
            self.values[full_range] += count
            changed = True
        if changed:
            self.converted += count

    def line(self, prefix: str = "input", suffix: str = "") -> str | None:
        """E.g. 'input: 3 images converted to the store's 1×8×8: colour → grey; 64×64 → 8×8
        (bilinear, antialiased); values 0–255 → 0–1'. A change that only some of the converted
        images had is followed by how many ('for 2')."""
        if not self.converted or self.input_spec is None:
            return None
        spec, done = self.input_spec, self.converted

        def times(count: int) -> str:
            return "" if count == done else f" for {count}"

        parts = [f"{change}{times(count)}" for change, count in self.channels.items()]
        if self.sizes:
            target = f"{spec.height}×{spec.width}"
            ordered = sorted(self.sizes, key=lambda s: (s[0] * s[1], s))
            if len(ordered) <= SIZES_NAMED:
                sizes = ", ".join(
                    f"{h}×{w} → {target}{times(self.sizes[(h, w)])}" for h, w in ordered
                )
            else:
                (h0, w0), (h1, w1) = ordered[0], ordered[-1]
                sizes = (
                    f"{len(ordered)} sizes from {h0}×{w0} to {h1}×{w1} → {target}"
                    f"{times(sum(self.sizes.values()))}"
                )
            parts.append(f"{sizes} ({RESIZING})")
        parts += [
            f"values 0–{full_range} → 0–1{times(count)}"
            for full_range, count in sorted(self.values.items())
        ]
        counted = (
            f"{done} of {self.images} images"
            if done < self.images
            else f"{done} image{'s' if done != 1 else ''}"
        )
        store = f"{spec.channels}×{spec.height}×{spec.width}"
        return f"{prefix}: {counted} converted to the store's {store}: {'; '.join(parts)}{suffix}"


def _channel_change(channels: int, target: int) -> str:
    if channels == 3 and target == 1:
        return "colour → grey"
    if channels == 1:
        return "grey → colour" if target == 3 else f"grey → {target} channels"
    return f"{channels} → {target} channels"


_noted: ContextVar[Conversions | None] = ContextVar("dmt_conversions", default=None)


@contextmanager
def conversions_noted() -> Iterator[Conversions]:
    """Count the conversions of every input read inside the block (by `iter_batches`,
    `decode_images`, `decode_array` or `read_image`), e.g. to say them once per command."""
    conversions = Conversions()
    token = _noted.set(conversions)
    try:
        yield conversions
    finally:
        _noted.reset(token)


def _note(
    count: int,
    channels: int,
    size: tuple[int, int],
    full_range: int | None,
    input_spec: InputSpec,
) -> None:
    noted = _noted.get()
    if noted is not None:
        noted.add(count, channels, size, full_range, input_spec)


_NUMBER = r"(?:-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|NaN|-?Infinity|true|false|null)"
# An indented JSON list of numbers only; a literal newline never occurs inside a JSON string,
# so a match is never text inside one.
_NUMBER_LIST = re.compile(rf"\[\n\s*({_NUMBER}(?:,\n\s*{_NUMBER})*)\n\s*\]")
_ITEM_BREAK = re.compile(r",\n\s*")


def json_text(payload: Any) -> str:
    """`payload` as indented JSON (as every --json prints it), with each list of numbers (a
    probability vector, a row of a map) on one line: the same document for `json.loads`."""
    text = json.dumps(payload, indent=2, default=str)
    return _NUMBER_LIST.sub(lambda m: "[" + ", ".join(_ITEM_BREAK.split(m.group(1))) + "]", text)


def iter_batches(
    paths: Sequence[Path], input_spec: InputSpec, batch_size: int = 256
) -> Iterator[tuple[torch.Tensor, list[str]]]:
    """Images (PNG, JPEG, ...) and .npy arrays (see `array_layout`), decoded and adapted to
    the store's input spec (every format the same way, see `adapt_images`), in batches of at
    most `batch_size`, with one label per image. Arrays are memory-mapped and read a batch at
    a time, so memory stays flat however many images there are."""
    pending: list[torch.Tensor] = []
    labels: list[str] = []

    def full() -> bool:
        return sum(len(b) for b in pending) >= batch_size

    for path in map(Path, paths):
        _check_regular_file(path, f"input {str(path)!r}")
        if path.suffix.lower() in (".npy", ".npz"):
            array = array_layout(open_npy(path, input_spec), input_spec, f"input {str(path)!r}")
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
            pending.append(read_image(path, input_spec, f"input {str(path)!r}"))
            labels.append(str(path))
            if full():
                yield torch.cat(pending), labels
                pending, labels = [], []
    if pending:
        yield torch.cat(pending), labels


# What a path that is not a regular file is, said instead of reading it (a FIFO would block).
FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _check_regular_file(path: Path, what: str) -> None:
    """Refuse, naming what it is, an input that is not a regular file, before it is opened:
    reading a named pipe would wait for a writer forever, and a device may never end."""
    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        if path.is_symlink():
            raise DataError(
                f"{what} is a symbolic link to {os.readlink(path)!r}, which does not exist"
            ) from None
        raise DataError(f"{what} does not exist") from None
    except OSError as exc:
        raise DataError(f"{what} cannot be read: {exc.strerror}") from exc
    if stat.S_ISREG(mode):
        return
    kind = next((name for is_kind, name in FILE_KINDS if is_kind(mode)), "not a regular file")
    raise DataError(
        f"{what} is {kind}, not a file; give image files (PNG, JPEG, ...) or .npy arrays"
    )


def _too_many_pixels(what: str, size: tuple[int, int] | None, pixels: int | None = None) -> str:
    """The message for an image of `size` (H, W) above `MAX_IMAGE_PIXELS`."""
    pixels = pixels if size is None else int(size[0]) * int(size[1])
    found = f"is {pixels} pixels" if pixels is not None else "is too large"
    dims = f": {size[0]}×{size[1]} (H×W) per image" if size is not None else ""
    return (
        f"{what} {found}, above the limit of {MAX_IMAGE_PIXELS} pixels per image for every "
        f"input format (images and .npy arrays alike){dims}; downscale it"
    )


def _check_pixels(size: tuple[int, ...], what: str) -> None:
    """Refuse images of (H, W) `size` above `MAX_IMAGE_PIXELS`, before their values are read."""
    height, width = (int(n) for n in size)
    if height * width > MAX_IMAGE_PIXELS:
        raise DataError(_too_many_pixels(what, (height, width)))


def open_npy(path: Path, input_spec: InputSpec | None = None) -> np.ndarray:
    """A .npy file as it is stored, memory-mapped rather than read, after checking what it
    is: numpy's own errors for an empty file, an .npz archive or a pickle are not about the
    user's file, and an empty dimension would only fail later, inside torch. Its header is
    checked before anything is mapped: the dtype, and with `input_spec` the pixels per image
    of the layout the store would read (`array_layout`), so that a header declaring huge
    images is refused whatever the file holds."""
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
        file.seek(0)
        header = _npy_header(file, what)
    if header is not None:
        shape, dtype = header
        _check_dtype(dtype, what)
        if len(shape) in (3, 4) and shape[0] == 0:
            raise DataError(f"{what} holds no images")
        _check_not_empty(shape, what)
        if input_spec is not None:
            # A stand-in of the declared shape with no data (every stride 0): the layout is
            # found from the shape alone, as it will be for the mapped array.
            try:
                stand_in = np.broadcast_to(np.zeros((), np.uint8), shape)
            except ValueError as exc:  # more elements than any array can have
                raise DataError(
                    f"{what} is not a readable .npy array: its header declares shape {shape} "
                    f"({exc})"
                ) from exc
            _check_pixels(array_layout(stand_in, input_spec, what).shape[-2:], what)
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{what} is not a readable .npy array: {exc}") from exc
    _check_dtype(array.dtype, what)
    if array.ndim in (3, 4) and array.shape[0] == 0:
        raise DataError(f"{what} holds no images")
    _check_not_empty(array.shape, what)
    return array


def _npy_header(file: Any, what: str) -> tuple[tuple[int, ...], np.dtype] | None:
    """(shape, dtype) from the header of the .npy file open at its start, nothing else read;
    None for a format version that numpy reads only for structured dtypes (3.0: `np.load`
    then says what it is). A pickle (object dtype) is refused here: dmt never unpickles."""
    try:
        version = np.lib.format.read_magic(file)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(file)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(file)
        else:
            return None
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{what} is not a readable .npy array: {exc}") from exc
    if dtype.hasobject:
        raise DataError(
            f"{what} is not a readable .npy array: it holds Python objects (dtype {dtype}), "
            f"which dmt never unpickles; {VALID_ARRAYS}"
        )
    return tuple(int(n) for n in shape), dtype


def accepted_channels(input_spec: InputSpec) -> tuple[int, ...]:
    """The channel counts `adapt_images` converts to the store's: its own, 1 (repeated), and
    3 for a 1-channel store (luminance)."""
    extra = (1, 3) if input_spec.channels == 1 else (1,)
    return tuple(sorted({input_spec.channels, *extra}))


def array_layout(array: np.ndarray, input_spec: InputSpec, what: str) -> np.ndarray:
    """`array` as an N×C×H×W view, read the only way its shape allows, whatever its H×W (every
    image is then resized the same way): H×W or C×H×W is one image, N×C×H×W a batch;
    channels-last H×W×C and N×H×W×C when the channels cannot be first; for a 1-channel store,
    any other N×H×W is N gray images. C is a count in `accepted_channels`. A shape that fits no
    way, or two ways (3×H×W for a 1-channel store: 3 images or one colour image?), is refused
    naming the shape and the layouts this store takes: guessing would give one wrong answer
    instead of N right ones. Rows of exactly C·H·W numbers (N×(C·H·W)) are refused as
    flattened images rather than read as one wide image."""
    shape, counts = tuple(array.shape), accepted_channels(input_spec)
    side = (input_spec.height, input_spec.width)
    gray_store = input_spec.channels == 1
    if array.ndim == 2:
        if shape[1] == input_spec.channels * side[0] * side[1] and shape != side:
            raise DataError(
                f"{what} has shape {shape}: rows of {shape[1]} numbers look like flattened "
                f"images; reshape them to ({shape[0]}, {input_spec.channels}, {side[0]}, "
                f"{side[1]}) (N×C×H×W) before saving"
            )
        return array.reshape(1, 1, *shape)
    if array.ndim == 3:
        if gray_store and shape[0] == 3:
            h, w = shape[1:]
            raise DataError(
                f"{what} has shape {shape}: 3 gray {h}×{w} images or one 3-channel image? "
                f"Save it as N×C×H×W: (3, 1, {h}, {w}) for 3 images, (1, 3, {h}, {w}) for one "
                "colour image"
            )
        if shape[0] in counts:
            return array[None]
        if shape[2] in counts:
            return array.transpose(2, 0, 1)[None]
        if gray_store:
            return array[:, None]
    if array.ndim == 4:
        if shape[1] in counts:
            return array
        if shape[3] in counts:
            return array.transpose(0, 3, 1, 2)
    raise DataError(f"{what} has shape {shape}; {_layouts_taken(array.ndim, shape, input_spec)}")


def _layouts_taken(ndim: int, shape: tuple[int, ...], input_spec: InputSpec) -> str:
    """What the store takes, said so that the user sees which dimension is wrong."""
    counts = " or ".join(map(str, accepted_channels(input_spec)))
    c, h, w = input_spec.channels, input_spec.height, input_spec.width
    gray = ", N×H×W (gray images)" if c == 1 else ""
    layouts = (
        f"H×W, C×H×W, N×C×H×W, H×W×C or N×H×W×C with C {counts}{gray}, of any H×W "
        f"(resized to {h}×{w})"
    )
    if ndim == 4:
        return (
            f"images have {shape[1]} channels; the store takes {c} ({counts} are accepted, "
            f"channels first or last): expected {layouts}"
        )
    if ndim == 3:
        return (
            f"neither its first nor its last dimension is a channel count the store takes "
            f"({counts}): expected {layouts}"
        )
    return f"expected {layouts}"


def decode_array(array: np.ndarray, input_spec: InputSpec, what: str) -> torch.Tensor:
    """A batch of numbers (N×C×H×W, or what `adapt_images` also takes) as float32 in the model's
    scale, finite, adapted to the store's input spec. The values are copied into memory torch
    may own: a memory-mapped array is read-only, and torch would warn about sharing it.
    `what` names the input in messages, e.g. "input 'x.npy'"."""
    _check_dtype(array.dtype, what)
    if array.ndim in (3, 4):
        _check_not_empty(array.shape, what)
        _check_pixels(array.shape[-2:], what)  # before the values are copied
    values = np.array(array, dtype=np.float32)
    full_range = None
    if array.dtype.kind == "u" and array.dtype.itemsize <= 2:
        full_range = 2 ** (8 * array.dtype.itemsize) - 1
        values /= np.float32(full_range)
    images = torch.from_numpy(values)
    if not torch.isfinite(images).all():
        raise DataError(f"{what} has NaN or infinite values")
    _check_range(values, array.dtype, what)
    adapted = adapt_images(images, input_spec)
    if array.ndim in (3, 4):
        channels = array.shape[1] if array.ndim == 4 else 1
        _note(len(array), channels, tuple(array.shape[-2:]), full_range, input_spec)
    return adapted


def _check_range(values: np.ndarray, dtype: np.dtype, what: str) -> None:
    """Refuse values outside [0, 1] after scaling: the model was trained on 0–1 pixels, and
    0–255 or 0–16 ones (sklearn's digits) would give confident, wrong answers. The message
    says which division brings them into range."""
    if values.size == 0:
        return
    low, high = float(values.min()), float(values.max())
    if low >= -VALUE_SLACK and high <= 1 + VALUE_SLACK:
        return
    if dtype.kind in "iu":
        fix = "save 0–255 pixels as uint8 or 0–65535 ones as uint16 (they are scaled), or floats in [0, 1]"
    elif low < 0:
        fix = "undo any normalisation (x * std + mean) so that pixels are 0 to 1"
    else:
        fix = f"divide by the pixels' full range: {_divisor(high)}"
    raise DataError(
        f"{what} has {dtype} values from {low:g} to {high:g}; expected 0 to 1 "
        f"(uint8 and uint16 arrays are scaled by their range, other dtypes are taken as they "
        f"are): {fix}"
    )


def _divisor(high: float) -> str:
    """The likely full range of pixels whose largest value is `high`."""
    if high <= 16:
        return f"by {high:g} if that is the largest possible value"
    if high <= 255:
        return "by 255 for 8-bit pixels"
    if high <= 65535:
        return "by 65535 for 16-bit pixels"
    return f"by the largest possible value (the largest here is {high:g})"


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


def read_image(
    source: Path | io.BytesIO, input_spec: InputSpec, what: str | None = None
) -> torch.Tensor:
    """One encoded image (a file, or bytes in a BytesIO) as a 1×C×H×W batch adapted to the
    store's input spec, the conversion counted (see `conversions_noted`). `what` names it in
    messages, e.g. "input 'x.png'" (by default "image 'PATH'")."""
    what = what or f"image {str(source)!r}"
    image, full_range, size = decode_image(source, what, (input_spec.height, input_spec.width))
    adapted = adapt_images(image, input_spec)
    _note(1, image.shape[1], size, full_range, input_spec)
    return adapted


def decode_image(
    source: Path | io.BytesIO, what: str, size: tuple[int, int] | None = None
) -> tuple[torch.Tensor, int | None, tuple[int, int]]:
    """One encoded image as a 1×C×H×W float batch in [0, 1] (C is 1 for a one-band image,
    else 3: RGB), the full range its values were divided by (255 for 8 bits, 65535 for 16;
    None for float and 1-bit pixels, taken as they are) and its own (H, W). Anything above a
    sane pixel count is refused before it is decoded (decompression bombs). With `size`
    (H, W), a JPEG at least twice as large is decoded at 1/2, 1/4 or 1/8 scale, never below
    `size` (JPEG's own downscaling, many times faster for photos); otherwise the batch has
    the image's own size."""
    from PIL import Image, UnidentifiedImageError

    _check_declared_size(source, what)
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                original = (image.height, image.width)
                if size is not None:
                    image.draft(None, (size[1], size[0]))
                array, full_range = _pixels(image, what)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = int(found.group(1)) if found else None
        raise DataError(_too_many_pixels(what, None, pixels)) from exc
    except (UnidentifiedImageError, OSError, ValueError) as exc:  # ValueError: e.g. LAB
        raise DataError(f"{what} is not a readable image: {exc}") from exc
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    tensor = torch.from_numpy(np.array(array, dtype=np.float32, order="C"))[None]
    return tensor, full_range, original


def image_header(path: Path) -> tuple[int, tuple[int, int], int | None] | None:
    """(channels, (H, W), full range) of an image file as `decode_image` would read it, from
    its header alone (nothing decoded); None when Pillow cannot open it (reading it says why)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as image:
                channels, full_range = _source(image.mode)
                return channels, (image.height, image.width), full_range
    except Exception:  # any failure is the reader's to report, naming the file
        return None


def _source(mode: str) -> tuple[int, int | None]:
    """(channels, full range) that `_pixels` gives an image of Pillow `mode`."""
    if mode.startswith("I;16") or mode == "I":
        return 1, 65535
    if mode in ("F", "1"):
        return 1, None
    return (1 if mode in GREY_MODES else 3), 255


def _pixels(image: Any, what: str) -> tuple[np.ndarray, int | None]:
    """H×W (one band) or H×W×3 (RGB) float32 in [0, 1], possibly read-only (Pillow's memory),
    and the range divided by (see `_source`). Converting a 16-bit or 32-bit image to 8 bits
    would clip rather than scale it (a 16-bit PNG would read as white), so those are scaled
    here. Colour becomes grey later, in `adapt_images`, as it does for arrays."""
    channels, full_range = _source(image.mode)
    if image.mode.startswith("I;16"):
        return np.asarray(image, dtype=np.float32) / np.float32(65535), full_range
    if image.mode == "I":
        values = np.asarray(image)
        low, high = int(values.min()), int(values.max())
        if low < 0 or high > 65535:
            raise DataError(
                f"{what} has 32-bit integer pixels from {low} to {high}; expected "
                "0 to 65535 (16-bit)"
            )
        return values.astype(np.float32) / np.float32(65535), full_range
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float32)
        if not np.isfinite(values).all():
            raise DataError(f"{what} has NaN or infinite values")
        return values, full_range
    rgb = np.asarray(image.convert("L" if channels == 1 else "RGB"), dtype=np.float32)
    return rgb / 255, full_range


def _check_declared_size(source: Path | io.BytesIO, what: str) -> None:
    """Name an empty PNG for what it is (Pillow refuses one as 'cannot identify image file'),
    and refuse one above the pixel limit naming its size (Pillow's guard says only the count)."""
    if isinstance(source, Path):
        with source.open("rb") as file:
            head = file.read(24)
    else:
        head = source.getvalue()[:24]
    if head[:8] == PNG_SIGNATURE and head[12:16] == b"IHDR" and len(head) == 24:
        width, height = struct.unpack(">II", head[16:24])
        if width == 0 or height == 0:
            raise DataError(
                f"{what} is a PNG of {width}×{height} pixels; an image needs at least 1×1"
            )
        _check_pixels((height, width), what)


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
        batches.append(read_image(source, input_spec, f"input {label!r}"))
    if not batches:
        raise DataError("no images given")
    return torch.cat(batches)


def task_outputs(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """What `predict` needs to know of each stored task's output: kind, size, class names, and
    for a box-attributes task the detection task whose boxes it describes (`boxes_source`)."""
    return {
        t["name"]: {
            "kind": t["output"]["kind"],
            "size": t["output"]["size"],
            "class_names": t.get("class_names"),
            **(
                {"boxes_from": boxes_source(manifest, t)}
                if t["output"]["kind"] == "box-attributes"
                else {}
            ),
        }
        for t in manifest["tasks"]
    }


def predict_batches(
    model: MultiTaskModel,
    batches: Iterable[torch.Tensor],
    tasks: Sequence[str],
    outputs: dict[str, dict[str, Any]] | None = None,
) -> Iterator[dict[str, Any]]:
    """Every requested task's raw outputs per batch (float32, on the CPU), computing all tasks
    in one forward pass per batch; Ctrl-C stops at the next batch. Region tasks (kinds from
    `outputs`, `task_outputs(manifest)`) give one dict of boxes per image instead
    (`region_outputs.region_predictions`); a box-attributes task's detection task runs too."""
    model.eval()
    device = next(model.parameters()).device
    outputs = outputs or {}
    sources = check_boxes_sources(list(tasks), outputs) if outputs else {}
    run = list(dict.fromkeys([*tasks, *sources.values()]))
    regions = [t for t in tasks if outputs.get(t, {}).get("kind") in REGION_KINDS]
    with torch.inference_mode():
        for batch in batches:
            interrupts.check()
            raw = model(batch.to(device), run)
            values: dict[str, Any] = region_predictions(raw, regions, outputs, sources)
            values.update({name: raw[name].float().cpu() for name in tasks if name not in values})
            yield {name: values[name] for name in tasks}


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
    for logits in predict_batches(model, batches, tasks, outputs):
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
    """`dmt predict --out`: every batch's dense maps, and its pictures of boxes, written as
    files as soon as computed."""
    writer = PredictionWriter(directory, list(tasks), outputs)
    pending: list[tuple[torch.Tensor, list[str]]] = []

    def batches() -> Iterator[torch.Tensor]:
        for images, labels in labelled_batches:
            pending.append((images, labels))
            yield images

    for logits in predict_batches(model, batches(), tasks, outputs):
        images, labels = pending.pop(0)
        writer.add(logits, labels, images)
    return writer
