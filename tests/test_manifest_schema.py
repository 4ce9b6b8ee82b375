"""A damaged store is refused cleanly by every command that reads it: one line `Error: ...`
naming the file (and the field), exit 5, the store byte-identical. The manifest schema is
checked on load and by `dmt verify`, which reports every malformed field."""

from __future__ import annotations

import copy
import errno
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dmtcore.store.manifest import manifest_problems

from conftest import fingerprint

Path_ = tuple[str | int, ...]
Mutation = tuple[str, Path_, Any]  # (kind, path, new value); kind "delete" ignores the value

# Fields whose content is free (written for people or tracking) or whose entries are optional:
# a mutation inside them may be valid, so the fuzz leaves them alone.
FREE = {
    ("operation", "settings"),
    ("operation", "feature_cache"),
    ("operation", "report"),
    ("backbone", "options"),
    ("connection", "options"),
}
FREE_TASK_FIELDS = {"description", "recipe"}
# Every field a command reads; deleting one must be refused.
REQUIRED = {
    "format", "name", "store_id", "model_name", "version", "parent", "created", "operation",
    "input_spec", "backbone", "connection", "next_slot", "tasks", "slot", "plugin", "sources",
    "native_input_shape", "output", "kind", "size", "head", "hidden", "dropout", "loss",
    "metrics", "primary_metric", "class_names", "weights", "column", "connections", "sha256",
    "relations", "options",
}  # fmt: skip


def paths_of(data: Any, prefix: Path_ = ()) -> Iterator[Path_]:
    if isinstance(data, dict):
        items: Any = data.items()
    elif isinstance(data, list):
        items = enumerate(data)
    else:
        return
    for key, value in items:
        yield (*prefix, key)
        yield from paths_of(value, (*prefix, key))


def is_free(path: Path_) -> bool:
    if any(path[:n] in FREE for n in range(1, len(path) + 1)):
        return True
    return len(path) >= 3 and path[0] == "tasks" and path[2] in FREE_TASK_FIELDS


def get(data: Any, path: Path_) -> Any:
    for key in path:
        data = data[key]
    return data


def wrong_type(value: Any) -> Any:
    """A value of another JSON type, never null (null is valid where a field is nullable)."""
    if isinstance(value, str):
        return 12345
    if isinstance(value, bool | int | float):
        return "12"
    if isinstance(value, list):
        return {"a": 1}
    if isinstance(value, dict):
        return ["a"]
    return [[]]


def out_of_range(manifest: dict[str, Any]) -> list[Mutation]:
    """Values of the right type that break a range or a rule between fields."""
    tasks = manifest["tasks"]
    nan = math.nan
    cases: list[Mutation] = [
        ("set", ("format",), 4),  # 3 is region-level tasks (issue 26)
        ("set", ("name",), ""),
        ("set", ("store_id",), ""),
        ("set", ("model_name",), ""),
        ("set", ("version",), 0),
        ("set", ("version",), 10**6),
        ("set", ("version",), 10**300),
        ("set", ("version",), 2),  # the file is v000003.json
        ("set", ("parent",), manifest["version"]),
        ("set", ("parent",), 0),
        ("set", ("created",), "yesterday"),
        ("set", ("operation", "name"), ""),
        ("set", ("operation", "tasks"), ["Not A Task"]),
        ("set", ("operation",), {"name": "rollback", "tasks": [], "to_version": 3}),
        ("set", ("operation", "best_epoch"), -1),
        ("set", ("operation", "metrics"), {"digits.even": {"accuracy": "high"}}),
        ("set", ("input_spec",), None),
        ("set", ("input_spec",), [1, 8]),
        ("set", ("input_spec", 0), 0),
        ("set", ("input_spec", 0), 17),
        ("set", ("input_spec", 1), 3),
        ("set", ("input_spec", 2), 10**300),
        ("set", ("backbone", "name"), ""),
        ("set", ("connection", "name"), ""),
        ("set", ("next_slot",), len(tasks) - 1),
        ("set", ("next_slot",), -1),
    ]
    for i, task in enumerate(tasks):
        at: Path_ = ("tasks", i)
        if len(tasks) > 1:
            other = tasks[1 - i]
            cases += [
                ("set", (*at, "name"), other["name"]),
                ("set", (*at, "slot"), other["slot"]),
            ]
        cases += [
            ("set", (*at, "name"), "Has Space"),
            ("set", (*at, "slot"), "x0"),
            ("set", (*at, "plugin"), ""),
            ("set", (*at, "sources"), []),
            ("set", (*at, "sources"), [*task["sources"], "digits.nope"]),
            ("set", (*at, "sources"), [*task["sources"], task["name"]]),
            ("set", (*at, "sources"), [s for s in task["sources"] if s != task["name"]]),
            ("set", (*at, "native_input_shape"), [1, 8]),
            ("set", (*at, "native_input_shape", 0), 0),
            ("set", (*at, "output", "kind"), "ranking"),
            ("set", (*at, "output", "size"), 0),
            ("set", (*at, "output", "size"), 3 if task["output"]["kind"] == "binary" else 1),
            ("set", (*at, "head", "kind"), "transformer"),
            ("set", (*at, "head", "kind"), "mlp"),  # with no hidden widths
            ("set", (*at, "head", "hidden"), [0]),
            ("set", (*at, "head", "dropout"), 1.0),
            ("set", (*at, "head", "dropout"), -0.5),
            ("set", (*at, "loss"), "hinge"),
            ("set", (*at, "metrics"), {}),
            ("set", (*at, "metrics", task["primary_metric"]), "x"),
            ("set", (*at, "primary_metric"), "nope"),
            ("set", (*at, "class_names"), ["only one"]),
            ("set", (*at, "class_names", 0), ""),
            ("set", (*at, "weights", "head", "sha256"), "0" * 63),
            ("set", (*at, "weights", "column", "sha256"), "G" * 64),
            ("set", (*at, "weights", "connections"), {}),
            ("set", (*at, "relations", 0), {"digits.nope": 0.5}),
            ("set", (*at, "relations", 0, task["name"]), nan),
            ("set", (*at, "relations", 0, task["name"]), None),
        ]
    return cases


