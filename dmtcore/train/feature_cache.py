"""Frozen columns' features, computed once per sample and reused by later epochs.

While a new task trains, every frozen column it reads gives the same stage outputs for the same
image in every epoch: its weights are fixed and it runs in eval mode. When the inputs are
deterministic too (no random augmentation), one pass before the first epoch stores those
outputs and every epoch reads them back instead of running k frozen columns, so an epoch costs
about what training the new column alone costs (issue 5, benchmarks/growth_cost.py).

Features are stored compactly (float16 by default) in memory within a budget; past the budget,
`auto` spills them to a memory-mapped file in the temporary directory (the page cache keeps the
hot part in RAM) and `memory` turns the cache off. Whatever happens is said in one message.

The file's space is reserved before it is mapped: a sparse file mapped into memory gets its
blocks only when a page is first written, and when the disk fills up at that moment (two
processes sharing the temp disk, issue 13) the kernel can only answer with SIGBUS, which kills
the process without a word. The file is also unlinked as soon as it is opened, before anything
is written: the mapping keeps its blocks, the kernel frees them when the process ends however it
ends (SIGKILL included), and no file or directory is ever left in the temp directory.
"""

from __future__ import annotations

import errno
import math
import mmap
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm import tqdm

from dmtcore.errors import InvalidValueError, StoreError
from dmtcore.model.connections import StackedSources
from dmtcore.model.multitask import evaluating
from dmtcore.runtime import interrupts

if TYPE_CHECKING:
    from dmtcore.store.kept_features import KeptFeatures

CACHE_MODES = ("auto", "memory", "disk", "off")
CACHE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
DISK_HEADROOM = 1.2  # auto spills only when the disk has this much more free space than needed
FILL_BATCH_BYTES = 2**20  # one stage output of one column per batch, while filling
FILL_BATCH_MIN = 64  # images per batch while filling, at the least
ZERO_CHUNK = 2**20  # bytes written at a time where the filesystem cannot preallocate
ALIGNMENT = 4096  # each table's stage starts on its own page of the mapped file
SPILL_PREFIX = "dmt-feature-cache-"


def check_cache_settings(mode: str, budget_mb: float, dtype: str) -> None:
    if mode not in CACHE_MODES:
        raise InvalidValueError(
            f"unknown feature cache mode {mode!r}; valid: {', '.join(CACHE_MODES)}"
        )
    if not (isinstance(budget_mb, int | float) and math.isfinite(budget_mb) and budget_mb >= 0):
        raise InvalidValueError(
            f"feature cache budget must be a number of megabytes ≥ 0, got {budget_mb!r}"
        )
    if dtype not in CACHE_DTYPES:
        raise InvalidValueError(
            f"unknown feature cache dtype {dtype!r}; valid: {', '.join(CACHE_DTYPES)}"
        )


@dataclass
class _Table:
    """The cached features of one split of one trained task: per stage boundary, one tensor of
    its frozen sources (in `sources` order) × N samples × the stage's feature shape, and whether
    `fill` has run over the whole split (it always does before training starts). Sources share
    a tensor so that a batch costs one gather and one conversion per stage, however many frozen
    columns it reads: on small inputs, per-tensor work, not bytes, is what a cached epoch spends
    its time on. Sources come first so that a batch's gather is already the stack of sources
    × batch a connection contracts (`StackedSources`), with no copy into another stack."""

    sources: list[str]
    stages: list[torch.Tensor]
    filled: bool = False


