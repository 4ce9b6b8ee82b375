"""ST, MT, DMT, NDDR and cross-stitch side by side, like DMT Table 5, on digits and shapes.

Every method trains the same task group on the same data with the same settings:

    ST            one column per task, no connections (connection kind `none`)
    MT            hard sharing: one trunk, one head per task (`dmtcore.model.baselines`)
    DMT           columns joined by TTC gates, trained jointly (`ttc`)
    NDDR          NDDR layers at every stage boundary (`nddr`)
    NDDR-short.   NDDR plus the shortcut into the last stage (`nddr-shortcut`)
    cross-stitch  cross-stitch units (`cross-stitch`)

Each group is run twice: with full training data, and "data-starved", where the last task
keeps only a few training samples (Misra et al. report the largest gains there). The table
shows each task's validation primary metric (accuracy, or balanced accuracy for binary tasks).

    python examples/compare_methods.py [--quick] [--epochs 6] [--starved 60] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Subset

from dmtcore.hooks.host import PluginHost, create_plugin_host
from dmtcore.model.baselines import HardSharingModel
from dmtcore.operations import DataOptions, init_store, make_target, train_tasks
from dmtcore.tasks.names import InputSpec
from dmtcore.tasks.spec import TaskData, TaskSpec
from dmtcore.train.loop import TrainSettings, fit

GROUPS = {
    "digits": (InputSpec(1, 8, 8), ["digits.class", "digits.even", "digits.prime"]),
    "shapes": (InputSpec(3, 12, 12), ["shapes.kind", "shapes.colour", "shapes.red-circle"]),
}
METHODS = {
    "ST": "none",
    "MT": None,
    "DMT": "ttc",
    "NDDR": "nddr",
    "NDDR-short.": "nddr-shortcut",
    "cross-stitch": "cross-stitch",
}


def starve(host: PluginHost, task: str, samples: int, seed: int) -> PluginHost:
    """The same plugins, except that `task` keeps only `samples` training images."""
    spec = host.kinds.tasks[task]

    def datasets(request: Any) -> TaskData:
        data = spec.datasets(request)
        keep = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(seed))
        return replace(data, train=Subset(data.train, keep[:samples].tolist()))

    registry = host.kinds
    starved = type(registry)()
    starved.__dict__.update(registry.__dict__)
    starved.tasks = {**registry.tasks, task: replace(spec, datasets=datasets)}
    return PluginHost(host.manager, starved, host.plugins)


def run_dmt_store(
    host: PluginHost,
    kind: str,
    spec: InputSpec,
    tasks: list[str],
    settings: TrainSettings,
    sequential: bool = False,
) -> dict[str, float]:
    """Train `tasks` into a fresh store of `kind`: jointly, or one add-task after another
    (each new column reading the frozen earlier ones, DMT's incremental way)."""
    with tempfile.TemporaryDirectory() as folder:
        store = Path(folder) / "store"
        init_store(store, host, spec, connection=kind)
        scores = {}
        for group in [[t] for t in tasks] if sequential else [tasks]:
            result = train_tasks(store, group, host, settings, notify=lambda message: None)
            scores.update({t: result.metrics[t] for t in group})
    return {t: scores[t][host.kinds.tasks[t].primary_metric] for t in tasks}


def run_hard_sharing(
    host: PluginHost, spec: InputSpec, tasks: list[str], settings: TrainSettings
) -> dict[str, float]:
    specs: list[TaskSpec] = [host.kinds.tasks[t] for t in tasks]
    device = torch.device("cpu")
    targets = [make_target(s, spec, settings, DataOptions(), device) for s in specs]
    torch.manual_seed(settings.seed)
    model = HardSharingModel(spec, host.kinds.backbone("dmt-cnn"), {}, specs)
    result = fit(model, targets, settings)
    return {s.name: result.metrics[s.name][s.primary_metric] for s in specs}


def _names(text: str, valid: Any, what: str) -> list[str]:
    names = [n for n in text.split(",") if n]
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise SystemExit(f"unknown {what} {unknown[0]!r}; valid: {', '.join(valid)}")
    return names


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument(
        "--starved", type=int, default=60, help="training samples of the starved task"
    )
    parser.add_argument(
        "--quick", action="store_true", help="digits, full data, 1 epoch (a smoke test)"
    )
    parser.add_argument("--groups", default=",".join(GROUPS), help="comma-separated task groups")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods")
    parser.add_argument("--settings", default="full,starved", help="full, starved or both")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (one run per seed)")
    parser.add_argument("--optimizer", default="adam", choices=("adam", "sgd"))
    parser.add_argument(
        "--lr-mults",
        default="",
        help="comma-separated connection LR multipliers: each connected method runs once per "
        "value (a sweep); default: each kind's own default for the optimiser",
    )
    parser.add_argument(
        "--sequential",
        action="store_true",
        help="add the tasks one at a time (add-task) instead of jointly; MT is skipped",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    epochs = 1 if args.quick else args.epochs
    groups = {
        g: GROUPS[g] for g in (["digits"] if args.quick else _names(args.groups, GROUPS, "group"))
    }
    settings_to_run = (
        ("full",) if args.quick else tuple(_names(args.settings, ("full", "starved"), "setting"))
    )
    methods = _names(args.methods, METHODS, "method")
    if args.sequential:
        methods = [m for m in methods if METHODS[m] is not None]
    mults: list[float | None] = [float(m) for m in args.lr_mults.split(",") if m] or [None]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    host = create_plugin_host()
    results: list[dict[str, Any]] = []
    for group, (spec, tasks) in groups.items():
        for setting in settings_to_run:
            setting_host = host if setting == "full" else starve(host, tasks[-1], args.starved, 0)
            for method in methods:
                kind = METHODS[method]
                for mult in mults if kind not in (None, "none") else [None]:
                    for seed in seeds:
                        settings = TrainSettings(
                            epochs=epochs,
                            batch_size=64,
                            seed=seed,
                            optimizer=args.optimizer,
                            connection_lr_mult=mult,
                        )
                        started = time.perf_counter()
                        if kind is None:
                            scores = run_hard_sharing(setting_host, spec, tasks, settings)
                        else:
                            scores = run_dmt_store(
                                setting_host, kind, spec, tasks, settings, args.sequential
                            )
                        seconds = time.perf_counter() - started
                        label = method if mult is None else f"{method} x{mult:g}"
                        results.append(
                            {
                                "group": group,
                                "setting": setting,
                                "method": label,
                                "lr_mult": mult,
                                "seed": seed,
                                "scores": scores,
                                "seconds": seconds,
                            }
                        )
                        print(
                            f"{group:7} {setting:8} {label:18} seed {seed} "
                            + "  ".join(f"{t} {v:.3f}" for t, v in scores.items())
                            + f"  ({seconds:.0f}s)",
                            file=sys.stderr,
                            flush=True,
                        )
    print_table(results, groups, settings_to_run, args.starved)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "epochs": epochs,
                    "starved": args.starved,
                    "optimizer": args.optimizer,
                    "sequential": args.sequential,
                    "results": results,
                },
                indent=2,
            )
        )


