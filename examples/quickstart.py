"""Grow a multi-task model on real handwritten digits, one task at a time, with the dmt CLI.

Adds three digits tasks one after another (each new column connected to the frozen earlier
ones), shows the store, evaluates it, removes a task and reconnects the rest, and lists the
runs and registered model versions MLflow recorded in the store's embedded database. Every command it runs is printed, so
the output doubles as a walkthrough. Usage: python examples/quickstart.py [--store DIR]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

TASKS = ("digits.class", "digits.even", "digits.prime")


def dmt(*args: str) -> None:
    print(f"\n$ dmt {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, "-m", "dmtcore", *args], check=True)


def show_mlflow_runs(store: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{store.resolve() / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(store.resolve().name)
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    print(f"\nMLflow runs in {uri} (experiment {experiment.name!r}):")
    for run in runs:
        finals = {
            k: v for k, v in run.data.metrics.items() if k.count(".") == 2 and ".val." not in k
        }
        summary = ", ".join(f"{k} {v:.4f}" for k, v in sorted(finals.items()))
        print(
            f"  {run.info.run_name:<28} {run.info.status:<9} store v{run.data.tags.get('dmt.version')}  {summary}"
        )
    name = experiment.name
    print(f"\nRegistered versions of models:/{name} (alias 'current' -> the newest):")
    for version in sorted(
        client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version)
    ):
        print(f"  v{version.version}  {version.description}")
    print(f"\nBrowse them with:  mlflow ui --backend-store-uri {uri}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=Path("dmt-quickstart"))
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    store: Path = args.store
    if (store / "CURRENT").is_file():
        print(f"Removing the previous quickstart store {store}")
        shutil.rmtree(store)
    started = time.perf_counter()
    for task in TASKS:
        dmt("add-task", task, "--store", str(store), "--epochs", str(args.epochs))
    dmt("status", "--store", str(store))
    dmt("eval", "--store", str(store))
    dmt("remove-task", "digits.even", "--store", str(store), "--epochs", "3")
    dmt("history", "--store", str(store))
    show_mlflow_runs(store)
    print(f"\nQuickstart finished in {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
