"""NDDR-CNN Table 4 on `scenes`: segmentation + surface normals, single-task, hard sharing,
cross-stitch, NDDR, NDDR-shortcut and ttc side by side, with the paper's figures beside ours.

The protocol of Gao et al. 2019 (§4–5, Table 4): two pixel-level tasks, semantic segmentation
(softmax cross-entropy) and surface normals (the cosine loss), every method built from the same
column and the same dense head, so that only the connections differ. Here the data is the offline
`scenes` plugin (`scenes.segmentation`, 5 classes, and `scenes.normals`) instead of NYU v2, and
the column is the spatial `dmt-cnn` (output stride 8) instead of Deeplab-VGG-16:

    single-task      each task alone: one column, no connections (connection kind `none`)
    hard sharing     one trunk, a head per task, trained jointly (`dmtcore.model.baselines`)
    cross-stitch     two columns joined by cross-stitch units, trained jointly
    NDDR             two columns joined by NDDR layers, trained jointly (`nddr`)
    NDDR-shortcut    NDDR plus the shortcut into the last stage (`nddr-shortcut`)
    ttc              two columns joined by TTC gates, trained jointly (dmt's own, DMT §4.1)
    ttc incremental  dmt's way: segmentation added first, then normals added as a new column
                     reading the frozen segmentation column; segmentation's outputs are checked
                     bit-identical before and after (the row says so)

Every connected method trains the pair jointly, as the paper does: both columns and the
connections learn together, each step taking turns over the two tasks. The paper initialises
from single-task networks (§4.3) and trains Deeplab for many iterations; we train from scratch
with Adam for a few epochs, which is what a 2-core CPU allows. Each run keeps its best epoch on
the plugin's validation split (200 scenes) and is scored on 200 further scenes rendered with
another seed (`TEST_SEED`), so that no figure is chosen on the images it is measured on.

The paper's figures: Table 4 (VGG-16) for single-task, multi-task (hard sharing), cross-stitch
and NDDR; NDDR-shortcut is Table 6's NDDR row (VGG-16-Shortcut), whose own baselines differ
slightly. The paper's sluice network has no counterpart here; ttc has no paper figure.

Cost, on a 2-core CPU shared with other jobs, with `torch.set_num_threads(1)` (`--threads`):
the default (2 epochs) took 13 minutes (one run of single-task, which trains two columns,
and of each jointly trained pair ~1.5–2.5 minutes; hard sharing and ttc incremental ~1.3).
That is far less training than the paper's, so read the table as a short-budget comparison
whose one-seed differences of a point or so are within noise; `--epochs` and `--seeds 0 1 2`
(averaged, the spread shown) buy a steadier reading at that cost per epoch and per seed.

    python examples/dense_tables.py [--epochs 2] [--seeds 0] [--input 3x64x64]
        [--backbone resnet18 --backbone-option dilated=true] [--json out.json] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import _comparison as comparison
import torch
from torch.utils.data import TensorDataset

from dmtcore.errors import DmtError
from dmtcore.hooks.host import PluginHost, create_plugin_host
from dmtcore.operations import (
    DataOptions,
    evaluate_store,
    init_store,
    load_current,
    train_tasks,
)
from dmtcore.tasks.names import InputSpec, parse_option
from dmtcore.tasks.spec import DataRequest, TaskData, TaskSpec
from dmtcore.train.loop import TrainSettings

SEGMENTATION, NORMALS = "scenes.segmentation", "scenes.normals"
TASKS = (SEGMENTATION, NORMALS)
TEST_SEED = 3  # the plugin's splits use seeds 1 (train) and 2 (val)
TEST_SIZE = 200
QUICK_SIZES = {"train": 48, "val": 24, "test": 24}
# Our columns: (label, task, metric, percent?) in the order printed.
COLUMNS = (
    ("mIoU", SEGMENTATION, "miou", True),
    ("PAcc", SEGMENTATION, "pixel_accuracy", True),
    ("mean", NORMALS, "mean_angle", False),
    ("median", NORMALS, "median_angle", False),
    ("≤11.25°", NORMALS, "within_11_25", True),
    ("≤22.5°", NORMALS, "within_22_5", True),
    ("≤30°", NORMALS, "within_30", True),
)
LOWER_IS_BETTER = {"mean", "median"}
# NDDR-CNN, in our column order: mIoU, PAcc, mean, median, ≤11.25°, ≤22.5°, ≤30°.
PAPER = {
    "single-task": (33.5, 64.1, 15.6, 12.3, 46.4, 75.5, 86.5),  # Table 4 "Sing."
    "hard sharing": (33.4, 64.2, 15.2, 11.7, 48.4, 76.2, 87.0),  # Table 4 "Mul."
    "cross-stitch": (34.8, 65.0, 15.2, 11.7, 48.6, 76.0, 86.5),  # Table 4 "CS."
    "NDDR": (36.2, 66.4, 13.9, 10.2, 53.5, 79.5, 88.8),  # Table 4 "Ours"
    "NDDR-shortcut": (36.7, 67.0, 13.5, 9.8, 55.3, 80.5, 89.3),  # Table 6 "Ours"
}
# Row -> connection kind of a store trained jointly; None for the rows run differently.
METHODS: dict[str, str | None] = {
    "single-task": "none",
    "hard sharing": None,
    "cross-stitch": "cross-stitch",
    "NDDR": "nddr",
    "NDDR-shortcut": "nddr-shortcut",
    "ttc": "ttc",
    "ttc incremental": None,
}
Scores = dict[str, dict[str, float]]


@lru_cache(maxsize=2)
def test_scenes(height: int, width: int) -> dict[str, torch.Tensor]:
    """TEST_SIZE scenes no split of the plugin contains, rendered once per size."""
    from dmt_plugins.scenes import render_scenes

    data = render_scenes(TEST_SIZE, height, width, TEST_SEED)
    return {key: torch.from_numpy(data[key]) for key in ("images", "segmentation", "normals")}


def with_test_split(host: PluginHost, quick: bool) -> PluginHost:
    """The same plugins, except that the two tasks also serve a test split (and, in quick
    mode, only a few samples of each split). Both tasks slice the same image tensors, so the
    engine still evaluates them in one forward pass."""
    registry = host.kinds
    tasks = dict(registry.tasks)
    for name in TASKS:
        tasks[name] = replace(tasks[name], datasets=_datasets(tasks[name], name, quick))
    wrapped = type(registry)()
    wrapped.__dict__.update(registry.__dict__)
    wrapped.tasks = tasks
    return PluginHost(host.manager, wrapped, host.plugins)


def _datasets(spec: TaskSpec, name: str, quick: bool) -> Callable[[DataRequest], TaskData]:
    label = name.split(".", 1)[1]

    def datasets(request: DataRequest) -> TaskData:
        data = spec.datasets(request)
        shape = request.input_spec or InputSpec.from_shape(spec.input_shape)
        test = test_scenes(shape.height, shape.width)
        splits = {
            "train": data.train.tensors,
            "val": data.val.tensors,
            "test": (test["images"], test[label]),
        }
        if quick:
            splits = {k: tuple(t[: QUICK_SIZES[k]] for t in v) for k, v in splits.items()}
        return TaskData(**{k: TensorDataset(*v) for k, v in splits.items()})

    return datasets


@lru_cache(maxsize=1)
def test_batch(height: int, width: int) -> torch.Tensor:
    return test_scenes(height, width)["images"][:64]


def run_store(
    host: PluginHost,
    kind: str,
    groups: list[list[str]],
    setup: dict[str, Any],
    settings: TrainSettings,
) -> tuple[Scores, dict[str, Any]]:
    """Train each group of tasks jointly, one after the other, in one fresh store of
    connection kind `kind`; test metrics. With several groups (the incremental row) the first
    group's outputs on test images are compared before and after the later ones are added."""
    data = DataOptions()
    spec: InputSpec = setup["input"]
    extra: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as folder:
        store = Path(folder) / "store"
        init_store(
            store,
            host,
            spec,
            backbone=setup["backbone"],
            connection=kind,
            backbone_options=setup["options"],
        )
        first = groups[0]
        for index, group in enumerate(groups):
            train_tasks(store, group, host, settings, data, notify=lambda message: None)
            if index == 0 and len(groups) > 1:
                before = first_outputs(store, host, first, spec)
        if len(groups) > 1:
            after = first_outputs(store, host, first, spec)
            extra["unchanged"] = all(torch.equal(before[t], after[t]) for t in first)
        names = [t for group in groups for t in group]
        metrics = evaluate_store(store, host, names, "test", settings, data)
    return metrics, extra


