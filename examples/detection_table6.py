"""Cross-stitch Table 6 on `scenes`: detection + box attributes, single-task, hard sharing,
cross-stitch (one unit per layer and per channel), ttc and ttc incremental side by side, with
the paper's figures beside ours.

The protocol of Misra et al. 2016 (§6, Table 6): object detection and per-object attribute
prediction, two region-level tasks, every method built from the same column and the same
heads so that only the sharing differs. Here the data is the offline `scenes` plugin
(`scenes.detection`: 3 shapes; `scenes.attributes`: 6 attributes per box) instead of
attribute-PASCAL (20 classes, 64 attributes), the column the spatial `dmt-cnn` instead of
AlexNet, and the detector FCOS instead of Fast R-CNN (docs/detection.md says why):

    single-task         each task alone: one column, no connections (connection kind `none`)
    hard sharing        one trunk, a head per task, trained jointly (the paper's MTL-shared)
    cross-stitch/layer  two columns joined by cross-stitch units with one weight per source
                        and layer (`granularity=layer`: the paper's choice for this pair)
    cross-stitch/chan.  the same with one weight per source and channel (the default, which
                        the paper found unstable for these tasks)
    ttc                 two columns joined by TTC gates, trained jointly (dmt's own, DMT §4.1)
    ttc incremental     dmt's way: detection added first, then attributes as a new column
                        reading the frozen detection column; detection's boxes and scores are
                        checked bit-identical before and after (the row says so)

The attribute loss is the paper's (binary cross-entropy over foreground boxes, scaled by
1/A); both tasks' losses weigh 1. Each run keeps its best epoch on the plugin's validation
split (200 scenes) and is scored on 200 further scenes rendered with another seed
(`TEST_SEED`). Detection mAP is VOC's AP at IoU 0.5 (Table 6's metric), attribute mAP the
mean over attributes of AP over the ground-truth boxes; COCO's mAP@[.5:.95] is shown beside.

The paper's figures (Table 6, AlexNet on attribute-PASCAL): one-task, MTL-shared and
cross-stitch. Its ensemble and split rows have no counterpart here; ttc has no paper figure.

    python examples/detection_table6.py [--epochs 4] [--seeds 0] [--input 3x48x48]
        [--methods ...] [--json out.json] [--quick]
    python examples/detection_table6.py --merge seed0.json seed1.json   # one table of both
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
from torch.utils.data import Subset

from dmtcore.errors import DmtError
from dmtcore.hooks.host import PluginHost, create_plugin_host
from dmtcore.operations import (
    DataOptions,
    evaluate_store,
    init_store,
    load_current,
    train_tasks,
)
from dmtcore.tasks.names import InputSpec
from dmtcore.tasks.spec import DataRequest, TaskData, TaskSpec
from dmtcore.train.loop import TrainSettings

DETECTION, ATTRIBUTES = "scenes.detection", "scenes.attributes"
TASKS = (DETECTION, ATTRIBUTES)
LABEL_KEYS = {DETECTION: ("boxes", "labels"), ATTRIBUTES: ("boxes", "attributes")}
TEST_SEED = 3  # the plugin's splits use seeds 1 (train) and 2 (val)
TEST_SIZE = 200
QUICK_SIZES = {"train": 48, "val": 16, "test": 16}
# Our columns: (label, task, metric), in %, in the order printed.
COLUMNS = (
    ("det mAP@.5", DETECTION, "map_50"),
    ("det mAP", DETECTION, "map"),
    ("attr mAP", ATTRIBUTES, "attribute_map"),
)
# Table 6, in our column order (the paper gives no COCO mAP).
PAPER = {
    "single-task": (44.9, None, 60.9),  # "One-task"
    "hard sharing": (42.7, None, 54.1),  # "MTL-shared"
    "cross-stitch/layer": (45.2, None, 63.0),  # "Cross-stitch [ours]", one unit per layer
}
# Row -> (connection kind, its options) of a store trained jointly; None for the rows run
# differently.
METHODS: dict[str, tuple[str, dict[str, Any]] | None] = {
    "single-task": None,
    "hard sharing": None,
    "cross-stitch/layer": ("cross-stitch", {"granularity": "layer"}),
    "cross-stitch/chan.": ("cross-stitch", {}),
    "ttc": ("ttc", {}),
    "ttc incremental": None,
}
Scores = dict[str, dict[str, float]]


@lru_cache(maxsize=2)
def test_scenes(height: int, width: int) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """TEST_SIZE scenes no split of the plugin contains, and their objects, rendered once."""
    from dmt_plugins.scenes import object_boxes, render_scenes

    data = render_scenes(TEST_SIZE, height, width, TEST_SEED)
    objects = object_boxes(data["instance"], data["object_class"], data["object_attributes"])
    return torch.from_numpy(data["images"]), objects


def with_test_split(host: PluginHost, quick: bool, attribute_train: int | None) -> PluginHost:
    """The same plugins, except that the two tasks also serve a test split (and, in quick
    mode, only a few samples of each split; with `attribute_train`, the attributes task only
    the boxes of that many training scenes: data-starved, as the paper calls attribute
    prediction beside detection)."""
    registry = host.kinds
    tasks = dict(registry.tasks)
    for name in TASKS:
        keep = attribute_train if name == ATTRIBUTES else None
        tasks[name] = replace(tasks[name], datasets=_datasets(tasks[name], name, quick, keep))
    wrapped = type(registry)()
    wrapped.__dict__.update(registry.__dict__)
    wrapped.tasks = tasks
    return PluginHost(host.manager, wrapped, host.plugins)


def _datasets(
    spec: TaskSpec, name: str, quick: bool, keep: int | None
) -> Callable[[DataRequest], TaskData]:
    from dmt_plugins.scenes import SceneRegions

    def datasets(request: DataRequest) -> TaskData:
        data = spec.datasets(request)
        shape = request.input_spec or InputSpec.from_shape(spec.input_shape)
        images, objects = test_scenes(shape.height, shape.width)
        splits = {"train": data.train, "val": data.val}
        if quick:
            splits = {k: _head(v, QUICK_SIZES[k]) for k, v in splits.items()}
        if keep is not None:
            splits["train"] = _head(splits["train"], keep)
        test = SceneRegions(images, objects, LABEL_KEYS[name])
        splits["test"] = _head(test, QUICK_SIZES["test"]) if quick else test
        return TaskData(**splits, deterministic=True)

    return datasets


def _head(regions: Any, count: int) -> Subset:
    """The first `count` images of a split."""
    return Subset(regions, range(min(count, len(regions))))


def run_store(
    host: PluginHost,
    kind: str,
    options: dict[str, Any],
    groups: list[list[str]],
    setup: dict[str, Any],
    settings: TrainSettings,
) -> tuple[Scores, dict[str, Any]]:
    """Train each group of tasks jointly, one after the other, in one fresh store of
    connection kind `kind`; test metrics. With several groups (the incremental row) the first
    group's detections on test images are compared before and after the later ones are added."""
    data = DataOptions()
    spec: InputSpec = setup["input"]
    extra: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as folder:
        store = Path(folder) / "store"
        init_store(
            store,
            host,
            spec,
            connection=kind,
            connection_options=options,
            backbone_options={"spatial": True},
        )
        for index, group in enumerate(groups):
            train_tasks(store, group, host, settings, data, notify=lambda message: None)
            if index == 0 and len(groups) > 1:
                before = detections(store, host, spec)
        if len(groups) > 1:
            extra["unchanged"] = same_detections(before, detections(store, host, spec))
        names = [t for group in groups for t in group]
        metrics = evaluate_store(store, host, names, "test", settings, data)
    return metrics, extra


