"""Publishing store versions to the MLflow Model Registry, and restoring stores from it.

Every committed store version can become a version of the store's registered model: a pyfunc
("models from code", `registry/pyfunc_model.py`) whose one artifact is a one-version dmt store.
Version tags record the operation, the task added or removed, the task list, the store version,
the config and state fingerprints, and the registry version of the parent; the alias `current`
follows the store's current version. `pull` turns any registered version back into a working
store whose lineage goes on.

One registry version per model state: a store version whose state (everything its manifest
says but its number, parent, date and operation) was published before, e.g. the copy that
`dmt rollback` commits or a second `dmt register`, reuses that registry version and only moves
`current` to it. Store and registry numbers differ (the registry skips versions published with
`--no-register`); `promote --store-version N` translates through the state tag.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dmt_registry import artifact_links, lineage
from dmtcore.errors import (
    ConflictError,
    DmtError,
    InvalidValueError,
    StoreError,
    TrackingError,
    UnknownNameError,
    first_line,
)
from dmtcore.store import publications
from dmtcore.store.directory import CURRENT, Store
from dmtcore.store.manifest import weight_refs

MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")
CURRENT_ALIAS = "current"
# The run artifact of the pyfunc that takes encoded images (see pyfunc_model.py for why two).
IMAGES_MODEL = "model-images"
# Manifest fields that name a commit rather than what the model computes.
COMMIT_FIELDS = ("format", "version", "parent", "created", "operation")


@dataclass(frozen=True)
class Publication:
    """What publishing a store version did: `created` a new registry version or reused the one
    of the same state, and whether `current` moved (`previous` is where it pointed before)."""

    model: str
    version: str
    store_version: int
    registered_store_version: int | None  # the store version the registry version records
    created: bool
    alias_moved: bool
    previous: str | None


def model_name(manifest: dict[str, Any]) -> str:
    return manifest.get("model_name") or manifest["name"]


def config_fingerprint(manifest: dict[str, Any]) -> str:
    """What must agree for two stores to share a registered model: input, backbone, connection."""
    config = {k: manifest[k] for k in ("input_spec", "backbone", "connection")}
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def state_fingerprint(manifest: dict[str, Any]) -> str:
    """What a registered version computes: the manifest without the fields that name its commit.
    A rollback's copy of version N has version N's state."""
    state = {k: v for k, v in manifest.items() if k not in COMMIT_FIELDS}
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()[:16]


def registered_versions(client: Any, name: str) -> list[Any]:
    """Every registry version of model `name`, oldest first."""
    return sorted(client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version))


def _publishes(version: Any, manifest: dict[str, Any], number: int | None) -> bool:
    """Whether registry `version` holds the state of `manifest` (store version `number`).
    Versions registered before the state tag existed are matched by store version."""
    tags = version.tags
    if tags.get("dmt.store_id") != str(manifest.get("store_id")):
        return False
    if "dmt.state" in tags:
        return tags["dmt.state"] == state_fingerprint(manifest)
    return number is not None and tags.get("dmt.store_version") == str(number)


def find_registered(client: Any, manifest: dict[str, Any]) -> Any | None:
    """The newest registry version that publishes the state of `manifest`, if any."""
    found = [
        v
        for v in registered_versions(client, model_name(manifest))
        if _publishes(v, manifest, manifest.get("version"))
    ]
    return found[-1] if found else None


def alias_target(client: Any, name: str, alias: str = CURRENT_ALIAS) -> str | None:
    """The registry version `alias` points at, or None (no such model or alias)."""
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except Exception:
        return None


def write_snapshot(store: Store, version: int, destination: Path) -> Path:
    """A self-contained one-version store at `destination`: the artifact of a registered model."""
    manifest = store.manifest(version)
    (destination / "versions").mkdir(parents=True)
    (destination / "blobs").mkdir()
    (destination / "tmp").mkdir()
    shutil.copyfile(
        store.version_path(version), destination / "versions" / store.version_path(version).name
    )
    for ref in weight_refs(manifest):
        target = destination / "blobs" / store.blob_path(ref["sha256"]).name
        if not target.exists():
            target.write_bytes(store.read_blob(ref["sha256"]))
    (destination / CURRENT).write_text(f"{version}\n")
    return destination


def check_model_name(client: Any, manifest: dict[str, Any]) -> None:
    """Refuse to register into a model that holds versions of a differently built store."""
    name = model_name(manifest)
    try:
        registered = client.get_registered_model(name)
    except Exception:
        return  # not registered yet
    theirs = registered.tags.get("dmt.config")
    if theirs is None:
        raise ConflictError(
            f"registered model {name!r} exists and is not a dmt model; choose another --model-name"
        )
    if theirs != config_fingerprint(manifest):
        raise ConflictError(
            f"registered model {name!r} holds a store with another input spec, backbone or connection "
            f"kind (config {theirs}, this store {config_fingerprint(manifest)}); use 'dmt init --model-name' "
            "to give this store its own model"
        )


def _parent_version(client: Any, store: Store, manifest: dict[str, Any]) -> str | None:
    """The registry version that published the state of this store version's parent, if any
    (after a rollback that is the registry version of the state rolled back to)."""
    parent = manifest.get("parent")
    if parent is None:
        return None
    try:
        parent_manifest = store.manifest(parent)
    except DmtError:  # a pulled store holds one version: its parent's manifest is not there

        def publishes_parent(version: Any) -> bool:
            tags = version.tags
            return tags.get("dmt.store_id") == str(manifest.get("store_id")) and tags.get(
                "dmt.store_version"
            ) == str(parent)
    else:

        def publishes_parent(version: Any) -> bool:
            return _publishes(version, parent_manifest, parent)

    found = [v for v in registered_versions(client, model_name(manifest)) if publishes_parent(v)]
    return str(found[-1].version) if found else None


def describe(manifest: dict[str, Any]) -> str:
    """The version description: what changed, in words, with the metrics."""
    operation = manifest["operation"]
    tasks = ", ".join(operation.get("tasks", [])) or "-"
    verbs = {
        "add-task": "added",
        "train": "trained jointly",
        "remove-task": "removed",
        "rollback": "rolled back to",
    }
    verb = verbs.get(operation["name"], operation["name"])
    what = f"v{operation['to_version']}" if operation["name"] == "rollback" else tasks
    metrics = "; ".join(
        f"{t['name']} {t['primary_metric']} {t['metrics'][t['primary_metric']]:.4f}"
        for t in manifest["tasks"]
        if t.get("metrics") and t.get("primary_metric") in t["metrics"]
    )
    return (
        f"dmt store version {manifest['version']}: {verb} {what}. Tasks now: {metrics or 'none'}."
    )


def register(client: Any, store: Store, version: int, run_id: str) -> str:
    """Publish store `version` (logging the model into run `run_id` when its state is new) and
    point `current` at it; the registry version's number."""
    return publish_version(client, store, version, lambda: run_id).version


