"""`nyuv2`: NYU Depth v2 as dense tasks, from MTAN's preprocessed layout (the one LibMTL uses)
or from the official labelled `.mat` (the one NDDR-CNN's Table 4 uses).

    nyuv2.segmentation   13 classes per pixel (Couprie et al.'s 13-class labelling), -1 unlabelled
                         (MTAN's layout)
    nyuv2.seg40          40 classes per pixel (Gupta et al.'s mapping of the 894 raw classes),
                         -1 unlabelled (the official .mat)
    nyuv2.depth          depth per pixel in metres, 0 where the sensor gave none (either)
    nyuv2.normals        unit surface normal per pixel, all-zero where there is none, trained
                         with 1 − cos (MTAN's layout: the official .mat has no normals)
    nyuv2.normals-l1     the same normals trained with L1 on normalised vectors, as
                         Vandenhende et al.'s code does (the loss is part of the task's name,
                         so the store, MLflow and `dmt eval` agree on it)

MTAN's layout: `<data-dir>/nyuv2/` as unzipped from MTAN's `nyuv2.zip` (or `--data-dir` naming
that folder itself), with `train/` (795 images) and `val/` (654), each holding `image/`,
`label/`, `depth/` and `normal/` folders of `0.npy, 1.npy, ...` at 288×384: image H×W×3
floats in [0, 1], label H×W class ids 0..12 (stored as floats) or -1, depth H×W×1, normal
H×W×3 in [-1, 1]. There is no `--download`: the archive is on Dropbox, linked from MTAN's
README.

The official layout: `nyu_depth_v2_labeled.mat` in `<data-dir>/nyuv2/` (or `<data-dir>`), with
the standard split `splits.mat` and, for `nyuv2.seg40`, `classMapping40.mat` beside it (see
`dmt_plugins.nyuv2_mat`, which reads them). Which layout a task reads is decided by what is on
disk: a task that either could read (`nyuv2.depth`) refuses to guess when both are there.

Splits: MTAN's `val/` is NYUv2's official test set (MTAN and LibMTL report on it and select
nothing on it), so it is our `test`, as the official split's `testNdxs` are. The engine picks
the best epoch on `val`, so a fixed 10% of `train/` (or of `trainNdxs`: the same images for
every task of a layout, whatever the training seed) is held out as `val`, as `cifar10-pairs`
does for CIFAR-10.

Samples are read from their files on every access (795 training images are about 1 GB as
float32), and served at the store's size: the image bilinear (antialiased), the labels by
nearest neighbour, so class ids, invalid depth and unit normals are never blended.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dmt_plugins.nyuv2_mat import (
    CLASS_NAMES_40,
    MAPPING_FILE,
    MAT_FILE,
    NYU_PAGE,
    SPLITS_FILE,
    OfficialFile,
    find_mat,
    read_mapping,
    read_split,
)
from dmtcore import DataRequest, TaskData, TaskSpec, hookimpl
from dmtcore.errors import DataError, first_line

NATIVE_SHAPE = (3, 288, 384)
OFFICIAL_SHAPE = (3, 480, 640)
# Where a task's data may come from (`Target.layouts`).
MTAN_LAYOUT, MAT_LAYOUT = "mtan", "mat"
BASE_FOLDER = "nyuv2"
FOLDERS = ("train", "val")  # on disk; `val` is served as our `test`
IMAGE = "image"
CLASS_NAMES = (
    "bed",
    "books",
    "ceiling",
    "chair",
    "floor",
    "furniture",
    "objects",
    "picture",
    "sofa",
    "table",
    "tv",
    "wall",
    "window",
)
IGNORE_LABEL = -1
# Stored pixels and normal components may stray this far outside [0, 1] and [-1, 1] (float
# rounding in preprocessing); 0..255 pixels or unnormalised normals are far outside.
SLACK = 1e-3
VAL_FRACTION = 0.1
SPLIT_SEED = 20190601  # fixed: the held-out images must not move with the training seed
MTAN = "https://github.com/lorenmt/mtan"
ARCHIVE = "https://www.dropbox.com/s/p2nn02wijg7peiy/nyuv2.zip?dl=0"
SAMPLE_FILE = re.compile(r"^(0|[1-9][0-9]*)\.npy$")


@dataclass(frozen=True)
class Target:
    """One task: its label folder in MTAN's layout and what a file in it holds, the layouts it
    can be read from, and what its spec declares beyond the kind's defaults."""

    task: str
    folder: str
    output: str
    num_outputs: int
    description: str
    layout: str  # what a valid file is, for error messages
    layouts: tuple[str, ...] = (MTAN_LAYOUT,)
    loss: str | None = None
    class_names: tuple[str, ...] | None = None
    input_shape: tuple[int, int, int] = NATIVE_SHAPE


