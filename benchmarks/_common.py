"""What the performance benchmarks share: options, the device check, interleaved runs, medians,
the printed table and its JSON file, and the stores of k frozen columns they grow.

Every benchmark measures its variants side by side in one process (or one parent process),
interleaved (A, B, A, B, ... with the order rotating every round) so that a burst of load on a
shared machine hits all of them, and reports medians over rounds and ratios of paired runs.

Threads: torch uses one intra-op thread here unless `--threads` says otherwise. On a shared
2-core machine two threads spin-wait on each other whenever another process takes a core, and
one epoch measured 0.4 s or 16 s depending on the neighbours; with one thread the same epoch
stays within about 20%. Ratios are what these benchmarks report, and both sides of each ratio
run with the same thread count.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from dmtcore.hooks.specs import hookimpl
from dmtcore.tasks.names import InputSpec

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
EXTRA_TASKS_PLUGIN = HERE / "_extra_tasks.py"
T = TypeVar("T")


def quiet(message: str) -> None:
    """`notify` for the operations: benchmarks print only their tables."""


def parser(description: str, name: str) -> argparse.ArgumentParser:
    """Options every benchmark has; `name` is the default JSON file in benchmarks/results."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="tiny sizes, one repeat: a smoke test")
    p.add_argument(
        "--device",
        default="cpu",
        choices=("cpu", "cuda"),
        help="cpu (default), or cuda with bf16 autocast",
    )
    p.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads on the CPU (default 1)"
    )
    p.add_argument("--json", type=Path, default=RESULTS / f"{name}.json", help="result file")
    return p


def setup(args: argparse.Namespace) -> dict[str, Any]:
    """Check the device (a clear exit without a GPU), set the thread count, and return the
    TrainSettings fields for it: bf16 autocast on CUDA, fp32 on the CPU."""
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            "--device cuda: no CUDA GPU is available on this machine "
            "(torch.cuda.is_available() is False); run with --device cpu"
        )
    torch.set_num_threads(args.threads)
    precision = "bf16" if args.device == "cuda" else "fp32"
    return {"device": args.device, "precision": precision}


def environment(args: argparse.Namespace) -> dict[str, Any]:
    """What the JSON records about where the numbers come from."""
    import torch

    info = {
        "device": args.device,
        "threads": args.threads,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "quick": args.quick,
    }
    if args.device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    with contextlib.suppress(OSError):
        info["load_average"] = os.getloadavg()
    return info


def interleaved(variants: dict[str, Callable[[], T]], rounds: int) -> dict[str, list[T]]:
    """Run every variant once per round, the order rotating by one each round."""
    names = list(variants)
    results: dict[str, list[T]] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            results[name].append(variants[name]())
    return results


