"""Every bad input: one clear message naming the value, its own exit code, the store untouched."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

from conftest import fingerprint, toy_plugin

NO_TRACK = ["--no-tracking", "--epochs", "2"]

# (arguments after the store, expected exit code, fragment of the message)
ON_DIGITS_STORE = [
    (["add-task", "digits.evn", *NO_TRACK], 3, "Did you mean 'digits.even'"),
    (["add-task", "digits.even", *NO_TRACK], 4, "task 'digits.even' is already in store"),
    (["remove-task", "digits.prime", *NO_TRACK], 3, "unknown task 'digits.prime' in store"),
    (
        ["add-task", "digits.prime", "--no-tracking", "--epochs", "0"],
        11,
        "epochs must be a positive integer, got 0",
    ),
    (["add-task", "digits.prime", "--no-tracking", "--epochs", "-3"], 11, "got -3"),
    (
        ["add-task", "digits.prime", "--no-tracking", "--batch-size", "0"],
        11,
        "batch size must be a positive integer, got 0",
    ),
    (
        ["add-task", "digits.prime", "--no-tracking", "--lr", "-1"],
        11,
        "learning rate must be a positive number",
    ),
    (["add-task", "digits.prime", "--no-tracking", "--device", "tpu"], 11, "invalid device 'tpu'"),
    (
        ["add-task", "digits.prime", "--no-tracking", "--optimizer", "rmsprop"],
        2,
        "'rmsprop' is not one of 'adam', 'sgd'",
    ),
    (
        ["add-task", "digits.prime", "--no-tracking", "--cache-budget-mb", "-1"],
        11,
        "feature cache budget must be a number of megabytes ≥ 0, got -1.0",
    ),
    (
        ["add-task", "digits.prime", "--no-tracking", "--workers", "-2"],
        11,
        "workers must be a number of processes ≥ 0, got -2",
    ),
    (
        ["add-task", "digits.prime", "--no-tracking", "--precision", "fp8"],
        2,
        "'fp8' is not one of 'fp32', 'bf16'",
    ),
    (
        ["add-task", "digits.prime", "--no-tracking", "--feature-cache", "gpu"],
        2,
        "'gpu' is not one of 'auto', 'memory', 'disk', 'off'",
    ),
    (["eval", "digits.nope"], 3, "unknown task 'digits.nope' in this store"),
    (["predict", "missing.png"], 7, "input 'missing.png' does not exist"),
    (["connections", "--stage", "0"], 11, "stage 0 does not exist; valid: 1 to 6"),
    (["add-task", "../etc/passwd", "--no-tracking"], 3, "unknown task '../etc/passwd'"),
    (["add-task", "a/b", "--no-tracking"], 3, "unknown task 'a/b'"),
    (["add-task", "has space", "--no-tracking"], 3, "unknown task 'has space'"),
    (["add-task", "x" * 300, "--no-tracking"], 3, "unknown task 'xxxx"),
    (["add-task", "dïgits.évén", "--no-tracking"], 3, "unknown task 'dïgits.évén'"),
    (["remove-task", "..", "--no-tracking"], 3, "unknown task '..' in store"),
    (
        ["connections", "--plot", "no/such/dir/r.png"],
        11,
        "cannot write the plot to 'no/such/dir/r.png'",
    ),
]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    ON_DIGITS_STORE,
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_bad_input_on_a_store(
    store_copy: Path, run_cli, args, code, message, monkeypatch, tmp_path
) -> None:
    monkeypatch.chdir(tmp_path)
    before = fingerprint(store_copy)
    result = run_cli(*args, "--store", store_copy, expect=code)
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert fingerprint(store_copy) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_gpu(store_copy: Path, run_cli) -> None:
    result = run_cli(
        "add-task",
        "digits.prime",
        "--store",
        store_copy,
        "--device",
        "cuda",
        "--no-tracking",
        expect=11,
    )
    assert "no CUDA GPU is available; use --device cpu" in result.stderr


BROKEN_PLUGINS = [
    (
        "labels-out-of-range",
        7,
        "labels in the first batch range 0..7, but the task has 2 outputs (valid labels: 0..1)",
    ),
    ("labels-shape", 7, "labels must be one class index per image, got shape (64, 2)"),
    ("factory-raises", 7, "its dataset factory failed: RuntimeError: the disk is on fire"),
    ("empty", 7, "the train split is empty"),
    ("nan-later", 7, "train split: the first batch has NaN or infinite pixel values"),
    ("nan-first", 7, "the first batch has NaN or infinite pixel values"),
]


@pytest.mark.parametrize(("problem", "code", "message"), BROKEN_PLUGINS)
def test_broken_task_data_leaves_store_unchanged(
    store_copy: Path, run_cli, write_plugin, problem, code, message
) -> None:
    plugin = write_plugin(f"broken_{problem.replace('-', '_')}", toy_plugin(problem))
    before = fingerprint(store_copy)
    result = run_cli(
        "add-task", "toy.bright", "-p", plugin, "--store", store_copy, *NO_TRACK, expect=code
    )
    assert message in result.stderr
    assert fingerprint(store_copy) == before


def test_failed_first_task_leaves_no_store_behind(tmp_path: Path, run_cli, write_plugin) -> None:
    plugin = write_plugin("broken_first", toy_plugin("labels-out-of-range"))
    store = tmp_path / "never"
    result = run_cli("add-task", "toy.bright", "-p", plugin, "--store", store, *NO_TRACK, expect=7)
    assert "removed the store created at" in result.stderr
    assert not store.exists()


def test_path_that_is_not_a_store(tmp_path: Path, run_cli) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    for args in (
        ["status"],
        ["history"],
        ["eval"],
        ["remove-task", "digits.even", "--no-tracking"],
    ):
        result = run_cli(*args, "--store", tmp_path, expect=5)
        assert "is not a dmt store" in result.stderr
    result = run_cli("add-task", "digits.even", "--store", tmp_path, "--no-tracking", expect=5)
    assert "exists and is not an empty directory" in result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (
            ["--input", "3x0x32"],
            11,
            "invalid input spec 3x0x32: height and width must be 4 to 4096",
        ),
        (["--input", "abc"], 11, "invalid input spec 'abc': expected CxHxW"),
        (["--input", "99x8x8"], 11, "channels must be 1 to 16"),
        (["--backbone", "resnet19"], 3, "unknown backbone 'resnet19'. Did you mean 'resnet18'"),
        (["--connection", "cross"], 3, "unknown connection kind 'cross'"),
        (
            ["--connection-option", "alpha=1"],
            11,
            "connection kind 'ttc' has no option 'alpha'; valid: head_fusion, init_alpha, lr_mult",
        ),
        (["--connection-option", "init_alpha=2"], 11, "ttc init_alpha must be in (0, 1), got 2"),
        (
            ["--connection-option", "init_alpha=abc"],
            11,
            "option 'init_alpha' must be a finite number, got 'abc'",
        ),
        (["--connection-option", "lr_mult=-5"], 11, "ttc lr_mult must be positive, got -5"),
        (
            ["--connection", "nddr", "--connection-option", "relu=no"],
            11,
            "option 'relu' must be true or false, got 'no'",
        ),
        (
            ["--connection", "nddr", "--connection-option", "init=he"],
            11,
            "nddr init 'he' is unknown; valid: diagonal, xavier",
        ),
        (["--backbone-option", "fc_width=0"], 11, "dmt-cnn fc_width must be positive, got 0"),
        (
            ["--backbone", "resnet18", "--backbone-option", "weights_file=missing.safetensors"],
            11,
            "must be an existing .safetensors file",
        ),
    ],
)
def test_bad_init_options(tmp_path: Path, run_cli, args, code, message) -> None:
    store = tmp_path / "s"
    result = run_cli("init", "--store", store, *args, expect=code)
    assert message in result.stderr
    assert not (store / "CURRENT").exists()


def test_ctrl_c_during_training_marks_run_killed(
    store_copy: Path, run_cli, write_plugin, mlflow_template
) -> None:
    import shutil

    shutil.copy(mlflow_template, store_copy / "mlflow.db")
    plugin = write_plugin(
        "interrupter",
        "from dmtcore import hookimpl\n\n@hookimpl\ndef dmt_epoch_end(run, report):\n    raise KeyboardInterrupt\n",
    )
    before = {k: v for k, v in fingerprint(store_copy).items() if k != "mlflow.db"}
    result = run_cli(
        "add-task", "digits.prime", "-p", plugin, "--store", store_copy, "--epochs", "2", expect=130
    )
    assert "Interrupted: nothing was committed" in result.stderr
    assert {k: v for k, v in fingerprint(store_copy).items() if k != "mlflow.db"} == before

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{store_copy / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("store").experiment_id])
    assert [r.info.status for r in runs] == ["KILLED"]


def test_tracking_server_down_fails_fast(store_copy: Path, run_cli) -> None:
    before = fingerprint(store_copy)
    started = time.perf_counter()
    result = run_cli(
        "add-task",
        "digits.prime",
        "--store",
        store_copy,
        "--tracking-uri",
        "http://127.0.0.1:9",
        expect=10,
    )
    assert time.perf_counter() - started < 60
    assert "http://127.0.0.1:9" in result.stderr and "--no-tracking" in result.stderr
    assert fingerprint(store_copy) == before


def test_second_writer_is_refused_naming_the_holder(store_copy: Path, run_cli) -> None:
    from dmtcore.store.directory import Store

    before = fingerprint(store_copy)
    with Store.open(store_copy).writer("add-task something"):
        result = run_cli(
            "add-task", "digits.prime", "--store", store_copy, "--no-tracking", expect=6
        )
        assert f"locked by PID {os.getpid()} running 'add-task something' since" in result.stderr
        assert run_cli("status", "--store", store_copy).exit_code == 0  # readers never block
    assert fingerprint(store_copy) == before


def test_damaged_weight_file_is_refused(store_copy: Path, run_cli, tmp_path: Path) -> None:
    blob = next((store_copy / "blobs").iterdir())
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    import numpy as np

    np.save(tmp_path / "x.npy", np.zeros((8, 8), np.float32))
    result = run_cli("predict", tmp_path / "x.npy", "--store", store_copy, expect=5)
    assert blob.name in result.stderr and "sha256 does not match" in result.stderr


def test_not_an_image(store_copy: Path, run_cli, tmp_path: Path) -> None:
    (tmp_path / "fake.png").write_text("not a png")
    result = run_cli("predict", tmp_path / "fake.png", "--store", store_copy, expect=7)
    assert "is not a readable image" in result.stderr


def test_empty_npy_and_empty_store(store_copy: Path, run_cli, tmp_path: Path) -> None:
    import numpy as np

    np.save(tmp_path / "none.npy", np.zeros((0, 1, 8, 8), np.float32))
    assert (
        "holds no images"
        in run_cli("predict", tmp_path / "none.npy", "--store", store_copy, expect=7).stderr
    )
    empty = tmp_path / "empty"
    run_cli("init", "--store", empty)
    assert "has no tasks yet" in run_cli("connections", "--store", empty, expect=1).stderr
    assert (
        "has no tasks yet"
        in run_cli("predict", tmp_path / "none.npy", "--store", empty, expect=1).stderr
    )


def test_hand_edited_manifest_is_refused_naming_the_file(store_copy: Path, run_cli) -> None:
    import json

    path = store_copy / "versions" / "v000003.json"
    manifest = json.loads(path.read_text())
    del manifest["connection"]["options"]
    path.write_text(json.dumps(manifest))
    for args in (["status"], ["eval"], ["add-task", "digits.prime", "--no-tracking"]):
        result = run_cli(*args, "--store", store_copy, expect=5)
        assert "v000003.json: connection.options is missing" in result.stderr


def test_a_frozen_task_that_changed_is_never_committed(
    store_copy: Path, run_cli, write_plugin
) -> None:
    """The commit-time guard: if anything touched an old task's weights, nothing is written."""
    plugin = write_plugin(
        "tamper",
        "import torch\nfrom dmtcore import hookimpl\n\n"
        "@hookimpl\ndef dmt_epoch_end(run, report):\n"
        "    import gc\n"
        "    from dmtcore.model.multitask import MultiTaskModel\n"
        # Every model training digits.prime: earlier in-process tests may leave others alive.
        "    for model in [o for o in gc.get_objects() if isinstance(o, MultiTaskModel)]:\n"
        "        if 'digits.prime' in model.tasks:\n"
        "            with torch.no_grad():\n"
        "                model.part('digits.class', 'head')[0].bias.add_(1.0)\n",
    )
    before = fingerprint(store_copy)
    result = run_cli(
        "add-task", "digits.prime", "-p", plugin, "--store", store_copy, *NO_TRACK, expect=5
    )
    assert "refusing to commit: the frozen task 'digits.class' changed" in result.stderr
    assert fingerprint(store_copy) == before


