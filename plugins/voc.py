"""`voc`: PASCAL VOC object detection and attribute-PASCAL box attributes, the pair of the
cross-stitch paper's §6.4 (Table 6: VOC 2008, the 20 classes and Farhadi et al.'s 64
attributes).

    voc.detection        the 20 VOC classes' boxes in VOC 2008 (the year attribute-PASCAL
                         annotates, and the paper's)
    vocYYYY.detection    the same for torchvision's other years, 2007 and 2009..2012 (the year
                         is part of the name, so the store, MLflow and `dmt eval` agree on it)
    voc.attributes       the 64 attributes of every attribute-PASCAL box (Farhadi, Endres,
                         Hoiem, Forsyth: "Describing Objects by their Attributes", CVPR 2009)

Layout under --data-dir (torchvision's `VOCDetection` root, and attribute_data.tar.gz from
vision.cs.uiuc.edu/attributes/ unpacked beside it):

    VOCdevkit/VOC2008/Annotations/<id>.xml      one VOC XML file per image
    VOCdevkit/VOC2008/JPEGImages/<id>.jpg
    VOCdevkit/VOC2008/ImageSets/Main/train.txt  image ids, one a line (and val.txt)
    attribute_data/apascal_train.txt            one box a line: image file, class, xmin ymin
    attribute_data/apascal_test.txt             xmax ymax, then 64 values of 0 or 1
    attribute_data/attribute_names.txt          the 64 names, one a line

(VOC 2011 is also found where torchvision unpacks it, `TrainVal/VOCdevkit/VOC2011`.)

Boxes: VOC's corners (in the XML files and in apascal_*.txt alike) are 1-based, inclusive
pixel indices: xmin = 1 is the first column, xmax = width the last. The label contract wants
corners on pixel edges, so a box becomes x1, y1, x2, y2 = xmin - 1, ymin - 1, xmax, ymax (a
one-pixel box, xmin = xmax, is 1 wide). Objects marked `difficult` are left out of
`voc.detection`, as Fast R-CNN (the paper's detector) trains: VOC's evaluation ignores them,
while our mAP has no "ignore" and would count a hit on one as a false positive.

Images: decoded by `dmt predict`'s own reader at the store's size (bilinear, antialiased;
colour and grey converted to the store's channels), the aspect ratio not kept, as `dmt
predict` reads a photo; boxes are scaled with them, per axis. Every read checks the image
against its annotation (size, boxes inside it) and names the file and line when they differ.

Splits: VOC's `train.txt` is train and `val.txt` val (VOC 2007's `test.txt`, when its test
archive is unpacked, is test). attribute-PASCAL has no val split: `apascal_train.txt` is
train and `apascal_test.txt` val (Farhadi et al. drew them from VOC 2008's train and val
images, so `voc.detection` and `voc.attributes` see the same images per split).

`--download` fetches what is missing with torchvision's own downloaders: `VOCDetection(...,
download=True)` for the year's trainval archive (checked against torchvision's md5) and
`download_and_extract_archive` for attribute_data.tar.gz. Nothing is fetched without it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dmtcore import DataRequest, InputSpec, TaskData, TaskSpec, hookimpl
from dmtcore.errors import DataError, first_line

CLASS_NAMES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip
# attribute_names.txt of attribute_data.tar.gz, in its order (the column order of the values).
ATTRIBUTE_NAMES = (
    "2D Boxy", "3D Boxy", "Round", "Vert Cyl", "Horiz Cyl", "Occluded", "Tail", "Beak", "Head",
    "Ear", "Snout", "Nose", "Mouth", "Hair", "Face", "Eye", "Torso", "Hand", "Arm", "Leg",
    "Foot/Shoe", "Wing", "Propeller", "Jet engine", "Window", "Row Wind", "Wheel", "Door",
    "Headlight", "Taillight", "Side mirror", "Exhaust", "Pedal", "Handlebars", "Engine", "Sail",
    "Mast", "Text", "Label", "Furn. Leg", "Furn. Back", "Furn. Seat", "Furn. Arm", "Horn", "Rein",
    "Saddle", "Leaf", "Flower", "Stem/Trunk", "Pot", "Screen", "Skin", "Metal", "Plastic", "Wood",
    "Cloth", "Furry", "Glass", "Feather", "Wool", "Clear", "Shiny", "Vegetation", "Leather",
)  # fmt: skip
YEARS = ("2007", "2008", "2009", "2010", "2011", "2012")  # torchvision's VOCDetection years
DEFAULT_YEAR = "2008"  # attribute-PASCAL's, and the paper's
# Served at the store's size; a store made by `dmt add-task voc.detection` gets this one.
# Photos of about 500×375 at 128×128 keep most objects several stride-4 cells wide.
NATIVE_SHAPE = (3, 128, 128)
KEEP_DIFFICULT = False
SPLIT_FILES = {"train": "train", "val": "val"}
ATTRIBUTE_FOLDER = "attribute_data"
ATTRIBUTE_SPLITS = {"train": "apascal_train.txt", "val": "apascal_test.txt"}
ATTRIBUTE_NAMES_FILE = "attribute_names.txt"
ATTRIBUTE_ARCHIVE = "http://vision.cs.uiuc.edu/attributes/attribute_data.tar.gz"
ATTRIBUTE_PAGE = "http://vision.cs.uiuc.edu/attributes/"
VOC_PAGE = "http://host.robots.ox.ac.uk/pascal/VOC/"
XML_LAYOUT = (
    "a VOC annotation: <annotation> with <size> (<width>, <height>) and per object <name> "
    "(one of the 20 VOC classes), <difficult> (0 or 1) and <bndbox> (<xmin>, <ymin>, <xmax>, "
    "<ymax>: 1-based, inclusive pixels)"
)
APASCAL_LAYOUT = (
    "one box a line: the image file, its class, xmin ymin xmax ymax (1-based, inclusive "
    f"pixels), then {len(ATTRIBUTE_NAMES)} values of 0 or 1, one per attribute of "
    f"{ATTRIBUTE_NAMES_FILE}"
)


def task_name(year: str) -> str:
    return "voc.detection" if year == DEFAULT_YEAR else f"voc{year}.detection"


# -- where the data is -------------------------------------------------------------------------


def voc_folders(root: Path, year: str) -> list[Path]:
    """Where a year's VOCdevkit folder may be: torchvision unpacks 2011 under TrainVal/."""
    folders = [root / "VOCdevkit" / f"VOC{year}"]
    if year == "2011":
        folders.append(root / "TrainVal" / "VOCdevkit" / "VOC2011")
    return folders


