"""rollback: make an earlier version current again, as a new version (history is never
rewritten). Every weight file the target names is read and checked before the writer lock is
taken: committed versions never change, so a refused rollback touches nothing, and rolling
back away from a damaged current version is how a store is repaired."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dmtcore.store.directory import Store
from dmtcore.store.manifest import weight_refs


def rollback(path: Path, version: int) -> tuple[int, dict[str, Any]]:
    """Commit VERSION's state as the store's newest version; (the new number, its manifest)."""
    store = Store.open(path)
    manifest = store.manifest(version)
    for ref in weight_refs(manifest):
        store.read_blob(ref["sha256"])
    with store.writer(f"rollback {version}"):
        manifest["operation"] = {"name": "rollback", "tasks": [], "to_version": version}
        return store.commit(manifest), manifest
