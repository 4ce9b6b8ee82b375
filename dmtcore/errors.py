"""One exception base for every failure a user can cause or meet.

The CLI turns a `DmtError` into one clean message and the class's exit code, never a traceback,
so every subclass must carry a message that names the bad value and what would be valid.
"""

from __future__ import annotations


class DmtError(Exception):
    """Base of all dmt errors; `exit_code` is what the CLI exits with."""

    exit_code = 1


class UnknownNameError(DmtError):
    """A task, backbone, connection kind, plugin or version that does not exist."""

    exit_code = 3


class ConflictError(DmtError):
    """Something already exists: a task in the store, a duplicate registration."""

    exit_code = 4


class ForkError(ConflictError):
    """A publish whose store does not descend from the registered model's `current` version:
    another publisher moved it (the lineage forked), so `current` is left where it is."""


class StoreError(DmtError):
    """A path that is not a store, or a store that cannot be read or written."""

    exit_code = 5


class StoreLockedError(DmtError):
    """Another writer holds the store's lock."""

    exit_code = 6


class DataError(DmtError):
    """A dataset that is empty, malformed, or whose labels do not fit the task."""

    exit_code = 7


class TrainingError(DmtError):
    """Training cannot go on, e.g. the loss became NaN or infinite."""

    exit_code = 8


class PluginError(DmtError):
    """A plugin failed to import or to register."""

    exit_code = 9


class TrackingError(DmtError):
    """The MLflow tracking server is unreachable or refused a request."""

    exit_code = 10


class AccessRefusedError(TrackingError):
    """The MLflow server refused the credentials (HTTP 401) or the permission (HTTP 403)."""


class InvalidValueError(DmtError):
    """An option or argument outside its valid range (input spec, epochs, device, ...)."""

    exit_code = 11


class Interrupted(DmtError):
    """The user pressed Ctrl-C or the process got SIGTERM; nothing was written."""

    exit_code = 130


def first_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's first line, for one-line messages (MLflow's can run to pages)."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__
