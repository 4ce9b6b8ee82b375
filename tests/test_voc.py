"""The `voc` plugin (issue 26): PASCAL VOC detection and attribute-PASCAL box attributes, read
from a small tree written here in the real layouts (VOC XML, ImageSets, apascal_*.txt).

Boxes come out exactly as VOC's 1-based inclusive corners say (x1 - 1, y1 - 1, x2, y2), scaled
with the image to the store's size; difficult objects and person parts are left out; bad
annotations stop in one line naming the file (and line), the value and what is valid; missing
data names the paths and `--download`, which calls torchvision's downloaders only when asked.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dmt_plugins import voc
from dmtcore import DataRequest, InputSpec
from dmtcore.errors import DataError

WIDTH, HEIGHT = 40, 30
# id: objects (class, xmin, ymin, xmax, ymax, difficult), VOC's 1-based inclusive corners.
IMAGES = {
    "2008_000001": [("dog", 3, 4, 20, 25, 0), ("person", 22, 2, 40, 30, 0)],
    "2008_000002": [("cat", 1, 1, 15, 12, 0), ("chair", 10, 10, 30, 28, 1)],
    "2008_000003": [("car", 5, 5, 35, 20, 0)],
    "2008_000004": [("tvmonitor", 2, 3, 12, 14, 0), ("bottle", 30, 5, 30, 25, 0)],
    "2008_000005": [],
    "2008_000006": [("horse", 4, 6, 36, 29, 0)],
    "2008_000007": [("dog", 6, 2, 24, 20, 0)],
    "2008_000008": [("bird", 10, 8, 25, 22, 0), ("sheep", 1, 15, 18, 30, 0)],
}
TRAIN = ["2008_000001", "2008_000002", "2008_000003", "2008_000004", "2008_000005"]
VAL = ["2008_000006", "2008_000007", "2008_000008"]


def attribute_vector(seed: int) -> list[int]:
    return np.random.default_rng(seed).integers(0, 2, len(voc.ATTRIBUTE_NAMES)).tolist()


# apascal_*.txt boxes: (image, class, xmin, ymin, xmax, ymax, attribute seed)
APASCAL = {
    "apascal_train.txt": [
        ("2008_000001.jpg", "dog", 3, 4, 20, 25, 1),
        ("2008_000003.jpg", "car", 5, 5, 35, 20, 2),
        ("2008_000001.jpg", "person", 22, 2, 40, 30, 3),
    ],
    "apascal_test.txt": [
        ("2008_000006.jpg", "horse", 4, 6, 36, 29, 4),
        ("2008_000008.jpg", "bird", 10, 8, 25, 22, 5),
    ],
}


def object_xml(name: str, xmin: int, ymin: int, xmax: int, ymax: int, difficult: int) -> str:
    parts = ""
    if name == "person":  # VOC's person layout: parts with boxes of their own, not objects
        parts = (
            "\t\t<part>\n\t\t\t<name>head</name>\n\t\t\t<bndbox>\n\t\t\t\t<xmin>25</xmin>\n"
            "\t\t\t\t<ymin>3</ymin>\n\t\t\t\t<xmax>30</xmax>\n\t\t\t\t<ymax>8</ymax>\n"
            "\t\t\t</bndbox>\n\t\t</part>\n"
        )
    return (
        f"\t<object>\n\t\t<name>{name}</name>\n\t\t<pose>Unspecified</pose>\n"
        f"\t\t<truncated>0</truncated>\n\t\t<occluded>0</occluded>\n"
        f"\t\t<bndbox>\n\t\t\t<xmin>{xmin}</xmin>\n\t\t\t<ymin>{ymin}</ymin>\n"
        f"\t\t\t<xmax>{xmax}</xmax>\n\t\t\t<ymax>{ymax}</ymax>\n\t\t</bndbox>\n"
        f"\t\t<difficult>{difficult}</difficult>\n{parts}\t</object>\n"
    )


def annotation_xml(image_id: str, objects: list, width: int = WIDTH, height: int = HEIGHT) -> str:
    return (
        f"<annotation>\n\t<folder>VOC2008</folder>\n\t<filename>{image_id}.jpg</filename>\n"
        "\t<source>\n\t\t<database>The VOC2008 Database</database>\n"
        "\t\t<annotation>PASCAL VOC2008</annotation>\n\t\t<image>flickr</image>\n\t</source>\n"
        f"\t<size>\n\t\t<width>{width}</width>\n\t\t<height>{height}</height>\n"
        "\t\t<depth>3</depth>\n\t</size>\n\t<segmented>0</segmented>\n"
        + "".join(object_xml(*o) for o in objects)
        + "</annotation>\n"
    )


def apascal_line(image: str, name: str, x1: int, y1: int, x2: int, y2: int, seed: int) -> str:
    return " ".join(map(str, [image, name, x1, y1, x2, y2, *attribute_vector(seed)]))


def write_voc_tree(root: Path, year: str = "2008") -> Path:
    """VOCdevkit/VOC<year>/ with JPEGs of 40×30 (each object drawn as a filled rectangle),
    their XML annotations and ImageSets/Main/train.txt and val.txt; attribute_data/ beside it."""
    from PIL import Image, ImageDraw

    folder = root / "VOCdevkit" / f"VOC{year}"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for number, (image_id, objects) in enumerate(IMAGES.items()):
        image = Image.new("RGB", (WIDTH, HEIGHT), (40 + 20 * number, 90, 140))
        draw = ImageDraw.Draw(image)
        for k, (name, x1, y1, x2, y2, _) in enumerate(objects):
            colour = (255 - 30 * k, 20 * voc.CLASS_NAMES.index(name) % 256, 30)
            draw.rectangle([x1 - 1, y1 - 1, x2 - 1, y2 - 1], fill=colour)
        image.save(folder / "JPEGImages" / f"{image_id}.jpg", quality=95)
        (folder / "Annotations" / f"{image_id}.xml").write_text(annotation_xml(image_id, objects))
    (folder / "ImageSets/Main/train.txt").write_text("\n".join(TRAIN) + "\n")
    (folder / "ImageSets/Main/val.txt").write_text("\n".join(VAL) + "\n")
    attributes = root / voc.ATTRIBUTE_FOLDER
    attributes.mkdir(exist_ok=True)
    for file, boxes in APASCAL.items():
        (attributes / file).write_text("".join(apascal_line(*box) + "\n" for box in boxes))
    (attributes / voc.ATTRIBUTE_NAMES_FILE).write_text("\n".join(voc.ATTRIBUTE_NAMES) + "\n")
    (attributes / "class_names.txt").write_text("\n".join(voc.CLASS_NAMES) + "\n")
    return folder


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    write_voc_tree(root)
    return root


def detection(root: Path, shape=(3, HEIGHT, WIDTH), download: bool = False):
    request = DataRequest(root, InputSpec(*shape), 0, download)
    return voc.detection_datasets("2008")(request)


def attributes(root: Path, shape=(3, HEIGHT, WIDTH), download: bool = False):
    return voc.attribute_datasets(DataRequest(root, InputSpec(*shape), 0, download))


def expected_boxes(objects: list, sx: float = 1.0, sy: float = 1.0) -> list[list[float]]:
    return [
        [(x1 - 1) * sx, (y1 - 1) * sy, x2 * sx, y2 * sy]
        for _, x1, y1, x2, y2, difficult in objects
        if not difficult
    ]


# -- labels --------------------------------------------------------------------------------------


def test_detection_boxes_and_classes_come_from_the_voc_xml(tree: Path) -> None:
    """At the images' own size the boxes are VOC's corners as pixel edges, exactly; the
    difficult chair and the person's head part are not objects; an empty image has 0×4."""
    data = detection(tree)
    assert [len(data.train), len(data.val)] == [len(TRAIN), len(VAL)] and data.test is None
    for split, ids in (("train", TRAIN), ("val", VAL)):
        for position, image_id in enumerate(ids):
            image, label = getattr(data, split)[position]
            objects = IMAGES[image_id]
            assert tuple(image.shape) == (3, HEIGHT, WIDTH) and 0 <= image.min() <= image.max() <= 1
            assert sorted(label) == ["boxes", "labels"]
            assert label["boxes"].dtype == label["boxes"].new_zeros(()).float().dtype
            assert label["boxes"].tolist() == expected_boxes(objects)
            kept = [voc.CLASS_NAMES.index(o[0]) for o in objects if not o[5]]
            assert label["labels"].tolist() == kept and str(label["labels"].dtype) == "torch.int64"
    assert data.train[1][1]["labels"].tolist() == [voc.CLASS_NAMES.index("cat")]  # chair: difficult
    assert data.train[0][1]["boxes"][0].tolist() == [2.0, 3.0, 20.0, 25.0]
    assert data.train[3][1]["boxes"][1].tolist() == [29.0, 4.0, 30.0, 25.0]  # xmin = xmax: 1 wide
    assert tuple(data.train[4][1]["boxes"].shape) == (0, 4)
    with_difficult = voc.detection_samples(tree / "VOCdevkit/VOC2008", "train", keep_difficult=True)
    assert with_difficult[1].values.tolist() == [voc.CLASS_NAMES.index(n) for n in ("cat", "chair")]