TARGETS = (
    Target(
        "segmentation",
        "label",
        "segmentation",
        len(CLASS_NAMES),
        "NYUv2 13-class semantic segmentation (MTAN's preprocessed 288×384)",
        "H×W class ids 0..12 or -1 (unlabelled), floats or integers",
        class_names=CLASS_NAMES,
    ),
    Target(
        "seg40",
        "",  # not in MTAN's layout
        "segmentation",
        len(CLASS_NAMES_40),
        "NYUv2 40-class semantic segmentation (official labelled .mat, 480×640, Gupta et al.'s "
        "classes)",
        "",
        layouts=(MAT_LAYOUT,),
        class_names=CLASS_NAMES_40,
        input_shape=OFFICIAL_SHAPE,
    ),
    Target(
        "depth",
        "depth",
        "depth",
        1,
        "NYUv2 depth in metres (MTAN's preprocessed 288×384, or the official labelled .mat)",
        "H×W×1 (or H×W) floats ≥ 0, 0 where there is no depth",
        layouts=(MTAN_LAYOUT, MAT_LAYOUT),
    ),
    Target(
        "normals",
        "normal",
        "normals",
        3,
        "NYUv2 surface normals (MTAN's preprocessed 288×384)",
        "H×W×3 floats in [-1, 1], unit vectors or all zero where there is no normal",
    ),
    Target(
        "normals-l1",
        "normal",
        "normals",
        3,
        "NYUv2 surface normals, L1 loss on normalised vectors (MTAN's preprocessed 288×384)",
        "H×W×3 floats in [-1, 1], unit vectors or all zero where there is no normal",
        loss="normals_l1",
    ),
)


def resolve_folder(root: Path) -> Path | None:
    """`<data-dir>/nyuv2/` when it is there, else `<data-dir>` itself when it holds `train/` and
    `val/` (a user who points --data-dir at the unzipped folder); None when neither is."""
    for folder in (root / BASE_FOLDER, root):
        if all((folder / split).is_dir() for split in FOLDERS):
            return folder
    return None


def missing_message(root: Path, target: Target, missing: list[Path]) -> str:
    """Which folders are expected where, which are missing, and how to get them."""
    folder = root / BASE_FOLDER
    absent = f"; missing: {', '.join(str(p) for p in missing)}" if missing else ""
    official = f" Or: {official_files(root, target)}." if MAT_LAYOUT in target.layouts else ""
    return (
        f"NYUv2 is not in --data-dir {str(root)!r}: expected {folder / 'train'}/ and "
        f"{folder / 'val'}/, each with {IMAGE}/ and {target.folder}/ folders of 0.npy, 1.npy, "
        f"... (MTAN's preprocessed NYUv2, 288×384; --data-dir may also be the folder holding "
        f"train/ and val/){absent}. There is no --download for NYUv2: download nyuv2.zip "
        f"({ARCHIVE}, linked from {MTAN}; LibMTL uses the same files) and unzip it into "
        f"{str(root)!r}.{official}"
    )


def official_files(root: Path, target: Target) -> str:
    """The official layout's files, where they are looked for, and where they come from."""
    folder = root / BASE_FOLDER
    mapping = f" and {MAPPING_FILE} (Gupta et al.'s 894 → 40 mapping)" * (
        target.output == "segmentation"
    )
    return (
        f"the official labelled {folder / MAT_FILE} (or {root / MAT_FILE}) from {NYU_PAGE}, "
        f"with {SPLITS_FILE} (the standard 795/654 split){mapping} beside it"
    )


