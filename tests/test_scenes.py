"""The `scenes` plugin: determinism, exact per-pixel ground truth, and tasks sharing one image tensor.

Geometry is checked against the camera model from the outside: a pixel's ray is (u, v, -1) in
camera coordinates, so a hit at depth z lies at (u·z, v·z, -z)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

import dmt_plugins.scenes as scenes
from dmtcore import DataRequest
from dmtcore.tasks.names import InputSpec


@pytest.fixture(scope="module")
def small() -> dict:
    return scenes.render_scenes(40, 16, 16, seed=5)


@pytest.fixture(scope="module")
def medium() -> dict:
    return scenes.render_scenes(40, 32, 32, seed=6)


@pytest.fixture
def tiny_splits(monkeypatch: pytest.MonkeyPatch):
    """Splits of 12 and 4 scenes, built fresh (the split cache is cleared around the test)."""
    monkeypatch.setattr(scenes, "SPLIT_SIZES", {"train": 12, "val": 4})
    scenes.generate.cache_clear()
    yield
    scenes.generate.cache_clear()


def points(data: dict, height: int, width: int) -> np.ndarray:
    """n×H×W×3: every pixel's hit point in camera coordinates, from its depth alone."""
    u, v = scenes.pixel_rays(height, width)
    z = data["depth"][:, 0].reshape(len(data["depth"]), -1).astype(np.float64)
    return np.stack([u * z, v * z, -z], axis=-1).reshape(-1, height, width, 3)


def world_up(data: dict) -> np.ndarray:
    """n×3: the world's up vector in each scene's camera frame (no roll: (0, cos, sin) pitch)."""
    pitch = data["pitch"]
    return np.stack([np.zeros_like(pitch), np.cos(pitch), np.sin(pitch)], axis=-1)


def test_same_seed_same_scenes_other_seed_other_scenes() -> None:
    first = scenes.render_scenes(6, 16, 16, seed=3)
    again = scenes.render_scenes(6, 16, 16, seed=3)
    other = scenes.render_scenes(6, 16, 16, seed=4)
    assert first.keys() == again.keys()
    for key in first:
        np.testing.assert_array_equal(first[key], again[key], err_msg=key)
    for key in ("images", "segmentation", "depth", "normals"):
        assert not np.array_equal(first[key], other[key]), key


def test_a_seed_gives_the_same_scenes_at_every_size(small: dict) -> None:
    larger = scenes.render_scenes(40, 24, 40, seed=5)
    np.testing.assert_array_equal(small["object_class"], larger["object_class"])
    np.testing.assert_array_equal(small["object_centre"], larger["object_centre"])
    assert larger["images"].shape == (40, 3, 24, 40)
    assert larger["segmentation"].shape == (40, 24, 40)


def test_images_and_labels_follow_the_dense_label_contract(small: dict) -> None:
    images, seg, depth, normals = (small[k] for k in ("images", "segmentation", "depth", "normals"))
    assert images.dtype == np.float32 and images.shape == (40, 3, 16, 16)
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert seg.dtype == np.int64 and seg.shape == (40, 16, 16)
    assert set(np.unique(seg)) <= set(range(len(scenes.CLASS_NAMES)))
    assert depth.dtype == np.float32 and depth.shape == (40, 1, 16, 16)
    assert np.isfinite(depth).all() and depth.min() > 0.0
    assert normals.dtype == np.float32 and normals.shape == (40, 3, 16, 16)
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-5)
    u, v = scenes.pixel_rays(16, 16)
    rays = np.stack([u, v, -np.ones_like(u)]).reshape(3, 16, 16)
    assert (normals * rays).sum(axis=1).max() < 0.0, "every visible surface faces its ray"


def test_rays_that_miss_everything_carry_the_no_ground_truth_marks() -> None:
    """A 4×256 view is wide enough to look past the back wall's end: those pixels are
    unlabelled (class -1, depth 0, normal 0), never an infinite depth or a NaN pixel."""
    data = scenes.render_scenes(8, 4, 256, seed=1)
    missed = data["segmentation"] == scenes.IGNORE_LABEL
    assert missed.any()
    assert (data["depth"][:, 0][missed] == 0).all() and (data["depth"][:, 0][~missed] > 0).all()
    assert (data["normals"].transpose(0, 2, 3, 1)[missed] == 0).all()
    assert np.isfinite(data["images"]).all()
    assert data["images"].min() >= 0.0 and data["images"].max() <= 1.0


def test_every_class_appears_and_no_colour_is_tied_to_a_class(medium: dict) -> None:
    """Objects' colours are drawn apart from their shape: each class shows in many hues."""
    seg, instance, images = medium["segmentation"], medium["instance"], medium["images"]
    assert set(np.unique(seg)) == set(range(len(scenes.CLASS_NAMES)))
    for cls in (scenes.SPHERE, scenes.BOX, scenes.CYLINDER):
        hues = []
        for i, slot in zip(*np.nonzero(medium["object_class"] == cls), strict=True):
            mask = instance[i] == slot
            hues.append(np.argmax(images[i][:, mask].mean(axis=1)))
        assert len(set(hues)) >= 2, f"every {scenes.CLASS_NAMES[cls]} has the same dominant channel"


def test_sphere_normals_point_away_from_its_centre(medium: dict) -> None:
    hits = points(medium, 32, 32)
    checked = 0
    for i, slot in zip(*np.nonzero(medium["object_class"] == scenes.SPHERE), strict=True):
        mask = medium["instance"][i] == slot
        assert (medium["segmentation"][i][mask] == scenes.SPHERE).all()
        offset = hits[i][mask] - medium["object_centre"][i, slot]
        radius = np.linalg.norm(offset, axis=-1)
        assert radius.std() < 1e-3 * radius.mean(), "sphere pixels lie on one sphere"
        normals = medium["normals"][i][:, mask].T
        np.testing.assert_allclose(normals, offset / radius[:, None], atol=1e-3)
        checked += 1
    assert checked >= 5


