"""Growth memory: peak memory of add-task with k = 8 frozen columns vs one column alone.

Each measured add-task runs in its own child process (this script with `--child`), so that
every peak is that run's own. The child imports everything, loads the task's data (the
plugins keep it in memory), runs one training step of a bare column to make torch initialise
its runtime (about 175 MiB on the CPU, paid once by any process that trains), collects garbage,
and reads its resident set size (VmRSS): the *base*, the same for every variant (libraries,
data and runtime: hundreds of MiB). Then it runs the real `dmtcore.operations.add_task` (tracking off) on a fresh copy of a
store and reads its peak RSS from the kernel (`getrusage(RUSAGE_SELF).ru_maxrss`), and on a GPU
the peak of `torch.cuda.max_memory_allocated`. What training costs is peak − base (Δ).

Variants: the single column (connection `none`, no other task), and the same task added to a
store with 8 frozen columns (connection ttc) without the feature cache and with it. The
cache's size is what the engine reports (`feature_cache.bytes` of the operation: samples ×
cached stage outputs × 2 bytes for float16) and is counted separately: the ratio with the
cache is (Δ − cache) ÷ Δ of the single column, as the issue asks; Δ ÷ Δ single is shown too.
Target: ≤ 1.5. The three children of a round run one after another in an order rotating every
round; medians over rounds.

    python benchmarks/growth_memory.py [--quick] [--datasets digits shapes] [--epochs 2]
        [--rounds 2] [--samples 0] [--device cpu|cuda] [--threads 1]
"""

from __future__ import annotations

import gc
import json
import resource
import tempfile
from pathlib import Path
from typing import Any

import _common as common

TARGET = 1.5
K = 8
MODES = ("single", "off", "cache")


def rss_mib() -> float:
    """The current resident set size."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise SystemExit("no VmRSS in /proc/self/status: this benchmark needs Linux")


def warm_up(host: Any, input_spec: Any, tensors: Any, device: str) -> None:
    """One training step and one inference batch of a bare column: torch initialises its
    runtime lazily (about 175 MiB of RSS on the CPU), which would otherwise be charged to the
    measured run. The same for every variant; nothing of the engine's own paths runs."""
    import torch

    backbone = host.kinds.backbone("dmt-cnn")
    column = backbone.build(input_spec, backbone.resolve_options({}))
    model = torch.nn.Sequential(*column.stages, torch.nn.Linear(column.out_shape[0], 2)).to(device)
    optimizer = torch.optim.Adam(model.parameters())
    x = tensors[0][:64].to(device)
    torch.nn.functional.cross_entropy(model(x), (tensors[1][:64] > 0).long().to(device)).backward()
    optimizer.step()
    with torch.inference_mode():
        model.eval()(x)


def child(config: dict[str, Any]) -> None:
    """One add-task; prints its memory figures as one JSON line."""
    import torch

    from dmtcore.operations import add_task
    from dmtcore.tasks.names import InputSpec
    from dmtcore.tasks.spec import DataRequest
    from dmtcore.train.loop import TrainSettings

    torch.set_num_threads(config["threads"])
    host = common.plugin_host(config["samples"] or None)
    spec = host.kinds.task(config["task"])
    input_spec = InputSpec.parse(config["input"])
    data = spec.datasets(DataRequest(Path("data"), input_spec))  # the plugin keeps it loaded
    settings = TrainSettings(**config["settings"])
    warm_up(host, input_spec, data.train.tensors, settings.device)
    gc.collect()
    base = rss_mib()
    cuda = config["settings"]["device"] == "cuda"
    if cuda:
        torch.cuda.init()
        torch.cuda.reset_peak_memory_stats()
        cuda_base = torch.cuda.memory_allocated() / 2**20
    result = add_task(Path(config["store"]), config["task"], host, settings, notify=common.quiet)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    out = {
        "base_mib": base,
        "peak_mib": peak,
        "feature_cache": (result.summary or {}).get("feature_cache") or {},
    }
    if cuda:
        out["cuda_base_mib"] = cuda_base
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(out))


def measure(config: dict[str, Any]) -> dict[str, Any]:
    return common.run_child(__file__, config)


