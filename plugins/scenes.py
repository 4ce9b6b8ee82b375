"""`scenes`: rendered rooms of spheres, boxes and cylinders, with exact per-pixel ground truth.

Each image is a pinhole view of a chequered floor and a back wall with one to three primitives
resting on the floor: spheres, boxes (turned about the vertical) and vertical cylinders. The
camera's height, pitch and yaw, the light's direction, the ambient level and every colour are
random, and colours are drawn independently of the shape, so only geometry tells the classes
apart: a sphere is the one curved everywhere, a cylinder curved around and flat on top, a box
flat with creases. Object boundaries are therefore normal discontinuities, which is what makes
segmentation and surface normals a related pair (NDDR-CNN §4, cross-stitch §6.2).

The ground truth is computed from the very ray hit that coloured the pixel, so it is exact at
the pixel centre: the class (`CLASS_NAMES`), the depth (distance along the camera axis, metres)
and the unit normal in camera coordinates (x right, y up, z towards the camera). The back wall
catches every ray of an image up to ten times as wide as high (any height), so every pixel is
labelled; wider than that, a ray that misses everything shows the wall's colour and carries
the contract's "no ground truth" marks (class -1, depth 0, normal 0). Image-level tasks on the same images:
`scenes.has-sphere` says whether any pixel shows a sphere (what is visible, read from the
segmentation), and `scenes.object-count` the number of objects in the scene. Objects are
placed so that no neighbour hides an object's middle and each centre lies inside the frame,
so from 16×16 up every object shows, at its centre's pixel (checked on 10 000 scenes; at
8×8 about 1 scene in 300 loses a small object).

A scene is drawn from its seed independently of the resolution, so one split shows the same
scenes at every store size. Splits use fixed seeds (`SPLIT_SEEDS`), as `shapes` does, rather
than the task's `--seed`: every scenes task then reads the very same image tensor, and the
engine evaluates them in one forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from dmtcore import DataRequest, TaskData, TaskSpec, hookimpl

NATIVE_SHAPE = (3, 64, 64)
CLASS_NAMES = ("floor", "wall", "sphere", "box", "cylinder")
FLOOR, WALL, SPHERE, BOX, CYLINDER = range(5)
IGNORE_LABEL = -1  # the dense label contract's unlabelled pixel
COUNT_NAMES = ("one", "two", "three")
MAX_OBJECTS = 3
FOV = math.radians(60.0)  # spanned by the image's shorter side
SPLIT_SIZES = {"train": 800, "val": 200}
SPLIT_SEEDS = {"train": 1, "val": 2}
HALF_VIEW = 0.42  # radians either side of the view axis for an object's centre
MARGIN = 0.08  # radians of an object's middle that no neighbour may hide
NOISE = 0.02
# Region-level tasks: the objects' classes (class id = segmentation class - SPHERE), and their
# attributes as the renderer draws them: a colour channel at least BRIGHT_CHANNEL (several may
# be), taller or wider than about half of all objects are, nearer to the camera than about half.
DETECTION_CLASSES = ("sphere", "box", "cylinder")
ATTRIBUTE_NAMES = ("red", "green", "blue", "tall", "wide", "near")
BRIGHT_CHANNEL = 0.55
TALL_METRES = 1.15
WIDE_METRES = 0.95
NEAR_METRES = 4.0
_CHUNK_PIXELS = 1 << 19
_EPS = 1e-6


def sample_scenes(n: int, seed: int) -> dict[str, Any]:
    """Every random choice of `n` scenes, in world coordinates (y up, floor at y = 0).

    Nothing here depends on the resolution, so a seed gives the same scenes at any size.
    An object's `kind` is 0 sphere, 1 box, 2 cylinder: its class id minus 2."""
    import numpy as np

    rng = np.random.default_rng(seed)
    s: dict[str, Any] = {
        "cam_x": rng.uniform(-0.5, 0.5, n),
        "cam_height": rng.uniform(1.2, 2.2, n),
        "pitch": np.radians(rng.uniform(10.0, 25.0, n)),
        "yaw": np.radians(rng.uniform(-10.0, 10.0, n)),
        "wall": rng.uniform(9.0, 12.0, n),
        "ambient": rng.uniform(0.25, 0.4, n),
        "floor_rgb": rng.uniform(0.2, 0.95, (n, 3)),
        "floor_dark": rng.uniform(0.55, 0.8, n),
        "tile": rng.uniform(0.5, 1.5, n),
        "wall_rgb": rng.uniform(0.2, 0.95, (n, 3)),
        "count": rng.integers(1, MAX_OBJECTS + 1, n),
        "kind": rng.integers(0, 3, (n, MAX_OBJECTS)),
        "object_rgb": rng.uniform(0.1, 1.0, (n, MAX_OBJECTS, 3)),
        "size": rng.uniform(0.0, 1.0, (n, MAX_OBJECTS, 3)),
        "turn": rng.uniform(0.0, math.pi / 2, (n, MAX_OBJECTS)),
    }
    elevation = np.radians(rng.uniform(30.0, 75.0, n))
    azimuth = np.radians(rng.uniform(-100.0, 100.0, n))
    s["light"] = np.stack(
        [
            np.cos(elevation) * np.sin(azimuth),
            np.sin(elevation),
            np.cos(elevation) * np.cos(azimuth),
        ],
        axis=-1,
    )
    s["active"] = np.arange(MAX_OBJECTS)[None] < s["count"][:, None]
    s["extent"] = _extents(s["kind"], s["size"])
    s["footprint"] = _footprints(s["kind"], s["extent"])
    _place(s, rng)
    return s


