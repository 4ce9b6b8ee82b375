"""Inference: one shared forward pass for k tasks vs k single-task passes.

A store of connection ttc holds the six digits tasks (one epoch each; accuracy is irrelevant
here). Every task reads every task added before it, so task i's output needs columns 1..i.
`MultiTaskModel.forward(x, tasks)` computes each needed column once per batch for all
requested tasks (what `dmt eval` and `dmt predict` rely on); asking for one task at a time,
`model(x, [task])` for each task, recomputes the columns the tasks share: 1 + 2 + ... + k
column passes instead of k, so in theory (k + 1) / 2 times the work.

For k = 1, 2, 4, 6 (the first k tasks in store order) both ways run over the same images (the
1,797 digits repeated to `--images`, batches of 256 as `dmt predict` uses), in eval mode under
`torch.inference_mode` (bf16 autocast on CUDA), interleaved over rounds. Reported: images per
second over all k tasks (a full pass over the images, every task's logits), medians over
rounds, and the ratio shared ÷ separate throughput of each round's pair.

    python benchmarks/inference.py [--quick] [--ks 1 2 4 6] [--images 8192] [--rounds 3]
        [--device cpu|cuda] [--threads 1]
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
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
)
BATCH = 256


def passes(
    model: Any, batches: list[Any], tasks: list[str], shared: bool, device: str
) -> Callable[[], float]:
    """A function timing one pass over all batches for `tasks`: one forward per batch for all
    of them, or one per task."""
    import torch

    autocast = torch.autocast(device, torch.bfloat16, enabled=device == "cuda")

    def run() -> float:
        started = time.perf_counter()
        with torch.inference_mode(), autocast:
            if shared:
                for x in batches:
                    model(x, tasks)
            else:
                for task in tasks:
                    for x in batches:
                        model(x, [task])
            if device == "cuda":
                torch.cuda.synchronize()
        return time.perf_counter() - started

    return run


def main() -> None:
    p = common.parser(__doc__.splitlines()[0], "inference")
    p.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 6])
    p.add_argument("--images", type=int, default=8192)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    if args.quick:
        args.ks, args.images, args.rounds = [1, 2], 512, 1
    device = common.setup(args)
    import torch

    from dmtcore.operations import add_task, init_store, load_current
    from dmtcore.tasks.names import InputSpec
    from dmtcore.tasks.spec import DataRequest
    from dmtcore.train.loop import TrainSettings

    host = common.plugin_host(256 if args.quick else None)
    tasks = list(TASKS[: max(args.ks)])
    spec = InputSpec(1, 8, 8)
    with tempfile.TemporaryDirectory() as name:
        store = Path(name) / "store"
        init_store(store, host, spec)
        for task in tasks:
            add_task(store, task, host, TrainSettings(epochs=1, **device), notify=common.quiet)
        model, _ = load_current(store, host)
    model.to(args.device).eval()
    data = host.kinds.task(tasks[0]).datasets(DataRequest(Path("data"), spec))
    images = torch.cat([data.train.tensors[0], data.val.tensors[0]])
    images = images.repeat(-(-args.images // len(images)), 1, 1, 1)[: args.images]
    batches = [b.to(args.device) for b in images.split(BATCH)]
    rows, raw = [], {}
    for k in args.ks:
        chosen = tasks[:k]
        variants = {
            "shared": passes(model, batches, chosen, True, args.device),
            "separate": passes(model, batches, chosen, False, args.device),
        }
        for run in variants.values():  # warm-up
            run()
        runs = common.interleaved(variants, args.rounds)
        raw[str(k)] = runs
        ratio = common.median(
            [s / h for h, s in zip(runs["shared"], runs["separate"], strict=True)]
        )
        rows.append(
            {
                "k": k,
                "tasks": chosen,
                "shared_images_per_s": args.images / common.median(runs["shared"]),
                "separate_images_per_s": args.images / common.median(runs["separate"]),
                "ratio": ratio,
                "theory": (k + 1) / 2,
            }
        )
    headers = ["k", "shared img/s", "separate img/s", "ratio", "theory"]
    table_rows = [
        [r["k"], round(r["shared_images_per_s"]), round(r["separate_images_per_s"]), r["ratio"],
         r["theory"]]
        for r in rows
    ]  # fmt: skip
    title = (
        f"inference over the first k digits tasks (ttc store): one shared forward vs one forward "
        f"per task; {args.images} images, batches of {BATCH}, median of {args.rounds} interleaved "
        f"round(s), {args.device}, {args.threads} thread(s)"
    )
    common.report(
        args, f"{title}\n{common.table(headers, table_rows)}", {"rows": rows, "seconds": raw}
    )


if __name__ == "__main__":
    main()