def first_outputs(
    store: Path, host: PluginHost, tasks: list[str], spec: InputSpec
) -> dict[str, torch.Tensor]:
    """The stored model's raw outputs for `tasks` on a batch of test images."""
    model, _ = load_current(store, host)
    model.eval()
    with torch.inference_mode():
        return {t: v.clone() for t, v in model(test_batch(spec.height, spec.width), tasks).items()}


def run_hard_sharing(
    host: PluginHost, setup: dict[str, Any], settings: TrainSettings
) -> tuple[Scores, dict[str, Any]]:
    """One trunk shared by both tasks, a head each, trained jointly; test metrics."""
    scores = comparison.hard_sharing_scores(
        host, TASKS, setup["input"], setup["backbone"], setup["options"], settings
    )
    return scores, {}


def run_method(
    host: PluginHost, method: str, setup: dict[str, Any], settings: TrainSettings
) -> tuple[Scores, dict[str, Any]]:
    kind = METHODS[method]
    if method == "hard sharing":
        return run_hard_sharing(host, setup, settings)
    if method == "ttc incremental":
        return run_store(host, "ttc", [[SEGMENTATION], [NORMALS]], setup, settings)
    if method == "single-task":  # each task alone, in its own store, with its own best epoch
        scores: Scores = {}
        for task in TASKS:
            scores.update(run_store(host, "none", [[task]], setup, settings)[0])
        return scores, {}
    assert kind is not None
    return run_store(host, kind, [list(TASKS)], setup, settings)