def test_floor_pixels_face_up_and_lie_on_the_floor(medium: dict) -> None:
    """Floor normals are the world's up vector in the camera frame, and its depth is the plane's."""
    v = scenes.pixel_rays(32, 32)[1].reshape(32, 32)
    for i in range(len(medium["pitch"])):
        floor = medium["segmentation"][i] == scenes.FLOOR
        assert floor.any()
        np.testing.assert_allclose(
            medium["normals"][i][:, floor].T,
            np.broadcast_to(world_up(medium)[i], (floor.sum(), 3)),
            atol=1e-5,
        )
        pitch, height = medium["pitch"][i], medium["cam_height"][i]
        plane = height / (math.sin(pitch) - v[floor] * math.cos(pitch))
        np.testing.assert_allclose(medium["depth"][i, 0][floor], plane, rtol=1e-5)


def test_boxes_and_cylinders_have_only_upright_and_level_faces(medium: dict) -> None:
    """Boxes turn about the vertical and cylinders stand upright: every face is a wall or a top,
    where a sphere's normals take every slope; so the class can be told from the normals."""
    for cls in (scenes.BOX, scenes.CYLINDER, scenes.SPHERE):
        slopes = []
        for i in range(len(medium["pitch"])):
            mask = medium["segmentation"][i] == cls
            slopes.append(medium["normals"][i][:, mask].T @ world_up(medium)[i])
        slope = np.concatenate(slopes)
        level_or_upright = np.isclose(slope, 0.0, atol=1e-4) | np.isclose(slope, 1.0, atol=1e-4)
        if cls == scenes.SPHERE:
            assert level_or_upright.mean() < 0.1
        else:
            assert level_or_upright.all(), scenes.CLASS_NAMES[cls]


def test_has_sphere_is_what_the_segmentation_shows(medium: dict) -> None:
    shows = (medium["segmentation"] == scenes.SPHERE).any(axis=(1, 2))
    np.testing.assert_array_equal(medium["has_sphere"], shows.astype(np.int64))
    assert 0 < shows.sum() < len(shows)


def test_every_object_shows_so_the_count_can_be_seen(small: dict) -> None:
    """At 16×16 already, each placed object shows, and at the pixel of its own centre."""
    focal = 0.5 * 16 / math.tan(scenes.FOV / 2)
    for i in range(len(small["object_count"])):
        slots = np.flatnonzero(small["object_class"][i] >= 0)
        assert len(slots) == small["object_count"][i]
        assert set(np.unique(small["instance"][i])) - {-1} == set(slots)
        for slot in slots:
            x, y, z = small["object_centre"][i, slot]
            col, row = int(8 + focal * x / -z), int(8 - focal * y / -z)
            assert small["instance"][i, row, col] == slot
            assert small["segmentation"][i, row, col] == small["object_class"][i, slot]
    assert set(small["object_count"]) == {1, 2, 3}


def test_every_task_reads_the_same_image_tensor(tiny_splits, tmp_path: Path) -> None:
    import torch

    spec = InputSpec(3, 16, 20)
    data = {  # each task added with its own --seed: the splits' seeds are fixed
        label: scenes.split_datasets(label)(DataRequest(tmp_path, spec, seed=seed))
        for seed, (label, *_) in enumerate(scenes.TASKS)
    }
    images = data["segmentation"].train.tensors[0]
    assert images.shape == (12, 3, 16, 20) and images.dtype == torch.float32
    for label, task in data.items():
        assert task.train.tensors[0] is images, label
        assert task.val.tensors[0] is data["segmentation"].val.tensors[0], label
    assert data["segmentation"].train.tensors[1].shape == (12, 16, 20)
    assert data["segmentation"].train.tensors[1].dtype == torch.long
    assert data["depth"].train.tensors[1].shape == (12, 1, 16, 20)
    assert data["normals"].train.tensors[1].shape == (12, 3, 16, 20)
    assert data["has-sphere"].train.tensors[1].dtype == torch.long
    assert set(data["object-count"].train.tensors[1].tolist()) <= {0, 1, 2}


def test_native_size_splits_take_seconds(tmp_path: Path) -> None:
    """The full splits at the native 3×64×64 (no store size given): see `--durations`."""
    scenes.generate.cache_clear()
    request = DataRequest(data_dir=tmp_path, input_spec=None)
    data = scenes.split_datasets("normals")(request)
    assert len(data.train) == scenes.SPLIT_SIZES["train"] == 800
    assert len(data.val) == scenes.SPLIT_SIZES["val"] == 200
    image, normals = data.val[0]
    assert tuple(image.shape) == scenes.NATIVE_SHAPE and tuple(normals.shape) == (3, 64, 64)
    scenes.generate.cache_clear()


def test_the_plugin_registers_its_tasks() -> None:
    from dmtcore.hooks.host import create_plugin_host

    tasks = create_plugin_host(["dmt_plugins.scenes"], autoload=False).kinds.tasks
    expected = {
        "scenes.segmentation": ("segmentation", 5),
        "scenes.depth": ("depth", 1),
        "scenes.normals": ("normals", 3),
        "scenes.has-sphere": ("binary", 2),
        "scenes.object-count": ("multiclass", 3),
    }
    assert {name: (tasks[name].output, tasks[name].num_outputs) for name in expected} == expected
    assert tasks["scenes.segmentation"].class_names == scenes.CLASS_NAMES
    assert tasks["scenes.object-count"].class_names == ("one", "two", "three")
