"""Plugins load from entry points, `-p` modules and files; failures name the plugin."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from dmtcore.errors import ConflictError, PluginError
from dmtcore.hooks.host import create_plugin_host

from conftest import toy_plugin


@pytest.fixture
def installed_plugin(tmp_path: Path, monkeypatch):
    """A distribution 'toyep' 1.2.3 with an entry point in the `dmt` group, on sys.path."""

    def install(source: str, module: str = "toyep_plugin") -> Path:
        site = tmp_path / "site"
        dist = site / "toyep-1.2.3.dist-info"
        dist.mkdir(parents=True)
        (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toyep\nVersion: 1.2.3\n")
        (dist / "entry_points.txt").write_text(f"[dmt]\ntoyep = {module}\n")
        (site / f"{module}.py").write_text(source)
        monkeypatch.syspath_prepend(str(site))
        return site

    yield install
    sys.modules.pop("toyep_plugin", None)


def test_plugin_file_with_p_trains(tmp_path: Path, run_cli, write_plugin) -> None:
    plugin = write_plugin("bright", toy_plugin())
    store = tmp_path / "store"
    out = run_cli(
        "add-task",
        "toy.bright",
        "-p",
        plugin,
        "--store",
        store,
        "--epochs",
        "3",
        "--no-tracking",
        "--json",
    )
    assert json.loads(out.stdout)["metrics"]["balanced_accuracy"] > 0.7
    status = json.loads(run_cli("status", "--store", store, "--json").stdout)
    assert status["tasks"][0]["plugin"] == "bright"
    # eval needs the plugin's data: without it, the message names the plugin
    failed = run_cli("eval", "--store", store, expect=9)
    assert "plugin 'bright'" in failed.stderr and "-p" in failed.stderr
    # predict does not need it
    run_cli("predict", str(make_npy(tmp_path)), "--store", store)


def make_npy(tmp_path: Path) -> Path:
    import numpy as np

    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32))
    return path


def test_installed_entry_point_plugin(tmp_path: Path, run_cli, installed_plugin) -> None:
    installed_plugin(toy_plugin(task="toyep.bright"))
    plugins = {p["name"]: p for p in json.loads(run_cli("plugins", "--json").stdout)}
    assert plugins["toyep"]["origin"] == "entry point" and plugins["toyep"]["version"] == "1.2.3"
    assert "task:toyep.bright" in plugins["toyep"]["registered"]
    store = tmp_path / "store"
    run_cli("add-task", "toyep.bright", "--store", store, "--epochs", "1", "--no-tracking")
    assert (
        json.loads(run_cli("status", "--store", store, "--json").stdout)["tasks"][0]["plugin"]
        == "toyep"
    )
    tasks = json.loads(run_cli("tasks", "--no-plugin-autoload", "--json").stdout)
    assert not any(t["name"].startswith(("toyep.", "digits.")) for t in tasks)


def test_builtin_task_plugins_are_entry_points_and_can_be_loaded_by_name() -> None:
    bare = create_plugin_host(autoload=False)
    assert not bare.kinds.tasks and "ttc" in bare.kinds.connections
    explicit = create_plugin_host(["dmt_plugins.digits"], autoload=False)
    assert "digits.class" in explicit.kinds.tasks
    blocked = create_plugin_host(["no:shapes"])
    assert "digits.class" in blocked.kinds.tasks and "shapes.kind" not in blocked.kinds.tasks


def test_env_disables_autoload(monkeypatch) -> None:
    monkeypatch.setenv("DMT_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert "digits.class" not in create_plugin_host().kinds.tasks
    monkeypatch.setenv("DMT_PLUGINS", "dmt_plugins.digits")
    assert "digits.class" in create_plugin_host().kinds.tasks


def test_plugin_that_fails_to_import_is_named(write_plugin, run_cli) -> None:
    broken = write_plugin("broken", "import not_a_module_anywhere\n")
    with pytest.raises(
        PluginError, match=r"plugin 'broken' .* failed to import: ModuleNotFoundError"
    ) as info:
        create_plugin_host([str(broken)])
    assert isinstance(info.value.__cause__, ModuleNotFoundError)  # original traceback kept
    result = run_cli("tasks", "-p", broken, expect=9)
    assert "plugin 'broken'" in result.stderr and "Traceback" not in result.stderr


def test_entry_point_that_fails_to_import_is_named(installed_plugin) -> None:
    installed_plugin("raise RuntimeError('boom at import')\n")
    with pytest.raises(
        PluginError,
        match=r"plugin 'toyep' \(entry point 'toyep_plugin'\) failed to import: RuntimeError: boom",
    ):
        create_plugin_host()


def test_duplicate_task_names_both_plugins(write_plugin) -> None:
    first = write_plugin("first", toy_plugin(task="same.task"))
    second = write_plugin("second", toy_plugin(task="same.task"))
    with pytest.raises(
        ConflictError,
        match=r"task 'same.task' is registered twice: by plugin 'first' and by plugin 'second'",
    ):
        create_plugin_host([str(first), str(second)], autoload=False)


def test_plugin_with_invalid_taskspec_is_named(write_plugin) -> None:
    bad = write_plugin("badspec", toy_plugin(task="Bad Name"))
    with pytest.raises(PluginError, match=r"plugin 'badspec'.*invalid task name 'Bad Name'"):
        create_plugin_host([str(bad)], autoload=False)


def test_missing_plugin_file(run_cli, tmp_path: Path) -> None:
    result = run_cli("tasks", "-p", tmp_path / "nope.py", expect=9)
    assert "nope.py" in result.stderr and "does not exist" in result.stderr


def test_every_hook_is_documented_and_used() -> None:
    import inspect

    from dmtcore.hooks import specs as hookspecs

    readme = (Path(__file__).parents[1] / "docs" / "plugins.md").read_text()
    specs = [
        name
        for name, f in inspect.getmembers(hookspecs, inspect.isfunction)
        if name.startswith("dmt_")
    ]
    assert len(specs) == 9
    for name in specs:
        assert inspect.getdoc(getattr(hookspecs, name)), f"{name} has no docstring"
        assert name in readme, f"{name} is not in docs/plugins.md"