def mutations(manifest: dict[str, Any]) -> list[Mutation]:
    """Every field deleted and given a wrong type, and the out-of-range table: all invalid."""
    found: list[Mutation] = []
    for path in paths_of(manifest):
        if is_free(path):
            continue
        optional = path == ("operation", "metrics")
        if path[-1] in REQUIRED and not optional and isinstance(get(manifest, path[:-1]), dict):
            found.append(("delete", path, None))
        found.append(("set", path, wrong_type(get(manifest, path))))
    found += out_of_range(manifest)
    found += [("whole", (), value) for value in ([], None, "manifest", 3, {})]
    return found


def apply(manifest: dict[str, Any], mutation: Mutation) -> Any:
    kind, path, value = mutation
    if kind == "whole":
        return value
    mutated = copy.deepcopy(manifest)
    parent = get(mutated, path[:-1])
    if kind == "delete":
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return mutated


def field_path(path: Path_) -> str:
    """The path as the error message writes it, e.g. tasks[1].metrics.accuracy."""
    text = ""
    for key in path:
        if isinstance(key, int):
            text += f"[{key}]"
        elif key.isidentifier():
            text += f".{key}" if text else key
        else:
            text += f"[{key!r}]"
    return text


@pytest.fixture(scope="module")
def manifests(digits_store: Path) -> dict[int, dict[str, Any]]:
    return {
        v: json.loads((digits_store / "versions" / f"v{v:06d}.json").read_text()) for v in (1, 2, 3)
    }


# -- the schema itself -------------------------------------------------------------------------


def test_the_digits_store_is_well_formed(manifests) -> None:
    assert all(manifest_problems(m) == [] for m in manifests.values())


def test_every_field_deleted_mistyped_or_out_of_range_is_refused(manifests) -> None:
    """Exhaustive over the fields of a two-task manifest: every mutation is named."""
    manifest = manifests[3]
    cases = mutations(manifest)
    assert len(cases) > 250
    missed = []
    for mutation in cases:
        problems = manifest_problems(apply(manifest, mutation))
        if mutation[1] == ("version",) and mutation[2] == 2:
            continue  # well-formed; the store refuses it for the file name (tested below)
        if not problems:
            missed.append(mutation)
        elif mutation[0] == "delete":
            assert f"{field_path(mutation[1])} is missing" in problems, (mutation, problems)
    assert not missed, f"{len(missed)} invalid manifests accepted, e.g. {missed[:5]}"


def test_problems_name_the_field_path_and_what_is_valid(manifests) -> None:
    manifest = copy.deepcopy(manifests[3])
    manifest["tasks"][1]["metrics"]["accuracy"] = "x"
    manifest["input_spec"][1] = 2
    del manifest["tasks"][0]["head"]["kind"]
    manifest["created"] = 7
    assert manifest_problems(manifest) == [
        "created must be an ISO 8601 date and time, got 7",
        "input_spec[1] must be an integer from 4 to 4096, got 2",
        "tasks[0].head.kind is missing",
        "tasks[1].metrics.accuracy must be a number, got 'x'",
    ]


# -- every command that reads a store ----------------------------------------------------------

