"""`dmt verify`: check a whole store and report every problem found, not just the first.

Checked: CURRENT, every committed manifest against the manifest schema (every malformed field,
each named by its path), every weight file the manifests name (present, sha256), and that the
current version (or every version) rebuilds: its backbone and connection options are valid for
their kinds and each weight file fits the shapes the manifest implies.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dmtcore.errors import DmtError, first_line
from dmtcore.hooks.kinds import Kinds
from dmtcore.store.directory import CURRENT, Store
from dmtcore.store.manifest import manifest_problems, weight_refs


@dataclass(frozen=True)
class Problem:
    """One thing wrong: the file it is in, and what is wrong with it."""

    file: str
    message: str


def verify_store(
    path: Path, kinds: Kinds, every_version: bool = False
) -> tuple[list[int], list[Problem]]:
    """The versions checked and the problems found (an empty list: the store is sound)."""
    store = Store.open(path)
    try:
        current = store.current_version()
    except DmtError as exc:
        return [], [Problem(str(store.path / CURRENT), str(exc))]
    try:
        versions = store.versions()
    except DmtError as exc:
        return [], [Problem(str(store.path / "versions"), str(exc))]
    problems: list[Problem] = []
    if current not in versions:
        problems.append(
            Problem(str(store.path / CURRENT), f"names version {current}, which has no manifest")
        )
    checked_blobs: set[str] = set()
    for version in versions:
        manifest, found = _checked_manifest(store, version)
        problems += found
        if manifest is None:
            continue
        blob_problems = _blob_problems(store, manifest, checked_blobs)
        problems += blob_problems
        if not blob_problems and (every_version or version == current):
            problems += _rebuild_problems(store, manifest, kinds)
    return versions, list(dict.fromkeys(problems))


def _checked_manifest(store: Store, version: int) -> tuple[dict[str, Any] | None, list[Problem]]:
    """The manifest of `version` if it is well-formed, and every problem it has."""
    file = str(store.version_path(version))
    try:
        data = store.manifest_data(version)
    except DmtError as exc:
        return None, [Problem(file, str(exc))]
    problems = [Problem(file, message) for message in manifest_problems(data)]
    if not problems and data["version"] != version:
        problems.append(Problem(file, f"version must be {version}, got {data['version']}"))
    return (None if problems else data), problems


def _blob_problems(store: Store, manifest: dict[str, Any], checked: set[str]) -> list[Problem]:
    """Weight files that are missing or do not match their sha256 (each checked once)."""
    problems = []
    for ref in weight_refs(manifest):
        sha256 = ref["sha256"]
        if sha256 in checked:
            continue
        try:
            store.read_blob(sha256)
            checked.add(sha256)
        except DmtError as exc:
            problems.append(Problem(str(store.blob_path(sha256)), str(exc)))
    return problems


def _rebuild_problems(store: Store, manifest: dict[str, Any], kinds: Kinds) -> list[Problem]:
    """Why the model of a well-formed manifest cannot be rebuilt, if it cannot. Anything that
    goes wrong here is a finding about the store, so every exception becomes a problem."""
    from dmtcore.store.checkpoint import load_model

    file = str(store.version_path(manifest["version"]))
    try:
        kinds.backbone(manifest["backbone"]["name"]).resolve_options(
            manifest["backbone"]["options"]
        )
        kinds.connection(manifest["connection"]["name"]).resolve_options(
            manifest["connection"]["options"]
        )
        load_model(store, manifest, kinds)
    except DmtError as exc:
        return [Problem(file, first_line(exc))]
    except Exception as exc:
        return [
            Problem(file, f"the model cannot be rebuilt: {type(exc).__name__}: {first_line(exc)}")
        ]
    return []
