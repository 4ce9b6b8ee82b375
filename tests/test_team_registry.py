"""A team's setup (issue 27): `mlflow server` on PostgreSQL with basic-auth, started once per
session on loopback (conftest `team_server`). Logins and permissions, a publish refused after
the commit and kept pending, two people publishing one model (a fork, and two publishes at the
same moment), a store that moves to another machine, and a short run of the load benchmark."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import team_server as team
from tests.conftest import TEAM_USER, fingerprint

ROOT = Path(__file__).parents[1]
ON_TEAM_SERVER = pytest.mark.parametrize("tracked_store", ["team"], indirect=True)
FAST = ["--epochs", "1", "--batch-size", "64"]


def client(url: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=url, registry_uri=url)


def as_user(monkeypatch: pytest.MonkeyPatch, name: str, password: str) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", name)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)


def new_user(server, name: str, password: str, *grants: tuple[str, str, str]) -> None:
    """A user, and (kind, name, permission) grants on the experiment or model called name."""
    team.add_user(server, name, password)
    for kind, resource, permission in grants:
        if kind == "experiment":
            with team.admin_credentials(server):
                resource = client(server.url).get_experiment_by_name(resource).experiment_id
        team.grant(server, name, kind, resource, permission)


def error_line(stderr: str) -> str:
    """The error the command ended with: one line, after any stage notices."""
    line = stderr.strip().splitlines()[-1]
    assert line.startswith("Error: "), stderr
    return line


def current(url: str, name: str = "store"):
    return client(url).get_model_version_by_alias(name, "current")


def test_a_wrong_password_is_one_line_naming_the_server(
    team_registry, store_copy: Path, run_cli, monkeypatch
) -> None:
    url = team_registry.url
    before = fingerprint(store_copy)
    as_user(monkeypatch, "alice", "not-her-password")
    refused = run_cli("add-task", "digits.prime", "--store", store_copy, *FAST, expect=10)
    line = error_line(refused.stderr)
    assert f"MLflow at {url} refused the login of user 'alice' (HTTP 401" in line
    assert "not-her-password" not in line and fingerprint(store_copy) == before
    # Credentials in the URI itself: the password never shows.
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    secret_uri = url.replace("http://", "http://alice:uri-secret-1234@")
    refused = run_cli("register", "--store", store_copy, "--tracking-uri", secret_uri, expect=10)
    assert "uri-secret-1234" not in refused.stderr + refused.stdout
    assert "http://alice@127.0.0.1" in error_line(refused.stderr)
    assert fingerprint(store_copy) == before


@ON_TEAM_SERVER
def test_users_who_cannot_publish_are_refused_before_any_training(
    team_registry, tracked_store, run_cli, monkeypatch
) -> None:
    store, url = tracked_store  # alice registered models:/store/1
    before = fingerprint(store)

    def refused_line() -> str:
        return error_line(
            run_cli("add-task", "digits.prime", "--store", store, *FAST, expect=10).stderr
        )

    new_user(team_registry, "reader", "reader-password-1")  # the default: READ everywhere
    as_user(monkeypatch, "reader", "reader-password-1")
    refused = refused_line()
    assert f"MLflow at {url} gives user 'reader' READ on registered model 'store'" in refused
    assert "needs EDIT or MANAGE; nothing was trained" in refused
    new_user(team_registry, "modeller", "modeller-password", ("registered_model", "store", "EDIT"))
    as_user(monkeypatch, "modeller", "modeller-password")
    refused = refused_line()
    assert f"MLflow at {url} refused user 'modeller' permission to create a run in the " in refused
    assert "(HTTP 403 on /api/2.0/mlflow/runs/create): ask its admin for EDIT on the" in refused
    assert fingerprint(store) == before and current(url).version in (1, "1")


REVOKE_PLUGIN = '''
import os
from dmtcore import hookimpl

@hookimpl
def dmt_epoch_end(run, report):
    """The admin takes away dave's EDIT on the model while he trains."""
    import sys
    sys.path.insert(0, {root!r})
    from tests import team_server as team
    server = team.TeamServer({url!r}, {admin!r}, None, None)
    with team.admin_credentials(server):
        server.auth_client().revoke_user_permission("dave", "registered_model", "store")
