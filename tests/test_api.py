"""The Python API (`dmtcore.open_store`): the same records the commands print with --json,
old tasks' outputs unchanged by an add-task, bad options refused by name, and the import
paths plugins and registered models used before the sub-package layout still working."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

import dmtcore
from dmtcore.errors import InvalidValueError

from conftest import fingerprint


@pytest.fixture
def digits_npy(tmp_path: Path) -> Path:
    from sklearn.datasets import load_digits

    path = tmp_path / "digits.npy"
    np.save(path, (load_digits().images[:6] / 16.0).astype(np.float32)[:, None])
    return path


def test_add_task_gives_the_command_record_and_keeps_old_outputs(
    store_copy: Path, digits_store: Path, tmp_path: Path, run_cli, digits_npy: Path
) -> None:
    store = dmtcore.open_store(store_copy, tracking=False)
    before = store.predict([digits_npy])
    record = store.add_task("digits.prime", epochs=1)
    after = store.predict([digits_npy], tasks=["digits.class", "digits.even"])
    assert after["tasks"] == before["tasks"]  # the frozen tasks answer exactly as before

    other = tmp_path / "other"
    shutil.copytree(digits_store, other)
    shown = json.loads(
        run_cli(
            "add-task", "digits.prime", "--store", other, "--no-tracking", "--epochs", "1", "--json"
        ).stdout
    )
    assert record.keys() == shown.keys()
    same = ("version", "task", "metrics", "best_epoch", "init_from", "tracking_uri")
    assert {k: record[k] for k in same} == {k: shown[k] for k in same}
    assert record["metrics"]["balanced_accuracy"] > 0.6  # above chance (0.5)


def test_remove_evaluate_and_connections(store_copy: Path) -> None:
    store = dmtcore.open_store(store_copy, tracking=False)
    shown = store.connections()
    assert shown["tasks"] == ["digits.class", "digits.even"] and shown["stages"]
    removed = store.remove_task("digits.class", epochs=1)
    assert removed["removed"] == "digits.class" and removed["version"] == 4
    assert set(removed["report"]) == {"digits.even"}
    metrics = store.evaluate()["metrics"]
    assert set(metrics) == {"digits.even"}
    assert metrics["digits.even"]["balanced_accuracy"] > 0.6


def test_an_unknown_option_is_refused_by_name_and_changes_nothing(store_copy: Path) -> None:
    before = fingerprint(store_copy)
    store = dmtcore.open_store(store_copy, tracking=False)
    with pytest.raises(InvalidValueError, match=r"unknown option 'epoch'; valid: .*\bepochs\b"):
        store.add_task("digits.prime", epoch=1)
    with pytest.raises(InvalidValueError, match="give one or more distinct tasks"):
        store.add_task(["digits.prime", "digits.prime"])
    assert fingerprint(store_copy) == before


def test_old_import_paths_give_the_same_modules() -> None:
    import dmtcore.hooks.host
    import dmtcore.inference.predict
    import dmtcore.tasks.spec

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import dmtcore.model.backbones.resnet as new_resnet
        from dmtcore.backbones import resnet as old_resnet
        from dmtcore.plugins import create_plugin_host  # what registered pyfunc models import
        from dmtcore.predict import task_outputs
        from dmtcore.taskspec import TaskSpec

    assert create_plugin_host is dmtcore.hooks.host.create_plugin_host
    assert task_outputs is dmtcore.inference.predict.task_outputs
    assert TaskSpec is dmtcore.tasks.spec.TaskSpec is dmtcore.TaskSpec
    assert old_resnet is new_resnet
    assert any("dmtcore.taskspec moved to dmtcore.tasks.spec" in str(w.message) for w in caught)
    from dmtcore import HeadSpec, Kinds, Registry, TaskData, hookimpl  # the plugin API

    assert Registry is Kinds and HeadSpec and TaskData and hookimpl
    assert dmtcore.open_store is dmtcore.api.open_store


@pytest.mark.parametrize("argument", ["kinds", "registry"])
def test_registration_hooks_take_kinds_under_either_name(write_plugin, argument: str) -> None:
    from dmtcore.hooks.host import create_plugin_host

    plugin = write_plugin(
        f"named_{argument}",
        "from dmtcore import TaskSpec, hookimpl\n\n"
        f"@hookimpl\ndef dmt_register_tasks({argument}):\n"
        f"    {argument}.add_task(TaskSpec(name='mine.{argument}', description='d',\n"
        "        input_shape=(1, 8, 8), output='binary', num_outputs=2,\n"
        "        datasets=lambda request: None))\n",
    )
    host = create_plugin_host([str(plugin)], autoload=False)
    assert host.kinds.owner("task", f"mine.{argument}") == f"named_{argument}"


def test_status_history_verify_and_rollback(store_copy: Path, run_cli) -> None:
    store = dmtcore.open_store(store_copy, tracking=False)
    assert store.status() == json.loads(run_cli("status", "--store", store_copy, "--json").stdout)
    assert [e["version"] for e in store.history()] == [3, 2, 1]
    assert store.verify(every_version=True)["ok"]
    rolled = store.rollback(2)
    assert (rolled["version"], rolled["rolled_back_to"], rolled["published"]) == (4, 2, None)
    assert "--no-tracking" in rolled["not_published"]
    assert [t["name"] for t in store.status()["tasks"]] == ["digits.class"]


def test_init_refuses_a_bad_input_spec_and_writes_nothing(tmp_path: Path) -> None:
    store = dmtcore.open_store(tmp_path / "new", tracking=False)
    with pytest.raises(InvalidValueError, match="1x8"):
        store.init("1x8")
    assert not (tmp_path / "new").exists()
    assert store.init("1x8x8", connection="nddr")["manifest"]["connection"]["name"] == "nddr"
