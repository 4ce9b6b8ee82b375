"""MLflow tracking as a plugin of dmt's lifecycle hooks: one MLflow run per operation.

The run gets the operation's parameters, per-epoch training loss and validation metrics of
every trained task, the connection weights as time series (`alpha.<task>.stage<l>.<source>`, and
`alpha.<task>.head.<source>` for the connection into the head where the store fuses there),
the final metrics and the committed manifest as an artifact. Each epoch is one batched
request, so tracking stays off the training step itself.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import shutil
import socket
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from dmtcore.errors import DmtError, TrackingError, first_line
from dmtcore.hooks.runinfo import EpochReport, RunInfo, RunResult
from dmtcore.hooks.specs import hookimpl
from dmtcore.runtime.progress import Stage

DATABASE = "mlflow.db"
UNSAFE_IN_SQLITE_URI = "?%"
ARTIFACTS = "mlartifacts"
# Operations that hold the store's writer lock while their run is open.
WRITER_OPERATIONS = ("add-task", "train", "remove-task")


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def system_info() -> dict[str, str]:
    """Where a run ran: logged as parameters next to the operation's own."""
    import platform

    import torch

    return {
        "system.python": platform.python_version(),
        "system.platform": platform.platform(),
        "system.torch": torch.__version__,
        "system.cuda": torch.version.cuda or "none",
        "system.gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "system.cpu_threads": str(torch.get_num_threads()),
    }


def default_tracking_uri(store: Path) -> str:
    """The embedded tracking store: a SQLite database inside the dmt store, never the cwd."""
    return sqlite_uri(Path(store).resolve() / DATABASE)


def sqlite_uri(database: Path) -> str:
    """An SQLAlchemy URI of the SQLite file at the absolute path `database`: 'sqlite:///PATH',
    exactly, for a path without '?' or '%'.

    SQLAlchemy reads '?' as the start of a query and decodes '%XX' in the path, so those are
    quoted ('%3F', '%25'); but MLflow creates the parent directory of the path *as written in
    the URI*, which would make a stray 'a%3Fb' beside a store named 'a?b'. So from the first
    component holding one of them on, the '/' are quoted too ('%2F'): the parent MLflow sees is
    then the last ancestor free of them, which exists (or is the store's own), while SQLAlchemy
    decodes the whole path back to the store's database."""
    text = str(database)
    first = min((text.index(c) for c in UNSAFE_IN_SQLITE_URI if c in text), default=None)
    if first is None:
        return f"sqlite:///{text}"
    cut = text.rindex("/", 0, first) + 1  # where the first component holding one starts
    tail = text[cut:].replace("%", "%25").replace("?", "%3F").replace("/", "%2F")
    return f"sqlite:///{text[:cut]}{tail}"


def artifact_location(directory: Path) -> str:
    """The artifact location of the embedded store's experiments: the plain path, as before,
    for a path without '?' or '%'; its file: URI for one with them. MLflow's local artifact
    repository decodes '%XX' in a plain path (the artifacts of a store named 'x%41y' would go
    to 'xAy') and its downloads split a plain path at '?' (`dmt pull` of a store named 'a?b'
    would read 'a'), while both decode a file: URI back to the path."""
    if set(UNSAFE_IN_SQLITE_URI) & set(str(directory)):
        return Path(directory).as_uri()
    return str(directory)


def ensure_embedded_database(store: Path, notify: Callable[[str], None]) -> None:
    """Make `<store>/mlflow.db` a fully migrated database, or refuse clearly.

    A new database is created and migrated in the store's tmp/ directory and linked into place
    only when complete (never replacing one that another process put there first), so a command
    killed during MLflow's migrations leaves no half-made database behind. One that an older
    release left half-migrated is moved aside and replaced if it holds no runs or models."""
    from dmtcore.store.directory import check_layout

    store = Path(store).resolve()
    check_layout(store)
    target = store / DATABASE
    if not target.exists():
        _create_database(store, target)
        return
    problem = _open_problem(target)
    if problem is None:
        return
    if _holds_records(target):
        raise TrackingError(
            f"the embedded MLflow database {target} cannot be opened ({problem}) and holds runs "
            f"or models; repair it with 'mlflow db upgrade {default_tracking_uri(store)}', move it "
            "aside, or pass --no-tracking"
        )
    aside = target.with_name(f"{DATABASE}.broken-{time.strftime('%Y%m%dT%H%M%S')}")
    os.replace(target, aside)
    notify(
        f"the embedded MLflow database was left half-created by an interrupted command ({problem}); "
        f"it held no runs, so it was moved to {aside.name} and a new one was created"
    )
    _create_database(store, target)


