"""The feature cache on disk (issue 13): its space is reserved before anything is written through
the mapping, so a full disk is a message or an error, never SIGBUS; and its file has no name, so
nothing is left in the temp directory, however the process ends."""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dmtcore.operations import add_task
from dmtcore.store.directory import Store
from dmtcore.train.loop import TrainSettings

from conftest import fingerprint

QUICK = ["--epochs", "1", "--no-tracking"]
SMALL_DISK_MB = 14  # one digits.prime cache (10.7 MB, 12.8 with auto's headroom) fits, two do not


def enospc(fd: int, offset: int, length: int) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def unsupported(fd: int, offset: int, length: int) -> None:
    raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("dmt-feature-cache-"))


@pytest.fixture
def temp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temp directory of this test's own, for `tempfile` in this process."""
    path = tmp_path / "temp"
    path.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    return path


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real filesystem of SMALL_DISK_MB: a tmpfs, which needs root with CAP_SYS_ADMIN."""
    path = tmp_path / "small-disk"
    path.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root and mount(8)")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SMALL_DISK_MB}m", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def dmt(store: Path, temp: Path, *options: str, **env: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "dmtcore", "add-task", "digits.prime", "--store", str(store)]
    environment = {**os.environ, "TMPDIR": str(temp), **env}
    return subprocess.Popen(
        [*args, *QUICK, *options], env=environment, stderr=subprocess.PIPE, text=True
    )


def copy(store: Path, tmp_path: Path, name: str) -> Path:
    return Path(shutil.copytree(store, tmp_path / name))


def test_no_space_in_auto_mode_trains_without_the_cache(
    store_copy: Path, host, temp_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "posix_fallocate", enospc)
    messages: list[str] = []
    settings = TrainSettings(epochs=1, batch_size=64, cache_budget_mb=0.01)
    result = add_task(store_copy, "digits.prime", host, settings, notify=messages.append)
    [off] = [m for m in messages if m.startswith("feature cache")]
    assert re.fullmatch(
        rf"feature cache off: [\d.]+ MB needed in {re.escape(str(temp_dir))} \(over the memory "
        r"budget of 0\.01 MB\), only [\d.]+ [MG]B free \(No space left on device\); "
        "training without it",
        off,
    ), off
    assert result.summary["feature_cache"] == {}
    assert "digits.prime" in [t["name"] for t in Store.open(store_copy).manifest()["tasks"]]
    assert leftovers(temp_dir) == []


def test_no_space_in_disk_mode_is_an_error_and_changes_nothing(
    store_copy: Path, temp_dir: Path, monkeypatch: pytest.MonkeyPatch, run_cli
) -> None:
    monkeypatch.setattr(os, "posix_fallocate", enospc)
    before = fingerprint(store_copy)
    result = run_cli(
        "add-task", "digits.prime", "--store", store_copy, *QUICK, "--feature-cache", "disk",
        expect=5,
    )  # fmt: skip
    [line] = result.stderr.strip().splitlines()[-1:]
    assert line.startswith("Error: --feature-cache disk: cannot reserve the feature cache, "), (
        result.stderr
    )
    assert f" MB needed in {temp_dir}, only " in line
    assert "No space left on device" in line and "--feature-cache auto" in line
    assert "Traceback" not in result.stderr
    assert fingerprint(store_copy) == before
    assert leftovers(temp_dir) == []


@pytest.mark.parametrize("reserve", ["fallocate", "zeros"])
def test_the_disk_cache_holds_its_space_while_training_and_gives_it_back(
    store_copy: Path, host, small_disk: Path, monkeypatch: pytest.MonkeyPatch, reserve: str
) -> None:
    """Reserved: the disk's used bytes cover the cache before its first write (a sparse file
    uses none). Given back: they are free again as soon as training returns, in this process.
    `zeros` is the path of filesystems that cannot preallocate."""
    monkeypatch.setattr(tempfile, "tempdir", str(small_disk))
    if reserve == "zeros":
        monkeypatch.setattr(os, "posix_fallocate", unsupported)
    used: list[int] = []

    def notify(message: str) -> None:
        if message.startswith("feature cache: 2 frozen columns "):
            used.append(shutil.disk_usage(small_disk).used)

    settings = TrainSettings(epochs=1, batch_size=64, feature_cache="disk")
    result = add_task(store_copy, "digits.prime", host, settings, notify=notify)
    assert result.summary["feature_cache"]["location"] == "disk"
    assert used and used[0] >= result.summary["feature_cache"]["bytes"]
    assert shutil.disk_usage(small_disk).used < 2**20
    assert leftovers(small_disk) == []


@pytest.mark.slow
def test_two_processes_sharing_a_small_disk_never_die_by_sigbus(
    digits_store: Path, tmp_path: Path, small_disk: Path
) -> None:
    """A spills to the small disk and is paused before it fills its cache; B and C then find
    the disk promised to A. The old code checked free space only: B filled the disk, and A died
    by SIGBUS when it went on, leaving its cache directory behind."""
    stores = {name: copy(digits_store, tmp_path, name) for name in "ABC"}
    before = fingerprint(stores["B"])
    a = dmt(stores["A"], small_disk, "--cache-budget-mb", "0.01")
    assert a.stderr is not None
    seen = []
    for line in a.stderr:
        seen.append(line)
        if line.startswith("feature cache: 2 frozen columns "):
            break
    a.send_signal(signal.SIGSTOP)
    try:
        assert seen and "on disk" in seen[-1], "".join(seen)
        needed = float(re.search(r"([\d.]+) MB of float16", seen[-1])[1])
        assert needed > SMALL_DISK_MB / 2 and needed * 1.2 < SMALL_DISK_MB, "one cache fits"
        b = dmt(stores["B"], small_disk, "--feature-cache", "disk")
        c = dmt(stores["C"], small_disk, "--cache-budget-mb", "0.01")
        b_err, c_err = b.communicate(timeout=300)[1], c.communicate(timeout=300)[1]
    finally:
        a.send_signal(signal.SIGCONT)
    a_err = "".join(seen) + a.communicate(timeout=300)[1]
    assert a.returncode == 0, a_err
    assert b.returncode == 5, b_err
    assert "Error: --feature-cache disk: cannot reserve the feature cache" in b_err
    assert fingerprint(stores["B"]) == before
    assert c.returncode == 0, c_err
    assert re.search(r"feature cache off: [\d.]+ MB needed in .*; training without it", c_err)
    assert leftovers(small_disk) == []
    assert shutil.disk_usage(small_disk).used < 2**20


@pytest.mark.slow
def test_a_process_killed_while_training_leaves_no_cache_behind(
    store_copy: Path, tmp_path: Path
) -> None:
    temp = tmp_path / "temp"
    temp.mkdir()
    process = dmt(store_copy, temp, "--feature-cache", "disk", DMT_CRASH_AT="step:3")
    _, err = process.communicate(timeout=300)
    assert process.returncode == -signal.SIGKILL, err
    assert "on disk" in err
    assert leftovers(temp) == []
