"""`cifar10-pairs`: the DMT paper's five binary CIFAR-10 tasks (Fang et al. 2017, Table 5).

CIFAR-10 is split into five tasks of two classes each: airplane.ship, automobile.truck,
bird.frog, cat.dog and deer.horse. Each task sees only the images of its two classes (10,000
training and 2,000 test images), label 0 for the first class and 1 for the second.

Protocol (DMT §4): the original training set, no augmentation, no pre-training; results on
the test set. The engine needs a validation split to pick the best epoch, so a fixed 10% of
each task's training images (stratified, seeded independently of the training seed) is held
out as `val`; `test` is the CIFAR test batch (`dmt eval --split test`).

Data: `<data-dir>/cifar-10-batches-py/` as unpacked from the official python archive
(https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz); `--download` fetches it there.
Nothing touches the disk or imports torchvision until a task's data is asked for.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from dmtcore import DataRequest, TaskData, TaskSpec, hookimpl
from dmtcore.errors import DataError

NATIVE_SHAPE = (3, 32, 32)
PAIRS = (
    ("airplane", "ship"),
    ("automobile", "truck"),
    ("bird", "frog"),
    ("cat", "dog"),
    ("deer", "horse"),
)
VAL_FRACTION = 0.1
SPLIT_SEED = 20170820  # fixed: the held-out images must not move with the training seed
BASE_FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
META_FILE = "batches.meta"
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"

# What a CIFAR batch may contain: dicts, lists, bytes, and numpy arrays (the official files
# were written by Python 2's cPickle, whose arrays rebuild through these functions).
SAFE_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
}


def expected_files(root: Path) -> list[Path]:
    folder = Path(root) / BASE_FOLDER
    return [folder / name for name in (*TRAIN_FILES, *TEST_FILES, META_FILE)]


def data_status(data_dir: Path) -> str:
    """For `dmt tasks`: every file of the python version is present (not read)."""
    present = all(p.is_file() for p in expected_files(Path(data_dir).expanduser()))
    return "on disk" if present else "needs --download"


def missing_message(root: Path, missing: list[Path]) -> str:
    """Which files are expected where, which are missing, and how to get them."""
    folder = Path(root) / BASE_FOLDER
    listing = ", ".join(p.name for p in expected_files(root))
    absent = f"; missing: {', '.join(str(p) for p in missing)}" if missing else ""
    return (
        f"CIFAR-10 is not in --data-dir {str(root)!r}: expected {listing} in {str(folder)!r}"
        f"{absent}. Get it with --download (fetches {URL}, "
        f"163 MB, and unpacks it into {str(root)!r}), or download that archive yourself and "
        f"unpack it there ('tar xzf cifar-10-python.tar.gz -C {root}')."
    )


def _safe_unpickle(path: Path) -> Any:
    """Read one pickled batch, refusing anything but plain containers and numpy arrays: a
    pickle from a data directory could otherwise run arbitrary code."""
    import pickle

    class Restricted(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if (module, name) not in SAFE_GLOBALS:
                raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
            if module.startswith("numpy.core."):  # numpy 2 moved these; same functions
                module = "numpy._core." + module.removeprefix("numpy.core.")
            return super().find_class(module, name)

    try:
        with open(path, "rb") as stream:
            data = Restricted(stream, encoding="latin1").load()
    except Exception as exc:
        raise DataError(
            f"CIFAR-10 file {str(path)!r} is not a CIFAR python batch: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(data, dict):
        raise DataError(f"CIFAR-10 file {str(path)!r} holds {type(data).__name__}, not a dict")
    # Python 2 wrote str keys (read as str through latin1); a batch written by Python 3
    # with bytes keys, as `pickle.load(f, encoding="bytes")` shows them, reads the same.
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in data.items()}


@lru_cache(maxsize=1)
def dataset_class() -> type:
    """torchvision's CIFAR10, reading the files it expects but verifying only that they exist.

    torchvision checks every file's md5 against the official release, which rejects anything
    but those exact bytes (the small files our tests write in the same format, a re-packed
    copy); and it unpickles with the plain unpickler. We keep its layout, URL and download,
    check that the files are there, and read them with the restricted unpickler above."""
    import numpy as np
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.vision import VisionDataset

    class CheckedCIFAR10(CIFAR10):
        def __init__(self, root: str | Path, train: bool = True, download: bool = False) -> None:
            VisionDataset.__init__(self, root)
            self.train = train
            if download and not self._check_integrity():
                self.download()
            missing = [p for p in expected_files(Path(root)) if not p.is_file()]
            if missing:
                raise DataError(missing_message(Path(root), missing))
            images, labels = [], []
            for name in TRAIN_FILES if train else TEST_FILES:
                path = Path(root) / BASE_FOLDER / name
                batch = _safe_unpickle(path)
                data, batch_labels = batch.get("data"), batch.get("labels")
                if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3072:
                    raise DataError(
                        f"CIFAR-10 file {str(path)!r}: 'data' must be a uint8 array of N×3072 "
                        f"(3 channels × 32 × 32), got {getattr(data, 'shape', type(data).__name__)}"
                    )
                if batch_labels is None or len(batch_labels) != len(data):
                    raise DataError(
                        f"CIFAR-10 file {str(path)!r}: 'labels' must list one class per image "
                        f"({len(data)} images)"
                    )
                images.append(data.astype(np.uint8, copy=False))
                labels.extend(int(label) for label in batch_labels)
            self.data = np.vstack(images).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
            self.targets = labels
            self._load_meta()

        def _check_integrity(self) -> bool:
            return all(p.is_file() for p in expected_files(Path(self.root)))

        def _load_meta(self) -> None:
            path = Path(self.root) / BASE_FOLDER / META_FILE
            names = _safe_unpickle(path).get("label_names")
            if not isinstance(names, list) or len(names) != 10:
                raise DataError(
                    f"CIFAR-10 file {str(path)!r}: 'label_names' must list the 10 class names"
                )
            self.classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
            self.class_to_idx = {name: i for i, name in enumerate(self.classes)}

    return CheckedCIFAR10


@lru_cache(maxsize=2)
def load(root: str, train: bool, download: bool) -> tuple[Any, Any, list[str]]:
    """All images of one CIFAR-10 part (N×32×32×3 uint8), their labels and the class names,
    read once per process and shared by the five tasks."""
    import numpy as np

    try:
        dataset = dataset_class()(root, train=train, download=download)
    except DataError:
        raise
    except Exception as exc:  # the download failed
        raise DataError(
            f"could not get CIFAR-10 into {root!r}: {type(exc).__name__}: {exc}. "
            f"{missing_message(Path(root), [])}"
        ) from exc
    return dataset.data, np.asarray(dataset.targets, dtype=np.int64), dataset.classes


def held_out(labels: Any, fraction: float, seed: int) -> Any:
    """A boolean mask picking `fraction` of every class (at least one when it has two or
    more images), the same for every run."""
    import numpy as np

    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), dtype=bool)
    for value in np.unique(labels):
        members = np.flatnonzero(labels == value)
        count = round(len(members) * fraction) or (1 if len(members) > 1 else 0)
        mask[rng.permutation(members)[:count]] = True
    return mask


def _tensors(images: Any, labels: Any, request: DataRequest) -> Any:
    """Float C×H×W images in [0, 1], resized once to the store's size (not per batch)."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import TensorDataset

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    spec = request.input_spec
    if spec is not None and (spec.height, spec.width) != tuple(x.shape[-2:]):
        x = F.interpolate(x, size=(spec.height, spec.width), mode="bilinear", antialias=True)
    return TensorDataset(x.contiguous(), torch.from_numpy(labels))