def publish_version(
    client: Any, store: Store, version: int, start_run: Callable[[], str], force: bool = False
) -> Publication:
    """Point `current` at the registry version of store `version`'s state, creating it (in the
    run `start_run` returns, called only then) when that state was never published. Refused
    (ForkError, `current` unchanged) when `current` is not in the store's lineage, unless
    `force` (see `lineage`)."""
    manifest = store.manifest(version)
    if not manifest["tasks"] or manifest["input_spec"] is None:
        raise StoreError(f"store version {version} has no tasks: nothing to register")
    check_model_name(client, manifest)
    name = model_name(manifest)
    seen = lineage.survey(client, store, version)
    previous = seen.current
    existing = find_registered(client, manifest)
    if not force:
        lineage.refuse_fork(seen, store, version, existing and str(existing.version))
    if existing is not None:
        number = str(existing.version)
        if previous != number:
            lineage.move_current(client, seen, store, version, number, force)
        recorded = existing.tags.get("dmt.store_version", "")
        recorded_version = int(recorded) if recorded.isdigit() else None
        moved = previous != number
        return Publication(name, number, version, recorded_version, False, moved, previous)

    def claim(number: str) -> None:
        lineage.claim_current(client, seen, store, version, number, force)

    number = _create_version(client, store, version, start_run(), claim)
    return Publication(name, number, version, version, True, True, previous)


