"""The `nyuv2` plugin on small files in MTAN's preprocessed layout: `nyuv2/{train,val}/` with
`image/`, `label/`, `depth/` and `normal/` folders of per-sample `.npy` files.

The samples are 12×16 instead of 288×384; labels have unlabelled pixels (-1), depth has holes
(0) and normals have all-zero vectors, laid out so that any blending when resizing shows.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import fingerprint

HEIGHT, WIDTH = 12, 16


def sample(seed: int) -> dict[str, np.ndarray]:
    """One sample as MTAN stores it: image H×W×3, label H×W (floats), depth H×W×1, normal H×W×3."""
    rng = np.random.default_rng(seed)
    label = rng.integers(-1, 13, (HEIGHT, WIDTH)).astype(np.float32)
    depth = rng.uniform(0.5, 10.0, (HEIGHT, WIDTH, 1)).astype(np.float32)
    depth[::2, ::2] = 0.0  # holes next to valid depth: blending would make small depths
    depth[:, :3] = 0.0  # and a strip that every resize samples
    normal = rng.normal(size=(HEIGHT, WIDTH, 3))
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    normal[1::2, 1::2] = 0.0
    return {
        "image": rng.uniform(0, 1, (HEIGHT, WIDTH, 3)).astype(np.float32),
        "label": label,
        "depth": depth,
        "normal": normal.astype(np.float32),
    }


def write_nyuv2(folder: Path, train: int = 3, val: int = 2) -> dict[str, list[dict]]:
    """`folder/{train,val}/{image,label,depth,normal}/N.npy`; returns the arrays written."""
    written: dict[str, list[dict]] = {}
    for offset, (split, count) in enumerate((("train", train), ("val", val))):
        written[split] = [sample(100 * offset + i) for i in range(count)]
        for i, arrays in enumerate(written[split]):
            for kind, array in arrays.items():
                (folder / split / kind).mkdir(parents=True, exist_ok=True)
                np.save(folder / split / kind / f"{i}.npy", array)
    return written


def datasets(task: str, data: Path, size: tuple[int, int] | None = None, download: bool = False):
    from dmt_plugins import nyuv2
    from dmtcore.tasks.names import InputSpec
    from dmtcore.tasks.spec import DataRequest

    target = next(t for t in nyuv2.TARGETS if t.task == task)
    spec = InputSpec(3, *size) if size else None
    return nyuv2._factory(target)(DataRequest(data, spec, download=download))


def test_missing_data_names_the_folder_and_where_to_get_it(tmp_path: Path) -> None:
    from dmtcore.errors import DataError

    data = tmp_path / "data"
    for download in (False, True):
        with pytest.raises(DataError) as caught:
            datasets("normals", data, download=download)
        message = str(caught.value)
        assert caught.value.exit_code == 7 and "\n" not in message
        for folder in ("train/image", "train/normal", "val/image", "val/normal"):
            assert str(data / "nyuv2" / folder) in message
        assert "no --download for NYUv2" in message
        assert "github.com/lorenmt/mtan" in message and "nyuv2.zip" in message
    assert not data.exists()


def test_missing_label_folder_is_named(tmp_path: Path) -> None:
    from dmtcore.errors import DataError

    write_nyuv2(tmp_path / "data" / "nyuv2")
    missing = tmp_path / "data" / "nyuv2" / "val" / "depth"
    for path in missing.iterdir():
        path.unlink()
    missing.rmdir()
    assert len(datasets("normals", tmp_path / "data").test) == 2  # needs no depth
    with pytest.raises(DataError, match=f"; missing: {missing}\\. There is no --download"):
        datasets("depth", tmp_path / "data")


def test_sample_without_its_label_file_is_named(tmp_path: Path) -> None:
    from dmtcore.errors import DataError

    write_nyuv2(tmp_path / "nyuv2")
    (tmp_path / "nyuv2" / "train" / "label" / "1.npy").unlink()
    with pytest.raises(DataError, match=r"train sample 1 has no .*train/label/1\.npy"):
        datasets("segmentation", tmp_path)


def test_missing_data_through_the_cli(tmp_path: Path, run_cli) -> None:
    data, store = tmp_path / "data", tmp_path / "store"
    result = run_cli(
        "add-task", "nyuv2.depth", "--store", store, "--data-dir", data, "-p",
        "dmt_plugins.nyuv2", "--epochs", "1", "--no-tracking", expect=7,
    )  # fmt: skip
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and errors[0].startswith("Error: NYUv2 is not in --data-dir")
    assert str(data / "nyuv2" / "train" / "depth") in errors[0]
    assert "Traceback" not in result.stderr
    assert not store.exists() and not data.exists()


@pytest.mark.parametrize("nested", [True, False], ids=["data-dir", "nyuv2-folder"])
def test_values_round_trip_at_native_size(tmp_path: Path, nested: bool) -> None:
    import torch

    written = write_nyuv2(tmp_path / "nyuv2")
    data = tmp_path if nested else tmp_path / "nyuv2"
    seg, depth, normals = (datasets(t, data) for t in ("segmentation", "depth", "normals"))
    assert (len(seg.train), len(seg.val), len(seg.test)) == (2, 1, 2)
    assert seg.deterministic and depth.deterministic and normals.deterministic
    for split in ("train", "val", "test"):  # one held-out split for all three tasks
        ids = [getattr(d, split).ids for d in (seg, depth, normals)]
        assert ids[0] == ids[1] == ids[2]
    assert sorted(seg.train.ids + seg.val.ids) == [0, 1, 2]

    index = seg.val.ids[0]
    truth = written["train"][index]
    image, label = seg.val[0]
    assert image.dtype == torch.float32 and image.shape == (3, HEIGHT, WIDTH)
    assert np.array_equal(image.numpy(), np.moveaxis(truth["image"], -1, 0))
    assert label.dtype == torch.long and label.shape == (HEIGHT, WIDTH)
    assert np.array_equal(label.numpy(), truth["label"].astype(np.int64))
    assert (label == -1).any()

    _, d = depth.test[1]
    assert d.dtype == torch.float32 and d.shape == (1, HEIGHT, WIDTH)
    assert np.array_equal(d.numpy()[0], written["val"][1]["depth"][..., 0])

    _, n = normals.test[0]
    assert n.dtype == torch.float32 and n.shape == (3, HEIGHT, WIDTH)
    assert np.allclose(n.numpy(), np.moveaxis(written["val"][0]["normal"], -1, 0), atol=1e-6)
    assert (n[:, 1::2, 1::2] == 0).all()


@pytest.mark.parametrize("size", [(6, 8), (5, 7), (24, 32)], ids=["half", "odd", "double"])
def test_resizing_to_the_store_size_never_blends_labels(tmp_path: Path, size) -> None:
    import torch
    import torch.nn.functional as F

    written = write_nyuv2(tmp_path / "nyuv2", train=2, val=1)
    truth = written["val"][0]
    seg, depth, normals = (
        datasets(t, tmp_path, size).test for t in ("segmentation", "depth", "normals")
    )
    image, label = seg[0]
    original = torch.from_numpy(np.moveaxis(truth["image"], -1, 0).copy())
    expected = F.interpolate(original[None], size=size, mode="bilinear", antialias=True)[0]
    assert image.shape == (3, *size) and torch.allclose(image, expected.clamp(0, 1))

    assert label.shape == size and label.dtype == torch.long
    assert set(label.unique().tolist()) <= set(np.unique(truth["label"]).astype(int).tolist())

    _, d = depth[0]
    depths = torch.from_numpy(np.moveaxis(truth["depth"], -1, 0).copy())
    assert d.shape == (1, *size)
    assert torch.equal(d, F.interpolate(depths[None], size=size, mode="nearest-exact")[0])
    assert set(d.unique().tolist()) <= set(np.unique(truth["depth"]).tolist())
    assert (d == 0).any() and d[d > 0].min() >= 0.5  # holes stay 0; no depth halved by a hole

    _, n = normals[0]
    lengths = n.norm(dim=0)
    assert n.shape == (3, *size)
    assert torch.all((lengths == 0) | ((lengths - 1).abs() < 1e-5))


class RunsCode:
    """Unpickling this creates a folder: proof that a pickle in the data was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


