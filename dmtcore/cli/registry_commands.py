"""Commands for the MLflow Model Registry: register, promote, pull."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from dmtcore.api import publication_record, tracking_uri_for
from dmtcore.cli.common import (
    cli,
    emit,
    json_option,
    plugin_host,
    store_option,
)
from dmtcore.errors import InvalidValueError
from dmtcore.store.directory import Store


def _registry_client(store: Path | None, tracking_uri: str | None) -> tuple[Any, str]:
    from mlflow.tracking import MlflowClient

    if tracking_uri is None and store is None:
        raise InvalidValueError(
            "say where the registry is: --tracking-uri URI (or MLFLOW_TRACKING_URI), e.g. "
            "sqlite:///path/to/store/mlflow.db or http://host:5000"
        )
    uri, embedded = tracking_uri_for(store, tracking_uri) if store else (tracking_uri, False)
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


def describe_publication(published: Any) -> str:
    """One line: which registry version now serves as `current`, and whether it is new."""
    where = f"models:/{published.model}/{published.version}"
    if published.created:
        return f"Registered store version {published.store_version} as {where} (alias current)"
    moved = (
        f"alias current moved to it from version {published.previous}"
        if published.alias_moved and published.previous
        else "alias current now points at it"
        if published.alias_moved
        else "alias current already points at it"
    )
    return (
        f"Store version {published.store_version} is already registered as {where} (registered "
        f"for store version {published.registered_store_version}; not registered again); {moved}"
    )


@cli.command()
@store_option
@tracking_uri_option
@json_option
def register(store: Path, tracking_uri: str | None, as_json: bool) -> None:
    """Publish the store's current version to the Model Registry (e.g. after --no-register).

    Logs it in a run of its own, tags it, and points the alias 'current' at it. A version whose
    state is already registered (registered before, or rolled back to) is not registered twice:
    'current' moves to the existing registry version.
    """
    from dmt_registry.publish import publish_current

    uri, embedded = tracking_uri_for(store, tracking_uri)
    published = publish_current(store, uri, embedded, "register")
    emit(
        as_json,
        publication_record(published, uri),
        lambda: click.echo(describe_publication(published)),
    )


@cli.command()
@click.argument("version", required=False, type=click.IntRange(min=1))
@click.option(
    "--store-version",
    type=click.IntRange(min=1),
    default=None,
    help="Promote the registry version that publishes this STORE version instead.",
)
@click.option("--alias", required=True, help="Alias to point at the version, e.g. production.")
@store_option
@click.option("--model-name", default=None, help="[default: the store's registered model]")
@tracking_uri_option
@json_option
def promote(
    version: int | None,
    store_version: int | None,
    alias: str,
    store: Path,
    model_name: str | None,
    tracking_uri: str | None,
    as_json: bool,
) -> None:
    """Point ALIAS of the registered model at a version (aliases only: stages are deprecated).

    VERSION is a registry version, the N of models:/NAME/N, which differs from store version
    numbers; or give --store-version N for the registry version that publishes store version
    N. The alias 'current' is dmt's own: it follows the store's current version.
    """
    from dmt_registry.publish import check_alias, registered_for_store_version, store_version_of
    from dmt_registry.publish import model_name as store_model_name
    from dmt_registry.publish import promote as set_alias
    from dmt_registry.tracking import reported_call

    if (version is None) == (store_version is None):
        raise click.UsageError(
            "give either a registry VERSION (models:/NAME/VERSION) or --store-version N"
        )
    check_alias(alias)
    name = model_name or store_model_name(Store.open(store).manifest())
    client, uri = _registry_client(store, tracking_uri)
    if store_version is not None:
        manifest = Store.open(store).manifest(store_version)
        found = reported_call(uri, lambda: registered_for_store_version(client, name, manifest))
        version = int(found)
    reported_call(uri, lambda: set_alias(client, name, str(version), alias))
    published = store_version or reported_call(
        uri, lambda: store_version_of(client, name, str(version))
    )
    of_store = f" (store version {published})" if published else ""
    emit(
        as_json,
        {"model": name, "version": version, "store_version": published, "alias": alias},
        lambda: click.echo(
            f"models:/{name}@{alias} now points at registry version {version}{of_store}"
        ),
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
    pulled = pull_store(model_uri, tracking_uri, store, plugin_host((), False).kinds)
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