def voc_required(folder: Path) -> list[Path]:
    main = folder / "ImageSets" / "Main"
    return [folder / "Annotations", folder / "JPEGImages", main / "train.txt", main / "val.txt"]


def find_voc(root: Path, year: str) -> Path | None:
    """The year's folder holding everything the tasks read, or None."""
    for folder in voc_folders(root, year):
        if all(path.exists() for path in voc_required(folder)):
            return folder
    return None


def attribute_required(root: Path) -> list[Path]:
    folder = root / ATTRIBUTE_FOLDER
    return [folder / name for name in (*ATTRIBUTE_SPLITS.values(), ATTRIBUTE_NAMES_FILE)]


def voc_missing_message(root: Path, year: str) -> str:
    """Which files are expected where, which are missing, and how to get them."""
    folder = voc_folders(root, year)[0]
    missing = [str(p) for p in voc_required(folder) if not p.exists()] if folder.is_dir() else []
    return (
        f"PASCAL VOC {year} is not in --data-dir {str(root)!r}: expected {folder}/ with "
        "Annotations/, JPEGImages/ and ImageSets/Main/train.txt and val.txt (torchvision's "
        f"VOCDetection layout); missing: {', '.join(missing) or 'the folder'}. Add --download "
        f"to fetch VOC {year}'s trainval archive with torchvision, or download it from "
        f"{VOC_PAGE} and untar it in {str(root)!r}"
    )


def attribute_missing_message(root: Path) -> str:
    missing = [str(p) for p in attribute_required(root) if not p.exists()]
    return (
        f"attribute-PASCAL is not in --data-dir {str(root)!r}: expected "
        f"{', '.join(str(p) for p in attribute_required(root))}; missing: {', '.join(missing)}. "
        f"Add --download to fetch {ATTRIBUTE_ARCHIVE} with torchvision, or download it from "
        f"{ATTRIBUTE_PAGE} and untar it in {str(root)!r}"
    )


def fetch_voc(root: Path, year: str) -> None:
    """torchvision's own download of the year's trainval archive into `root` (its md5
    checked), unpacked where VOCDetection reads it."""
    from torchvision.datasets import VOCDetection

    VOCDetection(str(root), year=year, image_set="train", download=True)


