"""Incremental transfer (DMT §4.4, Fig. 6): optimiser steps a new task needs to reach the
validation score its single-task column reaches at convergence, added to trained columns vs
trained alone.

The DMT paper adds a task (Smiling on CelebA) to a trained network and reports that it reaches
the single-task network's final error about 4× sooner. Here, for each pair (new task, trained
predecessors) and each connection kind:

  alone  the new task's column trained by itself: connection `none`, an empty store;
  added  a store of that kind first learns the predecessors (jointly, `dmt train`), then the
         new task is added to it (`dmt add-task`: its column plus connections into theirs).

Both runs use the same seed, epochs, batch size and optimiser, and validate every
`--every` optimiser steps (TrainSettings.eval_every; EpochReport.step counts the steps). The
target is the single-task column's score at convergence: the best of its last three
validation points (the task's primary metric: balanced accuracy for binary tasks). Reported:
the first step at which each run reaches the target, and alone ÷ added ("never" when the added
run does not reach it within the epochs; its best score is shown). The curves come from
`examples/incremental_transfer.py` (`curve`, `steps_to_reach`), which this imports.

`--inits` compares how the added column starts (`dmt add-task --init-from`): `none` from
fresh weights, `auto` or a predecessor's name from that predecessor's trained column (warm
start, NDDR and cross-stitch Table 3); names that are not predecessors of a pair are skipped.

NDDR layers use SGD (momentum 0.9), the papers' optimiser, for which their ×100 learning rate
was tuned (README); their single-task baseline then uses SGD too. ttc and cross-stitch use Adam.
Steps are deterministic on the CPU for a seed (no timing is involved); `--seeds` repeats the
whole comparison and reports medians. Target: ≥ 4× fewer steps.

    python benchmarks/incremental_transfer.py [--quick] [--kinds ttc nddr cross-stitch]
        [--pairs digits shapes] [--epochs 5] [--every 5] [--seeds 0]
        [--inits none auto shapes.kind]
"""

from __future__ import annotations

import importlib.util
from types import ModuleType
from typing import Any

import _common as common

TARGET = 4.0
KINDS = ("ttc", "nddr", "cross-stitch")
OPTIMIZER = {"nddr": "sgd", "nddr-shortcut": "sgd"}  # others: adam


def example() -> ModuleType:
    """examples/incremental_transfer.py, imported under its own name (this file has the same)."""
    path = common.HERE.parent / "examples" / "incremental_transfer.py"
    spec = importlib.util.spec_from_file_location("dmt_example_incremental_transfer", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    p = common.parser(__doc__.splitlines()[0], "incremental_transfer")
    p.add_argument("--kinds", nargs="+", default=list(KINDS))
    p.add_argument("--pairs", nargs="+", default=["digits", "shapes"], choices=("digits", "shapes"))
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--parent-epochs", type=int, default=4)
    p.add_argument("--every", type=int, default=5, help="validate every N optimiser steps")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument(
        "--inits",
        nargs="+",
        default=["none", "auto"],
        help="how the added column starts: none, auto or a predecessor task (as --init-from)",
    )
    args = p.parse_args()
    if args.quick:
        args.kinds, args.pairs, args.epochs, args.parent_epochs = ["ttc"], ["digits"], 1, 1
        args.inits = ["none", "auto"]
    device = common.setup(args)
    from dmtcore.train.loop import TrainSettings

    ex = example()
    pairs = {task.split(".")[0]: (task, parents, spec) for task, parents, spec in ex.PAIRS}
    rows: list[dict[str, Any]] = []
    curves: dict[str, Any] = {}
    for pair in args.pairs:
        task, parents, spec = pairs[pair]
        alone: dict[tuple[str, int], list[tuple[int, float]]] = {}
        variants = [
            (kind, init)
            for kind in args.kinds
            for init in args.inits
            if init in ("none", "auto", *parents)
        ]
        for kind, init in variants:
            optimizer = OPTIMIZER.get(kind, "adam")
            per_seed = []
            for seed in args.seeds:
                settings = TrainSettings(
                    epochs=args.epochs,
                    eval_every=args.every,
                    optimizer=optimizer,
                    seed=seed,
                    **device,
                )
                parent_settings = TrainSettings(
                    epochs=args.parent_epochs, optimizer=optimizer, seed=seed, **device
                )
                if (optimizer, seed) not in alone:
                    alone[optimizer, seed] = ex.curve(
                        "none", task, [], spec, settings, parent_settings
                    )
                single = alone[optimizer, seed]
                added = ex.curve(kind, task, parents, spec, settings, parent_settings, init)
                target = max(value for _, value in single[-3:])
                alone_steps = ex.steps_to_reach(single, target)
                added_steps = ex.steps_to_reach(added, target)
                per_seed.append(
                    {
                        "seed": seed,
                        "target_score": target,
                        "alone_steps": alone_steps,
                        "added_steps": added_steps,
                        "ratio": alone_steps / added_steps if added_steps else None,
                        "added_best": max(value for _, value in added),
                        "added_final": added[-1][1],
                    }
                )
                curves[f"{task}/{kind}/{init}/{seed}"] = {"alone": single, "added": added}
            reached = [r["ratio"] for r in per_seed if r["ratio"] is not None]
            ratio = common.median(reached) if len(reached) == len(per_seed) else None
            rows.append(
                {
                    "task": task,
                    "after": parents,
                    "input": str(spec),
                    "kind": kind,
                    "init_from": init,
                    "optimizer": optimizer,
                    "target_score": common.median([r["target_score"] for r in per_seed]),
                    "alone_steps": common.median([r["alone_steps"] for r in per_seed]),
                    "added_steps": common.median(
                        [r["added_steps"] for r in per_seed if r["added_steps"]]
                    )
                    if reached
                    else None,
                    "added_best": common.median([r["added_best"] for r in per_seed]),
                    "ratio": ratio,
                    "target": TARGET,
                    "verdict": common.verdict(ratio, TARGET, at_most=False),
                    "seeds": per_seed,
                }
            )
    headers = ["new task (after)", "kind", "init from", "opt", "score to reach", "alone steps",
               "added steps", "added best", "fewer steps", "target", ""]  # fmt: skip
    table_rows = [
        [f"{r['task']} ({' + '.join(r['after'])})", r["kind"], r["init_from"], r["optimizer"],
         round(r["target_score"], 3), r["alone_steps"],
         r["added_steps"] if r["added_steps"] is not None else "never", round(r["added_best"], 3),
         f"{r['ratio']:.1f}x" if r["ratio"] is not None else "-", f"≥{TARGET:g}x", r["verdict"]]
        for r in rows
    ]  # fmt: skip
    title = (
        f"optimiser steps to reach the single-task column's converged validation score "
        f"(alone: connection none); {args.epochs} epochs, validation every {args.every} steps, "
        f"predecessors {args.parent_epochs} epochs, seeds {args.seeds}, {args.device}"
    )
    common.report(
        args, f"{title}\n{common.table(headers, table_rows)}", {"rows": rows, "curves": curves}
    )


if __name__ == "__main__":
    main()
