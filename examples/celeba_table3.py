"""DMT Table 3 on CelebA: ST, MT and DMT on the four most imbalanced attributes, trained on the
original (imbalanced) training set and after resampling the minority class.

The protocol of Fang et al. 2017 (§4.1, Table 3): the attributes Bald, Wearing_Hat, Mustache
and Goatee, in two groups learned jointly, (Bald, Wear.Hat) and (Mustache, Goatee); images
face-aligned, grayscale and histogram-equalised (`celeba-histeq.*`, `--family` picks another);
no augmentation, no pre-training; every model built from the paper's column (`dmt-cnn`):

    ST    each task alone: one column, no connections (connection kind `none`)
    MT    hard sharing within a group: one trunk, a head per task
    DMT   a column per task joined by TTC gates, the group trained jointly (`ttc`)

Each is trained twice: on the training set as it is, and with every task's minority class
resampled (`--balance`: each batch draws both classes equally, each task from its own pool).
The score is the paper's: the mean of the accuracies on the positive and on the negative test
images (balanced accuracy), on the official test partition. The paper does not give its
optimiser or epochs: we use Adam at 1e-3 and keep the best epoch on the official validation
partition. The table puts the paper's figures beside ours, with the minority proportion of
each attribute in the training set.

    python examples/celeba_table3.py --data-dir data [--epochs 5] [--workers 4] [--quick]

Needs `<data-dir>/celeba/` (see docs/datasets.md); without it the script exits
with the plugin's message saying which files are expected where (exit code 7).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from dmtcore.errors import DmtError
from dmtcore.hooks.host import PluginHost, create_plugin_host
from dmtcore.model.baselines import HardSharingModel
from dmtcore.operations import (
    DataOptions,
    evaluate_store,
    init_store,
    make_target,
    train_tasks,
)
from dmtcore.tasks.data import Batches, dataset_labels, resolve_device
from dmtcore.tasks.names import InputSpec
from dmtcore.tasks.spec import DataRequest
from dmtcore.train.evaluation import evaluate
from dmtcore.train.loop import TrainSettings, fit

# Table 3 of the paper: column -> (attribute, minority proportion, {regime: (ST, MT, DMT)}).
# The table's labels put the lower scores under "Trained On Original Unbalanced Dataset";
# the paper's text says the opposite, but a majority-class predictor scores 50% and the
# lower block (56.4% for Bald) is what imbalanced training gives, so we follow the labels.
PAPER = {
    "Bald": ("bald", 0.02, {"original": (56.4, 79.4, 80.1), "resampled": (95.5, 96.2, 96.2)}),
    "Wear.Hat": (
        "wearing-hat",
        0.05,
        {"original": (82.2, 89.1, 91.2), "resampled": (95.3, 95.5, 96.0)},
    ),
    "Mustache": (
        "mustache",
        0.04,
        {"original": (58.6, 60.3, 62.0), "resampled": (90.9, 91.2, 91.9)},
    ),
    "Goatee": ("goatee", 0.06, {"original": (73.3, 78.7, 79.3), "resampled": (93.7, 94.1, 94.1)}),
}
GROUPS = (("Bald", "Wear.Hat"), ("Mustache", "Goatee"))  # "learned jointly"
METHODS = ("ST", "MT", "DMT")
REGIMES = {
    "original": "Trained on original unbalanced dataset",
    "resampled": "Trained after resampling minority samples",
}
FAMILIES = ("celeba-histeq", "celeba-gray", "celeba")


def run_store(
    host: PluginHost,
    kind: str,
    tasks: list[str],
    spec: InputSpec,
    settings: TrainSettings,
    data: DataOptions,
) -> dict[str, float]:
    """Train `tasks` jointly in a fresh store of connection kind `kind`; test score."""
    with tempfile.TemporaryDirectory() as folder:
        store = Path(folder) / "store"
        init_store(store, host, spec, connection=kind)
        train_tasks(store, tasks, host, settings, data, notify=lambda message: None)
        metrics = evaluate_store(store, host, tasks, "test", settings, data)
    return {task: metrics[task]["balanced_accuracy"] for task in tasks}


def run_hard_sharing(
    host: PluginHost, tasks: list[str], spec: InputSpec, settings: TrainSettings, data: DataOptions
) -> dict[str, float]:
    """MT: one trunk shared by the group, a head per task, the tasks in turn; test score."""
    specs = [host.kinds.task(t) for t in tasks]
    device = resolve_device(settings.device)
    targets = [make_target(s, spec, settings, data, device) for s in specs]
    torch.manual_seed(settings.seed)
    model = HardSharingModel(spec, host.kinds.backbone("dmt-cnn"), {}, specs).to(device)
    fit(model, targets, settings)
    scores = {}
    for task_spec in specs:
        test = task_spec.datasets(DataRequest(data.data_dir, spec, settings.seed)).test
        batches = Batches(
            task_spec, test, spec, settings.batch_size, False, device, workers=settings.workers
        )
        scores[task_spec.name] = evaluate(model, task_spec, batches)["balanced_accuracy"]
    return scores


def minority(host: PluginHost, task: str, spec: InputSpec, data: DataOptions) -> float:
    """The share of the rarer class in the task's training set (labels only, no images)."""
    train = host.kinds.task(task).datasets(DataRequest(data.data_dir, spec)).train
    positive = dataset_labels(train).float().mean().item()
    return min(positive, 1 - positive)


