"""`digits`: scikit-learn's bundled handwritten digits (1,797 real 8×8 images, offline).

Related tasks on the same images, the CelebA-attributes situation of the DMT paper at a size
that trains in seconds on a CPU: the 10-way class and binary attributes of the digit.
The train/val split is fixed (stratified, seeded) so every task sees the same images.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from dmtcore import DataRequest, TaskData, TaskSpec, hookimpl

VAL_FRACTION = 0.2
SPLIT_SEED = 20170819  # fixed: the split must not move with the user's training seed

ATTRIBUTES = {
    "even": ("the digit is even", {0, 2, 4, 6, 8}),
    "large": ("the digit is 5 or more", {5, 6, 7, 8, 9}),
    "prime": ("the digit is prime (2, 3, 5, 7)", {2, 3, 5, 7}),
    "loop": ("the digit has a closed loop (0, 4, 6, 8, 9)", {0, 4, 6, 8, 9}),
    "curved": (
        "the digit is drawn mostly with curves (0, 2, 3, 5, 6, 8, 9)",
        {0, 2, 3, 5, 6, 8, 9},
    ),
}


@lru_cache(maxsize=1)
def _splits() -> dict[str, tuple[Any, Any]]:
    """Images as float32 N×1×8×8 in [0, 1] and digit labels, split once per process."""
    import numpy as np

    images, labels = _load()
    train, val = _stratified_split(labels, VAL_FRACTION, SPLIT_SEED)
    images = (images / 16.0).astype(np.float32)[:, None]
    return {"train": (images[train], labels[train]), "val": (images[val], labels[val])}


def _load() -> tuple[Any, Any]:
    """scikit-learn's bundled digits (N×8×8 float64 in 0–16, int labels), read from its file
    as `load_digits` reads it, without importing scikit-learn: that import (scipy.stats,
    pandas) costs over a CPU second per command. Falls back to `load_digits` if the file has
    moved."""
    import gzip
    import importlib.util
    from pathlib import Path

    import numpy as np

    spec = importlib.util.find_spec("sklearn")
    folders = list(spec.submodule_search_locations or []) if spec else []
    path = next(
        (f for f in (Path(d) / "datasets" / "data" / "digits.csv.gz" for d in folders)), None
    )
    if path is None or not path.is_file():
        from sklearn.datasets import load_digits

        digits = load_digits()
        return digits.images, digits.target
    with gzip.open(path, "rt", encoding="utf-8") as file:
        data = np.loadtxt(file, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int, copy=False)


def _stratified_split(labels: Any, val_fraction: float, seed: int) -> tuple[Any, Any]:
    """Train and validation indices, each shuffled: scikit-learn's `train_test_split(...,
    test_size=val_fraction, random_state=seed, stratify=labels)` step for step (the same
    draws from the same RandomState), so the split is the one stores were trained on, without
    importing scikit-learn (tests compare the two)."""
    import math

    import numpy as np

    n_val = math.ceil(val_fraction * len(labels))
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    members = np.split(np.argsort(inverse, kind="stable"), np.cumsum(counts)[:-1])
    rng = np.random.RandomState(seed)
    n_train = _approximate_mode(counts, len(labels) - n_val, rng)
    n_test = _approximate_mode(counts - n_train, n_val, rng)
    train: list[Any] = []
    val: list[Any] = []
    for indices, a, b in zip(members, n_train, n_test, strict=True):
        shuffled = indices.take(rng.permutation(len(indices)), mode="clip")
        train.extend(shuffled[:a])
        val.extend(shuffled[a : a + b])
    return rng.permutation(train), rng.permutation(val)


def _approximate_mode(counts: Any, draws: int, rng: Any) -> Any:
    """How many of `draws` each class gets: scikit-learn's `utils.extmath._approximate_mode`
    (floors of the proportional shares, the rest to the largest remainders, ties broken by
    `rng`)."""
    import numpy as np

    continuous = counts / counts.sum() * draws
    floored = np.floor(continuous)
    need = int(draws - floored.sum())
    remainder = continuous - floored
    for value in np.sort(np.unique(remainder))[::-1] if need > 0 else []:
        (indices,) = np.where(remainder == value)
        add = min(len(indices), need)
        floored[rng.choice(indices, size=add, replace=False)] += 1
        need -= add
        if need == 0:
            break
    return floored.astype(int)


def _dataset(split: str, members: set[int] | None) -> Any:
    import torch
    from torch.utils.data import TensorDataset

    images, digits = _splits()[split]
    labels = torch.as_tensor(digits)
    if members is not None:
        labels = torch.isin(labels, torch.tensor(sorted(members))).long()
    return TensorDataset(torch.from_numpy(images), labels)


def _factory(members: set[int] | None):
    def datasets(request: DataRequest) -> TaskData:
        return TaskData(train=_dataset("train", members), val=_dataset("val", members))

    return datasets


@hookimpl
def dmt_register_tasks(kinds: Any) -> None:
    kinds.add_task(
        TaskSpec(
            name="digits.class",
            description="which digit, 0 to 9",
            input_shape=(1, 8, 8),
            output="multiclass",
            num_outputs=10,
            class_names=[str(d) for d in range(10)],
            datasets=_factory(None),
            data_status="built-in",
        )
    )
    for attribute, (description, members) in ATTRIBUTES.items():
        kinds.add_task(
            TaskSpec(
                name=f"digits.{attribute}",
                description=description,
                input_shape=(1, 8, 8),
                output="binary",
                class_names=("no", "yes"),
                datasets=_factory(members),
                data_status="built-in",
            )
        )
