"""`dmt verify`: check a whole store and report every problem found, not just the first.

Checked: CURRENT, every committed manifest (structure, source sets), every weight file the
manifests name (present, sha256), and that the current version (or every version) rebuilds:
each weight file fits the shapes the manifest implies.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dmtcore.errors import DmtError
from dmtcore.registry import Registry
from dmtcore.store import Store


@dataclass(frozen=True)
class Problem:
    """One thing wrong: the file it is in, and what is wrong with it."""

    file: str
    message: str


def verify_store(
    path: Path, registry: Registry, every_version: bool = False
) -> tuple[list[int], list[Problem]]:
    """The versions checked and the problems found (an empty list: the store is sound)."""
    from dmtcore.checkpoint import load_model

    store = Store.open(path)
    try:
        current = store.current_version()
        versions = store.versions()
    except DmtError as exc:
        return [], [Problem(str(store.path / "CURRENT"), str(exc))]
    problems: list[Problem] = []
    if current not in versions:
        problems.append(
            Problem(str(store.path / "CURRENT"), f"names version {current}, which has no manifest")
        )
    checked_blobs: set[str] = set()
    for version in versions:
        try:
            manifest = store.manifest(version)
        except DmtError as exc:
            problems.append(Problem(str(store.version_path(version)), str(exc)))
            continue
        blobs_ok = True
        for task in manifest["tasks"]:
            for ref in task["weights"].values():
                sha256 = ref["sha256"]
                if sha256 in checked_blobs:
                    continue
                try:
                    store.read_blob(sha256)
                    checked_blobs.add(sha256)
                except DmtError as exc:
                    blobs_ok = False
                    problems.append(Problem(str(store.blob_path(sha256)), str(exc)))
        if blobs_ok and (every_version or version == current):
            try:
                load_model(store, manifest, registry)
            except DmtError as exc:
                problems.append(Problem(str(store.version_path(version)), str(exc)))
    return versions, list(dict.fromkeys(problems))