def _create_database(store: Path, target: Path) -> None:
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    (store / "tmp").mkdir(exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="mlflow-db-", dir=store / "tmp"))
    try:
        made = folder / DATABASE
        uri = sqlite_uri(made)
        artifacts = artifact_location(store / ARTIFACTS)
        reported_call(uri, lambda: SqlAlchemyStore(uri, artifacts).engine.dispose())
        with contextlib.suppress(FileExistsError):  # another process was first: use theirs
            os.link(made, target)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def _read_only(database: Path) -> Iterator[tuple[sqlite3.Connection, set[str]]]:
    """A read-only sqlite3 connection to `database` and the names of its tables: looking at
    a database before MLflow opens it (MLflow would try to migrate it) takes milliseconds."""
    with contextlib.closing(
        sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True)
    ) as connection:
        yield connection, {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}


def _open_problem(database: Path) -> str | None:
    """Why MLflow could not use `database` (a half-run migration), or None."""
    try:
        with _read_only(database) as (_, tables):
            pass
    except sqlite3.DatabaseError as exc:
        return f"not a readable SQLite database: {exc}"
    leftovers = sorted(t for t in tables if t.startswith("_alembic_tmp_"))
    if leftovers:
        return f"an interrupted schema migration left table {leftovers[0]}"
    if tables and not {"alembic_version", "experiments", "runs"} <= tables:
        return "its schema is incomplete"
    return None


# What a user made in a database: never discard one that holds any of it.
RECORDS = {
    "runs": "SELECT count(*) FROM runs",
    "registered_models": "SELECT count(*) FROM registered_models",
    "experiments": "SELECT count(*) FROM experiments WHERE experiment_id != 0",
}


def _holds_records(database: Path) -> bool:
    """Whether a database holds runs, registered models or experiments beyond MLflow's
    'Default'. One that cannot be read counts as holding records."""
    try:
        with _read_only(database) as (connection, tables):
            return any(
                connection.execute(query).fetchone()[0]
                for table, query in RECORDS.items()
                if table in tables
            )
    except sqlite3.DatabaseError:
        return True


def reported_call(uri: str, call: Callable[[], Any]) -> Any:
    """Run MLflow calls; any failure of MLflow's own becomes one TrackingError naming the URI."""
    from dmt_registry.access import refused_error, safe_uri

    try:
        return call()
    except DmtError:
        raise
    except Exception as exc:
        refused = refused_error(exc, uri)  # HTTP 401 / 403: say who was refused what
        if refused is not None:
            raise refused from exc
        raise TrackingError(
            f"MLflow at {safe_uri(uri)!r} failed: {type(exc).__name__}: {first_line(exc)}; "
            "pass --no-tracking to train without it"
        ) from exc


def _reported(method: Callable[..., Any]) -> Callable[..., Any]:
    """A tracker method whose MLflow failures are reported by `reported_call`."""

    @functools.wraps(method)
    def wrapper(self: MlflowTracker, *args: Any, **kwargs: Any) -> Any:
        return reported_call(self.tracking_uri, lambda: method(self, *args, **kwargs))

    return wrapper


