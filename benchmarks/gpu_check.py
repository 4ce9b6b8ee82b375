"""A GPU check ready to run: dmt on CUDA with bf16 autocast, end to end, in one command.

    python benchmarks/gpu_check.py                      # one GPU: about 4 minutes on an H100
    python benchmarks/gpu_check.py --device cpu --smoke # tiny, on the CPU: tests the script

Without a CUDA GPU it stops at once with exit code 2, unless `--device cpu` is given. Every
dmt command runs as a user would run it, a fresh process (`python -m dmtcore ...`), on the
tasks of benchmarks/_scale_tasks.py (shapes images drawn at 3×224×224, `--images` training
images per task, a quarter as many for validation), a ResNet-50 store (torchvision's, random
init: weights=none; pretrained weights need a download, and a step costs the same without).

Checks (each `ok` in the JSON's `checks`; the exit code is 1 when one fails):

    add_task          `dmt add-task --device cuda --precision bf16` at k = 0, 1, 2+3, 4 frozen
                      columns; the manifest records the device and precision it ran with
    eval_cli          `dmt eval --device cuda` (the command has no --precision: fp32)
    eval_api_bf16     the Python API's evaluate(device="cuda", precision="bf16")
    predict_cli       `dmt predict inputs.npy --device cuda` (no --precision either: fp32)
    predict_api_bf16  the API's predict() under torch.autocast(bfloat16), and how many of its
                      classes agree with fp32's
    old_outputs_identical
                      the old task's raw outputs (scale.kind) on fixed inputs (64 validation
                      images), before and after an add-task of scale.colour on the GPU:
                      the versions before and after loaded in one process and compared with
                      torch.equal in fp32 and under bf16 autocast, and `dmt predict --json`'s
                      output before and after (two processes) compared as text

Throughput (the table): images per second of dmt's add-task ÷ a bare PyTorch training loop of
the same column (torchvision resnet50 with a linear head; the same images, held on the device
as dmt holds in-memory data; the same batch size, epochs, Adam and precision; a validation pass
over the same validation images after every epoch, as dmt validates), the physical limit being
1.0. Images per second: training images ÷ the median epoch after the first (dmt: the epoch
time of its dmt_epoch_end hook, training and validation; bare: the same span, synchronised),
so the steady state with frozen features cached; epoch 1 (the cache's fill, cudnn's first
calls, compilation) is given beside it. At k = 0 (the column alone), 1 and 4 frozen columns
with dmt's defaults, and at k = 0 with `--channels-last` and with `--compile` (the bare loop
then also runs channels-last, or under torch.compile). `--options none` skips the two.

`--smoke`: 3×32×32, 32 images, batch 8, 2 epochs and no --compile (compiling on a CPU takes
over a minute): with `--device cpu`, under 90 s. The ratios of a smoke run mean nothing.

    python benchmarks/gpu_check.py [--device cuda|cpu] [--smoke] [--images 512]
        [--batch-size 32] [--epochs 3] [--precision bf16|fp32]
        [--options channels-last compile] [--json PATH]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as common
import backbone_scale as scale

TASKS = ("scale.kind", "scale.colour", "scale.size", "scale.side", "scale.red-circle")
OLD_TASK = "scale.kind"
FIXED_INPUTS = 64
OPTIONS = ("channels-last", "compile")
NO_CUDA_EXIT = 2


def parse() -> argparse.Namespace:
    p = common.parser(__doc__.splitlines()[0], "gpu_check")
    p.set_defaults(device="cuda")
    p.add_argument("--smoke", action="store_true", help="tiny sizes (same as --quick)")
    p.add_argument("--images", type=int, default=512, help="training images per task")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=3, help="at least 2: the steady state")
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--input", default="3x224x224")
    p.add_argument("--cache-budget-mb", type=float, default=2048, help="dmt's default: 2048")
    p.add_argument(
        "--options", nargs="+", default=list(OPTIONS), choices=(*OPTIONS, "none"),
        help="speed options measured at k = 0 (none: skip them)",
    )  # fmt: skip
    p.add_argument("--bare", help=argparse.SUPPRESS)  # internal: the bare loop's child
    args = p.parse_args()
    args.smoke = args.smoke or args.quick
    args.quick = args.smoke
    if args.smoke:
        args.input, args.images, args.batch_size, args.epochs = "3x32x32", 32, 8, 2
        args.options = [o for o in args.options if o != "compile"]
    args.options = [o for o in args.options if o != "none"]
    args.epochs = max(args.epochs, 2)
    return args


def require_device(args: argparse.Namespace) -> None:
    """Exit 2 with a clear message when CUDA is asked for (the default) and absent."""
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA GPU is available (torch.cuda.is_available() is False, torch "
            f"{torch.__version__}, CUDA build {torch.version.cuda}); this check is meant for a "
            "GPU machine. Run it with --device cpu (with --smoke: a quick test of the script).",
            file=sys.stderr,
        )
        raise SystemExit(NO_CUDA_EXIT)
    if args.device == "cpu":
        torch.set_num_threads(args.threads)


def plugin_module() -> Any:
    spec = importlib.util.spec_from_file_location("_scale_tasks", scale.PLUGIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def shape(args: argparse.Namespace) -> tuple[int, int, int]:
    c, h, w = (int(v) for v in args.input.split("x"))
    return c, h, w


def val_size(args: argparse.Namespace) -> int:
    return max(args.images // 4, 16)


# -- the bare PyTorch loop ------------------------------------------------------------------


def bare_loop(config: dict[str, Any]) -> None:
    """The child: train torchvision's resnet50 + a linear head on the same images, each variant
    in turn; prints every epoch's seconds as one JSON line."""
    import torch
    import torchvision
    from torch import nn
    from torch.nn import functional as F

    device = torch.device(config["device"])
    if device.type == "cpu":
        torch.set_num_threads(config["threads"])
    _, h, w = config["shape"]
    plugin = plugin_module()
    train = plugin.generate("train", config["images"], h, w)
    val = plugin.generate("val", config["val"], h, w)
    x = torch.from_numpy(train["images"]).to(device)
    y = torch.from_numpy(train["kind"]).long().to(device)
    xv = torch.from_numpy(val["images"]).to(device)
    bf16 = config["precision"] == "bf16"
    batch, n = config["batch_size"], len(x)
    out = {}
    for variant in config["variants"]:
        torch.manual_seed(0)
        model = torchvision.models.resnet50(weights=None)
        model.fc = nn.Linear(model.fc.in_features, 3)
        model.to(device)
        images, val_images = x, xv
        if variant == "channels-last":
            model = model.to(memory_format=torch.channels_last)
            images = x.contiguous(memory_format=torch.channels_last)
            val_images = xv.contiguous(memory_format=torch.channels_last)
        run = torch.compile(model) if variant == "compile" else model
        optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
        seconds = []
        for _ in range(config["epochs"]):
            synchronize(device)
            started = time.perf_counter()
            model.train()
            order = torch.randperm(n, device=device)
            for i in range(0, n - batch + 1 if n > batch else 1, batch):  # drop_last, as dmt
                index = order[i : i + batch]
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    loss = F.cross_entropy(run(images[index]), y[index])
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
            model.eval()
            with (
                torch.inference_mode(),
                torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16),
            ):
                for i in range(0, len(val_images), batch):
                    run(val_images[i : i + batch]).float().argmax(1)
            synchronize(device)
            seconds.append(time.perf_counter() - started)
        out[variant] = seconds
    print(json.dumps(out))