@pytest.mark.parametrize(
    ("task", "kind", "make", "expected"),
    [
        (
            "segmentation",
            "label",
            lambda m: np.zeros((HEIGHT, WIDTH - 1), np.float32),
            r"holds shape 12×15, dtype float32; expected H×W class ids 0\.\.12 or -1 .* 12×16",
        ),
        (
            "segmentation",
            "label",
            lambda m: np.full((HEIGHT, WIDTH), 13, np.float32),
            r"holds the value 13; expected H×W class ids 0\.\.12 or -1",
        ),
        (
            "depth",
            "depth",
            lambda m: np.array([RunsCode(m)], dtype=object),
            r"is not a plain numpy \.npy array .*; pickled objects are never loaded",
        ),
        (
            "depth",
            "depth",
            lambda m: np.full((HEIGHT, WIDTH, 1), np.nan, np.float32),
            r"holds NaN or infinite values; expected H×W×1 \(or H×W\) floats ≥ 0",
        ),
        (
            "normals",
            "image",
            lambda m: np.zeros((HEIGHT, WIDTH, 3), np.uint8),
            r"holds shape 12×16×3, dtype uint8; expected H×W×3 floats in \[0, 1\]",
        ),
        (
            "normals",
            "normal",
            lambda m: np.full((HEIGHT, WIDTH, 3), 128.0, np.float32),
            r"holds a component of 128; expected H×W×3 floats in \[-1, 1\]",
        ),
    ],
    ids=["label-shape", "class-id", "pickle", "nan-depth", "uint8-image", "normal-range"],
)
def test_malformed_file_is_refused_in_one_line_naming_it(
    tmp_path: Path, task: str, kind: str, make, expected: str
) -> None:
    from dmtcore.errors import DataError

    write_nyuv2(tmp_path / "nyuv2", train=3, val=2)
    marker = tmp_path / "pickle-ran"
    path = tmp_path / "nyuv2" / "val" / kind / "1.npy"
    np.save(path, make(marker), allow_pickle=True)
    before = fingerprint(tmp_path / "nyuv2")
    test = datasets(task, tmp_path).test
    test[0]  # the other sample reads fine
    with pytest.raises(DataError, match=expected) as caught:
        test[1]
    message = str(caught.value)
    assert message.startswith(f"NYUv2 file {str(path)!r}") and "\n" not in message
    assert not marker.exists()
    assert fingerprint(tmp_path / "nyuv2") == before


