"""Registry storage: bytes on disk of a store with embedded tracking and registry ÷ without.

Grows three stores side by side, one task at a time through the real add-task (each task is
added to every store before the next, so all three hold the same columns):

    off      --no-tracking: the store alone
    copies   embedded tracking and registry (`<store>/mlflow.db`, `<store>/mlartifacts`), every
             registered version keeping MLflow's own copies of its weights (linking turned off)
    links    the same, each logged weight file a hard link to the store's blob of that content
             (dmt's default where the artifacts are local files, `registry/artifact_links.py`)

After 4 and 8 tasks (the six digits tasks, then two of the benchmark's extra tasks on the same
images) it prints each store's bytes on disk, counted like `du` (allocated blocks, each inode
once however many names it has), split into blobs, mlflow.db and mlartifacts, and the ratio to
`off`. Every registry version publishes the whole store (two models: arrays and images), so
copies grow with versions × columns; links should grow by one column per task.

Three ratios to `off`: without the kept features (`features/`, the same cache in every
variant), with them (every file under the store), and counting every file once per name, as a
copy that does not keep hard links would (`rsync` without -H, zip, `cp -r` without -a; `du -l`).

    python benchmarks/registry_storage.py [--quick] [--epochs 2] [--json out.json]
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import _common as common

TASKS = (
    "digits.class",
    "digits.even",
    "digits.large",
    "digits.prime",
    "digits.loop",
    "digits.curved",
    "bench.digit-0",
    "bench.digit-1",
)
CHECKPOINTS = (4, 8)
VARIANTS = ("off", "copies", "links")
PARTS = ("blobs", "mlflow.db", "mlartifacts")
KEPT = "features"  # dmtcore.store.kept_features: not part of the total


def disk_bytes(
    path: Path, seen: set[tuple[int, int]] | None = None, every_name: bool = False
) -> int:
    """Bytes allocated under `path` (files and directories), each inode counted once like
    `du`: a hard link to a file already counted adds nothing; with `every_name`, once per
    name, like `du -l` (what a copy that does not keep hard links writes)."""
    seen = set() if seen is None else seen
    entries = [path]
    for root, dirs, files in os.walk(path):
        entries += [Path(root, name) for name in (*dirs, *files)]
    total = 0
    for entry in entries:
        info = os.lstat(entry)
        if every_name or (info.st_dev, info.st_ino) not in seen:
            seen.add((info.st_dev, info.st_ino))
            total += info.st_blocks * 512
    return total


def breakdown(store: Path) -> dict[str, int]:
    """The store's bytes on disk, and the parts in PARTS, counted in that order so that a
    weight file shared by blobs and mlartifacts counts in blobs only. The frozen columns'
    kept features (`features/`) are a cache within a budget of their own, the same in every
    variant whatever tracks: they are reported apart and left out of the total."""
    seen: set[tuple[int, int]] = set()
    parts = {part: disk_bytes(store / part, seen) for part in PARTS if (store / part).exists()}
    cache = disk_bytes(store / KEPT, set()) if (store / KEPT).exists() else 0
    whole = disk_bytes(store)
    every_name = disk_bytes(store, every_name=True)
    return {"total": whole - cache, **parts, KEPT: cache, "whole": whole, "every_name": every_name}


def grow(stores: dict[str, Path], template: Path, task: str, settings: Any) -> None:
    """Add `task` to every store, tracked and registered except in `off`."""
    from dmt_registry import artifact_links
    from dmt_registry.tracking import MlflowTracker, default_tracking_uri
    from dmtcore.operations import add_task

    for variant, store in stores.items():
        host = common.plugin_host()
        if variant != "off":
            if not (store / "mlflow.db").exists():
                store.mkdir(parents=True, exist_ok=True)
                shutil.copy(template, store / "mlflow.db")
            tracker = MlflowTracker(default_tracking_uri(store), embedded=True, register=True)
            host.register(tracker, "mlflow")
        artifact_links.LINKING = variant != "copies"
        try:
            add_task(store, task, host, settings, notify=common.quiet)
        finally:
            artifact_links.LINKING = True


def megabytes(value: int) -> float:
    return value / 1e6


def main() -> None:
    from mlflow.tracking import MlflowClient

    from dmtcore.train.loop import TrainSettings

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    parser = common.parser(__doc__.splitlines()[0], "registry_storage")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    settings = TrainSettings(epochs=1 if args.quick else args.epochs, **common.setup(args))
    checkpoints = (2, 3) if args.quick else CHECKPOINTS
    rows = []
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        template = folder / "template.db"
        MlflowClient(tracking_uri=f"sqlite:///{template}").search_experiments()
        stores = {variant: folder / variant for variant in VARIANTS}
        for k, task in enumerate(TASKS[: max(checkpoints)], start=1):
            grow(stores, template, task, settings)
            if k not in checkpoints:
                continue
            sizes = {variant: breakdown(store) for variant, store in stores.items()}
            for variant in VARIANTS:
                rows.append(
                    {
                        "tasks": k,
                        "variant": variant,
                        **sizes[variant],
                        "ratio": sizes[variant]["total"] / sizes["off"]["total"],
                        "ratio_whole": sizes[variant]["whole"] / sizes["off"]["whole"],
                        "ratio_every_name": (
                            sizes[variant]["every_name"] / sizes["off"]["every_name"]
                        ),
                    }
                )
    headers = ["tasks", "variant", "total MB", *(f"{p} MB" for p in PARTS), "÷ off", "target",
               "kept features MB (not in total)", "÷ off, with features",
               "÷ off, every name"]  # fmt: skip
    table = common.table(
        headers,
        [
            [
                r["tasks"],
                r["variant"],
                common.fmt(megabytes(r["total"])),
                *(common.fmt(megabytes(r.get(p, 0))) for p in PARTS),
                common.fmt(r["ratio"]),
                common.verdict(r["ratio"], 1.5) if r["variant"] != "off" else "",
                common.fmt(megabytes(r[KEPT])),
                common.fmt(r["ratio_whole"]),
                common.fmt(r["ratio_every_name"]),
            ]
            for r in rows
        ],
    )
    text = (
        f"bytes on disk (du: allocated blocks, each inode once), {settings.epochs} epoch(s) per "
        f"task, every version registered\n{table}"
    )
    common.report(args, text, {"epochs": settings.epochs, "rows": rows})


if __name__ == "__main__":
    main()