def _extents(kind: Any, size: Any) -> Any:
    """Half extents (x, y, z) of each object from uniform draws; a sphere's are its radius."""
    import numpy as np

    lo = np.array([[0.4, 0.4, 0.4], [0.3, 0.3, 0.3], [0.3, 0.4, 0.3]])
    hi = np.array([[0.75, 0.75, 0.75], [0.6, 0.75, 0.6], [0.55, 0.9, 0.55]])
    extent = lo[kind] + (hi[kind] - lo[kind]) * size
    sphere = kind == SPHERE - 2
    extent[sphere] = extent[sphere][:, :1]
    cylinder = kind == CYLINDER - 2
    extent[cylinder, 2] = extent[cylinder, 0]
    return extent


def _footprints(kind: Any, extent: Any) -> Any:
    """The radius of each object's footprint's enclosing circle, for the placement test."""
    import numpy as np

    box = np.hypot(extent[..., 0], extent[..., 2])
    return np.where(kind == BOX - 2, box, extent[..., 0])


def _place(s: dict[str, Any], rng: Any) -> None:
    """Put every object in view, on the floor, apart from the others, and never hidden.

    Objects stand left to right in a random order. Seen from the camera, neighbours' bearings
    differ by more than either's half-width (plus a margin), so no object reaches another's
    centre bearing: each one's middle shows from the floor to its top, though its sides may
    pass behind a neighbour. Neighbours also keep their footprints apart, and objects two
    apart have disjoint sectors (each gap exceeds its pair's half-widths). Where a scene's
    objects need more than the view's width, they are moved back until they fit; the spare
    width is spread at random between them. Built, not drawn until it fits: no loop, no
    dropped objects."""
    import numpy as np

    n = len(s["count"])
    distance = rng.uniform(2.5, 5.5, (n, MAX_OBJECTS))
    order = np.argsort(np.where(s["active"], rng.uniform(size=(n, MAX_OBJECTS)), np.inf), axis=1)
    spare = rng.exponential(size=(n, MAX_OBJECTS + 1))
    spare[np.arange(MAX_OBJECTS + 1)[None] > s["count"][:, None]] = 0.0
    spare /= spare.sum(axis=1, keepdims=True)
    for _ in range(6):
        needed = _gaps(s, distance, order).sum(axis=1)
        distance *= np.maximum(needed / (2 * HALF_VIEW), 1.0)[:, None] ** 1.05
    gaps = _gaps(s, distance, order)
    needed = gaps.sum(axis=1)
    slack = np.maximum(2 * HALF_VIEW - needed, 0.0)[:, None]
    steps = np.concatenate([np.zeros((n, 1)), gaps], axis=1) + slack * spare[:, :MAX_OBJECTS]
    ranked = (
        -HALF_VIEW + np.cumsum(steps, axis=1) - np.maximum(needed - 2 * HALF_VIEW, 0)[:, None] / 2
    )
    bearing = np.empty_like(ranked)
    np.put_along_axis(bearing, order, ranked, axis=1)
    s["wall"] = np.maximum(s["wall"], (distance + s["footprint"]).max(axis=1) + 1.0)
    heading = s["yaw"][:, None] + bearing
    s["centre"] = np.stack(
        [
            s["cam_x"][:, None] - distance * np.sin(heading),
            np.where(s["kind"] == SPHERE - 2, s["extent"][..., 0], s["extent"][..., 1]),
            -distance * np.cos(heading),
        ],
        axis=-1,
    )


