"""remove-task (DMT §4.3): cut a task out, then retrain the connections of the tasks that read
it, never ending below the state right after the cut.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from dmtcore.errors import ConflictError
from dmtcore.hooks.host import PluginHost
from dmtcore.hooks.runinfo import RunResult
from dmtcore.inference.region_outputs import boxes_source
from dmtcore.model.multitask import TrainingPlan
from dmtcore.operations.lifecycle import (
    Notify,
    commit_weights,
    committing,
    dense_previews,
    describe_store,
    epoch_hook,
    kept_features,
    operation_record,
    run_info,
    stderr,
    tracked,
    world_and_device,
    writer,
)
from dmtcore.operations.task_data import (
    DataOptions,
    make_target,
    recorded_data_seed,
    specs_for,
    stored_plugins,
)
from dmtcore.operations.task_settings import described, group_settings, task_settings
from dmtcore.runtime.faults import crash_point
from dmtcore.runtime.progress import Stage
from dmtcore.store.checkpoint import load_model
from dmtcore.store.directory import Store
from dmtcore.tasks.names import unknown_name
from dmtcore.tasks.spec import higher_is_better
from dmtcore.train.evaluation import evaluate
from dmtcore.train.loop import (
    FitResult,
    TrainSettings,
    connection_lr_mult_params,
    fit,
    joint_mode,
)
from dmtcore.train.weighting import make_weighting


def remove_task(
    path: Path,
    name: str,
    host: PluginHost,
    settings: TrainSettings = TrainSettings(epochs=3),
    data: DataOptions = DataOptions(),
    notify: Notify = stderr,
    given: Iterable[str] = (),
) -> RunResult:
    """Cut task `name` out, then retrain the connections of the tasks that read it (DMT §4.3).
    The state right after the cut is epoch 0 of the best-epoch rule, so reconnection never
    ends below it. The result's summary holds every remaining task's primary metric before,
    cut, and after, and which state was kept ('cut' or 'epoch N'). Each task retrains with
    the settings recorded when it was trained (`task_settings`), but for those named in
    `given` (the ones the command line set), which `settings` gives for all."""
    store = Store.open(path)
    # An unknown method or option fails here, before anything is loaded.
    host.kinds.weighting(settings.weighting).resolve_options(settings.weighting_options)
    world, device = world_and_device(settings)
    with writer(store, world, f"remove-task {name}"):
        manifest = store.manifest()
        stored = [t["name"] for t in manifest["tasks"]]
        if name not in stored:
            raise unknown_name("task", name, stored, f"in store {str(path)!r}")
        check_no_box_readers(manifest, name)
        remaining = [t for t in stored if t != name]
        specs = specs_for(manifest, remaining, host)
        notify(Stage(f"loading {describe_store(store, manifest)}"))
        model = load_model(store, manifest, host.kinds)
        assert model is not None
        model.to(device)
        input_spec = model.input_spec
        plugins = stored_plugins(manifest)
        seeds = {entry["name"]: recorded_data_seed(entry) for entry in manifest["tasks"]}
        recorded = {entry["name"]: entry.get("training") for entry in manifest["tasks"]}
        per_task = {t: task_settings(settings, recorded[t], given) for t in remaining}
        torch.manual_seed(settings.seed)
        targets = {}
        for t in remaining:
            notify(Stage(f"loading the data of {t}"))
            targets[t] = make_target(
                specs[t], input_spec, per_task[t], data, device, world, plugins[t], seeds[t]
            )
        notify(Stage(f"validating {', '.join(remaining)} before the cut"))
        before = {t: evaluate(model, specs[t], targets[t].val) for t in remaining}
        affected = model.remove_task(name)
        crash_point("cut")
        model.to(device)  # some kinds rebuild modules when they drop a source
        if affected:
            notify(Stage(f"cut {name} out; validating {', '.join(affected)} after the cut"))
        cut = {t: evaluate(model, specs[t], targets[t].val) for t in affected}
        model.configure_training(TrainingPlan(connections=frozenset(affected)))
        settings, used, notes = group_settings(settings, {t: per_task[t] for t in affected})
        for note in notes:
            notify(note)
        run = run_info(
            "remove-task",
            [name],
            store,
            manifest,
            {
                "task": name,
                **asdict(settings),
                "device": str(device),
                **connection_lr_mult_params(model, settings),
                "joint_mode": joint_mode([targets[t] for t in affected], settings)[0],
            },
        )

        stored_features = kept_features(store, manifest, model, settings, device, world)

        def work() -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
            result = None
            if model.param_groups():
                weighting = make_weighting(
                    host.kinds,
                    settings.weighting,
                    settings.weighting_options,
                    affected,
                    settings.seed,
                )
                result = fit(
                    model,
                    [targets[t] for t in affected],
                    settings,
                    epoch_hook(host, run, world),
                    notify,
                    world,
                    start={t: cut[t] for t in affected},
                    kept=stored_features,
                    weighting=weighting,
                    task_lr={t: s.lr for t, s in used.items()},
                )
            kept = kept_state(result)
            run.extra["previews"] = dense_previews(
                model, [targets[t] for t in affected], notify, world
            )
            if result is not None and kept == "cut" and world.is_main:
                notify(
                    f"retrained {', '.join(affected)} for {settings.epochs} epoch(s); none "
                    "beat the state right after the cut on validation, so the cut's weights "
                    "are kept (table: kept cut)"
                )
            after = {
                t: (result.metrics[t] if result and t in result.metrics else cut.get(t, before[t]))
                for t in remaining
            }
            new = copy.deepcopy(manifest)
            new["tasks"] = [t for t in new["tasks"] if t["name"] != name]
            for entry in new["tasks"]:
                entry["sources"] = list(model.tasks[entry["name"]].sources)
                if entry["name"] in affected:
                    entry["metrics"] = after[entry["name"]]
            report = {
                t: {
                    "metric": specs[t].primary_metric,
                    "before": before[t][specs[t].primary_metric],
                    "cut": cut.get(t, before[t])[specs[t].primary_metric],
                    "after": after[t][specs[t].primary_metric],
                    "higher_is_better": higher_is_better(specs[t].primary_metric),
                    "reconnected": t in affected,
                    "kept": kept if t in affected else None,
                }
                for t in remaining
            }
            new["operation"] = {
                **operation_record("remove-task", [name], settings, result, after),
                "report": report,
                "task_settings": described(used, targets),
            }
            notify(Stage(committing(store)))
            commit_weights(store, model, new, set(affected), write=world.is_main)
            return new, after

        return tracked(host, run, store, work, notify, world, stored_features)


def check_no_box_readers(manifest: dict[str, Any], name: str) -> None:
    """Refuse to remove a detection task whose boxes a box-attributes task describes at predict:
    without them that task could not predict, so it goes first (its own remove-task)."""
    readers = [
        t["name"]
        for t in manifest["tasks"]
        if t["output"]["kind"] == "box-attributes" and boxes_source(manifest, t) == name
    ]
    if readers:
        listed = ", ".join(repr(r) for r in readers)
        verb = "describes" if len(readers) == 1 else "describe"
        raise ConflictError(
            f"task {name!r} finds the boxes that {listed} {verb} at predict (boxes_from); "
            f"remove {listed} first, e.g. 'dmt remove-task {readers[0]}'"
        )


def kept_state(result: FitResult | None) -> str:
    """Which state reconnection kept: 'cut' (no epoch beat the state right after the cut, or
    nothing was trainable) or 'epoch N' (the best one, as the best-epoch rule chose)."""
    if result is None or result.best_epoch == 0:
        return "cut"
    return f"epoch {result.best_epoch}"
