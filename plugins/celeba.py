"""`celeba`: the 40 CelebA face attributes as binary tasks (Fang et al. 2017, Tables 1–4).

Every attribute is a task in three preprocessing families, so the preprocessing is part of the
task's name and therefore recorded wherever the task is (store manifest, MLflow runs,
registered models), and `dmt eval` can never read a task's images differently from how it
was trained:

    celeba.ATTR          the aligned colour images (3 channels)
    celeba-gray.ATTR     the aligned images in grayscale (1 channel)
    celeba-histeq.ATTR   grayscale, histogram-equalised: the paper's preprocessing (DMT §4)

ATTR is the attribute's official name in lower case with '-' for '_' (`Smiling` →
`celeba.smiling`, `5_o_Clock_Shadow` → `celeba.5-o-clock-shadow`). Labels: 1 when the face
has the attribute. The official partition gives train, val and test (162,770 / 19,867 /
19,962 images). The paper does not state its input size; we take the centred square of each
aligned 178×218 image (the face) and resize it to 64×64, or to the store's size when the
store fixes another one. `dmt predict` does not apply the equalisation: give it equalised
images for `celeba-histeq` tasks.

Data, under `<data-dir>/celeba/`: `img_align_celeba/*.jpg`, `list_attr_celeba.txt` and
`list_eval_partition.txt` (torchvision's layout; its identity, bounding-box and landmark
files are not needed). Images are decoded on every read, never all held in memory: use
`--workers N` to decode in parallel.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from dmtcore import DataRequest, TaskData, TaskSpec, hookimpl
from dmtcore.errors import DataError, first_line

ATTRIBUTES = (
    "5_o_Clock_Shadow",
    "Arched_Eyebrows",
    "Attractive",
    "Bags_Under_Eyes",
    "Bald",
    "Bangs",
    "Big_Lips",
    "Big_Nose",
    "Black_Hair",
    "Blond_Hair",
    "Blurry",
    "Brown_Hair",
    "Bushy_Eyebrows",
    "Chubby",
    "Double_Chin",
    "Eyeglasses",
    "Goatee",
    "Gray_Hair",
    "Heavy_Makeup",
    "High_Cheekbones",
    "Male",
    "Mouth_Slightly_Open",
    "Mustache",
    "Narrow_Eyes",
    "No_Beard",
    "Oval_Face",
    "Pale_Skin",
    "Pointy_Nose",
    "Receding_Hairline",
    "Rosy_Cheeks",
    "Sideburns",
    "Smiling",
    "Straight_Hair",
    "Wavy_Hair",
    "Wearing_Earrings",
    "Wearing_Hat",
    "Wearing_Lipstick",
    "Wearing_Necklace",
    "Wearing_Necktie",
    "Young",
)
# family: (description, grayscale, histogram equalisation)
FAMILIES = {
    "celeba": ("aligned colour image", False, False),
    "celeba-gray": ("aligned grayscale image", True, False),
    "celeba-histeq": ("aligned, histogram-equalised grayscale image (the paper's)", True, True),
}
NATIVE_SIZE = 64
BASE_FOLDER = "celeba"
IMAGE_FOLDER = "img_align_celeba"
ATTR_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
UNUSED_FILES = ("identity_CelebA.txt", "list_bbox_celeba.txt", "list_landmarks_align_celeba.txt")
SPLITS = {"train": "train", "val": "valid", "test": "test"}  # ours: torchvision's
HOME = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"

# Parsed text files, shared by the splits and tasks of one process: (path, header, mtime, size).
_CSV_CACHE: dict[tuple[str, int | None, int, int], Any] = {}


def task_name(family: str, attribute: str) -> str:
    return f"{family}.{attribute.lower().replace('_', '-')}"


def missing_message(root: Path, missing: list[Path]) -> str:
    """Which files are expected where, which are missing, and how to get them."""
    folder = Path(root) / BASE_FOLDER
    absent = f"; missing: {', '.join(str(p) for p in missing)}" if missing else ""
    return (
        f"CelebA is not in --data-dir {str(root)!r}: expected {folder / IMAGE_FOLDER}/ "
        f"(the aligned JPEGs 000001.jpg ... 202599.jpg), {folder / ATTR_FILE} and "
        f"{folder / PARTITION_FILE}{absent}. Download img_align_celeba.zip, {ATTR_FILE} and "
        f"{PARTITION_FILE} from {HOME} (Google Drive or Baidu links) and unzip the images into "
        f"{folder}; --download tries torchvision's Google Drive download (needs 'pip install "
        "gdown'; Google Drive often refuses it for a day with a quota error, then download by hand)."
    )


@lru_cache(maxsize=1)
def dataset_class() -> type:
    """torchvision's CelebA, requiring only the files the attribute tasks read.

    torchvision checks every file's md5 against the official release (rejecting the small
    files our tests write in the same format, and reading 30 MB on every start) and parses
    the identity, bounding-box and landmark files too, so they must exist. This subclass
    checks that the three files we need exist, never parses the others, and parses each text
    file once per process (the three splits share it)."""
    import torch
    from torchvision.datasets import CelebA
    from torchvision.datasets.celeba import CSV

    class AttributesOnlyCelebA(CelebA):
        def _check_integrity(self) -> bool:
            folder = Path(self.root) / self.base_folder
            return (
                (folder / ATTR_FILE).is_file()
                and (folder / PARTITION_FILE).is_file()
                and (folder / IMAGE_FOLDER).is_dir()
            )

        def _load_csv(self, filename: str, header: int | None = None) -> Any:
            if filename in UNUSED_FILES:  # never read: one dummy value per image
                rows = len(self._load_csv(PARTITION_FILE).index)
                return CSV([], [], torch.zeros(rows, 1, dtype=torch.int64))
            path = Path(self.root) / self.base_folder / filename
            stat = path.stat()
            key = (str(path), header, stat.st_mtime_ns, stat.st_size)
            if key not in _CSV_CACHE:
                try:
                    parsed = super()._load_csv(filename, header)
                except Exception as exc:
                    raise DataError(f"{format_error(path)}: {type(exc).__name__}: {exc}") from exc
                if filename == ATTR_FILE:
                    check_attributes(path, parsed, self._load_csv(PARTITION_FILE))
                _CSV_CACHE[key] = parsed
            return _CSV_CACHE[key]

    return AttributesOnlyCelebA


def format_error(path: Path) -> str:
    if path.name == ATTR_FILE:
        layout = (
            "line 1 the image count, line 2 the 40 attribute names, then one line per image: "
            "'000001.jpg' and 40 values of 1 or -1"
        )
    else:
        layout = "one line per image: '000001.jpg 0' (0 train, 1 val, 2 test)"
    return f"CelebA file {str(path)!r} is not in the official layout ({layout})"


def check_attributes(path: Path, attributes: Any, partition: Any) -> None:
    """The attribute file must list the partition's images in its order, with ±1 values."""
    names = [n for n in attributes.header if n]
    if names != list(ATTRIBUTES):
        raise DataError(
            f"{format_error(path)}: its attribute names are {names[:3]}... ({len(names)}); "
            f"expected the 40 official ones, {', '.join(ATTRIBUTES[:3])}, ..."
        )
    if attributes.index != partition.index:
        raise DataError(
            f"CelebA files {str(path)!r} and {str(path.with_name(PARTITION_FILE))!r} list "
            f"different images ({len(attributes.index)} and {len(partition.index)}, or in another "
            "order); they must list the same images in the same order"
        )
    values = attributes.data
    if values.shape[1] != len(ATTRIBUTES) or not ((values == 1) | (values == -1)).all():
        raise DataError(f"{format_error(path)}: found a value other than 1 or -1")


