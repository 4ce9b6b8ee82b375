"""A writer never writes, truncates or deletes through a link inside a store, and its clean-up
removes only files the store itself wrote (issue 13, class 1: both defects reached outside the
store: a linked lock truncated the user's file, linked blobs lost another store's weights)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from conftest import fingerprint


def foreign_blob(folder: Path) -> Path:
    """A weight file named like a blob that the store under test does not reference."""
    data = b"weights of another store"
    path = folder / f"{hashlib.sha256(data).hexdigest()}.safetensors"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_a_linked_lock_file_is_refused_and_its_target_kept(
    link: str, store_copy: Path, tmp_path: Path, run_cli
) -> None:
    mine = tmp_path / "notes.txt"
    mine.write_text("the user's own notes\n")
    (store_copy / "writer.lock").unlink()
    if link == "symlink":
        (store_copy / "writer.lock").symlink_to(mine)
    else:
        os.link(mine, store_copy / "writer.lock")
    before = fingerprint(store_copy)

    result = run_cli("rollback", "2", "--store", store_copy, expect=5)

    assert mine.read_text() == "the user's own notes\n"
    assert fingerprint(store_copy) == before
    assert result.stderr.count("\n") == 1 and "is unsafe to write" in result.stderr
    assert ("symbolic link" if link == "symlink" else "other hard links") in result.stderr


@pytest.mark.parametrize("entry", ["blobs", "versions", "tmp", "CURRENT"])
def test_a_linked_layout_entry_is_refused_before_anything_is_written(
    entry: str, store_copy: Path, tmp_path: Path, run_cli
) -> None:
    other = tmp_path / "other"
    shutil.copytree(store_copy, other)
    foreign_blob(other / "blobs")  # the weights a clean-up through a link would delete
    (other / "tmp" / "work-in-progress").write_text("another writer's file")
    moved = store_copy / entry
    if moved.is_dir():
        shutil.rmtree(moved)
    else:
        moved.unlink()
    moved.symlink_to(other / entry)
    theirs, ours = fingerprint(other), fingerprint(store_copy)

    result = run_cli("rollback", "2", "--store", store_copy, expect=5)

    assert fingerprint(other) == theirs
    assert fingerprint(store_copy) == ours
    assert f"{entry} is a symbolic link" in result.stderr


def test_clean_up_removes_only_files_the_store_wrote(store_copy: Path, run_cli) -> None:
    leftover = foreign_blob(store_copy / "blobs")  # e.g. from a killed commit: not referenced
    notes = store_copy / "blobs" / "README.safetensors"
    notes.write_text("not a blob name: the store never wrote this")
    folder = store_copy / "blobs" / f"{'0' * 64}.safetensors"
    folder.mkdir()

    run_cli("rollback", "2", "--store", store_copy)

    assert not leftover.exists()
    assert notes.read_text().startswith("not a blob name") and folder.is_dir()
    run_cli("verify", "--store", store_copy, "--all")


def test_a_linked_tracking_database_is_refused(
    store_copy: Path, tmp_path: Path, mlflow_template: Path, run_cli
) -> None:
    elsewhere = tmp_path / "someone-elses.db"
    shutil.copy(mlflow_template, elsewhere)
    (store_copy / "mlflow.db").symlink_to(elsewhere)
    theirs = fingerprint(tmp_path / "someone-elses.db")

    result = run_cli("register", "--store", store_copy, expect=5)

    assert "mlflow.db is a symbolic link" in result.stderr
    assert fingerprint(tmp_path / "someone-elses.db") == theirs
