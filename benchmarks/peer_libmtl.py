"""dmt's loss-weighting and gradient methods vs LibMTL's: the same columns, tasks and data.

For every method both libraries have, on two groups of tasks, this trains the group jointly
with cross-stitch on each side and reports each side's Δm against one single-task baseline
and its process CPU seconds:

    dmt            LibMTL 1.1.5    options (both sides)
    equal          EW
    uncertainty    UW              log variances start at -0.5
    dwa            DWA             temperature T = 2
    gradnorm       GradNorm        alpha = 1.5
    pcgrad         PCGrad
    aligned-mtl    Aligned_MTL     (from LibMTL's repository: see peers/libmtl_side.py)

Groups:

- `digits`: digits.class, digits.even, digits.large, digits.prime (image-level, all 1,437
  training and 360 validation images, 1×8×8, dmt-cnn columns): 5 epochs, batch 64.
- `scenes`: scenes.segmentation, scenes.normals, scenes.depth (pixel-level, the first 640
  training and all 200 validation images, rendered at 3×32×32; spatial dmt-cnn columns, dense
  ASPP-lite heads): 3 epochs, batch 32.

Both are sized so that dmt's default BatchNorm rule does not re-estimate statistics (a
one-pass group counts as short below 20 steps per task; scenes: 20 steps per epoch × 3 =
60 = 20 × 3 tasks), so neither side gets what the other lacks; the JSON records it per run.

What each side runs, each run in a fresh process of its own:

- dmt: `dmt train TASKS --connection cross-stitch --weighting METHOD` on a new store made
  for the group's input (digits: 1×8×8; scenes: 3×32×32 with `spatial=true`, what `dmt
  train` of dense tasks makes, at the benchmark's size), through
  `dmtcore.operations.train_tasks` (tracking off). The tasks share their images, so joint
  mode `auto` runs one pass per batch; the timed call loads the data, trains, keeps the
  best epoch and commits the store (the empty store is made before the timer).
- LibMTL (benchmarks/peers/libmtl_side.py, in its own venv benchmarks/.venvs/libmtl, made on
  first use by `_peers.peer_venv`; LibMTL is never a dependency of dmt): its `Cross_stitch`
  architecture with the method's weighting class, trained by its own `Trainer.train`,
  testing on the validation split after every epoch. Its columns come from dmt's backbone
  factory and its heads from dmt's heads module (the table's footer checks the parameter
  counts), its losses are dmt's (`dmtcore.tasks.metrics.loss_function` of each task's loss)
  and its metrics dmt's streaming `MetricState`, so both sides score alike. The data are
  the very tensors dmt trains on (this process loads them through dmt's task registry,
  brings them to the store's size with dmt's own functions, and hands them over in an .npz
  file, no pickle). The same epochs, batch size, Adam learning rate and seed (`--seed`, 0),
  the last partial training batch dropped on both sides; one torch thread each.

The single-task baseline, shared by both sides: each task trained alone by dmt (connection
`none`, one task per store, the same epochs, batch size, learning rate and seed), its
metrics at dmt's best epoch. Δm (`dmtcore.tasks.metrics.delta_m`, LibMTL's definition) is
each task's mean relative gain over all of its metrics (errors counted down), averaged over
the tasks: positive is better than training each task alone.

Where the sides differ, as each library does it:

- dmt's cross-stitch units are per channel, task and source (initialised 0.9/0.1, learning
  at 100× the rate); LibMTL's are one scalar per stage and source, shared by every task.
- Which parameters are shared, for the gradient methods: dmt reads it from the graph (what
  two or more task losses reach: not a column's top stage nor the units just below it);
  LibMTL takes its whole encoder (every column, top stages included, and its mixing
  scalars), so its projections (PCGrad), norms (GradNorm) and Gram matrix (Aligned-MTL)
  also span the parts only one task reaches.
- GradNorm: LibMTL trains its first epoch with equal weights and takes each task's mean loss
  over that epoch as the initial loss; dmt balances from the first step, against the first
  step's losses.
- PCGrad: LibMTL's inner loop also visits the task itself; dmt's only the others.
- LibMTL also scores the training batches every epoch, which its loop always does.
- BatchNorm: on digits LibMTL's validation scores are low and jump from epoch to epoch, as
  its running averages lag the weights under its summed mixing (every task's next stage
  reads the sum of all columns); its final model scores about as well as dmt's with batch
  statistics. That untimed diagnostic's Δm is printed under each table.

Both sides' metrics are taken at the epoch dmt's best-epoch rule picks from that side's
validation history (the mean relative gain of the tasks' primary metrics over the first
epoch's; `best_epoch`). LibMTL's own rule, its improvement over epoch 1 on every metric,
divides by the first epoch's values: where one is still 0 (scenes depth's δ < 1.25 after
20 steps), every later epoch's improvement is infinite and the rule keeps the first of them.
What it would have picked, and its Δm, is in the JSON and printed where it differs.

Measured: process CPU seconds of each training call (steadier than wall time on a shared
machine; with one thread what it takes on an idle one), the ratio dmt ÷ LibMTL per round
(median over rounds; the old target for equal/EW: ≤ 1.2), each side's Δm and each task's
primary metric at the side's best epoch.

    python benchmarks/peer_libmtl.py [--quick] [--methods equal,pcgrad,...]
        [--group digits|scenes|both] [--epochs N] [--samples N] [--batch-size N]
        [--scenes-size 32] [--rounds 1] [--lr 0.001] [--seed 0] [--no-peer] [--threads 1]

`--epochs`, `--samples` (training images per task, 0: all; validation at most half as
many) and `--batch-size` apply to every group chosen; without them each group has its
defaults above.
`--quick`: the digits group with equal and pcgrad, 256 images, 1 epoch (a smoke test; scenes,
if asked for, at 16×16 with 128 images). `--no-peer` (or a peer venv that cannot be made,
e.g. offline) runs dmt's side and the baseline alone.
"""

