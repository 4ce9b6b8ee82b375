"""What the store knows of its registered model, without asking MLflow: where a pulled store
came from, which store versions were published as which registry versions, and a publish that
is pending because the registry refused it.

    <store>/publications.json   {"pulled_from": {...} | null,
                                 "published": {"<store version>": {"model", "version", "server"}},
                                 "pending": {"store_version", "server", "reason", "since"} | null}

`dmt history` and `dmt status` read it to say where versions came from and what is not
published yet, and stay instant (no MLflow import, no network). It is a record, not the truth:
the registry is. Only secrets-free text goes in (servers are written without user:password).
A missing or unreadable file reads as "nothing known"; it is rewritten whole, atomically.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dmtcore.store.directory import Store, now_iso

FILE = "publications.json"


def read(store_path: Path) -> dict[str, Any]:
    """The record, with every key present (empty when nothing is known)."""
    record: dict[str, Any] = {"pulled_from": None, "published": {}, "pending": None}
    try:
        saved = json.loads((Path(store_path) / FILE).read_text())
    except (OSError, ValueError):
        return record
    if isinstance(saved, dict):
        record.update({k: saved[k] for k in record if k in saved})
    return record


def _write(store_path: Path, record: dict[str, Any]) -> None:
    store = Store.open(Path(store_path).resolve())
    (store.path / "tmp").mkdir(exist_ok=True)  # a store pulled from a server comes without it
    store.write_file(store.path / FILE, (json.dumps(record, indent=2) + "\n").encode())


def record_published(
    store_path: Path, store_version: int, model: str, version: str, server: str
) -> None:
    """Store version `store_version` is registry version `version` of `model` on `server`;
    a pending publish is settled by it (the current version supersedes any older pending one)."""
    record = read(store_path)
    record["published"][str(store_version)] = {
        "model": model,
        "version": str(version),
        "server": server,
    }
    record["pending"] = None
    _write(store_path, record)


def record_pending(store_path: Path, store_version: int, server: str, reason: str) -> None:
    """Publishing store version `store_version` was refused or failed: `dmt register` retries."""
    record = read(store_path)
    record["pending"] = {
        "store_version": store_version,
        "server": server,
        "reason": reason,
        "since": now_iso(),
    }
    _write(store_path, record)


def record_pulled(store_path: Path, origin: dict[str, Any]) -> None:
    """Where a pulled store came from: the model URI, the registry version, the server, and the
    registry lineage before it (`origin['lineage']`, oldest first)."""
    record = read(store_path)
    record["pulled_from"] = origin
    record["published"][str(origin["store_version"])] = {
        "model": origin["model"],
        "version": str(origin["version"]),
        "server": origin["server"],
    }
    _write(store_path, record)