def detections(store: Path, host: PluginHost, spec: InputSpec) -> list[dict[str, torch.Tensor]]:
    """The stored detection task's boxes, scores and labels on 64 test images."""
    model, _ = load_current(store, host)
    model.eval()
    images = test_scenes(spec.height, spec.width)[0][:64]
    with torch.inference_mode():
        return model(images, [DETECTION])[DETECTION].detections(0.05)


def same_detections(
    before: list[dict[str, torch.Tensor]], after: list[dict[str, torch.Tensor]]
) -> bool:
    return len(before) == len(after) and all(
        b.keys() == a.keys() and all(torch.equal(b[k], a[k]) for k in b)
        for b, a in zip(before, after, strict=True)
    )


def run_hard_sharing(
    host: PluginHost, setup: dict[str, Any], settings: TrainSettings
) -> tuple[Scores, dict[str, Any]]:
    """One trunk shared by both tasks, a head each, trained jointly; test metrics."""
    scores = comparison.hard_sharing_scores(
        host, TASKS, setup["input"], "dmt-cnn", {"spatial": True}, settings
    )
    return scores, {}


def run_method(
    host: PluginHost, method: str, setup: dict[str, Any], settings: TrainSettings
) -> tuple[Scores, dict[str, Any]]:
    if method == "hard sharing":
        return run_hard_sharing(host, setup, settings)
    if method == "ttc incremental":
        return run_store(host, "ttc", {}, [[DETECTION], [ATTRIBUTES]], setup, settings)
    if method == "single-task":  # each task alone, in its own store, with its own best epoch
        scores: Scores = {}
        for task in TASKS:
            scores.update(run_store(host, "none", {}, [[task]], setup, settings)[0])
        return scores, {}
    chosen = METHODS[method]
    assert chosen is not None
    return run_store(host, *chosen, [list(TASKS)], setup, settings)