def print_table(
    results: dict[str, dict[str, dict[str, float]]],
    minorities: dict[str, float],
    names: dict[str, str],
    family: str,
    epochs: int,
) -> None:
    print(
        f"\nCelebA {family}, test balanced accuracy (%): paper | ours ({epochs} epoch{'s' if epochs > 1 else ''})"
    )
    header = ["Attribute", "", *PAPER]
    rows = [
        ["Minority proportion", "", *(f"{PAPER[c][1]:.2f} | {minorities[names[c]]:.2f}" for c in PAPER)]
    ]  # fmt: skip
    for regime, title in REGIMES.items():
        rows.append([title, "", *([""] * len(PAPER))])
        for i, method in enumerate(METHODS):
            cells = [
                f"{PAPER[c][2][regime][i]:.1f} | {100 * results[regime][method][names[c]]:.1f}"
                for c in PAPER
            ]
            rows.append(["", method, *cells])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for index, row in enumerate([header, *rows]):
        if row[0] in REGIMES.values():
            print(row[0])
            continue
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if index == 0:
            print("  ".join("-" * w for w in widths))
    print("MT and DMT learn (Bald, Wear.Hat) and (Mustache, Goatee) jointly; ST each alone.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--download", action="store_true", help="try torchvision's download")
    parser.add_argument("--family", choices=FAMILIES, default="celeba-histeq")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=0, help="image-decoding processes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="1 epoch (a smoke test)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    epochs = 1 if args.quick else args.epochs
    names = {column: f"{args.family}.{task}" for column, (task, _, _) in PAPER.items()}
    results: dict[str, dict[str, dict[str, float]]] = {}
    try:
        host = create_plugin_host()
        spec = InputSpec.from_shape(host.kinds.task(names["Bald"]).input_shape)
        data = DataOptions(args.data_dir, args.download)
        minorities = {names[c]: minority(host, names[c], spec, data) for c in PAPER}
        for regime in REGIMES:
            settings = TrainSettings(
                epochs=epochs,
                batch_size=args.batch_size,
                lr=args.lr,
                optimizer=args.optimizer,
                seed=args.seed,
                device=args.device,
                balance=regime == "resampled",
                workers=args.workers,
            )
            results[regime] = {}
            for method in METHODS:
                started = time.perf_counter()
                scores: dict[str, float] = {}
                units = [[n] for n in names.values()] if method == "ST" else GROUPS
                for unit in units:
                    tasks = [names.get(t, t) for t in unit]
                    if method == "MT":
                        scores.update(run_hard_sharing(host, tasks, spec, settings, data))
                    else:  # ST: each task alone in its own store, its own best epoch
                        kind = "none" if method == "ST" else "ttc"
                        scores.update(run_store(host, kind, tasks, spec, settings, data))
                results[regime][method] = scores
                seconds = time.perf_counter() - started
                print(f"{regime} {method}: done in {seconds:.0f}s", file=sys.stderr, flush=True)
    except DmtError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    print_table(results, minorities, names, args.family, epochs)
    if args.json:
        payload: dict[str, Any] = {
            "epochs": epochs,
            "family": args.family,
            "minority": minorities,
            "results": results,
            "paper": {
                names[c]: {"minority": p[1], **{r: dict(zip(METHODS, v, strict=True)) for r, v in p[2].items()}}
                for c, p in PAPER.items()
            },
        }  # fmt: skip
        args.json.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
