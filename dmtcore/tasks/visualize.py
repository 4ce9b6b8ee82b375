"""Viewable RGB images of dense predictions and labels: segmentation maps, depth, surface normals,
and a grid that lays them side by side (rows = samples, columns = input / truth / prediction).

Pure numpy and Pillow, so drawing a picture never imports torch: callers pass numpy arrays (a
tensor's `.numpy()`). Every function returns an 8-bit `RGB` image, whatever its input, so the
cells of a grid always combine. Pixels without a value (ignored classes, depth or normals
without ground truth) are black in every map, and no map's own colours are black.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

from dmtcore.errors import InvalidValueError

IGNORE_LABEL = -1
MIN_CELL_HEIGHT = 96
SEPARATOR = 2
BACKGROUND = (255, 255, 255)

# matplotlib's viridis (CC0, github.com/BIDS/colormap) at entries 0, 16, ..., 240, 255 of its
# 256; linear interpolation between them stays within 5 of 255 of every entry.
_VIRIDIS_AT = np.array([*range(0, 256, 16), 255], dtype=np.float64) / 255
_VIRIDIS = np.array(
    [
        (68, 1, 84), (72, 24, 106), (71, 45, 123), (66, 64, 134), (59, 82, 139), (51, 99, 141),
        (44, 114, 142), (38, 130, 142), (33, 145, 140), (31, 160, 136), (40, 174, 128),
        (63, 188, 115), (94, 201, 98), (132, 212, 75), (173, 220, 48), (216, 226, 25),
        (253, 231, 37),
    ],
    dtype=np.float64,
)  # fmt: skip
VIRIDIS_LOW = tuple(int(v) for v in _VIRIDIS[0])
VIRIDIS_HIGH = tuple(int(v) for v in _VIRIDIS[-1])


def _shape(array: np.ndarray) -> str:
    return "×".join(str(n) for n in array.shape) or "a scalar"


def _as_array(value: object, what: str) -> np.ndarray:
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise InvalidValueError(
            f"{what} must be a numpy array, got {type(value).__name__}"
        ) from exc


def palette(num_classes: int) -> np.ndarray:
    """num_classes × 3 uint8 colours: class k gets the Pascal VOC colour map's entry k + 1.

    VOC's bit-interleaving (bit b of the index goes to bit 7 - b//3 of red, green or blue)
    gives far-apart colours for neighbouring ids and works for any count below 2**24. Its
    entry 0 is black, which is kept for ignored pixels, hence the shift by one."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int | np.integer):
        raise InvalidValueError(f"num_classes must be an integer, got {num_classes!r}")
    if not 1 <= num_classes < 2**24:
        raise InvalidValueError(f"num_classes must be 1 to {2**24 - 1}, got {num_classes}")
    index = np.arange(1, num_classes + 1, dtype=np.int64)
    colours = np.zeros((num_classes, 3), dtype=np.int64)
    for bit in range(8):
        for channel in range(3):
            colours[:, channel] |= ((index >> (3 * bit + channel)) & 1) << (7 - bit)
    return colours.astype(np.uint8)


def segmentation_image(
    classes: np.ndarray, num_classes: int, ignore: int = IGNORE_LABEL
) -> Image.Image:
    """An H×W map of class ids 0..num_classes-1 in the colours of `palette`; `ignore` pixels
    are black. A 1×H×W map (a label as the engine stores it) is taken too. Any other id is an
    error rather than a silently wrong colour: it means labels and num_classes disagree."""
    array = _as_array(classes, "classes")
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2 or 0 in array.shape:
        raise InvalidValueError(
            f"classes must be an H×W map of class ids, got shape {_shape(array)}"
        )
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
        raise InvalidValueError(f"classes must be integer class ids, got dtype {array.dtype}")
    colours = palette(num_classes)
    ids = array.astype(np.int64)
    ignored = ids == ignore
    wrong = ~ignored & ((ids < 0) | (ids >= num_classes))
    if wrong.any():
        raise InvalidValueError(
            f"class id {int(ids[wrong][0])} is outside 0..{num_classes - 1} "
            f"(and is not the ignore value {ignore})"
        )
    rgb = colours[np.where(ignored, 0, ids)]
    rgb[ignored] = 0
    return Image.fromarray(rgb)


def viridis(values: np.ndarray) -> np.ndarray:
    """The viridis colour of each value in [0, 1] (clipped): ... × 3 uint8; 0 is dark purple
    (68, 1, 84), 1 bright yellow (253, 231, 37)."""
    t = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    channels = [np.interp(t, _VIRIDIS_AT, _VIRIDIS[:, c]) for c in range(3)]
    return np.rint(np.stack(channels, axis=-1)).astype(np.uint8)


def depth_image(depth: np.ndarray, valid: np.ndarray | None = None) -> Image.Image:
    """An H×W (or 1×H×W) depth map in viridis, normalised over the valid pixels' min..max:
    NEAR IS BRIGHT (the nearest valid pixel is yellow (253, 231, 37), the farthest dark purple
    (68, 1, 84)), so foreground objects stand out. Invalid pixels are black.

    `valid` defaults to the finite pixels above 0, as 0 marks pixels without ground truth in a
    depth label. A map whose valid pixels all have one depth is drawn all near."""
    array = _as_array(depth, "depth")
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2 or 0 in array.shape:
        raise InvalidValueError(f"depth must be an H×W map, got shape {_shape(array)}")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise InvalidValueError(f"depth must be numbers, got dtype {array.dtype}")
    values = array.astype(np.float64)
    mask = _valid_mask(valid, values)
    rgb = np.zeros((*values.shape, 3), dtype=np.uint8)
    if mask.any():
        near, far = values[mask].min(), values[mask].max()
        nearness = (far - values[mask]) / (far - near) if far > near else 1.0
        rgb[mask] = viridis(nearness)
    return Image.fromarray(rgb)


