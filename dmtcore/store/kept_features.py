"""Frozen columns' features kept across operations, in the store (issue 16).

A frozen column's stage outputs on an image never change: its weights, its connections and the
columns it reads are all frozen. The feature cache computes them once per operation; this module
keeps them between operations, so adding task k + 1 on images an earlier operation saw runs only
the columns that were not frozen then (the newest one), not all k.

An entry is keyed by everything its numbers depend on: the weight blobs (sha256, from the
manifest) of the column and connections of the task and of every task it reads, directly or not,
with their source order; how many stage outputs are kept; torch's version, the device type and
memory format; and the images: a sha256 of the split's in-memory image tensor and the store's
input spec (the adaptation). Entries hold float32, exactly what the column computes, so an
operation computes the same numbers whether an entry was there or not (a test checks it).

Entries are safetensors files in `<store>/features/`, each with the sha256 of its data section
in its header: a damaged entry is computed again and replaced. The directory stays within a
budget (`--kept-features-mb`, 0 turns this off); the least recently used entries go first. Only
a writer, under the store's lock, reads or writes here; files are written through the store's
tmp/ and renamed into place, and only regular files named like entries are ever deleted.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as save_safetensors

DIRECTORY = "features"
FORMAT = "dmt-kept-features-1"
ENTRY_FILE = re.compile(r"^[0-9a-f]{64}\.safetensors$")
DEFAULT_BUDGET_MB = 1024.0


def column_keys(
    manifest: dict[str, Any], sources: dict[str, list[str]], context: str
) -> dict[str, str]:
    """A key for every stored task whose sources in the model (`sources`) are the manifest's:
    a hash of the weights that produce its features, through every column it reads."""
    entries = {task["name"]: task for task in manifest["tasks"]}
    keys = {}
    for name, model_sources in sources.items():
        entry = entries.get(name)
        if entry is None or list(entry["sources"]) != list(model_sources):
            continue  # changed by this operation (remove-task): no stored key describes it
        closure, stack = {}, [name]
        while stack:
            task = stack.pop()
            if task in closure:
                continue
            weights = entries[task]["weights"]
            closure[task] = [
                weights["column"]["sha256"],
                weights["connections"]["sha256"],
                list(entries[task]["sources"]),
            ]
            stack.extend(entries[task]["sources"])
        recipe = {"format": FORMAT, "task": name, "graph": closure, "context": context}
        keys[name] = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()
    return keys


def images_fingerprint(batches: Any, memo: dict[Any, str]) -> str | None:
    """A sha256 of an in-memory split's images and the input spec they are adapted to, or None
    for data that is not one tensor in memory (reading it all to hash it would cost a pass)."""
    if not batches.in_memory:
        return None
    images = batches.dataset.tensors[0]
    identity = (images.data_ptr(), tuple(images.shape), images.stride(), str(batches.input_spec))
    if identity not in memo:
        digest = hashlib.sha256()
        digest.update(f"{tuple(images.shape)} {images.dtype} {batches.input_spec}".encode())
        digest.update(memoryview(images.detach().cpu().contiguous().numpy()).cast("B"))
        memo[identity] = digest.hexdigest()
    return memo[identity]


@dataclass
class KeptFeatures:
    """The store's kept features for one operation: which frozen tasks have keys, the budget,
    what was read, and what was computed to keep. Nothing is written until `flush`, after the
    commit: an operation that fails leaves the store's files as they were."""

    store: Any  # dmtcore.store.directory.Store: writes go through its tmp/ and an atomic rename
    keys: dict[str, str]
    budget_bytes: int
    fingerprints: dict[Any, str] = field(default_factory=dict)
    read: dict[str, int] = field(default_factory=dict)  # task -> bytes read
    opened: dict[Path, Any] = field(default_factory=dict)  # checked once per operation
    pending: dict[Path, tuple[str, list[torch.Tensor]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def directory(self) -> Path:
        return self.store.path / DIRECTORY

    def fingerprint(self, batches: Any) -> str | None:
        return images_fingerprint(batches, self.fingerprints)

    def _path(self, task: str, fingerprint: str) -> Path:
        name = hashlib.sha256(f"{self.keys[task]} {fingerprint}".encode()).hexdigest()
        return self.directory / f"{name}.safetensors"

    def open(self, task: str, fingerprint: str, shapes: list[tuple[int, ...]]) -> Any | None:
        """`task`'s entry on these images as a safetensors handle (tensors `stage0`, `stage1`,
        … of the given shapes, sliced batch by batch), or None. A damaged entry is computed
        again and replaced."""
        if task not in self.keys:
            return None
        path = self._path(task, fingerprint)
        if path in self.opened:  # another table over the same images (tasks taking turns)
            return self.opened[path]
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(info.st_mode):
            return None  # never read through a link
        problem = _damage(path, shapes)
        if problem is not None:
            self.notes.append(f"kept features of {task} were unusable ({problem}): recomputed")
            return None
        os.utime(path)  # most recently used: evicted last
        self.read[task] = self.read.get(task, 0) + info.st_size
        self.opened[path] = safe_open(path, framework="pt")
        return self.opened[path]

    def wants(self, task: str, fingerprint: str | None, nbytes: int) -> bool:
        """Whether `task`'s features on these images, `nbytes` of float32, are to be kept."""
        return fingerprint is not None and task in self.keys and nbytes <= self.budget_bytes

    def keep(self, task: str, fingerprint: str, stages: list[torch.Tensor]) -> None:
        """Hold `task`'s float32 stage outputs on these images, to be written by `flush`."""
        self.pending[self._path(task, fingerprint)] = (task, stages)

    def flush(self) -> None:
        """Write what `keep` held, then evict the least recently used entries past the
        budget. Called once the operation's version is committed."""
        pending, self.pending = self.pending, {}
        for path, (task, stages) in pending.items():
            self.directory.mkdir(exist_ok=True)
            self.store.write_file(path, _checksummed(task, stages), sync=False)
            self._evict(keep=path)

    def _evict(self, keep: Path) -> None:
        entries = []
        with os.scandir(self.directory) as scan:
            for entry in scan:
                if entry.is_file(follow_symlinks=False) and ENTRY_FILE.match(entry.name):
                    info = entry.stat(follow_symlinks=False)
                    entries.append((info.st_mtime, info.st_size, Path(entry.path)))
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if total <= self.budget_bytes:
                break
            if path != keep:
                _unlink(path)
                total -= size

    def summary(self) -> dict[str, Any]:
        """What the run's manifest and tracking record: columns read, columns to be kept."""
        return {
            "kept_read": sorted(self.read),
            "kept_read_bytes": sum(self.read.values()),
            "kept_new": sorted({task for task, _ in self.pending.values()}),
        }


def _checksummed(task: str, stages: list[torch.Tensor]) -> bytes:
    """The entry's safetensors bytes, with the sha256 of its data section in the header. The
    header is written with a placeholder of the digest's length, then the digest is put in its
    place: the data section's offsets stay as they are, and the tensors are serialised once."""
    placeholder = "0" * 64
    metadata = {"format": FORMAT, "data_sha256": placeholder, "task": task}
    tensors = {f"stage{i}": t.contiguous() for i, t in enumerate(stages)}
    payload = bytearray(save_safetensors(tensors, metadata))
    header = 8 + int.from_bytes(payload[:8], "little")
    digest = hashlib.sha256(memoryview(payload)[header:]).hexdigest()
    field_at = payload.index(f'"data_sha256":"{placeholder}"'.encode(), 8, header)
    start = field_at + len('"data_sha256":"')
    payload[start : start + 64] = digest.encode()
    return bytes(payload)


def _damage(path: Path, shapes: list[tuple[int, ...]]) -> str | None:
    """Why the entry cannot be used (no valid header, a checksum mismatch, tensors of other
    shapes than `shapes`, samples first), or None."""
    try:
        with (
            open(path, "rb") as handle,
            mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data,
        ):
            header = int.from_bytes(data[:8], "little")
            if header <= 0 or 8 + header > len(data):
                return "no valid header"
            described = json.loads(bytes(data[8 : 8 + header]))
            metadata = described.pop("__metadata__", {}) or {}
            if metadata.get("format") != FORMAT:
                return "not a kept-features file"
            if hashlib.sha256(data[8 + header :]).hexdigest() != metadata.get("data_sha256"):
                return "checksum mismatch"
    except (OSError, ValueError) as exc:
        return str(exc)
    found = {name: (tuple(info["shape"]), info["dtype"]) for name, info in described.items()}
    if found != {f"stage{i}": (tuple(shape), "F32") for i, shape in enumerate(shapes)}:
        return "other stage shapes"
    return None


def _unlink(path: Path) -> None:
    try:
        if stat.S_ISREG(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass
