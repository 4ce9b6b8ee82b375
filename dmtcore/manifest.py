"""The manifest: a JSON document that fully describes one version of a store.

It names the input spec, the backbone recipe, the connection kind, and every task in order with
its source set, head, output, metrics and the sha256 of each weight file, so a store can be
loaded without any plugin code. Parsing checks the structure and names the first thing wrong.
"""

from __future__ import annotations

import uuid
from typing import Any

from dmtcore.errors import StoreError
from dmtcore.taskspec import HEAD_KINDS, OUTPUT_KINDS

FORMAT = 1
WEIGHT_PARTS = ("column", "connections", "head")


def new_manifest(
    name: str,
    input_spec: list[int] | None,
    backbone: dict[str, Any],
    connection: dict[str, Any],
    model_name: str | None = None,
) -> dict[str, Any]:
    """The manifest of an empty store (version 1). `store_id` identifies the store's lineage
    across copies and pulls; `model_name` is its registered model in MLflow."""
    return {
        "format": FORMAT,
        "name": name,
        "store_id": uuid.uuid4().hex,
        "model_name": model_name or name,
        "version": 1,
        "parent": None,
        "created": None,
        "operation": {"name": "init", "tasks": []},
        "input_spec": input_spec,
        "backbone": backbone,
        "connection": connection,
        "next_slot": 0,
        "tasks": [],
    }


def _require(condition: bool, where: str, what: str) -> None:
    if not condition:
        raise StoreError(f"{where}: {what}")


def validate_manifest(data: Any, where: str) -> dict[str, Any]:
    """Return `data` if it is a well-formed manifest, else raise naming the file and the problem."""
    try:
        return _validate(data, where)
    except (TypeError, AttributeError, KeyError, ValueError) as exc:  # a shape no check foresaw
        raise StoreError(f"{where}: malformed manifest ({type(exc).__name__}: {exc})") from exc


def _validate(data: Any, where: str) -> dict[str, Any]:
    _require(isinstance(data, dict), where, "manifest is not a JSON object")
    _require(
        data.get("format") == FORMAT,
        where,
        f"unsupported manifest format {data.get('format')!r} (expected {FORMAT})",
    )
    for key, kind in (
        ("name", str),
        ("version", int),
        ("backbone", dict),
        ("connection", dict),
        ("tasks", list),
        ("next_slot", int),
    ):
        _require(
            isinstance(data.get(key), kind),
            where,
            f"field {key!r} is missing or not a {kind.__name__}",
        )
    for key in ("backbone", "connection"):
        part = data[key]
        _require(
            isinstance(part.get("name"), str) and isinstance(part.get("options"), dict),
            where,
            f"{key} must have a name and an options object",
        )
    spec = data.get("input_spec")
    _require(
        spec is None
        or (
            isinstance(spec, list)
            and len(spec) == 3
            and all(isinstance(v, int) and v > 0 for v in spec)
        ),
        where,
        f"input_spec {spec!r} is not null or [C, H, W]",
    )
    names: list[str] = []
    for index, task in enumerate(data["tasks"]):
        at = f"{where}: task #{index}"
        _require(isinstance(task, dict), at, "is not an object")
        for key, kind in (
            ("name", str),
            ("slot", str),
            ("sources", list),
            ("output", dict),
            ("head", dict),
            ("weights", dict),
        ):
            _require(
                isinstance(task.get(key), kind),
                at,
                f"field {key!r} is missing or not a {kind.__name__}",
            )
        name = task["name"]
        _require(all(isinstance(s, str) for s in task["sources"]), at, "sources must be task names")
        _require(name in task["sources"], at, f"task {name!r} is not in its own source set")
        _require(
            len(set(task["sources"])) == len(task["sources"]),
            at,
            f"task {name!r} lists a source twice",
        )
        output = task["output"]
        _require(
            output.get("kind") in OUTPUT_KINDS
            and isinstance(output.get("size"), int)
            and output["size"] > 0,
            at,
            f"output {output!r} is not a known kind with a positive size",
        )
        _require(
            task["head"].get("kind") in HEAD_KINDS, at, f"head {task['head']!r} has an unknown kind"
        )
        for part in WEIGHT_PARTS:
            ref = task["weights"].get(part)
            _require(
                isinstance(ref, dict)
                and isinstance(ref.get("sha256"), str)
                and len(ref["sha256"]) == 64,
                at,
                f"weights.{part} has no sha256",
            )
        names.append(name)
    _require(len(set(names)) == len(names), where, "a task name appears twice")
    slots = [task["slot"] for task in data["tasks"]]
    _require(len(set(slots)) == len(slots), where, "two tasks share a slot")
    for task in data["tasks"]:
        unknown = [s for s in task["sources"] if s not in names]
        _require(
            not unknown, where, f"task {task['name']!r} reads {unknown}, not tasks of this version"
        )
    return data
