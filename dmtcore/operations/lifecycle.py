"""How every mutation runs: on which device and processes, under the writer lock, between the
lifecycle hooks, committing exactly one version at the very end (frozen tasks' blobs checked
unchanged), with the stage notices and preview images it reports.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict
from typing import Any

import torch

from dmtcore.errors import (
    StoreError,
    first_line,
)
from dmtcore.hooks.host import PluginHost
from dmtcore.hooks.runinfo import RunInfo, RunResult
from dmtcore.model.multitask import MultiTaskModel
from dmtcore.runtime import interrupts
from dmtcore.runtime.distributed import World, current_world, device_name, join
from dmtcore.store.checkpoint import serialise_weights
from dmtcore.store.directory import Store
from dmtcore.store.kept_features import KeptFeatures, column_keys
from dmtcore.tasks.data import resolve_device
from dmtcore.train.loop import (
    FitResult,
    Target,
    TrainSettings,
)

Notify = Callable[[str], None]


def stderr(message: str) -> None:
    print(message, file=sys.stderr)


def tracked(
    host: PluginHost,
    run: RunInfo,
    store: Store,
    work: Callable[[], tuple[dict[str, Any], dict[str, dict[str, float]]]],
    notify: Notify = stderr,
    world: World = World(),
    kept: KeptFeatures | None = None,
) -> RunResult:
    """Run `work` (train, then return the manifest to commit and final metrics) between the
    lifecycle hooks. Before the commit any failure is reported to the hooks and re-raised,
    nothing committed; after it, the version stands and a failing hook is only a warning.
    Under torchrun only rank 0 reports and commits; the other ranks wait for its commit.
    Features computed to be `kept` are written after the commit, and only then."""
    if not world.is_main:
        manifest, metrics = work()
        world.barrier()
        version = store.current_version()
        return RunResult(version, metrics, store.version_path(version), manifest["operation"])
    host.hook.dmt_run_started(run=run)
    try:
        manifest, metrics = work()
        interrupts.check()  # a stop asked for during the last steps: do not commit
        version = store.commit(manifest)
    except BaseException as exc:
        try:
            store.remove_unfinished_writes()  # weight files of a commit that never happened
        except Exception as cleanup_error:
            notify(f"warning: could not clean up the unfinished write: {cleanup_error}")
        try:
            host.hook.dmt_run_failed(run=run, error=exc)
        except Exception as hook_error:  # never hide the real failure behind a tracking one
            notify(f"warning: could not report the failed run: {hook_error}")
        raise
    if kept is not None:
        try:
            kept.flush()
        except (OSError, StoreError) as exc:
            notify(f"warning: version {version} is committed, but keeping features failed: {exc}")
    world.barrier()
    result = RunResult(version, metrics, store.version_path(version), manifest["operation"])
    try:
        host.hook.dmt_run_finished(run=run, result=result)
    except (Exception, KeyboardInterrupt) as exc:
        notify(f"warning: version {version} is committed, but reporting it failed: {exc!r}")
    return result


def run_info(
    operation: str, tasks: list[str], store: Store, manifest: dict[str, Any], params: dict[str, Any]
) -> RunInfo:
    return RunInfo(
        operation=operation,
        tasks=tasks,
        store_path=store.path,
        store_name=manifest["name"],
        parent_version=manifest["version"],
        params={
            "backbone": manifest["backbone"]["name"],
            "connection": manifest["connection"]["name"],
            **{f"connection.{k}": v for k, v in manifest["connection"]["options"].items()},
            **params,
        },
    )


def world_and_device(settings: TrainSettings) -> tuple[World, torch.device]:
    """Join torchrun's process group, if any, on the device this rank trains on."""
    device = resolve_device(device_name(settings.device, current_world()))
    return join(device.type), device


def writer(store: Store, world: World, command: str) -> Any:
    """The writer lock; under torchrun rank 0 holds it for all ranks."""
    return store.writer(command) if world.is_main else nullcontext()