def _factory(pair: tuple[str, str]):
    def datasets(request: DataRequest) -> TaskData:
        import numpy as np

        root = os.path.abspath(Path(request.data_dir).expanduser())
        splits = {}
        for part, train in (("train", True), ("test", False)):
            images, labels, classes = load(root, train, request.download)
            missing = [c for c in pair if c not in classes]
            if missing:
                raise DataError(
                    f"CIFAR-10 in {root!r} has no class {missing[0]!r} in {META_FILE}; "
                    f"its classes: {', '.join(classes)}"
                )
            first, second = (classes.index(c) for c in pair)
            keep = np.flatnonzero((labels == first) | (labels == second))
            splits[part] = (images[keep], (labels[keep] == second).astype(np.int64))
        images, labels = splits["train"]
        val = held_out(labels, VAL_FRACTION, SPLIT_SEED)
        return TaskData(
            train=_tensors(images[~val], labels[~val], request),
            val=_tensors(images[val], labels[val], request),
            test=_tensors(*splits["test"], request),
            deterministic=True,
        )

    return datasets


def task_name(pair: tuple[str, str]) -> str:
    return f"cifar10.{pair[0]}-{pair[1]}"


@hookimpl
def dmt_register_tasks(kinds: Any) -> None:
    for pair in PAIRS:
        kinds.add_task(
            TaskSpec(
                name=task_name(pair),
                description=f"CIFAR-10 {pair[0]} (0) or {pair[1]} (1), DMT Table 5",
                input_shape=NATIVE_SHAPE,
                output="binary",
                class_names=pair,
                datasets=_factory(pair),
                data_status=data_status,
            )
        )