def choose_layout(root: Path, target: Target) -> str:
    """The layout the task reads in `root`: the one of its layouts found on disk, refusing to
    guess when both are, and naming what is missing (or unusable) when none is."""
    mtan, mat = resolve_folder(root), find_mat(root, BASE_FOLDER)
    found = {MTAN_LAYOUT: mtan is not None, MAT_LAYOUT: mat is not None}
    usable = [layout for layout in target.layouts if found[layout]]
    name = f"nyuv2.{target.task}"
    if len(usable) > 1:
        raise DataError(
            f"NYUv2 is in --data-dir {str(root)!r} twice: MTAN's preprocessed train/ and val/ "
            f"in {mtan} and the official {mat}; {name} can be read from either and they differ "
            "(image size, split files, preprocessing), so dmt does not choose: give --data-dir "
            "a folder holding only the one to use"
        )
    if usable:
        return usable[0]
    if MAT_LAYOUT not in target.layouts and mat is not None:
        lacks = {
            "normals": "has no surface normals (only images, depths and raw labels)",
            "segmentation": f"is read for its 40 classes by nyuv2.seg40, not for {name}'s 13",
        }[target.output]
        raise DataError(f"NYUv2's official {mat} {lacks}; {missing_message(root, target, [])}")
    if MTAN_LAYOUT not in target.layouts:
        mtan_note = (
            f" (MTAN's preprocessed folders in {mtan} hold 13 classes only: nyuv2.segmentation)"
            if mtan is not None
            else ""
        )
        raise DataError(
            f"NYUv2 for {name} is not in --data-dir {str(root)!r}: expected "
            f"{official_files(root, target)}{mtan_note}. There is no --download for NYUv2."
        )
    return MTAN_LAYOUT


def sample_ids(folder: Path) -> set[int]:
    return {int(m.group(1)) for name in os.listdir(folder) if (m := SAMPLE_FILE.match(name))}


def list_samples(root: Path, target: Target) -> dict[str, tuple[Path, list[int]]]:
    """Per folder on disk: its path and the sample ids that have both an image and a label
    file. A sample with only one of them is an incomplete unzip, named in the error."""
    base = resolve_folder(root)
    needed = [(base or root / BASE_FOLDER) / s / f for s in FOLDERS for f in (IMAGE, target.folder)]
    missing = [p for p in needed if not p.is_dir()]
    if base is None or missing:
        raise DataError(missing_message(root, target, missing))
    listing = {}
    for split in FOLDERS:
        images, labels = (sample_ids(base / split / f) for f in (IMAGE, target.folder))
        unmatched = sorted(images ^ labels)
        if unmatched:
            index = unmatched[0]
            lacking = target.folder if index in images else IMAGE
            raise DataError(
                f"NYUv2 {split} sample {index} has no {base / split / lacking / f'{index}.npy'} "
                f"({len(unmatched)} samples lack an {IMAGE} or a {target.folder} file); every "
                f"{IMAGE}/N.npy needs a {target.folder}/N.npy: unzip nyuv2.zip again ({MTAN})"
            )
        if not images:
            raise DataError(
                f"NYUv2 folder {str(base / split / IMAGE)!r} has no sample files (0.npy, 1.npy, "
                f"...): {missing_message(root, target, [])}"
            )
        listing[split] = (base / split, sorted(images))
    return listing


def read_array(path: Path) -> Any:
    """A .npy file's array, never unpickling (a pickle from a data directory could run code)."""
    import numpy as np

    try:
        array = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise DataError(
            f"NYUv2 file {str(path)!r} is not a plain numpy .npy array "
            f"({type(exc).__name__}: {first_line(exc)}); pickled objects are never loaded"
        ) from exc
    if not isinstance(array, np.ndarray):
        raise DataError(f"NYUv2 file {str(path)!r} is not a single .npy array")
    return array


def refuse(path: Path, array: Any, valid: str, problem: str = "") -> DataError:
    found = problem or f"shape {'×'.join(map(str, array.shape))}, dtype {array.dtype}"
    return DataError(f"NYUv2 file {str(path)!r} holds {found}; expected {valid}")


def check_numbers(path: Path, array: Any, valid: str, kinds: str = "f") -> None:
    import numpy as np

    if array.dtype.kind not in kinds:
        raise refuse(path, array, valid)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise refuse(path, array, valid, "NaN or infinite values")