def epoch_hook(host: PluginHost, run: RunInfo, world: World) -> Callable[[Any], None]:
    """Epoch reports go to the lifecycle hooks (MLflow) from rank 0 only."""
    if not world.is_main:
        return lambda report: None
    return lambda report: host.hook.dmt_epoch_end(run=run, report=report)


def operation_record(
    kind: str,
    tasks: list[str],
    settings: TrainSettings,
    result: FitResult | None,
    metrics: dict[str, Any],
) -> dict[str, Any]:
    return {
        "name": kind,
        "tasks": tasks,
        "settings": asdict(settings),
        "best_epoch": result.best_epoch if result else None,
        "metrics": metrics,
        "feature_cache": result.feature_cache if result else {},
        "bn_recalibrated": result.bn_recalibrated if result else False,
        "connection_lr_mult": result.connection_lr_mult if result else None,
        "joint_mode": result.joint_mode if result else None,
        **({"weighting": result.weighting} if result and result.weighting else {}),
    }


def commit_weights(
    store: Store,
    model: MultiTaskModel,
    manifest: dict[str, Any],
    trained: set[str],
    write: bool = True,
) -> None:
    """Write the blobs and relation weights of every task into `manifest` (blobs only if
    `write`: rank 0 alone writes). Frozen tasks must serialise to the very blobs they had: if
    one did not, something changed an old task, and nothing at all is written."""
    blobs = {
        name: {part: (hashlib.sha256(data).hexdigest(), data) for part, data in parts.items()}
        for name, parts in serialise_weights(model).items()
    }
    relations = model.relation_weights()
    for task in manifest["tasks"]:
        refs = {part: {"sha256": sha256} for part, (sha256, _) in blobs[task["name"]].items()}
        if task["name"] not in trained and task["weights"] and task["weights"] != refs:
            raise StoreError(f"refusing to commit: the frozen task {task['name']!r} changed")
        task["weights"] = refs
        task["relations"] = relations[task["name"]]
    if not write:
        return
    for parts in blobs.values():
        for sha256, data in parts.values():
            store.write_blob(data, sha256)


def kept_features(
    store: Store,
    manifest: dict[str, Any],
    model: MultiTaskModel,
    settings: TrainSettings,
    device: torch.device,
    world: World,
) -> KeptFeatures | None:
    """The store's features of frozen columns kept across operations, for this one; None when
    turned off (--kept-features-mb 0), with the feature cache off, or under torchrun (rank 0
    alone writes the store, and the others would read what it is writing)."""
    if settings.kept_features_mb <= 0 or settings.feature_cache == "off" or world.size > 1:
        return None
    context = (
        f"torch {torch.__version__}, {device.type}, channels_last {settings.channels_last}, "
        f"head_fusion {model.head_fusion}"
    )
    sources = {name: list(model.tasks[name].sources) for name in model.tasks}
    keys = column_keys(manifest, sources, context)
    return KeptFeatures(store, keys, int(settings.kept_features_mb * 2**20))


def describe_store(store: Store, manifest: dict[str, Any]) -> str:
    """'store dmt-store (version 3: digits.class, digits.even)', for a stage notice; past a few
    tasks, only their number."""
    names = [t["name"] for t in manifest["tasks"]]
    tasks = ", ".join(names) if len(names) <= 4 else f"{len(names)} tasks"
    return f"store {store.path} (version {manifest['version']}: {tasks or 'no tasks yet'})"


def committing(store: Store) -> str:
    return f"committing version {store.current_version() + 1} to store {store.path}"


def dense_previews(
    model: MultiTaskModel, targets: list[Target], notify: Notify, world: World
) -> dict[str, Any]:
    """Input / truth / prediction grids of the trained dense tasks, for the tracker to show.
    A picture is never worth a failed run: a problem drawing one is a warning."""
    previews: dict[str, Any] = {}
    if not world.is_main:
        return previews
    from dmtcore.inference.dense_outputs import dense_preview

    for target in targets:
        if target.spec.dense:
            try:
                previews[target.spec.name] = dense_preview(model, target.spec, target.val)
            except Exception as exc:  # a preview must not cost the version
                notify(f"warning: no preview image for {target.spec.name!r}: {first_line(exc)}")
    return previews
