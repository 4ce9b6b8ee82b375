"""Speed options: do `--channels-last` and `--compile` make add-task faster, and when?

Both are off by default; this measures whether they should be. `--channels-last` runs the
convolutions in NHWC layout. `--compile` compiles the parts that train (the new column's stages,
its connections and head) with torch.compile (inductor: generated C++ on a CPU, Triton on a
GPU); compiling costs time in the first steps, and inductor keeps what it generated in a cache
directory, so a later run of the same architecture compiles much faster. Four ways to add the
same task to the same store (k frozen columns, connection ttc), each in a fresh process as a
user would run it:

    default        neither option
    channels-last  --channels-last
    compile-cold   --compile with an empty inductor cache: the first add-task of an architecture
    compile-warm   --compile with the cache the cold run left: every later one

Reported, median over rounds (compile-cold runs once, first): the whole add-task, epoch 1
(compilation included), the median epoch after the first (steady state), each ÷ default, and
the number of epochs after which the option would catch up with the default (its extra cost
in epoch 1 ÷ the time it saves per later epoch; "never" where later epochs are not faster).

    python benchmarks/speed_options.py [--quick] [--dataset digits] [--k 2] [--epochs 10]
        [--rounds 2] [--device cpu|cuda] [--threads 1]
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as common

VARIANTS = ("default", "channels-last", "compile-cold", "compile-warm")


def child(config: dict[str, Any]) -> None:
    """One add-task in this process; prints its timings as one JSON line."""
    device = common.setup(argparse.Namespace(**config))
    from dmtcore.operations import add_task
    from dmtcore.train.loop import TrainSettings

    host = common.plugin_host()
    recorder = common.EpochRecorder()
    host.register(recorder, "benchmark-epochs")
    variant = config["variant"]
    settings = TrainSettings(
        epochs=config["epochs"],
        seed=0,
        channels_last=variant == "channels-last",
        compile=variant.startswith("compile"),
        **device,
    )
    started = time.perf_counter()
    add_task(Path(config["store"]), config["task"], host, settings, notify=common.quiet)
    seconds = time.perf_counter() - started
    reports, cpu = recorder.take()
    print(json.dumps({"seconds": seconds, "epochs": [r.seconds for r in reports], "cpu": cpu}))


def measure(args: Any, variant: str, store: Path, folder: Path, cache_dir: Path) -> dict:
    config = {
        "variant": variant,
        "store": str(common.fresh_copy(store, folder, variant)),
        "task": common.GROWTH[args.dataset].new,
        "epochs": args.epochs,
        "device": args.device,
        "threads": args.threads,
    }
    return common.run_child(__file__, config, {"TORCHINDUCTOR_CACHE_DIR": str(cache_dir)})


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Whole-run seconds and each epoch's seconds, medians over runs."""
    return {
        "seconds": common.median([r["seconds"] for r in runs]),
        "epochs": [common.median(e) for e in zip(*(r["epochs"] for r in runs), strict=True)],
    }


def summary(run: dict[str, Any], default: dict[str, Any]) -> dict[str, Any]:
    later, default_later = common.median(run["epochs"][1:]), common.median(default["epochs"][1:])
    extra = run["epochs"][0] - default["epochs"][0]
    saved = default_later - later
    return {
        "whole": run["seconds"] / default["seconds"],
        "epoch1": run["epochs"][0] / default["epochs"][0],
        "later_epochs": later / default_later,
        "epoch1_extra_seconds": extra,
        "break_even_epochs": max(1, math.ceil(extra / saved) + 1) if saved > 0 else None,
    }


def main() -> None:
    config = common.child_config()
    if config is not None:
        child(config)
        return
    p = common.parser(__doc__.splitlines()[0], "speed_options")
    p.add_argument("--dataset", default="digits", choices=common.GROWTH)
    p.add_argument("--k", type=int, default=2, help="frozen columns in the store")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument(
        "--rounds", type=int, default=2, help="runs of each variant (compile-cold runs once)"
    )
    args = p.parse_args()
    if args.quick:
        args.k, args.epochs, args.rounds = 1, 2, 1
    device = common.setup(args)
    from dmtcore.train.loop import TrainSettings

    growth = common.GROWTH[args.dataset]
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory() as name:
        folder, cache_dir = Path(name), Path(name) / "inductor-cache"
        store = common.grow_stores(
            folder, growth, [args.k], common.plugin_host(), TrainSettings(epochs=1, **device)
        )[args.k]
        # compile-cold first: it fills the inductor cache that compile-warm reads
        runs["compile-cold"].append(measure(args, "compile-cold", store, folder, cache_dir))
        repeated = {
            v: functools.partial(measure, args, v, store, folder, cache_dir)
            for v in ("default", "channels-last", "compile-warm")
        }
        runs.update(common.interleaved(repeated, args.rounds))
    default = median_run(runs["default"])
    rows = [{"variant": v, **summary(median_run(runs[v]), default)} for v in VARIANTS[1:]]
    headers = ["option", "whole", "epoch 1", "epoch≥2", "epoch 1 extra s", "catches up after"]
    text_rows = [
        [r["variant"], r["whole"], r["epoch1"], r["later_epochs"], r["epoch1_extra_seconds"],
         f"{r['break_even_epochs']} epochs" if r["break_even_epochs"] else "never"]
        for r in rows
    ]  # fmt: skip
    title = (
        f"add-task of {growth.new} with each option ÷ without (default: {default['seconds']:.1f} s, "
        f"{common.median(default['epochs'][1:]):.2f} s per epoch after the first); k = {args.k} "
        f"frozen columns, {args.epochs} epochs, {args.device}, {args.threads} thread(s)"
    )
    text = f"{title}\n{common.table(headers, text_rows)}"
    common.report(args, text, {"rows": rows, "runs": runs, "default": default})


if __name__ == "__main__":
    main()