def read_image(path: Path) -> Any:
    """3×H×W float32 in [0, 1] from an H×W×3 file."""
    import numpy as np

    valid = "H×W×3 floats in [0, 1] (an RGB image)"
    array = read_array(path)
    if array.ndim != 3 or array.shape[2] != 3:
        raise refuse(path, array, valid)
    check_numbers(path, array, valid)
    if array.size and (array.min() < -SLACK or array.max() > 1 + SLACK):
        raise refuse(path, array, valid, f"values from {array.min():g} to {array.max():g}")
    return np.ascontiguousarray(np.clip(np.moveaxis(array, -1, 0), 0.0, 1.0), dtype=np.float32)


def read_label(path: Path, target: Target, size: tuple[int, int]) -> Any:
    """The task's label for an image of `size` (H, W), in the dense label contract's form:
    int64 H×W for segmentation, float32 1×H×W depth, float32 3×H×W unit normals."""
    import numpy as np

    array = read_array(path)
    if target.output == "segmentation":
        ok = array.shape == size
        kinds = "fiu"
    elif target.output == "depth":
        ok = array.shape in (size, (*size, 1))
        kinds = "f"
    else:
        ok = array.shape == (*size, 3)
        kinds = "f"
    if not ok:
        expected = f"{target.layout}, H×W the image's {size[0]}×{size[1]}"
        raise refuse(path, array, expected)
    check_numbers(path, array, target.layout, kinds)
    if target.output == "segmentation":
        return class_ids(path, array, target)
    if target.output == "depth":
        if array.size and array.min() < 0:
            raise refuse(path, array, target.layout, f"negative depth ({array.min():g})")
        return np.ascontiguousarray(array.reshape(1, *size), dtype=np.float32)
    return unit_normals(path, array, target)


def class_ids(path: Path, array: Any, target: Target) -> Any:
    import numpy as np

    ids = array.astype(np.int64)
    stray = (ids != array) | (ids < IGNORE_LABEL) | (ids >= target.num_outputs)
    if stray.any():
        value = array[stray].flat[0]
        raise refuse(path, array, target.layout, f"the value {value:g}")
    return ids


def unit_normals(path: Path, array: Any, target: Target) -> Any:
    """3×H×W float32, every non-zero vector scaled to unit length (a no-op up to rounding for
    MTAN's files; what the contract promises whatever the file's rounding)."""
    import numpy as np

    if array.size and np.abs(array).max() > 1 + SLACK:
        raise refuse(path, array, target.layout, f"a component of {np.abs(array).max():g}")
    normals = np.moveaxis(array, -1, 0).astype(np.float32)
    length = np.sqrt((normals * normals).sum(0, keepdims=True))
    return np.divide(normals, length, out=np.zeros_like(normals), where=length > 0)


def nearest_indices(source: int, target: int) -> Any:
    """Which source row (or column) each target row takes: the one under its centre, as PIL's
    and torch's 'nearest-exact' do, so image and labels stay aligned after resizing."""
    import numpy as np

    centres = (np.arange(target) + 0.5) * (source / target)
    return np.minimum(np.floor(centres).astype(np.int64), source - 1)


def resize_label(label: Any, size: tuple[int, int]) -> Any:
    """Nearest neighbour on the last two axes: every output pixel is one input pixel."""
    rows = nearest_indices(label.shape[-2], size[0])
    cols = nearest_indices(label.shape[-1], size[1])
    return label[..., rows[:, None], cols[None, :]]


def resize_image(image: Any, size: tuple[int, int]) -> Any:
    import torch.nn.functional as F

    resized = F.interpolate(image[None], size=size, mode="bilinear", antialias=True)
    return resized[0].clamp_(0.0, 1.0)


class DenseSamples:
    """One task over some samples of one folder: each read loads the image and the task's label
    file, checks them and serves them at `size` (a map-style dataset; nothing is preloaded)."""

    def __init__(self, folder: Path, ids: list[int], target: Target, size: tuple[int, int] | None):
        self.folder = Path(folder)
        self.ids = list(ids)
        self.target = target
        self.size = size

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        import torch

        name = f"{self.ids[index]}.npy"
        image = read_image(self.folder / IMAGE / name)
        label = read_label(self.folder / self.target.folder / name, self.target, image.shape[1:])
        image = torch.from_numpy(image)
        if self.size is not None and self.size != tuple(image.shape[1:]):
            image = resize_image(image, self.size)
            label = resize_label(label, self.size)
        return image, torch.from_numpy(label.copy())