def _gaps(s: dict[str, Any], distance: Any, order: Any) -> Any:
    """(n, k-1): the least bearing between neighbours in `order` (0 past the last object)."""
    import numpy as np

    width = np.take_along_axis(np.arcsin(np.minimum(s["footprint"] / distance, 1.0)), order, 1)
    rho = np.take_along_axis(distance, order, 1)
    radius = np.take_along_axis(s["footprint"], order, 1)
    a, b = slice(None, -1), slice(1, None)
    hide = np.maximum(width[:, a], width[:, b]) + MARGIN
    reach = (radius[:, a] + radius[:, b] + 0.05) ** 2
    cos = (rho[:, a] ** 2 + rho[:, b] ** 2 - reach) / (2 * rho[:, a] * rho[:, b])
    touch = np.arccos(np.clip(cos, -1.0, 1.0))
    both = np.arange(1, MAX_OBJECTS)[None] < s["count"][:, None]
    return np.where(both, np.maximum(hide, touch), 0.0)


def camera_axes(pitch: Any, yaw: Any) -> Any:
    """(n, 3, 3): the camera's right, up and backward axes in world coordinates, one per row."""
    import numpy as np

    sp, cp, sy, cy = np.sin(pitch), np.cos(pitch), np.sin(yaw), np.cos(yaw)
    zero = np.zeros_like(pitch)
    right = np.stack([cy, zero, -sy], axis=-1)
    up = np.stack([-sp * sy, cp, -sp * cy], axis=-1)
    back = np.stack([sy * cp, sp, cy * cp], axis=-1)
    return np.stack([right, up, back], axis=1)


def pixel_rays(height: int, width: int) -> tuple[Any, Any]:
    """Camera-frame ray slopes (u, v) of every pixel centre, flattened row by row.

    A pixel's ray is (u, v, -1) in camera coordinates, so a hit at parameter t lies at depth t."""
    import numpy as np

    focal = 0.5 * min(height, width) / math.tan(FOV / 2)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    u = (cols - width / 2) / focal
    v = -(rows - height / 2) / focal
    return u.ravel(), v.ravel()