def print_table(
    results: list[dict[str, Any]], groups: dict[str, Any], settings: tuple[str, ...], starved: int
) -> None:
    for group, (spec, tasks) in groups.items():
        for setting in settings:
            rows = [r for r in results if r["group"] == group and r["setting"] == setting]
            note = f" ({tasks[-1]} with {starved} training samples)" if setting == "starved" else ""
            print(f"\n{group} {spec}, {setting} data{note}: validation primary metric")
            header = ["method", *tasks, "mean"]
            widths = [max(len(h), 13) for h in header]
            widths[0] = 22
            print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
            best = {t: max(r["scores"][t] for r in rows) for t in tasks}
            for row in rows:
                values = [row["scores"][t] for t in tasks]
                cells = [
                    f"{v:.3f}{'*' if v == best[t] else ' '}"
                    for v, t in zip(values, tasks, strict=True)
                ]
                cells.append(f"{sum(values) / len(values):.3f}")
                print(
                    "  ".join(
                        c.ljust(w) for c, w in zip([_label(row), *cells], widths, strict=True)
                    )
                )
    print("\n* best in its column")


def _label(row: dict[str, Any]) -> str:
    return row["method"] + (f" s{row['seed']}" if row.get("seed") else "")


if __name__ == "__main__":
    main()
