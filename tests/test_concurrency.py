"""Real concurrent processes: one writer at a time, named; readers never blocked or misled."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dmtcore.errors import StoreLockedError
from dmtcore.operations import add_task
from dmtcore.store.directory import Store
from dmtcore.train.loop import TrainSettings


@pytest.mark.slow
def test_second_writer_fails_at_once_and_readers_keep_working(
    store_copy: Path, host, run_cli, tmp_path: Path
) -> None:
    args = [sys.executable, "-m", "dmtcore", "add-task", "digits.prime", "--store", str(store_copy),
            "--epochs", "40", "--no-tracking"]  # fmt: skip
    writer = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    assert writer.stderr is not None
    try:
        while not writer.stderr.readline().startswith("epoch 1:"):  # it holds the lock and trains
            assert writer.poll() is None
        started = time.perf_counter()
        with pytest.raises(
            StoreLockedError,
            match=rf"locked by PID {writer.pid} running 'add-task digits.prime' since",
        ):
            add_task(
                store_copy, "digits.large", host, TrainSettings(epochs=1), notify=lambda m: None
            )
        assert time.perf_counter() - started < 5  # at once, no waiting
        np.save(tmp_path / "x.npy", np.zeros((2, 1, 8, 8), np.float32))
        for _ in range(3):  # readers, while the writer trains: always the complete version 3
            status = json.loads(run_cli("status", "--store", store_copy, "--json").stdout)
            assert status["version"] == 3 and len(status["tasks"]) == 2
            assert len(json.loads(run_cli("history", "--store", store_copy, "--json").stdout)) == 3
            run_cli("predict", tmp_path / "x.npy", "--store", store_copy)
            run_cli("eval", "digits.even", "--store", store_copy)
    finally:
        writer.kill()
        writer.wait()
    # The killed writer's lock is released by the kernel: the next writer takes over at once.
    add_task(store_copy, "digits.large", host, TrainSettings(epochs=1), notify=lambda m: None)
    assert Store.open(store_copy).current_version() == 4
