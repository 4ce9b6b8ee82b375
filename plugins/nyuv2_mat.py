"""The official labelled NYU Depth v2 file, `nyu_depth_v2_labeled.mat`, as the `nyuv2` plugin
reads it (NDDR-CNN Table 4's NYU v2: 40 classes, the standard 795/654 split).

The file (2.8 GB, from the NYU Depth v2 page) is MATLAB v7.3, which is HDF5 behind a 512-byte
user block; h5py reads it (`pip install 'dmt-vision[nyuv2]'`). MATLAB keeps arrays column-major,
so h5py sees every shape reversed: MATLAB's 480×640×3×1449 `images` (H×W×C×N, uint8) read as
N×C×W×H, and `depths` (metres, float) and `labels` (uint16: 0 unlabelled, 1..894 raw classes)
as N×W×H. A sample is transposed back to C×H×W and H×W here, and nowhere else.

Two small files the user puts beside it (dmt does not ship them: they are the dataset
authors' files, and a copy we cannot check against theirs could silently mislabel classes):

    splits.mat          the standard split from the NYU Depth v2 page: `trainNdxs` (795) and
                        `testNdxs` (654), 1-based indices into the 1449 images
    classMapping40.mat  Gupta et al.'s (CVPR 2013) 894 → 40 mapping, as shipped for instance
                        by github.com/ankurhanda/nyuv2-meta-data: `mapClass`, 894 numbers,
                        raw class i → class 1..40 (0 is read as unlabelled), and optionally
                        `className`, the 40 names (only their number is checked)

Both may be MATLAB v5 files (read with scipy, a dmt dependency) or v7.3 (read with h5py).
Raw label 0 becomes -1 (unlabelled), raw class i becomes `mapClass[i] - 1`, a class id 0..39.
The file has no surface normals: normals come from MTAN's preprocessed layout only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dmtcore.errors import DataError, PluginError, first_line

MAT_FILE = "nyu_depth_v2_labeled.mat"
SPLITS_FILE = "splits.mat"
MAPPING_FILE = "classMapping40.mat"
NYU_PAGE = "https://cs.nyu.edu/~fergus/datasets/nyu_depth_v2.html"
META_DATA = "https://github.com/ankurhanda/nyuv2-meta-data"
RAW_CLASSES = 894
UNLABELLED = -1
# The 40 classes of Gupta et al. in their order (class id = position), as the NYU40 tables
# name them.
CLASS_NAMES_40 = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror",
    "floor mat", "clothes", "ceiling", "books", "refrigerator", "television", "paper", "towel",
    "shower curtain", "box", "whiteboard", "person", "night stand", "toilet", "sink", "lamp",
    "bathtub", "bag", "otherstructure", "otherfurniture", "otherprop",
)  # fmt: skip


def find_mat(root: Path, base: str) -> Path | None:
    """`<root>/<base>/nyu_depth_v2_labeled.mat`, else `<root>/nyu_depth_v2_labeled.mat`."""
    for folder in (root / base, root):
        if (folder / MAT_FILE).is_file():
            return folder / MAT_FILE
    return None


def import_h5py() -> Any:
    try:
        import h5py
    except ImportError as exc:
        raise PluginError(
            f"reading NYU v2's official {MAT_FILE} (MATLAB v7.3, HDF5) needs h5py: pip install "
            "'dmt-vision[nyuv2]' (or pip install h5py)"
        ) from exc
    return h5py


def read_mat_arrays(path: Path, names: tuple[str, ...], needed: str) -> dict[str, Any]:
    """The named variables of a small .mat file as numpy arrays (v5 with scipy, v7.3 with
    h5py); a missing file or variable is a DataError saying what the file must hold."""
    import numpy as np

    if not path.is_file():
        raise DataError(f"NYUv2: {str(path)!r} is missing; {needed}")
    try:
        import scipy.io

        found = scipy.io.loadmat(path, variable_names=list(names))
    except NotImplementedError:  # v7.3: scipy says to use an HDF5 reader
        found = {}
        try:
            with import_h5py().File(path, "r") as f:
                # Reversed shapes do not matter here: these are vectors, or cells counted.
                found = {n: np.asarray(f[n][()]) for n in names if n in f}
        except OSError as exc:
            raise DataError(
                f"NYUv2: {str(path)!r} is not a readable .mat file ({first_line(exc)}); {needed}"
            ) from exc
    except Exception as exc:
        raise DataError(
            f"NYUv2: {str(path)!r} is not a readable .mat file ({type(exc).__name__}: "
            f"{first_line(exc)}); {needed}"
        ) from exc
    return {n: found[n] for n in names if n in found}


def whole_numbers(path: Path, name: str, values: Any, needed: str) -> Any:
    """A .mat variable as a flat int64 vector, refusing anything but whole numbers."""
    import numpy as np

    flat = np.asarray(values).reshape(-1)
    if flat.dtype.kind not in "fiu" or (flat.dtype.kind == "f" and not np.isfinite(flat).all()):
        raise DataError(f"NYUv2: {name} in {str(path)!r} is not numbers; {needed}")
    ints = flat.astype(np.int64)
    if (ints != flat).any():
        value = flat[ints != flat][0]
        raise DataError(f"NYUv2: {name} in {str(path)!r} holds {value:g}, not an index; {needed}")
    return ints


def read_split(folder: Path, count: int) -> tuple[list[int], list[int]]:
    """The standard split as 0-based image indices (train, test), checked against `count`."""
    path = folder / SPLITS_FILE
    needed = (
        f"it must hold trainNdxs and testNdxs, the 1-based indices of the {count} images of "
        f"{MAT_FILE} (the standard 795/654 split: splits.mat from {NYU_PAGE})"
    )
    arrays = read_mat_arrays(path, ("trainNdxs", "testNdxs"), needed)
    split = []
    for name in ("trainNdxs", "testNdxs"):
        if name not in arrays:
            raise DataError(f"NYUv2: {str(path)!r} has no {name}; {needed}")
        indices = whole_numbers(path, name, arrays[name], needed)
        if not indices.size:
            raise DataError(f"NYUv2: {name} in {str(path)!r} is empty; {needed}")
        outside = indices[(indices < 1) | (indices > count)]
        if outside.size:
            raise DataError(
                f"NYUv2: {name} in {str(path)!r} holds {outside[0]}; valid: 1..{count} (1-based "
                f"indices into the {count} images of {MAT_FILE})"
            )
        if len(set(indices.tolist())) != indices.size:
            raise DataError(f"NYUv2: {name} in {str(path)!r} lists an image twice; {needed}")
        split.append(sorted(int(i) - 1 for i in indices))
    shared = set(split[0]) & set(split[1])
    if shared:
        raise DataError(
            f"NYUv2: {str(path)!r} puts image {min(shared) + 1} (1-based) in both trainNdxs and "
            f"testNdxs ({len(shared)} images in both); {needed}"
        )
    return split[0], split[1]


def read_mapping(folder: Path) -> Any:
    """A lookup table raw label (0..894) → class id 0..39, or -1 for unlabelled."""
    import numpy as np

    path = folder / MAPPING_FILE
    needed = (
        f"it must hold mapClass, {RAW_CLASSES} numbers mapping each raw NYU class to one of "
        f"{len(CLASS_NAMES_40)} (Gupta et al. 2013; classMapping40.mat of {META_DATA})"
    )
    arrays = read_mat_arrays(path, ("mapClass", "className"), needed)
    if "mapClass" not in arrays:
        raise DataError(f"NYUv2: {str(path)!r} has no mapClass; {needed}")
    mapping = whole_numbers(path, "mapClass", arrays["mapClass"], needed)
    if mapping.size != RAW_CLASSES:
        raise DataError(f"NYUv2: mapClass in {str(path)!r} has {mapping.size} entries; {needed}")
    outside = mapping[(mapping < 0) | (mapping > len(CLASS_NAMES_40))]
    if outside.size:
        raise DataError(
            f"NYUv2: mapClass in {str(path)!r} maps a raw class to {outside[0]}; valid: "
            f"1..{len(CLASS_NAMES_40)} (0: unlabelled). Is it another mapping, such as the "
            "13-class one?"
        )
    names = arrays.get("className")
    if names is not None and np.asarray(names).size != len(CLASS_NAMES_40):
        raise DataError(
            f"NYUv2: className in {str(path)!r} names {np.asarray(names).size} classes, not "
            f"{len(CLASS_NAMES_40)}: it is another mapping; {needed}"
        )
    return np.concatenate([[UNLABELLED], mapping - 1]).astype(np.int64)  # 0 → -1 as well


class OfficialFile:
    """`nyu_depth_v2_labeled.mat`, opened on first read in each process (an HDF5 handle must
    not cross a fork into a DataLoader worker) and checked once: shapes, dtypes, sizes."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._handle: Any = None
        self._pid: int | None = None
        self.count, self.height, self.width = self._check()

    def __getstate__(self) -> dict[str, Any]:  # spawned workers open their own handle
        return {**self.__dict__, "_handle": None, "_pid": None}

    def refuse(self, found: str) -> DataError:
        return DataError(
            f"NYUv2 file {str(self.path)!r} {found}; expected NYU Depth v2's labelled MATLAB "
            f"v7.3 file ({NYU_PAGE}) with images (480×640×3×N uint8 in MATLAB), depths and "
            "labels (480×640×N)"
        )

    def datasets(self) -> Any:
        if self._handle is None or self._pid != os.getpid():
            h5py = import_h5py()
            try:
                self._handle = h5py.File(self.path, "r")
            except OSError as exc:
                raise self.refuse(f"cannot be read as HDF5 ({first_line(exc)})") from exc
            self._pid = os.getpid()
        return self._handle

    def _check(self) -> tuple[int, int, int]:
        f = self.datasets()
        missing = [n for n in ("images", "depths", "labels") if n not in f]
        if missing:
            raise self.refuse(f"has no {', '.join(missing)}")
        images, depths, labels = f["images"], f["depths"], f["labels"]
        if images.ndim != 4 or images.shape[1] != 3 or images.dtype.kind != "u":
            raise self.refuse(f"holds images of shape {images.shape} (as HDF5 reads it)")
        count, _, width, height = images.shape
        for name, data, kinds in (("depths", depths, "f"), ("labels", labels, "iu")):
            if tuple(data.shape) != (count, width, height) or data.dtype.kind not in kinds:
                raise self.refuse(
                    f"holds {name} of shape {data.shape}, dtype {data.dtype} (as HDF5 reads "
                    f"it) for images of {images.shape}"
                )
        return count, height, width

    def image(self, index: int) -> Any:
        """3×H×W float32 in [0, 1]."""
        import numpy as np

        pixels = self.datasets()["images"][index]  # C×W×H
        return np.ascontiguousarray(pixels.transpose(0, 2, 1), dtype=np.float32) / 255.0

    def depth(self, index: int) -> Any:
        """1×H×W float32 metres, 0 where there is none."""
        import numpy as np

        depth = np.ascontiguousarray(self.datasets()["depths"][index].T, dtype=np.float32)
        if not np.isfinite(depth).all() or (depth.size and depth.min() < 0):
            bad = depth[~np.isfinite(depth) | (depth < 0)][0]
            raise self.refuse(f"holds depth {bad:g} in image {index + 1} (1-based)")
        return depth[None]

    def classes(self, index: int, mapping: Any) -> Any:
        """H×W int64 class ids 0..39, -1 unlabelled, through the 894 → 40 table."""
        import numpy as np

        raw = np.ascontiguousarray(self.datasets()["labels"][index].T).astype(np.int64)
        if raw.size and (raw.min() < 0 or raw.max() >= mapping.size):
            bad = raw.max() if raw.max() >= mapping.size else raw.min()
            raise self.refuse(
                f"holds raw label {bad} in image {index + 1} (1-based); valid: 0 (unlabelled) "
                f"to {mapping.size - 1}, the classes {MAPPING_FILE} maps"
            )
        return mapping[raw]
