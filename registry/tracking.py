"""MLflow tracking as a plugin of dmt's lifecycle hooks: one MLflow run per operation.

The run gets the operation's parameters, per-epoch training loss and validation metrics of
every trained task, the connection weights as time series (`alpha.<task>.stage<l>.<source>`),
the final metrics and the committed manifest as an artifact. Each epoch is one batched
request, so tracking stays off the training step itself.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dmtcore.errors import DmtError, TrackingError, first_line
from dmtcore.hookspecs import hookimpl
from dmtcore.runinfo import EpochReport, RunInfo, RunResult

DATABASE = "mlflow.db"
ARTIFACTS = "mlartifacts"


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
    return f"sqlite:///{(Path(store).resolve() / DATABASE)}"


def reported_call(uri: str, call: Callable[[], Any]) -> Any:
    """Run MLflow calls; any failure of MLflow's own becomes one TrackingError naming the URI."""
    try:
        return call()
    except DmtError:
        raise
    except Exception as exc:
        raise TrackingError(
            f"MLflow at {uri!r} failed: {type(exc).__name__}: {first_line(exc)}; "
            "pass --no-tracking to train without it"
        ) from exc


def _reported(method: Callable[..., None]) -> Callable[..., None]:
    """A tracker hook whose MLflow failures are reported by `reported_call`."""

    @functools.wraps(method)
    def wrapper(self: MlflowTracker, *args: Any, **kwargs: Any) -> None:
        reported_call(self.tracking_uri, lambda: method(self, *args, **kwargs))

    return wrapper


class MlflowTracker:
    """Logs each operation to the experiment named after the store."""

    def __init__(self, tracking_uri: str, embedded: bool = False, register: bool = True) -> None:
        self.tracking_uri = tracking_uri
        self.embedded = embedded
        self.register = register
        self.client: Any = None
        self.run_id: str | None = None

    def _connect(self, run: RunInfo) -> str:
        """The experiment id, created on first use; fails fast when the server does not answer."""
        # A server that is down must be reported in seconds, not after minutes of retries.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        from mlflow.tracking import MlflowClient

        # After the import: mlflow sets its own logger up when first imported.
        logging.getLogger("mlflow").setLevel(logging.WARNING)  # no database-migration chatter
        try:
            self.client = MlflowClient(
                tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri
            )
            name, location = run.store_name, None
            if self.embedded:
                location = (Path(run.store_path).resolve() / ARTIFACTS).as_uri()
                experiment = self.client.get_experiment_by_name(name)
                if experiment is not None and experiment.artifact_location != location:
                    # The store was moved or copied: its artifacts belong inside it, where it is
                    # now, so its runs go on in an experiment of its own location.
                    name = f"{name} ({hashlib.sha256(location.encode()).hexdigest()[:8]})"
            experiment = self.client.get_experiment_by_name(name)
            if experiment is not None:
                return experiment.experiment_id
            return self.client.create_experiment(name, artifact_location=location)
        except Exception as exc:
            raise TrackingError(
                f"cannot use MLflow tracking at {self.tracking_uri!r}: {type(exc).__name__}: "
                f"{first_line(exc)}; start the server, fix --tracking-uri, or pass --no-tracking"
            ) from exc

    @hookimpl
    @_reported
    def dmt_run_started(self, run: RunInfo) -> None:
        from mlflow.entities import Param

        experiment_id = self._connect(run)
        if self.register:  # refuse a conflicting model name before any training
            from dmt_registry.publish import check_model_name
            from dmtcore.store import Store

            check_model_name(self.client, Store.open(run.store_path).manifest())
        tags = {
            "dmt.operation": run.operation,
            "dmt.tasks": ",".join(run.tasks),
            "dmt.store": str(Path(run.store_path).resolve()),
            "dmt.parent_version": str(run.parent_version),
        }
        mlflow_run = self.client.create_run(
            experiment_id, run_name=f"{run.operation} {' '.join(run.tasks)}", tags=tags
        )
        self.run_id = mlflow_run.info.run_id
        params = {**run.params, **system_info()}
        self.client.log_batch(
            self.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()]
        )

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
        values["epoch_seconds"] = report.seconds
        metrics = [Metric(key, float(value), stamp, report.epoch) for key, value in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    @hookimpl
    @_reported
    def dmt_run_finished(self, run: RunInfo, result: RunResult) -> None:
        from mlflow.entities import Metric

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
        self.client.log_batch(self.run_id, metrics=metrics)
        if cache:
            self.client.set_tag(self.run_id, "dmt.feature_cache", cache["location"])
        self.client.set_tag(self.run_id, "dmt.version", str(result.version))
        self.client.log_artifact(self.run_id, str(result.manifest_path), artifact_path="manifest")
        self._log_relations(result)
        if self.register:
            from dmt_registry.publish import register
            from dmtcore.store import Store

            version = register(self.client, Store.open(run.store_path), result.version, self.run_id)
            self.client.set_tag(self.run_id, "dmt.registered_version", version)
        self.client.set_terminated(self.run_id, "FINISHED")

    def _log_relations(self, result: RunResult) -> None:
        """The final relation matrices of every stage, as JSON and as a heatmap PNG."""
        from dmtcore.relations import plot, relation_matrices, select_stage

        manifest = json.loads(Path(result.manifest_path).read_text())
        stages = select_stage(relation_matrices(manifest), None)
        if not stages or not manifest["tasks"]:
            return
        names = [t["name"] for t in manifest["tasks"]]
        with tempfile.TemporaryDirectory() as folder:
            data = {"tasks": names, "stages": [{"stage": n, "matrix": m} for n, m in stages]}
            (Path(folder) / "relations.json").write_text(json.dumps(data, indent=2))
            plot(manifest, stages, Path(folder) / "relations.png")
            self.client.log_artifacts(self.run_id, folder, artifact_path="relations")

    @hookimpl
    @_reported
    def dmt_run_failed(self, run: RunInfo, error: BaseException) -> None:
        if self.run_id is None:
            return
        interrupted = isinstance(error, KeyboardInterrupt)
        self.client.set_tag(self.run_id, "dmt.error", f"{type(error).__name__}: {error}"[:5000])
        self.client.set_terminated(self.run_id, "KILLED" if interrupted else "FAILED")