def fetch_attributes(root: Path) -> None:
    """attribute_data.tar.gz through torchvision's downloader, unpacked in `root` (it holds
    the folder attribute_data/). Looked up at call time, so tests can stand in for it."""
    from torchvision.datasets import utils

    utils.download_and_extract_archive(ATTRIBUTE_ARCHIVE, str(root))


def ensure_voc(root: Path, year: str, download: bool) -> Path:
    """The year's VOC folder, fetched first when it is missing and `download` is set."""
    folder = find_voc(root, year)
    if folder is None and download:
        root.mkdir(parents=True, exist_ok=True)
        try:
            fetch_voc(root, year)
        except Exception as exc:
            raise DataError(
                f"{voc_missing_message(root, year)} (--download failed: "
                f"{type(exc).__name__}: {first_line(exc)})"
            ) from exc
        folder = find_voc(root, year)
    if folder is None:
        raise DataError(voc_missing_message(root, year))
    return folder


def ensure_attributes(root: Path, download: bool) -> Path:
    """The attribute_data folder, fetched first when a file is missing and `download` is set."""
    if download and not all(p.is_file() for p in attribute_required(root)):
        root.mkdir(parents=True, exist_ok=True)
        try:
            fetch_attributes(root)
        except Exception as exc:
            raise DataError(
                f"{attribute_missing_message(root)} (--download failed: "
                f"{type(exc).__name__}: {first_line(exc)})"
            ) from exc
    if not all(p.is_file() for p in attribute_required(root)):
        raise DataError(attribute_missing_message(root))
    return root / ATTRIBUTE_FOLDER


# -- reading the annotations -------------------------------------------------------------------


@dataclass
class Sample:
    """One image and its boxes as the annotation gives them: VOC corners (1-based, inclusive;
    n×4 float64), the size the annotation states (H, W) or None, what each box's values are
    (class ids or attribute vectors) and where each box was read, for messages."""

    image: Path
    corners: Any
    values: Any
    where: list[str] = field(default_factory=list)
    size: tuple[int, int] | None = None
    source: str = ""  # the annotation, for a message about the image's size


def box_problem(corners: Any, width: int | None = None, height: int | None = None) -> str | None:
    """What is wrong with VOC corners (xmin, ymin, xmax, ymax), or None; without a size only
    their order and the 1-based lower bound are checked."""
    xmin, ymin, xmax, ymax = (float(c) for c in corners)
    shown = f"[{', '.join(f'{c:g}' for c in (xmin, ymin, xmax, ymax))}] (xmin, ymin, xmax, ymax)"
    if xmax < xmin or ymax < ymin:
        problem = "xmax < xmin" if xmax < xmin else "ymax < ymin"
    elif xmin < 1 or ymin < 1:
        problem = "a corner below 1 (VOC counts pixels from 1)"
    elif width is not None and height is not None and (xmax > width or ymax > height):
        problem = f"reaching past the {width}×{height} image"
    else:
        return None
    bounds = f"{width if width is not None else 'width'}"
    rows = f"{height if height is not None else 'height'}"
    return (
        f"box {shown}, {problem}; valid: 1 ≤ xmin ≤ xmax ≤ {bounds} and 1 ≤ ymin ≤ ymax ≤ "
        f"{rows} (VOC's 1-based, inclusive pixel corners)"
    )


def _parse_xml(path: Path) -> Any:
    try:
        from defusedxml.ElementTree import parse  # refuses entity bombs, when installed
    except ImportError:
        from xml.etree.ElementTree import parse
    try:
        return parse(path).getroot()
    except Exception as exc:  # ParseError, OSError, defusedxml's refusals
        raise DataError(
            f"VOC annotation {str(path)!r} is not readable XML ({type(exc).__name__}: "
            f"{first_line(exc)}); expected {XML_LAYOUT}"
        ) from exc


def _number(path: Path, element: Any, tag: str, what: str) -> float:
    import math

    text = element.findtext(tag) if element is not None else None
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value):
        raise DataError(
            f"VOC annotation {str(path)!r}: {what} <{tag}> is {text!r}, not a number; expected "
            f"{XML_LAYOUT}"
        )
    return value


