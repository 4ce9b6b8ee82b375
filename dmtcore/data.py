"""Getting a task's data into the model: loading splits, adapting images to the store's input
spec, batching, and checking the first batch so that a wrong dataset fails with a clear message
before any training."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    RandomSampler,
    SequentialSampler,
    TensorDataset,
)

from dmtcore.errors import DataError, DmtError, InvalidValueError
from dmtcore.names import InputSpec
from dmtcore.taskspec import DataRequest, TaskData, TaskSpec

LUMINANCE = (0.299, 0.587, 0.114)


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present; 'cuda' without a GPU is an error, not a silent fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InvalidValueError(
                f"device {name!r} requested but no CUDA GPU is available; use --device cpu"
            )
        return torch.device(name)
    raise InvalidValueError(f"invalid device {name!r}; valid: auto, cpu, cuda, cuda:N")


def load_splits(spec: TaskSpec, request: DataRequest) -> TaskData:
    """Call the task's dataset factory; anything it raises is reported as the task's data error."""
    try:
        data = spec.datasets(request)
    except DmtError:
        raise
    except Exception as exc:
        raise DataError(
            f"task {spec.name!r}: its dataset factory failed: {type(exc).__name__}: {exc}"
        ) from exc
    if isinstance(data, tuple) and len(data) in (2, 3):
        data = TaskData(*data)
    if not isinstance(data, TaskData):
        raise DataError(
            f"task {spec.name!r}: its dataset factory returned {type(data).__name__}; "
            "expected TaskData(train, val) or a (train, val) tuple"
        )
    for split in ("train", "val"):
        dataset = getattr(data, split)
        try:
            size = len(dataset)
        except TypeError as exc:
            raise DataError(f"task {spec.name!r}: the {split} split has no length") from exc
        if size == 0:
            raise DataError(f"task {spec.name!r}: the {split} split is empty")
        if split == "train" and size < 2:
            raise DataError(
                f"task {spec.name!r}: the train split has {size} sample; at least 2 are needed"
            )
    return data


def adapt_images(images: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """Bring a batch (N×C×H×W or N×H×W) to the store's channels and size."""
    if images.dim() == 3:
        images = images.unsqueeze(1)
    if images.dim() != 4:
        raise DataError(f"images must be N×C×H×W, got a batch of shape {tuple(images.shape)}")
    images = images.float()
    channels = images.shape[1]
    if channels != spec.channels:
        if channels == 1:
            images = images.expand(-1, spec.channels, -1, -1)
        elif channels == 3 and spec.channels == 1:
            weights = images.new_tensor(LUMINANCE).view(1, 3, 1, 1)
            images = (images * weights).sum(1, keepdim=True)
        else:
            raise DataError(
                f"images have {channels} channels; the store takes {spec.channels} "
                "(1 and 3 channels are converted, other counts must match)"
            )
    if images.shape[-2:] != (spec.height, spec.width):
        images = F.interpolate(
            images, size=(spec.height, spec.width), mode="bilinear", antialias=True
        )
    return images.contiguous()


def labels_for(spec: TaskSpec, labels: Any) -> torch.Tensor:
    labels = torch.as_tensor(labels)
    if spec.output in ("binary", "multiclass"):
        return labels.long().view(-1)
    labels = labels.float()
    return labels.view(-1, 1) if labels.dim() == 1 else labels


def check_first_batch(spec: TaskSpec, images: torch.Tensor, raw_labels: Any) -> None:
    """Fail early, naming the task and the bad values, if a batch cannot be what the task says."""
    if not torch.is_tensor(images) or images.dim() not in (3, 4):
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise DataError(
            f"task {spec.name!r}: images must be tensors of C×H×W, got a batch of {shape}"
        )
    if not torch.isfinite(images).all():
        raise DataError(f"task {spec.name!r}: the first batch has NaN or infinite pixel values")
    labels = torch.as_tensor(raw_labels)
    n = images.shape[0]
    if labels.shape[0] != n:
        raise DataError(f"task {spec.name!r}: {n} images but {labels.shape[0]} labels in a batch")
    if spec.output in ("binary", "multiclass"):
        if labels.dim() != 1 or (
            labels.is_floating_point() and not torch.equal(labels, labels.round())
        ):
            raise DataError(
                f"task {spec.name!r}: {spec.output} labels must be one class index per image, "
                f"got shape {tuple(labels.shape)} dtype {labels.dtype}"
            )
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= spec.num_outputs:
            raise DataError(
                f"task {spec.name!r}: labels in the first batch range {low}..{high}, but the task has "
                f"{spec.num_outputs} outputs (valid labels: 0..{spec.num_outputs - 1})"
            )
    else:
        width = 1 if labels.dim() == 1 else labels.shape[1]
        if labels.dim() > 2 or width != spec.num_outputs:
            raise DataError(
                f"task {spec.name!r}: {spec.output} labels must have shape (N, {spec.num_outputs}), "
                f"got {tuple(labels.shape)}"
            )
        if not torch.isfinite(labels.float()).all():
            raise DataError(f"task {spec.name!r}: the first batch has NaN or infinite labels")
        if spec.output == "multilabel" and not ((labels == 0) | (labels == 1)).all():
            raise DataError(f"task {spec.name!r}: multilabel targets must be 0 or 1")


@dataclass
class Batches:
    """One split of one task as adapted batches on a device; iterable once per epoch."""

    spec: TaskSpec
    dataset: Dataset
    input_spec: InputSpec
    batch_size: int
    shuffle: bool
    device: torch.device
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        # Training drops a last partial batch: a batch of one breaks BatchNorm, and a tiny
        # batch gives a noisy step. A split smaller than one batch is kept whole.
        drop_last = self.shuffle and len(self.dataset) > self.batch_size
        if isinstance(self.dataset, TensorDataset):
            # Index a whole batch at once instead of collating single samples.
            sampler = (
                RandomSampler(self.dataset, generator=self.generator)
                if self.shuffle
                else SequentialSampler(self.dataset)
            )
            batches = BatchSampler(sampler, self.batch_size, drop_last)
            self.loader = DataLoader(self.dataset, batch_size=None, sampler=batches)
        else:
            self.loader = DataLoader(
                self.dataset,
                batch_size=self.batch_size,
                shuffle=self.shuffle,
                generator=self.generator,
                drop_last=drop_last,
                pin_memory=self.device.type == "cuda",
            )

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        non_blocking = self.device.type == "cuda"
        for images, labels in self.loader:
            images = adapt_images(torch.as_tensor(images), self.input_spec)
            yield (
                images.to(self.device, non_blocking=non_blocking),
                labels_for(self.spec, labels).to(self.device, non_blocking=non_blocking),
            )

    def validate(self) -> None:
        """Check the first batch as the plugin delivers it, before adaptation."""
        try:
            images, labels = next(iter(self.loader))
        except DmtError:
            raise
        except Exception as exc:
            raise DataError(
                f"task {self.spec.name!r}: reading the first batch failed: {type(exc).__name__}: {exc}"
            ) from exc
        check_first_batch(self.spec, torch.as_tensor(images), labels)
        adapt_images(torch.as_tensor(images), self.input_spec)
