"""What `dmt tasks` lists: every task the plugins offer, grouped by plugin, the plugins whose
data is ready offline first, optionally narrowed to the words a user types.

A user looking for something to train should see what works now (built-in data, data already
on disk) before 120 CelebA tasks that need a download. Where a task's data stands comes from
its optional `TaskSpec.data_status` (see `dmtcore.tasks.spec.DATA_STATES`); a plugin that does
not say is listed between the ready ones and the absent ones, as "unknown". No data is loaded.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from dmtcore.hooks.kinds import Kinds
from dmtcore.tasks.names import suggest
from dmtcore.tasks.spec import (
    DATA_BUILTIN,
    DATA_DOWNLOAD,
    DATA_MISSING,
    DATA_ON_DISK,
    DATA_STATES,
    TaskSpec,
)

# Sort rank of each data state: ready offline, unknown, fetched by --download, fetched by hand.
READINESS: dict[str | None, int] = {
    DATA_BUILTIN: 0,
    DATA_ON_DISK: 0,
    None: 1,
    DATA_DOWNLOAD: 2,
    DATA_MISSING: 3,
}


def data_status(spec: TaskSpec, data_dir: Path) -> str | None:
    """One of DATA_STATES, or None when the plugin does not say. A check that fails or answers
    something else counts as not saying: it must not hide the whole listing."""
    status: Any = spec.data_status
    if callable(status):
        try:
            status = status(Path(data_dir))
        except Exception:
            return None
    return status if status in DATA_STATES else None


def matches(words: Sequence[str], name: str, plugin: str) -> bool:
    """True when no words are given, or one of them is part of the task's or plugin's name."""
    return not words or any(w.lower() in name or w.lower() in plugin.lower() for w in words)


def list_tasks(
    kinds: Kinds, data_dir: Path, in_store: Iterable[str] = (), words: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """The rows of `dmt tasks`: plugins ordered by their readiest task (then load order), each
    plugin's tasks in the order it registered them."""
    stored = set(in_store)
    rows = [
        {
            "name": spec.name,
            "plugin": kinds.owner("task", spec.name),
            "output": f"{spec.output}/{spec.num_outputs}",
            "data": data_status(spec, data_dir),
            "in_store": spec.name in stored,
            "description": spec.description,
        }
        for spec in kinds.tasks.values()
        if matches(words, spec.name, kinds.owner("task", spec.name))
    ]
    rank: dict[str, int] = {}
    for row in rows:
        rank[row["plugin"]] = min(rank.get(row["plugin"], 9), READINESS[row["data"]])
    order = {plugin: index for index, plugin in enumerate(rank)}
    return sorted(rows, key=lambda r: (rank[r["plugin"]], order[r["plugin"]]))


def no_match_message(kinds: Kinds, words: Sequence[str]) -> str:
    """Why the listing is empty, with the plugin or task names the words are close to."""
    plugins = {kinds.owner("task", name) for name in kinds.tasks}
    hints = "".join(suggest(w.lower(), sorted(plugins | set(kinds.tasks))) for w in words)
    typed = " or ".join(repr(w) for w in words)
    return (
        f"no task or plugin name contains {typed} ({len(kinds.tasks)} tasks are offered; "
        f"'dmt tasks' lists them all).{hints}"
    )