class MlflowTracker:
    """Logs each operation to the experiment named after the store. `notify` hears what it is
    doing (a `Stage` per step that can take seconds); `verbose` keeps MLflow's own log
    messages, which are otherwise cut to its warnings; `system` says where the run ran (its
    parameters `system.*`). Commands that train run it in a helper process
    (`tracking_process`); the registry commands run it in their own."""

    def __init__(
        self,
        tracking_uri: str,
        embedded: bool = False,
        register: bool = True,
        notify: Callable[[str], None] = lambda message: None,
        verbose: bool = False,
        system: Callable[[], dict[str, str]] = system_info,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.embedded = embedded
        self.register = register
        self.notify = notify
        self.verbose = verbose
        self.system = system
        self.client: Any = None
        self.run_id: str | None = None
        # A publish the server refused after the commit (ForkError, AccessRefusedError).
        self.refused: DmtError | None = None

    def warm_up(self, store: Path) -> None:
        """Open the tracking store before the first run needs it: the helper process does this
        while the parent still loads torch. A database that is missing or needs repair is left
        alone, and any failure is left for `dmt_run_started` to meet and report."""
        database = Path(store) / DATABASE
        if self.embedded and (not database.is_file() or _open_problem(database) is not None):
            return
        with contextlib.suppress(Exception):
            client_class = self._import_client()
            client = client_class(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
            client.search_experiments(max_results=1)  # MLflow keeps the store it opened

    def _import_client(self) -> Any:
        """MLflow's client class, imported with dmt's settings: a server that is down is
        reported in seconds, not after minutes of retries, and MLflow logs its warnings only
        (no database-migration chatter) unless `dmt -v`."""
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        from mlflow.tracking import MlflowClient

        # After the import: mlflow sets its own logger up when first imported.
        logging.getLogger("mlflow").setLevel(logging.INFO if self.verbose else logging.WARNING)
        return MlflowClient

    def _connect(self, run: RunInfo) -> str:
        """The experiment id, created on first use; fails fast when the server does not answer."""
        MlflowClient = self._import_client()
        if self.embedded:
            if not (Path(run.store_path) / DATABASE).exists():
                self.notify(Stage("tracking: creating the store's MLflow database (first run)"))
            ensure_embedded_database(Path(run.store_path), _warn)
        try:
            self.client = MlflowClient(
                tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri
            )
            name, location = run.store_name, None
            experiment = None
            if self.embedded:
                # A plain path (see `artifact_location`). Experiments of earlier releases hold
                # the URI form.
                artifacts = Path(run.store_path).resolve() / ARTIFACTS
                location = artifact_location(artifacts)
                experiment = self.client.get_experiment_by_name(name)
                if experiment is not None and experiment.artifact_location not in (
                    location,
                    artifacts.as_uri(),
                ):
                    # The store was moved or copied: its artifacts belong inside it, where it is
                    # now, so its runs go on in an experiment of its own location.
                    name = f"{name} ({hashlib.sha256(location.encode()).hexdigest()[:8]})"
                    experiment = None
            if experiment is None:  # not looked up yet, or the store moved: look up its own
                experiment = self.client.get_experiment_by_name(name)
            if experiment is not None:
                return experiment.experiment_id
            return self.client.create_experiment(name, artifact_location=location)
        except Exception as exc:
            from dmt_registry.access import refused_error, safe_uri

            refused = refused_error(exc, self.tracking_uri)
            if refused is not None:
                raise refused from exc
            raise TrackingError(
                f"cannot use MLflow tracking at {safe_uri(self.tracking_uri)!r}: {type(exc).__name__}: "
                f"{first_line(exc)}; start the server, fix --tracking-uri, or pass --no-tracking"
            ) from exc

    @hookimpl
    @_reported
    def dmt_run_started(self, run: RunInfo) -> None:
        self.open_run(run, self.check_run(run))

    @_reported
    def check_run(self, run: RunInfo) -> str:
        """What can refuse an operation before it trains: the server, the store's experiment,
        the model name and the permission to publish. Returns the experiment id."""
        self.notify(Stage(f"tracking: connecting to MLflow at {self.tracking_uri}"))
        experiment_id = self._connect(run)
        if self.register:  # refuse a conflicting model name before any training
            from dmt_registry.access import check_can_publish
            from dmt_registry.publish import check_model_name, model_name
            from dmtcore.store.directory import Store

            manifest = Store.open(run.store_path).manifest()
            check_model_name(self.client, manifest)
            check_can_publish(self.client, self.tracking_uri, model_name(manifest))
        return experiment_id

    @_reported
    def open_run(self, run: RunInfo, experiment_id: str) -> None:
        """The operation's run, with its tags and parameters (after ending this store's runs
        whose writer was killed)."""
        from mlflow.entities import Param

        self.run_id = None  # a failure here leaves no earlier run to end in its place
        tags = {
            "dmt.operation": run.operation,
            "dmt.tasks": ",".join(run.tasks),
            "dmt.store": str(Path(run.store_path).resolve()),
            "dmt.parent_version": str(run.parent_version),
            "dmt.host": socket.gethostname(),
            "dmt.pid": str(os.getpid()),
        }
        if run.operation in WRITER_OPERATIONS:
            self._end_abandoned_runs(experiment_id, tags["dmt.store"], tags["dmt.host"])
        mlflow_run = self.client.create_run(
            experiment_id, run_name=f"{run.operation} {' '.join(run.tasks)}", tags=tags
        )
        self.run_id = mlflow_run.info.run_id
        params = {**run.params, **self.system()}
        self.client.log_batch(
            self.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()]
        )

    def _end_abandoned_runs(self, experiment_id: str, store: str, host: str) -> None:
        """Mark KILLED the runs of this store's writers that are still RUNNING although their
        process is gone (killed by SIGKILL or a power cut: it could not report its end).

        Called under the store's writer lock, so no other writer of this store is alive; runs
        from another host sharing the tracking server are left alone."""
        running = self.client.search_runs(
            [experiment_id], filter_string="attributes.status = 'RUNNING'"
        )
        for abandoned in running:
            tags = abandoned.data.tags
            if (
                tags.get("dmt.store") != store
                or tags.get("dmt.operation") not in WRITER_OPERATIONS
                or tags.get("dmt.host", host) != host
            ):
                continue
            self.mark_killed(abandoned.info.run_id, "marked by the next writer")

    def mark_killed(self, run_id: str, by: str) -> None:
        """End run `run_id` as KILLED: its process ended without reporting; `by` says who
        noticed."""
        self.client.set_tag(
            run_id, "dmt.error", f"the process ended without reporting (killed); {by}"
        )
        self.client.set_terminated(run_id, "KILLED")

    @hookimpl
    @_reported
    def dmt_epoch_end(self, run: RunInfo, report: EpochReport) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        values = {f"{task}.train_loss": loss for task, loss in report.train_loss.items()}
        values.update(
            {
                f"{task}.val.{name}": value
                for task, metrics in report.val_metrics.items()
                for name, value in metrics.items()
            }
        )
        values.update(report.connection_weights)
        values.update({f"loss_weight.{task}": w for task, w in report.task_weights.items()})
        values["epoch_seconds"] = report.seconds
        metrics = [Metric(key, float(value), stamp, report.epoch) for key, value in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    @hookimpl
    @_reported
    def dmt_run_finished(self, run: RunInfo, result: RunResult) -> None:
        from mlflow.entities import Metric

        self.notify(Stage("tracking: logging the run's metrics, manifest and relation plots"))
        stamp = int(time.time() * 1000)
        metrics = [
            Metric(f"{task}.{name}", float(value), stamp, 0)
            for task, values in result.metrics.items()
            for name, value in values.items()
        ]
        cache = result.summary.get("feature_cache") or {}
        metrics += [
            Metric(f"feature_cache.{name}", float(value), stamp, 0)
            for name, value in cache.items()
            if isinstance(value, int | float)
        ]
        weighting = result.summary.get("weighting") or {}
        metrics += [
            Metric(f"loss_weight.{task}", float(value), stamp, 0)
            for task, value in weighting.get("weights", {}).items()
        ]
        if result.summary.get("delta_m"):
            metrics.append(Metric("delta_m", float(result.summary["delta_m"]["value"]), stamp, 0))
        self.client.log_batch(self.run_id, metrics=metrics)
        if cache:
            self.client.set_tag(self.run_id, "dmt.feature_cache", cache["location"])
        self.client.set_tag(self.run_id, "dmt.version", str(result.version))
        kept = {
            task: row["kept"]
            for task, row in (result.summary.get("report") or {}).items()
            if row.get("kept")
        }
        if kept:  # remove-task: whether reconnection beat the cut (DMT §4.3)
            self.client.set_tag(
                self.run_id, "dmt.kept", ", ".join(f"{t}: {k}" for t, k in kept.items())
            )
        self.client.log_artifact(self.run_id, str(result.manifest_path), artifact_path="manifest")
        self._log_relations(result)
        for task, image in (run.extra.get("previews") or {}).items():
            # input / truth / prediction of the first validation images of each dense task: a
            # PIL image, or the PNG file `tracking_process` made of one (named after the task)
            if isinstance(image, str | Path):
                self.client.log_artifact(self.run_id, str(image), artifact_path="previews")
            else:
                self.client.log_image(self.run_id, image, artifact_file=f"previews/{task}.png")
        if self.register:
            self.notify(Stage(f"registering version {result.version} in the MLflow Model Registry"))
            version = self._publish_or_keep_pending(run, result.version)
            if version is None:
                return  # refused: the commit stands, the publish is pending (see `refused`)
            self.client.set_tag(self.run_id, "dmt.registered_version", version)
        self.client.set_terminated(self.run_id, "FINISHED")

    def _publish_or_keep_pending(self, run: RunInfo, version: int) -> str | None:
        """Register committed store `version`; the registry version, or None when the server
        refused it (a fork, a permission): then the store marks the publish pending for
        `dmt register`, the run ends FINISHED with tag dmt.publish_pending, and `refused` holds
        the error for the caller to report. Other failures stay pending and are raised."""
        from dmt_registry import lineage
        from dmt_registry.access import refused_error
        from dmt_registry.publish import model_name, register
        from dmtcore.errors import AccessRefusedError, ForkError
        from dmtcore.store.directory import Store

        store = Store.open(run.store_path)
        try:
            number = register(self.client, store, version, self.run_id)
        except Exception as exc:
            error = exc if isinstance(exc, DmtError) else refused_error(exc, self.tracking_uri)
            lineage.note_pending(run.store_path, version, self.tracking_uri, error or exc)
            if not isinstance(error, ForkError | AccessRefusedError):
                raise
            self.refused = error
            with contextlib.suppress(Exception):  # the run may be refused too: the error stands
                self.client.set_tag(self.run_id, "dmt.publish_pending", first_line(error, 4000))
                self.client.set_terminated(self.run_id, "FINISHED")
            return None
        name = model_name(store.manifest(version))
        lineage.note_published(run.store_path, version, name, number, self.tracking_uri)
        return number

    def _log_relations(self, result: RunResult) -> None:
        """The final relation matrices of every stage, as JSON and as a heatmap PNG (drawn with
        Pillow: matplotlib cost each run about a CPU second, see `relations.heatmap_png`)."""
        from dmtcore.model.connection_weights import (
            boundary_label,
            heatmap_png,
            relation_matrices,
            select_stage,
        )

        manifest = json.loads(Path(result.manifest_path).read_text())
        stages = select_stage(relation_matrices(manifest), None)
        if not stages or not manifest["tasks"]:
            return
        names = [t["name"] for t in manifest["tasks"]]
        with tempfile.TemporaryDirectory() as folder:
            data = {
                "tasks": names,
                "stages": [
                    {"stage": n, "label": boundary_label(manifest, n), "matrix": m}
                    for n, m in stages
                ],
            }
            (Path(folder) / "relations.json").write_text(json.dumps(data, indent=2))
            heatmap_png(manifest, stages, Path(folder) / "relations.png")
            self.client.log_artifacts(self.run_id, folder, artifact_path="relations")

    @hookimpl
    @_reported
    def dmt_run_failed(self, run: RunInfo, error: BaseException) -> None:
        if self.run_id is None:
            return
        interrupted = isinstance(error, KeyboardInterrupt)
        self.client.set_tag(self.run_id, "dmt.error", f"{type(error).__name__}: {error}"[:5000])
        self.client.set_terminated(self.run_id, "KILLED" if interrupted else "FAILED")
