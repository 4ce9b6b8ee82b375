"""`dmt init`: an empty store with its input spec, backbone recipe and connection kind, the
options checked by trial builds before anything is written.
"""

from __future__ import annotations

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
) -> Store:
    """Create an empty store. Without `input_spec`, the first task's native shape fixes it."""
    backbone_kind = host.kinds.backbone(backbone)
    connection_kind = host.kinds.connection(connection)
    column_options = backbone_kind.resolve_options(backbone_options)
    options = connection_kind.resolve_options(connection_options, backbone, column_options)
    try:  # trial builds check the option values before anything is written
        connection_kind.build(0, 2, (4, 2, 2), options)
        backbone_kind.build(input_spec or InputSpec(3, 32, 32), column_options)
    except DmtError:
        raise
    except Exception as exc:
        raise InvalidValueError(
            f"{backbone!r} with {connection!r} rejected the options given: {type(exc).__name__}: {exc}"
        ) from exc
    manifest = new_manifest(
        name or Path(path).resolve().name,
        list(input_spec.shape) if input_spec else None,
        {"name": backbone, "options": column_options},
        {"name": connection, "options": options},
        model_name,
    )
    return Store.create(Path(path), manifest)