def read_annotation(path: Path, keep_difficult: bool = KEEP_DIFFICULT) -> Sample:
    """One VOC XML file: its image size, and its objects' corners and class ids (difficult
    objects left out unless `keep_difficult`), each checked against the image's size."""
    import numpy as np

    root = _parse_xml(path)
    size = root.find("size")
    width = _number(path, size, "width", "the image's")
    height = _number(path, size, "height", "the image's")
    if width < 1 or height < 1 or width != int(width) or height != int(height):
        raise DataError(
            f"VOC annotation {str(path)!r}: the image's size is {width:g}×{height:g}; valid: "
            "whole numbers of pixels, at least 1"
        )
    width, height = int(width), int(height)
    corners, labels, where = [], [], []
    for number, obj in enumerate(root.findall("object")):
        name = (obj.findtext("name") or "").strip()
        what = f"object {number} ({name!r})"
        if name not in CLASS_NAMES:
            raise DataError(
                f"VOC annotation {str(path)!r}, object {number}: class {name!r}; valid: "
                f"{', '.join(CLASS_NAMES)} (the 20 VOC classes)"
            )
        difficult = (obj.findtext("difficult") or "0").strip()
        if difficult not in ("0", "1"):
            raise DataError(
                f"VOC annotation {str(path)!r}, {what}: <difficult> is {difficult!r}; valid: 0 or 1"
            )
        box = obj.find("bndbox")
        if box is None:
            raise DataError(
                f"VOC annotation {str(path)!r}, {what} has no <bndbox>; expected {XML_LAYOUT}"
            )
        values = [_number(path, box, tag, what) for tag in ("xmin", "ymin", "xmax", "ymax")]
        problem = box_problem(values, width, height)
        if problem is not None:
            raise DataError(f"VOC annotation {str(path)!r}, {what}: {problem}")
        if difficult == "1" and not keep_difficult:
            continue
        corners.append(values)
        labels.append(CLASS_NAMES.index(name))
        where.append(f"VOC annotation {str(path)!r}, {what}")
    return Sample(
        image=Path(),
        corners=np.asarray(corners, dtype=np.float64).reshape(-1, 4),
        values=np.asarray(labels, dtype=np.int64),
        where=where,
        size=(height, width),
        source=f"VOC annotation {str(path)!r}",
    )


