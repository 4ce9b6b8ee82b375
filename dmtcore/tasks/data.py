"""Getting a task's data into the model: loading splits, adapting images to the store's input
spec, batching, and checking every batch, so that a wrong dataset fails with a clear message
naming the task and its plugin: before any training when the first batch is wrong, and
before anything is committed when a later one is."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from contextlib import contextmanager
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

from dmtcore.errors import DataError, DmtError, InvalidValueError, first_line
from dmtcore.runtime import interrupts
from dmtcore.tasks.dense_labels import check_dense_labels, check_label_size, dense_targets
from dmtcore.tasks.names import InputSpec
from dmtcore.tasks.region_labels import (
    check_region_labels,
    collate_regions,
    region_targets,
    targets_to,
)
from dmtcore.tasks.spec import DataRequest, TaskData, TaskSpec

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


def data_origin(spec: TaskSpec, plugin: str | None) -> str:
    """How messages name where data came from: the task and, when known, its plugin."""
    return f"task {spec.name!r}" + (f" (plugin {plugin!r})" if plugin else "")


def _plugin_failure(exc: BaseException) -> str:
    """One line saying what plugin code raised. An exception in a DataLoader worker arrives
    re-raised as 'Caught X in DataLoader worker process N.' followed by the worker's whole
    traceback: the original 'X: message' is the line after its last (indented) frame line."""
    text = str(exc).strip()
    if "\nOriginal Traceback" in text:
        lines = text.splitlines()
        frames = [i for i, line in enumerate(lines) if line.startswith(" ")]
        header = frames[-1] + 1 if frames and frames[-1] + 1 < len(lines) else -1
        return f"{lines[header].strip()[:300]} (in a data worker process)"
    return f"{type(exc).__name__}: {first_line(exc)}"


@contextmanager
def plugin_code(origin: str, action: str) -> Iterator[None]:
    """A call into a task plugin's data code (its factory, a dataset's `__len__` or
    `__getitem__`, the collation of what they return): whatever it raises is the task's bad
    data, reported as a DataError naming the task, the plugin and what was being read.
    KeyboardInterrupt is no Exception and passes; so do dmt's own errors, unless they come
    from a worker process (re-raised there with its traceback in the message). A failure
    after Ctrl-C or SIGTERM (a worker process stopped by the same signal) is the interruption."""
    try:
        yield
    except DmtError as exc:
        if "\nOriginal Traceback" not in str(exc):
            raise
        interrupts.check()
        raise DataError(f"{origin}: {action} failed: {_plugin_failure(exc)}") from exc
    except Exception as exc:
        interrupts.check()
        raise DataError(f"{origin}: {action} failed: {_plugin_failure(exc)}") from exc


def load_splits(spec: TaskSpec, request: DataRequest, plugin: str | None = None) -> TaskData:
    """Call the task's dataset factory; anything it raises is reported as the task's data error."""
    origin = data_origin(spec, plugin)
    with plugin_code(origin, "its dataset factory"):
        data = spec.datasets(request)
    if isinstance(data, tuple) and len(data) in (2, 3):
        data = TaskData(*data)
    if not isinstance(data, TaskData):
        raise DataError(
            f"{origin}: its dataset factory returned {type(data).__name__}; "
            "expected TaskData(train, val) or a (train, val) tuple"
        )
    for split in ("train", "val"):
        dataset = getattr(data, split)
        if not hasattr(dataset, "__len__"):
            raise DataError(f"{origin}: the {split} split has no length")
        with plugin_code(origin, f"reading the size of the {split} split"):
            size = len(dataset)
        if size == 0:
            raise DataError(f"{origin}: the {split} split is empty")
        if split == "train" and size < 2:
            raise DataError(f"{origin}: the train split has {size} sample; at least 2 are needed")
    return data


def adapt_images(images: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """Bring a batch (N×C×H×W, or N×H×W from `dmt predict`'s arrays) to the store's channels
    (1 → 3 by repeating, 3 → 1 by luminance) and size (bilinear, antialiased). Plugin data
    reaches it checked: float C×H×W in [0, 1] with the task's or the store's channels."""
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


def labels_for(spec: TaskSpec, labels: Any, input_spec: InputSpec | None = None) -> torch.Tensor:
    """Checked labels as the task's loss takes them (dense maps at the store's size)."""
    labels = torch.as_tensor(labels)
    if spec.dense:
        size = (input_spec.height, input_spec.width) if input_spec else labels.shape[-2:]
        return dense_targets(spec, labels, tuple(size))
    if spec.output in ("binary", "multiclass"):
        return labels.long().view(-1)
    labels = labels.float()
    return labels.view(-1, 1) if labels.dim() == 1 else labels


# Pixels may stray this far outside [0, 1] (rounding in a plugin's own resizing or colour
# conversion); 0..255 pixels or normalised ones (about -2..2) are far outside it.
PIXEL_SLACK = 1e-3
CLASS_LABEL_DTYPES = "an integer dtype (torch.long; bool for binary)"


def valid_channels(spec: TaskSpec, input_spec: InputSpec | None) -> tuple[int, ...]:
    """The channel counts a task's images may have: its declared `input_shape` channels, or
    the store's, which its factory is told in `request.input_spec` and may deliver instead."""
    counts = {spec.input_shape[0]} | ({input_spec.channels} if input_spec else set())
    return tuple(sorted(counts))