def held_out(count: int, fraction: float, seed: int) -> Any:
    """A boolean mask over `count` samples picking `fraction` of them (at least one when there
    are two or more), the same for every run and every task."""
    import numpy as np

    mask = np.zeros(count, dtype=bool)
    picked = round(count * fraction) or (1 if count > 1 else 0)
    mask[np.random.default_rng(seed).permutation(count)[:picked]] = True
    return mask


class OfficialSamples:
    """One task over some images of the official file (0-based `ids`), served like
    `DenseSamples`: class ids through the 40-class table, or depth in metres."""

    def __init__(
        self,
        official: OfficialFile,
        ids: list[int],
        target: Target,
        size: tuple[int, int] | None,
        mapping: Any = None,
    ):
        self.official = official
        self.ids = list(ids)
        self.target = target
        self.size = size
        self.mapping = mapping

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        import torch

        n = self.ids[index]
        image = torch.from_numpy(self.official.image(n))
        if self.target.output == "segmentation":
            label = self.official.classes(n, self.mapping)
        else:
            label = self.official.depth(n)
        if self.size is not None and self.size != tuple(image.shape[1:]):
            image = resize_image(image, self.size)
            label = resize_label(label, self.size)
        return image, torch.from_numpy(label.copy())


def official_datasets(root: Path, target: Target, size: tuple[int, int] | None) -> TaskData:
    """The task's splits from the official file: `trainNdxs` less the held-out `val`, and
    `testNdxs` as `test`."""
    path = find_mat(root, BASE_FOLDER)
    assert path is not None  # choose_layout found it
    official = OfficialFile(path)
    train_ids, test_ids = read_split(path.parent, official.count)
    mapping = read_mapping(path.parent) if target.output == "segmentation" else None
    val = held_out(len(train_ids), VAL_FRACTION, SPLIT_SEED)

    def part(ids: list[int]) -> OfficialSamples:
        return OfficialSamples(official, ids, target, size, mapping)

    return TaskData(
        train=part([i for i, v in zip(train_ids, val, strict=True) if not v]),
        val=part([i for i, v in zip(train_ids, val, strict=True) if v]),
        test=part(test_ids),
        deterministic=True,
    )


def _factory(target: Target):
    def datasets(request: DataRequest) -> TaskData:
        root = Path(os.path.abspath(Path(request.data_dir).expanduser()))
        spec = request.input_spec
        size = (spec.height, spec.width) if spec else None
        if choose_layout(root, target) == MAT_LAYOUT:
            return official_datasets(root, target, size)
        listing = list_samples(root, target)
        train_folder, train_ids = listing["train"]
        val = held_out(len(train_ids), VAL_FRACTION, SPLIT_SEED)

        def part(folder: Path, ids: list[int]) -> DenseSamples:
            return DenseSamples(folder, ids, target, size)

        test_folder, test_ids = listing["val"]
        return TaskData(
            train=part(train_folder, [i for i, v in zip(train_ids, val, strict=True) if not v]),
            val=part(train_folder, [i for i, v in zip(train_ids, val, strict=True) if v]),
            test=part(test_folder, test_ids),
            deterministic=True,
        )

    return datasets


def data_status(target: Target):
    """For `dmt tasks`: one of the task's layouts is there (no --download for NYUv2)."""

    def status(data_dir: Path) -> str:
        root = Path(data_dir).expanduser()
        found = {
            MTAN_LAYOUT: resolve_folder(root) is not None,
            MAT_LAYOUT: find_mat(root, BASE_FOLDER) is not None,
        }
        return "on disk" if any(found[layout] for layout in target.layouts) else "missing"

    return status


def task_spec(target: Target) -> TaskSpec:
    return TaskSpec(
        name=f"nyuv2.{target.task}",
        description=target.description,
        input_shape=target.input_shape,
        output=target.output,  # type: ignore[arg-type]
        num_outputs=target.num_outputs,
        loss=target.loss,
        class_names=target.class_names,
        datasets=_factory(target),
        data_status=data_status(target),
        ignore_label=IGNORE_LABEL if target.output == "segmentation" else None,
    )


@hookimpl
def dmt_register_tasks(kinds: Any) -> None:
    for target in TARGETS:
        kinds.add_task(task_spec(target))
