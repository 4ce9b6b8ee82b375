"""Viewable RGB pictures of boxes on their image: each box outlined in its class's colour (the
colours of `visualize.palette`, as segmentation maps give classes) with its label ("sphere
0.91 red tall") on a patch of the same colour.

Region tasks run on 32..64 pixel images, where ten-pixel text would hide the very object it
names, so the picture is the image enlarged by one whole factor (nearest-neighbour, pixels stay
sharp) to at least MIN_PICTURE_HEIGHT pixels high, and the boxes are drawn at that size.
torchvision's `draw_bounding_boxes` draws them (with Pillow's default font).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from dmtcore.errors import InvalidValueError
from dmtcore.tasks.visualize import image_from_array, palette

MIN_PICTURE_HEIGHT = 256
BOX_WIDTH = 2
# Below this luminance (ITU-R BT.601, 0..255) a colour gets white text, above it black.
DARK = 128


def picture_scale(height: int) -> int:
    """The whole factor an image of `height` pixels is enlarged by: 8 for 32, 6 for 48, 4 for
    64, 1 from MIN_PICTURE_HEIGHT up."""
    return max(1, math.ceil(MIN_PICTURE_HEIGHT / height))


def text_colour(colour: Sequence[int]) -> tuple[int, int, int]:
    """Black or white, whichever reads better on `colour` (VOC's first colours are dark)."""
    red, green, blue = (int(c) for c in colour)
    return (0, 0, 0) if 0.299 * red + 0.587 * green + 0.114 * blue >= DARK else (255, 255, 255)


def boxes_image(
    image: torch.Tensor | np.ndarray,
    boxes: torch.Tensor,
    classes: Sequence[int],
    labels: Sequence[str | None],
    num_classes: int,
) -> Image.Image:
    """`image` (C×H×W in [0, 1], as the model takes it; C other than 1 or 3 is drawn as the
    grey mean of its channels) enlarged by `picture_scale(H)`, with every box of `boxes`
    (n×4: x1, y1, x2, y2 in the image's pixels, x2 and y2 one past the last pixel, as
    detections are) outlined in the colour of its class id in `classes` (0..num_classes-1)
    and labelled with its entry of `labels` (None: no label). The outline lies on the box's
    outermost pixels, inside it."""
    from torchvision.utils import draw_bounding_boxes

    array = image.detach().float().cpu().numpy() if isinstance(image, torch.Tensor) else image
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[0] not in (1, 3):
        array = array.mean(0, keepdims=True)
    picture = image_from_array(array)
    factor = picture_scale(picture.height)
    picture = picture.resize(
        (picture.width * factor, picture.height * factor), Image.Resampling.NEAREST
    )
    corners = torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4)
    if not len(classes) == len(labels) == len(corners):
        raise InvalidValueError(
            f"{len(corners)} boxes need as many classes and labels, got {len(classes)} "
            f"classes and {len(labels)} labels"
        )
    if len(corners) == 0:
        return picture
    colours = palette(num_classes)
    wrong = [c for c in classes if not 0 <= int(c) < num_classes]
    if wrong:
        raise InvalidValueError(f"class id {wrong[0]} is outside 0..{num_classes - 1}")
    box_colours = [tuple(int(v) for v in colours[int(c)]) for c in classes]
    drawn = _picture_corners(corners, factor, picture.width, picture.height)
    tensor = torch.from_numpy(np.array(picture)).permute(2, 0, 1).contiguous()
    out = draw_bounding_boxes(
        tensor,
        drawn,
        labels=list(labels),
        colors=box_colours,
        width=BOX_WIDTH,
        fill_labels=True,
        label_colors=[text_colour(c) for c in box_colours],
    )
    return Image.fromarray(out.permute(1, 2, 0).numpy())


def _picture_corners(corners: torch.Tensor, factor: int, width: int, height: int) -> torch.Tensor:
    """Pixel x1, y1 of the first and x2, y2 of the last enlarged pixel of each box (inclusive,
    as Pillow draws rectangles), inside the picture, x1 ≤ x2 and y1 ≤ y2 even for a sliver."""
    scaled = corners * factor
    first = scaled[:, :2].round()
    last = scaled[:, 2:].round() - 1
    limits = torch.tensor([width - 1, height - 1], dtype=scaled.dtype)
    first = torch.minimum(first.clamp(min=0), limits)
    last = torch.maximum(torch.minimum(last, limits), first)
    return torch.cat([first, last], 1).to(torch.int64)