def _create_version(
    client: Any, store: Store, version: int, run_id: str, claim: Callable[[str], None]
) -> str:
    """Log store `version` as two pyfuncs into run `run_id` (arrays: `model`, registered;
    encoded images: `model-images`), register the first, tag it, describe it, and let `claim`
    point `current` at it (or yield to a rival publish, see `lineage`). Where the run's artifacts are local files, the logged weights become hard links to
    the store's blobs and the images model's files links to the array model's identical ones
    (`artifact_links`): one copy on disk per column, however many versions name it."""
    manifest = store.manifest(version)
    name = model_name(manifest)
    images_uri = f"runs:/{run_id}/{IMAGES_MODEL}"
    artifact_uri = client.get_run(run_id).info.artifact_uri.rstrip("/")
    local = artifact_links.local_artifact_dir(artifact_uri)
    paths = ("model", IMAGES_MODEL)
    with tempfile.TemporaryDirectory() as folder:
        snapshot = write_snapshot(store, version, Path(folder) / "store")
        for path, form in zip(paths, ("array", "images"), strict=True):
            model_dir = Path(folder) / path
            _save_model(model_dir, snapshot, manifest, form, images_uri)
            if local is not None:  # never copy into a file that is linked to a store blob
                artifact_links.detach(local / path)
            client.log_artifacts(run_id, str(model_dir), artifact_path=path)
    if local is not None:
        artifact_links.share([local / path for path in paths], store)
    if not _exists(client, name):
        client.create_registered_model(
            name,
            tags={"dmt.config": config_fingerprint(manifest)},
            description=f"dmt multi-task model of store {manifest['name']!r}",
        )
    operation = manifest["operation"]
    tags = {
        "dmt.operation": operation["name"],
        "dmt.tasks": ",".join(t["name"] for t in manifest["tasks"]),
        "dmt.store_version": str(version),
        "dmt.store_id": str(manifest.get("store_id")),
        "dmt.config": config_fingerprint(manifest),
        "dmt.state": state_fingerprint(manifest),
        "dmt.parent_version": str(_parent_version(client, store, manifest)),
        "dmt.images_model": images_uri,
        lineage.CLAIM: "claiming",  # until `claim` moved current to it, or yielded
        **lineage.publisher_tags(),
    }
    if operation["name"] in ("add-task", "remove-task", "train"):
        key = "dmt.task_removed" if operation["name"] == "remove-task" else "dmt.task_added"
        tags[key] = ",".join(operation["tasks"])
    source = f"{artifact_uri}/model"
    registered = client.create_model_version(
        name, source, run_id=run_id, tags=tags, description=describe(manifest)
    )
    claim(str(registered.version))
    return str(registered.version)