def test_boxes_follow_the_image_to_the_store_size(tree: Path) -> None:
    """A 40×30 image served at 20×60 (W×H): x halves, y doubles, corners stay inside."""
    data = detection(tree, shape=(1, 60, 20))
    image, label = data.train[0]
    assert tuple(image.shape) == (1, 60, 20)
    expected = expected_boxes(IMAGES[TRAIN[0]], 0.5, 2.0)
    np.testing.assert_allclose(label["boxes"].numpy(), expected, rtol=1e-6)
    assert float(label["boxes"][:, 2].max()) <= 20 and float(label["boxes"][:, 3].max()) <= 60


def test_attributes_come_from_apascal_grouped_by_image(tree: Path) -> None:
    """apascal_train is train, apascal_test val; an image's boxes in the file's order, each
    with its 64 values; the same conversion of corners."""
    data = attributes(tree)
    assert [len(data.train), len(data.val)] == [2, 2]  # 2008_000001 (two boxes), 2008_000003
    image, label = data.train[0]
    assert sorted(label) == ["attributes", "boxes"] and tuple(image.shape) == (3, HEIGHT, WIDTH)
    assert label["boxes"].tolist() == [[2.0, 3.0, 20.0, 25.0], [21.0, 1.0, 40.0, 30.0]]
    assert label["attributes"].tolist() == [attribute_vector(1), attribute_vector(3)]
    assert tuple(label["attributes"].shape) == (2, 64)
    assert data.train[1][1]["attributes"].tolist() == [attribute_vector(2)]
    assert data.val[1][1]["boxes"].tolist() == [[9.0, 7.0, 25.0, 22.0]]
    assert data.val[1][1]["attributes"].tolist() == [attribute_vector(5)]


