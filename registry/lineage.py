"""Two publishers, one registered model: which registry versions a store descends from, refusing
a publish that would move `current` off another publisher's work (a fork), and moving `current`
so that two publishes at the same moment cannot both move it.

A store's lineage is every registry version that publishes the state of one of its versions'
ancestors (itself included), and the ancestors of those by their `dmt.parent_version` tags (a
pulled store holds one version; the registry remembers the rest). A publish may move `current`
only from a version of its lineage: anything else means someone else published in between, and
`current` would lose their task.

MLflow has no compare-and-set for aliases, so the move is made safe with what it does give:
registry version numbers are unique and increase, and a version's tags are written with it.
Every new version is created tagged `dmt.publish=claiming`; once created, the publisher lists
the versions again, and yields (tags its own `fork`, leaves `current` alone) if a version it
does not descend from exists below its own number that it did not see before, or saw claiming
and is published now (someone published since it looked), or a `claiming` one younger than
CLAIM_TIMEOUT_S (someone is publishing right now). The lowest-numbered of a group of simultaneous publishers wins; each other one sees it.
The guarantee, and its limits, are in docs/mlflow.md (a team's server).
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from typing import Any

from dmt_registry.access import username
from dmtcore.errors import DmtError, ForkError
from dmtcore.store.directory import Store

CLAIM = "dmt.publish"  # claiming -> published | fork
CLAIM_TIMEOUT_S = 120  # a claim older than this is a publisher that died before moving current
CURRENT = "current"


@dataclass(frozen=True)
class Survey:
    """What the registry looked like before a publish: every version (listed first), `current`
    (read after the listing), and the registry versions this store version descends from."""

    name: str
    current: str | None
    versions: dict[str, Any]
    mine: frozenset[str]

    @property
    def newest_seen(self) -> int:
        return max((int(v) for v in self.versions), default=0)


def publisher_tags() -> dict[str, str]:
    """Who publishes (MLflow's user name, else 'unknown') and from which host: not secrets."""
    return {"dmt.published_by": username() or "unknown", "dmt.host": socket.gethostname()}


def survey(client: Any, store: Store, version: int) -> Survey:
    from dmt_registry.publish import _publishes, alias_target, model_name, registered_versions

    manifest = store.manifest(version)
    name = model_name(manifest)
    # The listing first, then `current`: a version tagged published in the listing had
    # `current` moved to it before (claim_current moves, then tags), so `current` as read
    # reflects it; one that was claiming may still win, which `rivals` checks. A `current`
    # newer than the listing (someone published in between) is listed again, for its tags.
    versions = {str(v.version): v for v in registered_versions(client, name)}
    current = alias_target(client, name)
    if current is not None and current not in versions:
        versions = {str(v.version): v for v in registered_versions(client, name)}
    mine: set[str] = set()
    number: int | None = version
    while number is not None:
        try:
            ancestor = store.manifest(number)
        except DmtError:  # a pulled store holds one version; the registry knows its parents
            break
        mine |= {n for n, v in versions.items() if _publishes(v, ancestor, number)}
        number = ancestor.get("parent")
    return Survey(name, current, versions, frozenset(registry_ancestors(versions, mine)))


def registry_ancestors(versions: dict[str, Any], start: set[str]) -> set[str]:
    """`start` and every registry version reached from it by `dmt.parent_version` tags."""
    found, frontier = set(start), list(start)
    while frontier:
        held = versions.get(frontier.pop())
        parent = held.tags.get("dmt.parent_version") if held is not None else None
        if parent and parent.isdigit() and parent not in found:
            found.add(parent)
            frontier.append(parent)
    return found


def what(version: Any) -> str:
    """'version 3 (added digits.prime by alice on host-a, store version 4)'."""
    tags = version.tags
    operation = tags.get("dmt.operation", "?")
    change = (
        f"added {tags['dmt.task_added']}"
        if "dmt.task_added" in tags
        else f"removed {tags['dmt.task_removed']}"
        if "dmt.task_removed" in tags
        else operation
    )
    who = tags.get("dmt.published_by", "an unknown user")
    host = f" on {tags['dmt.host']}" if tags.get("dmt.host") else ""
    return f"version {version.version} ({change} by {who}{host}, store version {tags.get('dmt.store_version', '?')})"


def _own_change(manifest: dict[str, Any]) -> str:
    operation = manifest["operation"]
    tasks = ", ".join(operation.get("tasks", []))
    verb = {"add-task": "adds", "remove-task": "removes", "train": "trains"}.get(operation["name"])
    return f"{verb} {tasks}" if verb and tasks else operation["name"]


def _way_forward(name: str, store: Store) -> str:
    return (
        f"pull the newer version and add your work on top of it (dmt pull models:/{name}@current "
        f"--store NEW, then dmt add-task TASK --store NEW), or publish anyway with "
        f"'dmt register --force --store {store.path}' (current would then lack the other work)"
    )


def refuse_fork(seen: Survey, store: Store, version: int, reusing: str | None = None) -> None:
    """Raise ForkError when `current` is not in this store version's lineage (nor the registry
    version `reusing`, the one that already publishes its state)."""
    current = seen.current
    if current is None or current in seen.mine or current == reusing:
        return
    held = seen.versions.get(current)
    theirs = what(held) if held is not None else f"version {current}"
    behind = registry_ancestors(seen.versions, {current})
    manifest = store.manifest(version)
    own = ", ".join(sorted(seen.mine & behind, key=int)[-1:])
    if reusing is not None and reusing in behind:
        raise ForkError(
            f"models:/{seen.name}@current is {theirs}, which already builds on this store's "
            f"version {version} (registry version {reusing}): moving current back would drop "
            f"that work; alias current stays at {current}. To go on: "
            + _way_forward(seen.name, store)
        )
    base = f"from version {own}" if own else "from an older version"
    raise ForkError(
        f"the lineage of model {seen.name!r} forked: models:/{seen.name}@current is {theirs}, "
        f"and this store's version {version} ({_own_change(manifest)}) descends {base}, not "
        f"from version {current}; alias current stays at {current}. To go on: "
        + _way_forward(seen.name, store)
    )


def rivals(seen: Survey, versions: dict[str, Any], below: int, now_ms: int) -> list[Any]:
    """The versions below `below` that were published, or are being published (a claim younger
    than CLAIM_TIMEOUT_S at `now_ms`), by someone else since `seen` was taken: any of them
    means this publish must not move `current`. That includes one `seen` as claiming that has
    been published since: it moved `current` after this publish looked at it."""
    found = []
    for key, held in sorted(versions.items(), key=lambda kv: int(kv[0])):
        if int(key) >= below or key in seen.mine:
            continue
        state = held.tags.get(CLAIM)
        if state == "fork":
            continue
        new_since = int(key) > seen.newest_seen
        young = (now_ms - (held.creation_timestamp or 0)) < CLAIM_TIMEOUT_S * 1000
        was = seen.versions.get(key)
        published_since = (
            state == "published" and was is not None and was.tags.get(CLAIM) == "claiming"
        )
        if new_since or published_since or (state == "claiming" and young):
            found.append(held)
    return found


def claim_current(
    client: Any, seen: Survey, store: Store, version: int, number: str, force: bool
) -> None:
    """Move `current` to the new registry version `number` unless a rival publish came first
    (then tag it a fork and raise ForkError); with `force`, move it regardless."""
    from dmt_registry.publish import registered_versions

    if not force:
        now = {str(v.version): v for v in registered_versions(client, seen.name)}
        created = getattr(now.get(number), "creation_timestamp", None) or 0  # the server's clock
        found = rivals(seen, now, int(number), created)
        if found:
            winner = found[0]
            client.set_model_version_tag(seen.name, number, CLAIM, "fork")
            client.set_model_version_tag(seen.name, number, "dmt.fork_of", str(winner.version))
            raise ForkError(
                f"another publish of model {seen.name!r} came first: {what(winner)} was "
                f"registered while this store's version {version} was being published as "
                f"version {number}, which is kept but not current (tagged dmt.publish=fork); "
                "alias current is not moved by this publish. To go on: "
                + _way_forward(seen.name, store)
            )
    client.set_registered_model_alias(seen.name, CURRENT, number)
    client.set_model_version_tag(seen.name, number, CLAIM, "published")
    if force and seen.current is not None and seen.current not in seen.mine:
        client.set_model_version_tag(seen.name, number, "dmt.forced_over", seen.current)


def move_current(
    client: Any, seen: Survey, store: Store, version: int, number: str, force: bool
) -> None:
    """Point `current` at the existing registry version `number` (a state published before:
    a rollback, a second register). Refused while someone else's publish is in flight; unlike
    a new version, this move is checked just before it is made, not after."""
    if not force:
        now_ms = int(time.time() * 1000)  # this machine's clock against the server's: coarse
        found = [v for v in rivals(seen, seen.versions, 10**9, now_ms) if str(v.version) != number]
        if found:
            raise ForkError(
                f"another publish of model {seen.name!r} is in progress ({what(found[0])}); "
                "alias current is not moved: retry in a minute, or see 'dmt status'"
            )
    client.set_registered_model_alias(seen.name, CURRENT, number)


def origin(client: Any, held: Any, uri: str, model_uri: str) -> dict[str, Any]:
    """Where a pulled store came from, for `dmt history`: the version, the server, and the
    registry lineage that led to it (oldest first)."""
    from dmt_registry.access import safe_uri
    from dmt_registry.publish import registered_versions
    from dmtcore.store.directory import now_iso

    versions = {str(v.version): v for v in registered_versions(client, held.name)}
    chain, number = [], str(held.version)
    while number in versions and number not in {c["version"] for c in chain}:
        tags = versions[number].tags
        chain.append(
            {
                "version": number,
                "operation": tags.get("dmt.operation"),
                "tasks": tags.get("dmt.task_added") or tags.get("dmt.task_removed") or "",
                "store_version": tags.get("dmt.store_version"),
                "published_by": tags.get("dmt.published_by"),
            }
        )
        number = tags.get("dmt.parent_version", "")
    return {
        "model_uri": model_uri,
        "model": held.name,
        "version": str(held.version),
        "server": safe_uri(uri),
        "store_version": int(held.tags.get("dmt.store_version", "0") or 0),
        "published_by": held.tags.get("dmt.published_by"),
        "pulled_at": now_iso(),
        "lineage": list(reversed(chain)),
    }


def note_published(store_path: Any, store_version: int, model: str, number: str, uri: str) -> None:
    """Record in the store (publications.json) that its version is registry version `number`;
    it settles a pending publish. Never fails the publish it records."""
    import contextlib

    from dmt_registry.access import safe_uri
    from dmtcore.store import publications

    with contextlib.suppress(DmtError, OSError):
        publications.record_published(store_path, store_version, model, number, safe_uri(uri))


def note_pending(store_path: Any, store_version: int, uri: str, error: BaseException) -> None:
    """Record in the store that publishing `store_version` was refused or failed (`dmt status`
    shows it, `dmt register` retries). The reason is dmt's own one-line message: no secret."""
    import contextlib

    from dmt_registry.access import safe_uri
    from dmtcore.errors import first_line
    from dmtcore.store import publications

    with contextlib.suppress(DmtError, OSError):
        publications.record_pending(
            store_path, store_version, safe_uri(uri), first_line(error, 2000)
        )
