"""Commands that read a trained model: eval, predict, connections."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from dmtcore.cli.common import (
    cli,
    data_options,
    echo_progress,
    emit,
    json_option,
    plugin_options,
    print_table,
    starting,
    store_option,
)


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
    cross-stitch: the per-source weight (units per channel: its mean). Rows read from columns;
    '-' means no link. Where the store fuses the last features into the head, the last
    boundary is 'stage L → head' (for dmt-cnn, DMT Table 6's "layer 6 to layer 7").
    """
    from dmtcore.api import open_store

    payload = open_store(store).connections(stage, plot_path)
    names = payload["tasks"]

    def human() -> None:
        click.echo(f"{payload['connection_label']} relations, store {store} v{payload['version']}")
        for entry in payload["stages"]:
            matrix = entry["matrix"]
            click.echo(f"\n{entry['label']} (row: task, column: source)")
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
    notify = starting(as_json)
    from dmtcore.api import open_store

    api = open_store(
        store, plugins=plugins, autoload=False if no_plugin_autoload else None, notify=notify
    )
    payload = api.evaluate(task_names, split=split, **options)
    results = payload["metrics"]
    metric_names = sorted({m for values in results.values() for m in values})
    emit(
        as_json,
        payload,
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
    help=(
        "Write every dense map as a viewable PNG and a raw .npy, the boxes of region tasks "
        "drawn on each image as a PNG, and predictions.json, here."
    ),
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
    Arrays (.npy), read the one way their shape allows:
      H×W or C×H×W        one image
      N×C×H×W             N images
      H×W×C, N×H×W×C      channels last (when the channels cannot be first)
      N×H×W               N gray images, for a 1-channel store
    C is the store's channel count, or 1 (repeated), or 3 for a 1-channel
    store (luminance). A shape that fits no layout, or two (3×H×W for a
    1-channel store), is refused, whatever its H×W.

    Every input, image or array, is converted the same way to the store's C×H×W: colour to
    grey by luminance or grey to colour by repeating, any other H×W resized bilinearly
    (antialiased; a JPEG of twice the size or more is first decoded at 1/2, 1/4 or 1/8
    scale). One line on stderr says what was converted, e.g. 'input: 3 images converted to
    the store's 1×8×8: colour → grey; 64×64 → 8×8 (bilinear, antialiased); values 0–255 →
    0–1'.

    Values: 8-bit images and uint8 arrays are divided by 255, 16-bit images and uint16
    arrays by 65535; everything else must already be in [0, 1] (float arrays of 0–255
    or 0–16 are refused with the division to make). Ctrl-C stops at the next batch.

    Pixel-level tasks predict a map per image at the store's input size: --json gives the
    arrays (class ids H×W with per-pixel probabilities, depth H×W, normals 3×H×W); --out DIR
    writes them as PNG and .npy files, batch by batch. Region tasks predict boxes: --out DIR
    draws them on each image (enlarged to 256 pixels or more), one PNG per detection task,
    each box labelled with its class, score and attributes. --json puts each list of numbers
    (a probability vector, a row of a map) on one line."""
    from dmtcore.api import open_store
    from dmtcore.inference.predict import conversions_noted, json_text

    api = open_store(store, plugins=plugins)
    with conversions_noted() as conversions:
        payload = api.predict(
            inputs, tasks=task_names, device=device, batch_size=batch_size, out=out_dir
        )
    line = conversions.line()
    if line is not None:
        echo_progress(line)  # a note, on stderr even under --json
    if as_json:
        click.echo(json_text(payload))
        return
    if out_dir is not None:
        rows = payload["rows"]  # {"input": ..., task: prediction or file, ..., "pictures"}
        names = (
            [k for k in rows[0] if k not in ("input", "pictures")]
            if rows
            else list(dict.fromkeys(task_names))
        )
        print_table(
            [(r["input"], *(_written(r, t) for t in names)) for r in rows], ("input", *names)
        )
        click.echo(
            f"wrote {len(rows)} input(s) into {out_dir} (see {Path(payload['predictions']).name})"
        )
        return
    result = payload["tasks"]
    names = list(result)
    rows = [
        {"input": label, **{t: _shown_prediction(result[t]["prediction"][i]) for t in names}}
        for i, label in enumerate(payload["inputs"])
    ]
    print_table([tuple(r.values()) for r in rows], ("input", *names))


def _written(row: dict[str, Any], task: str) -> Any:
    """A --out table cell: a dense map's file, or a region task's box count and picture."""
    picture = row.get("pictures", {}).get(task)
    if picture is None:
        return row[task]
    count = len(row[task])
    return f"{count} box{'es' if count != 1 else ''}: {picture}"


def _shown_prediction(value: Any) -> Any:
    """A dense map is named by its size in the table (--json or --out give the values)."""
    if isinstance(value, list) and value and isinstance(value[0], list):
        import numpy as np

        return "map " + "×".join(map(str, np.shape(value))) + " (--out DIR saves it)"
    return value


@cli.command()
@click.argument("task_names", nargs=-1, required=True, metavar="TASK...")
@store_option
@click.option(
    "--column", default=None, metavar="TASK", help="Features of this stored task's column."
)
@click.option(
    "--stage",
    type=int,
    default=None,
    help="Features after this stage (from 1) [default: the last convolutional one].",
)
@click.option("--split", type=click.Choice(["train", "val"]), default="val", show_default=True)
@click.option(
    "--reduce",
    type=click.Choice(["min", "mean"]),
    default="min",
    show_default=True,
    help="Distance of multi-class tasks: over their classes' one-vs-rest maps.",
)
@click.option(
    "--threshold",
    type=float,
    default=None,
    help="Cut the dendrogram at this distance (0 to 1) [default: in its largest gap].",
)
@click.option("--groups", "group_count", type=int, default=None, help="Cut into this many groups.")
@click.option(
    "--epochs",
    type=int,
    default=1,
    show_default=True,
    help="Training of the fresh column used when the store has no tasks.",
)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@data_options
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Draw the dendrogram and the heatmaps into this PNG file.",
)
@click.option(
    "--tracking-uri",
    envvar="MLFLOW_TRACKING_URI",
    default=None,
    help="MLflow tracking URI [default: sqlite database inside the store].",
)
@click.option("--no-tracking", is_flag=True, help="Do not log this to MLflow.")
@plugin_options
@json_option
def relate(
    task_names: tuple[str, ...],
    store: Path,
    plot_path: Path | None,
    tracking_uri: str | None,
    no_tracking: bool,
    plugins: tuple[str, ...],
    no_plugin_autoload: bool,
    as_json: bool,
    **options: Any,
) -> None:
    """Which tasks to train together (DMT §2): distances between their response contrast
    maps (mean features of positive samples minus negative ones), the co-occurrence of their
    labels where they label the same images, and groups by average-linkage clustering.

    Features come from a stored column (--column, --stage) or, when the store is absent or
    has no tasks, from a fresh column trained briefly on the tasks (nothing is stored).
    Distances run from 0 (the same contrast) to 1; see dmtcore/analysis/task_grouping.py for the
    choices."""
    from dmtcore.api import open_store

    api = open_store(
        store,
        plugins=plugins,
        autoload=False if no_plugin_autoload else None,
        tracking_uri=tracking_uri,
        tracking=not no_tracking,
        notify=echo_progress,
    )
    relate_options = {k: options.pop(k) for k in RELATE_OPTIONS}
    payload = api.relate(task_names, plot=plot_path, **relate_options, **options)
    emit(as_json, payload, lambda: _print_relatedness(payload, plot_path))


RELATE_OPTIONS = ("column", "stage", "split", "reduce", "threshold", "group_count")


def _print_relatedness(payload: dict[str, Any], plot_path: Path | None) -> None:
    from dmtcore.analysis.task_grouping import describe_features

    names = payload["tasks"]
    click.echo(f"Response contrast maps from {describe_features(payload['features'])}")
    click.echo(
        f"\nDistance (0 = the same contrast, 1 = unrelated; multi-class: {payload['reduce']} "
        "over class pairs)"
    )
    distance = payload["distance"]
    print_table(
        [(n, *(float(v) for v in row)) for n, row in zip(names, distance, strict=True)],
        ("task", *names),
    )
    if any(v is not None for row in payload["cooccurrence"] for v in row):
        click.echo("\nLabel co-occurrence (phi; '-': the tasks do not label the same images)")
        print_table(
            [
                (n, *("-" if v is None else v for v in row))
                for n, row in zip(names, payload["cooccurrence"], strict=True)
            ],
            ("task", *names),
        )
    click.echo("\nNearest")
    rows = []
    for i, name in enumerate(names):
        other = payload["nearest"][name][0]
        j = names.index(other)
        via = payload["via"][i][j]
        rows.append((name, other, float(distance[i][j]), " ↔ ".join(via) if via else ""))
    print_table(rows, ("task", "nearest", "distance", "classes"))
    cut = payload["cut"]
    how = f"{cut['groups']} groups" if cut["rule"] == "groups" else f"{cut['threshold']:.4f}"
    rule = "" if cut["rule"] in ("groups", "threshold") else f" ({cut['rule']})"
    click.echo(f"\nGroups (average linkage, cut at {how}{rule})")
    for number, members in enumerate(payload["groups"], 1):
        click.echo(f"  {number}. {', '.join(members)}")
    if plot_path is not None:
        click.echo(f"\nDendrogram and heatmaps written to {plot_path}")
    if payload.get("run_id"):
        click.echo(f"Logged to MLflow run {payload['run_id']} at {payload['tracking_uri']}")