def test_the_tasks_are_registered_with_their_contract() -> None:
    from dmtcore.hooks.host import create_plugin_host

    tasks = create_plugin_host(["dmt_plugins.voc"], autoload=False).kinds.tasks
    found = tasks["voc.detection"]
    assert found.output == "detection" and found.class_names == voc.CLASS_NAMES
    assert "voc2012.detection" in tasks and "voc2007.detection" in tasks
    described = tasks["voc.attributes"]
    assert described.output == "box-attributes" and described.num_outputs == 64
    assert described.boxes_from == "voc.detection" and described.class_names[4] == "Horiz Cyl"


# -- bad annotations -----------------------------------------------------------------------------


def rewrite(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, 1))


XML = "VOCdevkit/VOC2008/Annotations/2008_000001.xml"
TRAIN_TXT = "attribute_data/apascal_train.txt"
BAD_DETECTION = [
    ("outside", XML, "<xmax>20</xmax>", "<xmax>45</xmax>",
     ["2008_000001.xml', object 0 ('dog'): box [3, 4, 45, 25] (xmin, ymin, xmax, ymax), "
      "reaching past the 40×30 image; valid: 1 ≤ xmin ≤ xmax ≤ 40 and 1 ≤ ymin ≤ ymax ≤ 30"]),
    ("x2-before-x1", XML, "<xmax>20</xmax>", "<xmax>2</xmax>",
     ["object 0 ('dog'): box [3, 4, 2, 25]", "xmax < xmin; valid: 1 ≤ xmin ≤ xmax ≤ 40"]),
    ("zero-corner", XML, "<ymin>4</ymin>", "<ymin>0</ymin>",
     ["box [3, 0, 20, 25]", "a corner below 1 (VOC counts pixels from 1)"]),
    ("class", XML, "<name>dog</name>", "<name>doggy</name>",
     ["2008_000001.xml', object 0: class 'doggy'; valid: aeroplane, bicycle, bird",
      "tvmonitor (the 20 VOC classes)"]),
    ("unreadable", XML, "</annotation>", "</annotatio",
     ["2008_000001.xml' is not readable XML (ParseError: ", "expected a VOC annotation"]),
    ("not-a-number", XML, "<ymax>25</ymax>", "<ymax>high</ymax>",
     ["object 0 ('dog') <ymax> is 'high', not a number"]),
    ("difficult", XML, "<difficult>0</difficult>", "<difficult>yes</difficult>",
     ["object 0 ('dog'): <difficult> is 'yes'; valid: 0 or 1"]),
]  # fmt: skip


