"""Pictures of dense predictions: exact colours of known inputs, grid geometry, and one clear
InvalidValueError (exit 11 at the CLI) naming the shape for every array of the wrong shape;
pictures of boxes: exactly the box's pixels in its class's colour, its label inside it."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from dmtcore.errors import InvalidValueError
from dmtcore.tasks.visualize import (
    MIN_CELL_HEIGHT,
    SEPARATOR,
    VIRIDIS_HIGH,
    VIRIDIS_LOW,
    depth_image,
    grid_image,
    image_from_array,
    normals_image,
    palette,
    segmentation_image,
)

BLACK = (0, 0, 0)


def pixels(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    array = np.asarray(image)
    assert array.dtype == np.uint8
    return array


def test_segmentation_colours_are_the_shifted_voc_map_and_ignore_is_black():
    classes = np.array([[0, 1, 2], [-1, 3, 19]])
    image = segmentation_image(classes, num_classes=21)
    assert image.size == (3, 2)
    rgb = pixels(image)
    assert tuple(rgb[0, 0]) == (128, 0, 0)
    assert tuple(rgb[0, 1]) == (0, 128, 0)
    assert tuple(rgb[0, 2]) == (128, 128, 0)
    assert tuple(rgb[1, 0]) == BLACK
    assert tuple(rgb[1, 1]) == (0, 0, 128)
    assert tuple(rgb[1, 2]) == (0, 64, 128)  # VOC's entry 20, the 'tvmonitor' colour


def test_segmentation_takes_the_label_shape_and_a_custom_ignore_value():
    label = np.array([[[255, 1]]], dtype=np.int64)
    rgb = pixels(segmentation_image(label, num_classes=2, ignore=255))
    assert tuple(rgb[0, 0]) == BLACK and tuple(rgb[0, 1]) == (0, 128, 0)


def test_palette_colours_are_distinct_and_never_black():
    colours = palette(1000)
    assert colours.shape == (1000, 3) and colours.dtype == np.uint8
    assert len({tuple(c) for c in colours}) == 1000
    assert not (colours == 0).all(axis=1).any()


@pytest.mark.parametrize(
    ("classes", "num_classes", "message"),
    [
        (np.zeros((2, 3, 4), dtype=np.int64), 3, "H×W map of class ids, got shape 2×3×4"),
        (np.zeros(5, dtype=np.int64), 3, "got shape 5"),
        (np.zeros((0, 4), dtype=np.int64), 3, "got shape 0×4"),
        (np.zeros((2, 2)), 3, "integer class ids, got dtype float64"),
        (np.array([[0, 3]]), 3, "class id 3 is outside 0..2"),
        (np.array([[0, -2]]), 3, "class id -2 is outside 0..2 (and is not the ignore value -1)"),
        (np.zeros((2, 2), dtype=np.int64), 0, "num_classes must be 1 to"),
    ],
)
def test_segmentation_refuses_what_it_cannot_draw(classes, num_classes, message):
    with pytest.raises(InvalidValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        segmentation_image(classes, num_classes)


def test_depth_nearest_is_bright_farthest_dark_invalid_black():
    depth = np.array([[1.0, 2.0, 3.0], [0.0, np.nan, 5.0]], dtype=np.float32)
    rgb = pixels(depth_image(depth))
    assert tuple(rgb[0, 0]) == VIRIDIS_HIGH == (253, 231, 37)
    assert tuple(rgb[1, 2]) == VIRIDIS_LOW == (68, 1, 84)
    assert tuple(rgb[1, 0]) == BLACK and tuple(rgb[1, 1]) == BLACK
    middle = tuple(rgb[0, 2])  # depth 3 is half-way between 1 and 5: viridis' middle, teal
    assert middle == (33, 145, 140)
    assert VIRIDIS_LOW != BLACK and VIRIDIS_HIGH != BLACK


def test_depth_normalises_over_the_valid_pixels_only():
    depth = np.array([[10.0, 2.0, 4.0, 100.0]])
    valid = np.array([[False, True, True, False]])
    rgb = pixels(depth_image(depth[None], valid))
    assert [tuple(p) for p in rgb[0]] == [BLACK, VIRIDIS_HIGH, VIRIDIS_LOW, BLACK]


def test_depth_with_one_value_or_no_valid_pixel():
    assert {tuple(p) for p in pixels(depth_image(np.full((2, 2), 3.0))).reshape(-1, 3)} == {
        VIRIDIS_HIGH
    }
    assert not pixels(depth_image(np.zeros((2, 2)))).any()


@pytest.mark.parametrize(
    ("depth", "valid", "message"),
    [
        (np.zeros((2, 4, 4)), None, "depth must be an H×W map, got shape 2×4×4"),
        (np.zeros(4), None, "got shape 4"),
        (np.ones((4, 4)), np.ones((4, 5), bool), "valid must have the depth map's shape 4×4, got shape 4×5"),
        (np.array([["a"]]), None, "depth must be numbers, got dtype <U1"),
    ],
)  # fmt: skip
def test_depth_refuses_wrong_shapes(depth, valid, message):
    with pytest.raises(InvalidValueError, match=message):
        depth_image(depth, valid)


def test_normals_are_encoded_as_n_plus_one_over_two_and_missing_is_black():
    normals = np.zeros((3, 1, 4), dtype=np.float32)
    normals[:, 0, 0] = (0, 0, 1)
    normals[:, 0, 1] = (1, 0, 0)
    normals[:, 0, 2] = (0, -1, 0)
    rgb = pixels(normals_image(normals))
    assert [tuple(p) for p in rgb[0]] == [(128, 128, 255), (255, 128, 128), (128, 0, 128), BLACK]


@pytest.mark.parametrize("shape", [(4, 4), (1, 4, 4), (4, 4, 3), (3, 0, 4)])
def test_normals_refuse_wrong_shapes(shape):
    expected = "×".join(map(str, shape))
    with pytest.raises(InvalidValueError, match=f"3×H×W map, got shape {expected}$"):
        normals_image(np.zeros(shape))


def test_image_from_array_grey_and_colour():
    grey = pixels(image_from_array(np.array([[[0.0, 0.5, 1.0]]], dtype=np.float32)))
    assert [tuple(p) for p in grey[0]] == [(0, 0, 0), (128, 128, 128), (255, 255, 255)]
    colour = np.zeros((3, 1, 2), dtype=np.float32)
    colour[:, 0, 0] = (1.0, 0.0, 0.2)
    colour[:, 0, 1] = (2.0, -1.0, np.nan)
    rgb = pixels(image_from_array(colour))
    assert [tuple(p) for p in rgb[0]] == [(255, 0, 51), (255, 0, 0)]


@pytest.mark.parametrize("shape", [(2, 4, 4), (4, 4, 3), (1, 1, 4, 4), (3,)])
def test_image_from_array_refuses_wrong_shapes(shape):
    expected = "×".join(map(str, shape))
    with pytest.raises(InvalidValueError, match=f"1 or 3 channels, got shape {expected}$"):
        image_from_array(np.zeros(shape, dtype=np.float32))


def test_grid_enlarges_small_maps_and_separates_cells():
    red = Image.new("RGB", (16, 16), (255, 0, 0))
    blue = Image.new("L", (32, 16), 0)
    grid = grid_image([[red, blue], [red, red]])
    factor = MIN_CELL_HEIGHT // 16
    assert grid.mode == "RGB"
    assert grid.size == (16 * factor + 32 * factor + SEPARATOR, 2 * 16 * factor + SEPARATOR)
    rgb = pixels(grid)
    assert tuple(rgb[0, 0]) == tuple(rgb[95, 95]) == (255, 0, 0)
    assert tuple(rgb[96, 0]) == tuple(rgb[97, 200]) == (255, 255, 255)  # the row separator
    assert tuple(rgb[0, 96]) == (255, 255, 255)  # the column separator
    assert tuple(rgb[0, 98]) == BLACK  # the grey cell, as RGB
    assert tuple(rgb[98 + 95, 98 + 191]) == (255, 255, 255)  # row 2 has no second column's colour


def test_grid_keeps_each_pixel_sharp_and_honours_a_larger_scale():
    checker = Image.fromarray(np.array([[[255] * 3, [0] * 3], [[0] * 3, [255] * 3]], np.uint8))
    grid = grid_image([[checker]], scale=100)
    assert grid.size == (200, 200)
    rgb = pixels(grid)
    assert set(np.unique(rgb)) == {0, 255}
    assert tuple(rgb[99, 99]) == (255, 255, 255) and tuple(rgb[100, 99]) == BLACK
    assert grid_image([[Image.new("RGB", (300, 200))]]).size == (300, 200)


@pytest.mark.parametrize(
    ("rows", "scale", "message"),
    [
        ([], 1, "rows must be a non-empty list"),
        ([[]], 1, "row 0 must be a non-empty list"),
        ([[Image.new("RGB", (2, 2))], [np.zeros((2, 2))]], 1, r"cell \(1, 0\) must be a PIL image, got ndarray"),
        ([[Image.new("RGB", (2, 2))]], 0, "scale must be a positive integer, got 0"),
        ([[Image.new("RGB", (2, 2))]], 1.5, "scale must be a positive integer, got 1.5"),
    ],
)  # fmt: skip
def test_grid_refuses_what_is_not_a_grid_of_images(rows, scale, message):
    with pytest.raises(InvalidValueError, match=message):
        grid_image(rows, scale=scale)


def test_drawing_imports_no_torch():
    code = "import sys, dmtcore.tasks.visualize; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- boxes ------------------------------------------------------------------------------------


def box_picture(labels, image=None):
    import torch

    from dmtcore.tasks.visualize_boxes import boxes_image

    image = torch.full((3, 32, 32), 0.25) if image is None else image
    return boxes_image(image, torch.tensor([[4.0, 4.0, 12.0, 20.0]]), [1], labels, num_classes=3)


def test_a_box_outlines_exactly_its_pixels_in_its_class_colour():
    """A 32×32 image is enlarged 8 times (to 256 pixels); the box [4, 4, 12, 20] (x2, y2 one
    past its last pixel) covers the enlarged pixels x 32..95, y 32..159, and its 2-pixel
    outline is their outermost ring, in class 1's palette colour; no other pixel changes."""
    from dmtcore.tasks.visualize_boxes import BOX_WIDTH, picture_scale

    assert [picture_scale(h) for h in (32, 48, 64, 256, 300)] == [8, 6, 4, 1, 1]
    array = pixels(box_picture([None]))
    assert array.shape == (256, 256, 3)
    ring = np.zeros((256, 256), dtype=bool)
    ring[32:160, 32:96] = True
    ring[32 + BOX_WIDTH : 160 - BOX_WIDTH, 32 + BOX_WIDTH : 96 - BOX_WIDTH] = False
    assert (array[ring] == palette(3)[1]).all()
    assert (array[~ring] == 64).all()  # 0.25 of 255, as the image was
    assert tuple(array[159, 64]) == tuple(palette(3)[1])  # the bottom edge
    assert tuple(array[250, 250]) == (64, 64, 64)  # far away