def read_ids(path: Path) -> list[str]:
    """An ImageSets file's image ids (`2008_000008`), one a line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"VOC image list {str(path)!r} cannot be read ({first_line(exc)})") from exc
    ids = [line.split()[0] for line in lines if line.strip()]
    for image_id in ids:
        if Path(image_id).name != image_id or image_id.startswith("."):
            raise DataError(
                f"VOC image list {str(path)!r} lists {image_id!r}; valid: image ids such as "
                "2008_000008, one a line (file names in JPEGImages/ without .jpg)"
            )
    if not ids:
        raise DataError(
            f"VOC image list {str(path)!r} lists no images; expected image ids, one a line"
        )
    return ids


def image_files(folder: Path) -> set[str]:
    return set(os.listdir(folder / "JPEGImages"))


def detection_samples(
    folder: Path, split: str, keep_difficult: bool = KEEP_DIFFICULT
) -> list[Sample]:
    """Every image of a VOC split with its objects, from ImageSets/Main/<split>.txt."""
    ids = read_ids(folder / "ImageSets" / "Main" / f"{split}.txt")
    present = image_files(folder)
    samples = []
    for image_id in ids:
        annotation = folder / "Annotations" / f"{image_id}.xml"
        if not annotation.is_file():
            raise DataError(
                f"VOC image {image_id!r} of ImageSets/Main/{split}.txt has no annotation "
                f"{str(annotation)!r}; untar VOC's trainval archive in full ({VOC_PAGE})"
            )
        if f"{image_id}.jpg" not in present:
            raise DataError(
                f"VOC image {image_id!r} of ImageSets/Main/{split}.txt is not in "
                f"{str(folder / 'JPEGImages')!r} (expected {image_id}.jpg); untar VOC's "
                f"trainval archive in full ({VOC_PAGE})"
            )
        sample = read_annotation(annotation, keep_difficult)
        sample.image = folder / "JPEGImages" / f"{image_id}.jpg"
        samples.append(sample)
    return samples


def _text_lines(path: Path, what: str) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{what} {str(path)!r} cannot be read ({first_line(exc)})") from exc


def check_attribute_names(path: Path) -> None:
    """attribute_names.txt must name the 64 attributes in the order the tasks declare."""
    names = [line.strip() for line in _text_lines(path, "attribute-PASCAL file") if line.strip()]
    expected = f"the {len(ATTRIBUTE_NAMES)} names of {ATTRIBUTE_ARCHIVE}, one a line, in its order"
    if len(names) != len(ATTRIBUTE_NAMES):
        raise DataError(
            f"attribute-PASCAL file {str(path)!r} names {len(names)} attributes; expected {expected}"
        )
    for number, (name, known) in enumerate(zip(names, ATTRIBUTE_NAMES, strict=True), 1):
        if name != known:
            raise DataError(
                f"attribute-PASCAL file {str(path)!r}, attribute {number}: {name!r}, where "
                f"{known!r} is expected; expected {expected}"
            )


def attribute_samples(path: Path, folder: Path) -> list[Sample]:
    """The boxes of one apascal_*.txt file grouped by image (in the file's order), each with
    its corners and its 0/1 attribute vector; the images are VOC 2008's, in `folder`."""
    import numpy as np

    count = len(ATTRIBUTE_NAMES)
    present = image_files(folder)
    grouped: dict[str, Sample] = {}
    for number, line in enumerate(_text_lines(path, "attribute-PASCAL file"), 1):
        fields = line.split()
        if not fields:
            continue
        where = f"attribute-PASCAL file {str(path)!r}, line {number}"
        if len(fields) != 6 + count:
            raise DataError(
                f"{where}: {len(fields)} fields ({len(fields) - 6} attribute values); expected "
                f"{6 + count}: {APASCAL_LAYOUT}"
            )
        image, name = fields[0], fields[1]
        if Path(image).name != image or image.startswith("."):
            raise DataError(
                f"{where}: image {image!r}; valid: a file name in JPEGImages/, e.g. 2008_000008.jpg"
            )
        if name not in CLASS_NAMES:
            raise DataError(
                f"{where}: class {name!r}; valid: {', '.join(CLASS_NAMES)} (the 20 VOC classes)"
            )
        try:
            numbers = [float(v) for v in fields[2:]]
        except ValueError as exc:
            raise DataError(f"{where}: {first_line(exc)}; expected {APASCAL_LAYOUT}") from exc
        corners, values = numbers[:4], numbers[4:]
        problem = box_problem(corners)
        if problem is not None:
            raise DataError(f"{where}: {problem}")
        stray = [v for v in values if v not in (0.0, 1.0)]
        if stray:
            position = values.index(stray[0])
            raise DataError(
                f"{where}: attribute {position + 1} ({ATTRIBUTE_NAMES[position]!r}) is "
                f"{fields[6 + position]!r}; valid: 0 or 1"
            )
        if image not in present:
            raise DataError(
                f"{where}: image {image!r} is not in {str(folder / 'JPEGImages')!r}; "
                f"attribute-PASCAL boxes are on VOC 2008's images (its trainval archive, {VOC_PAGE})"
            )
        sample = grouped.setdefault(image, Sample(folder / "JPEGImages" / image, [], []))
        sample.corners.append(corners)
        sample.values.append(values)
        sample.where.append(where)
    if not grouped:
        raise DataError(
            f"attribute-PASCAL file {str(path)!r} holds no boxes; expected {APASCAL_LAYOUT}"
        )
    for sample in grouped.values():
        sample.corners = np.asarray(sample.corners, dtype=np.float64).reshape(-1, 4)
        sample.values = np.asarray(sample.values, dtype=np.float32).reshape(-1, count)
    return list(grouped.values())


# -- the datasets ------------------------------------------------------------------------------


def pixel_boxes(corners: Any, source: tuple[int, int], size: tuple[int, int]) -> Any:
    """VOC corners (1-based, inclusive) of an image of `source` (H, W) as pixel-edge corners
    x1, y1, x2, y2 of that image resized to `size` (H, W): float32, n×4."""
    import numpy as np

    edges = corners - np.array([1.0, 1.0, 0.0, 0.0])
    scale = np.array([size[1] / source[1], size[0] / source[0]] * 2)
    limit = np.array([size[1], size[0]] * 2, dtype=np.float64)
    return np.minimum(edges * scale, limit).astype(np.float32)


class RegionImages:
    """One split of a region task: image files read on every access (a map-style dataset,
    nothing preloaded) at the store's size, with their boxes scaled to it: `(image,
    {"boxes", key})`, key "labels" (class ids) or "attributes" (0/1 vectors)."""

    def __init__(self, samples: list[Sample], key: str, input_spec: InputSpec, task: str) -> None:
        self.samples = samples
        self.key = key
        self.input_spec = input_spec
        self.task = task

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, dict[str, Any]]:
        import torch

        from dmtcore import image_header, read_image

        sample = self.samples[index]
        what = f"task {self.task!r}: image {str(sample.image)!r}"
        image = read_image(sample.image, self.input_spec, what)[0]  # says why when unreadable
        header = image_header(sample.image)
        if header is None:
            raise DataError(f"{what} cannot be read again (it changed while being read)")
        source = header[1]
        if sample.size is not None and tuple(sample.size) != tuple(source):
            raise DataError(
                f"{what} is {source[1]}×{source[0]} pixels, but {sample.source} gives it as "
                f"{sample.size[1]}×{sample.size[0]}; the boxes are in the annotation's pixels"
            )
        for corners, where in zip(sample.corners, sample.where, strict=True):
            problem = box_problem(corners, source[1], source[0])
            if problem is not None:
                raise DataError(f"{where}: {problem} (image {str(sample.image)!r})")
        size = (self.input_spec.height, self.input_spec.width)
        boxes = pixel_boxes(sample.corners, source, size)
        return image, {"boxes": torch.from_numpy(boxes), self.key: torch.from_numpy(sample.values)}


