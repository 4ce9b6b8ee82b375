"""Shared fixtures: a migrated MLflow template database, a trained digits store, helpers to
run the CLI in-process and to fingerprint a store byte for byte."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# Everything dmt loads must work without unpickling anything.
os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "false"
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("DMT_STORE", None)
os.environ.pop("DMT_PLUGINS", None)
os.environ.pop("DMT_DISABLE_PLUGIN_AUTOLOAD", None)

FAST = ["--epochs", "2", "--batch-size", "64"]


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated MLflow SQLite database per session (migrations cost seconds); copy it."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow") / "template.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def tracked_store(request, store_copy: Path, mlflow_template: Path, run_cli) -> tuple[Path, str]:
    """The digits store (version 3) with a fresh embedded registry, its current version
    registered once: models:/store/1. Returns the store and its tracking URI.

    Parametrized indirectly with "team" (`@pytest.mark.parametrize("tracked_store", ["sqlite",
    "team"], indirect=True)`), the registry is the session's PostgreSQL-backed, authenticated
    server instead (see `team_registry`): MLFLOW_TRACKING_URI and the user's credentials are
    set for the test, as a team member would set them."""
    if getattr(request, "param", "sqlite") == "team":
        server = request.getfixturevalue("team_registry")
        run_cli("register", "--store", store_copy)
        return store_copy, server.url
    shutil.copy(mlflow_template, store_copy / "mlflow.db")
    run_cli("register", "--store", store_copy)
    return store_copy, f"sqlite:///{store_copy / 'mlflow.db'}"


BOTH_BACKENDS = pytest.mark.parametrize("tracked_store", ["sqlite", "team"], indirect=True)
# Set (CI sets it, see .ci/run) to make the team-server tests fail, not skip, without PostgreSQL.
REQUIRE_TEAM_SERVER = "DMT_REQUIRE_TEAM_SERVER"
TEAM_USER = ("alice", "alice-password-0")


@pytest.fixture(scope="session")
def team_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """PostgreSQL (installed with apt-get on a fresh Debian run as root) and `mlflow server
    --app-name basic-auth` on it with proxied artifacts, started once per session on loopback
    (tests/team_server.py). Without PostgreSQL the tests that use it are skipped with the
    reason, or fail when CI or DMT_REQUIRE_TEAM_SERVER is set."""
    from tests import team_server as team

    folder = tmp_path_factory.mktemp("team")
    try:
        context = team.team_server(folder)
        server = context.__enter__()
    except team.Unavailable as exc:
        if os.environ.get("CI") or os.environ.get(REQUIRE_TEAM_SERVER):
            pytest.fail(f"the team-server tests need PostgreSQL and mlflow server: {exc}")
        pytest.skip(f"no PostgreSQL for the team-server tests: {exc}")
    team.add_user(server, *TEAM_USER)
    try:
        yield server
    finally:
        context.__exit__(None, None, None)


@pytest.fixture
def team_registry(team_server, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """The team server as user alice (MLFLOW_TRACKING_URI and her credentials in the
    environment); every registered model is deleted afterwards, so each test starts from an
    empty registry whose versions count from 1 (the experiments and runs stay)."""
    from tests import team_server as team

    monkeypatch.setenv("MLFLOW_TRACKING_URI", team_server.url)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", TEAM_USER[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", TEAM_USER[1])
    yield team_server
    from mlflow.tracking import MlflowClient

    with team.admin_credentials(team_server):
        admin = MlflowClient(tracking_uri=team_server.url, registry_uri=team_server.url)
        for model in admin.search_registered_models():
            admin.delete_registered_model(model.name)


@pytest.fixture
def new_store_dir(tmp_path: Path, mlflow_template: Path) -> Path:
    """A store path whose embedded tracking database is already migrated."""
    store = tmp_path / "store"
    store.mkdir()
    shutil.copy(mlflow_template, store / "mlflow.db")
    return store


@pytest.fixture(scope="session")
def host():
    from dmtcore.hooks.host import create_plugin_host

    return create_plugin_host()


@pytest.fixture(scope="session")
def digits_store(tmp_path_factory: pytest.TempPathFactory, host) -> Path:
    """A store with digits.class then digits.even (2 epochs each), built once; copy to mutate."""
    from dmtcore.operations import add_task
    from dmtcore.train.loop import TrainSettings

    path = tmp_path_factory.mktemp("digits") / "store"
    for task in ("digits.class", "digits.even"):
        add_task(path, task, host, TrainSettings(epochs=2, batch_size=64), notify=lambda m: None)
    return path


@pytest.fixture
def store_copy(digits_store: Path, tmp_path: Path) -> Path:
    path = tmp_path / "store"
    shutil.copytree(digits_store, path)
    return path


def fingerprint(path: Path) -> dict[str, str]:
    """sha256 of every file under `path` (the writer lock is empty between writers)."""
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def run_cli() -> Callable[..., object]:
    """Run `dmt ARGS` in-process; returns click's Result (exit_code, stdout, stderr)."""
    from click.testing import CliRunner

    from dmtcore.cli import cli

    def run(*args: str, expect: int | None = 0):
        result = CliRunner().invoke(cli, [str(a) for a in args])
        if expect is not None and result.exit_code != expect:
            raise AssertionError(
                f"dmt {' '.join(map(str, args))} exited {result.exit_code}, expected {expect}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}\n{result.exception!r}"
            )
        return result

    return run