'''


@ON_TEAM_SERVER
def test_a_publish_refused_after_the_commit_stays_pending_and_no_secret_is_kept(
    team_registry, tracked_store, run_cli, monkeypatch, write_plugin
) -> None:
    store, url = tracked_store
    password = "dave-secret-password-42"
    new_user(
        team_registry, "dave", password,
        ("experiment", "store", "EDIT"), ("registered_model", "store", "EDIT"),
    )  # fmt: skip
    as_user(monkeypatch, "dave", password)
    plugin = write_plugin(
        "revoke",
        REVOKE_PLUGIN.format(root=str(ROOT), url=url, admin=team_registry.admin_password),
    )
    added = run_cli("add-task", "digits.prime", "-p", plugin, "--store", store, *FAST, expect=10)
    line = error_line(added.stderr)
    assert line.startswith(f"Error: version 4 is committed in {str(store)!r} but not published")
    assert f"MLflow at {url} refused user 'dave' permission to register a new version" in line
    status = run_cli("status", "--store", store)
    assert "Publish pending: version 4 is not published" in status.stdout
    assert json.loads(run_cli("status", "--store", store, "--json").stdout)["version"] == 4
    assert current(url).version in (1, "1")  # nothing moved
    history = run_cli("history", "--store", store).stdout
    assert "pending" in history.splitlines()[2]  # the newest row, below the header
    team.grant(team_registry, "dave", "registered_model", "store", "EDIT")
    published = run_cli("register", "--store", store)
    assert "Registered store version 4 as models:/store/2" in published.stdout
    assert "Publish pending" not in run_cli("status", "--store", store).stdout
    # No secret anywhere: the store, the runs' params and tags, the versions' tags, the output.
    for path in store.rglob("*"):
        if path.is_file():
            assert password.encode() not in path.read_bytes(), path
    with team.admin_credentials(team_registry):
        admin = client(url)
        runs = admin.search_runs([admin.get_experiment_by_name("store").experiment_id])
        versions = admin.search_model_versions("name='store'")
    texts = [json.dumps(r.data.params) + json.dumps(r.data.tags) for r in runs]
    texts += [json.dumps(v.tags) + (v.description or "") for v in versions]
    texts += [added.stdout, added.stderr, published.stdout, published.stderr, status.stdout]
    assert runs and not [t for t in texts if password in t]
    assert any(r.data.tags.get("dmt.publish_pending") for r in runs)


@ON_TEAM_SERVER
def test_a_fork_is_refused_naming_who_published_what_and_force_publishes(
    team_registry, tracked_store, run_cli, monkeypatch, tmp_path: Path
) -> None:
    store, url = tracked_store  # alice: models:/store/1
    new_user(
        team_registry, "bob", "bob-password-12",
        ("experiment", "store", "EDIT"), ("registered_model", "store", "EDIT"),
    )  # fmt: skip
    theirs = tmp_path / "bobs"
    as_user(monkeypatch, "bob", "bob-password-12")
    run_cli("pull", "models:/store@current", "--store", theirs)
    as_user(monkeypatch, *TEAM_USER)
    run_cli("add-task", "digits.prime", "--store", store, *FAST)  # alice: models:/store/2
    as_user(monkeypatch, "bob", "bob-password-12")
    before = fingerprint(theirs)
    refused = run_cli("add-task", "digits.large", "--store", theirs, *FAST, expect=4)
    line = error_line(refused.stderr)
    assert "version 4 is committed" in line and "the lineage of model 'store' forked" in line
    assert "models:/store@current is version 2 (added digits.prime by alice" in line
    assert "this store's version 4 (adds digits.large) descends from version 1" in line
    assert "dmt pull models:/store@current" in line and "dmt register --force" in line
    assert (
        current(url).version in (2, "2")
        and len(client(url).search_model_versions("name='store'")) == 2
    )
    assert fingerprint(theirs) != before  # the commit stands
    again = run_cli("register", "--store", theirs, expect=4)
    assert "forked" in error_line(again.stderr)
    forced = run_cli("register", "--store", theirs, "--force")
    assert "as models:/store/3" in forced.stdout
    now = current(url)
    assert now.version in (3, "3") and now.tags["dmt.forced_over"] == "2"
    assert now.tags["dmt.published_by"] == "bob" and now.tags["dmt.parent_version"] == "1"


CLAIM_AT_ONCE = """
import os, sys, time
from pathlib import Path
from dmt_registry import lineage

real = lineage.claim_current

def claim(*args, **kwargs):
    # Both processes have created their registry version before either moves current.
    folder = Path(os.environ["BARRIER"])
    (folder / str(os.getpid())).touch()
    deadline = time.time() + 120
    while len(list(folder.iterdir())) < 2 and time.time() < deadline:
        time.sleep(0.02)
    return real(*args, **kwargs)

lineage.claim_current = claim
from dmtcore.cli import main
sys.argv = ["dmt", *sys.argv[1:]]
main()
"""


@pytest.mark.slow
@ON_TEAM_SERVER
def test_two_registers_at_the_same_moment_move_current_once(
    team_registry, tracked_store, run_cli, tmp_path: Path
) -> None:
    _, url = tracked_store
    stores = {}
    for task in ("digits.prime", "digits.large"):
        stores[task] = tmp_path / task
        run_cli("pull", "models:/store@current", "--store", stores[task])
        run_cli("add-task", task, "--store", stores[task], *FAST, "--no-register")
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env = {**os.environ, "BARRIER": str(barrier)}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIM_AT_ONCE, "register", "--store", str(path), "--json"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for path in stores.values()
    ]
    results = [(p.wait(timeout=300), *p.communicate()) for p in processes]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 4], results
    won = next(json.loads(out) for code, out, _ in results if code == 0)
    lost = next(err for code, _, err in results if code == 4)
    assert "another publish of model 'store' came first" in lost and lost.count("\n") == 1
    versions = {str(v.version): v for v in client(url).search_model_versions("name='store'")}
    assert sorted(versions, key=int) == ["1", "2", "3"]  # both registered, neither lost
    assert str(current(url).version) == won["version"]
    loser = next(v for n, v in versions.items() if n not in ("1", won["version"]))
    assert loser.tags["dmt.publish"] == "fork" and loser.tags["dmt.fork_of"] == won["version"]
    assert versions[won["version"]].tags["dmt.publish"] == "published"


@pytest.mark.slow
@ON_TEAM_SERVER
def test_a_store_moves_to_another_machine_and_the_lineage_reads_as_one_chain(
    team_registry, tracked_store, run_cli, tmp_path: Path
) -> None:
    """The second machine: a fresh directory and fresh processes with their own HOME (the
    same venv: a fresh one would cost the suite minutes)."""
    _, url = tracked_store  # machine 1: models:/store/1
    machine = tmp_path / "machine2"
    (machine / "home").mkdir(parents=True)
    env = {**os.environ, "HOME": str(machine / "home")}

    def dmt(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "dmtcore", *args], cwd=machine, env=env,
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0 and "warning" not in done.stderr, done.stderr
        return done.stdout

    dmt("pull", "models:/store@current", "--store", "face")
    dmt("add-task", "digits.prime", "--store", "face", *FAST)  # models:/store/2
    history = dmt("history", "--store", "face")
    rows = history.splitlines()
    assert rows[0].split() == ["version", "created", "operation", "tasks", "registry"]
    assert rows[2].endswith("models:/store/2") and rows[3].endswith("pulled models:/store/1")
    assert f"was pulled from models:/store@current (models:/store/1) at {url}" in history
    assert "its registry lineage: 1 (add-task digits.even by alice)" in history
    back = tmp_path / "back-on-machine1"  # machine 1 takes the work up again
    run_cli("pull", "models:/store@current", "--store", back)
    run_cli("add-task", "digits.large", "--store", back, *FAST)  # models:/store/3
    versions = {str(v.version): v.tags for v in client(url).search_model_versions("name='store'")}
    chain, number = [], str(current(url).version)
    while number.isdigit():
        chain.append(number)
        number = versions[number]["dmt.parent_version"]
    assert chain == ["3", "2", "1"]
    assert len({tags["dmt.store_id"] for tags in versions.values()}) == 1
    assert versions["3"]["dmt.tasks"] == "digits.class,digits.even,digits.prime,digits.large"
    assert json.loads(run_cli("history", "--store", back, "--json").stdout)[0]["published_as"] == (
        "models:/store/3"
    )


@pytest.mark.slow
def test_team_load_benchmark_quick(team_registry, tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "team_load.py"), "--quick",
         "--tracking-uri", team_registry.url, "--json", str(out)],
        capture_output=True, text=True, timeout=400, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    assert result["publishes"] >= 1 and result["reads"] >= 1
    assert result["errors"] == [] and result["lost_versions"] == []
    assert result["broken_aliases"] == 0 and "Traceback" not in done.stderr


def test_a_rival_seen_claiming_and_published_since_blocks_the_move() -> None:
    """The race the load benchmark caught: B lists the versions while A's is still claiming,
    A then moves `current` and tags its version published, B creates its own and checks. A's
    version, seen before but published since, is B's rival: B must not move `current`."""
    from types import SimpleNamespace

    from dmt_registry.lineage import CLAIM, Survey, rivals

    def version(number: int, state: str, created: int = 0) -> SimpleNamespace:
        return SimpleNamespace(version=number, tags={CLAIM: state}, creation_timestamp=created)

    now_ms = 10_000_000
    seen = Survey(
        "face", "1", {"1": version(1, "published"), "2": version(2, "claiming", now_ms)},
        frozenset({"1"}),
    )  # fmt: skip
    later = {**seen.versions, "2": version(2, "published", now_ms), "3": version(3, "claiming")}
    assert [v.version for v in rivals(seen, later, 3, now_ms)] == [2]
    # Published before B looked: `current` (read after the listing) already said so.
    settled = Survey("face", "2", {"1": version(1, "published"), "2": version(2, "published")},
                     frozenset({"1", "2"}))  # fmt: skip
    assert rivals(settled, {**settled.versions, "3": version(3, "claiming")}, 3, now_ms) == []
    # An old fork that lost long ago is nobody's rival.
    old = Survey("face", "1", {"1": version(1, "published"), "2": version(2, "fork")},
                 frozenset({"1"}))  # fmt: skip
    assert rivals(old, {**old.versions, "3": version(3, "claiming")}, 3, now_ms) == []
