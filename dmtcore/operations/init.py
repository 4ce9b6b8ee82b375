"""`dmt init`: an empty store with its input spec, backbone recipe and connection kind, the
options checked by trial builds before anything is written.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from dmtcore.errors import (
    DmtError,
    InvalidValueError,
)
from dmtcore.hooks.host import PluginHost
from dmtcore.store.directory import Store
from dmtcore.store.manifest import new_manifest
from dmtcore.tasks.names import InputSpec

DEFAULT_BACKBONE = "dmt-cnn"


DEFAULT_CONNECTION = "ttc"


def init_store(
    path: Path,
    host: PluginHost,
    input_spec: InputSpec | None = None,
    backbone: str = DEFAULT_BACKBONE,
    connection: str = DEFAULT_CONNECTION,
    connection_options: dict[str, Any] | None = None,
    name: str | None = None,
    backbone_options: dict[str, Any] | None = None,
    model_name: str | None = None,
    download: bool = False,
) -> Store:
    """Create an empty store. Without `input_spec`, the first task's native shape fixes it.

    Pretrained weights the backbone options ask for (`weights=imagenet`) are read from the
    library's cache (fetched first only with `download`), loaded into a trial column, and that
    column's weights are written into the store as a safetensors blob: every new column starts
    from it, and no later command needs the cache."""
    backbone_kind = host.kinds.backbone(backbone)
    connection_kind = host.kinds.connection(connection)
    column_options = backbone_kind.resolve_options(backbone_options)
    options = connection_kind.resolve_options(connection_options, backbone, column_options)
    published = backbone_kind.weights(column_options) if backbone_kind.weights else None
    trial_spec = input_spec or InputSpec(3, 32, 32)
    try:  # trial builds check the option values before anything is written
        connection_kind.build(0, 2, (4, 2, 2), options)  # before reading a large weights file
        state = published.state_dict(download) if published is not None else None
        if state is None:
            column = backbone_kind.build(trial_spec, column_options)
        else:  # the weights are RGB: the initial column is kept for 3 channels
            rgb = InputSpec(3, trial_spec.height, trial_spec.width)
            column = backbone_kind.build(rgb, column_options, weights=state)
    except DmtError:
        raise
    except Exception as exc:
        raise InvalidValueError(
            f"{backbone!r} with {connection!r} rejected the options given: {type(exc).__name__}: {exc}"
        ) from exc
    recipe: dict[str, Any] = {
        "name": backbone,
        "options": column_options,
        "stages": list(getattr(column, "stage_names", [])),
    }
    blobs: list[bytes] = []
    if published is not None:
        from safetensors.torch import save

        data = save({k: v.contiguous() for k, v in column.state_dict().items()})
        blobs.append(data)
        recipe["pretrained"] = {
            **published.describe(),
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
        }
        recipe["normalization"] = {"mean": list(published.mean), "std": list(published.std)}
    manifest = new_manifest(
        name or Path(path).resolve().name,
        list(input_spec.shape) if input_spec else None,
        recipe,
        {"name": connection, "options": options},
        model_name,
    )
    return Store.create(Path(path), manifest, blobs)