def main() -> None:
    config = common.child_config()
    if config is not None:
        child(config)
        return
    p = common.parser(__doc__.splitlines()[0], "growth_memory")
    p.add_argument("--datasets", nargs="+", default=["digits", "shapes"], choices=common.GROWTH)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--samples", type=int, default=0, help="training images per task; 0: all")
    p.add_argument("--k", type=int, default=K, help="frozen columns")
    args = p.parse_args()
    if args.quick:
        args.datasets, args.epochs, args.rounds, args.samples, args.k = ["digits"], 1, 1, 128, 2
    device = common.setup(args)
    from dmtcore.train.loop import TrainSettings

    settings = {
        "single": {"epochs": args.epochs, **device},
        "off": {"epochs": args.epochs, "feature_cache": "off", **device},
        "cache": {"epochs": args.epochs, **device},
    }
    host = common.plugin_host(args.samples or None)
    rows, raw = [], {}
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        for dataset in args.datasets:
            growth = common.GROWTH[dataset]
            stores = common.grow_stores(
                folder, growth, [0, args.k], host, TrainSettings(epochs=1, **device)
            )

            def run(mode: str, growth: common.Growth = growth, stores: dict = stores) -> Any:
                copy = common.fresh_copy(stores[0 if mode == "single" else args.k], folder, mode)
                config = {
                    "mode": mode,
                    "store": str(copy),
                    "task": growth.new,
                    "input": str(growth.input_spec),
                    "samples": args.samples,
                    "threads": args.threads,
                    "settings": settings[mode],
                }
                return measure(config)

            runs = common.interleaved(
                {mode: (lambda m=mode: run(m)) for mode in MODES}, args.rounds
            )
            raw[dataset] = runs

            def med(mode: str, key: str, runs: dict = runs) -> float:
                return common.median([r[key] for r in runs[mode]])

            single_delta = med("single", "peak_mib") - med("single", "base_mib")
            for mode in MODES:
                delta = med(mode, "peak_mib") - med(mode, "base_mib")
                cache = runs[mode][0]["feature_cache"]
                cache_mib = (
                    cache.get("bytes", 0) / 2**20 if cache.get("location") == "memory" else 0
                )
                row = {
                    "dataset": dataset,
                    "task": growth.new,
                    "k": 0 if mode == "single" else args.k,
                    "mode": mode,
                    "base_mib": med(mode, "base_mib"),
                    "peak_mib": med(mode, "peak_mib"),
                    "delta_mib": delta,
                    "cache_mib": cache_mib,
                    "cache_location": cache.get("location"),
                    "peak_ratio": med(mode, "peak_mib") / med("single", "peak_mib"),
                    "delta_ratio": delta / single_delta,
                    "ratio_without_cache": (delta - cache_mib) / single_delta,
                }
                if mode != "single":
                    row["target"] = TARGET
                    row["verdict"] = common.verdict(row["ratio_without_cache"], TARGET)
                if args.device == "cuda":
                    cuda_delta = med(mode, "cuda_peak_mib") - med(mode, "cuda_base_mib")
                    single_cuda = med("single", "cuda_peak_mib") - med("single", "cuda_base_mib")
                    row["cuda_peak_mib"] = med(mode, "cuda_peak_mib")
                    row["cuda_ratio"] = cuda_delta / single_cuda
                    row["cuda_ratio_without_cache"] = (cuda_delta - cache_mib) / single_cuda
                rows.append(row)
    headers = ["dataset", "k", "mode", "base MiB", "peak MiB", "Δ MiB", "cache MiB",
               "peak ÷ single", "Δ ÷ single", "(Δ-cache) ÷ single", "target", ""]  # fmt: skip
    if args.device == "cuda":
        headers += ["cuda peak MiB", "cuda Δ ÷ single", "(cuda Δ-cache) ÷ single"]
    table_rows = []
    for r in rows:
        cells = [r["dataset"], r["k"], r["mode"], r["base_mib"], r["peak_mib"], r["delta_mib"],
                 r["cache_mib"], r["peak_ratio"], r["delta_ratio"], r["ratio_without_cache"],
                 r.get("target"), r.get("verdict", "")]  # fmt: skip
        if args.device == "cuda":
            cells += [r["cuda_peak_mib"], r["cuda_ratio"], r["cuda_ratio_without_cache"]]
        table_rows.append(cells)
    title = (
        f"peak memory of add-task (separate processes; Δ = peak RSS − RSS after imports and data) "
        f"with k frozen columns vs one column alone; {args.epochs} epoch(s), "
        f"{args.samples or 'all'} training images, median of {args.rounds} round(s), "
        f"{args.device}, {args.threads} thread(s)"
    )
    common.report(
        args, f"{title}\n{common.table(headers, table_rows)}", {"rows": rows, "runs": raw}
    )


if __name__ == "__main__":
    main()
