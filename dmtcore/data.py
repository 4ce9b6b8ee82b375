"""Getting a task's data into the model: loading splits, adapting images to the store's input
spec, batching, and checking the first batch so that a wrong dataset fails with a clear message
before any training."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    Sampler,
    Subset,
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


def dataset_labels(dataset: Any) -> torch.Tensor:
    """Every label of a dataset without decoding its images where the dataset allows it
    (`TensorDataset`, a `targets` attribute as torchvision's datasets have, `Subset` of those);
    otherwise by reading every sample once."""
    if isinstance(dataset, TensorDataset):
        return torch.as_tensor(dataset.tensors[1])
    if isinstance(dataset, Subset):
        return dataset_labels(dataset.dataset)[torch.as_tensor(dataset.indices)]
    targets = getattr(dataset, "targets", None)
    if targets is not None:
        return torch.as_tensor(targets)
    return torch.as_tensor([dataset[i][1] for i in range(len(dataset))])


def balancing_weights(spec: TaskSpec, dataset: Any) -> torch.Tensor:
    """Per-sample drawing weights that make every class equally likely (DMT §4.1: the minority
    class is resampled so that a batch is not dominated by the majority)."""
    if spec.output not in ("binary", "multiclass"):
        raise InvalidValueError(
            f"task {spec.name!r}: --balance resamples classes, but the task is {spec.output}; "
            "it applies to binary and multiclass tasks only"
        )
    labels = labels_for(spec, dataset_labels(dataset))
    counts = torch.bincount(labels, minlength=spec.num_outputs).double()
    return torch.where(counts[labels] > 0, 1.0 / counts[labels], 0.0)


class EpochSampler(Sampler[int]):
    """The sample order of one epoch: in order, shuffled, or drawn with replacement by class
    weights (`--balance`), then optionally this process's share of it.

    Sharding follows `DistributedSampler`'s scheme (pad the order by repeating its start to a
    multiple of the world size, then take every world-th index from the rank), but applies to
    a weighted order as well; every rank draws the same order from the same seed, so the
    shards are disjoint and every rank takes the same number of steps."""

    def __init__(
        self,
        size: int,
        shuffle: bool,
        generator: torch.Generator | None = None,
        weights: torch.Tensor | None = None,
        shard: tuple[int, int] | None = None,
    ) -> None:
        self.size = size
        self.shuffle = shuffle
        self.generator = generator
        self.weights = weights
        self.shard = shard

    def __len__(self) -> int:
        return math.ceil(self.size / self.shard[1]) if self.shard else self.size

    def __iter__(self) -> Iterator[int]:
        if self.weights is not None:
            order = torch.multinomial(self.weights, self.size, True, generator=self.generator)
        elif self.shuffle:
            order = torch.randperm(self.size, generator=self.generator)
        else:
            order = torch.arange(self.size)
        if self.shard:
            rank, world = self.shard
            total = len(self) * world
            order = order.repeat(math.ceil(total / self.size))[:total][rank::world]
        return iter(order.tolist())


class _WithIndex(Dataset):
    """A dataset whose samples also carry their index, so batches can be matched to cached
    features whatever order the sampler chose."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, Any, int]:
        image, label = self.dataset[index]
        return image, label, index


# In-memory datasets up to this size move to the GPU once instead of once per batch.
DEVICE_RESIDENT_BYTES = 1 << 29


@dataclass
class Batches:
    """One split of one task as adapted batches on a device; iterable once per epoch.

    `balance` draws classes equally often; `shard` = (rank, world size) gives this process its
    share of every epoch under data-parallel training; `workers` decode samples in background
    processes (worth it for image files, not for in-memory tensors)."""

    spec: TaskSpec
    dataset: Dataset
    input_spec: InputSpec
    batch_size: int
    shuffle: bool
    device: torch.device
    generator: torch.Generator | None = None
    balance: bool = False
    shard: tuple[int, int] | None = None
    workers: int = 0
    declared_deterministic: bool | None = None  # TaskData.deterministic
    channels_last: bool = False  # NHWC images, for a model converted the same way

    def __post_init__(self) -> None:
        weights = balancing_weights(self.spec, self.dataset) if self.balance else None
        self.sampler = EpochSampler(
            len(self.dataset), self.shuffle, self.generator, weights, self.shard
        )
        # Training drops a last partial batch: a batch of one breaks BatchNorm, and a tiny
        # batch gives a noisy step. A split smaller than one batch is kept whole.
        drop_last = self.shuffle and len(self.sampler) > self.batch_size
        self.batch_sampler = BatchSampler(self.sampler, self.batch_size, drop_last)
        self.in_memory = isinstance(self.dataset, TensorDataset)
        if not self.in_memory:
            self.loader = DataLoader(
                _WithIndex(self.dataset),
                batch_sampler=self.batch_sampler,
                num_workers=self.workers,
                persistent_workers=self.workers > 0,
                pin_memory=self.device.type == "cuda",
            )

    @property
    def deterministic(self) -> bool:
        """Whether a sample reads the same every time (by default: in-memory tensors only)."""
        declared = self.declared_deterministic
        return self.in_memory if declared is None else declared

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, labels, _ in self.indexed():
            yield images, labels

    def indexed(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Adapted (images, labels, dataset indices) batches on the device."""
        if self.in_memory:
            tensors = self._resident_tensors()
            for indices in self.batch_sampler:
                index = torch.as_tensor(indices)
                images, labels = (t[index.to(t.device)] for t in tensors[:2])
                yield self._adapted(images, labels, index)
        else:
            for images, labels, index in self.loader:
                yield self._adapted(images, labels, index)

    def fetch(self, index: torch.Tensor) -> torch.Tensor:
        """The adapted images of the given samples, in that order, on the device."""
        if self.in_memory:
            images = self._resident_tensors()[0]
            images = images[index.to(images.device)]
        else:
            images = torch.stack([torch.as_tensor(self.dataset[int(i)][0]) for i in index])
        return self._formatted(adapt_images(images, self.input_spec).to(self.device))

    def _formatted(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    def _resident_tensors(self) -> tuple[torch.Tensor, ...]:
        """The dataset's tensors, moved once to a GPU when they fit comfortably."""
        tensors = self.dataset.tensors
        if self.device.type == "cuda":
            if not hasattr(self, "_on_device"):
                size = sum(t.numel() * t.element_size() for t in tensors)
                self._on_device = (
                    tuple(t.to(self.device) for t in tensors)
                    if size <= DEVICE_RESIDENT_BYTES
                    else tensors
                )
            tensors = self._on_device
        return tensors

    def _adapted(
        self, images: Any, labels: Any, index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        non_blocking = self.device.type == "cuda"
        images = adapt_images(torch.as_tensor(images), self.input_spec)
        return (
            self._formatted(images.to(self.device, non_blocking=non_blocking)),
            labels_for(self.spec, labels).to(self.device, non_blocking=non_blocking),
            index,
        )

    def validate(self) -> None:
        """Check the first batch as the plugin delivers it, before adaptation."""
        try:
            if self.in_memory:
                images, labels = self.dataset[torch.as_tensor(next(iter(self.batch_sampler)))]
            else:
                images, labels, _ = next(iter(self.loader))
        except DmtError:
            raise
        except Exception as exc:
            raise DataError(
                f"task {self.spec.name!r}: reading the first batch failed: {type(exc).__name__}: {exc}"
            ) from exc
        check_first_batch(self.spec, torch.as_tensor(images), labels)
        adapt_images(torch.as_tensor(images), self.input_spec)