class FeatureCache:
    """Stage outputs of frozen source tasks, per (trained task, split), keyed by sample index."""

    def __init__(
        self,
        tables: dict[tuple[str, str], _Table],
        location: str,
        nbytes: int,
        dtype: str,
        device: torch.device,
        mapping: mmap.mmap | None,
    ) -> None:
        self.tables = tables
        self.location = location
        self.nbytes = nbytes
        self.dtype = dtype
        self.device = device
        self.mapping = mapping
        self.hits = 0
        self.misses = 0
        self.read_columns: set[str] = set()  # frozen columns whose features `fill` read
        self.run_columns: set[str] = set()  # and those it ran
        self.columns = ""  # e.g. "2 frozen columns"
        self.contents = ""  # e.g. "3.1 MB of float16 features in memory"

    @classmethod
    def plan(
        cls,
        model: Any,
        splits: dict[tuple[str, str], Any],
        mode: str,
        budget_mb: float,
        dtype: str,
        device: torch.device,
        notify: Callable[[str], None],
    ) -> FeatureCache | None:
        """A cache for `splits` ((task, split) -> Batches), or None with a message saying why
        not; silent when nothing frozen is read (the first task of a store)."""
        if mode == "off":
            return None
        sources = {key: model.frozen_sources([key[0]]) for key in splits}
        if not any(sources.values()):
            return None
        changing = sorted({task for (task, _), b in splits.items() if not b.deterministic})
        if changing:
            notify(
                f"feature cache off: the data of {', '.join(changing)} may differ between epochs "
                "(datasets that are not in-memory tensors); a plugin whose images never change "
                "says so with TaskData(deterministic=True)"
            )
            return None
        shapes = {  # with head fusion the last stage's output too: the head reads it
            task: tuple(model.read_shapes(task))
            for task in {t for ts in sources.values() for t in ts}
        }
        if len(set(shapes.values())) != 1:  # one backbone per store: never expected
            raise ValueError(f"frozen columns with different stage shapes: {shapes}")
        stage_shapes = next(iter(shapes.values()))
        layout = {
            key: [(len(tasks), len(splits[key].dataset), *shape) for shape in stage_shapes]
            for key, tasks in sources.items()
            if tasks
        }
        flat = [shape for key_shapes in layout.values() for shape in key_shapes]
        torch_dtype = CACHE_DTYPES[dtype]
        nbytes = sum(math.prod(shape) for shape in flat) * torch_dtype.itemsize
        size = size_text(nbytes)
        storage = _storage(flat, torch_dtype, device, nbytes, mode, budget_mb, notify)
        if storage is None:
            return None
        tensors, mapping = iter(storage[0]), storage[1]
        tables = {
            key: _Table(sources[key], [next(tensors) for _ in key_shapes])
            for key, key_shapes in layout.items()
        }
        location = "memory" if mapping is None else "disk"
        cache = cls(tables, location, nbytes, dtype, device, mapping)
        count = len(shapes)
        # For `fit` to say, before and after `fill` does the work.
        cache.columns = f"{count} frozen column{'s' * (count != 1)}"
        cache.contents = (
            f"{size} of {dtype} features {'in memory' if mapping is None else 'on disk'}"
        )
        return cache

    def lookup(self, task: str, split: str, index: torch.Tensor) -> StackedSources | None:
        """`given` for `model(x, [task], given=...)`: the frozen sources' cached stage outputs
        for the batch, stacked (sources × batch × shape, float32), or None (compute them)
        before `fill` has completed the split."""
        table = self.tables.get((task, split))
        if table is None:
            return None
        if not table.filled:
            self.misses += 1
            return None
        self.hits += 1
        at = index.to(table.stages[0].device)
        stages = [
            t.index_select(1, at).to(self.device, torch.float32, non_blocking=True)
            for t in table.stages
        ]
        return StackedSources(table.sources, stages)

    @torch.no_grad()
    def fill(
        self,
        model: Any,
        task: str,
        split: str,
        batches: Any,
        progress: bool = True,
        kept: KeptFeatures | None = None,
    ) -> None:
        """Run the frozen columns once over the whole split, before training, and store their
        stage outputs; every batch of every epoch then reads them. Columns whose features an
        earlier operation kept on these images (`kept`) are read, not run, and feed the columns
        that are run; those computed here are handed to `kept` to be kept in their turn.

        A batch holds at least FILL_BATCH_MIN images, and more while a stage's output stays
        within FILL_BATCH_BYTES: on a CPU, per-call overhead dominates small maps (8 columns at
        1×8×8: 0.9 s in batches of 64, 0.7 s in batches of 256 or more), while large
        activations outgrow its caches (at 3×32×32: 9.6 s in batches of 64, 13.2 s of 256).
        It does not depend on the training batch size, so a column's features are the same
        numbers whichever operation computed them."""
        table = self.tables.get((task, split))
        if table is None or table.filled:
            return
        count = table.stages[0].shape[1]
        shapes = [(count, *stage.shape[2:]) for stage in table.stages]
        fingerprint = kept.fingerprint(batches) if kept is not None else None
        found = {}
        if kept is not None and fingerprint is not None:
            for source in table.sources:
                entry = kept.open(source, fingerprint, shapes)
                if entry is not None:
                    found[source] = entry
        run = [s for s in table.sources if s not in found]
        nbytes = sum(math.prod(shape) for shape in shapes) * 4
        computed = {
            source: [torch.empty(shape) for shape in shapes]
            for source in run
            if kept is not None and kept.wants(source, fingerprint, nbytes)
        }
        with (
            evaluating(model),
            tqdm(
                total=count,
                desc=f"feature cache {task} {split}",
                unit="img",
                leave=False,
                disable=None if progress else True,
                file=sys.stderr,
            ) as bar,
        ):
            step = self._fill_batch_size(table)
            for start in range(0, count, step):
                end = min(start + step, count)
                index = torch.arange(start, end)
                given = {
                    source: [
                        entry.get_slice(f"stage{stage}")[start:end].to(self.device)
                        for stage in range(len(shapes))
                    ]
                    for source, entry in found.items()
                }
                outputs: dict[str, list[torch.Tensor]] = {source: [] for source in run}
                if run:  # not `task` itself, and no column whose features were read
                    model(batches.fetch(index), run, given or None, outputs)
                outputs.update(given)
                for stage, target in enumerate(table.stages):
                    features = torch.stack([outputs[s][stage] for s in table.sources])
                    target[:, start:end] = features.to(target.device, target.dtype)
                for source, stages in computed.items():
                    for stage, tensor in enumerate(stages):
                        tensor[start:end] = outputs[source][stage].cpu()
                bar.update(end - start)
                interrupts.check()
        for source, stages in computed.items():
            kept.keep(source, fingerprint, stages)  # type: ignore[union-attr, arg-type]
        table.filled = True
        self.read_columns.update(found)
        self.run_columns.update(run)

    @staticmethod
    def _fill_batch_size(table: _Table) -> int:
        largest = max(math.prod(stage.shape[2:]) for stage in table.stages) * 4  # float32
        return max(FILL_BATCH_MIN, FILL_BATCH_BYTES // largest)

    def summary(self) -> dict[str, Any]:
        """What the run's manifest and tracking record about the cache."""
        return {
            "location": self.location,
            "bytes": self.nbytes,
            "dtype": self.dtype,
            "hits": self.hits,
            "misses": self.misses,
        }

    def close(self) -> None:
        """Drop the features now. A spilled file is unmapped, and its blocks given back to the
        disk, when the last tensor over it goes: at once, unless something still holds one (a
        traceback's frame), and in any case when the process ends, since the file has no name."""
        self.tables.clear()
        self.mapping = None


def _storage(
    shapes: list[tuple[int, ...]],
    dtype: torch.dtype,
    device: torch.device,
    nbytes: int,
    mode: str,
    budget_mb: float,
    notify: Callable[[str], None],
) -> tuple[list[torch.Tensor], mmap.mmap | None] | None:
    """The cache's tensors, in memory within the budget, else over a reserved file (and that
    file's mapping); None, with a message, where they fit in neither."""
    if mode != "disk" and nbytes <= int(budget_mb * 2**20):
        return [torch.empty(shape, dtype=dtype, device=device) for shape in shapes], None
    if mode == "memory":
        notify(
            f"feature cache off: it needs {size_text(nbytes)}, over the budget of {budget_mb:g} MB; "
            "raise --cache-budget-mb, or use --feature-cache auto to spill it to disk"
        )
        return None
    offsets, mapped = _layout(shapes, dtype.itemsize)
    mapping = _spill(nbytes, mapped, mode, budget_mb, notify)
    if mapping is None:
        return None
    return _carve(mapping, shapes, offsets, dtype), mapping


def size_text(nbytes: float) -> str:
    """A byte count as people read it: '3.1 MB', '1.2 GB'."""
    return f"{nbytes / 2**30:.1f} GB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MB"


def _layout(shapes: list[tuple[int, ...]], itemsize: int) -> tuple[list[int], int]:
    """Where each tensor starts in the spilled file, page-aligned, and the file's size."""
    offsets, end = [], 0
    for shape in shapes:
        offsets.append(end)
        end += -(-math.prod(shape) * itemsize // ALIGNMENT) * ALIGNMENT
    return offsets, max(end, ALIGNMENT)


def _carve(
    mapping: mmap.mmap, shapes: list[tuple[int, ...]], offsets: list[int], dtype: torch.dtype
) -> list[torch.Tensor]:
    """Writable tensors over the mapping; each holds a reference to it, so the mapping lives
    exactly as long as they do (closing it under them would leave them pointing at nothing)."""
    return [
        torch.frombuffer(mapping, dtype=dtype, count=math.prod(shape), offset=offset).view(shape)
        for shape, offset in zip(shapes, offsets, strict=True)
    ]


def _spill(
    nbytes: int, mapped: int, mode: str, budget_mb: float, notify: Callable[[str], None]
) -> mmap.mmap | None:
    """A reserved mapping of `mapped` bytes in the temp directory, or, when the space is not
    there: None with one message in `auto` mode (training goes on without the cache), a
    StoreError in `disk` mode (the user asked for the disk, and dmt cannot write there).
    `auto` also keeps DISK_HEADROOM spare, not to take a disk's last megabytes on its own."""
    temp = Path(tempfile.gettempdir())
    needed = f"{size_text(nbytes)} needed in {temp}"
    try:
        free = shutil.disk_usage(temp).free
        if mode == "auto" and free < nbytes * DISK_HEADROOM:
            reason = f"only {size_text(free)} free"
            mapping = None
        else:
            mapping = _reserved_mapping(temp, mapped)
    except OSError as exc:
        reason = _reason(exc, temp)
        mapping = None
    if mapping is None and mode == "disk":
        raise StoreError(
            f"--feature-cache disk: cannot reserve the feature cache, {needed}, {reason}; free "
            "space there, point TMPDIR at a larger disk, or use --feature-cache auto (trains "
            "without it when the space is not there) or off"
        )
    if mapping is None:
        notify(
            f"feature cache off: {needed} (over the memory budget of {budget_mb:g} MB), "
            f"{reason}; training without it"
        )
    elif mode == "auto":
        notify(
            f"feature cache: {size_text(nbytes)} is over the memory budget of {budget_mb:g} MB "
            f"(--cache-budget-mb); spilling it to {temp}, space reserved, freed when dmt exits"
        )
    return mapping


def _reason(exc: OSError, temp: Path) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        try:
            return f"only {size_text(shutil.disk_usage(temp).free)} free ({exc.strerror})"
        except OSError:
            pass
    return f"{exc.strerror or exc}"


def _reserved_mapping(directory: Path, size: int) -> mmap.mmap:
    """A shared, writable mapping of a `size`-byte file in `directory` whose blocks are all
    allocated (so no write through it meets a full disk, which would be SIGBUS) and which no
    path names (so nothing is left behind, whatever ends the process)."""
    fd = _unnamed_file(directory)
    try:
        _reserve(fd, size)
        return mmap.mmap(fd, size)  # MAP_SHARED: pages go back to the file, not to swap
    finally:
        os.close(fd)


def _unnamed_file(directory: Path) -> int:
    """A new file open for writing with no name: O_TMPFILE where the OS and filesystem have it,
    else a temp file unlinked before anything is written to it."""
    if hasattr(os, "O_TMPFILE"):
        try:
            return os.open(directory, os.O_TMPFILE | os.O_RDWR, 0o600)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
    fd, path = tempfile.mkstemp(prefix=SPILL_PREFIX, suffix=".bin", dir=directory)
    try:
        os.unlink(path)
    except OSError:
        os.close(fd)
        raise
    return fd


def _reserve(fd: int, size: int) -> None:
    """Allocate the file's blocks now, or raise OSError (ENOSPC): posix_fallocate, or zeros
    written where the OS (macOS) or the filesystem cannot preallocate."""
    fallocate = getattr(os, "posix_fallocate", None)
    if fallocate is not None:
        try:
            fallocate(fd, 0, size)
            return
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
    zeros = memoryview(bytes(ZERO_CHUNK))
    written = 0
    while written < size:
        written += os.pwrite(fd, zeros[: min(ZERO_CHUNK, size - written)], written)
        interrupts.check()