def render_scenes(n: int, height: int, width: int, seed: int) -> dict[str, Any]:
    """Render `n` scenes at height×width: images and exact per-pixel ground truth (numpy).

    Keys: images (n×3×H×W float32 in [0, 1]), segmentation (n×H×W int64, `CLASS_NAMES`),
    depth (n×1×H×W float32, metres, > 0), normals (n×3×H×W float32, unit, camera frame)
    (in images over ten times as wide as high, rays that miss everything get -1, 0 and 0),
    instance (n×H×W int64: the object's slot, -1 on floor and wall), has_sphere (n, 0/1 from the
    segmentation), object_count (n, 1..3); and for checks: pitch, cam_height (n),
    object_class (n×3, -1 for an empty slot) and object_centre (n×3×3, camera frame)."""
    import numpy as np

    s = sample_scenes(n, seed)
    axes = camera_axes(s["pitch"], s["yaw"])
    origin = np.stack([s["cam_x"], s["cam_height"], np.zeros(n)], axis=-1)
    u, v = pixel_rays(height, width)
    pixels = height * width
    out = {
        "images": np.empty((n, 3, height, width), dtype=np.float32),
        "segmentation": np.empty((n, height, width), dtype=np.int64),
        "instance": np.empty((n, height, width), dtype=np.int64),
        "depth": np.empty((n, 1, height, width), dtype=np.float32),
        "normals": np.empty((n, 3, height, width), dtype=np.float32),
    }
    noise = np.random.default_rng([seed, height, width])
    step = max(1, _CHUNK_PIXELS // pixels)
    for start in range(0, n, step):
        rows = slice(start, min(start + step, n))
        chunk = _render_chunk(s, axes, origin, u, v, rows)
        m = rows.stop - rows.start
        grain = noise.standard_normal((m, pixels, 3), dtype=np.float32) * NOISE
        chunk["images"] = np.clip(chunk["images"] + grain, 0.0, 1.0)
        for key in ("images", "normals"):
            out[key][rows] = chunk[key].reshape(m, height, width, 3).transpose(0, 3, 1, 2)
        for key in ("segmentation", "instance", "depth"):
            out[key][rows] = chunk[key].reshape(out[key][rows].shape)
    out["has_sphere"] = (out["segmentation"] == SPHERE).any(axis=(1, 2)).astype(np.int64)
    out["object_count"] = s["count"].astype(np.int64)
    out["pitch"] = s["pitch"]
    out["cam_height"] = s["cam_height"]
    out["object_class"] = np.where(s["active"], s["kind"] + 2, -1).astype(np.int64)
    out["object_centre"] = np.einsum("nij,nkj->nki", axes, s["centre"] - origin[:, None])
    out["object_attributes"] = object_attributes(s, origin)
    return out


def object_attributes(s: dict[str, Any], origin: Any) -> Any:
    """(n, 3, len(ATTRIBUTE_NAMES)) 0/1: what the renderer knows of each object slot (see
    ATTRIBUTE_NAMES); empty slots are all 0."""
    import numpy as np

    sphere = s["kind"] == SPHERE - 2
    height = np.where(sphere, 2 * s["extent"][..., 0], 2 * s["extent"][..., 1])
    width = 2 * s["extent"][..., 0]
    distance = np.hypot(
        s["centre"][..., 0] - origin[:, None, 0], s["centre"][..., 2] - origin[:, None, 2]
    )
    values = np.concatenate(
        [
            s["object_rgb"] >= BRIGHT_CHANNEL,
            (height >= TALL_METRES)[..., None],
            (width >= WIDE_METRES)[..., None],
            (distance < NEAR_METRES)[..., None],
        ],
        axis=-1,
    )
    return (values & s["active"][..., None]).astype(np.int64)


def object_boxes(instance: Any, object_class: Any, attributes: Any) -> list[dict[str, Any]]:
    """Per image, the box of every object that shows (its visible pixels' extent: x1, y1 of its
    first pixel, x2, y2 one past its last, in pixels), its class id among DETECTION_CLASSES and
    its attributes, as numpy arrays. Exact at the rendered size: the very pixels that show it."""
    import numpy as np

    labels = []
    for image, classes, flags in zip(instance, object_class, attributes, strict=True):
        boxes, ids, attrs = [], [], []
        for slot in range(MAX_OBJECTS):
            rows = np.flatnonzero((image == slot).any(axis=1))
            if classes[slot] < 0 or not rows.size:
                continue
            cols = np.flatnonzero((image == slot).any(axis=0))
            boxes.append([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1])
            ids.append(classes[slot] - SPHERE)
            attrs.append(flags[slot])
        labels.append(
            {
                "boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                "labels": np.asarray(ids, dtype=np.int64),
                "attributes": np.asarray(attrs, dtype=np.float32).reshape(-1, len(ATTRIBUTE_NAMES)),
            }
        )
    return labels


def _render_chunk(
    s: dict[str, Any], axes: Any, origin: Any, u: Any, v: Any, rows: slice
) -> dict[str, Any]:
    """Cast every pixel's ray of scenes `rows`, keep the nearest hit, shade it (Lambert + ambient).

    The loop keeps only distance, class, slot and normal; colours are looked up once at the end."""
    import numpy as np

    ax = axes[rows]
    o = origin[rows][:, None, :]
    d = u[None, :, None] * ax[:, None, 0] + v[None, :, None] * ax[:, None, 1] - ax[:, None, 2]
    m, p = d.shape[:2]
    with np.errstate(divide="ignore", invalid="ignore"):
        floor = np.where(d[..., 1] < 0, -o[..., 1] / d[..., 1], np.inf)
        wall = np.where(d[..., 2] < 0, (-s["wall"][rows][:, None] - o[..., 2]) / d[..., 2], np.inf)
    on_wall = wall < floor
    t = np.where(on_wall, wall, floor)
    cls = np.where(on_wall, WALL, FLOOR)
    slot_of = np.full((m, p), -1)
    normal = np.zeros((m, p, 3))
    normal[..., 1] = ~on_wall
    normal[..., 2] = on_wall
    everyone = np.arange(rows.start, rows.stop)
    for slot in range(MAX_OBJECTS):
        for kind, intersect in ((SPHERE, _sphere), (BOX, _box), (CYLINDER, _cylinder)):
            chosen = np.flatnonzero(s["active"][rows, slot] & (s["kind"][rows, slot] == kind - 2))
            if len(chosen) == 0:
                continue
            hit, hit_normal = intersect(o[chosen], d[chosen], s, everyone[chosen], slot)
            nearer = hit < t[chosen]
            t[chosen] = np.where(nearer, hit, t[chosen])
            cls[chosen] = np.where(nearer, kind, cls[chosen])
            slot_of[chosen] = np.where(nearer, slot, slot_of[chosen])
            normal[chosen] = np.where(nearer[..., None], hit_normal, normal[chosen])
    missed = np.isinf(t)
    cls[missed], t[missed], normal[missed] = IGNORE_LABEL, 0.0, 0.0
    albedo = _albedo(s, rows, o, d, t, cls, slot_of)
    light = s["light"][rows][:, None, :]
    lambert = np.clip((normal * light).sum(-1), 0.0, None)
    ambient = s["ambient"][rows][:, None]
    shade = ambient + (1.0 - ambient) * lambert
    return {
        "images": (albedo * shade[..., None]).astype(np.float32),
        "segmentation": cls,
        "instance": slot_of,
        "depth": t,
        "normals": normal @ ax.transpose(0, 2, 1),
    }


def _albedo(s: dict[str, Any], rows: slice, o: Any, d: Any, t: Any, cls: Any, slot_of: Any) -> Any:
    """Each pixel's surface colour: the floor's chequer (world x and z), the wall's, an object's;
    a ray that hit nothing sees the wall's colour."""
    import numpy as np

    m = t.shape[0]
    colour = s["object_rgb"][rows][np.arange(m)[:, None], np.maximum(slot_of, 0)]
    wall = (cls == WALL) | (cls == IGNORE_LABEL)
    colour[wall] = np.broadcast_to(s["wall_rgb"][rows][:, None], colour.shape)[wall]
    where, pixel = np.nonzero(cls == FLOOR)
    point = o[where, 0] + t[where, pixel, None] * d[where, pixel]
    tile = s["tile"][rows][where]
    odd = (np.floor(point[:, 0] / tile) + np.floor(point[:, 2] / tile)) % 2 == 1
    dark = np.where(odd, s["floor_dark"][rows][where], 1.0)
    colour[where, pixel] = s["floor_rgb"][rows][where] * dark[:, None]
    return colour


def _sphere(o: Any, d: Any, s: dict[str, Any], index: Any, slot: int) -> tuple[Any, Any]:
    """Nearest entry into each sphere and the outward normal there."""
    import numpy as np

    centre = s["centre"][index, slot][:, None, :]
    radius = s["extent"][index, slot, 0][:, None]
    oc = o - centre
    a = (d * d).sum(-1)
    b = (d * oc).sum(-1)
    c = (oc * oc).sum(-1) - radius**2
    disc = b * b - a * c
    t = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
    t = np.where((disc > 0) & (t > _EPS), t, np.inf)
    normal = (o + np.where(np.isfinite(t), t, 0.0)[..., None] * d - centre) / radius[..., None]
    return t, normal


def _box(o: Any, d: Any, s: dict[str, Any], index: Any, slot: int) -> tuple[Any, Any]:
    """Slab test in the box's own frame (turned about y); the normal is the entry face's."""
    import numpy as np

    turn = s["turn"][index, slot]
    cos, sin, zero, one = np.cos(turn), np.sin(turn), np.zeros_like(turn), np.ones_like(turn)
    frame = np.stack(  # rows: the box's x, y, z axes in world coordinates
        [
            np.stack([cos, zero, -sin], -1),
            np.stack([zero, one, zero], -1),
            np.stack([sin, zero, cos], -1),
        ],
        axis=1,
    )
    local_o = (o - s["centre"][index, slot][:, None, :]) @ frame.transpose(0, 2, 1)
    local_d = d @ frame.transpose(0, 2, 1)
    local_d = np.where(np.abs(local_d) < 1e-12, 1e-12, local_d)
    half = s["extent"][index, slot][:, None, :]
    t1 = (-half - local_o) / local_d
    t2 = (half - local_o) / local_d
    near = np.minimum(t1, t2)
    t_near = near.max(-1)
    t_far = np.maximum(t1, t2).min(-1)
    t = np.where((t_near <= t_far) & (t_near > _EPS), t_near, np.inf)
    face = near.argmax(-1)
    sign = -np.sign(np.take_along_axis(local_d, face[..., None], -1))
    local_normal = (np.arange(3) == face[..., None]) * sign
    return t, local_normal @ frame


def _cylinder(o: Any, d: Any, s: dict[str, Any], index: Any, slot: int) -> tuple[Any, Any]:
    """A vertical cylinder standing on the floor: its curved side, or its flat top."""
    import numpy as np

    centre = s["centre"][index, slot][:, None, :]
    radius = s["extent"][index, slot, 0][:, None]
    top = 2.0 * s["extent"][index, slot, 1][:, None]
    ox, oz = o[..., 0] - centre[..., 0], o[..., 2] - centre[..., 2]
    dx, dz = d[..., 0], d[..., 2]
    a = dx * dx + dz * dz
    b = ox * dx + oz * dz
    disc = b * b - a * (ox * ox + oz * oz - radius**2)
    with np.errstate(divide="ignore", invalid="ignore"):
        side = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
        height = o[..., 1] + side * d[..., 1]
        side = np.where((disc > 0) & (side > _EPS) & (height >= 0) & (height <= top), side, np.inf)
        cap = np.where(d[..., 1] < 0, (top - o[..., 1]) / d[..., 1], np.inf)
    cap_x, cap_z = (
        ox + np.where(np.isfinite(cap), cap, 0.0) * dx,
        oz + np.where(np.isfinite(cap), cap, 0.0) * dz,
    )
    cap = np.where((cap > _EPS) & (cap_x**2 + cap_z**2 <= radius**2), cap, np.inf)
    on_side = side <= cap
    t = np.minimum(side, cap)
    ts = np.where(np.isfinite(side), side, 0.0)
    side_normal = np.stack(
        [(ox + ts * dx) / radius, np.zeros_like(ts), (oz + ts * dz) / radius], axis=-1
    )
    normal = np.where(on_side[..., None], side_normal, np.array([0.0, 1.0, 0.0]))
    return t, normal


@lru_cache(maxsize=4)
def generate(split: str, height: int, width: int) -> dict[str, Any]:
    """One split at one size as torch tensors, built once: every task reads these very objects."""
    import torch

    data = render_scenes(SPLIT_SIZES[split], height, width, SPLIT_SEEDS[split])
    return {
        "images": torch.from_numpy(data["images"]),
        "segmentation": torch.from_numpy(data["segmentation"]),
        "depth": torch.from_numpy(data["depth"]),
        "normals": torch.from_numpy(data["normals"]),
        "has-sphere": torch.from_numpy(data["has_sphere"]),
        "object-count": torch.from_numpy(data["object_count"] - 1),
        "objects": object_boxes(data["instance"], data["object_class"], data["object_attributes"]),
    }


class SceneRegions:
    """A split's images with one dict of boxes per image (`object_boxes`), as region tasks
    take them: {boxes, labels} for detection, {boxes, attributes} for box attributes."""

    def __init__(self, images: Any, objects: list[dict[str, Any]], keys: tuple[str, str]) -> None:
        import torch

        self.images = images
        self.labels = [{key: torch.from_numpy(o[key]) for key in keys} for o in objects]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Any, dict[str, Any]]:
        return self.images[index], self.labels[index]


