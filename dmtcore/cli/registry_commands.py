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
    store_option,
)


def tracking_uri_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--tracking-uri",
        envvar="MLFLOW_TRACKING_URI",
        default=None,
        help="MLflow tracking and registry URI [default: sqlite database inside the store].",
    )(f)


def describe_publication(published: dict[str, Any]) -> str:
    """One line: which registry version now serves as `current`, and whether it is new."""
    where = f"models:/{published['model']}/{published['version']}"
    if published["created"]:
        return f"Registered store version {published['store_version']} as {where} (alias current)"
    moved = (
        f"alias current moved to it from version {published['previous']}"
        if published["alias_moved"] and published["previous"]
        else "alias current now points at it"
        if published["alias_moved"]
        else "alias current already points at it"
    )
    return (
        f"Store version {published['store_version']} holds the same weights as store version "
        f"{published['registered_store_version']}, already registered as {where}: not "
        f"registered again; {moved}"
    )


@cli.command()
@store_option
@tracking_uri_option
@click.option(
    "--force",
    is_flag=True,
    help="Move 'current' even if someone else published a version this store does not hold.",
)
@json_option
def register(store: Path, tracking_uri: str | None, force: bool, as_json: bool) -> None:
    """Publish the store's current version to the Model Registry (e.g. after --no-register,
    or a publish that is pending).

    Logs it in a run of its own, tags it, and points the alias 'current' at it. A version whose
    state is already registered (registered before, or rolled back to) is not registered twice:
    'current' moves to the existing registry version. If 'current' is a version this store
    does not descend from (another publisher's), nothing moves (exit 4) unless --force.
    """
    from dmtcore.api import open_store

    published = open_store(store, tracking_uri=tracking_uri).register_version(force=force)
    emit(as_json, published, lambda: click.echo(describe_publication(published)))


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
    from dmtcore.api import open_store

    if (version is None) == (store_version is None):
        raise click.UsageError(
            "give either a registry VERSION (models:/NAME/VERSION) or --store-version N"
        )
    payload = open_store(store, tracking_uri=tracking_uri).promote(
        alias, version=version, store_version=store_version, model_name=model_name
    )
    name, version, published = payload["model"], payload["version"], payload["store_version"]
    of_store = f" (store version {published})" if published else ""
    emit(
        as_json,
        payload,
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
    from dmtcore.api import pull as pull_store

    payload = pull_store(model_uri, tracking_uri, store)
    emit(
        as_json,
        payload,
        lambda: click.echo(
            f"Pulled {model_uri} into {store}: version {payload['version']}, tasks "
            f"{', '.join(payload['tasks'])}"
        ),
    )