def _root(request: DataRequest) -> Path:
    return Path(os.path.abspath(Path(request.data_dir).expanduser()))


def _spec(request: DataRequest) -> InputSpec:
    return request.input_spec or InputSpec(*NATIVE_SHAPE)


def detection_datasets(year: str):
    def datasets(request: DataRequest) -> TaskData:
        folder = ensure_voc(_root(request), year, request.download)
        spec, name = _spec(request), task_name(year)
        splits = {
            split: RegionImages(detection_samples(folder, file), "labels", spec, name)
            for split, file in SPLIT_FILES.items()
        }
        if year == "2007" and (folder / "ImageSets" / "Main" / "test.txt").is_file():
            splits["test"] = RegionImages(detection_samples(folder, "test"), "labels", spec, name)
        return TaskData(**splits, deterministic=True)

    return datasets


def attribute_datasets(request: DataRequest) -> TaskData:
    root = _root(request)
    folder = ensure_voc(root, DEFAULT_YEAR, request.download)
    attributes = ensure_attributes(root, request.download)
    check_attribute_names(attributes / ATTRIBUTE_NAMES_FILE)
    spec = _spec(request)
    return TaskData(
        **{
            split: RegionImages(
                attribute_samples(attributes / file, folder), "attributes", spec, "voc.attributes"
            )
            for split, file in ATTRIBUTE_SPLITS.items()
        },
        deterministic=True,
    )


def detection_status(year: str):
    """For `dmt tasks`: the year's folder is complete (torchvision can fetch it)."""

    def status(data_dir: Path) -> str:
        found = find_voc(Path(data_dir).expanduser(), year) is not None
        return "on disk" if found else "needs --download"

    return status


def attribute_status(data_dir: Path) -> str:
    root = Path(data_dir).expanduser()
    found = find_voc(root, DEFAULT_YEAR) is not None and all(
        p.is_file() for p in attribute_required(root)
    )
    return "on disk" if found else "needs --download"


@hookimpl
def dmt_register_tasks(kinds: Any) -> None:
    for year in YEARS:
        kinds.add_task(
            TaskSpec(
                name=task_name(year),
                description=f"PASCAL VOC {year}: every object's box and class (20 classes, "
                "difficult objects left out)",
                input_shape=NATIVE_SHAPE,
                output="detection",
                num_outputs=len(CLASS_NAMES),
                class_names=CLASS_NAMES,
                datasets=detection_datasets(year),
                data_status=detection_status(year),
            )
        )
    kinds.add_task(
        TaskSpec(
            name="voc.attributes",
            description="attribute-PASCAL: 64 attributes of every box in VOC 2008 (Farhadi et "
            "al. 2009)",
            input_shape=NATIVE_SHAPE,
            output="box-attributes",
            num_outputs=len(ATTRIBUTE_NAMES),
            class_names=ATTRIBUTE_NAMES,
            datasets=attribute_datasets,
            data_status=attribute_status,
            boxes_from="voc.detection",
        )
    )
