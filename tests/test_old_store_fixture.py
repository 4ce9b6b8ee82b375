"""Stores written by an earlier release still open, verify and predict exactly as they did.

`tests/fixtures/stores_format1/` holds two small stores (connections `ttc` and `nddr`, two digits
tasks each) written by the release at commit ef3d9e7, with the JSON that release printed for
`predict`, `status` and `verify --all` (its README.txt has the commands). Each test works on a
copy in tmp_path: the fixture is the old release's output and is never written.

Probabilities are compared for exact equality where the float kernels are the recording's:
torch's AVX512 kernels and two threads (the tests set them). CPU float results depend on both: one
thread, or the AVX2 or SSE kernels of another CPU, move some probabilities by up to 5.4e-7 (measured
with ATEN_CPU_CAPABILITY and ONEDNN_MAX_CPU_ISA), so elsewhere they must agree within 1e-6 and
the predicted classes exactly. That add-task leaves the old tasks' outputs bit-identical does not
depend on the machine: it compares predictions of the same copy before and after, exactly.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import fingerprint

FIXTURE = Path(__file__).parent / "fixtures" / "stores_format1"
KINDS = ("ttc", "nddr")
RECORDED_THREADS = 2
RECORDED_CPU = "AVX512"
OLD_TASKS = ("digits.class", "digits.even")


def recorded(kind: str, command: str) -> dict[str, Any]:
    return json.loads((FIXTURE / f"{kind}.{command}.json").read_text())


def tree(path: Path) -> list[str]:
    """Every entry under `path`, directories included (fingerprint lists only files)."""
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def assert_still_reported(old: Any, new: Any, where: str = "") -> None:
    """Everything the old release printed is printed the same now; new keys may be added."""
    if isinstance(old, dict):
        assert isinstance(new, dict), f"{where}: was an object, now {new!r}"
        for key, value in old.items():
            assert key in new, f"{where}.{key} is no longer reported"
            assert_still_reported(value, new[key], f"{where}.{key}")
    elif isinstance(old, list):
        assert isinstance(new, list) and len(new) == len(old), f"{where}: was {old!r}, now {new!r}"
        for index, (a, b) in enumerate(zip(old, new, strict=True)):
            assert_still_reported(a, b, f"{where}[{index}]")
    else:
        assert new == old and type(new) is type(old), f"{where}: was {old!r}, now {new!r}"


def recorded_kernels() -> bool:
    """Whether torch computes with the float kernels the fixture was recorded with."""
    import torch

    forced = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
    return torch.backends.cpu.get_cpu_capability() == RECORDED_CPU and not any(
        os.environ.get(name) for name in forced
    )


def assert_probabilities_as_recorded(old: list, new: list, task: str) -> None:
    if recorded_kernels():
        assert new == old, f"{task}: probabilities differ from the recorded ones"
    else:
        gap = float(np.max(np.abs(np.array(new) - np.array(old))))
        assert gap <= 1e-6, f"{task}: probabilities differ from the recorded ones by {gap:.3g}"


@pytest.fixture(autouse=True)
def recorded_threads() -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(RECORDED_THREADS)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", autouse=True)
def fixture_untouched() -> Iterator[None]:
    """The checked-in fixture is byte-identical after the whole module ran."""
    before = fingerprint(FIXTURE)
    yield
    assert fingerprint(FIXTURE) == before


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the fixture folder as the working directory, so that the store and input paths
    printed in the JSON (`ttc`, `inputs.npy[0]`) are the recorded ones."""
    work = tmp_path / "work"
    shutil.copytree(FIXTURE, work)
    monkeypatch.chdir(work)
    return work


def predict(run_cli, kind: str, *tasks: str) -> dict[str, Any]:
    options = [arg for task in tasks for arg in ("--task", task)]
    result = run_cli(
        "predict", "inputs.npy", "--store", kind, "--device", "cpu", *options, "--json"
    )
    return json.loads(result.stdout)


@pytest.mark.parametrize("kind", KINDS)
def test_old_store_reads_as_recorded_and_stays_byte_identical(kind, workdir, run_cli):
    store = workdir / kind
    files, entries = fingerprint(store), tree(store)
    assert files == fingerprint(FIXTURE / kind)

    status = json.loads(run_cli("status", "--store", kind, "--json").stdout)
    assert_still_reported(recorded(kind, "status"), status, "status")
    verify = json.loads(run_cli("verify", "--all", "--store", kind, "--json").stdout)
    assert verify["ok"] is True and verify["problems"] == []
    assert_still_reported(recorded(kind, "verify"), verify, "verify")

    old, new = recorded(kind, "predict"), predict(run_cli, kind)
    for task in OLD_TASKS:
        assert_probabilities_as_recorded(
            old["tasks"][task].pop("probabilities"), new["tasks"][task].pop("probabilities"), task
        )
    assert_still_reported(old, new, "predict")

    assert fingerprint(store) == files
    assert tree(store) == entries


@pytest.mark.parametrize("kind", KINDS)
def test_add_task_to_old_store_keeps_old_predictions_bit_identical(kind, workdir, run_cli):
    store = workdir / kind
    old_files = fingerprint(store)
    before = predict(run_cli, kind)["tasks"]
    run_cli(
        "add-task", "digits.large", "--store", kind, "--epochs", "1", "--seed", "7",
        "--device", "cpu", "--no-tracking",
    )  # fmt: skip

    status = json.loads(run_cli("status", "--store", kind, "--json").stdout)
    assert status["version"] == 4
    assert [t["name"] for t in status["tasks"]] == [*OLD_TASKS, "digits.large"]
    assert status["tasks"][2]["sources"] == [*OLD_TASKS, "digits.large"]
    verify = json.loads(run_cli("verify", "--all", "--store", kind, "--json").stdout)
    assert verify["ok"] is True and verify["versions"] == [1, 2, 3, 4]

    recorded_tasks = recorded(kind, "predict")["tasks"]
    after = predict(run_cli, kind)["tasks"]
    assert set(after) == {*OLD_TASKS, "digits.large"}
    for task in OLD_TASKS:
        assert after[task] == before[task], f"{task}'s predictions changed after add-task"
        assert after[task]["prediction"] == recorded_tasks[task]["prediction"]
        assert_probabilities_as_recorded(
            recorded_tasks[task]["probabilities"], after[task]["probabilities"], task
        )

    new_files = fingerprint(store)
    unchanged = {name: new_files.get(name) for name in old_files if name != "CURRENT"}
    assert unchanged == {name: sha for name, sha in old_files.items() if name != "CURRENT"}
