"""Turning a model into store versions and back: each task's column, connections and head are
one safetensors blob each, so unchanged (frozen) parts hash to the same blob and are shared."""

from __future__ import annotations

from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from dmtcore.errors import StoreError, first_line
from dmtcore.hooks.kinds import Kinds
from dmtcore.model.multitask import MultiTaskModel
from dmtcore.store.directory import Store
from dmtcore.store.manifest import WEIGHT_PARTS
from dmtcore.tasks.names import InputSpec
from dmtcore.tasks.spec import HeadSpec


def empty_model(
    manifest: dict[str, Any],
    kinds: Kinds,
    input_spec: InputSpec | None = None,
    store: Store | None = None,
) -> MultiTaskModel:
    """A model with the manifest's recipe and no tasks. The backbone's initialisation-only
    options (pretrained weights) are left out: a store's pretrained initial column is a blob
    of the store (given `store`, new columns start from it), and restored columns load theirs."""
    spec = input_spec or InputSpec.from_shape(manifest["input_spec"])
    recipe = manifest["backbone"]
    backbone = kinds.backbone(recipe["name"])
    options = dict(recipe["options"])
    options.update(dict.fromkeys(backbone.init_only_options))
    model = MultiTaskModel(
        spec,
        backbone,
        options,
        kinds.connection(manifest["connection"]["name"]),
        manifest["connection"]["options"],
        recipe.get("normalization"),
    )
    if store is not None:
        start_from_initial_column(model, store, manifest)
    return model


def start_from_initial_column(
    model: MultiTaskModel, store: Store, manifest: dict[str, Any]
) -> None:
    """New columns of `model` start from the store's pretrained initial column, if it has one
    (read once, when the first new column is built)."""
    pretrained = manifest["backbone"].get("pretrained")
    if not pretrained:
        return
    cache: dict[str, dict[str, Any]] = {}

    def initial() -> dict[str, Any]:
        if "state" not in cache:
            cache["state"] = read_part(store, pretrained["sha256"], "the pretrained initial column")
        return cache["state"]

    model.initial_column = initial
    model.initial_weights = pretrained["name"]


def load_model(store: Store, manifest: dict[str, Any], kinds: Kinds) -> MultiTaskModel | None:
    """Rebuild the model a manifest describes and load its weights (checksums verified).
    Returns None for a store whose input spec is not fixed yet (no task ever added)."""
    if manifest["input_spec"] is None:
        return None
    model = empty_model(manifest, kinds)
    for task in manifest["tasks"]:
        try:
            head = HeadSpec.from_dict(task["head"])
            model.add_task(
                task["name"], task["slot"], task["sources"], head, task["output"]["size"]
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise StoreError(
                f"version {manifest['version']} of {str(store.path)!r} cannot be rebuilt at task "
                f"{task['name']!r}: {type(exc).__name__}: {first_line(exc)}"
            ) from exc
        for part in WEIGHT_PARTS:
            sha256 = task["weights"][part]["sha256"]
            try:
                state = load_safetensors(store.read_blob(sha256))
                model.part(task["name"], part).load_state_dict(state, strict=True)
            except (SafetensorError, RuntimeError) as exc:
                raise StoreError(
                    f"weight file {store.blob_path(sha256)} ({task['name']} {part}) does not fit the "
                    f"manifest: {first_line(exc)}"
                ) from exc
    start_from_initial_column(model, store, manifest)  # for the columns added from here on
    model.eval()
    return model


def read_part(store: Store, sha256: str, what: str) -> dict[str, Any]:
    try:
        return load_safetensors(store.read_blob(sha256))
    except SafetensorError as exc:
        raise StoreError(
            f"weight file {store.blob_path(sha256)} ({what}) is not safetensors: {first_line(exc)}"
        ) from exc


def serialise_weights(model: MultiTaskModel) -> dict[str, dict[str, bytes]]:
    """Every part of every task as safetensors bytes: task name -> part -> bytes. Frozen parts
    give the very bytes (and so the very blob) they were loaded from."""
    return {
        name: {
            part: save_safetensors(
                {
                    k: v.detach().cpu().contiguous()
                    for k, v in model.part(name, part).state_dict().items()
                }
            )
            for part in WEIGHT_PARTS
        }
        for name in model.tasks
    }
