"""The `nyuv2` plugin on a small fabricated copy of the official `nyu_depth_v2_labeled.mat`:
MATLAB v7.3 (HDF5 behind a 512-byte user block holding MATLAB's header), arrays stored
column-major as MATLAB writes them (so h5py reads them with their shapes reversed), MATLAB's
dtypes, and a fabricated `splits.mat` and `classMapping40.mat` beside it (MATLAB v5, as the
published ones are).

6 images of 48×64 instead of 1449 of 480×640: every image, depth and label map has H ≠ W and
random content, so a transposition or an index off by one shows.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import fingerprint

COUNT, HEIGHT, WIDTH = 6, 48, 64
TRAIN, TEST = [1, 3, 4, 6], [2, 5]  # 1-based, as splits.mat keeps them
HEADER = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan 14 12:00:00 2013 HDF5 schema 1.00 ."


def matlab_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    """The arrays as MATLAB holds them: images H×W×3×N uint8, depths H×W×N single (metres),
    labels H×W×N uint16 (0 unlabelled, 1..894 raw classes)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(1, 895, (HEIGHT, WIDTH, COUNT)).astype(np.uint16)
    labels[:3] = 0  # an unlabelled strip at the top of every image
    return {
        "images": rng.integers(0, 256, (HEIGHT, WIDTH, 3, COUNT)).astype(np.uint8),
        "depths": rng.uniform(0.5, 10.0, (HEIGHT, WIDTH, COUNT)).astype(np.float32),
        "labels": labels,
    }