@lru_cache(maxsize=4)
def load(root: str, split: str, download: bool) -> tuple[list[str], Any]:
    """The image files of one official split and their 40 attributes (N×40, 0 or 1)."""
    folder = Path(root) / BASE_FOLDER
    try:
        dataset = dataset_class()(root, split=SPLITS[split], download=download)
    except DataError:
        raise
    except Exception as exc:  # torchvision's "not found", or a failed download
        required = [folder / IMAGE_FOLDER, folder / ATTR_FILE, folder / PARTITION_FILE]
        missing = [p for p in required if not p.exists()]
        failure = f"{type(exc).__name__}: {first_line(exc)}"
        if missing:
            cause = f" (--download failed: {failure})" if download else ""
            raise DataError(missing_message(Path(root), missing) + cause) from exc
        raise DataError(f"could not read CelebA in {str(folder)!r}: {failure}") from exc
    filenames = list(dataset.filename)
    present = set(os.listdir(folder / IMAGE_FOLDER))
    absent = [f for f in filenames if f not in present]
    if absent:
        raise DataError(
            f"{len(absent)} of the {len(filenames)} {split} images listed in "
            f"{folder / PARTITION_FILE} are not in {folder / IMAGE_FOLDER}, e.g. {absent[0]}; "
            f"unzip img_align_celeba.zip there completely (from {HOME})"
        )
    return filenames, dataset.attr