from __future__ import annotations

import datetime
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # dmtcore from this repository, whichever venv runs us
REQUIREMENTS = HERE / "peers" / "requirements-libmtl.txt"
PEER_SIDE = HERE / "peers" / "libmtl_side.py"
TARGET = 1.2  # dmt ÷ LibMTL CPU seconds for equal/EW, the benchmark's first target
SEED = 0  # the default --seed
CONNECTION = "cross-stitch"
LIBMTL_VERSION = "1.1.5"

# dmt's method: (LibMTL's class, dmt's options, LibMTL's weight_args), the same settings.
METHODS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "equal": ("EW", {}, {}),
    "uncertainty": ("UW", {"init": -0.5}, {}),  # LibMTL's UW starts at -0.5 too
    "dwa": ("DWA", {"temperature": 2.0}, {"T": 2.0}),
    "gradnorm": ("GradNorm", {"alpha": 1.5}, {"alpha": 1.5}),
    "pcgrad": ("PCGrad", {}, {}),
    "aligned-mtl": ("Aligned_MTL", {}, {}),
}
QUICK_METHODS = ("equal", "pcgrad")


@dataclass(frozen=True)
class Group:
    """A group of tasks trained jointly, with its default sizes. `size` None: the tasks'
    native input (what `dmt train` would make the store with)."""

    name: str
    tasks: tuple[str, ...]
    spatial: bool
    epochs: int
    samples: int  # training images per task; 0: all
    batch_size: int
    size: int | None = None


GROUPS = {
    "digits": Group(
        "digits",
        ("digits.class", "digits.even", "digits.large", "digits.prime"),
        spatial=False,
        epochs=5,
        samples=0,
        batch_size=64,
    ),
    "scenes": Group(
        "scenes",
        ("scenes.segmentation", "scenes.normals", "scenes.depth"),
        spatial=True,
        epochs=3,
        samples=640,
        batch_size=32,
        size=32,
    ),
}
QUICK = {  # --quick's sizes per group: (epochs, samples, batch size, input size)
    "digits": (1, 256, 64, None),
    "scenes": (1, 128, 32, 16),
}
# Short names of primary metrics for the table's headers.
METRIC_LABELS = {
    "accuracy": "acc",
    "balanced_accuracy": "bal. acc",
    "miou": "mIoU",
    "mean_angle": "mean angle",
    "abs_rel": "abs rel",
}


def short(task: str) -> str:
    return task.split(".")[-1]


def input_spec(config: dict[str, Any]) -> Any:
    from dmtcore.tasks.names import InputSpec

    return InputSpec.from_shape(tuple(config["input_shape"]))


