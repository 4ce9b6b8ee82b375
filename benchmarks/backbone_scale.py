"""Benchmarks at real scale: add-task with ImageNet-size backbones at 3×224×224, k frozen columns.

The other growth benchmarks use dmt-cnn at 3×8×8 to 3×64×64, where per-operation overhead is a
large part of a step. This one grows stores of the backbones users will pick: torchvision's
ResNet-50 at 3×224×224, one timm model (`--timm-model`, default timm:convnext_atto; give
timm:resnet50 for a like-for-like second ResNet-50), and ResNet-50 `dilated=true` (output stride
8) for a pixel-level task at 3×128×128. Every store is grown by real `dmt add-task` commands,
each one a fresh process as a user would run it (`python -m dmtcore add-task TASK --no-tracking
--epochs 1`), the tasks of benchmarks/_scale_tasks.py (loaded with `-p`): the shapes images and
attributes, `--images` training images per task (default 256; validation a quarter of that),
drawn at the store's input size. Weights: random init (weights=none, the default), since
pretrained ImageNet weights cannot be downloaded on the benchmark machine; the cost of a step
does not depend on the weights' values.

Measured, per backbone, for the chain empty store → k = 0 → 1 → 2 → 3 → 4 frozen columns (the
largest of `--ks`; connection ttc, the default): each add-task is the measured command, adding
one more task to a store holding k frozen columns (k = 0: the first add-task into an empty
store, the column alone). Per command, from the kernel (`os.wait4` on the child): wall seconds,
CPU seconds (user + system: with one torch thread, what the command would take on an idle
machine; the steadier figure on a shared one) and peak RSS; from the manifest's operation record
(`operation.feature_cache` of the version it wrote): the feature cache's size, where it went
(memory, disk — spilled past `--cache-budget-mb` — or "recomputed": no cache, the frozen
columns run every step) and how many frozen columns were read from the features kept by
earlier operations (`kept_read`) instead of computed; from add-task's stderr, what it said
about the cache; from the plugin's hooks (dmt_run_started, dmt_epoch_end, dmt_run_finished),
the split of wall time into start-up (interpreter, imports, store, data, the `--init-from auto`
probe: everything before training), epochs (training and validation, the cache's fill pass
included) and commit (writing the version and the kept features, exit).

How to read the table: `÷k0` is that command's wall (and `cpu ÷k0` its CPU) time divided by
the column alone's, the same backbone and images: the price of k frozen columns. `img/s` is
training images × epochs ÷ the whole command's wall time; `epoch img/s` ÷ epoch seconds only.
`RSS ÷k0` is the peak RSS over the column alone's.

Where the cost goes and what grows with k: the new column's training is the same at every k
(a forward and a backward of one column per image, about three forwards). The frozen columns
add: (1) their features, computed once per operation in epoch 1 (one forward per image per
frozen column: about a third of the column alone's epoch), except the columns whose features an
earlier add-task kept in the store (STORE/features, `--kept-features-mb`, default 1024 MB): in
a chain, usually only the newest frozen column is computed. At 3×224×224 one ResNet-50 column's
stage outputs are 1.4 M values (2.8 MB in float16) per image, so the kept-features budget holds
only a few columns of a few hundred images, and past it the older columns are computed again;
(2) the cache itself, k × 2.8 MB per image: in memory up to `--cache-budget-mb` (2048 MB by
default), spilled to a disk file past it, which is where the peak RSS stops growing; (3) the
connections, whose cost is small next to a ResNet stage (TTC: one gate per frozen column per
stage boundary, a weighted sum of feature maps); (4) loading and committing: k columns' weights
(ResNet-50: 94 MB each in float32) and the kept features written back. With pixel-level tasks
the features are maps at output stride 8, so the cache per image is several times larger.

    python benchmarks/backbone_scale.py [--quick] [--images 256] [--ks 1 2 4] [--epochs 1]
        [--batch-size 32] [--timm-model timm:convnext_atto] [--configs resnet50 timm dense]
        [--device cpu|cuda] [--threads 1] [--json PATH]
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _common as common

PLUGIN = common.HERE / "_scale_tasks.py"
IMAGE_TASKS = ("scale.kind", "scale.colour", "scale.size", "scale.side", "scale.red-circle")
DENSE_TASKS = ("scale.object-seg", "scale.kind-seg")
RETRIES = 2  # a command that fails is retried after a minute (the code may be mid-edit)


@dataclass(frozen=True)
class Config:
    """One chain of stores: a backbone, its options, the input size, the tasks in order."""

    name: str
    backbone: str
    options: tuple[tuple[str, str], ...]
    input: str
    tasks: tuple[str, ...]

    def describe(self) -> str:
        options = "".join(f" {k}={v}" for k, v in self.options)
        return f"{self.name}: {self.backbone}{options} at {self.input}"


def configs(args: Any) -> list[Config]:
    image_input = "3x64x64" if args.quick else "3x224x224"
    dense_input = "3x64x64" if args.quick else "3x128x128"
    every = {
        "resnet50": Config("resnet50", "resnet50", (), image_input, IMAGE_TASKS),
        "timm": Config("timm", args.timm_model, (), image_input, IMAGE_TASKS),
        "dense": Config("dense", "resnet50", (("dilated", "true"),), dense_input, DENSE_TASKS),
    }
    return [every[name] for name in args.configs]


def dmt() -> list[str]:
    return [sys.executable, "-m", "dmtcore"]


def child_environment(args: Any, timings: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DMT_", "MLFLOW_"))}
    env.update(
        OMP_NUM_THREADS=str(args.threads),
        DMT_SCALE_IMAGES=str(args.images),
        DMT_SCALE_VAL=str(max(args.images // 4, 16)),
        DMT_SCALE_TIMINGS=str(timings),
        PYTHONDONTWRITEBYTECODE="1",
    )
    return env


def run_measured(command: list[str], env: dict[str, str], cwd: Path) -> dict[str, Any]:
    """One command in a fresh process: wall and CPU seconds, peak RSS (MiB), its output."""
    for attempt in range(RETRIES + 1):
        started = time.time()
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            process = subprocess.Popen(command, stdout=out, stderr=err, env=env, cwd=cwd)
            _, status, usage = os.wait4(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)
            ended = time.time()
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read().decode(), err.read().decode()
        if process.returncode == 0:
            return {
                "started": started,
                "ended": ended,
                "seconds": ended - started,
                "cpu_seconds": usage.ru_utime + usage.ru_stime,
                "peak_rss_mib": usage.ru_maxrss / 1024,  # Linux reports KiB
                "stdout": stdout,
                "stderr": stderr,
            }
        print(
            f"failed (exit {process.returncode}, try {attempt + 1}): {' '.join(command)}\n"
            f"{stderr[-2000:]}",
            file=sys.stderr,
        )
        if attempt < RETRIES:
            time.sleep(60)
    raise SystemExit(f"command failed {RETRIES + 1} times: {' '.join(command)}")


def phases(run: dict[str, Any], timings: Path) -> dict[str, Any]:
    """Start-up, epochs and commit seconds of one command, from the plugin's timing lines."""
    lines = (
        [json.loads(line) for line in timings.read_text().splitlines()] if timings.exists() else []
    )
    started = next((e["time"] for e in lines if e["event"] == "started"), None)
    epochs = [e for e in lines if e["event"] == "epoch"]
    if started is None or not epochs:
        return {"startup_s": None, "epochs_s": None, "commit_s": None, "epoch_seconds": []}
    return {
        "startup_s": started - run["started"],
        "epochs_s": epochs[-1]["time"] - started,
        "commit_s": run["ended"] - epochs[-1]["time"],
        "epoch_seconds": [e["seconds"] for e in epochs],
    }