def _valid_mask(valid: np.ndarray | None, values: np.ndarray) -> np.ndarray:
    finite = np.isfinite(values)
    if valid is None:
        return finite & (np.where(finite, values, 0.0) > 0)
    mask = _as_array(valid, "valid")
    if mask.ndim == 3 and mask.shape[0] == 1:
        mask = mask[0]
    if mask.shape != values.shape:
        raise InvalidValueError(
            f"valid must have the depth map's shape {_shape(values)}, got shape {_shape(mask)}"
        )
    return mask.astype(bool) & finite


def normals_image(normals: np.ndarray) -> Image.Image:
    """A 3×H×W normal map as RGB = (n + 1) / 2, the usual normal-map encoding (x right is red,
    y up green, z towards the camera blue: a surface facing the camera is (128, 128, 255)).
    Components are clipped to [-1, 1]; all-zero or non-finite vectors (no ground truth) are black."""
    array = _as_array(normals, "normals")
    if array.ndim != 3 or array.shape[0] != 3 or 0 in array.shape:
        raise InvalidValueError(f"normals must be a 3×H×W map, got shape {_shape(array)}")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise InvalidValueError(f"normals must be numbers, got dtype {array.dtype}")
    vectors = np.moveaxis(array.astype(np.float64), 0, -1)
    missing = ~np.isfinite(vectors).all(-1) | (vectors == 0).all(-1)
    encoded = (np.clip(np.nan_to_num(vectors), -1.0, 1.0) + 1.0) / 2.0
    rgb = np.floor(encoded * 255 + 0.5).astype(np.uint8)
    rgb[missing] = 0
    return Image.fromarray(rgb)


def image_from_array(image: np.ndarray) -> Image.Image:
    """A C×H×W image in [0, 1] (C = 1 or 3; H×W is taken as C = 1), as the engine feeds it to
    the model, as 8-bit RGB (a grey image repeated in all three channels). Values outside
    [0, 1] are clipped and non-finite ones drawn black."""
    array = _as_array(image, "image")
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[0] not in (1, 3) or 0 in array.shape[1:]:
        raise InvalidValueError(
            f"image must be C×H×W with 1 or 3 channels, got shape {_shape(array)}"
        )
    if not (np.issubdtype(array.dtype, np.floating) or array.dtype == np.bool_):
        raise InvalidValueError(f"image must be floats in [0, 1], got dtype {array.dtype}")
    values = np.clip(np.nan_to_num(array.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0), 0, 1)
    rgb = np.floor(np.moveaxis(values, 0, -1) * 255 + 0.5).astype(np.uint8)
    if rgb.shape[-1] == 1:
        rgb = np.repeat(rgb, 3, axis=-1)
    return Image.fromarray(rgb)


def grid_image(rows: Sequence[Sequence[Image.Image]], scale: int = 1) -> Image.Image:
    """The images laid out in a grid on white, SEPARATOR pixels apart (rows may differ in
    length). Every cell is enlarged by one whole factor, nearest-neighbour so pixels stay
    sharp: `scale`, or more, so that the tallest cell is at least MIN_CELL_HEIGHT pixels high
    (a 16×16 map becomes 96×96). A cell sits at the top left of its column and row."""
    if isinstance(scale, bool) or not isinstance(scale, int | np.integer) or scale < 1:
        raise InvalidValueError(f"scale must be a positive integer, got {scale!r}")
    cells = _checked_cells(rows)
    tallest = max(cell.height for row in cells for cell in row)
    factor = max(int(scale), math.ceil(MIN_CELL_HEIGHT / tallest))
    columns = max(len(row) for row in cells)
    widths = [
        factor * max((row[c].width for row in cells if c < len(row)), default=0)
        for c in range(columns)
    ]
    heights = [factor * max(cell.height for cell in row) for row in cells]
    canvas = Image.new(
        "RGB",
        (sum(widths) + SEPARATOR * (columns - 1), sum(heights) + SEPARATOR * (len(cells) - 1)),
        BACKGROUND,
    )
    top = 0
    for row, height in zip(cells, heights, strict=True):
        left = 0
        for cell, width in zip(row, widths, strict=False):
            enlarged = cell.convert("RGB").resize(
                (cell.width * factor, cell.height * factor), Image.Resampling.NEAREST
            )
            canvas.paste(enlarged, (left, top))
            left += width + SEPARATOR
        top += height + SEPARATOR
    return canvas


def _checked_cells(rows: Sequence[Sequence[Image.Image]]) -> list[list[Image.Image]]:
    if isinstance(rows, Image.Image | str | bytes) or not isinstance(rows, Sequence) or not rows:
        raise InvalidValueError("rows must be a non-empty list of rows of images")
    cells: list[list[Image.Image]] = []
    for r, row in enumerate(rows):
        if isinstance(row, Image.Image | str | bytes) or not isinstance(row, Sequence) or not row:
            raise InvalidValueError(f"row {r} must be a non-empty list of images, got {row!r}")
        for c, cell in enumerate(row):
            if not isinstance(cell, Image.Image):
                raise InvalidValueError(
                    f"cell ({r}, {c}) must be a PIL image, got {type(cell).__name__}"
                )
            if cell.width == 0 or cell.height == 0:
                raise InvalidValueError(f"cell ({r}, {c}) is empty ({cell.width}×{cell.height})")
        cells.append(list(row))
    return cells
