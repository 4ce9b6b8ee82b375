"""The Python API of dmt's commands: what `dmt init`, `add-task`, `train`, `remove-task`,
`rollback`, `status`, `history`, `verify`, `eval`, `predict` and `connections` do, as calls a
notebook or a script can make.

    import dmtcore

    store = dmtcore.open_store("dmt-store")
    record = store.add_task("digits.even", epochs=3)   # the dict `dmt add-task --json` prints
    store.predict(["some.png"])

Every method returns the very record the command prints with `--json`, and raises the
`DmtError` whose message and exit code the command shows; the command line is argument
parsing and printing over these calls. Options are the commands' own, by their Python names
(`batch_size=12`, `kept_features_mb=0`, `data_dir=...`); an unknown one is refused naming the
valid ones. Like the commands, mutations are tracked in MLflow (the store's embedded database
unless `tracking_uri` says otherwise) and publish each new version to the Model Registry.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from dmtcore.errors import ConflictError, DmtError, InvalidValueError, PluginError
from dmtcore.store.directory import Store

Notify = Callable[[str], None]


def _quiet(message: str) -> None:
    """The default `notify` of the API: a script that wants the stage notices passes `print`."""


def open_store(
    path: str | os.PathLike[str] = "dmt-store",
    *,
    plugins: Sequence[str] = (),
    autoload: bool | None = None,
    tracking_uri: str | None = None,
    tracking: bool = True,
    register: bool = True,
    notify: Notify = _quiet,
    observers: Iterable[object] = (),
    verbose: bool = False,
) -> ModelStore:
    """A store for the API's calls. It need not exist yet: `add_task` and `train` create it
    with the defaults, as the commands do. `plugins` and `autoload` are `-p` and
    `--no-plugin-autoload`; `observers` are extra plugins of the lifecycle hooks (e.g. one
    printing every epoch), registered beside the MLflow tracker. `verbose` lets MLflow print
    its own log lines and progress bars (`dmt -v`)."""
    return ModelStore(
        Path(path),
        tuple(plugins),
        autoload,
        tracking_uri,
        tracking,
        register,
        notify,
        observers,
        verbose,
    )


# MLflow draws a "Downloading artifacts" bar while it copies local files into a model (it
# reads like network access), and with a tracking server it prints "View run ... at: URL" to
# stdout when a run ends (which broke `--json` output); unless `verbose`, both are off while a
# call runs.
QUIET_ENVIRONMENT = {
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}


@contextlib.contextmanager
def quiet_environment(verbose: bool) -> Iterator[None]:
    """Other libraries' progress bars off while it lasts (a value the user set wins), unless
    `verbose`; the environment is put back afterwards. The CLI holds it for a whole command."""
    added = {} if verbose else {k: v for k, v in QUIET_ENVIRONMENT.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def _quietly(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(self: ModelStore, *args: Any, **kwargs: Any) -> Any:
        with quiet_environment(self.verbose):
            return method(self, *args, **kwargs)

    return call


class ModelStore:
    """One store and the plugins to use with it; created by `open_store`."""

    def __init__(
        self,
        path: Path,
        plugins: tuple[str, ...],
        autoload: bool | None,
        tracking_uri: str | None,
        tracking: bool,
        register: bool,
        notify: Notify,
        observers: Iterable[object],
        verbose: bool = False,
    ) -> None:
        self.path = path
        self.plugins = plugins
        self.autoload = autoload
        self.tracking_uri = tracking_uri
        self.tracking = tracking
        self.register = register
        self.notify = notify
        self.observers = list(observers)
        self.verbose = verbose
        self._host: Any = None
        self._tracker: Any = None  # the tracking process of the call in progress, if any

    @property
    def host(self) -> Any:
        """The plugin host (built-ins, entry points, `plugins`), loaded at first use."""
        if self._host is None:
            from dmtcore.hooks.host import create_plugin_host

            self._host = create_plugin_host(self.plugins, autoload=self.autoload)
            for number, observer in enumerate(self.observers):
                self._host.register(observer, f"observer-{number}")
        return self._host

    # -- operations that commit a version -------------------------------------------------

    @_quietly
    def add_task(
        self,
        names: str | Sequence[str],
        *,
        from_folder: str | os.PathLike[str] | None = None,
        init_from: str = "auto",
        each: Callable[[dict[str, Any]], None] | None = None,
        **options: Any,
    ) -> dict[str, Any] | list[dict[str, Any]]:
        """Train each task as a new column connected to every existing one (old tasks stay
        frozen); several names are added one after another, each its own version, and
        `each` hears every record as soon as its version is committed. Returns `dmt add-task
        --json`'s record, a list of them for several names."""
        started = time.perf_counter()
        many = not isinstance(names, str)
        names = list(names) if many else [names]
        if not names or len(set(names)) != len(names):
            raise InvalidValueError(f"give one or more distinct tasks to add, got {names}")
        if from_folder is not None and len(names) != 1:
            raise InvalidValueError(f"from_folder makes one task, got {len(names)}: {names}")
        with self._tracking() as uri:  # before torch loads: MLflow loads meanwhile
            from dmtcore.operations import add_task

            settings, data = split_options(options)
            if from_folder is not None:
                self.task_from_folder(names[0], from_folder)
            for name in names:
                self.host.kinds.task(name)  # an unknown name fails before anything is touched
            records = []
            for name in names:
                result = add_task(
                    self.path, name, self.host, settings, data, self.notify, init_from=init_from
                )
                self._raise_if_publish_refused(result.version)
                records.append(
                    {
                        "store": str(self.path),
                        "version": result.version,
                        "task": name,
                        "metrics": result.metrics[name],
                        "best_epoch": result.summary["best_epoch"],
                        "init_from": result.summary["init_from"],
                        "seconds": round(time.perf_counter() - started, 2),
                        "tracking_uri": uri,
                    }
                )
                if each is not None:
                    each(records[-1])
                started = time.perf_counter()
            return records if many else records[0]

    @_quietly
    def train(
        self,
        names: Sequence[str],
        *,
        connection: str | None = None,
        from_folders: dict[str, str | os.PathLike[str]] | None = None,
        compare_with: str | os.PathLike[str] | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        """Train a group of new tasks jointly, all mutually connected (DMT §4.1); options
        `weighting` and `weighting_options` choose how their losses combine (`dmt
        weightings`). `compare_with`: a store holding the same tasks (trained alone, say),
        whose recorded metrics the record's `delta_m` (percent) is measured against. Returns
        `dmt train --json`'s record."""
        started = time.perf_counter()
        names = list(names)
        with self._tracking() as uri:  # before torch loads: MLflow loads meanwhile
            from dmtcore.operations import baseline_metrics, train_tasks

            settings, data = split_options(options)
            for task, folder in (from_folders or {}).items():
                if task not in names:
                    raise InvalidValueError(
                        f"invalid from_folders entry {task!r}: it must be one of the tasks to train "
                        f"({', '.join(names)})"
                    )
                self.task_from_folder(task, folder)
            for name in names:
                self.host.kinds.task(name)
            if connection is not None:
                self.host.kinds.connection(connection)
            baseline = None if compare_with is None else baseline_metrics(Path(compare_with), names)
            result = train_tasks(
                self.path,
                names,
                self.host,
                settings,
                data,
                connection,
                self.notify,
                baseline=baseline,
            )
            self._raise_if_publish_refused(result.version)
            delta = result.summary.get("delta_m")
            return {
                "store": str(self.path),
                "version": result.version,
                "tasks": names,
                "metrics": result.metrics,
                "best_epoch": result.summary["best_epoch"],
                "weighting": result.summary["weighting"],
                "delta_m": delta["value"] if delta else None,
                "compared_with": delta["baseline"] if delta else None,
                "seconds": round(time.perf_counter() - started, 2),
                "tracking_uri": uri,
            }

    @_quietly
    def remove_task(self, name: str, **options: Any) -> dict[str, Any]:
        """Cut task `name` out and retrain the connections of the tasks that read it (DMT
        §4.3), each with the settings it was trained with but for the `options` given here.
        Returns `dmt remove-task --json`'s record, with every remaining task's primary
        metric before, right after the cut, and after reconnection, and the settings each
        reconnected task used (`task_settings`)."""
        Store.open(self.path)  # a missing store fails before the plugins load
        with self._tracking() as uri:  # before torch loads: MLflow loads meanwhile
            from dmtcore.operations import remove_task

            settings, data = split_options({"epochs": 3, **options})
            result = remove_task(
                self.path, name, self.host, settings, data, self.notify, given=set(options)
            )
            self._raise_if_publish_refused(result.version)
            return {
                "store": str(self.path),
                "version": result.version,
                "removed": name,
                "report": result.summary["report"],
                "task_settings": result.summary.get("task_settings", {}),
                "tracking_uri": uri,
            }

    def init(
        self,
        input_spec: str | None = None,
        *,
        backbone: str = "dmt-cnn",
        connection: str = "ttc",
        connection_options: dict[str, Any] | None = None,
        backbone_options: dict[str, Any] | None = None,
        name: str | None = None,
        model_name: str | None = None,
        download: bool = False,
    ) -> dict[str, Any]:
        """Create the store, empty: `input_spec` is C×H×W as text ("1x8x8"; None: the first
        task's native shape fixes it). Pretrained weights the backbone options name
        (`weights="imagenet"`) come from the library's cache, or with `download` from its
        downloader, and are copied into the store. Returns `dmt init --json`'s record."""
        from dmtcore.operations import init_store
        from dmtcore.tasks.names import InputSpec

        spec = InputSpec.parse(input_spec) if input_spec else None
        created = init_store(
            self.path,
            self.host,
            spec,
            backbone,
            connection,
            connection_options or {},
            name,
            backbone_options or {},
            model_name,
            download,
        )
        manifest = created.manifest()
        return {"store": str(self.path), "version": manifest["version"], "manifest": manifest}

    @_quietly
    def rollback(self, version: int) -> dict[str, Any]:
        """Make an earlier VERSION current again, as a new version, and publish it: the alias
        'current' of the registered model moves to the registry version of VERSION's state
        (registered anew only if it never was). The rollback is committed even when publishing
        fails; the record says why not. Returns `dmt rollback --json`'s record."""
        from dmtcore.operations import rollback

        new_version, manifest = rollback(self.path, version)
        published, not_published = self._publish(manifest, "rollback")
        return {
            "store": str(self.path),
            "version": new_version,
            "rolled_back_to": version,
            "published": published,
            "not_published": not_published,
        }

    # -- reading the store ----------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The current version and its tasks, read from JSON alone. Returns `dmt status
        --json`'s record."""
        from dmtcore.tasks.spec import higher_is_better

        manifest = Store.open(self.path).manifest()
        tasks = [
            {
                "name": t["name"],
                "plugin": t["plugin"],
                "output": t["output"],
                "sources": t["sources"],
                "primary_metric": t["primary_metric"],
                "metric": t["metrics"][t["primary_metric"]],
                "higher_is_better": higher_is_better(t["primary_metric"]),
            }
            for t in manifest["tasks"]
        ]
        from dmtcore.store import publications

        return {
            "store": str(self.path),
            "name": manifest["name"],
            "version": manifest["version"],
            "created": manifest["created"],
            "input_spec": manifest["input_spec"],
            "backbone": manifest["backbone"],
            "connection": manifest["connection"],
            "tasks": tasks,
            "publish_pending": publications.read(self.path)["pending"],
        }

    def history(self) -> list[dict[str, Any]]:
        """Every version, newest first (`dmt history --json`), with where it came from as far
        as the store knows: `published_as` (the registry version it was published as),
        `pending` (its publish was refused or failed), and for a pulled store's first version
        `pulled_from` (model URI, server, and the registry lineage before it)."""
        from dmtcore.store import publications

        known = publications.read(self.path)
        pending = known["pending"] or {}
        origin = known["pulled_from"] or {}
        entries = Store.open(self.path).history()
        for entry in entries:
            published = known["published"].get(str(entry["version"]))
            entry["published_as"] = (
                f"models:/{published['model']}/{published['version']}" if published else None
            )
            entry["pending"] = pending.get("store_version") == entry["version"]
            entry["pulled_from"] = (
                origin if origin.get("store_version") == entry["version"] else None
            )
        return entries

    def verify(self, every_version: bool = False) -> dict[str, Any]:
        """Every problem of the store: manifests, weight files and their checksums, and
        whether the current version's model (every version's with `every_version`) rebuilds.
        Needs no task plugin: only `plugins` naming a third-party backbone or connection kind.
        Returns `dmt verify --json`'s record; `ok` is False when anything is wrong."""
        from dmtcore.hooks.host import create_plugin_host
        from dmtcore.store.verify import verify_store

        host = create_plugin_host(self.plugins, autoload=False)
        versions, problems = verify_store(self.path, host.kinds, every_version)
        return {
            "store": str(self.path),
            "ok": not problems,
            "versions": versions,
            "problems": [vars(p) for p in problems],
        }

    # -- reading the model ----------------------------------------------------------------

    def evaluate(
        self, tasks: Sequence[str] = (), *, split: str = "val", **options: Any
    ) -> dict[str, Any]:
        """Metrics of stored tasks (all by default) on a split of their data, each split with
        the seed it was trained with. Returns `dmt eval --json`'s record."""
        from dmtcore.operations import evaluate_store

        settings, data = split_options(options)
        metrics = evaluate_store(
            self.path, self.host, tuple(tasks), split, settings, data, self.notify
        )
        return {"store": str(self.path), "split": split, "metrics": metrics}

    def predict(
        self,
        inputs: Sequence[str | os.PathLike[str]],
        *,
        tasks: Sequence[str] = (),
        device: str = "auto",
        batch_size: int = 256,
        out: str | os.PathLike[str] | None = None,
    ) -> dict[str, Any]:
        """Every requested task's prediction for image files or .npy arrays, in batches.
        With `out`, dense maps are written there as PNG and .npy files, region tasks' boxes
        drawn on each image as a PNG, and predictions.json, instead of returned. Returns `dmt
        predict --json`'s record. Loading a store needs no task plugin: only `plugins` naming a
        third-party backbone or connection kind."""
        if batch_size < 1:
            raise InvalidValueError(f"batch size must be a positive integer, got {batch_size}")
        from dmtcore.hooks.host import create_plugin_host
        from dmtcore.inference.predict import iter_batches, predict, predict_to_folder, task_outputs
        from dmtcore.operations import load_current, select_tasks
        from dmtcore.tasks.data import resolve_device

        paths = [Path(p) for p in inputs]
        host = create_plugin_host(self.plugins, autoload=False)
        model, manifest = load_current(self.path, host)
        names = select_tasks(manifest, list(dict.fromkeys(tasks)))
        model.to(resolve_device(device))
        outputs = task_outputs(manifest)
        summary = {"store": str(self.path), "version": manifest["version"]}
        labelled = iter_batches(paths, model.input_spec, batch_size)
        if out is not None:
            writer = predict_to_folder(model, labelled, names, outputs, Path(out))
            written = writer.finish(summary)
            return {**summary, "out": str(out), "predictions": str(written), "rows": writer.rows}
        labels: list[str] = []

        def batches() -> Iterator[Any]:
            for images, batch_labels in labelled:
                labels.extend(batch_labels)
                yield images

        result = predict(model, batches(), names, outputs)
        return {**summary, "inputs": labels, "tasks": result}

    def connections(
        self, stage: int | None = None, plot: str | os.PathLike[str] | None = None
    ) -> dict[str, Any]:
        """What the connections learned, per stage boundary: how much each task draws from
        each other (TTC gates, NDDR block norms, cross-stitch weights), read from the
        manifest without torch; `plot` also draws them into a PNG. Returns `dmt connections
        --json`'s record."""
        from dmtcore.model.connection_weights import (
            boundary_label,
            connection_label,
            relation_matrices,
            select_stage,
        )
        from dmtcore.model.connection_weights import plot as draw

        manifest = Store.open(self.path).manifest()
        names = [t["name"] for t in manifest["tasks"]]
        if not names:
            raise DmtError(f"store {str(self.path)!r} has no tasks yet: no connections to show")
        stages = select_stage(relation_matrices(manifest), stage)
        if plot is not None:
            try:
                draw(manifest, stages, Path(plot))
            except OSError as exc:
                raise InvalidValueError(
                    f"cannot write the plot to {str(plot)!r}: {exc.strerror}"
                ) from exc
        return {
            "store": str(self.path),
            "version": manifest["version"],
            "connection": manifest["connection"]["name"],
            "connection_label": connection_label(manifest),
            "tasks": names,
            "stages": [
                {"stage": number, "label": boundary_label(manifest, number), "matrix": matrix}
                for number, matrix in stages
            ],
            "plot": str(plot) if plot is not None else None,
        }

    def relate(
        self,
        tasks: Sequence[str],
        *,
        column: str | None = None,
        stage: int | None = None,
        split: str = "val",
        reduce: str = "min",
        threshold: float | None = None,
        group_count: int | None = None,
        plot: str | os.PathLike[str] | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        """Which tasks to train together (DMT §2): distances between their response contrast
        maps, label co-occurrence, and groups by average-linkage clustering; tracked as an
        MLflow run of its own where the store (or `tracking_uri`) gives it a place. Features
        come from a stored column, or from a fresh column trained briefly when the store is
        absent or empty. Returns `dmt relate --json`'s record."""
        from dmtcore.analysis.task_grouping import RelateOptions, measure, plan_relate

        settings, data = split_options({"epochs": 1, **options})
        wanted = RelateOptions(column, stage, split, reduce, threshold, group_count)
        plan = plan_relate(self.path, tuple(tasks), self.host, settings, wanted)
        tracker, run, summary = _start_relate_run(
            self.path, plan, settings, self.tracking_uri, not self.tracking, self.notify
        )
        try:
            result = measure(plan, self.host, settings, data, self.notify)
            if plot is not None:
                _relate_plot(result, Path(plot))
            if tracker is not None:
                summary["run_id"] = _finish_relate_run(tracker, result)
        except BaseException as exc:
            if tracker is not None:
                try:
                    tracker.dmt_run_failed(run=run, error=exc)
                except Exception as failure:  # the real failure is the one to report
                    self.notify(f"warning: could not report the failed run: {failure}")
            raise
        return {**result.as_dict(), "plot": str(plot) if plot is not None else None, **summary}

    @_quietly
    def register_version(self, force: bool = False) -> dict[str, Any]:
        """Publish the current version to the Model Registry (after `register=False`, or a
        publish that failed or is pending); a state registered before is not registered again:
        the alias 'current' moves to its registry version. A store whose lineage does not hold
        the registry's current version (someone else published meanwhile) is refused unless
        `force`. Returns `dmt register --json`'s record."""
        from dmt_registry.publish import publish_current

        uri, embedded = tracking_uri_for(self.path, self.tracking_uri)
        published = publish_current(self.path, uri, embedded, "register", force)
        return publication_record(published, uri)

    def promote(
        self,
        alias: str,
        *,
        version: int | None = None,
        store_version: int | None = None,
        model_name: str | None = None,
    ) -> dict[str, Any]:
        """Point ALIAS of the registered model at a registry `version`, or at the one that
        publishes `store_version` (give one). Returns `dmt promote --json`'s record."""
        from dmt_registry.publish import check_alias, registered_for_store_version, store_version_of
        from dmt_registry.publish import model_name as store_model_name
        from dmt_registry.publish import promote as set_alias
        from dmt_registry.tracking import reported_call

        if (version is None) == (store_version is None):
            raise InvalidValueError(
                "give either a registry version (models:/NAME/VERSION) or a store version"
            )
        check_alias(alias)
        name = model_name or store_model_name(Store.open(self.path).manifest())
        client, uri = registry_client(self.path, self.tracking_uri, self.notify)
        if store_version is not None:
            manifest = Store.open(self.path).manifest(store_version)
            found = reported_call(uri, lambda: registered_for_store_version(client, name, manifest))
            version = int(found)
        reported_call(uri, lambda: set_alias(client, name, str(version), alias))
        published = store_version or reported_call(
            uri, lambda: store_version_of(client, name, str(version))
        )
        return {"model": name, "version": version, "store_version": published, "alias": alias}

    # -- helpers --------------------------------------------------------------------------

    def task_from_folder(self, name: str, folder: str | os.PathLike[str]) -> None:
        """Make task NAME out of an image folder: the folder becomes a recipe, a plugin's
        `dmt_task_from_recipe` builds the task (the built-in `imagefolder` does), and the task
        is registered as that plugin's. The manifest keeps the recipe, so later commands find
        the task's data without it. Everything is checked before the store is touched."""
        from dmtcore.operations import task_from_recipe
        from dmtcore.tasks.names import validate_task_name

        validate_task_name(name)
        kinds = self.host.kinds
        if name in kinds.tasks:
            raise ConflictError(
                f"task {name!r} is already registered by plugin {kinds.owner('task', name)!r}; "
                "--from-folder needs a name no plugin uses (see 'dmt tasks')"
            )
        recipe = {"kind": "imagefolder", "folder": os.path.abspath(os.path.expanduser(folder))}
        built = task_from_recipe(self.host, name, recipe)
        if built is None:
            raise PluginError(
                "no loaded plugin builds tasks from an image folder; the built-in plugin "
                "'imagefolder' is not loaded (blocked with '-p no:imagefolder' or "
                "--no-plugin-autoload? then add '-p dmt_plugins.imagefolder')"
            )
        spec, plugin = built
        previous, kinds.current_plugin = kinds.current_plugin, plugin
        try:
            kinds.add_task(spec)
        finally:
            kinds.current_plugin = previous

    def _publish(
        self, manifest: dict[str, Any], operation: str
    ) -> tuple[dict[str, Any] | None, str | None]:
        """Publish the current version as the registered model's current one: (what was
        published, None), or (None, why not and how to)."""
        how = f"publish it with 'dmt register --store {self.path}'"
        if not self.tracking:
            return None, f"--no-tracking; alias current is unchanged, {how}"
        if not manifest["tasks"]:
            return None, "the store has no tasks at this version; alias current is unchanged"
        from dmt_registry.publish import publish_current

        uri, embedded = tracking_uri_for(self.path, self.tracking_uri)
        try:
            published = publish_current(self.path, uri, embedded, operation)
        except DmtError as exc:
            return None, f"the {operation} is committed, but publishing it failed: {exc}; {how}"
        return publication_record(published, uri), None

    def _raise_if_publish_refused(self, version: int) -> None:
        """The server refused to publish committed `version` (a fork, a permission): say so,
        with the error's exit code; the commit stands and the publish is pending."""
        refused = getattr(self._tracker, "refused", None)
        if refused is None:
            return
        self._tracker.refused = None
        raise type(refused)(
            f"version {version} is committed in {str(self.path)!r} but not published: "
            f"{refused}; the publish is pending ('dmt status' shows it, 'dmt register' "
            "publishes it)"
        )

    @contextlib.contextmanager
    def _tracking(self) -> Iterator[str | None]:
        """Log the operations run inside to MLflow (unless tracking is off); yields the URI,
        or None. Called first, before torch loads: the tracker's process
        (`dmt_registry.tracking_process`) imports MLflow meanwhile. Under torchrun only rank
        0 reports."""
        from dmtcore.runtime.distributed import current_world

        if not self.tracking or not current_world().is_main:
            yield None
            return
        from dmt_registry.tracking_process import TrackingProcess

        uri, embedded = tracking_uri_for(self.path, self.tracking_uri)
        tracker = TrackingProcess(
            uri,
            embedded,
            register=self.register,
            notify=self.notify,
            verbose=self.verbose,
            store=self.path,
        )
        try:
            self.host.register(tracker, "mlflow-tracker")
            self._tracker = tracker
            try:
                yield uri
            finally:
                self.host.unregister(tracker)
                self._tracker = None
        finally:
            tracker.close()


def list_backbones(
    input_spec: str = "3x224x224",
    names: Sequence[str] = (),
    options: dict[str, Any] | None = None,
    *,
    plugins: Sequence[str] = (),
    autoload: bool | None = None,
) -> list[dict[str, Any]]:
    """The backbones the plugins offer (or the named ones, `timm:MODEL` included), each with
    its stages' channels and reductions at `input_spec` ("3x224x224"). Returns `dmt
    backbones --json`'s rows."""
    from dmtcore.hooks.host import create_plugin_host
    from dmtcore.model.backbones.listing import list_backbones as rows
    from dmtcore.tasks.names import InputSpec

    spec = InputSpec.parse(input_spec)
    return rows(create_plugin_host(plugins, autoload=autoload).kinds, spec, names, options)


def list_weightings(
    *, plugins: Sequence[str] = (), autoload: bool | None = None
) -> list[dict[str, Any]]:
    """The loss weighting and gradient methods the plugins offer, the default first: `dmt
    weightings --json`'s rows (name, description, paper, options with their defaults,
    whether the method sees each task's gradients, and the plugin)."""
    from dmtcore.hooks.host import create_plugin_host
    from dmtcore.train.weighting import DEFAULT_WEIGHTING

    kinds = create_plugin_host(plugins, autoload=autoload).kinds
    names = sorted(kinds.weightings, key=lambda n: (n != DEFAULT_WEIGHTING, n))
    rows = []
    for name in names:
        kind = kinds.weightings[name]
        made = kind.build(["a", "b"], kind.resolve_options({}), 0)
        rows.append(
            {
                "name": name,
                "description": kind.description,
                "paper": kind.paper,
                "options": dict(kind.default_options),
                "uses_gradients": bool(made.uses_gradients),
                "plugin": kinds.owner("weighting", name),
            }
        )
    return rows


def tracking_uri_for(store: Path, tracking_uri: str | None) -> tuple[str, bool]:
    """The tracking URI to use for `store` and whether it is the store's embedded database."""
    from dmt_registry.tracking import default_tracking_uri

    embedded_uri = default_tracking_uri(store)
    uri = tracking_uri or embedded_uri
    return uri, uri == embedded_uri


def _relate_plot(result: Any, path: Path) -> None:
    from dmtcore.analysis.task_grouping import plot

    try:
        plot(result, path)
    except OSError as exc:
        raise InvalidValueError(f"cannot write the plot to {str(path)!r}: {exc.strerror}") from exc


def _start_relate_run(
    store: Path,
    plan: Any,
    settings: Any,
    tracking_uri: str | None,
    no_tracking: bool,
    notify: Notify,
) -> tuple[Any, Any, dict[str, Any]]:
    """(tracker, run, summary): the MLflow run of this `relate`, made as `register` makes
    its own and started before any work, so that a tracking server that is down fails fast.
    No run without a place for it: --no-tracking, or no store and no --tracking-uri."""
    summary: dict[str, Any] = {"tracking_uri": None, "run_id": None}
    if no_tracking:
        return None, None, summary
    if tracking_uri is None and not Store.exists(store):
        summary["tracking"] = (
            f"not logged to MLflow: no store at {str(store)!r} to hold its database; "
            "pass --tracking-uri URI to log it"
        )
        notify(summary["tracking"])
        return None, None, summary
    from dmt_registry.tracking import MlflowTracker
    from dmtcore.hooks.runinfo import RunInfo

    uri, embedded = tracking_uri_for(store, tracking_uri)
    manifest = Store.open(store).manifest() if Store.exists(store) else None
    options = plan.options
    params = {
        "tasks": ",".join(plan.names),
        **{k: getattr(options, k) for k in ("column", "stage", "split", "reduce")},
        **{k: getattr(options, k) for k in ("threshold", "groups")},
        **{k: getattr(settings, k) for k in ("epochs", "lr", "batch_size", "seed")},
    }
    run = RunInfo(
        "relate",
        plan.names,
        store,
        manifest["name"] if manifest else Path(store).resolve().name,
        manifest["version"] if manifest else None,
        params,
    )
    tracker = MlflowTracker(uri, embedded, register=False)
    tracker.dmt_run_started(run=run)
    summary["tracking_uri"] = uri
    return tracker, run, summary


def _finish_relate_run(tracker: Any, result: Any) -> str:
    """The features actually used as parameters, the groups as a tag, the matrices (JSON)
    and the plot as artifacts under relatedness/; returns the run id."""
    import json
    import tempfile

    from mlflow.entities import Param

    from dmt_registry.tracking import reported_call
    from dmtcore.analysis.task_grouping import plot

    client, run_id = tracker.client, tracker.run_id

    def log() -> None:
        features = {f"features.{k}": str(v) for k, v in result.features.items()}
        client.log_batch(run_id, params=[Param(k, v) for k, v in features.items()])
        client.set_tag(run_id, "dmt.groups", " | ".join(", ".join(g) for g in result.groups))
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / "relatedness.json").write_text(json.dumps(result.as_dict(), indent=2))
            plot(result, Path(folder) / "relatedness.png")
            client.log_artifacts(run_id, folder, artifact_path="relatedness")
        client.set_terminated(run_id, "FINISHED")

    reported_call(tracker.tracking_uri, log)
    return run_id


def registry_client(
    store: Path | None, tracking_uri: str | None, notify: Notify = _quiet
) -> tuple[Any, str]:
    """An MLflow client of the registry at `tracking_uri`, else of the store's embedded one."""
    from mlflow.tracking import MlflowClient

    if tracking_uri is None and store is None:
        raise InvalidValueError(
            "say where the registry is: --tracking-uri URI (or MLFLOW_TRACKING_URI), e.g. "
            "sqlite:///path/to/store/mlflow.db or http://host:5000"
        )
    uri, embedded = tracking_uri_for(store, tracking_uri) if store else (tracking_uri, False)
    if embedded:
        from dmt_registry.tracking import ensure_embedded_database

        ensure_embedded_database(store, lambda message: notify(f"warning: {message}"))
    return MlflowClient(tracking_uri=uri, registry_uri=uri), uri


def pull(
    model_uri: str,
    tracking_uri: str | None,
    store: str | os.PathLike[str] = "dmt-store",
    plugins: Sequence[str] = (),
) -> dict[str, Any]:
    """Rebuild a working store at `store` from a registered version (models:/NAME/3 or
    models:/NAME@current); its predictions equal the original's exactly. Returns `dmt pull
    --json`'s record."""
    from dmt_registry.publish import pull as pull_store
    from dmtcore.hooks.host import create_plugin_host

    if not tracking_uri:
        raise InvalidValueError(
            "say which registry to pull from: --tracking-uri URI (or MLFLOW_TRACKING_URI), e.g. "
            "sqlite:///path/to/store/mlflow.db or http://host:5000"
        )
    host = create_plugin_host(plugins)
    manifest = pull_store(model_uri, tracking_uri, Path(store), host.kinds).manifest()
    return {
        "store": str(store),
        "model_uri": model_uri,
        "version": manifest["version"],
        "tasks": [t["name"] for t in manifest["tasks"]],
    }


def publication_record(published: Any, uri: str) -> dict[str, Any]:
    """What a publication to the Model Registry did, as the commands print it with --json."""
    return {
        "model": published.model,
        "version": published.version,
        "store_version": published.store_version,
        "registered_store_version": published.registered_store_version,
        "created": published.created,
        "alias_moved": published.alias_moved,
        "previous": published.previous,
        "tracking_uri": uri,
    }


def split_options(options: dict[str, Any]) -> tuple[Any, Any]:
    """The training settings and data options named in `options`, each checked by name."""
    from dmtcore.operations import DataOptions
    from dmtcore.train.loop import TrainSettings

    setting_names = {f.name for f in dataclasses.fields(TrainSettings)}
    data_names = {f.name for f in dataclasses.fields(DataOptions)}
    unknown = sorted(set(options) - setting_names - data_names)
    if unknown:
        raise InvalidValueError(
            f"unknown option {unknown[0]!r}; valid: {', '.join(sorted(setting_names | data_names))}"
        )
    settings = TrainSettings(**{k: v for k, v in options.items() if k in setting_names})
    data = {k: v for k, v in options.items() if k in data_names}
    if "data_dir" in data:
        data["data_dir"] = Path(data["data_dir"])
    return settings, DataOptions(**data)