def save_data(path: Path, group: Group, samples: int, size: int | None) -> dict[str, Any]:
    """The group's train/val tensors exactly as dmt trains on them (loaded through its task
    registry, brought to the store's input with its own `adapt_images` and `labels_for`), to
    an .npz (no pickle); returns what both sides need besides them. A group's tasks share
    their images."""
    import _common as common
    import numpy as np

    from dmtcore.tasks.data import adapt_images, labels_for
    from dmtcore.tasks.names import InputSpec
    from dmtcore.tasks.spec import DataRequest

    host = common.plugin_host(samples or None)
    specs = [host.kinds.task(t) for t in group.tasks]
    native = InputSpec.from_shape(specs[0].input_shape)
    spec_in = native if size is None else InputSpec(native.channels, size, size)
    arrays: dict[str, Any] = {}
    for spec in specs:
        data = spec.datasets(DataRequest(Path("data"), spec_in))
        for split in ("train", "val"):
            images, labels = getattr(data, split).tensors
            images = adapt_images(images, spec_in).numpy()
            seen = arrays.setdefault(f"x_{split}", images)
            assert np.array_equal(seen, images), f"{spec.name} has other {split} images"
            arrays[f"y_{split}_{short(spec.name)}"] = labels_for(spec, labels, spec_in).numpy()
    np.savez(path, **arrays)
    return {
        "data": str(path),
        "input_shape": list(spec_in.shape),
        "spatial": group.spatial,
        "tasks": [
            {
                "name": s.name,
                "kind": s.output,
                "num_outputs": s.num_outputs,
                "head": s.head.to_dict(),
                "loss": s.loss,
                "metrics": list(s.metrics),
                "primary": s.primary_metric,
            }
            for s in specs
        ],
        "train_images": len(arrays["x_train"]),
        "val_images": len(arrays["x_val"]),
    }


def _train(config: dict[str, Any], tasks: list[str], connection: str, method: str) -> Any:
    """One `dmt train` of `tasks` on a new store for the group's input; (RunResult, CPU s of
    the train call, per-epoch validation metrics, the store's parameter counts)."""
    import _common as common

    from dmtcore.operations import init_store, train_tasks
    from dmtcore.store.checkpoint import load_model
    from dmtcore.store.directory import Store
    from dmtcore.train.loop import TrainSettings

    host = common.plugin_host(config["samples"] or None)
    recorder = common.EpochRecorder()
    host.register(recorder, "benchmark-epochs")
    settings = TrainSettings(
        epochs=config["epochs"],
        batch_size=config["batch_size"],
        lr=config["lr"],
        seed=config["seed"],
        device="cpu",
        weighting=method,
        weighting_options=METHODS[method][1],
    )
    options = {"spatial": True} if config["spatial"] else {}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "store"
        init_store(path, host, input_spec(config), connection=connection, backbone_options=options)
        cpu = time.process_time()
        result = train_tasks(
            path, tasks, host, settings, connection=connection, notify=common.quiet
        )
        cpu = time.process_time() - cpu
        store = Store.open(path)
        model = load_model(store, store.manifest(), host.kinds)
    assert model is not None
    connections = sum(p.numel() for p in model.connections.parameters())
    params = (sum(p.numel() for p in model.parameters()) - connections, connections)
    epochs = [report.val_metrics for report in recorder.take()[0]]
    return result, cpu, epochs, params


def dmt_side(config: dict[str, Any]) -> dict[str, Any]:
    """A fresh process (run by main): the joint run of one method, or the baseline."""
    import torch

    torch.set_num_threads(config["threads"])
    tasks = [t["name"] for t in config["tasks"]]
    if config["mode"] == "baseline":  # each task alone, connection none, a store of its own
        alone = {}
        for task in tasks:
            result, cpu, epochs, _ = _train(config, [task], "none", "equal")
            alone[task] = {
                "cpu_s": cpu,
                "metrics": result.metrics[task],
                "best_epoch": result.summary["best_epoch"],
                "bn_recalibrated": result.summary["bn_recalibrated"],
                "epoch_metrics": epochs,
            }
        return alone
    result, cpu, epochs, params = _train(config, tasks, CONNECTION, config["method"])
    return {
        "cpu_s": cpu,
        "metrics": {t: result.metrics[t] for t in tasks},
        "best_epoch": result.summary["best_epoch"],
        "joint_mode": result.summary["joint_mode"],
        "bn_recalibrated": result.summary["bn_recalibrated"],
        "weights": result.summary["weighting"]["weights"],
        "epoch_metrics": epochs,
        "params_columns_heads": params[0],
        "params_connections": params[1],
    }


