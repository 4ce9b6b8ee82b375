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
    restoring: bool = False,
) -> MultiTaskModel:
    """A model with the manifest's recipe and no tasks. When `restoring` stored columns, the
    backbone's initialisation-only options (e.g. a pretrained weights file) are left out: the
    store's blobs hold every weight."""
    spec = input_spec or InputSpec.from_shape(manifest["input_spec"])
    backbone = kinds.backbone(manifest["backbone"]["name"])
    options = dict(manifest["backbone"]["options"])
    if restoring:
        options.update(dict.fromkeys(backbone.init_only_options))
    return MultiTaskModel(
        spec,
        backbone,
        options,
        kinds.connection(manifest["connection"]["name"]),
        manifest["connection"]["options"],
    )


def load_model(store: Store, manifest: dict[str, Any], kinds: Kinds) -> MultiTaskModel | None:
    """Rebuild the model a manifest describes and load its weights (checksums verified).
    Returns None for a store whose input spec is not fixed yet (no task ever added)."""
    if manifest["input_spec"] is None:
        return None
    model = empty_model(manifest, kinds, restoring=True)
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
    model.eval()
    return model


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
