"""Framework overhead: a dmt add-task epoch (connection `none`: one column) vs the same column
trained by a hand-written PyTorch loop.

Both sides train the same thing: the registry's `dmt-cnn` column plus a linear head (dmt's
default head), from the same seed, with Adam at the same learning rate, batches of the same
size drawn as a shuffled permutation with the last partial batch dropped (so the same number
of steps), cross-entropy loss, and after every epoch a validation pass over the whole
validation split in eval mode without autograd, computing accuracy. The hand-written loop gets
the task's tensors once, already adapted to the input size, and indexes them; dmt goes through
`dmtcore.operations.add_task` on an empty store of connection `none`, tracking off, with all it
does per epoch (the feature-cache plan, per-batch index and adaptation, loss accumulation
without a host sync, validation metrics, best-epoch snapshot, the epoch hook).

Measured: seconds per epoch (training plus validation; dmt's from EpochReport.seconds, the
loop's by perf_counter around its epoch), median over the epochs after the first of each run,
then median over rounds of the paired ratio dmt ÷ hand-written, by wall time and by process CPU
time (`cpu`: with one thread, what the epoch takes on an idle machine; steadier on a shared one). The two runs of a round are
interleaved (the order alternates). Also shown: the whole add-task call (store, data loading,
commit) against the whole hand-written run (model build, data, loop). Target: epoch ratio ≤ 1.05.

    python benchmarks/framework_overhead.py [--quick] [--tasks digits.class shapes.kind]
        [--epochs 5] [--rounds 3] [--device cpu|cuda] [--threads 1]
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as common

TARGET = 1.05
INPUTS = {"digits": "1x8x8", "shapes": "3x16x16"}


def dmt_run(
    store: Path, folder: Path, task: str, host: Any, recorder: Any, settings: Any
) -> dict[str, Any]:
    from dmtcore.operations import add_task

    copy = common.fresh_copy(store, folder, "dmt")
    recorder.take()
    started = time.perf_counter()
    add_task(copy, task, host, settings, notify=common.quiet)
    seconds = time.perf_counter() - started
    shutil.rmtree(copy)
    reports, cpu = recorder.take()
    return {"seconds": seconds, "epochs": [r.seconds for r in reports], "cpu_epochs": cpu}


def hand_run(task: str, host: Any, input_spec: Any, settings: Any) -> dict[str, Any]:
    """The same column trained by a plain PyTorch loop."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from dmtcore.tasks.data import adapt_images
    from dmtcore.tasks.spec import DataRequest

    started = time.perf_counter()
    device = torch.device(settings.device)
    spec = host.kinds.task(task)
    data = spec.datasets(DataRequest(Path("data"), input_spec, settings.seed))
    (train_x, train_y), (val_x, val_y) = (
        (adapt_images(d.tensors[0], input_spec).to(device), d.tensors[1].long().to(device))
        for d in (data.train, data.val)
    )
    torch.manual_seed(settings.seed)
    backbone = host.kinds.backbone("dmt-cnn")
    column = backbone.build(input_spec, backbone.resolve_options({}))
    model = nn.Sequential(*column.stages, nn.Linear(column.out_shape[0], spec.num_outputs))
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    generator = torch.Generator().manual_seed(settings.seed)
    size = settings.batch_size
    steps = len(train_x) // size if len(train_x) > size else 1
    autocast = torch.autocast(device.type, torch.bfloat16, enabled=settings.precision == "bf16")
    epochs, cpu_epochs = [], []
    for _ in range(settings.epochs):
        epoch_started, epoch_cpu = time.perf_counter(), time.process_time()
        model.train()
        order = torch.randperm(len(train_x), generator=generator).to(device)
        for step in range(steps):
            index = order[step * size : (step + 1) * size]
            with autocast:
                loss = F.cross_entropy(model(train_x[index]).float(), train_y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.inference_mode(), autocast:
            logits = torch.cat([model(x).float() for x in val_x.split(size)])
        accuracy = (logits.argmax(1) == val_y).float().mean().item()
        if device.type == "cuda":
            torch.cuda.synchronize()
        epochs.append(time.perf_counter() - epoch_started)
        cpu_epochs.append(time.process_time() - epoch_cpu)
    return {
        "seconds": time.perf_counter() - started,
        "epochs": epochs,
        "cpu_epochs": cpu_epochs,
        "accuracy": accuracy,
    }


def main() -> None:
    p = common.parser(__doc__.splitlines()[0], "framework_overhead")
    p.add_argument("--tasks", nargs="+", default=["digits.class", "shapes.kind"])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--samples", type=int, default=0, help="training images per task; 0: all")
    args = p.parse_args()
    if args.quick:
        args.tasks, args.epochs, args.rounds, args.samples = ["digits.class"], 2, 1, 256
    device = common.setup(args)
    from dmtcore.operations import init_store
    from dmtcore.tasks.names import InputSpec
    from dmtcore.train.loop import TrainSettings

    settings = TrainSettings(epochs=args.epochs, batch_size=64, seed=0, **device)
    host = common.plugin_host(args.samples or None)
    recorder = common.EpochRecorder()
    host.register(recorder, "benchmark-epochs")
    rows, raw = [], {}
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        for task in args.tasks:
            input_spec = InputSpec.parse(INPUTS.get(task.split(".")[0], "3x16x16"))
            store = folder / f"empty-{task}"
            init_store(store, host, input_spec, connection="none")
            variants = {
                "dmt": lambda: dmt_run(store, folder, task, host, recorder, settings),  # noqa: B023
                "hand": lambda: hand_run(task, host, input_spec, settings),  # noqa: B023
            }
            for run in variants.values():  # warm-up
                run()
            runs = common.interleaved(variants, args.rounds)
            raw[task] = runs

            def epoch(run: dict[str, Any], clock: str = "epochs") -> float:
                return common.median(run[clock][1:] or run[clock])

            pairs = list(zip(runs["dmt"], runs["hand"], strict=True))
            ratio = common.median([epoch(d) / epoch(h) for d, h in pairs])
            cpu_ratio = common.median(
                [epoch(d, "cpu_epochs") / epoch(h, "cpu_epochs") for d, h in pairs]
            )
            rows.append(
                {
                    "task": task,
                    "input": str(input_spec),
                    "dmt_epoch_s": common.median([epoch(r) for r in runs["dmt"]]),
                    "hand_epoch_s": common.median([epoch(r) for r in runs["hand"]]),
                    "epoch_ratio": ratio,
                    "epoch_ratio_cpu": cpu_ratio,
                    "target": TARGET,
                    "verdict": common.verdict(ratio, TARGET),
                    "verdict_cpu": common.verdict(cpu_ratio, TARGET),
                    "dmt_whole_s": common.median([r["seconds"] for r in runs["dmt"]]),
                    "hand_whole_s": common.median([r["seconds"] for r in runs["hand"]]),
                    "whole_ratio": common.median([d["seconds"] / h["seconds"] for d, h in pairs]),
                }
            )
    headers = ["task", "input", "dmt epoch s", "hand epoch s", "ratio", "cpu", "target", "",
               "dmt whole s", "hand whole s", "whole ratio"]  # fmt: skip
    table_rows = [
        [r["task"], r["input"], r["dmt_epoch_s"], r["hand_epoch_s"], r["epoch_ratio"],
         r["epoch_ratio_cpu"], r["target"], f"{r['verdict']} (cpu {r['verdict_cpu']})",
         r["dmt_whole_s"], r["hand_whole_s"], r["whole_ratio"]]
        for r in rows
    ]  # fmt: skip
    title = (
        f"dmt add-task (connection none) vs a hand-written PyTorch loop, same column and data; "
        f"{args.epochs} epochs, epochs after the first, median of {args.rounds} interleaved "
        f"round(s), {args.device}, {args.threads} thread(s)"
    )
    common.report(
        args, f"{title}\n{common.table(headers, table_rows)}", {"rows": rows, "runs": raw}
    )


if __name__ == "__main__":
    main()