def best_epoch(config: dict[str, Any], epochs: list[dict[str, dict[str, float]]]) -> int:
    """The epoch (from 1) dmt's best-epoch rule picks from per-epoch validation metrics: the
    mean relative gain of the tasks' primary metrics over the first epoch's, ties to the
    earlier (`dmtcore.train.loop.epoch_score`, as dmt's training loop applies it)."""
    from types import SimpleNamespace

    from dmtcore.train.loop import epoch_score

    targets: Any = [
        SimpleNamespace(spec=SimpleNamespace(name=t["name"], primary_metric=t["primary"]))
        for t in config["tasks"]
    ]
    scores = [epoch_score(targets, metrics, epochs[0]) for metrics in epochs]
    return max(range(len(scores)), key=lambda i: (scores[i], -i)) + 1


def group_settings(group: Group, args: Any) -> dict[str, Any]:
    """Epochs, training images per task, batch size and input size for this group: the
    options where given, else --quick's sizes or the group's defaults."""
    epochs, samples, batch, size = (
        QUICK[group.name]
        if args.quick
        else (group.epochs, group.samples, group.batch_size, group.size)
    )
    if group.name == "scenes" and args.scenes_size is not None:
        size = args.scenes_size
    return {
        "epochs": args.epochs or epochs,
        "samples": samples if args.samples is None else args.samples,
        "batch_size": args.batch_size or batch,
        "size": size,
    }


def run_group(
    group: Group, settings: dict[str, Any], methods: list[str], sides: dict[str, Any], args: Any
) -> dict[str, Any]:
    """The baseline, then every method on every side (interleaved, the order rotating by one
    per round); the raw runs and the rows of the group's table."""
    import _common as common
    import _peers

    from dmtcore.tasks.metrics import delta_m

    with tempfile.TemporaryDirectory() as folder:
        npz = Path(folder) / f"{group.name}.npz"
        config = {
            "group": group.name,
            "epochs": settings["epochs"],
            "samples": settings["samples"],
            "batch_size": settings["batch_size"],
            "lr": args.lr,
            "seed": args.seed,
            "threads": args.threads,
            **save_data(npz, group, settings["samples"], settings["size"]),
        }
        dmt_python, dmt_script = sides["dmt"]
        baseline = _peers.run_json(dmt_python, dmt_script, {**config, "mode": "baseline"})
        variants = {}
        for method in methods:
            libmtl, _, weight_args = METHODS[method]
            for side, (python, script) in sides.items():
                run_config = {
                    **config,
                    "mode": "joint",
                    "method": method if side == "dmt" else libmtl,
                    "weight_args": weight_args,
                }
                variants[f"{method}/{side}"] = lambda python=python, script=script, c=run_config: (
                    _peers.run_json(python, script, c)
                )
        runs = common.interleaved(variants, args.rounds)
    tasks = [t["name"] for t in config["tasks"]]
    reference = {t: baseline[t]["metrics"] for t in tasks}
    for name, side_runs in runs.items():
        for run in side_runs:
            if name.endswith("/libmtl"):  # LibMTL's epochs, chosen by dmt's rule
                run["libmtl_rule"] = {
                    "best_epoch": run["best_epoch"],
                    "delta_m": delta_m(run["metrics"], reference),
                }
                run["best_epoch"] = best_epoch(config, run["epoch_metrics"])
                run["metrics"] = run["epoch_metrics"][run["best_epoch"] - 1]
            run["delta_m"] = delta_m(run["metrics"], reference)
    for run in (r for m in methods for r in runs[f"{m}/dmt"]):
        assert run["joint_mode"] == "one-pass", f"dmt did not run one-pass: {run['joint_mode']}"
    primary = {t["name"]: t["primary"] for t in config["tasks"]}
    rows = []
    for method in methods:
        row: dict[str, Any] = {"method": method, "libmtl_method": METHODS[method][0]}
        for side in ("dmt", "libmtl"):
            side_runs = runs.get(f"{method}/{side}")
            if not side_runs:
                row.update({f"{side}_{k}": None for k in ("delta_m", "cpu_s", "primary")})
                continue
            row[f"{side}_delta_m"] = common.median([r["delta_m"] for r in side_runs])
            row[f"{side}_cpu_s"] = common.median([r["cpu_s"] for r in side_runs])
            row[f"{side}_primary"] = {
                t: common.median([r["metrics"][t][primary[t]] for r in side_runs]) for t in tasks
            }
            row[f"{side}_best_epoch"] = common.median([r["best_epoch"] for r in side_runs])
        lib_runs = runs.get(f"{method}/libmtl", [])
        if lib_runs:
            own = [r["libmtl_rule"] for r in lib_runs]
            row["libmtl_own_rule_best_epoch"] = common.median([o["best_epoch"] for o in own])
            row["libmtl_own_rule_delta_m"] = common.median([o["delta_m"] for o in own])
            row["libmtl_delta_m_batch_stats"] = common.median(
                [delta_m(r["final_metrics_batch_stats"], reference) for r in lib_runs]
            )
        pairs = zip(runs[f"{method}/dmt"], lib_runs, strict=False)
        ratios = [d["cpu_s"] / lib["cpu_s"] for d, lib in pairs]
        row["ratio_cpu"] = common.median(ratios) if ratios else None
        rows.append(row)
    return {"config": config, "baseline": baseline, "raw": runs, "rows": rows}