def check_images(
    origin: str,
    images: Any,
    which: str,
    shape: tuple[int, ...] | None = None,
    channels: tuple[int, ...] = (),
) -> tuple[int, ...]:
    """Fail, naming where, unless `images` is a batch of float C×H×W images in [0, 1] with
    one of `channels` (when given) and the given per-image shape; returns the per-image shape.
    An H×W image, integer pixels or 0..255 floats would train silently on other values than
    `dmt predict` feeds the model (it scales files to [0, 1]), so they are refused here.
    One min/max pass over the pixels (cheap beside a forward pass: see `Batches`)."""
    if not torch.is_tensor(images) or images.dim() != 4:
        got = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        hw = torch.is_tensor(images) and images.dim() == 3
        hint = " (give each image its channel dimension: image[None])" if hw else ""
        raise DataError(
            f"{origin}: images must be tensors of C×H×W each (a batch of N×C×H×W), "
            f"got {which} of {got}{hint}"
        )
    if channels and images.shape[1] not in channels:
        raise DataError(
            f"{origin}: {which} has images of {images.shape[1]} channels; valid: "
            f"{' or '.join(map(str, channels))} (the task's input_shape, or the store's input "
            "spec given in request.input_spec)"
        )
    if shape is not None and tuple(images.shape[1:]) != shape:
        raise DataError(
            f"{origin}: {which} has images of shape {tuple(images.shape[1:])}, the first batch "
            f"{shape}; all images of a split must have one shape"
        )
    if not images.is_floating_point():
        raise DataError(
            f"{origin}: {which} has images of dtype {images.dtype}; images must be floats in "
            "[0, 1] (divide 8-bit pixels by 255)"
        )
    if images.numel():
        _check_pixel_range(origin, images, which)
    return tuple(images.shape[1:])


def _check_pixel_range(origin: str, images: torch.Tensor, which: str) -> None:
    low, high = (float(v) for v in images.aminmax())  # NaN propagates, inf shows
    if not (math.isfinite(low) and math.isfinite(high)):
        raise DataError(f"{origin}: {which} has NaN or infinite pixel values")
    if low < -PIXEL_SLACK or high > 1 + PIXEL_SLACK:
        raise DataError(
            f"{origin}: pixel values in {which} range {low:.4g}..{high:.4g}; valid: 0..1 "
            "(floats in [0, 1], as dmt predict reads image files; divide 8-bit pixels by 255, "
            "do not normalise)"
        )


def check_labels(origin: str, spec: TaskSpec, raw_labels: Any, which: str) -> torch.Tensor:
    """Fail, naming where, unless the labels fit the task's output kind and size: vectorised
    min/max and finiteness checks only, cheap enough for every batch. Class labels must have
    an integer dtype: a float label (even 1.0) is most likely a regression or multilabel
    target given to a classification task."""
    try:
        labels = torch.as_tensor(raw_labels)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise DataError(f"{origin}: labels in {which} are not numbers: {first_line(exc)}") from exc
    if labels.dim() == 0:
        raise DataError(f"{origin}: {which} has one label for the whole batch, not one per image")
    if labels.dtype == torch.bool:
        labels = labels.long()
    if labels.is_complex():
        raise DataError(f"{origin}: labels in {which} have dtype {labels.dtype}; expected numbers")
    if spec.output in ("binary", "multiclass"):
        return _check_class_labels(origin, spec, labels, which)
    if spec.dense:
        check_dense_labels(origin, spec, labels, which)
        return labels
    width = 1 if labels.dim() == 1 else labels.shape[1]
    if labels.dim() > 2 or width != spec.num_outputs:
        raise DataError(
            f"{origin}: {spec.output} labels must have shape (N, {spec.num_outputs}), "
            f"got {tuple(labels.shape)} in {which}"
        )
    if labels.is_floating_point() and not bool(torch.isfinite(labels).all()):
        raise DataError(f"{origin}: {which} has NaN or infinite labels")
    if spec.output == "multilabel" and not bool(((labels == 0) | (labels == 1)).all()):
        raise DataError(f"{origin}: multilabel targets must be 0 or 1; {which} has others")
    return labels