def row_values(scores: Scores) -> list[float]:
    """Our figures in COLUMNS order, in the paper's units (% or degrees)."""
    return [scores[task][metric] * (100 if percent else 1) for _, task, metric, percent in COLUMNS]


def ordering(values: dict[str, list[float]], column: int) -> str:
    """Methods from best to worst on one column."""
    higher = COLUMNS[column][0] not in LOWER_IS_BETTER
    return comparison.ordering(values, column, higher)


def print_table(results: dict[str, dict[str, Any]], title: str, seeds: list[int]) -> None:
    print(f"\n{title}")
    header = ["method", "", *(c[0] for c in COLUMNS), "time"]
    rows: list[list[str]] = []
    for method, result in results.items():
        if method in PAPER:
            rows.append([method, "paper", *(f"{v:.1f}" for v in PAPER[method]), ""])
        ours = [f"{v:.1f}" for v in result["values"]]
        if len(seeds) > 1:
            ours = [f"{v}±{s:.1f}" for v, s in zip(ours, result["spread"], strict=True)]
        name = "" if method in PAPER else method
        rows.append([name, "ours", *ours, f"{result['seconds']:.0f}s"])
    comparison.print_rows(header, rows)
    print(
        "mIoU, PAcc and ≤t° in %, mean/median angle error in degrees (lower is better); "
        "time: wall seconds per run of the row."
    )
    incremental = results.get("ttc incremental")
    if incremental:
        same = "bit-identical" if incremental["unchanged"] else "CHANGED (a bug)"
        print(f"ttc incremental: segmentation's outputs after normals was added: {same}.")
    compared = [m for m in PAPER if m in results and m != "NDDR-shortcut"]
    paper = {m: list(PAPER[m]) for m in compared}
    ours = {m: results[m]["values"] for m in compared}
    for column in (0, 2):
        label = COLUMNS[column][0]
        print(f"order by {label}, paper (Table 4): {ordering(paper, column)}")
        print(f"order by {label}, ours:            {ordering(ours, column)}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", default="3x64x64", help="CxHxW of every store (default 3x64x64)")
    parser.add_argument("--backbone", default="dmt-cnn")
    parser.add_argument(
        "--backbone-option",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="column options (default spatial=true for dmt-cnn); e.g. dilated=true for resnet18",
    )
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    parser.add_argument(
        "--connection-lr-mult",
        type=float,
        default=None,
        help="override every connection kind's learning-rate multiplier (default: each kind's own)",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument(
        "--methods", nargs="+", choices=list(METHODS), default=list(METHODS), metavar="METHOD"
    )
    parser.add_argument(
        "--quick", action="store_true", help="16x16, 1 epoch, a few samples (a smoke test)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    epochs = 1 if args.quick else args.epochs
    results: dict[str, dict[str, Any]] = {}
    per_seed: dict[str, list[dict[str, Any]]] = {}
    try:
        options = dict(parse_option(o) for o in args.backbone_option or [])
        if args.backbone_option is None and args.backbone == "dmt-cnn":
            options = {"spatial": True}
        setup = {
            "input": InputSpec.parse("3x16x16" if args.quick else args.input),
            "backbone": args.backbone,
            "options": options,
        }
        host = with_test_split(create_plugin_host(), args.quick)
        for method in args.methods:
            per_seed[method] = []
            for seed in args.seeds:
                settings = TrainSettings(
                    epochs=epochs,
                    batch_size=args.batch_size,
                    lr=args.lr,
                    optimizer=args.optimizer,
                    connection_lr_mult=args.connection_lr_mult,
                    seed=seed,
                    device=args.device,
                )
                started = time.perf_counter()
                scores, extra = run_method(host, method, setup, settings)
                seconds = time.perf_counter() - started
                run = {"seed": seed, "values": row_values(scores), "seconds": seconds, **extra}
                per_seed[method].append(run)
                shown = " ".join(f"{v:.1f}" for v in run["values"])
                print(
                    f"{method} seed {seed}: {shown} ({seconds:.0f}s)", file=sys.stderr, flush=True
                )
            results[method] = comparison.average(per_seed[method])
    except DmtError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    described = ", ".join(f"{k}={json.dumps(v)}" for k, v in options.items()) or "defaults"
    seeds = " ".join(map(str, args.seeds))
    multiplier = (
        f" (connections x{args.connection_lr_mult:g})"
        if args.connection_lr_mult is not None
        else ""
    )
    title = (
        f"scenes segmentation + normals, test ({TEST_SIZE if not args.quick else QUICK_SIZES['test']} "
        f"scenes): paper (NYU v2, VGG-16) vs ours ({args.backbone} {described}, input "
        f"{setup['input']}, {epochs} epoch{'s' if epochs > 1 else ''}, batch {args.batch_size}, "
        f"{args.optimizer} lr {args.lr:g}{multiplier}, seed{'s' if len(args.seeds) > 1 else ''} {seeds}, "
        f"{args.threads} thread{'s' if args.threads > 1 else ''})"
    )
    print_table(results, title, args.seeds)
    if args.json:
        payload = {
            "title": title,
            "columns": [c[0] for c in COLUMNS],
            "paper": PAPER,
            "results": results,
            "runs": per_seed,
        }
        args.json.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
