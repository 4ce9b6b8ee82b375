"""Peak memory of `dmt predict` as the number of images grows: it should stay flat.

Generates N random 8×8 images as one .npy file, runs `dmt predict FILE --json` in a subprocess
(output discarded) on a store with two digits tasks, and reads the child's peak RSS from the
kernel (wait4). Prints seconds, peak RSS and the ratio of each size to the smallest.

    python benchmarks/predict_memory.py [--quick] [--sizes 2000 20000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from dmtcore.hooks.host import create_plugin_host
from dmtcore.operations import add_task
from dmtcore.train.loop import TrainSettings


def peak_rss_of(args: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS in MiB) of a child process."""
    started = time.perf_counter()
    with open(os.devnull, "w") as sink:
        process = subprocess.Popen(args, stdout=sink, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(args)} failed: {process.stderr.read().decode()[-2000:]}")
    return seconds, usage.ru_maxrss / 1024  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--quick", action="store_true", help="sizes 200 and 2000")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/predict_memory.json"))
    args = parser.parse_args()
    sizes = [200, 2000] if args.quick else sorted(args.sizes)
    rows = []
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        host = create_plugin_host()
        for task in ("digits.class", "digits.even"):
            add_task(folder / "store", task, host, TrainSettings(epochs=1), notify=lambda m: None)
        for size in sizes:
            images = folder / f"images-{size}.npy"
            np.save(images, np.random.default_rng(size).random((size, 1, 8, 8), dtype=np.float32))
            command = [
                sys.executable,
                "-m",
                "dmtcore",
                "predict",
                str(images),
                "--store",
                str(folder / "store"),
                "--json",
            ]
            seconds, rss = peak_rss_of(command)
            rows.append(
                {
                    "images": size,
                    "seconds": seconds,
                    "peak_rss_mib": rss,
                    "images_per_s": size / seconds,
                }
            )
    base = rows[0]["peak_rss_mib"]
    print(f"{'images':>8} {'seconds':>8} {'images/s':>9} {'peak RSS MiB':>13} {'ratio':>6}")
    for row in rows:
        row["ratio"] = row["peak_rss_mib"] / base
        print(
            f"{row['images']:>8} {row['seconds']:>8.2f} {row['images_per_s']:>9.0f} {row['peak_rss_mib']:>13.1f} {row['ratio']:>6.2f}"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
