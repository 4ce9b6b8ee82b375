"""Every hook of dmt, in one module.

Registration hooks (`dmt_register_*`) are called once per plugin, in load order, with the
same `Kinds` (as `kinds`, or as `registry` for plugins written before the rename); whatever a plugin adds is attributed to it, so duplicates name both owners.
Lifecycle hooks let plugins observe an operation (add-task, remove-task): the MLflow tracker in
`dmt_registry.tracking` is one such plugin. Lifecycle hooks return nothing; an exception raised
in one aborts the operation and leaves the store unchanged. `dmt_task_from_recipe` builds a
task that no plugin registers by name (an image folder given on the command line).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from dmtcore.hooks.kinds import Kinds
    from dmtcore.hooks.runinfo import EpochReport, RunInfo, RunResult
    from dmtcore.tasks.spec import TaskSpec

hookspec = pluggy.HookspecMarker("dmt")
hookimpl = pluggy.HookimplMarker("dmt")

# Registration hooks get the same `Kinds` under two names: `kinds`, and `registry` for plugins
# written before the rename (a hook implementation takes whichever of the two it names).


@hookspec
def dmt_register_tasks(kinds: Kinds, registry: Kinds) -> None:
    """Add the plugin's tasks with `kinds.add_task(TaskSpec(...))`.

    Called when the plugin manager is built. A task name already registered by another plugin
    is refused with an error naming both plugins.
    """


@hookspec
def dmt_register_backbones(kinds: Kinds, registry: Kinds) -> None:
    """Add column recipes with `kinds.add_backbone(BackboneKind(...))`.

    The built-in `dmt-cnn` and `resnet18` are registered through this hook like any other.
    """


@hookspec
def dmt_register_connections(kinds: Kinds, registry: Kinds) -> None:
    """Add transfer-connection kinds with `kinds.add_connection(ConnectionKind(...))`.

    The built-in kinds (`ttc`, `none`, ...) are registered through this hook like any other.
    """


@hookspec
def dmt_register_weightings(kinds: Kinds, registry: Kinds) -> None:
    """Add loss weighting and gradient methods for jointly trained tasks with
    `kinds.add_weighting(WeightingKind(...))`: `dmt train --weighting NAME` picks one.

    The built-in methods (`equal`, `uncertainty`, `dwa`, `gradnorm`, `pcgrad`, `aligned-mtl`)
    are registered through this hook like any other.
    """


@hookspec
def dmt_run_started(run: RunInfo) -> None:
    """Called once an operation has validated its inputs, right before training starts.

    A tracker that cannot reach its backend should raise here: nothing has been trained yet.
    """


@hookspec
def dmt_epoch_end(run: RunInfo, report: EpochReport) -> None:
    """Called after every epoch with the training loss, validation metrics and gate weights."""


@hookspec
def dmt_run_finished(run: RunInfo, result: RunResult) -> None:
    """Called after the new store version has been committed (the store is already safe)."""


@hookspec
def dmt_run_failed(run: RunInfo, error: BaseException) -> None:
    """Called when an operation fails or is interrupted after `dmt_run_started`; nothing was
    committed. `error` is a `KeyboardInterrupt` when the user pressed Ctrl-C."""


@hookspec(firstresult=True)
def dmt_task_from_recipe(name: str, recipe: dict[str, Any]) -> TaskSpec | None:
    """Build task `name` from a recipe, or return None if the recipe is not this plugin's.

    For tasks no plugin registers by name, e.g. `dmt add-task NAME --from-folder DIR`, whose
    recipe is `{"kind": "imagefolder", "folder": "/abs/dir"}`. The returned spec should carry
    the complete recipe in `TaskSpec.recipe`: it is stored in the manifest, and the same hook
    rebuilds the spec from it when a later command (eval, remove-task) needs the task's data.
    The first plugin that returns a spec wins; a plugin that recognises the recipe but cannot
    build it (the folder is gone) should raise a `DataError` saying what is wrong.
    """
