"""Nothing on a load path unpickles, task names never become paths, and the manifest parser
meets any mutation of a manifest with a clean StoreError."""

from __future__ import annotations

import copy
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dmtcore.errors import StoreError
from dmtcore.store.manifest import validate_manifest


@pytest.fixture
def no_pickle(monkeypatch):
    """Make every way of unpickling fail loudly."""

    def refuse(*args, **kwargs):
        raise AssertionError("something tried to unpickle")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    import torch

    monkeypatch.setattr(torch, "load", refuse)


def test_load_predict_pull_and_serve_without_pickle(
    store_copy: Path, mlflow_template: Path, run_cli, tmp_path: Path, no_pickle, monkeypatch
) -> None:
    shutil.copy(mlflow_template, store_copy / "mlflow.db")
    run_cli("register", "--store", store_copy)  # registering loads the model to validate it
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32))
    predicted = json.loads(
        run_cli("predict", tmp_path / "x.npy", "--store", store_copy, "--json").stdout
    )
    uri = f"sqlite:///{store_copy / 'mlflow.db'}"
    run_cli("pull", "models:/store@current", "--store", tmp_path / "pulled", "--tracking-uri", uri)
    run_cli("verify", "--store", tmp_path / "pulled", "--all")
    import mlflow.pyfunc

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    frame = mlflow.pyfunc.load_model("models:/store@current").predict(np.load(tmp_path / "x.npy"))
    assert list(frame["digits.class"]) == predicted["tasks"]["digits.class"]["prediction"]


@pytest.fixture(scope="module")
def valid_manifest(digits_store: Path) -> dict:
    return json.loads((digits_store / "versions" / "v000003.json").read_text())


def mutate(data, path: list, value):
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return data


def paths_of(data, prefix=()):
    if isinstance(data, dict):
        for key, value in data.items():
            yield (*prefix, key)
            yield from paths_of(value, (*prefix, key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            yield (*prefix, index)
            yield from paths_of(value, (*prefix, index))


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=6,
)


@settings(
    max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None
)
@given(data=st.data(), value=JSON_VALUES)
def test_any_mutated_manifest_is_accepted_or_refused_cleanly(
    valid_manifest: dict, data, value
) -> None:
    paths = list(paths_of(valid_manifest))
    path = data.draw(st.sampled_from(paths))
    mutated = mutate(copy.deepcopy(valid_manifest), list(path), value)
    try:
        validate_manifest(mutated, "v000003.json")
    except StoreError as exc:
        assert str(exc).startswith("v000003.json")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_manifest_files_are_refused_naming_the_file(tmp_path_factory, blob: bytes) -> None:
    from dmtcore.store.directory import Store

    root = tmp_path_factory.mktemp("garbage")
    for sub in ("versions", "blobs", "tmp"):
        (root / sub).mkdir()
    (root / "CURRENT").write_text("1\n")
    (root / "versions" / "v000001.json").write_bytes(blob)
    with pytest.raises(StoreError, match=r"v000001\.json"):
        Store.open(root).manifest()
