"""Publishing store versions to the MLflow Model Registry, and restoring stores from it.

Every committed store version can become a version of the store's registered model: a pyfunc
("models from code", `registry/pyfunc_model.py`) whose one artifact is a one-version dmt store.
Version tags record the operation, the task added or removed, the task list, the store version
and the registry version of the parent; the alias `current` follows the newest. `pull` turns
any registered version back into a working store whose lineage goes on.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from dmtcore.errors import (
    ConflictError,
    InvalidValueError,
    StoreError,
    TrackingError,
    UnknownNameError,
    first_line,
)
from dmtcore.store import CURRENT, Store

MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")
CURRENT_ALIAS = "current"


def model_name(manifest: dict[str, Any]) -> str:
    return manifest.get("model_name") or manifest["name"]


def config_fingerprint(manifest: dict[str, Any]) -> str:
    """What must agree for two stores to share a registered model: input, backbone, connection."""
    config = {k: manifest[k] for k in ("input_spec", "backbone", "connection")}
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def write_snapshot(store: Store, version: int, destination: Path) -> Path:
    """A self-contained one-version store at `destination`: the artifact of a registered model."""
    manifest = store.manifest(version)
    (destination / "versions").mkdir(parents=True)
    (destination / "blobs").mkdir()
    (destination / "tmp").mkdir()
    shutil.copyfile(
        store.version_path(version), destination / "versions" / store.version_path(version).name
    )
    for task in manifest["tasks"]:
        for ref in task["weights"].values():
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


def _parent_version(client: Any, name: str, manifest: dict[str, Any]) -> str | None:
    """The registry version that published this store version's parent, if any."""
    parent = manifest.get("parent")
    for version in client.search_model_versions(f"name='{name}'"):
        tags = version.tags
        if tags.get("dmt.store_id") == manifest.get("store_id") and tags.get(
            "dmt.store_version"
        ) == str(parent):
            return str(version.version)
    return None


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
    """Publish store `version` as a new version of the store's registered model (logging the
    model into run `run_id`), tag it, describe it, and point the `current` alias at it."""
    import mlflow.pyfunc
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import ParamSchema, ParamSpec

    manifest = store.manifest(version)
    if not manifest["tasks"] or manifest["input_spec"] is None:
        raise StoreError(f"store version {version} has no tasks: nothing to register")
    check_model_name(client, manifest)
    name = model_name(manifest)
    shape = tuple(manifest["input_spec"])
    # Params only: the input may be a float batch or a DataFrame of encoded images, and MLflow's
    # schema enforcement accepts one form; the model checks its input itself.
    signature = ModelSignature(inputs=None, params=ParamSchema([ParamSpec("tasks", "string", "")]))
    with tempfile.TemporaryDirectory() as folder:
        snapshot = write_snapshot(store, version, Path(folder) / "store")
        model_dir = Path(folder) / "model"
        mlflow.pyfunc.save_model(
            path=str(model_dir),
            python_model=str(MODEL_CODE),
            artifacts={"store": str(snapshot)},
            signature=signature,
            input_example=np.zeros((1, *shape), dtype=np.float32),
            metadata={
                "dmt_input": f"float32 N×{'×'.join(map(str, shape))}, or a DataFrame column 'image' of paths/bytes/base64"
            },
            pip_requirements=_requirements(),
        )
        client.log_artifacts(run_id, str(model_dir), artifact_path="model")
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
        "dmt.parent_version": str(_parent_version(client, name, manifest)),
    }
    if operation["name"] in ("add-task", "remove-task", "train"):
        key = "dmt.task_removed" if operation["name"] == "remove-task" else "dmt.task_added"
        tags[key] = ",".join(operation["tasks"])
    source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/model"
    registered = client.create_model_version(
        name, source, run_id=run_id, tags=tags, description=describe(manifest)
    )
    client.set_registered_model_alias(name, CURRENT_ALIAS, registered.version)
    return str(registered.version)


def _exists(client: Any, name: str) -> bool:
    try:
        client.get_registered_model(name)
        return True
    except Exception:
        return False


def _requirements() -> list[str]:
    import importlib.metadata

    packages = ("torch", "torchvision", "safetensors", "pluggy", "numpy", "pandas", "mlflow")
    return [f"{p}=={importlib.metadata.version(p)}" for p in packages]


def promote(client: Any, name: str, version: str, alias: str) -> None:
    try:
        client.get_model_version(name, str(version))
    except Exception as exc:
        raise UnknownNameError(f"registered model {name!r} has no version {version}") from exc
    client.set_registered_model_alias(name, alias, str(version))


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
    return Store.open(destination)


def _verify_artifact(model_uri: str, snapshot: Path, registry: Any) -> None:
    """Refuse a downloaded store that `dmt verify --all` would not call sound. Messages name the
    file inside the model's artifacts, not the temporary download that is gone by then."""
    from dmtcore.errors import DmtError
    from dmtcore.verify import verify_store

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