def test_batch_size_leaving_a_single_sample_trains(tmp_path: Path, run_cli) -> None:
    # digits has 1437 training images: batches of 4 leave one image over, which BatchNorm
    # cannot train on; the last partial batch is dropped.
    run_cli(
        "add-task",
        "digits.even",
        "--store",
        tmp_path / "s",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--no-tracking",
    )


@pytest.mark.parametrize(
    ("make", "message"),
    [
        ("npy-channels", "images have 5 channels; the store takes 1"),
        ("truncated-png", "is not a readable image"),
        ("bomb-png", "above the limit of 50000000"),
        ("npy-object", "is not a readable .npy array"),
    ],
)
def test_bad_files_to_predict(
    store_copy: Path, run_cli, tmp_path: Path, make: str, message: str
) -> None:
    import numpy as np
    from PIL import Image

    path = tmp_path / ("input.npy" if make.startswith("npy") else "input.png")
    if make == "npy-channels":
        np.save(path, np.zeros((2, 5, 8, 8), np.float32))
    elif make == "npy-object":
        np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    elif make == "truncated-png":
        Image.new("L", (8, 8), 128).save(path)
        path.write_bytes(path.read_bytes()[:30])
    else:  # 8000 × 8000 = 64 Mpx of zeros: a few KB compressed
        Image.new("1", (8000, 8000)).save(path)
    before = fingerprint(store_copy)
    result = run_cli("predict", path, "--store", store_copy, expect=7)
    assert message in result.stderr
    assert fingerprint(store_copy) == before