def signed(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-" if value is None else "nan"
    return f"{value:+.2f}"


def metric(value: float | None) -> str:
    if value is None:
        return "-"
    if not math.isfinite(value):
        return "nan"
    return f"{value:.2f}" if abs(value) >= 10 else f"{value:.4f}"


def group_table(group: Group, done: dict[str, Any]) -> str:
    import _common as common

    config, baseline, rows = done["config"], done["baseline"], done["rows"]
    tasks = [t["name"] for t in config["tasks"]]
    primary = {t["name"]: t["primary"] for t in config["tasks"]}
    task_headers = [f"{short(t)} {METRIC_LABELS.get(primary[t], primary[t])}" for t in tasks]
    headers = ["method (dmt / LibMTL)", "dmt Δm %", "LibMTL Δm %", "dmt CPU s",
               "LibMTL CPU s", "dmt ÷ LibMTL CPU", *task_headers]  # fmt: skip
    alone_cpu = sum(baseline[t]["cpu_s"] for t in tasks)
    lines = [["baseline: each alone (dmt)", "0 (ref.)", "0 (ref.)", alone_cpu, "-", "-"]]
    lines[0] += [metric(baseline[t]["metrics"][primary[t]]) for t in tasks]
    for row in rows:
        cells = [
            f"{row['method']} / {row['libmtl_method']}",
            signed(row["dmt_delta_m"]),
            signed(row["libmtl_delta_m"]),
            row["dmt_cpu_s"],
            row["libmtl_cpu_s"],
            row["ratio_cpu"],
        ]
        for t in tasks:
            dmt_value = metric(row["dmt_primary"][t])
            lib = row["libmtl_primary"]
            cells.append(f"{dmt_value} / {metric(lib[t])}" if lib else dmt_value)
        lines.append(cells)
    size = "x".join(str(n) for n in config["input_shape"])
    column = "spatial dmt-cnn" if config["spatial"] else "dmt-cnn"
    title = (
        f"{group.name}: {', '.join(tasks)}; cross-stitch over {column} columns, input {size}, "
        f"{config['train_images']} training images, {config['val_images']} validation, "
        f"{config['epochs']} epoch(s), batch {config['batch_size']}, Adam lr {config['lr']}"
    )
    text = title + "\n" + common.table(headers, lines)
    text += "\nper-task cells: the primary metric at each side's best epoch, dmt / LibMTL"
    text += " (mean angle in degrees and abs rel: lower is better)" if group.spatial else ""
    text += (
        "\nΔm % against one single-task baseline shared by both sides: each task trained alone "
        "by dmt (connection none, a store of its own, the same epochs, batch, lr and seed)"
    )
    raw = done["raw"]
    dmt_runs = [r for k, v in raw.items() if k.endswith("/dmt") for r in v]
    recal = sorted({r["bn_recalibrated"] for r in dmt_runs} | {b["bn_recalibrated"]
                   for b in baseline.values()})  # fmt: skip
    said = {(False,): "no", (True,): "yes", (False, True): "in some runs"}[tuple(recal)]
    text += f"\ndmt re-estimated BatchNorm statistics before validation: {said}"
    lib_runs = [r for k, v in raw.items() if k.endswith("/libmtl") for r in v]
    if lib_runs:
        dmt_params = {r["params_columns_heads"] for r in dmt_runs}
        lib_params = {r["params_columns_heads"] for r in lib_runs}
        same = "the same" if dmt_params == lib_params else "DIFFERENT"
        text += (
            f"\ncolumns + heads: {'/'.join(map(str, sorted(dmt_params)))} parameters (dmt), "
            f"{'/'.join(map(str, sorted(lib_params)))} (LibMTL): {same}; connections: "
            f"{dmt_runs[0]['params_connections']} (dmt), {lib_runs[0]['params_connections']} "
            "(LibMTL)"
        )
        moved = [r for r in rows if r["libmtl_own_rule_best_epoch"] != r["libmtl_best_epoch"]]
        if moved:
            text += "\nLibMTL's own best-epoch rule (its improvement over epoch 1 on every metric) "
            text += "would have picked: " + ", ".join(
                f"{r['libmtl_method']} epoch {r['libmtl_own_rule_best_epoch']} (Δm "
                f"{signed(r['libmtl_own_rule_delta_m'])})"
                for r in moved
            )
        stats = ", ".join(
            f"{r['libmtl_method']} {signed(r['libmtl_delta_m_batch_stats'])}" for r in rows
        )
        text += "\nLibMTL's final model with BatchNorm on each validation batch's statistics "
        text += f"instead of its running averages (untimed diagnostic), Δm %: {stats}"
        equal = next((r for r in rows if r["method"] == "equal"), None)
        if equal is not None and equal["ratio_cpu"] is not None:
            text += f"\nequal / EW dmt ÷ LibMTL CPU s: {equal['ratio_cpu']:.2f} (target ≤ "
            text += f"{TARGET}: {common.verdict(equal['ratio_cpu'], TARGET)})"
    return text


def main() -> None:
    import _common as common
    import _peers

    p = common.parser(__doc__.splitlines()[0], "peer_libmtl")
    p.add_argument(
        "--methods",
        default=None,
        help=f"comma list of dmt methods (default: all: {','.join(METHODS)}; --quick: "
        f"{','.join(QUICK_METHODS)})",
    )
    p.add_argument(
        "--group",
        choices=("digits", "scenes", "both"),
        default=None,
        help="the tasks (default both; --quick: digits)",
    )
    p.add_argument("--epochs", type=int, default=None, help="every group's (default: its own)")
    p.add_argument("--samples", type=int, default=None, help="training images per task; 0: all")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--scenes-size", type=int, default=None, help="scenes' input side (32)")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=SEED, help="both sides' training seed (0)")
    p.add_argument("--no-peer", action="store_true", help="the dmt side alone (no LibMTL venv)")
    args = p.parse_args()
    if args.device != "cpu":
        raise SystemExit("peer_libmtl compares on the CPU only (LibMTL's side runs there)")
    methods = (
        [m.strip() for m in args.methods.split(",") if m.strip()]
        if args.methods
        else list(QUICK_METHODS if args.quick else METHODS)
    )
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise SystemExit(f"--methods: unknown {unknown}; valid: {', '.join(METHODS)}")
    chosen = args.group or ("digits" if args.quick else "both")
    groups = [GROUPS[g] for g in (["digits", "scenes"] if chosen == "both" else [chosen])]
    common.setup(args)
    peer, skipped = None, "--no-peer"
    if not args.no_peer:
        try:
            peer = _peers.peer_venv("libmtl", REQUIREMENTS)
        except _peers.PeerUnavailable as exc:
            skipped = str(exc)
    if peer is None:
        print(f"LibMTL side skipped: {skipped}", file=sys.stderr)
    sides = {"dmt": (Path(sys.executable), Path(__file__))}
    if peer is not None:
        sides["libmtl"] = (peer, PEER_SIDE)
    started = time.perf_counter()
    today = datetime.datetime.now(datetime.UTC).date().isoformat()
    result: dict[str, Any] = {
        "date": today,
        "seed": args.seed,
        "methods": methods,
        "libmtl": LIBMTL_VERSION if peer is not None else None,
        "peer_skipped": None if peer is not None else skipped,
        "groups": {},
    }
    texts = []
    for group in groups:
        settings = group_settings(group, args)
        done = run_group(group, settings, methods, sides, args)
        result["groups"][group.name] = done
        texts.append(group_table(group, done))
    result["wall_s"] = time.perf_counter() - started
    footer = (
        f"{today}; seed {args.seed} on both sides (training and shuffling; the data splits are "
        f"the tasks' fixed ones); {args.rounds} round(s), {args.threads} torch thread(s) per "
        f"side; LibMTL {LIBMTL_VERSION}; wall {result['wall_s']:.0f} s"
    )
    if peer is None:
        footer += f"\nLibMTL side skipped: {skipped}"
    common.report(args, "\n\n".join([*texts, footer]), result)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(dmt_side(json.loads(sys.argv[2]))))
    else:
        main()
