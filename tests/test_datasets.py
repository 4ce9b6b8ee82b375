"""The dataset plugins on small files in the real on-disk formats: CIFAR-10's pickled python
batches, CelebA's JPEGs with its attribute and partition files, and image folders.

Each class (or attribute value) gets its own colour, so a task is learnable in a few steps and
"above chance" is a real check. No test touches the network: downloads are faked or refused.
"""

from __future__ import annotations

import json
import pickle
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import fingerprint

ROOT = Path(__file__).parents[1]
CIFAR_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
QUICK = ["--epochs", "3", "--batch-size", "8", "--no-tracking"]


def colour(label: int, classes: int) -> np.ndarray:
    """A distinct RGB colour per class, spread around the hue circle."""
    import colorsys

    return np.array(colorsys.hsv_to_rgb(label / classes, 0.8, 0.9)) * 255


def noisy_images(labels: np.ndarray, classes: int, size: tuple[int, int], seed: int) -> np.ndarray:
    """N×H×W×3 uint8: each image its class's colour plus noise."""
    rng = np.random.default_rng(seed)
    base = np.stack([colour(int(label), classes) for label in labels])[:, None, None, :]
    noise = rng.normal(0, 25, (len(labels), *size, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


# -- CIFAR-10 ------------------------------------------------------------------------------------


def write_cifar(root: Path, per_class: int = 20, seed: int = 0) -> Path:
    """`root/cifar-10-batches-py/` as in the official archive: five training batches and a
    test batch (pickled dicts, `data` N×3072 uint8 with the red, green and blue planes one
    after another, `labels` a list), and `batches.meta` with the class names. Keys are bytes,
    as the batches show them when read with `encoding="bytes"`."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for index, name in enumerate([*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]):
        labels = np.repeat(np.arange(10), per_class)
        rng.shuffle(labels)
        images = noisy_images(labels, 10, (32, 32), seed + index)  # N×32×32×3
        batch = {
            b"batch_label": f"{name} of 6".encode(),
            b"labels": labels.tolist(),
            b"data": images.transpose(0, 3, 1, 2).reshape(len(labels), 3072),
            b"filenames": [f"image_{index}_{i}.png".encode() for i in range(len(labels))],
        }
        with open(folder / name, "wb") as stream:
            pickle.dump(batch, stream, protocol=2)
    meta = {
        b"num_cases_per_batch": 10 * per_class,
        b"label_names": [c.encode() for c in CIFAR_CLASSES],
        b"num_vis": 3072,
    }
    with open(folder / "batches.meta", "wb") as stream:
        pickle.dump(meta, stream, protocol=2)
    return root


@pytest.fixture
def no_network(monkeypatch) -> list[str]:
    """Every attempt to open a connection or call torchvision's downloaders is recorded and
    refused."""
    import torchvision.datasets.celeba
    import torchvision.datasets.cifar
    import torchvision.datasets.utils

    attempts: list[str] = []

    def refuse(what: str):
        def call(*args, **kwargs):
            attempts.append(f"{what} {args[:2]}")
            raise OSError(f"test: no network ({what})")

        return call

    monkeypatch.setattr(socket.socket, "connect", refuse("socket.connect"))
    monkeypatch.setattr(torchvision.datasets.utils, "_urlretrieve", refuse("_urlretrieve"))
    monkeypatch.setattr(torchvision.datasets.utils, "download_url", refuse("download_url"))
    monkeypatch.setattr(
        torchvision.datasets.cifar, "download_and_extract_archive", refuse("cifar download")
    )
    monkeypatch.setattr(
        torchvision.datasets.celeba, "download_file_from_google_drive", refuse("google drive")
    )
    return attempts


@pytest.fixture(autouse=True)
def fresh_caches() -> Iterator[None]:
    """The plugins parse a data directory once per process; tests reuse paths."""
    yield
    from dmt_plugins import celeba, cifar10_pairs

    cifar10_pairs.load.cache_clear()
    celeba.load.cache_clear()
    celeba._CSV_CACHE.clear()


def test_cifar10_pair_trains_on_its_two_classes(tmp_path: Path, run_cli, host) -> None:
    from dmtcore.tasks.spec import DataRequest

    data = write_cifar(tmp_path / "data", per_class=10)
    splits = host.kinds.task("cifar10.cat-dog").datasets(DataRequest(data, None))
    # 5 batches × 10 images of each class: 100 of the pair, 10% held out; 20 test images
    assert (len(splits.train), len(splits.val), len(splits.test)) == (90, 10, 20)
    images, labels = splits.train.tensors
    assert images.shape[1:] == (3, 32, 32) and images.min() >= 0.0 and images.max() <= 1.0
    assert sorted(labels.unique().tolist()) == [0, 1]
    assert labels.sum().item() == 45  # dog is class 1, as many as cats

    store = tmp_path / "store"
    out = run_cli(
        "add-task", "cifar10.cat-dog", "--store", store, "--data-dir", data, *QUICK, "--json"
    )
    metrics = json.loads(out.stdout)["metrics"]
    assert metrics["balanced_accuracy"] >= 0.8, metrics
    status = json.loads(run_cli("status", "--store", store, "--json").stdout)
    assert status["tasks"][0]["name"] == "cifar10.cat-dog"
    assert status["tasks"][0]["plugin"] == "cifar10-pairs"
    assert status["input_spec"] == [3, 32, 32]
    tested = json.loads(
        run_cli("eval", "--store", store, "--data-dir", data, "--split", "test", "--json").stdout
    )["metrics"]["cifar10.cat-dog"]
    assert tested["accuracy"] >= 0.8, tested


def test_cifar10_held_out_split_ignores_the_training_seed(tmp_path: Path, host) -> None:
    from dmtcore.tasks.names import InputSpec
    from dmtcore.tasks.spec import DataRequest

    data = write_cifar(tmp_path / "data", per_class=4)
    spec = host.kinds.task("cifar10.airplane-ship")
    first = spec.datasets(DataRequest(data, None, seed=0))
    second = spec.datasets(DataRequest(data, InputSpec(3, 16, 16), seed=7))
    assert first.val.tensors[1].tolist() == second.val.tensors[1].tolist()
    assert second.val.tensors[0].shape[1:] == (3, 16, 16)  # resized once, in the dataset
    assert first.deterministic


def test_cifar10_missing_names_every_file_and_downloads_nothing(
    tmp_path: Path, run_cli, no_network, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)  # a relative --data-dir: the message gives full paths
    data = tmp_path / "empty"
    store = tmp_path / "store"
    result = run_cli(
        "add-task", "cifar10.bird-frog", "--store", store, "--data-dir", "empty", *QUICK, expect=7
    )
    folder = data / "cifar-10-batches-py"
    for name in ("data_batch_1", "data_batch_5", "test_batch", "batches.meta"):
        assert str(folder / name) in result.stderr
    assert "--download" in result.stderr and "cifar-10-python.tar.gz" in result.stderr
    assert "Traceback" not in result.stderr
    assert no_network == [] and not data.exists()
    assert not store.exists()  # the store this command would have created is gone again


def test_cifar10_download_only_with_the_flag(tmp_path: Path, run_cli, monkeypatch) -> None:
    import torchvision.datasets.cifar

    calls: list[tuple[str, str]] = []

    def fake_download(url: str, root: str, **kwargs) -> None:  # what torchvision would unpack
        calls.append((url, str(root)))
        write_cifar(Path(root), per_class=4)

    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", fake_download)
    data = tmp_path / "data"
    run_cli("add-task", "cifar10.deer-horse", "--store", tmp_path / "s1", "--data-dir", data,
            *QUICK, expect=7)  # fmt: skip
    assert calls == []
    run_cli("add-task", "cifar10.deer-horse", "--store", tmp_path / "s2", "--data-dir", data,
            "--epochs", "1", "--no-tracking", "--download")  # fmt: skip
    assert calls == [("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", str(data))]


def test_cifar10_batch_that_would_run_code_is_refused(tmp_path: Path, run_cli) -> None:
    data = write_cifar(tmp_path / "data", per_class=2)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (eval, (f"open({str(marker)!r}, 'w')",))

    with open(data / "cifar-10-batches-py" / "data_batch_3", "wb") as stream:
        pickle.dump({b"data": Payload(), b"labels": []}, stream, protocol=2)
    result = run_cli(
        "add-task", "cifar10.cat-dog", "--store", tmp_path / "s", "--data-dir", data, *QUICK,
        expect=7,
    )  # fmt: skip
    assert "data_batch_3" in result.stderr and "refusing to load __builtin__.eval" in result.stderr
    assert not marker.exists()


def test_cifar10_python2_style_batches_read_the_same(tmp_path: Path, host) -> None:
    """The official files were written by Python 2: read through latin1, their keys are str."""
    from dmtcore.tasks.spec import DataRequest

    data = write_cifar(tmp_path / "data", per_class=3)
    folder = data / "cifar-10-batches-py"
    for path in folder.iterdir():
        with open(path, "rb") as stream:
            batch = pickle.load(stream)
        with open(path, "wb") as stream:
            pickle.dump({k.decode(): v for k, v in batch.items()}, stream, protocol=2)
    splits = host.kinds.task("cifar10.automobile-truck").datasets(DataRequest(data, None))
    assert len(splits.train) + len(splits.val) == 30 and len(splits.test) == 6


# -- CelebA --------------------------------------------------------------------------------------


def write_celeba(root: Path, n: int = 120, seed: int = 0) -> tuple[Path, np.ndarray]:
    """`root/celeba/` with aligned JPEGs (small, 36×44 for 178×218), `list_attr_celeba.txt`
    and `list_eval_partition.txt` in the official text layout; no identity, bounding-box or
    landmark files. Smiling faces are warm, the others cold; every other attribute is random.
    Returns the root and the ±1 attribute matrix."""
    from dmt_plugins.celeba import ATTRIBUTES

    folder = root / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    values = rng.choice([-1, 1], size=(n, len(ATTRIBUTES)))
    smiling = ATTRIBUTES.index("Smiling")
    values[:, smiling] = np.where(np.arange(n) % 3 == 0, 1, -1)  # a third smile
    rng.shuffle(values[:, smiling])
    labels = (values[:, smiling] == 1).astype(int)
    images = noisy_images(labels * 3, 6, (44, 36), seed)  # warm red vs cold cyan
    names = [f"{i + 1:06d}.jpg" for i in range(n)]
    for name, image in zip(names, images, strict=True):
        Image.fromarray(image).save(folder / "img_align_celeba" / name, quality=90)
    lines = [str(n), " ".join(ATTRIBUTES) + " "]
    lines += [f"{name} " + " ".join(f"{v:2d}" for v in row) for name, row in zip(names, values, strict=True)]  # fmt: skip
    (folder / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    partition = [0] * (n * 2 // 3) + [1] * (n // 6) + [2] * (n - n * 2 // 3 - n // 6)
    (folder / "list_eval_partition.txt").write_text(
        "".join(f"{name} {p}\n" for name, p in zip(names, partition, strict=True))
    )
    return root, values


def test_celeba_attribute_trains_with_the_official_partition(tmp_path: Path, run_cli, host) -> None:
    from dmtcore.tasks.data import dataset_labels
    from dmtcore.tasks.spec import DataRequest

    data, values = write_celeba(tmp_path / "data")
    assert not (data / "celeba" / "identity_CelebA.txt").exists()
    splits = host.kinds.task("celeba.smiling").datasets(DataRequest(data, None))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (80, 20, 20)
    image, label = splits.val[0]
    assert image.shape == (3, 64, 64) and image.dtype.is_floating_point
    smiling = values[:, 31] == 1
    assert dataset_labels(splits.train).tolist() == smiling[:80].astype(int).tolist()
    assert label == int(smiling[80])

    store = tmp_path / "store"
    result = json.loads(
        run_cli(
            "add-task", "celeba.smiling", "--store", store, "--data-dir", data, *QUICK,
            "--balance", "--json",
        ).stdout
    )  # fmt: skip
    assert result["metrics"]["balanced_accuracy"] >= 0.8, result
    status = json.loads(run_cli("status", "--store", store, "--json").stdout)
    assert status["input_spec"] == [3, 64, 64] and status["tasks"][0]["plugin"] == "celeba"


def test_celeba_preprocessing_families(tmp_path: Path, host) -> None:
    from dmtcore.tasks.names import InputSpec
    from dmtcore.tasks.spec import DataRequest

    data, _ = write_celeba(tmp_path / "data", n=12)
    request = DataRequest(data, InputSpec(1, 32, 32))
    gray, _ = host.kinds.task("celeba-gray.no-beard").datasets(request).train[0]
    equalised, _ = host.kinds.task("celeba-histeq.no-beard").datasets(request).train[0]
    assert gray.shape == equalised.shape == (1, 32, 32)
    # equalisation spreads the narrow range of a flat noisy face over the whole scale
    assert float(gray.max() - gray.min()) < 0.6 < float(equalised.max() - equalised.min())
    assert host.kinds.task("celeba.5-o-clock-shadow").input_shape == (3, 64, 64)
    assert host.kinds.task("celeba-histeq.smiling").input_shape == (1, 64, 64)
    assert len([t for t in host.kinds.tasks if t.startswith("celeba.")]) == 40


def test_celeba_missing_names_the_files_and_downloads_nothing(
    tmp_path: Path, run_cli, no_network
) -> None:
    data = tmp_path / "data"
    result = run_cli(
        "add-task", "celeba.bald", "--store", tmp_path / "s", "--data-dir", data, *QUICK,
        expect=7,
    )  # fmt: skip
    folder = data / "celeba"
    for expected in ("img_align_celeba", "list_attr_celeba.txt", "list_eval_partition.txt"):
        assert str(folder / expected) in result.stderr
    assert "mmlab.ie.cuhk.edu.hk" in result.stderr and "quota" in result.stderr
    assert no_network == [] and not data.exists()


def test_celeba_partly_unzipped_images_are_named(tmp_path: Path, host) -> None:
    from dmtcore.errors import DataError
    from dmtcore.tasks.spec import DataRequest

    data, _ = write_celeba(tmp_path / "data", n=12)
    (data / "celeba" / "img_align_celeba" / "000003.jpg").unlink()
    with pytest.raises(DataError, match=r"1 of the 8 train images .* e\.g\. 000003\.jpg"):
        host.kinds.task("celeba.young").datasets(DataRequest(data, None))


# -- image folders -------------------------------------------------------------------------------


def write_folder(root: Path, classes: dict[str, int], splits: dict[str, int] | None = None) -> Path:
    """PNG images in ImageFolder layout: `root/<class>/` (`per class` images each), or
    `root/<split>/<class>/` when `splits` gives images per class per split."""
    layout = {"": 0} if splits is None else splits
    for split, count in layout.items():
        for index, (name, per_class) in enumerate(classes.items()):
            n = count or per_class
            folder = root / split / name if split else root / name
            folder.mkdir(parents=True)
            images = noisy_images(np.full(n, index), len(classes), (20, 24), index + 10 * len(split))  # fmt: skip
            for i, image in enumerate(images):
                Image.fromarray(image).save(folder / f"{i:03d}.png")
    return root


def stored_task(store: Path, index: int = 0) -> dict:
    from dmtcore.store.directory import Store

    return Store.open(store).manifest()["tasks"][index]


def test_image_folder_task_is_made_evaluated_and_kept(tmp_path: Path, run_cli) -> None:
    folder = write_folder(tmp_path / "pets", {"cats": 30, "dogs": 30})
    store = tmp_path / "store"
    added = json.loads(
        run_cli("add-task", "my-pets", "--from-folder", folder, "--store", store, *QUICK,
                "--json").stdout
    )  # fmt: skip
    assert added["metrics"]["balanced_accuracy"] >= 0.8, added
    status = json.loads(run_cli("status", "--store", store, "--json").stdout)
    assert status["tasks"][0]["plugin"] == "imagefolder"
    stored = stored_task(store)
    assert stored["output"] == {"kind": "binary", "size": 2}
    assert stored["class_names"] == ["cats", "dogs"]
    assert stored["recipe"] == {
        "kind": "imagefolder",
        "folder": str(folder.resolve()),
        "classes": ["cats", "dogs"],
        "split": "seeded",
        "val_fraction": 0.2,
        "split_seed": 20170821,
    }
    # a new host, no --from-folder: the task comes back from its recipe
    evaluated = json.loads(run_cli("eval", "--store", store, "--json").stdout)["metrics"]
    assert evaluated["my-pets"]["balanced_accuracy"] == added["metrics"]["balanced_accuracy"]
    # remove-task rebuilds it too (to measure it before and after the cut)
    run_cli("add-task", "digits.even", "--store", store, "--epochs", "1", "--no-tracking")
    removed = json.loads(
        run_cli("remove-task", "digits.even", "--store", store, "--epochs", "1", "--no-tracking",
                "--json").stdout
    )  # fmt: skip
    assert removed["report"]["my-pets"]["before"] == added["metrics"]["balanced_accuracy"]
    # the folder is gone: the message names it
    shutil.move(folder, tmp_path / "elsewhere")
    gone = run_cli("eval", "--store", store, expect=7)
    assert str(folder.resolve()) in gone.stderr and "does not exist" in gone.stderr


def test_image_folder_with_its_own_split_is_multiclass(tmp_path: Path, run_cli) -> None:
    folder = write_folder(
        tmp_path / "colours", {"red": 0, "green": 0, "blue": 0}, {"train": 24, "val": 6}
    )
    store = tmp_path / "store"
    added = json.loads(
        run_cli("add-task", "colours", "--from-folder", folder, "--store", store, *QUICK,
                "--json").stdout
    )  # fmt: skip
    assert added["metrics"]["accuracy"] >= 0.8, added
    stored = stored_task(store)
    assert stored["output"] == {"kind": "multiclass", "size": 3}
    assert stored["class_names"] == ["blue", "green", "red"]  # sorted folder names
    assert stored["recipe"]["split"] == "folders"
    evaluated = json.loads(run_cli("eval", "--store", store, "--json").stdout)["metrics"]
    assert evaluated["colours"]["accuracy"] == added["metrics"]["accuracy"]


def test_image_folder_whose_classes_changed_is_refused(tmp_path: Path, host) -> None:
    from dmt_plugins.imagefolder import build
    from dmtcore.errors import DataError
    from dmtcore.operations import task_from_recipe

    folder = write_folder(tmp_path / "f", {"a": 3, "b": 3})
    spec, plugin = task_from_recipe(host, "t", {"kind": "imagefolder", "folder": str(folder)})
    assert plugin == "imagefolder" and spec.recipe["classes"] == ["a", "b"]
    assert task_from_recipe(host, "t", {"kind": "something-else"}) is None
    write_folder(folder, {"c": 3})
    with pytest.raises(DataError, match=r"now has the classes \['a', 'b', 'c'\], but the task"):
        build("t", spec.recipe)


def test_train_takes_folders_for_several_tasks(tmp_path: Path, run_cli) -> None:
    first = write_folder(tmp_path / "a", {"x": 10, "y": 10})
    second = write_folder(tmp_path / "b", {"p": 10, "q": 10, "r": 10})
    store = tmp_path / "store"
    run_cli("train", "first", "second", "--from-folder", f"first={first}",
            "--from-folder", f"second={second}", "--store", store, "--epochs", "1",
            "--no-tracking")  # fmt: skip
    status = json.loads(run_cli("status", "--store", store, "--json").stdout)
    assert [(t["name"], t["output"]["size"]) for t in status["tasks"]] == [
        ("first", 2),
        ("second", 3),
    ]
    bad = run_cli("train", "first", "--from-folder", "other=/x", "--store", store, expect=11)
    assert "TASK=DIR" in bad.stderr and "'other=/x'" in bad.stderr


@pytest.mark.parametrize(
    ("case", "code", "message"),
    [
        ("missing", 7, r"image folder '.*missing' does not exist; give a directory"),
        ("file", 7, r"image folder '.*file.png' is not a directory"),
        ("no-classes", 7, r"has 0 class folder\(s\) \[\]; a task needs at least 2"),
        ("one-class", 7, r"has 1 class folder\(s\) \['only'\]; a task needs at least 2"),
        ("no-images", 7, r"class folder '.*empty' has no images; expected files ending in .png"),
        ("val-class", 7, r"has a class folder 'zebra' that the training images do not have"),
        ("taken", 4, r"task 'digits.even' is already registered by plugin 'digits'"),
        ("bad-name", 11, r"invalid task name 'My Task'"),
        ("blocked", 9, r"the built-in plugin 'imagefolder' is not loaded"),
    ],
)
def test_bad_folder_inputs_leave_the_store_alone(
    case: str, code: int, message: str, tmp_path: Path, run_cli
) -> None:
    import re

    store = tmp_path / "store"
    run_cli("init", "--store", store, "--input", "3x16x16")

    good = write_folder(tmp_path / "good", {"a": 3, "b": 3})
    folder, name, extra = good, "new-task", []
    if case == "missing":
        folder = tmp_path / "missing"
    elif case == "file":
        folder = good / "a" / "000.png"
        folder = folder.rename(tmp_path / "file.png")
    elif case == "no-classes":
        folder = tmp_path / "flat"
        folder.mkdir()
        Image.new("RGB", (8, 8)).save(folder / "loose.png")
    elif case == "one-class":
        folder = write_folder(tmp_path / "one", {"only": 3})
    elif case == "no-images":
        (good / "empty").mkdir()
        (good / "empty" / "notes.txt").write_text("not an image")
    elif case == "val-class":
        folder = write_folder(tmp_path / "split", {"a": 0, "b": 0}, {"train": 2, "val": 1})
        write_folder(folder / "val", {"zebra": 1})
    elif case == "taken":
        name = "digits.even"
    elif case == "bad-name":
        name = "My Task"
    elif case == "blocked":
        extra = ["-p", "no:imagefolder"]
    before = fingerprint(store)
    result = run_cli(
        "add-task", name, "--from-folder", folder, "--store", store, *QUICK, *extra,
        expect=code,
    )  # fmt: skip
    assert re.search(message, result.stderr), result.stderr
    assert "Traceback" not in result.stderr
    assert fingerprint(store) == before
    # without a store, none is created
    run_cli("add-task", name, "--from-folder", folder, "--store", tmp_path / "new", *extra,
            expect=code)  # fmt: skip
    assert not (tmp_path / "new").exists()


def test_listing_tasks_reads_no_data_and_imports_no_torchvision() -> None:
    code = (
        "import sys\n"
        "from dmtcore.hooks.host import create_plugin_host\n"
        "host = create_plugin_host()\n"
        "assert 'cifar10.cat-dog' in host.kinds.tasks and 'celeba.smiling' in host.kinds.tasks\n"
        "assert 'torchvision' not in sys.modules, 'torchvision imported'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd="/", capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


# -- the examples --------------------------------------------------------------------------------


def run_example(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_examples_without_data_say_what_is_missing(tmp_path: Path) -> None:
    for name, expected in (
        ("cifar10_table5.py", "cifar-10-batches-py/data_batch_1"),
        ("celeba_table3.py", "celeba/list_attr_celeba.txt"),
    ):
        result = run_example(name, "--data-dir", "nowhere", "--quick", cwd=tmp_path)
        assert result.returncode == 7, result.stderr
        assert str(tmp_path / "nowhere" / expected) in result.stderr
        assert "Traceback" not in result.stderr and result.stdout == ""


@pytest.mark.slow
def test_cifar10_table5_example_prints_the_papers_layout(tmp_path: Path) -> None:
    write_cifar(tmp_path / "data", per_class=10)
    result = run_example(
        "cifar10_table5.py", "--data-dir", "data", "--quick", "--batch-size", "8",
        "--json", "out.json", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    rows = [line.split()[0] for line in lines[4:]]
    assert rows == [
        "cat.dog",
        "deer.horse",
        "bird.frog",
        "airplane.ship",
        "automobile.truck",
        "mean",
    ]
    assert "73.8 | " in lines[4] and "91.2 | " in lines[7]  # the paper's figures beside ours
    report = json.loads((tmp_path / "out.json").read_text())
    assert report["paper"]["cifar10.cat-dog"] == {"ST": 73.8, "MT": 73.9, "DMT": 73.9}
    for method in ("ST", "MT", "DMT"):
        scores = report["results"][method]
        assert sorted(scores) == sorted(report["paper"]) and all(
            0 <= v <= 1 for v in scores.values()
        )
    assert max(report["results"]["DMT"].values()) > 0.5  # colour-coded pairs: learnable


@pytest.mark.slow
def test_celeba_table3_example_prints_the_papers_layout(tmp_path: Path) -> None:
    write_celeba(tmp_path / "data", n=48)
    result = run_example(
        "celeba_table3.py", "--data-dir", "data", "--quick", "--batch-size", "8",
        "--json", "out.json", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Trained on original unbalanced dataset" in out
    assert "Trained after resampling minority samples" in out
    assert "0.02 | " in out and "56.4 | " in out and "96.2 | " in out
    report = json.loads((tmp_path / "out.json").read_text())
    assert set(report["results"]) == {"original", "resampled"}
    tasks = {"celeba-histeq.bald", "celeba-histeq.wearing-hat", "celeba-histeq.mustache",
             "celeba-histeq.goatee"}  # fmt: skip
    for regime in report["results"].values():
        for scores in regime.values():
            assert set(scores) == tasks and all(0 <= v <= 1 for v in scores.values())
    assert report["paper"]["celeba-histeq.bald"]["original"] == {
        "ST": 56.4,
        "MT": 79.4,
        "DMT": 80.1,
    }