def signatures(manifest: dict[str, Any]) -> dict[str, Any]:
    """The two input forms' signatures: a float32 tensor N×C×H×W of the store's input spec, and
    a DataFrame column `image` of paths or base64 text; both take the `tasks` param."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

    params = ParamSchema([ParamSpec("tasks", "string", "")])
    shape = (-1, *manifest["input_spec"])
    return {
        "array": ModelSignature(Schema([TensorSpec(np.dtype(np.float32), shape)]), None, params),
        "images": ModelSignature(Schema([ColSpec("string", "image")]), None, params),
    }


def _save_model(
    destination: Path, snapshot: Path, manifest: dict[str, Any], form: str, images_uri: str
) -> None:
    import mlflow.pyfunc
    import numpy as np

    shape = tuple(manifest["input_spec"])
    described = {
        "array": f"float32 N×{'×'.join(map(str, shape))} in [0, 1]; encoded images: {images_uri}",
        "images": "a DataFrame column 'image' of image paths or base64 text (PNG, JPEG, ...)",
    }
    with warnings.catch_warnings():
        # An example for the images model would be a whole encoded image in every version;
        # its signature is explicit, so MLflow's advice to log one is only noise.
        warnings.filterwarnings(
            "ignore", message=".*An input example was not provided", category=UserWarning
        )
        with _pins_not_rechecked():
            mlflow.pyfunc.save_model(
                path=str(destination),
                python_model=str(MODEL_CODE),
                artifacts={"store": str(snapshot)},
                signature=signatures(manifest)[form],
                input_example=np.zeros((1, *shape), dtype=np.float32) if form == "array" else None,
                metadata={"dmt_input": described[form], "dmt_images_model": images_uri},
                pip_requirements=list(_requirements()),
            )


def connect(uri: str, store: Path | None = None) -> Any:
    """A registry client for `uri`; `store` when `uri` is the store's embedded database (made
    and migrated first). A server that is down fails in seconds, not after minutes of retries."""
    import os
    import sys

    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    from mlflow.tracking import MlflowClient

    from dmt_registry.tracking import ensure_embedded_database

    if store is not None:
        ensure_embedded_database(store, lambda m: print(f"warning: {m}", file=sys.stderr))
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def publish_current(
    store_path: Path, uri: str, embedded: bool, operation: str, force: bool = False
) -> Publication:
    """Publish the store's current version as `dmt register` and `dmt rollback` do: reuse the
    registry version of its state, or log it in a run of its own (named after `operation`).
    The store records the outcome (publications.json): published, or pending and why."""
    from dmt_registry.tracking import MlflowTracker, reported_call
    from dmtcore.hooks.runinfo import RunInfo

    store = Store.open(store_path)
    manifest = store.manifest()
    tracker = MlflowTracker(uri, embedded, register=False)
    run = RunInfo(
        operation,
        [t["name"] for t in manifest["tasks"]],
        store_path,
        manifest["name"],
        manifest["version"],
        {},
    )

    def start_run() -> str:
        tracker.dmt_run_started(run=run)
        return tracker.run_id

    try:
        client = reported_call(uri, lambda: connect(uri, store_path if embedded else None))
        published = reported_call(
            uri, lambda: publish_version(client, store, manifest["version"], start_run, force)
        )
    except BaseException as exc:
        if isinstance(exc, DmtError) and operation != "register":  # a commit not published
            lineage.note_pending(store_path, manifest["version"], uri, exc)
        tracker.dmt_run_failed(run=run, error=exc)
        raise
    lineage.note_published(
        store_path, published.store_version, published.model, published.version, uri
    )
    if tracker.run_id is not None:
        reported_call(uri, lambda: tracker.client.set_terminated(tracker.run_id, "FINISHED"))
    return published


def _exists(client: Any, name: str) -> bool:
    try:
        client.get_registered_model(name)
        return True
    except Exception:
        return False


@contextlib.contextmanager
def _pins_not_rechecked() -> Any:
    """Skip MLflow's check, while saving a dmt model, that the installed packages satisfy the
    model's requirements: `_requirements` pins exactly the installed versions, so it cannot
    fail, and it costs a scan of every installed distribution's file list
    (`importlib.metadata.packages_distributions`: 0.7 CPU seconds and 2-3 s wall on a 2-core
    machine, once per process). The check is left in place if MLflow no longer has it under
    this name."""
    import mlflow.utils.environment as environment

    name = "warn_dependency_requirement_mismatches"
    check = getattr(environment, name, None)
    if check is None:
        yield
        return
    setattr(environment, name, lambda requirements: None)
    try:
        yield
    finally:
        setattr(environment, name, check)


@functools.cache
def _requirements() -> list[str]:
    """The pyfunc's pip requirements, given explicitly (MLflow would otherwise infer them by
    loading the model in a subprocess): the installed versions of what the model imports,
    read once per process (both models of a version name the same)."""
    import importlib.metadata

    packages = ("torch", "torchvision", "safetensors", "pluggy", "numpy", "pandas", "mlflow")
    return [f"{p}=={importlib.metadata.version(p)}" for p in packages]


def check_alias(alias: str) -> None:
    """Refuse an alias dmt manages (`current`) or MLflow reserves, before anything is changed."""
    if alias.lower() == CURRENT_ALIAS:
        raise InvalidValueError(
            f"--alias {alias!r} is managed by dmt: it follows the store's current version "
            "(add-task, train, remove-task, rollback and register move it); promote to another "
            "alias, e.g. --alias production, or 'dmt rollback' to change what current serves"
        )
    if alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
        raise InvalidValueError(
            f"--alias {alias!r} is reserved by MLflow ('latest' and v<number>); "
            "choose another, e.g. production"
        )
    if not re.fullmatch(r"[\w-]{1,255}", alias):
        raise InvalidValueError(
            f"--alias {alias!r} is not a valid alias: use letters, digits, '_' and '-'"
        )


def promote(client: Any, name: str, version: str, alias: str) -> None:
    """Point `alias` at registry `version` of model `name`."""
    check_alias(alias)
    try:
        client.get_model_version(name, str(version))
    except Exception as exc:
        raise UnknownNameError(
            f"registered model {name!r} has no version {version} (a registry version; "
            "for a store version use --store-version)"
        ) from exc
    client.set_registered_model_alias(name, alias, str(version))


def store_version_of(client: Any, name: str, version: str) -> int | None:
    """The store version registry `version` published (its tag), if it says."""
    tag = client.get_model_version(name, version).tags.get("dmt.store_version", "")
    return int(tag) if tag.isdigit() else None


def registered_for_store_version(client: Any, name: str, manifest: dict[str, Any]) -> str:
    """The registry version that publishes the state of store version `manifest`, or an error
    that lists which store versions were registered."""
    versions = [v for v in registered_versions(client, name) if "dmt.store_version" in v.tags]
    found = [v for v in versions if _publishes(v, manifest, manifest["version"])]
    if found:
        return str(found[-1].version)
    listing = ", ".join(
        f"store {v.tags['dmt.store_version']} = registry {v.version}" for v in versions
    )
    raise UnknownNameError(
        f"store version {manifest['version']} was never registered in model {name!r} "
        f"(registered: {listing or 'none'}); publish it with 'dmt rollback "
        f"{manifest['version']}' (rollback publishes), or promote a registry VERSION"
    )


def resolve(client: Any, model_uri: str) -> Any:
    """The registry version a 'models:/NAME/VERSION' or 'models:/NAME@ALIAS' URI names."""
    match = re.fullmatch(r"models:/([^/@]+)(?:/(\d+)|@([\w.-]+))", model_uri)
    if not match:
        raise InvalidValueError(
            f"invalid model URI {model_uri!r}: expected models:/NAME/VERSION or models:/NAME@ALIAS"
        )
    name, version, alias = match.groups()
    try:
        if alias:
            return client.get_model_version_by_alias(name, alias)
        return client.get_model_version(name, version)
    except Exception as exc:
        raise UnknownNameError(
            f"{model_uri!r} was not found in the registry: {first_line(exc)}"
        ) from exc


def pull(model_uri: str, tracking_uri: str, destination: Path, registry: Any) -> Store:
    """Rebuild a working store at `destination` from a registered version (e.g. models:/m/3 or
    models:/m@current). Nothing is left at `destination` unless the whole store verified: every
    checksum, every manifest field, and that the model rebuilds from its weights (`registry`
    holds the backbones and connection kinds to rebuild it with)."""
    import mlflow.artifacts
    from mlflow.tracking import MlflowClient

    destination = Path(destination)
    if destination.is_symlink() or (destination.exists() and any(destination.iterdir())):
        raise StoreError(f"{str(destination)!r} exists and is not empty; pull into a new directory")
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    version = resolve(client, model_uri)
    try:
        source = client.get_model_version_download_uri(version.name, version.version)
    except Exception as exc:
        raise TrackingError(
            f"cannot locate the files of {model_uri!r} at {tracking_uri!r}: {exc}"
        ) from exc
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=destination.parent) as folder:
        try:
            local = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=source, dst_path=folder, tracking_uri=tracking_uri
                )
            )
        except Exception as exc:
            raise TrackingError(
                f"cannot download {model_uri!r} from {tracking_uri!r}: {first_line(exc)}"
            ) from exc
        snapshot = local / "artifacts" / "store"
        if not (local / "MLmodel").is_file() or not Store.exists(snapshot):
            raise StoreError(f"{model_uri!r} is not a dmt model: it has no artifacts/store inside")
        _verify_artifact(model_uri, snapshot, registry)
        if destination.exists():
            destination.rmdir()
        shutil.move(str(snapshot), str(destination))
    try:  # where it came from, for `dmt history`: never fatal to a verified pull
        origin = lineage.origin(client, version, tracking_uri, model_uri)
        publications.record_pulled(destination, origin)
    except Exception as exc:
        import sys

        print(
            f"warning: could not record where {model_uri} came from: {first_line(exc)}",
            file=sys.stderr,
        )
    return Store.open(destination)


def _verify_artifact(model_uri: str, snapshot: Path, registry: Any) -> None:
    """Refuse a downloaded store that `dmt verify --all` would not call sound. Messages name the
    file inside the model's artifacts, not the temporary download that is gone by then."""
    from dmtcore.store.verify import verify_store

    def inside_model(text: str) -> str:
        return text.replace(str(snapshot), f"{model_uri} artifacts/store")

    try:
        _, problems = verify_store(snapshot, registry, every_version=True)
    except DmtError as exc:
        raise StoreError(f"{model_uri!r} is damaged: {inside_model(str(exc))}") from exc
    if problems:
        first = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise StoreError(
            f"{model_uri!r} is damaged, nothing was pulled: "
            f"{inside_model(first.file)}: {inside_model(first.message)}{more}"
        )
