"""Commands that create, inspect and repair a store: init, status, history, verify, rollback,
and the catalogue of what plugins offer (plugins, tasks)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from dmtcore.cli.common import (
    cli,
    emit,
    json_option,
    metric_label,
    plugin_host,
    plugin_options,
    print_table,
    store_option,
    verbose,
)
from dmtcore.store.directory import Store


@cli.command()
@store_option
@click.option(
    "--input", "input_spec", default=None, help="Image shape CxHxW [default: the first task's]."
)
@click.option("--backbone", default="dmt-cnn", show_default=True)
@click.option("--connection", default="ttc", show_default=True)
@click.option(
    "--connection-option",
    "connection_option",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override an option of the connection kind (repeatable), e.g. init_alpha=0.2 (ttc) "
    "or granularity=layer (cross-stitch: one unit per layer, not per channel).",
)
@click.option(
    "--name", default=None, help="Store name used in MLflow [default: the directory name]."
)
@click.option(
    "--model-name",
    default=None,
    help="Registered model in the MLflow Model Registry [default: the store name].",
)
@click.option(
    "--backbone-option",
    "backbone_option",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override an option of the backbone (repeatable), e.g. weights=imagenet "
    "('dmt backbones' lists each one's options).",
)
@click.option(
    "--download",
    is_flag=True,
    help="Fetch the pretrained weights that --backbone-option weights=... names with the "
    "library's own downloader when they are not in its cache (never done otherwise).",
)
@plugin_options
@json_option
def init(
    store: Path,
    input_spec: str | None,
    backbone: str,
    connection: str,
    connection_option: tuple[str, ...],
    backbone_option: tuple[str, ...],
    model_name: str | None,
    name: str | None,
    download: bool,
    plugins: tuple[str, ...],
    no_plugin_autoload: bool,
    as_json: bool,
) -> None:
    """Create an empty store.

    With pretrained weights (--backbone-option weights=imagenet), they are read from the
    library's cache (torchvision: $TORCH_HOME/hub/checkpoints; timm: the Hugging Face cache)
    and copied into the store, so no later command needs the cache; every new column starts
    from them, and the input normalisation they expect is recorded and applied."""
    from dmtcore.api import open_store
    from dmtcore.tasks.names import InputSpec, parse_option

    spec = InputSpec.parse(input_spec) if input_spec else None
    payload = open_store(
        store, plugins=plugins, autoload=False if no_plugin_autoload else None
    ).init(
        input_spec,
        backbone=backbone,
        connection=connection,
        connection_options=dict(parse_option(o) for o in connection_option),
        backbone_options=dict(parse_option(o) for o in backbone_option),
        name=name,
        model_name=model_name,
        download=download,
    )
    emit(
        as_json,
        payload,
        lambda: click.echo(
            f"Created store {store} ({backbone}, connection {connection}, input {spec or 'from the first task'})"
        ),
    )


@cli.command()
@click.argument("names", nargs=-1, metavar="[NAME]...")
@click.option(
    "--input",
    "input_spec",
    default="3x224x224",
    show_default=True,
    help="Image shape CxHxW the stages are shown for.",
)
@click.option(
    "--backbone-option",
    "backbone_option",
    multiple=True,
    metavar="KEY=VALUE",
    help="An option for the named backbones, e.g. dilated=true (repeatable).",
)
@plugin_options
@json_option
def backbones(
    names: tuple[str, ...],
    input_spec: str,
    backbone_option: tuple[str, ...],
    plugins: tuple[str, ...],
    no_plugin_autoload: bool,
    as_json: bool,
) -> None:
    """List the backbones (column recipes) with their stages' channels and reductions for an
    input size, or describe the NAMEd ones (timm:MODEL included)."""
    from dmtcore.api import list_backbones
    from dmtcore.tasks.names import parse_option

    rows = list_backbones(
        input_spec,
        names,
        dict(parse_option(o) for o in backbone_option),
        plugins=plugins,
        autoload=False if no_plugin_autoload else None,
    )

    def stages(row: dict[str, Any]) -> str:
        if row.get("error"):
            return f"cannot take {input_spec}: {row['error']}"
        if not row["stages"]:
            return "e.g. " + ", ".join(row.get("examples", []))
        return " ".join(
            f"{s['channels']}" + (f"/{s['reduction']:g}" if s["reduction"] else "")
            for s in row["stages"]
        )

    def human() -> None:
        print_table(
            [
                (r["name"], "yes" if r["pretrained"] else "-", stages(r), r["description"])
                for r in rows
            ],
            ("backbone", "imagenet", f"stages at {input_spec}: channels/reduction", "description"),
        )

    emit(as_json, rows, human)


@cli.command()
@plugin_options
@json_option
def weightings(plugins: tuple[str, ...], no_plugin_autoload: bool, as_json: bool) -> None:
    """List the loss weighting and gradient methods `dmt train --weighting` and `dmt
    remove-task --weighting` take, with their options and papers."""
    from dmtcore.api import list_weightings

    rows = list_weightings(plugins=plugins, autoload=False if no_plugin_autoload else None)

    def human() -> None:
        print_table(
            [
                (
                    r["name"],
                    "gradients" if r["uses_gradients"] else "losses",
                    " ".join(f"{k}={v}" for k, v in r["options"].items()) or "-",
                    r["paper"] or "-",
                    r["description"],
                )
                for r in rows
            ],
            ("weighting", "sees", "options", "paper", "description"),
        )

    emit(as_json, rows, human)


@cli.command()
@plugin_options
@json_option
def plugins(plugins: tuple[str, ...], no_plugin_autoload: bool, as_json: bool) -> None:
    """List loaded plugins, their hooks and what they registered."""
    host = plugin_host(plugins, no_plugin_autoload)
    kinds = host.kinds
    rows = []
    for info in host.plugins:
        registered = [
            f"{what}:{name}" for (what, name), owner in kinds.owners.items() if owner == info.name
        ]
        rows.append({**vars(info), "registered": registered})
    emit(
        as_json,
        rows,
        lambda: print_table(
            [
                (r["name"], r["origin"], r["version"] or "-", r["module"], len(r["registered"]))
                for r in rows
            ],
            ("plugin", "origin", "version", "module", "registered"),
        ),
    )


@cli.command()
@click.argument("words", nargs=-1, metavar="[WORD]...")
@store_option
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default="data",
    show_default=True,
    envvar="DMT_DATA_DIR",
    help="Where plugins look for datasets on disk (for the 'data' column).",
)
@plugin_options
@json_option
def tasks(
    words: tuple[str, ...],
    store: Path,
    data_dir: Path,
    plugins: tuple[str, ...],
    no_plugin_autoload: bool,
    as_json: bool,
) -> None:
    """List the tasks plugins offer (those whose name or plugin contains a WORD, if given),
    marking those already in the store.

    Grouped by plugin, data ready offline first. The data column: built-in (shipped or
    generated), on disk (found under --data-dir), needs --download, missing (to fetch by
    hand, see the plugin's documentation), or '-' when the plugin does not say.
    """
    from dmtcore.hooks.catalog import list_tasks, no_match_message

    host = plugin_host(plugins, no_plugin_autoload)
    in_store = (
        {t["name"] for t in Store.open(store).manifest()["tasks"]} if Store.exists(store) else set()
    )
    rows = list_tasks(host.kinds, data_dir, in_store, words)
    if not rows and words:
        click.echo(no_match_message(host.kinds, words), err=True)

    def human() -> None:
        if rows:
            print_table(
                [
                    (
                        r["name"],
                        r["plugin"],
                        r["output"],
                        r["data"] or "-",
                        "yes" if r["in_store"] else "",
                        r["description"],
                    )
                    for r in rows
                ],
                ("task", "plugin", "output", "data", "in store", "description"),
            )

    emit(as_json, rows, human)


@cli.command()
@store_option
@json_option
def status(store: Path, as_json: bool) -> None:
    """Show the store's current version and tasks (reads JSON only: instant)."""
    from dmtcore.api import open_store
    from dmtcore.model.connection_weights import connection_label

    payload = open_store(store).status()
    manifest, tasks = payload, payload["tasks"]

    def human() -> None:
        spec = (
            "x".join(map(str, manifest["input_spec"]))
            if manifest["input_spec"]
            else "not fixed yet"
        )
        named = f" (named {manifest['name']!r})" if manifest["name"] != Path(store).name else ""
        click.echo(f"Store {store}{named}, version {manifest['version']} of {manifest['created']}")
        switches = [k for k, v in manifest["backbone"]["options"].items() if v is True]
        backbone = " ".join([manifest["backbone"]["name"], *(f"{k}=true" for k in switches)])
        click.echo(f"Input {spec}, backbone {backbone}, connection {connection_label(manifest)}")
        if not tasks:
            click.echo("No tasks yet: add one with 'dmt add-task NAME' (see 'dmt tasks').")
            return
        print_table(
            [
                (
                    t["name"],
                    t["plugin"],
                    f"{t['output']['kind']}/{t['output']['size']}",
                    len(t["sources"]),
                    metric_label(t["primary_metric"]),
                    t["metric"],
                )
                for t in tasks
            ],
            ("task", "plugin", "output", "sources", "metric", "value"),
        )
        click.echo(
            "sources: how many columns the task reads through its connections, its own "
            "included (dmt connections shows which and how much)"
        )
        pending = payload["publish_pending"]
        if pending:
            click.echo(
                f"Publish pending: version {pending['store_version']} is not published to "
                f"{pending['server']} ({pending['reason']}); 'dmt register' publishes it"
            )

    emit(as_json, payload, human)


@cli.command()
@store_option
@json_option
def history(store: Path, as_json: bool) -> None:
    """List the store's versions, newest first."""
    from dmtcore.api import open_store

    entries = open_store(store).history()

    def registry(entry: dict[str, Any]) -> str:
        if entry["pending"]:
            return "pending"
        if entry["pulled_from"]:
            return f"pulled {entry['published_as']}"
        return entry["published_as"] or "-"

    def human() -> None:
        print_table(
            [
                (
                    e["version"],
                    e["created"],
                    f"{e['operation']['name']} {' '.join(e['operation']['tasks'])}".strip(),
                    ", ".join(e["tasks"]) or "-",
                    registry(e),
                )
                for e in entries
            ],
            ("version", "created", "operation", "tasks", "registry"),
        )
        for origin in (e["pulled_from"] for e in entries if e["pulled_from"]):
            chain = ", ".join(
                f"{step['version']} ({step['operation']} {step['tasks']}".rstrip()
                + f" by {step['published_by'] or 'unknown'})"
                for step in origin["lineage"]
            )
            click.echo(
                f"Version {origin['store_version']} was pulled from {origin['model_uri']} "
                f"(models:/{origin['model']}/{origin['version']}) at {origin['server']} on "
                f"{origin['pulled_at']}; its registry lineage: {chain}"
            )

    emit(as_json, entries, human)


@cli.command()
@store_option
@click.option(
    "--all", "every_version", is_flag=True, help="Rebuild every version, not only the current one."
)
@click.option(
    "-p",
    "--plugin",
    "plugins",
    multiple=True,
    metavar="MODULE_OR_FILE",
    help="Load a plugin providing the store's backbone or connection kind.",
)
@json_option
def verify(store: Path, every_version: bool, plugins: tuple[str, ...], as_json: bool) -> None:
    """Check the whole store and report every problem: manifests, weight files and their
    checksums, and that the model rebuilds. Exits 5 when anything is wrong."""
    from dmtcore.api import open_store
    from dmtcore.errors import StoreError

    payload = open_store(store, plugins=plugins).verify(every_version)
    versions, problems = payload["versions"], payload["problems"]
    if as_json:
        click.echo(json.dumps(payload, indent=2))
    elif not problems:
        click.echo(f"Store {store} is sound: {len(versions)} versions checked.")
    else:
        for problem in problems:
            named = problem["message"].startswith(problem["file"])
            click.echo(problem["message"] if named else f"{problem['file']}: {problem['message']}")
    if problems:
        raise StoreError(f"{len(problems)} problem(s) found in store {str(store)!r}")


@cli.command()
@click.argument("version", type=int)
@store_option
@click.option(
    "--tracking-uri",
    envvar="MLFLOW_TRACKING_URI",
    default=None,
    help="MLflow tracking and registry URI [default: sqlite database inside the store].",
)
@click.option(
    "--no-tracking",
    "--no-register",
    "no_tracking",
    is_flag=True,
    help="Do not publish the rolled-back state to the Model Registry (alias current stays).",
)
@json_option
def rollback(
    version: int, store: Path, tracking_uri: str | None, no_tracking: bool, as_json: bool
) -> None:
    """Make an earlier VERSION current again (as a new version: history is never rewritten).

    The new current version is published: the alias 'current' of the registered model moves to
    the registry version of VERSION's state (registered anew only if it never was).
    """
    from dmtcore.api import open_store

    api = open_store(store, tracking_uri=tracking_uri, tracking=not no_tracking, verbose=verbose())
    payload = api.rollback(version)
    published, not_published = payload["published"], payload["not_published"]
    emit(
        as_json,
        payload,
        lambda: click.echo(
            f"Rolled back to version {version}; the store is now at version {payload['version']}\n"
            + (_published_line(published) if published else f"Not published: {not_published}")
        ),
    )


def _published_line(published: dict[str, Any]) -> str:
    where = f"models:/{published['model']}/{published['version']}"
    if published["created"]:
        return f"Published as {where} (alias current)"
    same = (
        f"the model of store version {published['registered_store_version']}, the same "
        "weights: not registered again"
    )
    if not published["alias_moved"]:
        return f"Published: alias current already points at {where} ({same})"
    return f"Published: alias current now points at {where} ({same})"