FIRST = apascal_line(*APASCAL["apascal_train.txt"][0])
BAD_ATTRIBUTES = [
    ("values-count", TRAIN_TXT, FIRST, FIRST.rsplit(" ", 1)[0],
     ["apascal_train.txt', line 1: 69 fields (63 attribute values); expected 70: one box a "
      "line: the image file, its class, xmin ymin xmax ymax", "then 64 values of 0 or 1"]),
    ("value", TRAIN_TXT, FIRST, " ".join([*FIRST.split()[:10], "2", *FIRST.split()[11:]]),
     ["apascal_train.txt', line 1: attribute 5 ('Horiz Cyl') is '2'; valid: 0 or 1"]),
    ("class", TRAIN_TXT, "car 5 5", "truck 5 5",
     ["apascal_train.txt', line 2: class 'truck'; valid: aeroplane,"]),
    ("x2-before-x1", TRAIN_TXT, "car 5 5 35 20", "car 5 5 3 20",
     ["line 2: box [5, 5, 3, 20] (xmin, ymin, xmax, ymax), xmax < xmin"]),
    ("missing-image", TRAIN_TXT, "2008_000003.jpg", "2008_009999.jpg",
     ["line 2: image '2008_009999.jpg' is not in", "VOC 2008's images"]),
    ("names", "attribute_data/attribute_names.txt", "Horiz Cyl", "Horizontal Cylinder",
     ["attribute_names.txt', attribute 5: 'Horizontal Cylinder', where 'Horiz Cyl' is expected"]),
]  # fmt: skip


# Which reader meets each bad file: the VOC XML annotations, or attribute-PASCAL's lines.
BAD_FILES = [("voc", *c) for c in BAD_DETECTION] + [("apascal", *c) for c in BAD_ATTRIBUTES]


@pytest.mark.parametrize(
    ("reader", "case", "file", "old", "new", "parts"),
    BAD_FILES,
    ids=[f"{c[0]}-{c[1]}" for c in BAD_FILES],
)
def test_a_bad_annotation_file_is_one_line_naming_the_file_and_value(
    tree: Path, reader: str, case: str, file: str, old: str, new: str, parts: list[str]
) -> None:
    rewrite(tree / file, old, new)
    with pytest.raises(DataError) as caught:
        {"voc": detection, "apascal": attributes}[reader](tree)
    message = str(caught.value)
    assert "\n" not in message and str(tree / file) in message, message
    for part in parts:
        assert part in message, message


def test_a_box_past_the_image_or_a_wrong_size_is_named_when_the_image_is_read(tree: Path) -> None:
    """apascal gives no image size: its boxes are checked against the JPEG as it is read; an
    XML size that is not the JPEG's is refused there too (its boxes are in the XML's pixels)."""
    rewrite(tree / TRAIN_TXT, "car 5 5 35 20", "car 5 5 41 20")
    data = attributes(tree)
    with pytest.raises(DataError, match=r"apascal_train\.txt', line 2: box \[5, 5, 41, 20\] "
                       r"\(xmin, ymin, xmax, ymax\), reaching past the 40×30 image; valid: 1 ≤ "
                       r"xmin ≤ xmax ≤ 40 and 1 ≤ ymin ≤ ymax ≤ 30"):  # fmt: skip
        data.train[1]
    rewrite(tree / XML, "<width>40</width>", "<width>50</width>")
    data = detection(tree)
    with pytest.raises(DataError, match=r"2008_000001\.jpg' is 40×30 pixels, but VOC annotation "
                       r"'.*2008_000001\.xml' gives it as 50×30"):  # fmt: skip
        data.train[0]


# -- missing data and --download -----------------------------------------------------------------


