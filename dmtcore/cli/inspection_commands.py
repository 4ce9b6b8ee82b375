"""Commands that read a trained model: eval, predict, connections."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from dmtcore.cli.common import (
    cli,
    data_options,
    emit,
    json_option,
    plugin_host,
    plugin_options,
    print_table,
    store_option,
    train_settings,
)
from dmtcore.errors import DmtError, InvalidValueError
from dmtcore.store import Store


@cli.command()
@store_option
@click.option(
    "--stage",
    type=int,
    default=None,
    help="Only this stage boundary (from 1; with head fusion the last one is 'stage L → head').",
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Also draw the matrices as heatmaps into this PNG file.",
)
@json_option
def connections(store: Path, stage: int | None, plot_path: Path | None, as_json: bool) -> None:
    """Show what the connections learned: per stage, how much each task draws from each other.

    TTC: the gate α_ij; NDDR: the norm of each source's block relative to the own block;
    cross-stitch: the mean per-source weight. Rows read from columns; '-' means no link.
    Where the store fuses the last features into the head, the last boundary is 'stage L →
    head' (for dmt-cnn, DMT Table 6's "layer 6 to layer 7").
    """
    from dmtcore.relations import boundary_label, plot, relation_matrices, select_stage

    manifest = Store.open(store).manifest()
    names = [t["name"] for t in manifest["tasks"]]
    if not names:
        raise DmtError(f"store {str(store)!r} has no tasks yet: no connections to show")
    stages = select_stage(relation_matrices(manifest), stage)
    if plot_path is not None:
        try:
            plot(manifest, stages, plot_path)
        except OSError as exc:
            raise InvalidValueError(
                f"cannot write the plot to {str(plot_path)!r}: {exc.strerror}"
            ) from exc
    payload = {
        "store": str(store),
        "version": manifest["version"],
        "connection": manifest["connection"]["name"],
        "tasks": names,
        "stages": [
            {"stage": number, "label": boundary_label(manifest, number), "matrix": matrix}
            for number, matrix in stages
        ],
        "plot": str(plot_path) if plot_path else None,
    }

    def human() -> None:
        click.echo(
            f"{manifest['connection']['name']} relations, store {store} v{manifest['version']}"
        )
        for number, matrix in stages:
            click.echo(f"\n{boundary_label(manifest, number)} (row: task, column: source)")
            print_table(
                [
                    (n, *("-" if v is None else v for v in row))
                    for n, row in zip(names, matrix, strict=True)
                ],
                ("task", *names),
            )
        if plot_path is not None:
            click.echo(f"\nHeatmaps written to {plot_path}")

    emit(as_json, payload, human)


@cli.command("eval")
@click.argument("task_names", nargs=-1, metavar="[TASK]...")
@store_option
@click.option(
    "--split", type=click.Choice(["train", "val", "test"]), default="val", show_default=True
)
@data_options
@plugin_options
@json_option
def eval_command(
    task_names: tuple[str, ...],
    store: Path,
    split: str,
    plugins: tuple[str, ...],
    no_plugin_autoload: bool,
    as_json: bool,
    **options: Any,
) -> None:
    """Evaluate stored tasks (all by default) on a split of their data.

    Each task's data is split with the seed it was trained with (recorded in the store), so
    `val` is the split that picked its best epoch; --seed seeds only random augmentation.
    """
    from dmtcore.operations import DataOptions, evaluate_store

    settings = train_settings(
        batch_size=options["batch_size"], seed=options["seed"], device=options["device"]
    )
    data = DataOptions(options["data_dir"], options["download"])
    results = evaluate_store(
        store, plugin_host(plugins, no_plugin_autoload), task_names, split, settings, data
    )
    metric_names = sorted({m for values in results.values() for m in values})
    emit(
        as_json,
        {"store": str(store), "split": split, "metrics": results},
        lambda: print_table(
            [(t, *(values.get(m, "") for m in metric_names)) for t, values in results.items()],
            ("task", *metric_names),
        ),
    )


@cli.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False))
@store_option
@click.option(
    "--task", "task_names", multiple=True, help="Only these tasks (repeatable) [default: all]."
)
@click.option("--device", default="auto", show_default=True)
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option(
    "-p",
    "--plugin",
    "plugins",
    multiple=True,
    metavar="MODULE_OR_FILE",
    help="Load a plugin, e.g. one providing the store's backbone or connection kind.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Write every dense map as a viewable PNG and a raw .npy, and predictions.json, here.",
)
@json_option
def predict(
    inputs: tuple[Path, ...],
    store: Path,
    task_names: tuple[str, ...],
    device: str,
    batch_size: int,
    plugins: tuple[str, ...],
    out_dir: Path | None,
    as_json: bool,
) -> None:
    """Predict every task for image files (PNG, JPEG, ...) or .npy arrays, streaming them in
    batches (arrays are memory-mapped) so memory stays flat on large inputs.

    \b
    Arrays (.npy), read the one way that fits the store's input:
      H×W or C×H×W        one image
      N×C×H×W             N images
      H×W×C, N×H×W×C      channels last (when the channels cannot be first)
      N×H×W               N gray images, for a 1-channel store of that H×W
    C is the store's channel count, or 1 (repeated), or 3 for a 1-channel
    store (luminance); images of another H×W are resized. A shape that fits
    no layout, or two (3×H×W for a 1-channel store), is refused.

    Values: 8-bit images and uint8 arrays are divided by 255, 16-bit images and uint16
    arrays by 65535; everything else must already be in [0, 1] (float arrays of 0–255
    or 0–16 are refused with the division to make). Ctrl-C stops at the next batch.

    Pixel-level tasks predict a map per image at the store's input size: --json gives the
    arrays (class ids H×W with per-pixel probabilities, depth H×W, normals 3×H×W); --out DIR
    writes them as PNG and .npy files, batch by batch."""
    if batch_size < 1:
        raise InvalidValueError(f"batch size must be a positive integer, got {batch_size}")
    from dmtcore.data import resolve_device
    from dmtcore.operations import load_current, select_tasks
    from dmtcore.plugins import create_plugin_host
    from dmtcore.predict import iter_batches, task_outputs

    # Loading a store needs no task plugin: only a third-party backbone or connection kind.
    host = create_plugin_host(plugins, autoload=False)
    model, manifest = load_current(store, host)
    names = select_tasks(manifest, list(dict.fromkeys(task_names)))
    model.to(resolve_device(device))
    outputs = task_outputs(manifest)
    summary = {"store": str(store), "version": manifest["version"]}
    if out_dir is not None:
        _predict_to_folder(model, inputs, batch_size, names, outputs, out_dir, summary, as_json)
        return
    from dmtcore.predict import predict as run_predict

    labels: list[str] = []

    def batches() -> Iterator[Any]:
        for images, batch_labels in iter_batches(inputs, model.input_spec, batch_size):
            labels.extend(batch_labels)
            yield images

    result = run_predict(model, batches(), names, outputs)
    rows = [
        {"input": label, **{t: _shown_prediction(result[t]["prediction"][i]) for t in names}}
        for i, label in enumerate(labels)
    ]
    emit(
        as_json,
        {**summary, "inputs": labels, "tasks": result},
        lambda: print_table([tuple(r.values()) for r in rows], ("input", *names)),
    )


def _shown_prediction(value: Any) -> Any:
    """A dense map is named by its size in the table (--json or --out give the values)."""
    if isinstance(value, list) and value and isinstance(value[0], list):
        import numpy as np

        return "map " + "×".join(map(str, np.shape(value))) + " (--out DIR saves it)"
    return value


def _predict_to_folder(
    model: Any,
    inputs: tuple[Path, ...],
    batch_size: int,
    names: list[str],
    outputs: dict[str, dict[str, Any]],
    out_dir: Path,
    summary: dict[str, Any],
    as_json: bool,
) -> None:
    from dmtcore.predict import iter_batches, predict_to_folder

    labelled = iter_batches(inputs, model.input_spec, batch_size)
    writer = predict_to_folder(model, labelled, names, outputs, out_dir)
    path = writer.finish(summary)
    rows = writer.rows
    emit(
        as_json,
        {**summary, "out": str(out_dir), "predictions": str(path), "rows": rows},
        lambda: (
            print_table([tuple(r.values()) for r in rows], ("input", *names)),
            click.echo(f"wrote {len(rows)} input(s) into {out_dir} (see {path.name})"),
        ),
    )