def _check_class_labels(
    origin: str, spec: TaskSpec, labels: torch.Tensor, which: str
) -> torch.Tensor:
    if labels.dim() != 1 or labels.is_floating_point():
        raise DataError(
            f"{origin}: {spec.output} labels must be one class index per image, got shape "
            f"{tuple(labels.shape)} dtype {labels.dtype} in {which}; valid: shape (N,) of "
            f"{CLASS_LABEL_DTYPES}"
        )
    low, high = (int(v) for v in labels.aminmax())
    if low < 0 or high >= spec.num_outputs:
        raise DataError(
            f"{origin}: labels in {which} range {low}..{high}, but the task has "
            f"{spec.num_outputs} outputs (valid labels: 0..{spec.num_outputs - 1})"
        )
    return labels


def check_batch(
    origin: str,
    spec: TaskSpec,
    images: Any,
    raw_labels: Any,
    which: str,
    shape: tuple[int, ...] | None = None,
    channels: tuple[int, ...] = (),
) -> tuple[int, ...]:
    """Fail, naming the task, plugin, split and batch, if a batch cannot be what the task
    says; returns the per-image shape that later batches must have."""
    shape = check_images(origin, images, which, shape, channels)
    if spec.region:  # one dict of boxes per image: see dmtcore.tasks.region_labels
        check_region_labels(origin, spec, raw_labels, images, which)
        return shape
    labels = check_labels(origin, spec, raw_labels, which)
    if labels.shape[0] != images.shape[0]:
        raise DataError(
            f"{origin}: {which} has {images.shape[0]} images but {labels.shape[0]} labels"
        )
    if spec.dense:
        check_label_size(origin, labels, images, which)
    return shape


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