READERS = [
    ["status"],
    ["status", "--json"],
    ["history"],
    ["connections"],
    ["eval", "--batch-size", "512"],
    ["predict", "INPUT"],
    ["verify"],
    ["verify", "--all", "--json"],
    ["rollback", "2"],
    ["add-task", "digits.prime", "--no-tracking", "--epochs", "1"],
    ["add-task", "digits.prime", "--epochs", "1", "--no-register"],
    ["train", "digits.prime", "digits.large", "--no-tracking", "--epochs", "1"],
    ["remove-task", "digits.even", "--no-tracking", "--epochs", "1"],
    ["register"],
]


@pytest.fixture
def predict_input(tmp_path: Path) -> Path:
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(0).random((2, 1, 8, 8), dtype=np.float32))
    return path


def assert_refused(result: Any, file: str) -> None:
    """Exit 5, one line on stderr starting with Error:, the damaged file named."""
    lines = result.stderr.splitlines()
    assert result.exit_code == 5, (result.exit_code, result.stderr, result.exception)
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert file in result.stdout + result.stderr


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_every_reader_refuses_a_damaged_manifest(
    store_copy: Path, run_cli, manifests, predict_input: Path, data
) -> None:
    command = data.draw(st.sampled_from(READERS), label="command")
    # rollback reads the version it goes back to; it may leave a damaged current version.
    version = 2 if command[0] == "rollback" else 3
    mutation = data.draw(st.sampled_from(mutations(manifests[version])), label="mutation")
    if mutation[1] == ("version",) and mutation[2] == 2:
        mutation = ("set", ("version",), 1)
    path = store_copy / "versions" / f"v{version:06d}.json"
    original = path.read_bytes()
    path.write_text(json.dumps(apply(manifests[version], mutation)))
    before = fingerprint(store_copy)
    try:
        args = [str(predict_input) if a == "INPUT" else a for a in command]
        result = run_cli(*args, "--store", store_copy, expect=None)
        assert_refused(result, path.name)
        assert fingerprint(store_copy) == before
    finally:
        path.write_bytes(original)


def test_a_damaged_manifest_never_costs_a_blob(store_copy: Path, run_cli) -> None:
    path = store_copy / "versions" / "v000003.json"
    manifest = json.loads(path.read_text())
    manifest["tasks"][1]["weights"]["head"]["sha256"] = "0" * 63
    path.write_text(json.dumps(manifest))
    before = fingerprint(store_copy)
    result = run_cli("add-task", "digits.prime", "--no-tracking", "--store", store_copy, expect=5)
    assert "v000003.json: tasks[1].weights.head.sha256 must be 64 lowercase hex digits" in (
        result.stderr
    )
    assert fingerprint(store_copy) == before


def test_verify_reports_every_malformed_field(store_copy: Path, run_cli) -> None:
    damaged = {
        2: [("tasks", 0, "primary_metric"), ("created",)],
        3: [("tasks", 1, "metrics", "accuracy"), ("operation", "tasks"), ("next_slot",)],
    }
    for version, paths in damaged.items():
        path = store_copy / "versions" / f"v{version:06d}.json"
        manifest = json.loads(path.read_text())
        for field in paths:
            get(manifest, field[:-1])[field[-1]] = {"bad": True}
        path.write_text(json.dumps(manifest))
    before = fingerprint(store_copy)
    result = run_cli("verify", "--all", "--store", store_copy, expect=5)
    for version, paths in damaged.items():
        for field in paths:
            assert f"v{version:06d}.json: {field_path(field)} must be" in result.stdout
    assert "5 problem(s) found" in result.stderr
    assert fingerprint(store_copy) == before


def test_a_manifest_claiming_another_version_is_refused(store_copy: Path, run_cli) -> None:
    path = store_copy / "versions" / "v000003.json"
    manifest = json.loads(path.read_text())
    manifest["version"], manifest["parent"] = 2, 1
    path.write_text(json.dumps(manifest))
    for args in (["status"], ["verify"]):
        result = run_cli(*args, "--store", store_copy, expect=5)
        assert "v000003.json: version must be 3, got 2" in result.stdout + result.stderr


# -- damaged files and directories -------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("²".encode(), "'²' is not a version number from 1 to 999999"),
        (b"9" * 300, "it is larger than 64 bytes"),
        (b"1234567\n", "'1234567' is not a version number from 1 to 999999"),
        (b"\xff\xfe", "it is not UTF-8 text"),
        (b"", "'' is not a version number"),
        (b"-1", "'-1' is not a version number"),
        (b"0\n", "'0' is not a version number"),
    ],
    ids=["superscript", "300-digits", "7-digits", "not-utf8", "empty", "negative", "zero"],
)
def test_damaged_current_file(store_copy: Path, run_cli, content: bytes, message: str) -> None:
    (store_copy / "CURRENT").write_bytes(content)
    before = fingerprint(store_copy)
    for args in (["status"], ["history"], ["rollback", "2"], ["eval"], ["verify"]):
        result = run_cli(*args, "--store", store_copy, expect=None)
        assert_refused(result, "CURRENT")
        assert message in result.stdout + result.stderr
    assert fingerprint(store_copy) == before


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "its JSON is nested too deeply"),
        (b'{"format": 1, "name": "\xff"}', "it is not UTF-8 text"),
        (b'{"format": 1, "version": ' + b"9" * 5000 + b"}", "is damaged"),
    ],
    ids=["nested-100000-deep", "not-utf8", "5000-digit-number"],
)
def test_unreadable_manifest(store_copy: Path, run_cli, content: bytes, message: str) -> None:
    (store_copy / "versions" / "v000003.json").write_bytes(content)
    before = fingerprint(store_copy)
    for args in (["status"], ["history"], ["connections"], ["verify", "--all"]):
        result = run_cli(*args, "--store", store_copy, expect=None)
        assert_refused(result, "v000003.json")
        assert message in result.stdout + result.stderr
    assert fingerprint(store_copy) == before


