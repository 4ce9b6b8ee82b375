"""Model Registry semantics: one registry version per model state, rollback publishes, promote
says which numbering it takes, `current` is dmt's, serving errors carry dmt's message, and the
registered model declares its input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import BOTH_BACKENDS, fingerprint


def client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def registry_state(uri: str) -> tuple[list[tuple[int, str]], dict[str, str]]:
    """(registry version, store version) of every version, and the aliases."""
    registry = client(uri)
    versions = sorted(
        (int(v.version), v.tags["dmt.store_version"])
        for v in registry.search_model_versions("name='store'")
    )
    aliases = registry.get_registered_model("store").aliases
    return versions, {alias: str(version) for alias, version in aliases.items()}


@BOTH_BACKENDS
def test_register_twice_keeps_one_registry_version(tracked_store, run_cli) -> None:
    store, uri = tracked_store
    again = run_cli("register", "--store", store, "--json")
    assert json.loads(again.stdout)["version"] == "1" and not json.loads(again.stdout)["created"]
    assert registry_state(uri) == ([(1, "3")], {"current": "1"})
    human = run_cli("register", "--store", store).stdout
    assert "already registered as models:/store/1" in human and "already points at it" in human


@BOTH_BACKENDS
def test_rollback_publishes_and_reuses_the_registry_version_of_its_state(
    tracked_store, run_cli, tmp_path: Path
) -> None:
    store, uri = tracked_store
    first = run_cli("rollback", "2", "--store", store).stdout  # store v4: state never published
    assert "Published as models:/store/2 (alias current)" in first
    assert registry_state(uri) == ([(1, "3"), (2, "4")], {"current": "2"})
    back = run_cli("rollback", "3", "--store", store).stdout  # store v5: the state of v3
    assert "alias current now points at models:/store/1" in back
    assert registry_state(uri) == ([(1, "3"), (2, "4")], {"current": "1"})
    skipped = run_cli("rollback", "2", "--store", store, "--no-tracking").stdout
    assert "Not published: --no-tracking" in skipped and "dmt register" in skipped
    assert registry_state(uri)[1] == {"current": "1"}
    pulled = tmp_path / "pulled"  # conftest: MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false
    run_cli("pull", "models:/store@current", "--store", pulled, "--tracking-uri", uri)
    status = json.loads(run_cli("status", "--store", pulled, "--json").stdout)
    assert [t["name"] for t in status["tasks"]] == ["digits.class", "digits.even"]


@BOTH_BACKENDS
def test_promote_takes_a_registry_version_or_a_store_version(tracked_store, run_cli) -> None:
    store, uri = tracked_store
    run_cli("rollback", "2", "--store", store)  # store v4 = registry 2
    by_store = run_cli("promote", "--store-version", "3", "--alias", "production", "--store", store)
    assert "registry version 1 (store version 3)" in by_store.stdout
    assert registry_state(uri)[1] == {"current": "2", "production": "1"}
    by_registry = run_cli("promote", "2", "--alias", "production", "--store", store).stdout
    assert "now points at registry version 2 (store version 4)" in by_registry
    never = run_cli("promote", "--store-version", "1", "--alias", "x", "--store", store, expect=3)
    assert "store version 1 was never registered in model 'store'" in never.stderr
    assert "store 3 = registry 1, store 4 = registry 2" in never.stderr
    both = run_cli(
        "promote", "1", "--store-version", "3", "--alias", "x", "--store", store, expect=2
    )
    assert "either a registry VERSION" in both.stderr
    assert registry_state(uri)[1] == {"current": "2", "production": "2"}


@pytest.mark.parametrize("alias", ["current", "Current"])
def test_promote_to_the_managed_alias_current_is_refused(tracked_store, run_cli, alias) -> None:
    store, uri = tracked_store
    run_cli("rollback", "2", "--store", store)  # current -> registry 2
    before, registry_before = fingerprint(store), registry_state(uri)
    refused = run_cli("promote", "1", "--alias", alias, "--store", store, expect=11)
    assert refused.stderr.count("\n") == 1 and "is managed by dmt" in refused.stderr
    assert fingerprint(store) == before and registry_state(uri) == registry_before


@BOTH_BACKENDS
def test_serving_an_unknown_task_answers_dmts_one_line(tracked_store, monkeypatch) -> None:
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import scoring_server

    _, uri = tracked_store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    model = mlflow.pyfunc.load_model("models:/store@current")
    batch = np.random.default_rng(0).random((2, 1, 8, 8), dtype=np.float32)
    with pytest.raises(MlflowException) as raised:
        model.predict(batch, params={"tasks": "digits.evn"})
    expected = (
        "unknown task 'digits.evn' in this store. Did you mean 'digits.even' or 'digits.class'?"
    )
    assert raised.value.message.startswith(expected) and "\n" not in raised.value.message
    # What `mlflow models serve` answers: the scoring server's own request handling, in-process.
    body = json.dumps({"inputs": batch.tolist(), "params": {"tasks": "digits.evn"}})
    with pytest.raises(MlflowException) as served:
        scoring_server.invocations(
            body, "application/json", model, model.metadata.get_input_schema()
        )
    answer = json.loads(served.value.serialize_as_json())
    assert served.value.get_http_status_code() == 400
    assert answer["error_code"] == "INVALID_PARAMETER_VALUE"
    assert answer["message"] == raised.value.message and "stack_trace" not in answer


def test_registered_model_declares_its_input_schema(tracked_store, monkeypatch) -> None:
    import mlflow
    from mlflow.types import TensorSpec

    _, uri = tracked_store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    inputs = mlflow.models.get_model_info("models:/store@current").signature.inputs
    assert inputs.is_tensor_spec() and len(inputs.inputs) == 1
    spec = inputs.inputs[0]
    assert isinstance(spec, TensorSpec)
    assert (spec.type, spec.shape) == (np.dtype("float32"), (-1, 1, 8, 8))
    images = client(uri).get_model_version_by_alias("store", "current").tags["dmt.images_model"]
    image_inputs = mlflow.models.get_model_info(images).signature.inputs
    assert (
        image_inputs.input_names() == ["image"] and image_inputs.input_types()[0].name == "string"
    )