@pytest.fixture
def write_plugin(tmp_path: Path) -> Iterator[Callable[[str, str], Path]]:
    """Write a throwaway plugin file; it is forgotten from sys.modules afterwards."""
    import sys

    written: list[str] = []

    def write(name: str, source: str) -> Path:
        path = tmp_path / f"{name}.py"
        path.write_text(source)
        written.append(f"dmt_plugin_{name}")
        return path

    yield write
    for module in written:
        sys.modules.pop(module, None)


TOY_PLUGIN = '''
"""A throwaway task plugin: is an 8x8 noise image bright? Optionally broken on purpose."""
import torch
from torch.utils.data import Dataset, TensorDataset

from dmtcore import TaskData, TaskSpec, hookimpl

PROBLEM = {problem!r}


class Later(Dataset):
    """Samples read one at a time that go wrong after the first LATER reads in a process: the
    engine's first-batch check passes, and the problem comes in a later batch (NaN pixels as
    soon as the check's 64 samples are read)."""

    LATER = 64 if PROBLEM == "nan-later" else 192

    def __init__(self, images, labels):
        self.images, self.labels, self.calls = images, labels, 0

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        self.calls += 1
        image, label = self.images[index], self.labels[index]
        if self.calls <= self.LATER:
            return image, label
        if PROBLEM in ("raises-later", "val-raises"):
            raise RuntimeError(f"sample {{index}} is unreadable\\nsecond line of the message")
        if PROBLEM in ("label-later", "val-label-later"):
            return image, label + 5
        if PROBLEM == "size-later" and self.calls == self.LATER + 1:
            return torch.zeros(1, 16, 16), label
        if PROBLEM == "nan-later":
            return torch.full_like(image, float("nan")), label
        return image, label


class Augmented(Dataset):
    """Fresh noise on every read, like random augmentation: a sample differs between epochs."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        image = self.images[index]
        return (image + 0.01 * torch.randn_like(image)).clamp(0, 1), self.labels[index]


def make(seed, n):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 1, 8, 8, generator=g) * torch.rand(n, 1, 1, 1, generator=g)
    threshold = 0.4 if PROBLEM == "imbalanced" else 0.25  # imbalanced: about 1 in 5 positive
    labels = (images.mean((1, 2, 3)) > threshold).long()
    return images, labels


def datasets(request):
    if PROBLEM == "factory-raises":
        raise RuntimeError("the disk is on fire")
    train, val = make(1, 1024), make(2, 256)
    if PROBLEM == "empty":
        return TaskData(TensorDataset(train[0][:0], train[1][:0]), TensorDataset(*val))
    if PROBLEM == "labels-out-of-range":
        train = (train[0], train[1] * 7)
    if PROBLEM == "labels-shape":
        train = (train[0], torch.stack([train[1], train[1]], 1))
    if PROBLEM == "nan-first":
        train = (torch.full_like(train[0], float("nan")), train[1])
    if PROBLEM in ("raises-later", "label-later", "size-later", "nan-later"):
        return TaskData(Later(*train), TensorDataset(*val))
    if PROBLEM in ("val-raises", "val-label-later"):
        return TaskData(TensorDataset(*train), Later(*val))
    if PROBLEM == "augmented":
        return TaskData(Augmented(*train), TensorDataset(*val))
    return TaskData(TensorDataset(*train), TensorDataset(*val))


@hookimpl
def dmt_register_tasks(registry):
    registry.add_task(
        TaskSpec(name={task!r}, description="bright noise", input_shape=(1, 8, 8), output="binary", datasets=datasets)
    )
'''


def toy_plugin(problem: str | None = None, task: str = "toy.bright") -> str:
    return TOY_PLUGIN.format(problem=problem, task=task)