def test_a_box_label_is_text_on_a_patch_of_its_colour_inside_the_box():
    """The label changes only pixels inside the box's top left, to its colour (the patch) and
    to the text's: white on class 1's dark green (black on a light colour)."""
    from dmtcore.tasks.visualize_boxes import BOX_WIDTH, text_colour

    plain = pixels(box_picture([None]))
    labelled = pixels(box_picture(["green 0.91"]))
    changed = (labelled != plain).any(-1)
    rows, columns = np.nonzero(changed)
    assert rows.min() >= 32 + BOX_WIDTH and rows.max() < 32 + 24, rows
    assert columns.min() >= 32 + BOX_WIDTH, columns
    colours = {tuple(int(v) for v in c) for c in labelled[changed]}
    green = tuple(int(v) for v in palette(3)[1])
    assert text_colour(green) == (255, 255, 255) and text_colour((255, 255, 128)) == (0, 0, 0)
    assert green in colours, colours  # the patch
    assert max(min(c) for c in colours) >= 224, colours  # the text, white antialiased


def test_box_pictures_take_grey_and_many_channel_images_and_refuse_mismatches():
    import torch

    grey = pixels(box_picture([None], torch.full((1, 32, 32), 0.25)))
    many = pixels(box_picture([None], torch.full((5, 32, 32), 0.25)))
    assert np.array_equal(grey, pixels(box_picture([None]))) and np.array_equal(grey, many)
    with pytest.raises(InvalidValueError, match="1 boxes need as many classes and labels"):
        box_picture(["a", "b"])
    from dmtcore.tasks.visualize_boxes import boxes_image

    with pytest.raises(InvalidValueError, match=r"class id 3 is outside 0\.\.2"):
        boxes_image(torch.zeros(3, 8, 8), torch.tensor([[1.0, 1.0, 4.0, 4.0]]), [3], [None], 3)