@pytest.mark.parametrize(
    ("folder", "commands"),
    [
        ("versions", [["status"], ["history"], ["eval"], ["rollback", "2"], ["verify"]]),
        ("blobs", [["eval"], ["predict", "INPUT"], ["rollback", "2"], ["verify"]]),
    ],
)
def test_directory_replaced_by_a_file(
    store_copy: Path, run_cli, predict_input: Path, folder: str, commands: list[list[str]]
) -> None:
    """What an unreadable directory gives, in a way that also holds when tests run as root."""
    import shutil

    shutil.rmtree(store_copy / folder)
    (store_copy / folder).write_text("not a directory")
    before = fingerprint(store_copy)
    for command in commands:
        args = [str(predict_input) if a == "INPUT" else a for a in command]
        result = run_cli(*args, "--store", store_copy, expect=None)
        assert_refused(result, folder)
        assert "Not a directory" in result.stdout + result.stderr
    assert fingerprint(store_copy) == before


def test_unlistable_versions_directory(store_copy: Path, run_cli, monkeypatch) -> None:
    """A versions/ directory the user may not read (simulated: root reads anything)."""
    real_listdir = os.listdir

    def listdir(path: Any = ".") -> list[str]:
        if Path(path).name == "versions":
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_listdir(path)

    monkeypatch.setattr(os, "listdir", listdir)
    for args in (["history"], ["verify"]):
        result = run_cli(*args, "--store", store_copy, expect=None)
        assert_refused(result, "versions")
        assert "Permission denied" in result.stdout + result.stderr


# -- numbers out of range ----------------------------------------------------------------------


@pytest.mark.parametrize("version", ["9" * 300, "0", "4", "1000000"])
def test_rollback_to_a_version_that_does_not_exist(store_copy: Path, run_cli, version: str) -> None:
    before = fingerprint(store_copy)
    result = run_cli("rollback", version, "--store", store_copy, expect=3)
    assert result.stderr.count("\n") == 1
    assert "has no version" in result.stderr and "versions: 1, 2, 3" in result.stderr
    assert len(result.stderr) < 300
    assert fingerprint(store_copy) == before


def test_rollback_away_from_a_damaged_current_version(store_copy: Path, run_cli) -> None:
    """Rolling back reads only the version it goes back to: it is how a store is repaired."""
    (store_copy / "versions" / "v000003.json").write_text("{}")
    run_cli("rollback", "2", "--store", store_copy)
    assert "digits.class" in run_cli("status", "--store", store_copy).stdout


@pytest.mark.parametrize("seed", [str(2**70), str(2**32), "-1"])
def test_seed_out_of_range(store_copy: Path, run_cli, seed: str) -> None:
    before = fingerprint(store_copy)
    for command in (["add-task", "digits.prime", "--no-tracking"], ["eval"]):
        result = run_cli(*command, "--seed", seed, "--store", store_copy, expect=11)
        expected = f"seed must be an integer from 0 to 4294967295 (2**32 - 1), got {seed}"
        assert expected in result.stderr
    assert fingerprint(store_copy) == before


def test_no_space_left_during_rollback(store_copy: Path, run_cli, monkeypatch) -> None:
    """The manifest write of a rollback fails with ENOSPC: nothing changes."""
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", fsync)
    before = fingerprint(store_copy)
    result = run_cli("rollback", "2", "--store", store_copy, expect=5)
    assert "No space left on device" in result.stderr
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert fingerprint(store_copy) == before


def test_no_space_for_the_lock_holder_during_rollback(
    store_copy: Path, run_cli, monkeypatch
) -> None:
    def pwrite(fd: int, data: bytes, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", pwrite)
    before = fingerprint(store_copy)
    result = run_cli("rollback", "2", "--store", store_copy, expect=None)
    assert_refused(result, "store")
    assert "No space left on device" in result.stderr
    assert fingerprint(store_copy) == before
