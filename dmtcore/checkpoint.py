"""Turning a model into store versions and back: each task's column, connections and head are
one safetensors blob each, so unchanged (frozen) parts hash to the same blob and are shared."""

from __future__ import annotations

from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from dmtcore.errors import StoreError
from dmtcore.manifest import WEIGHT_PARTS
from dmtcore.model import MultiTaskModel
from dmtcore.names import InputSpec
from dmtcore.registry import Registry
from dmtcore.store import Store
from dmtcore.taskspec import HeadSpec


def empty_model(
    manifest: dict[str, Any], registry: Registry, input_spec: InputSpec | None = None
) -> MultiTaskModel:
    """A model with the manifest's recipe and no tasks."""
    spec = input_spec or InputSpec.from_shape(manifest["input_spec"])
    return MultiTaskModel(
        spec,
        registry.backbone(manifest["backbone"]["name"]),
        manifest["backbone"]["options"],
        registry.connection(manifest["connection"]["name"]),
        manifest["connection"]["options"],
    )


def load_model(store: Store, manifest: dict[str, Any], registry: Registry) -> MultiTaskModel | None:
    """Rebuild the model a manifest describes and load its weights (checksums verified).
    Returns None for a store whose input spec is not fixed yet (no task ever added)."""
    if manifest["input_spec"] is None:
        return None
    model = empty_model(manifest, registry)
    for task in manifest["tasks"]:
        model.add_task(
            task["name"],
            task["slot"],
            task["sources"],
            HeadSpec.from_dict(task["head"]),
            task["output"]["size"],
        )
        for part in WEIGHT_PARTS:
            sha256 = task["weights"][part]["sha256"]
            try:
                state = load_safetensors(store.read_blob(sha256))
                model.part(task["name"], part).load_state_dict(state, strict=True)
            except (SafetensorError, RuntimeError) as exc:
                raise StoreError(
                    f"weight file {store.blob_path(sha256)} ({task['name']} {part}) does not fit the "
                    f"manifest: {str(exc).splitlines()[0]}"
                ) from exc
    model.eval()
    return model


def save_weights(store: Store, model: MultiTaskModel) -> dict[str, dict[str, dict[str, str]]]:
    """Write every part of every task as a blob; returns task name -> part -> {'sha256': ...}."""
    refs: dict[str, dict[str, dict[str, str]]] = {}
    for name in model.tasks:
        refs[name] = {}
        for part in WEIGHT_PARTS:
            state = {
                k: v.detach().cpu().contiguous()
                for k, v in model.part(name, part).state_dict().items()
            }
            refs[name][part] = {"sha256": store.write_blob(save_safetensors(state))}
    return refs