def cache_record(store: Path, version: int) -> dict[str, Any] | None:
    manifest = json.loads((store / "versions" / f"v{version:06d}.json").read_text())
    return manifest["operation"].get("feature_cache")


def where(k: int, cache: dict[str, Any] | None) -> str:
    """Where the frozen columns' features came from and went."""
    if k == 0:
        return "- (no frozen column)"
    if not cache:
        return "recomputed (no cache)"
    kept = len(cache.get("kept_read") or [])
    computed = k - kept
    return f"{cache['location']}: {computed} computed, {kept} kept read"


def grow(args: Any, config: Config, folder: Path) -> list[dict[str, Any]]:
    """Init an empty store, then add the config's tasks one by one, each measured."""
    store = folder / config.name
    init = [*dmt(), "init", "--store", str(store), "--backbone", config.backbone,
            "--input", config.input, "-p", str(PLUGIN)]  # fmt: skip
    for key, value in config.options:
        init += ["--backbone-option", f"{key}={value}"]
    timings = folder / f"{config.name}-timings.jsonl"
    env = child_environment(args, timings)
    run_measured(init, env, folder)
    device = ["--device", "cuda", "--precision", "bf16"] if args.device == "cuda" else []
    rows = []
    last = max(args.ks)
    for k, task in enumerate(config.tasks[: last + 1]):
        command = [*dmt(), "add-task", task, "--store", str(store), "--no-tracking",
                   "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
                   "--cache-budget-mb", f"{args.cache_budget_mb:g}", "-p", str(PLUGIN),
                   "--json", *device]  # fmt: skip
        timings.unlink(missing_ok=True)
        run = run_measured(command, env, folder)
        record = json.loads(run["stdout"])
        cache = cache_record(store, record["version"])
        split = phases(run, timings)
        said = [line for line in run["stderr"].splitlines() if line.startswith("feature cache")]
        epoch_median = common.median(split["epoch_seconds"]) if split["epoch_seconds"] else None
        rows.append(
            {
                "config": config.name,
                "backbone": config.backbone,
                "options": dict(config.options),
                "input": config.input,
                "k": k,
                "task": task,
                "seconds": run["seconds"],
                "cpu_seconds": run["cpu_seconds"],
                "command_seconds": record["seconds"],
                "peak_rss_mib": run["peak_rss_mib"],
                **split,
                "images_per_s": args.images * args.epochs / run["seconds"],
                "epoch_images_per_s": args.images / epoch_median if epoch_median else None,
                "cache": cache,
                "cache_mb": (cache or {}).get("bytes", 0) / 2**20,
                "cache_where": where(k, cache),
                "cache_said": said,
                "metrics": record["metrics"],
                "init_from": record.get("init_from"),
            }
        )
        print(
            f"  {config.name} k={k} {task}: {run['seconds']:.1f} s, "
            f"{run['peak_rss_mib']:.0f} MiB, cache {rows[-1]['cache_where']}",
            file=sys.stderr,
        )
    shutil.rmtree(store)
    alone = rows[0]
    for row in rows:
        row["ratio"] = row["seconds"] / alone["seconds"]
        row["ratio_cpu"] = row["cpu_seconds"] / alone["cpu_seconds"]
        row["rss_ratio"] = row["peak_rss_mib"] / alone["peak_rss_mib"]
    return rows