def balancing_weights(spec: TaskSpec, dataset: Any, origin: str | None = None) -> torch.Tensor:
    """Per-sample drawing weights that make every class equally likely (DMT §4.1: the minority
    class is resampled so that a batch is not dominated by the majority). Reading every label
    up front, they are all checked here."""
    if spec.output not in ("binary", "multiclass"):
        raise InvalidValueError(
            f"task {spec.name!r}: --balance resamples classes, but the task is {spec.output}; "
            "it applies to binary and multiclass tasks only"
        )
    origin = origin or f"task {spec.name!r}"
    with plugin_code(origin, "reading its labels for --balance"):
        raw = dataset_labels(dataset)
    labels = labels_for(spec, check_labels(origin, spec, raw, "the whole split"))
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
    processes (worth it for image files, not for in-memory tensors).

    This is where plugin data enters the engine, so every consumer (training, validation, the
    feature cache's fill pass) gets the same guarantees: every batch is checked (labels fit the
    task; images are float C×H×W with the task's or the store's channels, keep the first
    batch's shape, pixels are in [0, 1]: one min/max pass, under 30 µs a batch of 64, 0.1% of
    a digits epoch), and anything the plugin's dataset raises, here or in a worker
    process, is a DataError naming the task, its plugin, the split and the batch."""

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
    split: str = "train"  # for messages
    plugin: str | None = None  # the plugin that registered the task, for messages

    def __post_init__(self) -> None:
        self.origin = f"{data_origin(self.spec, self.plugin)}, {self.split} split"
        self.image_shape: tuple[int, ...] | None = None  # of the first batch read
        self.channels = valid_channels(self.spec, self.input_spec)
        self.checked_whole = False  # in-memory data checked once as a whole (GPU-resident)
        with plugin_code(self.origin, "reading its size"):
            size = len(self.dataset)
        weights = balancing_weights(self.spec, self.dataset, self.origin) if self.balance else None
        self.sampler = EpochSampler(size, self.shuffle, self.generator, weights, self.shard)
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
                # Region labels hold a different number of boxes per image: kept as a list.
                collate_fn=collate_regions if self.spec.region else None,
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
        """Adapted (images, labels, dataset indices) batches on the device, each checked."""
        for number, (images, labels, index) in enumerate(self._plugin_batches(), 1):
            self._check(number, images, labels)
            yield self._adapted(images, labels, index)

    def _plugin_batches(self) -> Iterator[tuple[Any, Any, torch.Tensor]]:
        """(images, labels, indices) batches as the plugin's dataset delivers them."""
        if self.in_memory:
            tensors = self._resident_tensors()
            for indices in self.batch_sampler:
                index = torch.as_tensor(indices)
                images, labels = (t[index.to(t.device)] for t in tensors[:2])
                yield images, labels, index
            return
        with plugin_code(self.origin, "starting to read it"):
            batches = iter(self.loader)
        for number in itertools.count(1):
            with plugin_code(self.origin, f"reading {_batch_name(number)}"):
                batch = next(batches, None)
            if batch is None:
                return
            yield batch

    def _check(self, number: int, images: Any, labels: Any) -> None:
        if not self.checked_whole:
            which = _batch_name(number)
            self.image_shape = check_batch(
                self.origin, self.spec, images, labels, which, self.image_shape, self.channels
            )

    def fetch(self, index: torch.Tensor) -> torch.Tensor:
        """The adapted images of the given samples, in that order, on the device."""
        if self.in_memory:
            images = self._resident_tensors()[0]
            images = images[index.to(images.device)]
        else:
            which = f"samples {int(index[0])}..{int(index[-1])}"
            with plugin_code(self.origin, f"reading {which}"):
                images = torch.stack([torch.as_tensor(self.dataset[int(i)][0]) for i in index])
            self.image_shape = check_images(
                self.origin, images, which, self.image_shape, self.channels
            )
        return self._formatted(adapt_images(images, self.input_spec).to(self.device))

    def all_labels(self) -> torch.Tensor:
        """Every label of an in-memory split, checked as a whole, as the task's loss takes them."""
        labels = check_labels(self.origin, self.spec, self.dataset.tensors[1], "the whole split")
        return labels_for(self.spec, labels, self.input_spec)

    def _formatted(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    def _resident_tensors(self) -> tuple[torch.Tensor, ...]:
        """The dataset's tensors, moved once to a GPU when they fit comfortably. Data on the
        GPU is checked once as a whole there (it never changes), not batch by batch, which
        would wait for the GPU at every step."""
        tensors = self.dataset.tensors
        if self.device.type == "cuda":
            if not hasattr(self, "_on_device"):
                size = sum(t.numel() * t.element_size() for t in tensors)
                if size <= DEVICE_RESIDENT_BYTES:
                    moved = tuple(t.to(self.device) for t in tensors)
                    check_batch(
                        self.origin,
                        self.spec,
                        moved[0],
                        tensors[1],
                        "the whole split",
                        channels=self.channels,
                    )
                    self.checked_whole = True
                    self._on_device = moved
                else:
                    self._on_device = tensors
            tensors = self._on_device
        return tensors

    def _adapted(
        self, images: Any, labels: Any, index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        non_blocking = self.device.type == "cuda"
        source = tuple(torch.as_tensor(images).shape[-2:])
        images = adapt_images(torch.as_tensor(images), self.input_spec)
        if self.spec.region:  # boxes follow their image to the store's size
            size = (self.input_spec.height, self.input_spec.width)
            targets = region_targets(self.spec, labels, source, size)
            return (
                self._formatted(images.to(self.device, non_blocking=non_blocking)),
                targets_to(targets, self.device, non_blocking),
                index,
            )
        return (
            self._formatted(images.to(self.device, non_blocking=non_blocking)),
            labels_for(self.spec, labels, self.input_spec).to(
                self.device, non_blocking=non_blocking
            ),
            index,
        )

    def validate(self) -> None:
        """Check the first batch, and that its images adapt to the store's input spec, before
        anything trains (every later batch is checked as it is read)."""
        images, labels, _ = next(self._plugin_batches())
        self._check(1, images, labels)
        try:
            adapt_images(torch.as_tensor(images), self.input_spec)
        except DataError as exc:
            raise DataError(f"{self.origin}: {exc}") from exc


def _batch_name(number: int) -> str:
    return "the first batch" if number == 1 else f"batch {number}"