def test_registers_three_dense_tasks() -> None:
    from dmt_plugins import nyuv2
    from dmtcore.hooks.host import create_plugin_host

    registry = create_plugin_host(["dmt_plugins.nyuv2"]).kinds
    seg = registry.task("nyuv2.segmentation")
    assert seg.output == "segmentation" and seg.num_outputs == 13
    assert seg.class_names == nyuv2.CLASS_NAMES and seg.class_names[0] == "bed"
    assert seg.input_shape == (3, 288, 384)
    assert (registry.task("nyuv2.depth").output, registry.task("nyuv2.depth").num_outputs) == (
        "depth",
        1,
    )
    assert registry.task("nyuv2.normals").num_outputs == 3


def test_registers_seg40_and_normals_with_the_l1_loss() -> None:
    from dmt_plugins import nyuv2_mat
    from dmtcore.hooks.host import create_plugin_host

    registry = create_plugin_host(["dmt_plugins.nyuv2"]).kinds
    seg40 = registry.task("nyuv2.seg40")
    assert (seg40.output, seg40.num_outputs, seg40.ignore_label) == ("segmentation", 40, -1)
    assert seg40.class_names == nyuv2_mat.CLASS_NAMES_40 and seg40.input_shape == (3, 480, 640)
    assert registry.task("nyuv2.normals").loss == "cosine"
    assert registry.task("nyuv2.normals-l1").loss == "normals_l1"


def test_normals_l1_trains_its_loss_down_and_the_manifest_records_it(
    tmp_path: Path, run_cli
) -> None:
    import re

    write_nyuv2(tmp_path / "nyuv2", train=8, val=2)
    store = tmp_path / "store"
    run_cli("init", "--store", store, "--input", "3x12x16", "--backbone-option", "spatial=true")
    result = run_cli(
        "add-task", "nyuv2.normals-l1", "--store", store, "--data-dir", tmp_path, "--epochs", "8",
        "--batch-size", "7", "--lr", "0.01", "--no-tracking",
    )  # fmt: skip
    losses = [float(v) for v in re.findall(r"^epoch \d+: loss ([0-9.]+);", result.stderr, re.M)]
    # Random normals leave little to learn: measured 0.673 → 0.607 over the 8 epochs.
    assert len(losses) == 8 and losses[-1] < 0.95 * losses[0], losses
    manifest = json.loads((store / "versions" / "v000002.json").read_text())
    assert manifest["tasks"][0]["loss"] == "normals_l1"
