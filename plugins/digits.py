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
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]
    train_x, val_x, train_y, val_y = train_test_split(
        images,
        digits.target,
        test_size=VAL_FRACTION,
        random_state=SPLIT_SEED,
        stratify=digits.target,
    )
    return {"train": (train_x, train_y), "val": (val_x, val_y)}


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
def dmt_register_tasks(registry: Any) -> None:
    registry.add_task(
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
        registry.add_task(
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
