"""Finding a task's spec and data: the data options, a task's checked batches, the seed a
stored task's data was split with, and the specs of stored tasks (a plugin's, or rebuilt from
the recipe an image-folder task keeps).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dmtcore.errors import (
    DataError,
    DmtError,
    PluginError,
)
from dmtcore.hooks.host import PluginHost
from dmtcore.runtime.distributed import World
from dmtcore.tasks.data import Batches, load_splits
from dmtcore.tasks.names import InputSpec
from dmtcore.tasks.region_metrics import import_torchmetrics_detection
from dmtcore.tasks.spec import DataRequest, TaskSpec
from dmtcore.train.loop import (
    Target,
    TrainSettings,
    chosen_batch_size,
)


@dataclass(frozen=True)
class DataOptions:
    """Where task data lives; `download` lets a plugin fetch data (never done otherwise)."""

    data_dir: Path = Path("data")
    download: bool = False


def make_target(
    spec: TaskSpec,
    input_spec: InputSpec,
    settings: TrainSettings,
    data: DataOptions,
    device: torch.device,
    world: World = World(),
    plugin: str | None = None,
    data_seed: int | None = None,
) -> Target:
    """Load a task's splits and check their first batches, before anything trains (later
    batches are checked as they are read; messages name `plugin`, the task's). Training
    batches are this rank's share; every rank validates on the whole validation split.
    The factory gets `data_seed` (a stored task's, see `recorded_data_seed`), or the
    run's seed for a task trained now; shuffling always follows the run's seed."""
    if spec.region:  # its metrics' optional packages, before anything is read or trained
        import_torchmetrics_detection()
    seed = settings.seed if data_seed is None else data_seed
    request = DataRequest(data.data_dir, input_spec, seed, data.download)
    splits = load_splits(spec, request, plugin)
    generator = torch.Generator().manual_seed(settings.seed)
    common = {
        "workers": settings.workers,
        "declared_deterministic": splits.deterministic,
        "channels_last": settings.channels_last,
        "plugin": plugin,
    }
    share = len(splits.train) // world.size
    batch_size, note = chosen_batch_size(settings, share)
    train = Batches(
        spec,
        splits.train,
        input_spec,
        batch_size,
        True,
        device,
        generator,
        balance=settings.balance,
        shard=world.shard,
        **common,
    )
    val = Batches(spec, splits.val, input_spec, batch_size, False, device, split="val", **common)
    train.validate()
    val.validate()
    return Target(spec, train, val, [f"{spec.name}: {note}"] if note else [])


def recorded_data_seed(entry: dict[str, Any]) -> int:
    """The seed a stored task's dataset factory was given when the task was trained. Every
    later call (eval, remove-task) hands it the same one, so that a factory which splits by
    `request.seed` serves the same train/val split again: a different seed would evaluate
    on samples the task trained on. Stores written before it was recorded were trained and
    evaluated with the default seed as far as anything later could tell: 0."""
    return int(entry.get("data_seed", 0))


def task_from_recipe(
    host: PluginHost, name: str, recipe: dict[str, Any]
) -> tuple[TaskSpec, str] | None:
    """Task `name` built from `recipe` by the first plugin whose `dmt_task_from_recipe` answers,
    with that plugin's name, or None when no loaded plugin knows the recipe. The hook's
    implementations are called one by one in pluggy's order (what `firstresult` does) so that
    the task can be attributed to the plugin that built it."""
    for impl in reversed(host.hook.dmt_task_from_recipe.get_hookimpls()):
        if impl.hookwrapper or impl.wrapper:  # wrappers observe calls; they build nothing
            continue
        try:
            spec = impl.function(name=name, recipe=dict(recipe))
        except DmtError:
            raise
        except Exception as exc:
            raise PluginError(
                f"plugin {impl.plugin_name!r} failed to build task {name!r} from its recipe: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if spec is None:
            continue
        if not isinstance(spec, TaskSpec) or spec.name != name:
            raise PluginError(
                f"plugin {impl.plugin_name!r} answered the recipe of task {name!r} with "
                f"{spec!r}; expected a TaskSpec named {name!r}"
            )
        return spec, impl.plugin_name
    return None


def specs_for(
    manifest: dict[str, Any], names: Sequence[str], host: PluginHost
) -> dict[str, TaskSpec]:
    """The plugin specs of stored tasks (needed for their data), naming a missing plugin.

    A task no plugin registers by name (an image folder) is rebuilt from the recipe its
    manifest entry keeps, so later commands need not be told where its data came from."""
    specs = {}
    for entry in manifest["tasks"]:
        name = entry["name"]
        if name not in names:
            continue
        if name in host.kinds.tasks:
            specs[name] = host.kinds.tasks[name]
            continue
        recipe = entry.get("recipe")
        built = task_from_recipe(host, name, recipe) if isinstance(recipe, dict) else None
        if built is None:
            how = f" to rebuild it from its recipe of kind {recipe.get('kind')!r}" if recipe else ""
            raise PluginError(
                f"task {name!r} comes from plugin {entry.get('plugin')!r}, which is not loaded{how}; "
                "install it or pass it with -p"
            )
        spec = built[0]
        stored = (entry["output"]["kind"], entry["output"]["size"], entry.get("class_names"))
        rebuilt = (spec.output, spec.num_outputs, list(spec.class_names or []) or None)
        if rebuilt != stored:
            raise DataError(
                f"task {name!r} was trained as {stored[0]}/{stored[1]} with classes {stored[2]}, "
                f"but its recipe {recipe} now gives {rebuilt[0]}/{rebuilt[1]} with classes "
                f"{rebuilt[2]}; restore its data or add it again under another name"
            )
        specs[name] = spec
    return specs


def stored_plugins(manifest: dict[str, Any]) -> dict[str, str | None]:
    """Task -> the plugin it came from, as the manifest records it (for data messages)."""
    return {entry["name"]: entry.get("plugin") for entry in manifest["tasks"]}