def region_datasets(keys: tuple[str, str]) -> Any:
    """The dataset factory of a region task: the scenes' images (the very tensor the other
    tasks read) and their objects' boxes with `keys` ("boxes" and "labels" or "attributes")."""

    def datasets(request: DataRequest) -> TaskData:
        spec = request.input_spec
        height, width = (spec.height, spec.width) if spec else NATIVE_SHAPE[1:]
        splits = {}
        for split in SPLIT_SIZES:
            data = generate(split, height, width)
            splits[split] = SceneRegions(data["images"], data["objects"], keys)
        return TaskData(**splits, deterministic=True)

    return datasets


def split_datasets(label: str, relabel: Callable[[Any], Any] | None = None) -> Any:
    """The dataset factory of a task on the scenes' images: `label` is a key of `generate`,
    optionally mapped by `relabel` (other tasks on the same images, such as the benchmarks'
    coarser segmentations). Every such task shares the one image tensor per split and size."""

    def datasets(request: DataRequest) -> TaskData:
        from torch.utils.data import TensorDataset

        spec = request.input_spec
        height, width = (spec.height, spec.width) if spec else NATIVE_SHAPE[1:]
        splits = {}
        for split in SPLIT_SIZES:
            data = generate(split, height, width)
            labels = relabel(data[label]) if relabel else data[label]
            splits[split] = TensorDataset(data["images"], labels)
        return TaskData(**splits)

    return datasets


