"""Frozen columns' features, computed once per sample and reused by later epochs.

While a new task trains, every frozen column it reads gives the same stage outputs for the same
image in every epoch: its weights are fixed and it runs in eval mode. When the inputs are
deterministic too (no random augmentation), one pass before the first epoch stores those
outputs and every epoch reads them back instead of running k frozen columns, so an epoch costs
about what training the new column alone costs (issue 5, benchmarks/growth_cost.py).

Features are stored compactly (float16 by default) in memory within a budget; past the budget,
`auto` spills them to a memory-mapped file in a temporary directory (the page cache keeps the
hot part in RAM) and `memory` turns the cache off. Whatever happens is said in one message.
"""

from __future__ import annotations

import math
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from dmtcore import interrupts
from dmtcore.errors import InvalidValueError
from dmtcore.model import evaluating

CACHE_MODES = ("auto", "memory", "disk", "off")
CACHE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
DISK_HEADROOM = 1.2  # spill only when the disk has this much more free space than needed
FILL_BATCH_BYTES = 2**20  # one stage output of one column per batch, while filling


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
    N samples × its frozen sources (in `sources` order) × the stage's feature shape, and whether
    `fill` has run over the whole split (it always does before training starts). Sources share
    a tensor so that a batch costs one gather and one conversion per stage, however many frozen
    columns it reads: on small inputs, per-tensor work, not bytes, is what a cached epoch spends
    its time on."""

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
        directory: Path | None,
    ) -> None:
        self.tables = tables
        self.location = location
        self.nbytes = nbytes
        self.dtype = dtype
        self.device = device
        self.directory = directory
        self.hits = 0
        self.misses = 0

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
        shapes = {
            task: tuple(model.part(task, "column").feature_shapes[:-1])
            for task in {t for ts in sources.values() for t in ts}
        }
        if len(set(shapes.values())) != 1:  # one backbone per store: never expected
            raise ValueError(f"frozen columns with different stage shapes: {shapes}")
        stage_shapes = next(iter(shapes.values()))
        itemsize = CACHE_DTYPES[dtype].itemsize
        per_sample = {
            key: len(ts) * sum(math.prod(s) for s in stage_shapes) * itemsize
            for key, ts in sources.items()
        }
        nbytes = sum(per_sample[key] * len(splits[key].dataset) for key in splits)
        budget = int(budget_mb * 2**20)
        size = f"{nbytes / 2**20:.1f} MB"
        location = "memory"
        directory = None
        if mode == "disk" or nbytes > budget:
            if mode == "memory":
                notify(
                    f"feature cache off: it needs {size}, over the budget of {budget_mb:g} MB; "
                    "raise --cache-budget-mb, or use --feature-cache auto to spill it to disk"
                )
                return None
            temp = Path(tempfile.gettempdir())
            free = shutil.disk_usage(temp).free
            if free < nbytes * DISK_HEADROOM:
                notify(
                    f"feature cache off: it needs {size}, over the memory budget of {budget_mb:g} MB, "
                    f"and {temp} has only {free / 2**20:.0f} MB free"
                )
                return None
            location = "disk"
            directory = Path(tempfile.mkdtemp(prefix="dmt-feature-cache-"))
            if mode == "auto":
                notify(
                    f"feature cache: {size} is over the memory budget of {budget_mb:g} MB "
                    f"(--cache-budget-mb); spilling it to {directory}"
                )
        storage_device = device if location == "memory" else torch.device("cpu")
        tables = {}
        for key, tasks in sources.items():
            if not tasks:
                continue
            n = len(splits[key].dataset)
            stages = [
                _allocate((n, len(tasks), *shape), CACHE_DTYPES[dtype], storage_device, directory)
                for shape in stage_shapes
            ]
            tables[key] = _Table(tasks, stages)
        cache = cls(tables, location, nbytes, dtype, device, directory)
        count = len(shapes)
        notify(
            f"feature cache: {count} frozen column{'s' * (count != 1)} computed once, "
            f"{size} of {dtype} features in {location}"
        )
        return cache

    def lookup(
        self, task: str, split: str, index: torch.Tensor
    ) -> dict[str, list[torch.Tensor]] | None:
        """`given` for `model(x, [task], given=...)`: the frozen sources' cached stage outputs
        for the batch, or None (compute them) before `fill` has completed the split."""
        table = self.tables.get((task, split))
        if table is None:
            return None
        if not table.filled:
            self.misses += 1
            return None
        self.hits += 1
        at = index.to(table.stages[0].device)
        gathered = [t[at].to(self.device, torch.float32, non_blocking=True) for t in table.stages]
        return {
            source: [g[:, position] for g in gathered]
            for position, source in enumerate(table.sources)
        }

    @torch.no_grad()
    def fill(self, model: Any, task: str, split: str, batches: Any, progress: bool = True) -> None:
        """Run the frozen columns once over the whole split, before training, and store their
        stage outputs; every batch of every epoch then reads them. A batch holds at least
        training's batch size, and more images while a stage's output stays within
        FILL_BATCH_BYTES: on a CPU, per-call overhead dominates small maps (8 columns at 1×8×8:
        0.9 s in batches of 64, 0.7 s in batches of 256 or more), while large activations
        outgrow its caches (at 3×32×32: 9.6 s in batches of 64, 13.2 s of 256)."""
        table = self.tables.get((task, split))
        if table is None or table.filled:
            return
        samples = torch.arange(table.stages[0].shape[0])
        with (
            evaluating(model),
            tqdm(
                total=len(samples),
                desc=f"feature cache {task} {split}",
                unit="img",
                leave=False,
                disable=None if progress else True,
                file=sys.stderr,
            ) as bar,
        ):
            for index in samples.split(self._fill_batch_size(table, batches.batch_size)):
                kept: dict[str, list[torch.Tensor]] = {source: [] for source in table.sources}
                model(batches.fetch(index), table.sources, None, kept)  # not `task` itself
                for stage, target in enumerate(table.stages):
                    features = torch.stack([kept[s][stage] for s in table.sources], dim=1)
                    target[index.to(target.device)] = features.to(target.device, target.dtype)
                bar.update(len(index))
                interrupts.check()
        table.filled = True

    @staticmethod
    def _fill_batch_size(table: _Table, batch_size: int) -> int:
        largest = max(math.prod(stage.shape[2:]) for stage in table.stages) * 4  # float32
        return max(batch_size, FILL_BATCH_BYTES // largest)

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
        self.tables.clear()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)


def _allocate(
    shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, directory: Path | None
) -> torch.Tensor:
    if directory is None:
        return torch.empty(shape, dtype=dtype, device=device)
    with tempfile.NamedTemporaryFile(suffix=".bin", dir=directory, delete=False) as file:
        path = file.name
    return torch.from_file(path, shared=True, size=math.prod(shape), dtype=dtype).view(shape)