@pytest.fixture
def downloads(monkeypatch) -> list[tuple]:
    """torchvision's downloaders replaced by stand-ins that record their call and unpack the
    small tree instead (nothing reaches the network)."""
    import torchvision.datasets.utils as utils
    import torchvision.datasets.voc as tv_voc

    calls: list[tuple] = []

    def voc_archive(url, download_root, extract_root=None, filename=None, md5=None, **_):
        calls.append(("voc", url, str(download_root), md5))
        source = Path(download_root) / "unpacked"
        write_voc_tree(source)
        (source / "VOCdevkit").rename(Path(download_root) / "VOCdevkit")

    def attribute_archive(url, download_root, extract_root=None, filename=None, md5=None, **_):
        calls.append(("attributes", url, str(download_root), md5))
        source = Path(download_root) / "unpacked-attributes"
        write_voc_tree(source)
        (source / voc.ATTRIBUTE_FOLDER).rename(Path(download_root) / voc.ATTRIBUTE_FOLDER)

    monkeypatch.setattr(tv_voc, "download_and_extract_archive", voc_archive)
    monkeypatch.setattr(utils, "download_and_extract_archive", attribute_archive)
    return calls


def test_missing_data_names_the_paths_and_download_never_runs_unasked(
    tmp_path: Path, downloads: list[tuple]
) -> None:
    empty = tmp_path / "empty"
    with pytest.raises(DataError) as caught:
        detection(empty)
    message = str(caught.value)
    assert message.startswith(f"PASCAL VOC 2008 is not in --data-dir {str(empty)!r}: expected ")
    assert f"{empty / 'VOCdevkit/VOC2008'}/ with Annotations/" in message
    assert "missing: the folder. Add --download" in message
    partial = tmp_path / "partial"
    write_voc_tree(partial)
    (partial / "VOCdevkit/VOC2008/ImageSets/Main/val.txt").unlink()
    with pytest.raises(DataError, match=r"; missing: \S+/VOC2008/ImageSets/Main/val\.txt\. "):
        detection(partial)
    write_voc_tree(tmp_path / "only-voc")
    (tmp_path / "only-voc" / voc.ATTRIBUTE_FOLDER / "apascal_test.txt").unlink()
    with pytest.raises(DataError, match=r"attribute-PASCAL is not in --data-dir .*; missing: "):
        attributes(tmp_path / "only-voc")
    assert downloads == [] and not empty.exists()
    assert voc.detection_status("2008")(empty) == "needs --download"


def test_download_fetches_with_torchvision_only_what_is_missing(
    tmp_path: Path, downloads: list[tuple]
) -> None:
    from torchvision.datasets.voc import DATASET_YEAR_DICT

    root = tmp_path / "fetched"
    data = attributes(root, download=True)
    official = DATASET_YEAR_DICT["2008"]
    assert downloads == [
        ("voc", official["url"], str(root), official["md5"]),
        ("attributes", voc.ATTRIBUTE_ARCHIVE, str(root), None),
    ]
    assert data.train[0][1]["attributes"].tolist()[0] == attribute_vector(1)
    assert voc.attribute_status(root) == "on disk"
    detection(root, download=True)
    attributes(root, download=True)
    assert len(downloads) == 2  # both on disk now: not fetched again


def test_the_cli_says_where_voc_is_expected_in_one_line(tmp_path: Path, run_cli) -> None:
    store = tmp_path / "store"
    result = run_cli(
        "add-task", "voc.detection", "--store", store, "--data-dir", tmp_path / "none",
        "--no-tracking", expect=7,
    )  # fmt: skip
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr and lines[-1].startswith("Error: "), result.stderr
    assert "PASCAL VOC 2008 is not in --data-dir" in lines[-1] and "--download" in lines[-1]


# -- end to end ----------------------------------------------------------------------------------


def test_add_task_voc_detection_reports_map(tree: Path, tmp_path: Path, run_cli) -> None:
    """The small tree trains one epoch on a spatial store at 32×32 and reports mAP."""
    store = tmp_path / "store"
    run_cli("init", "--store", store, "--input", "3x32x32", "--backbone-option", "spatial=true")
    added = json.loads(
        run_cli(
            "add-task", "voc.detection", "--store", store, "--data-dir", tree, "--epochs", "1",
            "--batch-size", "5", "--no-tracking", "--json",
        ).stdout
    )  # fmt: skip
    assert set(added["metrics"]) == {"map_50", "map"}, added
    assert 0.0 <= added["metrics"]["map"] <= added["metrics"]["map_50"] <= 1.0