@dataclass(frozen=True)
class Preprocess:
    """Decode one aligned image, take its centred square, optionally make it grayscale and
    equalise its histogram, resize it, and return C×H×W floats in [0, 1].

    JPEGs are decoded at a reduced scale when the target is much smaller (PIL's draft mode):
    for 178×218 JPEGs to 64×64 that measured about 1,600 images/s per CPU core against 1,000
    for a full decode, so an epoch of the 162,770 training images takes about 100 s of one
    core's decoding (`--workers N` spreads it)."""

    height: int
    width: int
    gray: bool
    equalize: bool

    def __call__(self, path: str) -> Any:
        import numpy as np
        import torch
        from PIL import Image, ImageOps

        mode = "L" if self.gray else "RGB"
        with Image.open(path) as image:
            w, h = image.size
            side, target = min(w, h), max(self.height, self.width)
            if side > 0:
                image.draft(mode, (-(-w * target // side), -(-h * target // side)))
            image = image.convert(mode)
        w, h = image.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        image = image.crop((left, top, left + side, top + side))
        if self.equalize:
            image = ImageOps.equalize(image)
        image = image.resize((self.width, self.height), Image.Resampling.BILINEAR)
        array = np.array(image, dtype=np.uint8)
        tensor = torch.from_numpy(array[None] if self.gray else array.transpose(2, 0, 1))
        return tensor.float().div_(255.0)


class AttributeImages:
    """One attribute over one split: images read from their files on every access (a
    map-style dataset; nothing is preloaded), labels 0/1 in `targets` (which `--balance`
    reads without decoding any image)."""

    def __init__(self, folder: Path, filenames: list[str], targets: Any, preprocess: Preprocess):
        self.folder = str(folder)
        self.filenames = filenames
        self.targets = targets
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.filenames)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path = os.path.join(self.folder, self.filenames[index])
        return self.preprocess(path), int(self.targets[index])


def data_status(data_dir: Path) -> str:
    """For `dmt tasks`: the three things the tasks read are present (not their contents)."""
    folder = Path(data_dir).expanduser() / BASE_FOLDER
    present = (
        (folder / ATTR_FILE).is_file()
        and (folder / PARTITION_FILE).is_file()
        and (folder / IMAGE_FOLDER).is_dir()
    )
    return "on disk" if present else "needs --download"


def _factory(attribute: str, gray: bool, equalize: bool):
    column = ATTRIBUTES.index(attribute)

    def datasets(request: DataRequest) -> TaskData:
        root = os.path.abspath(Path(request.data_dir).expanduser())
        spec = request.input_spec
        height, width = (spec.height, spec.width) if spec else (NATIVE_SIZE, NATIVE_SIZE)
        preprocess = Preprocess(height, width, gray, equalize)
        folder = Path(root) / BASE_FOLDER / IMAGE_FOLDER
        splits = {}
        for split in SPLITS:
            filenames, attributes = load(root, split, request.download)
            targets = attributes[:, column].clone()
            splits[split] = AttributeImages(folder, filenames, targets, preprocess)
        return TaskData(**splits, deterministic=True)

    return datasets


@hookimpl
def dmt_register_tasks(kinds: Any) -> None:
    for family, (what, gray, equalize) in FAMILIES.items():
        for attribute in ATTRIBUTES:
            kinds.add_task(
                TaskSpec(
                    name=task_name(family, attribute),
                    description=f"CelebA {attribute} ({what})",
                    input_shape=(1 if gray else 3, NATIVE_SIZE, NATIVE_SIZE),
                    output="binary",
                    class_names=("no", "yes"),
                    datasets=_factory(attribute, gray, equalize),
                    data_status=data_status,
                )
            )