def row_values(scores: Scores) -> list[float]:
    """Our figures in COLUMNS order, in %."""
    return [scores[task][metric] * 100 for _, task, metric in COLUMNS]


def average(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and spread over seeds, with the runs themselves (for `--merge`)."""
    return {**comparison.average(runs), "runs": runs}


def ordering(values: dict[str, list[float | None]], column: int) -> str:
    return comparison.ordering(values, column, higher_is_better=True)


def print_table(results: dict[str, dict[str, Any]], title: str) -> None:
    print(f"\n{title}")
    header = ["method", "", *(c[0] for c in COLUMNS), "time"]
    rows: list[list[str]] = []
    for method, result in results.items():
        if method in PAPER:
            paper = ["" if v is None else f"{v:.1f}" for v in PAPER[method]]
            rows.append([method, "paper", *paper, ""])
        ours = [f"{v:.1f}" for v in result["values"]]
        if len(result["runs"]) > 1:
            ours = [f"{v}±{s:.1f}" for v, s in zip(ours, result["spread"], strict=True)]
        name = "" if method in PAPER else method
        rows.append([name, "ours", *ours, f"{result['seconds']:.0f}s"])
    comparison.print_rows(header, rows)
    print("mAP in %; time: wall seconds per run of the row.")
    incremental = results.get("ttc incremental")
    if incremental:
        same = "bit-identical" if incremental["unchanged"] else "CHANGED (a bug)"
        print(f"ttc incremental: detection's boxes and scores after attributes was added: {same}.")
    compared = [m for m in PAPER if m in results]
    paper = {m: list(PAPER[m]) for m in compared}
    ours: dict[str, list[float | None]] = {m: list(results[m]["values"]) for m in compared}
    everything: dict[str, list[float | None]] = {m: list(r["values"]) for m, r in results.items()}
    for column in (0, 2):
        label = COLUMNS[column][0]
        if len(compared) > 1:
            print(f"order by {label}, paper (Table 6): {ordering(paper, column)}")
            print(f"order by {label}, ours:            {ordering(ours, column)}")
        print(f"order by {label}, all our rows:    {ordering(everything, column)}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", default="3x48x48", help="CxHxW of every store (default 3x48x48)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument(
        "--methods", nargs="+", choices=list(METHODS), default=list(METHODS), metavar="METHOD"
    )
    parser.add_argument(
        "--quick", action="store_true", help="32x32, 1 epoch, a few samples (a smoke test)"
    )
    parser.add_argument(
        "--attribute-train",
        type=int,
        default=None,
        metavar="N",
        help="data-starved attributes: that task keeps the boxes of only N training scenes "
        "(detection keeps all)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        default=None,
        metavar="JSON",
        help="train nothing: print the table of earlier --json files together (a comparison "
        "split over processes, e.g. one per seed)",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.merge:
        runs, setting = merged(args.merge)
        report({m: average(r) for m, r in runs.items()}, setting, args.json)
        return
    torch.set_num_threads(args.threads)
    setting = {
        "input": "3x32x32" if args.quick else args.input,
        "epochs": 1 if args.quick else args.epochs,
        "batch_size": args.batch_size,
        "optimizer": args.optimizer,
        "lr": args.lr,
        "threads": args.threads,
        "test_scenes": QUICK_SIZES["test"] if args.quick else TEST_SIZE,
        "attribute_train": args.attribute_train,
        "seeds": args.seeds,
    }
    results: dict[str, dict[str, Any]] = {}
    try:
        setup = {"input": InputSpec.parse(setting["input"])}
        host = with_test_split(create_plugin_host(), args.quick, args.attribute_train)
        for method in args.methods:
            runs = []
            for seed in args.seeds:
                settings = TrainSettings(
                    epochs=setting["epochs"],
                    batch_size=args.batch_size,
                    lr=args.lr,
                    optimizer=args.optimizer,
                    seed=seed,
                    device=args.device,
                )
                started = time.perf_counter()
                scores, extra = run_method(host, method, setup, settings)
                seconds = time.perf_counter() - started
                run = {"seed": seed, "values": row_values(scores), "seconds": seconds, **extra}
                runs.append(run)
                shown = " ".join(f"{v:.1f}" for v in run["values"])
                print(
                    f"{method} seed {seed}: {shown} ({seconds:.0f}s)", file=sys.stderr, flush=True
                )
            results[method] = average(runs)
    except DmtError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    report(results, setting, args.json)


def report(results: dict[str, dict[str, Any]], setting: dict[str, Any], out: Path | None) -> None:
    seeds = setting["seeds"]
    epochs = setting["epochs"]
    kept = setting.get("attribute_train")
    starved = f", attributes on {kept} training scenes" if kept else ""
    title = (
        f"scenes detection + attributes, test ({setting['test_scenes']} scenes): paper "
        f"(attribute-PASCAL, AlexNet, Fast R-CNN) vs ours (dmt-cnn spatial=true, FCOS, input "
        f"{setting['input']}{starved}, {epochs} epoch{'s' if epochs > 1 else ''}, batch "
        f"{setting['batch_size']}, {setting['optimizer']} lr {setting['lr']:g}, "
        f"seed{'s' if len(seeds) > 1 else ''} {' '.join(map(str, seeds))}, {setting['threads']} "
        f"thread{'s' if setting['threads'] > 1 else ''})"
    )
    print_table(results, title)
    if out:
        out.write_text(
            json.dumps(
                {
                    "title": title,
                    "setting": setting,
                    "columns": [c[0] for c in COLUMNS],
                    "paper": PAPER,
                    "results": results,
                },
                indent=2,
            )
        )


def merged(paths: list[Path]) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """The per-seed runs of several earlier `--json` files, by method in METHODS order: one
    comparison split over processes or machines. Their settings must agree but for the seeds."""
    runs: dict[str, list[dict[str, Any]]] = {}
    setting: dict[str, Any] | None = None
    for path in paths:
        saved = json.loads(path.read_text())
        # Files written before --attribute-train existed trained every task on full data.
        other = {"attribute_train": None} | {
            k: v for k, v in saved["setting"].items() if k != "seeds"
        }
        if setting is None:
            setting = {**other, "seeds": []}
        elif {k: v for k, v in setting.items() if k != "seeds"} != other:
            raise SystemExit(f"{path}: other settings than the first file's: {other}")
        for method, result in saved["results"].items():
            runs.setdefault(method, []).extend(result["runs"])
    assert setting is not None
    setting["seeds"] = sorted({run["seed"] for method in runs.values() for run in method})
    return {m: runs[m] for m in METHODS if m in runs}, setting


if __name__ == "__main__":
    main()