def write_v73(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """A MATLAB v7.3 file: HDF5 with a 512-byte user block starting with MATLAB's header,
    each array stored column-major (numpy's reversed-axes view of it, in C order)."""
    import h5py

    classes = {"uint8": "uint8", "uint16": "uint16", "float32": "single", "float64": "double"}
    with h5py.File(path, "w", userblock_size=512) as f:
        for name, array in arrays.items():
            data = f.create_dataset(name, data=np.ascontiguousarray(array.T))
            data.attrs["MATLAB_class"] = np.bytes_(classes[array.dtype.name])
    with open(path, "r+b") as f:
        f.write(HEADER.ljust(116) + bytes(8) + b"\x00\x02" + b"IM")


def fabricated_mapping() -> np.ndarray:
    """894 raw classes → 1..40, every class used (not Gupta et al.'s table: a stand-in)."""
    return (np.arange(894) * 7) % 40 + 1


def write_nyu(folder: Path, mapping: bool = True, split_v73: bool = False) -> dict:
    import scipy.io

    folder.mkdir(parents=True, exist_ok=True)
    arrays = matlab_arrays()
    write_v73(folder / "nyu_depth_v2_labeled.mat", arrays)
    split = {
        "trainNdxs": np.array(TRAIN, float)[:, None],
        "testNdxs": np.array(TEST, float)[:, None],
    }
    if split_v73:
        write_v73(folder / "splits.mat", split)
    else:
        scipy.io.savemat(folder / "splits.mat", split)
    if mapping:
        names = np.empty((1, 40), dtype=object)
        names[0, :] = [f"class{i}" for i in range(40)]
        scipy.io.savemat(
            folder / "classMapping40.mat",
            {"mapClass": fabricated_mapping()[None].astype(float), "className": names},
        )
    return arrays


def datasets(task: str, data: Path, size: tuple[int, int] | None = None):
    from dmt_plugins import nyuv2
    from dmtcore.tasks.names import InputSpec
    from dmtcore.tasks.spec import DataRequest

    target = next(t for t in nyuv2.TARGETS if t.task == task)
    spec = InputSpec(3, *size) if size else None
    return nyuv2._factory(target)(DataRequest(data, spec))


@pytest.mark.parametrize("split_v73", [False, True], ids=["split-v5", "split-v7.3"])
def test_pixels_labels_and_depth_come_out_the_right_way_round(
    tmp_path: Path, split_v73: bool
) -> None:
    import torch

    truth = write_nyu(tmp_path / "nyuv2", split_v73=split_v73)
    seg, depth = datasets("seg40", tmp_path), datasets("depth", tmp_path)
    # The split: trainNdxs less one held-out image, and testNdxs, 0-based, for both tasks.
    assert sorted(seg.train.ids + seg.val.ids) == [i - 1 for i in TRAIN] and len(seg.val) == 1
    assert seg.test.ids == depth.test.ids == [i - 1 for i in TEST]
    assert (seg.train.ids, seg.val.ids) == (depth.train.ids, depth.val.ids)

    lookup = np.concatenate([[-1], fabricated_mapping() - 1])
    for split in ("train", "val", "test"):
        for k, n in enumerate(getattr(seg, split).ids):
            image, label = getattr(seg, split)[k]
            assert image.dtype == torch.float32 and image.shape == (3, HEIGHT, WIDTH)
            expected = np.moveaxis(truth["images"][:, :, :, n], -1, 0) / np.float32(255)
            assert np.array_equal(image.numpy(), expected)
            assert label.dtype == torch.long and label.shape == (HEIGHT, WIDTH)
            assert np.array_equal(label.numpy(), lookup[truth["labels"][:, :, n]])
            assert (label[:3] == -1).all() and label[3:].min() >= 0 and label.max() <= 39
    _, d = depth.test[1]
    assert d.dtype == torch.float32 and d.shape == (1, HEIGHT, WIDTH)
    assert np.array_equal(d.numpy()[0], truth["depths"][:, :, TEST[1] - 1])


def test_the_official_layout_resizes_to_the_store_size(tmp_path: Path) -> None:
    write_nyu(tmp_path)  # in --data-dir itself, not in nyuv2/
    image, label = datasets("seg40", tmp_path, (24, 32)).test[0]
    assert image.shape == (3, 24, 32) and label.shape == (24, 32)
    assert (label[:1] == -1).all() and (label[2:] >= 0).all()  # no class blended with -1


def test_the_tasks_a_layout_cannot_serve_say_what_they_need(tmp_path: Path) -> None:
    from dmtcore.errors import DataError

    write_nyu(tmp_path / "nyuv2")
    mat = tmp_path / "nyuv2" / "nyu_depth_v2_labeled.mat"
    with pytest.raises(DataError) as caught:
        datasets("normals", tmp_path)
    message = str(caught.value)
    assert message.startswith(f"NYUv2's official {mat} has no surface normals")
    assert "github.com/lorenmt/mtan" in message and "normal/ folders" in message
    with pytest.raises(DataError, match=r"is read for its 40 classes by nyuv2\.seg40, not for"):
        datasets("segmentation", tmp_path)

    (tmp_path / "nyuv2" / "train").mkdir()
    (tmp_path / "nyuv2" / "val").mkdir()
    with pytest.raises(DataError) as caught:  # depth could come from either: no guess
        datasets("depth", tmp_path)
    message = str(caught.value)
    assert message.startswith(f"NYUv2 is in --data-dir {str(tmp_path)!r} twice")
    assert str(mat) in message and "a folder holding only the one to use" in message


def test_seg40_without_the_official_file_lists_what_it_looked_for(tmp_path: Path) -> None:
    from dmtcore.errors import DataError

    (tmp_path / "nyuv2" / "train").mkdir(parents=True)
    (tmp_path / "nyuv2" / "val").mkdir()
    with pytest.raises(DataError) as caught:
        datasets("seg40", tmp_path)
    message = str(caught.value)
    assert message.startswith("NYUv2 for nyuv2.seg40 is not in --data-dir")
    for path in (
        tmp_path / "nyuv2" / "nyu_depth_v2_labeled.mat",
        tmp_path / "nyu_depth_v2_labeled.mat",
    ):
        assert str(path) in message
    assert "splits.mat" in message and "classMapping40.mat" in message
    assert "hold 13 classes only: nyuv2.segmentation" in message

    with pytest.raises(DataError) as caught:  # depth, with nothing at all: both layouts named
        datasets("depth", tmp_path / "empty")
    message = str(caught.value)
    assert str(tmp_path / "empty" / "nyuv2" / "train") in message
    assert str(tmp_path / "empty" / "nyuv2" / "nyu_depth_v2_labeled.mat") in message


def bad_split(folder: Path) -> None:
    import scipy.io

    scipy.io.savemat(folder / "splits.mat", {"trainNdxs": [[1], [7]], "testNdxs": [[2]]})


def overlapping_split(folder: Path) -> None:
    import scipy.io

    scipy.io.savemat(folder / "splits.mat", {"trainNdxs": [[1], [2]], "testNdxs": [[2]]})


def short_mapping(folder: Path) -> None:
    import scipy.io

    scipy.io.savemat(folder / "classMapping40.mat", {"mapClass": np.ones((1, 40))})


def mapping_13(folder: Path) -> None:
    import scipy.io

    scipy.io.savemat(folder / "classMapping40.mat", {"mapClass": np.full((1, 894), 41.0)})


@pytest.mark.parametrize(
    ("task", "spoil", "expected"),
    [
        ("depth", lambda f: (f / "splits.mat").unlink(), r"splits\.mat' is missing; it must hold trainNdxs and testNdxs"),
        ("depth", bad_split, r"trainNdxs in .* holds 7; valid: 1\.\.6 \(1-based"),
        ("depth", overlapping_split, r"puts image 2 \(1-based\) in both trainNdxs and testNdxs"),
        ("seg40", lambda f: (f / "classMapping40.mat").unlink(), r"classMapping40\.mat' is missing; it must hold mapClass, 894 numbers"),
        ("seg40", short_mapping, r"mapClass in .* has 40 entries; it must hold mapClass, 894"),
        ("seg40", mapping_13, r"maps a raw class to 41; valid: 1\.\.40"),
        ("seg40", lambda f: (f / "nyu_depth_v2_labeled.mat").write_bytes(b"MATLAB 5.0" * 60), r"nyu_depth_v2_labeled\.mat' cannot be read as HDF5"),
    ],
    ids=["no-split", "split-range", "split-overlap", "no-mapping", "mapping-length", "mapping-range", "not-hdf5"],
)  # fmt: skip
def test_bad_companion_files_are_named_in_one_line(tmp_path: Path, task, spoil, expected) -> None:
    from dmtcore.errors import DataError

    folder = tmp_path / "nyuv2"
    write_nyu(folder)
    spoil(folder)
    before = fingerprint(folder)
    with pytest.raises(DataError, match=expected) as caught:
        datasets(task, tmp_path)
    assert caught.value.exit_code == 7 and "\n" not in str(caught.value)
    assert fingerprint(folder) == before


def test_a_raw_label_beyond_the_mapping_is_named_with_its_image(tmp_path: Path) -> None:
    from dmtcore.errors import DataError

    arrays = write_nyu(tmp_path / "nyuv2")
    arrays["labels"][10, 20, TEST[0] - 1] = 900
    write_v73(tmp_path / "nyuv2" / "nyu_depth_v2_labeled.mat", arrays)
    test = datasets("seg40", tmp_path).test
    with pytest.raises(DataError, match=r"holds raw label 900 in image 2 \(1-based\); valid: 0"):
        test[0]
    test[1]  # the other image reads fine


def test_without_h5py_the_message_names_the_extra(tmp_path: Path, monkeypatch) -> None:
    import sys

    from dmtcore.errors import PluginError

    write_nyu(tmp_path)
    monkeypatch.setitem(sys.modules, "h5py", None)  # import h5py raises ImportError
    with pytest.raises(PluginError, match=r"needs h5py: pip install 'dmt-vision\[nyuv2\]'"):
        datasets("depth", tmp_path)


def test_seg40_and_depth_train_from_the_official_file(run_cli, tmp_path: Path) -> None:
    """Through the engine: the 40-class labels pass its checks and train; eval reads testNdxs."""
    write_nyu(tmp_path / "data" / "nyuv2")
    store = tmp_path / "store"
    common = ["--store", store, "--data-dir", tmp_path / "data", "--no-tracking"]
    run_cli("init", "--store", store, "--input", "3x24x32", "--backbone-option", "spatial=true")
    added = run_cli("train", "nyuv2.seg40", "nyuv2.depth", *common, "--epochs", "1", "--json")
    record = json.loads(added.stdout)
    assert set(record["metrics"]) == {"nyuv2.seg40", "nyuv2.depth"}
    evaluated = json.loads(run_cli("eval", *common[:4], "--split", "test", "--json").stdout)
    assert 0.0 <= evaluated["metrics"]["nyuv2.seg40"]["pixel_accuracy"] <= 1.0
    assert evaluated["metrics"]["nyuv2.depth"]["abs_rel"] > 0.0