def main() -> None:
    p = common.parser(__doc__.splitlines()[0], "backbone_scale")
    p.add_argument("--images", type=int, default=256, help="training images per task")
    p.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4], help="frozen columns")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--cache-budget-mb", type=float, default=2048, help="dmt's default: 2048")
    p.add_argument("--timm-model", default="timm:convnext_atto")
    p.add_argument(
        "--configs",
        nargs="+",
        default=["resnet50", "timm", "dense"],
        choices=("resnet50", "timm", "dense"),
    )
    args = p.parse_args()
    if args.quick:
        args.images, args.ks, args.batch_size = 32, [1], 16
    common.setup(args)
    rows: list[dict[str, Any]] = []
    described = []
    wall = time.perf_counter()
    with tempfile.TemporaryDirectory() as name:
        for config in configs(args):
            described.append(config.describe())
            rows += grow(args, config, Path(name))
    wall = time.perf_counter() - wall
    headers = ["config", "k", "task", "wall s", "÷k0", "cpu ÷k0", "start s", "epochs s",
               "commit s", "img/s", "epoch img/s", "peak RSS MiB", "RSS ÷k0", "cache MB",
               "cache: where"]  # fmt: skip
    text_rows = [
        [r["config"], r["k"], r["task"], r["seconds"], r["ratio"], r["ratio_cpu"],
         r["startup_s"], r["epochs_s"], r["commit_s"], r["images_per_s"],
         r["epoch_images_per_s"], r["peak_rss_mib"], r["rss_ratio"],
         r["cache_mb"] if r["k"] else None, r["cache_where"]]
        for r in rows
    ]  # fmt: skip
    title = (
        f"add-task with k frozen columns ÷ the column alone (k = 0, the first add-task into an "
        f"empty store); {args.images} training images per task, {args.epochs} epoch(s), batch "
        f"{args.batch_size}, random init (weights=none), cache budget {args.cache_budget_mb:g} "
        f"MB, {args.device}, {args.threads} thread(s); each command a fresh process"
    )
    lines = [f"  {d}" for d in described]
    said = [
        f"  {r['config']} k={r['k']}: {' | '.join(r['cache_said'])}"
        for r in rows
        if r["cache_said"]
    ]
    text = "\n".join(
        [title, *lines, common.table(headers, text_rows), "add-task said:", *said,
         f"whole benchmark: {wall / 60:.1f} min"]
    )  # fmt: skip
    settings = {k: v for k, v in vars(args).items() if k != "json"}
    common.report(args, text, {"rows": rows, "settings": settings, "wall_seconds": wall})


if __name__ == "__main__":
    main()