def median(values: Sequence[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.median(finite) if finite else math.nan


def verdict(value: float | None, target: float, at_most: bool = True) -> str:
    """'pass' or 'miss' against a target (≤ target, or ≥ target when `at_most` is false)."""
    if value is None or not math.isfinite(value):
        return "miss"
    return "pass" if (value <= target if at_most else value >= target) else "miss"


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain text table: the first column left-aligned, the others right-aligned."""
    cells = [list(headers), *[[fmt(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = [
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def report(args: argparse.Namespace, text: str, result: dict[str, Any]) -> None:
    """Print the table and write it, the raw measurements and the environment as JSON."""
    print(text)
    result = {"environment": environment(args), **result, "table": text}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, default=_jsonable))
    print(f"written to {args.json}")


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(f"not JSON: {type(value).__name__}")


class EpochRecorder:
    """Collects the EpochReports of the runs on a plugin host (dmt_epoch_end), and the process
    CPU time of each epoch: from the run's start (dmt_run_started, right before training) or
    the previous epoch's end to this one's. With one thread, CPU time is what the epoch would
    take on an idle machine, whatever the neighbours do; wall time is what the user waits."""

    def __init__(self) -> None:
        self.reports: list[Any] = []
        self.cpu: list[float] = []
        self._mark = time.process_time()

    @hookimpl
    def dmt_run_started(self, run: Any) -> None:
        self._mark = time.process_time()

    @hookimpl
    def dmt_epoch_end(self, run: Any, report: Any) -> None:
        now = time.process_time()
        self.reports.append(report)
        self.cpu.append(now - self._mark)
        self._mark = now

    def take(self) -> tuple[list[Any], list[float]]:
        """(reports, CPU seconds per epoch) since the last call."""
        taken = self.reports, self.cpu
        self.reports, self.cpu = [], []
        return taken


# -- growing stores of k frozen columns --------------------------------------------------------


@dataclass(frozen=True)
class Growth:
    """A dataset for the growth benchmarks: the task added, and the tasks already in the store
    (the first k of `frozen`), at the store's input size, with the stores' column and its
    options (pixel-level tasks need a column with spatial features)."""

    name: str
    new: str
    frozen: tuple[str, ...]
    input_spec: InputSpec
    backbone_options: tuple[tuple[str, Any], ...] = ()
    backbone: str = "dmt-cnn"

    def describe(self) -> str:
        """The stores' input and column, as the tables print them."""
        options = "".join(f" {k}={str(v).lower()}" for k, v in self.backbone_options)
        return f"{self.name} {self.input_spec} ({self.backbone}{options})"


GROWTH = {
    "digits": Growth(
        "digits",
        "digits.even",
        (
            "digits.class",
            "digits.large",
            "digits.prime",
            "digits.loop",
            "digits.curved",
            "bench.digit-0",
            "bench.digit-1",
            "bench.digit-7",
        ),
        InputSpec(1, 8, 8),
    ),
    "shapes": Growth(
        "shapes",
        "shapes.red-circle",
        (
            "shapes.kind",
            "shapes.colour",
            "shapes.size",
            "shapes.position",
            "bench.shape-circle",
            "bench.colour-red",
            "bench.shape-square",
            "bench.colour-green",
        ),
        InputSpec(3, 8, 8),
    ),
    "scenes": Growth(
        "scenes",
        "scenes.normals",
        ("scenes.segmentation", "scenes.depth", "bench.scenes-objects", "bench.scenes-curved"),
        InputSpec(3, 64, 64),
        (("spatial", True),),
    ),
}


def plugin_host(samples: int | None = None) -> Any:
    """The built-in plugins plus the benchmarks' extra tasks; with `samples`, every task trains
    on the first `samples` images of its training split (the split is already shuffled) and
    validates on the first `samples // 2` of its validation split."""
    from dmtcore.hooks.host import create_plugin_host

    host = create_plugin_host([str(EXTRA_TASKS_PLUGIN)])
    if samples:
        for name, spec in list(host.kinds.tasks.items()):
            host.kinds.tasks[name] = replace(
                spec, datasets=_first(spec.datasets, samples, max(samples // 2, 1))
            )
    return host


def _first(factory: Callable[[Any], Any], train: int, val: int) -> Callable[[Any], Any]:
    def datasets(request: Any) -> Any:
        from dmtcore.tasks.spec import TaskData

        data = factory(request)
        if isinstance(data, tuple):
            data = TaskData(*data)
        return replace(data, train=_prefix(data.train, train), val=_prefix(data.val, val))

    return datasets


def _prefix(dataset: Any, n: int) -> Any:
    """The first n samples, still a TensorDataset where it was one (the engine caches those)."""
    from torch.utils.data import Subset, TensorDataset

    if len(dataset) <= n:
        return dataset
    if isinstance(dataset, TensorDataset):
        return TensorDataset(*(t[:n] for t in dataset.tensors))
    return Subset(dataset, range(n))


def grow_stores(
    folder: Path,
    growth: Growth,
    ks: Sequence[int],
    host: Any,
    settings: Any,
    connection: str = "ttc",
) -> dict[int, Path]:
    """Stores holding the first k frozen tasks for each k in `ks` (k = 0: an empty store of
    connection `none`, the single column's). The frozen columns are trained with `settings`
    (one epoch is enough for a timing benchmark) through the real add-task."""
    from dmtcore.operations import add_task, init_store

    stores = {}
    if 0 in ks:
        stores[0] = folder / f"{growth.name}-k0"
        init_store(
            stores[0],
            host,
            growth.input_spec,
            backbone=growth.backbone,
            connection="none",
            backbone_options=dict(growth.backbone_options),
        )
    wanted = sorted(k for k in ks if k > 0)
    if not wanted:
        return stores
    if wanted[-1] > len(growth.frozen):
        raise SystemExit(
            f"{growth.name}: at most {len(growth.frozen)} frozen columns, not {wanted[-1]}"
        )
    work = folder / f"{growth.name}-growing"
    init_store(
        work,
        host,
        growth.input_spec,
        backbone=growth.backbone,
        connection=connection,
        backbone_options=dict(growth.backbone_options),
    )
    for k, task in enumerate(growth.frozen[: wanted[-1]], start=1):
        add_task(work, task, host, settings, notify=quiet)
        if k in wanted:
            stores[k] = folder / f"{growth.name}-k{k}"
            shutil.copytree(work, stores[k])
    shutil.rmtree(work)
    return stores


def run_child(script: str, config: dict[str, Any], env: dict[str, str] | None = None) -> Any:
    """Run `script --child CONFIG` in a fresh process (a measured run that must not share this
    one's memory peak, caches or compiled code) and return the JSON its last line printed."""
    result = subprocess.run(
        [sys.executable, script, "--child", json.dumps(config)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    if result.returncode != 0:
        raise SystemExit(f"child failed ({config}): {result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def child_config() -> dict[str, Any] | None:
    """The config when this process is a `run_child` child, else None."""
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        return json.loads(sys.argv[2])
    return None


def fresh_copy(store: Path, folder: Path, label: str) -> Path:
    """A throwaway copy of a store for one measured run."""
    target = folder / f"run-{label}"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(store, target)
    return target