TASKS = (
    (
        "segmentation",
        "which surface each pixel shows: floor, wall, sphere, box or cylinder",
        "segmentation",
        5,
        CLASS_NAMES,
    ),
    ("depth", "each pixel's distance along the camera axis, in metres", "depth", 1, None),
    ("normals", "each pixel's unit surface normal in camera coordinates", "normals", 3, None),
    ("has-sphere", "does any sphere show in the image", "binary", 2, ("no", "yes")),
    (
        "object-count",
        "how many objects stand on the floor: one, two or three",
        "multiclass",
        3,
        COUNT_NAMES,
    ),
)


@hookimpl
def dmt_register_tasks(kinds: Any) -> None:
    for label, description, output, outputs, classes in TASKS:
        kinds.add_task(
            TaskSpec(
                name=f"scenes.{label}",
                description=description,
                input_shape=NATIVE_SHAPE,
                output=output,
                num_outputs=outputs,
                class_names=classes,
                datasets=split_datasets(label),
                data_status="built-in",
            )
        )
    kinds.add_task(
        TaskSpec(
            name="scenes.detection",
            description="every object's box and shape: sphere, box or cylinder",
            input_shape=NATIVE_SHAPE,
            output="detection",
            num_outputs=len(DETECTION_CLASSES),
            class_names=DETECTION_CLASSES,
            datasets=region_datasets(("boxes", "labels")),
            data_status="built-in",
        )
    )
    kinds.add_task(
        TaskSpec(
            name="scenes.attributes",
            description="each object's attributes: red, green, blue, tall, wide, near",
            input_shape=NATIVE_SHAPE,
            output="box-attributes",
            num_outputs=len(ATTRIBUTE_NAMES),
            class_names=ATTRIBUTE_NAMES,
            datasets=region_datasets(("boxes", "attributes")),
            data_status="built-in",
            boxes_from="scenes.detection",
        )
    )
