"""Commands for the MLflow Model Registry: register, promote, pull."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from dmtcore.cli.common import (
    cli,
    emit,
    json_option,
    plugin_host,
    resolve_tracking_uri,
    store_option,
)
from dmtcore.errors import InvalidValueError
from dmtcore.store import Store


def _registry_client(store: Path | None, tracking_uri: str | None) -> tuple[Any, str]:
    from mlflow.tracking import MlflowClient

    if tracking_uri is None and store is None:
        raise InvalidValueError(
            "say where the registry is: --tracking-uri URI (or MLFLOW_TRACKING_URI), e.g. "
            "sqlite:///path/to/store/mlflow.db or http://host:5000"
        )
    uri, embedded = resolve_tracking_uri(store, tracking_uri) if store else (tracking_uri, False)
    if embedded:
        from dmt_registry.tracking import ensure_embedded_database

        ensure_embedded_database(store, lambda message: click.echo(f"warning: {message}", err=True))
    return MlflowClient(tracking_uri=uri, registry_uri=uri), uri


def tracking_uri_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--tracking-uri",
        envvar="MLFLOW_TRACKING_URI",
        default=None,
        help="MLflow tracking and registry URI [default: sqlite database inside the store].",
    )(f)


@cli.command()
@store_option
@tracking_uri_option
@json_option
def register(store: Path, tracking_uri: str | None, as_json: bool) -> None:
    """Publish the store's current version to the Model Registry (e.g. after --no-register).

    Logs it in a run of its own, tags it, and points the alias 'current' at it.
    """
    from dmt_registry.publish import model_name
    from dmt_registry.publish import register as publish
    from dmtcore.runinfo import RunInfo

    opened = Store.open(store)
    manifest = opened.manifest()
    uri, embedded = resolve_tracking_uri(store, tracking_uri)
    from dmt_registry.tracking import MlflowTracker, reported_call

    tracker = MlflowTracker(uri, embedded, register=False)
    run = RunInfo(
        "register",
        [t["name"] for t in manifest["tasks"]],
        store,
        manifest["name"],
        manifest["version"],
        {},
    )
    tracker.dmt_run_started(run=run)
    try:
        version = reported_call(
            uri, lambda: publish(tracker.client, opened, manifest["version"], tracker.run_id)
        )
    except BaseException as exc:
        tracker.dmt_run_failed(run=run, error=exc)
        raise
    tracker.client.set_terminated(tracker.run_id, "FINISHED")
    name = model_name(manifest)
    emit(
        as_json,
        {
            "model": name,
            "version": version,
            "store_version": manifest["version"],
            "tracking_uri": uri,
        },
        lambda: click.echo(
            f"Registered store version {manifest['version']} as models:/{name}/{version} (alias current)"
        ),
    )


@cli.command()
@click.argument("version")
@click.option("--alias", required=True, help="Alias to point at VERSION, e.g. production.")
@store_option
@click.option("--model-name", default=None, help="[default: the store's registered model]")
@tracking_uri_option
@json_option
def promote(
    version: str,
    alias: str,
    store: Path,
    model_name: str | None,
    tracking_uri: str | None,
    as_json: bool,
) -> None:
    """Point ALIAS of the registered model at VERSION (aliases only: stages are deprecated)."""
    from dmt_registry.publish import model_name as store_model_name
    from dmt_registry.publish import promote as set_alias
    from dmt_registry.tracking import reported_call

    name = model_name or store_model_name(Store.open(store).manifest())
    client, uri = _registry_client(store, tracking_uri)
    reported_call(uri, lambda: set_alias(client, name, version, alias))
    emit(
        as_json,
        {"model": name, "version": version, "alias": alias},
        lambda: click.echo(f"models:/{name}@{alias} now points at version {version}"),
    )


@cli.command()
@click.argument("model_uri")
@store_option
@tracking_uri_option
@json_option
def pull(model_uri: str, store: Path, tracking_uri: str | None, as_json: bool) -> None:
    """Rebuild a working store from a registered version: models:/NAME/3 or models:/NAME@current.

    Its predictions equal the original's exactly; add tasks to it and the lineage goes on.
    """
    from dmt_registry.publish import pull as pull_store

    if not tracking_uri:
        raise InvalidValueError(
            "say which registry to pull from: --tracking-uri URI (or MLFLOW_TRACKING_URI), e.g. "
            "sqlite:///path/to/store/mlflow.db or http://host:5000"
        )
    pulled = pull_store(model_uri, tracking_uri, store, plugin_host((), False).registry)
    manifest = pulled.manifest()
    emit(
        as_json,
        {
            "store": str(store),
            "model_uri": model_uri,
            "version": manifest["version"],
            "tasks": [t["name"] for t in manifest["tasks"]],
        },
        lambda: click.echo(
            f"Pulled {model_uri} into {store}: version {manifest['version']}, tasks "
            f"{', '.join(t['name'] for t in manifest['tasks'])}"
        ),
    )
