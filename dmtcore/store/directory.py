"""The store directory: immutable versions, content-addressed weight blobs, one writer at a time.

    <store>/CURRENT              the current version number, replaced atomically as the last step
    <store>/versions/vNNNNNN.json one manifest per version, never changed once written
    <store>/blobs/<sha256>.safetensors  weights, named by content: a frozen column is written once
                                 and every later version refers to the same file
    <store>/tmp/                 partial writes; whatever a crash leaves here is removed next time
    <store>/features/            frozen columns' features kept across operations (a cache within
                                 a budget, see dmtcore.store.kept_features; deleting it loses nothing)
    <store>/publications.json    where a pulled store came from, what was published (see
                                 dmtcore.store.publications)
    <store>/writer.lock          flock'ed by the writer, holding its PID, command and start time

A crash at any point before CURRENT is replaced leaves the previous version untouched; readers
only ever follow CURRENT to a complete manifest whose blobs already exist, so they never block.
A writer never follows a symbolic link inside the store: the lock is opened with O_NOFOLLOW and
every entry of the layout must be a real file or directory before anything is written, truncated
or deleted, so a link cannot lead a write or a clean-up into a file that is not the store's.
This module handles bytes and JSON only (no torch), so `dmt status` stays instant.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from dmtcore.errors import DmtError, StoreError, StoreLockedError, UnknownNameError
from dmtcore.runtime.faults import crash_point
from dmtcore.store.manifest import (
    MAX_VERSION,
    manifest_problems,
    validate_manifest,
    weight_refs,
    written_format,
)

CURRENT = "CURRENT"
VERSION_FILE = re.compile(r"^v([0-9]{6})\.json$")
CURRENT_TEXT = re.compile(r"\s*([0-9]{1,6})\s*")
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
SHA256 = re.compile(r"^[0-9a-f]{64}$")
# A directory holding only the embedded tracking database may become a store (e.g. a copy of a
# migrated template database, which saves MLflow's schema migrations).
TRACKING_FILES = {"mlflow.db"}
SKELETON = {"versions", "blobs", "tmp", "writer.lock"}  # what an interrupted init leaves
BLOB_FILE = re.compile(r"^[0-9a-f]{64}\.safetensors$")
# Every entry a writer creates, replaces or deletes, and the kind it must be (never a link).
LAYOUT = {
    "versions": stat.S_ISDIR,
    "blobs": stat.S_ISDIR,
    "tmp": stat.S_ISDIR,
    CURRENT: stat.S_ISREG,
    "mlflow.db": stat.S_ISREG,
    "mlartifacts": stat.S_ISDIR,
    "features": stat.S_ISDIR,  # frozen columns' features kept across operations
    "publications.json": stat.S_ISREG,  # what was published or pulled (store.publications)
}


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()


def _shorten(value: object, limit: int = 40) -> str:
    """A value typed by a user, cut short for a message (a version may have 300 digits)."""
    text = str(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Store:
    """A dmt store on disk. Open one with `Store.open`, create one with `Store.create`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    # -- opening ---------------------------------------------------------------------------

    @staticmethod
    def exists(path: Path) -> bool:
        try:
            return (Path(path) / CURRENT).is_file()
        except OSError:  # e.g. a parent directory that cannot be searched
            return False

    @classmethod
    def open(cls, path: Path) -> Store:
        path = Path(path)
        try:
            present = path.exists()
        except OSError as exc:
            raise StoreError(f"cannot read {str(path)!r}: {exc.strerror}") from exc
        if not present:
            raise StoreError(
                f"no store at {str(path)!r}; create one with 'dmt init --store {path}'"
            )
        if not cls.exists(path):
            raise StoreError(f"{str(path)!r} is not a dmt store (it has no {CURRENT} file)")
        return cls(path)

    @classmethod
    def create(cls, path: Path, manifest: dict[str, Any], blobs: Sequence[bytes] = ()) -> Store:
        """Create a store whose version 1 is `manifest`, with the weight `blobs` it refers to
        (a pretrained initial column). The directory must be new, empty, or hold only an
        embedded tracking database or the skeleton of an init that never finished."""
        path = Path(path)
        if cls.exists(path):
            raise StoreError(f"a store already exists at {str(path)!r}")
        if path.exists() and not cls._may_become_store(path):
            raise StoreError(
                f"{str(path)!r} exists and is not an empty directory; choose another --store"
            )
        try:
            for sub in ("versions", "blobs", "tmp"):
                (path / sub).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create a store at {str(path)!r}: {exc.strerror}") from exc
        store = cls(path)
        with store.writer("init"):
            if cls.exists(path):  # another process initialised it meanwhile
                raise StoreError(f"a store already exists at {str(path)!r}")
            for data in blobs:
                store.write_blob(data)
            store.commit(manifest)
        return store

    @staticmethod
    def _may_become_store(path: Path) -> bool:
        if not path.is_dir():
            return False
        entries = set(os.listdir(path))
        if entries - TRACKING_FILES - SKELETON:
            return False
        return not any(
            (path / sub).is_dir() and any((path / sub).iterdir()) for sub in ("versions", "blobs")
        )

    # -- reading ---------------------------------------------------------------------------

    def current_version(self) -> int:
        """The number CURRENT holds: ASCII digits naming a version from 1 to 999999, nothing
        else (`str.isdigit` would let '²' through, and `int` would then fail)."""
        path = self.path / CURRENT
        data = self._read(path, limit=64)
        match = CURRENT_TEXT.fullmatch(data)
        version = int(match.group(1)) if match else 0
        if not 1 <= version <= MAX_VERSION:
            raise StoreError(
                f"{path} is damaged: {data.strip()[:40]!r} is not a version number from 1 to "
                f"{MAX_VERSION}"
            )
        return version

    def version_path(self, version: int) -> Path:
        if not (isinstance(version, int) and 1 <= version <= MAX_VERSION):
            raise UnknownNameError(
                f"{version!r} is not a version number; versions are 1 to {MAX_VERSION}"
            )
        return self.path / "versions" / f"v{version:06d}.json"

    def manifest(self, version: int | None = None) -> dict[str, Any]:
        """The manifest of `version` (the current one by default), checked against the schema:
        callers may index any field it defines without a further check."""
        version = self.current_version() if version is None else version
        data = self.manifest_data(version)
        path = self.version_path(version)
        validate_manifest(data, str(path))
        if data["version"] != version:
            raise StoreError(f"{path}: version must be {version}, got {data['version']}")
        return data

    def manifest_data(self, version: int) -> Any:
        """The parsed JSON of a committed version's manifest, not yet checked (`dmt verify`
        lists every problem of it; everything else uses `manifest`)."""
        current = self.current_version()
        known = isinstance(version, int) and 1 <= version <= current
        if not (known and self._is_file(self.version_path(version))):
            if known and version == current:  # CURRENT names it: the store is damaged
                raise StoreError(self._missing_current(current))
            listing = ", ".join(str(v) for v in self.versions()) or "none"
            raise UnknownNameError(
                f"store {str(self.path)!r} has no version {_shorten(version)}; versions: {listing}"
            )
        path = self.version_path(version)
        text = self._read(path, limit=MAX_MANIFEST_BYTES)
        try:
            return json.loads(text)
        except ValueError as exc:
            raise StoreError(f"{path} is damaged: {exc}") from exc
        except RecursionError as exc:
            raise StoreError(f"{path} is damaged: its JSON is nested too deeply") from exc

    def _missing_current(self, current: int) -> str:
        """Why the version CURRENT names cannot be read, the versions that can, and the way
        out: `dmt rollback N` reads only version N, so it leaves the missing one behind."""
        path = self.version_path(current)
        what = "is not a regular file" if os.path.lexists(path) else "is missing"
        existing = self.versions()
        store = str(self.path)
        if existing:
            remedy = (
                f"versions that exist: {', '.join(map(str, existing))}; run 'dmt verify --store "
                f"{store}' to see every problem, and 'dmt rollback {existing[-1]} --store {store}' "
                f"to make version {existing[-1]} current again"
            )
        else:
            remedy = (
                f"no version has a manifest; run 'dmt verify --store {store}', and restore "
                "versions/ from a backup"
            )
        return (
            f"store {store!r} is damaged: {CURRENT} names version {current}, but "
            f"{path.relative_to(self.path)} {what}; {remedy}"
        )

    def versions(self) -> list[int]:
        """Committed versions, oldest first (files newer than CURRENT are unfinished writes)."""
        current = self.current_version()
        folder = self.path / "versions"
        try:
            names = os.listdir(folder)
        except OSError as exc:
            raise StoreError(
                f"store {str(self.path)!r} is damaged: cannot list {folder}: {exc.strerror}"
            ) from exc
        found = []
        for name in names:
            match = VERSION_FILE.match(name)
            if match and int(match.group(1)) <= current:
                found.append(int(match.group(1)))
        return sorted(found)

    @staticmethod
    def _is_file(path: Path) -> bool:
        try:
            return path.is_file()
        except OSError:
            return False

    def _read(self, path: Path, limit: int) -> str:
        """A store file's text: UTF-8, at most `limit` bytes, or an error naming the file."""
        try:
            with open(path, "rb") as handle:
                data = handle.read(limit + 1)
        except OSError as exc:
            raise StoreError(f"cannot read {path}: {exc.strerror}") from exc
        if len(data) > limit:
            raise StoreError(f"{path} is damaged: it is larger than {limit} bytes")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise StoreError(f"{path} is damaged: it is not UTF-8 text ({exc.reason})") from exc

    def blob_path(self, sha256: str) -> Path:
        if not SHA256.match(sha256):
            raise StoreError(f"invalid blob reference {sha256[:80]!r}: expected 64 hex digits")
        return self.path / "blobs" / f"{sha256}.safetensors"

    def read_blob(self, sha256: str) -> bytes:
        """A weight file's bytes, verified against the sha256 the manifest recorded."""
        path = self.blob_path(sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise StoreError(f"weight file {path} is missing") from exc
        except OSError as exc:
            raise StoreError(f"cannot read weight file {path}: {exc.strerror}") from exc
        if hashlib.sha256(data).hexdigest() != sha256:
            raise StoreError(
                f"weight file {path} is damaged: its sha256 does not match the manifest"
            )
        return data

    # -- writing ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def writer(self, command: str) -> Iterator[None]:
        """Hold the store's writer lock; a second writer fails at once naming the holder.

        The lock is an flock, so the kernel releases it when its holder dies: a stale lock from a
        killed process is simply taken over, and what that process left half-written is removed.
        Only the lock, checked by `_open_lock`, is written before `remove_unfinished_writes`
        checks the layout; nothing else is written or deleted before that.
        """
        lock_path = self.path / "writer.lock"
        fd = self._open_lock(lock_path)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StoreLockedError(self._describe_holder(lock_path)) from None
            holder = {"pid": os.getpid(), "command": command, "started": now_iso()}
            try:
                try:
                    os.ftruncate(fd, 0)
                    os.pwrite(fd, json.dumps(holder).encode(), 0)
                except OSError as exc:
                    raise StoreError(
                        f"cannot write to store {str(self.path)!r}: {exc.strerror}; "
                        "the store is unchanged"
                    ) from exc
                self.remove_unfinished_writes()
                crash_point("locked")
                yield
            finally:
                os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _open_lock(self, lock_path: Path) -> int:
        """The lock file's descriptor: created if missing, never through a link, and refused
        unless it is a plain file of this store alone (a hard link would be truncated too)."""
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            fd = os.open(lock_path, flags, 0o644)
        except OSError as exc:
            if os.path.islink(lock_path):
                raise StoreError(_link_message(self.path, lock_path, "remove it")) from exc
            raise StoreError(f"cannot write to store {str(self.path)!r}: {exc.strerror}") from exc
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            os.close(fd)
            what = (
                "is not a regular file"
                if not stat.S_ISREG(info.st_mode)
                else "has other hard links"
            )
            raise StoreError(
                f"store {str(self.path)!r} is unsafe to write: {lock_path} {what}; dmt truncates "
                "its lock file, so it must be the store's own: remove it and retry"
            )
        return fd

    def _describe_holder(self, lock_path: Path) -> str:
        try:
            holder = json.loads(lock_path.read_text() or "{}")
        except (OSError, ValueError):
            holder = {}
        who = f"PID {holder.get('pid', '?')} running {holder.get('command', '?')!r} since {holder.get('started', '?')}"
        return f"store {str(self.path)!r} is locked by {who}; wait for it to finish"

    def remove_unfinished_writes(self) -> None:
        """Delete temporary files, versions past CURRENT and blobs no version refers to.

        Only entries this store writes are candidates: files named like its versions and blobs,
        inside directories that `check_layout` found to be real. Anything else is left alone.
        """
        check_layout(self.path)
        shutil.rmtree(self.path / "tmp", ignore_errors=True)
        (self.path / "tmp").mkdir(exist_ok=True)
        if not self.exists(self.path):
            return
        current = self.current_version()
        if not self._is_file(self.version_path(current)):
            return  # CURRENT names a missing manifest: damaged, never guess what is unused
        referenced: set[str] = set()
        for entry in _plain_files(self.path / "versions"):
            match = VERSION_FILE.match(entry.name)
            if match and int(match.group(1)) > current:
                os.unlink(entry.path)
            elif match:
                try:
                    data = self.manifest_data(int(match.group(1)))
                except DmtError:
                    return  # an unreadable manifest: never guess which blobs are unused
                if manifest_problems(data):
                    return  # a damaged one (e.g. a sha256 edited): the same
                referenced.update(ref["sha256"] for ref in weight_refs(data))
        for entry in _plain_files(self.path / "blobs"):
            if (
                BLOB_FILE.match(entry.name)
                and entry.name.removesuffix(".safetensors") not in referenced
            ):
                os.unlink(entry.path)

    def write_file(self, target: Path, data: bytes, sync: bool = True) -> None:
        """Write `data` to `target`, a file inside the store, through tmp/ and an atomic
        rename; `sync=False` for what can be recomputed (kept features), which skips the fsyncs."""
        self._write_atomically(target, data, sync)

    def _write_atomically(self, target: Path, data: bytes, sync: bool = True) -> None:
        tmp = self.path / "tmp" / f"{target.name}.{os.getpid()}.part"
        replaced = False
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
            with open(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                crash_point("file-half-written")
                if sync:
                    os.fsync(handle.fileno())
            crash_point("file-before-rename")
            os.replace(tmp, target)
            replaced = True
            if sync:
                _fsync_dir(target.parent)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if replaced and target.name == CURRENT:  # the version is committed: say so
                raise StoreError(
                    f"committed, but syncing {target.parent} failed: {exc.strerror}; the new "
                    "version may not survive a power cut: run 'dmt verify' once the disk is "
                    "healthy"
                ) from exc
            # A blob or manifest no version refers to yet: the next writer removes it.
            raise StoreError(
                f"cannot write {target}: {exc.strerror}; the store is unchanged"
            ) from exc

    def write_blob(self, data: bytes, sha256: str | None = None) -> str:
        """Store weight bytes under their sha256 (once: identical content is never rewritten).
        `sha256`, when given, is the caller's digest of these very bytes: a commit has just
        computed it for the manifest, and hashing every column again costs time per command."""
        sha256 = sha256 or hashlib.sha256(data).hexdigest()
        path = self.blob_path(sha256)
        if not path.exists():
            self._write_atomically(path, data)
            crash_point("blob-written")
        return sha256

    def commit(self, manifest: dict[str, Any]) -> int:
        """Write `manifest` as the next version and make it current; call under `writer()`.

        The blobs it names must already be written. CURRENT is replaced last, so until then
        every reader still sees the previous version.
        """
        previous = self.current_version() if self.exists(self.path) else None
        version = (previous or 0) + 1
        manifest = {
            **manifest,
            # What this release writes, whatever the parent was written as (3 only with a
            # region-level task: see written_format).
            "format": written_format(manifest),
            "version": version,
            "parent": previous,
            "created": now_iso(),
        }
        validate_manifest(manifest, "new manifest")
        for ref in weight_refs(manifest):
            if not self.blob_path(ref["sha256"]).is_file():
                raise StoreError(f"refusing to commit: weight file {ref['sha256']} was not written")
        self._write_atomically(self.version_path(version), json.dumps(manifest, indent=2).encode())
        crash_point("manifest-written")
        self._write_atomically(self.path / CURRENT, f"{version}\n".encode())
        crash_point("committed")
        return version

    def history(self) -> list[dict[str, Any]]:
        """Every committed version, newest first: number, date, operation, tasks."""
        entries = []
        for version in reversed(self.versions()):
            manifest = self.manifest(version)
            entries.append(
                {
                    "version": version,
                    "parent": manifest["parent"],
                    "created": manifest["created"],
                    "operation": manifest["operation"],
                    "tasks": [t["name"] for t in manifest["tasks"]],
                }
            )
        return entries


def _link_message(store: Path, entry: Path, remedy: str = "replace it with a real copy") -> str:
    return (
        f"store {str(store)!r} is unsafe to write: {entry} is a symbolic link (to "
        f"{os.readlink(entry)!r}); dmt never writes or deletes through links inside a store: "
        f"{remedy} and retry"
    )


def check_layout(store: Path) -> None:
    """Refuse a store whose layout entries are links or of the wrong kind, before any write.

    A link would let a write, a truncation or a clean-up of unreferenced weights reach files of
    another store or of the user; dmt writes only into entries that are this store's own."""
    for name, is_kind in LAYOUT.items():
        entry = Path(store) / name
        try:
            mode = os.lstat(entry).st_mode
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise StoreError(f"cannot inspect {entry}: {exc.strerror}") from exc
        if stat.S_ISLNK(mode):
            raise StoreError(_link_message(Path(store), entry))
        if not is_kind(mode):
            kind = "directory" if is_kind is stat.S_ISDIR else "regular file"
            raise StoreError(
                f"store {str(store)!r} is damaged: {entry} should be a {kind}; restore it or "
                "remove it and retry"
            )


def _plain_files(directory: Path) -> list[os.DirEntry[str]]:
    """The regular files directly inside `directory`, links and sub-directories left out."""
    try:
        with os.scandir(directory) as entries:
            return [e for e in entries if e.is_file(follow_symlinks=False)]
    except OSError as exc:
        raise StoreError(f"cannot read {directory}: {exc.strerror}") from exc