@pytest.mark.parametrize("failing_write", [1, 2, 4])
def test_full_disk_leaves_the_store_as_it_was(
    store_copy: Path, run_cli, monkeypatch, failing_write: int
) -> None:
    """The n-th file write of add-task fails with ENOSPC: blobs, then the manifest."""
    import errno
    import os

    real_fsync, calls = os.fsync, []

    def fsync(fd: int) -> None:
        calls.append(fd)
        if len(calls) == failing_write:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    before = fingerprint(store_copy)
    result = run_cli("add-task", "digits.prime", "--store", store_copy, *NO_TRACK, expect=5)
    assert "No space left on device; the store is unchanged" in result.stderr
    assert fingerprint(store_copy) == before


def test_a_failed_sync_after_the_commit_says_it_committed(
    store_copy: Path, run_cli, monkeypatch
) -> None:
    """Once CURRENT is replaced the version stands: 'the store is unchanged' would be false."""
    import errno

    import dmtcore.store.directory

    real_fsync_dir = dmtcore.store.directory._fsync_dir

    def fsync_dir(path: Path) -> None:
        if Path(path) == store_copy:
            raise OSError(errno.EIO, "Input/output error")
        real_fsync_dir(path)

    monkeypatch.setattr(dmtcore.store.directory, "_fsync_dir", fsync_dir)
    result = run_cli("rollback", "2", "--store", store_copy, expect=5)
    assert "committed, but syncing" in result.stderr and "Input/output error" in result.stderr
    assert (store_copy / "CURRENT").read_text() == "4\n"


def test_unwritable_store(store_copy: Path, run_cli, monkeypatch) -> None:
    import os

    real_open = os.open

    def deny_lock(path, flags, *args):
        if str(path).endswith("writer.lock"):
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", deny_lock)
    before = fingerprint(store_copy)
    result = run_cli("add-task", "digits.prime", "--store", store_copy, *NO_TRACK, expect=5)
    assert "cannot write to store" in result.stderr and "Permission denied" in result.stderr
    assert fingerprint(store_copy) == before
