"""The operations users run on a store: init, add-task and train, remove-task, eval, rollback.

Each mutation validates everything it can before training, holds the writer lock, reports to
the lifecycle hooks, and commits exactly one new version at the very end (`lifecycle`); any
failure before that (bad data, NaN loss, Ctrl-C) leaves the store as it was. One module per
operation; the functions a caller needs are importable from here.
"""

from dmtcore.operations.adding import (
    INIT_AUTO,
    INIT_NONE,
    add_task,
    baseline_metrics,
    check_init_from,
    train_tasks,
    warm_start,
)
from dmtcore.operations.evaluating import evaluate_store, load_current, select_tasks
from dmtcore.operations.init import DEFAULT_BACKBONE, DEFAULT_CONNECTION, init_store
from dmtcore.operations.lifecycle import kept_features
from dmtcore.operations.removing import remove_task
from dmtcore.operations.rolling_back import rollback
from dmtcore.operations.task_data import (
    DataOptions,
    make_target,
    recorded_data_seed,
    specs_for,
    stored_plugins,
    task_from_recipe,
)

__all__ = [
    "DEFAULT_BACKBONE",
    "DEFAULT_CONNECTION",
    "INIT_AUTO",
    "INIT_NONE",
    "DataOptions",
    "add_task",
    "baseline_metrics",
    "check_init_from",
    "evaluate_store",
    "init_store",
    "kept_features",
    "load_current",
    "make_target",
    "recorded_data_seed",
    "remove_task",
    "rollback",
    "select_tasks",
    "specs_for",
    "stored_plugins",
    "task_from_recipe",
    "train_tasks",
    "warm_start",
]