def synchronize(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- dmt's side -----------------------------------------------------------------------------


class Runner:
    """dmt commands in fresh processes, on one store, with the benchmark's environment."""

    def __init__(self, args: argparse.Namespace, folder: Path) -> None:
        self.args, self.folder = args, folder
        self.timings = folder / "timings.jsonl"
        self.env = scale.child_environment(argparse.Namespace(**vars(args)), self.timings)
        self.env["DMT_SCALE_VAL"] = str(val_size(args))
        if args.device == "cuda":
            self.env.pop("OMP_NUM_THREADS")
        self.commands: list[dict[str, Any]] = []

    def dmt(self, *arguments: str) -> dict[str, Any]:
        self.timings.unlink(missing_ok=True)
        command = [*scale.dmt(), *arguments]
        run = scale.run_measured(command, self.env, self.folder)
        run.update(scale.phases(run, self.timings))
        run["command"] = " ".join(arguments)
        self.commands.append({k: v for k, v in run.items() if k not in ("stdout",)})
        return run

    def add_task(self, store: Path, *tasks: str, extra: tuple[str, ...] = ()) -> dict[str, Any]:
        a = self.args
        run = self.dmt(
            "add-task", *tasks, "--store", str(store), "--no-tracking",
            "--epochs", str(a.epochs), "--batch-size", str(a.batch_size),
            "--device", a.device, "--precision", a.precision,
            "--cache-budget-mb", f"{a.cache_budget_mb:g}", "-p", str(scale.PLUGIN),
            "--json", *extra,
        )  # fmt: skip
        record = json.loads(run["stdout"])
        run["records"] = record if isinstance(record, list) else [record]
        return run


def manifest(store: Path, version: int) -> dict[str, Any]:
    return json.loads((store / "versions" / f"v{version:06d}.json").read_text())


def dmt_row(args: Any, label: str, k: int, run: dict[str, Any], store: Path) -> dict[str, Any]:
    version = run["records"][-1]["version"]
    cache = manifest(store, version)["operation"].get("feature_cache")
    epochs = run["epoch_seconds"]
    return {
        "variant": label,
        "k": k,
        "task": run["records"][-1]["task"],
        "seconds": run["seconds"],
        "peak_rss_mib": run["peak_rss_mib"],
        "epoch_seconds": epochs,
        "dmt_images_per_s": args.images / common.median(epochs[1:]),
        "dmt_epoch1_images_per_s": args.images / epochs[0],
        "cache_where": scale.where(k, cache),
        "cache_mb": (cache or {}).get("bytes", 0) / 2**20,
    }


def raw_outputs(store: Path, version: int, inputs: Any, args: Any, bf16: bool) -> Any:
    """The old task's raw outputs of a stored version on the fixed inputs, in this process."""
    import torch

    from dmtcore.hooks.host import create_plugin_host
    from dmtcore.inference.predict import predict_batches
    from dmtcore.operations import load_current

    model, _ = load_current(store, create_plugin_host([str(scale.PLUGIN)], autoload=False), version)
    model.to(args.device)
    batches = [inputs[i : i + args.batch_size] for i in range(0, len(inputs), args.batch_size)]
    with torch.autocast(torch.device(args.device).type, dtype=torch.bfloat16, enabled=bf16):
        outputs = [b[OLD_TASK] for b in predict_batches(model, batches, [OLD_TASK])]
    return torch.cat(outputs)


def check(checks: dict[str, Any], name: str, action: Any) -> Any:
    """Run one check; record ok/error (a failing check does not stop the others)."""
    try:
        value = action()
    except Exception as error:  # every failure is reported; the exit code says it
        checks[name] = {"ok": False, "error": f"{type(error).__name__}: {error}"[-2000:]}
        return None
    except SystemExit as error:
        checks[name] = {"ok": False, "error": str(error)[-2000:]}
        return None
    checks[name] = value if isinstance(value, dict) else {"ok": bool(value)}
    return value


def main() -> None:
    args = parse()
    require_device(args)
    if args.bare:
        bare_loop(json.loads(args.bare))
        return
    import numpy as np
    import torch

    from dmtcore.api import open_store

    started = time.perf_counter()
    os.environ.update(DMT_SCALE_IMAGES=str(args.images), DMT_SCALE_VAL=str(val_size(args)))
    checks: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        runner = Runner(args, folder)
        store, empty = folder / "store", folder / "empty"
        _, h, w = shape(args)
        inputs = torch.from_numpy(
            plugin_module().generate("val", val_size(args), h, w)["images"][:FIXED_INPUTS].copy()
        )
        np.save(folder / "inputs.npy", inputs.numpy())
        runner.dmt("init", "--store", str(store), "--backbone", "resnet50",
                   "--input", args.input, "-p", str(scale.PLUGIN))  # fmt: skip
        shutil.copytree(store, empty)

        def predict_cli() -> str:
            run = runner.dmt("predict", str(folder / "inputs.npy"), "--store", str(store),
                             "--task", OLD_TASK, "--device", args.device, "--json")  # fmt: skip
            return json.dumps(json.loads(run["stdout"])["tasks"][OLD_TASK], sort_keys=True)

        # k = 0, then the old task's outputs before the next add-task
        run = runner.add_task(store, TASKS[0])
        rows.append(dmt_row(args, "default", 0, run, store))
        before_version = run["records"][-1]["version"]
        before_cli = predict_cli()
        before = {
            bf16: raw_outputs(store, before_version, inputs, args, bf16) for bf16 in (False, True)
        }
        run = runner.add_task(store, TASKS[1])
        rows.append(dmt_row(args, "default", 1, run, store))
        after_version = run["records"][-1]["version"]
        after_cli = check(checks, "predict_cli", predict_cli)
        if after_cli is not None:
            checks["predict_cli"] = {"ok": True, "device": args.device, "precision": "fp32"}

        def identical() -> dict[str, Any]:
            after = {
                bf16: raw_outputs(store, after_version, inputs, args, bf16)
                for bf16 in (False, True)
            }
            same = {
                "fp32": torch.equal(before[False], after[False]),
                "bf16_autocast": torch.equal(before[True], after[True]),
                "dmt_predict_json": before_cli == after_cli,
            }
            diff = float((before[False] - after[False]).abs().max())
            return {"ok": all(same.values()), **same, "max_abs_diff_fp32": diff,
                    "task": OLD_TASK, "inputs": len(inputs), "versions": [before_version,
                    after_version]}  # fmt: skip

        check(checks, "old_outputs_identical", identical)
        runner.add_task(store, *TASKS[2:4], extra=("--epochs", "1"))  # k = 2 and 3, not measured
        run = runner.add_task(store, TASKS[4])
        rows.append(dmt_row(args, "default", 4, run, store))

        def add_task_recorded() -> dict[str, Any]:
            recorded = [manifest(store, v)["operation"]["settings"] for v in range(2, 7)]
            return {
                "ok": all(
                    s["device"] == args.device and s["precision"] == args.precision
                    for s in recorded
                ),
                "versions": len(recorded),
                "device": args.device,
                "precision": args.precision,
            }

        check(checks, "add_task", add_task_recorded)

        def eval_cli() -> dict[str, Any]:
            run = runner.dmt("eval", "--store", str(store), "--device", args.device,
                             "-p", str(scale.PLUGIN), "--json")  # fmt: skip
            metrics = json.loads(run["stdout"])["metrics"]
            return {"ok": set(metrics) == set(TASKS), "precision": "fp32", "metrics": metrics}

        api = open_store(store, plugins=[str(scale.PLUGIN)], tracking=False)

        def eval_api() -> dict[str, Any]:
            result = api.evaluate(device=args.device, precision="bf16")
            return {"ok": set(result["metrics"]) == set(TASKS), "metrics": result["metrics"]}

        def predict_api() -> dict[str, Any]:
            path = [str(folder / "inputs.npy")]
            fp32 = api.predict(path, device=args.device, tasks=[OLD_TASK])
            with torch.autocast(torch.device(args.device).type, dtype=torch.bfloat16):
                bf16 = api.predict(path, device=args.device, tasks=[OLD_TASK])
            a, b = (r["tasks"][OLD_TASK]["prediction"] for r in (fp32, bf16))
            agree = sum(x == y for x, y in zip(a, b, strict=True)) / len(a)
            return {"ok": len(b) == len(inputs), "class_agreement_with_fp32": agree}

        check(checks, "eval_cli", eval_cli)
        check(checks, "eval_api_bf16", eval_api)
        check(checks, "predict_api_bf16", predict_api)

        for option in args.options:
            copy = common.fresh_copy(empty, folder, option)
            run = runner.add_task(copy, TASKS[0], extra=(f"--{option}",))
            rows.append(dmt_row(args, option, 0, run, copy))
            shutil.rmtree(copy)

        config = {
            "device": args.device, "threads": args.threads, "shape": shape(args),
            "images": args.images, "val": val_size(args), "batch_size": args.batch_size,
            "epochs": args.epochs, "precision": args.precision,
            "variants": ["default", *args.options],
        }  # fmt: skip
        bare_run = scale.run_measured(
            [sys.executable, __file__, "--device", args.device, "--bare", json.dumps(config)],
            runner.env,
            folder,
        )
        bare = json.loads(bare_run["stdout"].strip().splitlines()[-1])
        commands = runner.commands
    for row in rows:
        seconds = bare[row["variant"]]
        row["bare_images_per_s"] = args.images / common.median(seconds[1:])
        row["bare_epoch1_images_per_s"] = args.images / seconds[0]
        row["ratio"] = row["dmt_images_per_s"] / row["bare_images_per_s"]
        row["epoch1_ratio"] = row["dmt_epoch1_images_per_s"] / row["bare_epoch1_images_per_s"]
    elapsed = time.perf_counter() - started
    ok = all(c.get("ok") for c in checks.values())
    headers = ["variant", "k", "dmt img/s", "bare img/s", "÷ bare", "epoch 1 ÷ bare",
               "dmt wall s", "peak RSS MiB", "cache MB", "cache: where"]  # fmt: skip
    text_rows = [
        [r["variant"], r["k"], r["dmt_images_per_s"], r["bare_images_per_s"], r["ratio"],
         r["epoch1_ratio"], r["seconds"], r["peak_rss_mib"], r["cache_mb"] if r["k"] else None,
         r["cache_where"]]
        for r in rows
    ]  # fmt: skip
    device = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    title = (
        f"dmt add-task images/s ÷ a bare PyTorch loop of the same column (resnet50, "
        f"{args.input}, {args.images} images, batch {args.batch_size}, {args.epochs} epochs, "
        f"{args.precision}, {device}; steady state: median epoch after the first)"
    )
    check_lines = [
        f"  {name}: {'ok' if c.get('ok') else 'FAILED'}"
        + (f" ({c['error']})" if "error" in c else "")
        for name, c in checks.items()
    ]
    text = "\n".join(
        [title, common.table(headers, text_rows), "checks:", *check_lines,
         f"all checks {'passed' if ok else 'FAILED'}; {elapsed:.0f} s"]
    )  # fmt: skip
    identical = checks.get("old_outputs_identical", {})
    result = {
        "ok": ok,
        "old_outputs_identical": bool(identical.get("ok")),
        "throughput_ratio": rows[0]["ratio"],
        "checks": checks,
        "rows": rows,
        "bare_epoch_seconds": bare,
        "commands": commands,
        "settings": {k: v for k, v in vars(args).items() if k not in ("json", "bare")},
        "seconds": elapsed,
    }
    common.report(args, text, result)
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
