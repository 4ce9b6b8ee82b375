"""Import paths from before the sub-package layout (issue 24) keep working.

Models registered in an MLflow registry carry the code they were logged with ("models from
code"), and that code imports `dmtcore.plugins` and `dmtcore.predict`; plugins written against
the flat layout import `dmtcore.taskspec` or `dmtcore.registry`. A finder at the front of
`sys.meta_path` answers those old names with the module at its new place (the very same module
object, so there is one copy of every class) and says once, as a DeprecationWarning, where it
lives now. The names `dmtcore.model`, `dmtcore.store` and `dmtcore.operations` are packages now
and are not aliased: `from dmtcore.store import Store` and the operations still import as they did.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from types import ModuleType

MOVED = {
    "dmtcore.faults": "dmtcore.runtime.faults",
    "dmtcore.interrupts": "dmtcore.runtime.interrupts",
    "dmtcore.progress": "dmtcore.runtime.progress",
    "dmtcore.distributed": "dmtcore.runtime.distributed",
    "dmtcore.taskspec": "dmtcore.tasks.spec",
    "dmtcore.names": "dmtcore.tasks.names",
    "dmtcore.data": "dmtcore.tasks.data",
    "dmtcore.dense_labels": "dmtcore.tasks.dense_labels",
    "dmtcore.metrics": "dmtcore.tasks.metrics",
    "dmtcore.visualize": "dmtcore.tasks.visualize",
    "dmtcore.hookspecs": "dmtcore.hooks.specs",
    "dmtcore.registry": "dmtcore.hooks.kinds",
    "dmtcore.plugins": "dmtcore.hooks.host",
    "dmtcore.runinfo": "dmtcore.hooks.runinfo",
    "dmtcore.catalog": "dmtcore.hooks.catalog",
    "dmtcore.heads": "dmtcore.model.heads",
    "dmtcore.baselines": "dmtcore.model.baselines",
    "dmtcore.backbones": "dmtcore.model.backbones",
    "dmtcore.connections": "dmtcore.model.connections",
    "dmtcore.relations": "dmtcore.model.connection_weights",
    "dmtcore.manifest": "dmtcore.store.manifest",
    "dmtcore.checkpoint": "dmtcore.store.checkpoint",
    "dmtcore.verify": "dmtcore.store.verify",
    "dmtcore.kept_features": "dmtcore.store.kept_features",
    "dmtcore.training": "dmtcore.train.loop",
    "dmtcore.feature_cache": "dmtcore.train.feature_cache",
    "dmtcore.evaluation": "dmtcore.train.evaluation",
    "dmtcore.warm_start": "dmtcore.train.warm_start",
    "dmtcore.predict": "dmtcore.inference.predict",
    "dmtcore.dense_outputs": "dmtcore.inference.dense_outputs",
    "dmtcore.relatedness": "dmtcore.analysis.task_grouping",
}


def new_name(old: str) -> str | None:
    """Where module `old` lives now (submodules of a moved package included), or None."""
    parts = old.split(".")
    for end in range(len(parts), 1, -1):
        prefix = ".".join(parts[:end])
        if prefix in MOVED:
            return ".".join([MOVED[prefix], *parts[end:]])
    return None


class _Alias(importlib.abc.Loader):
    """Loads an old name by importing the new one and putting it in the old one's place."""

    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None

    def exec_module(self, module: ModuleType) -> None:
        warnings.warn(
            f"{module.__name__} moved to {self.target}; import it from there",
            DeprecationWarning,
            stacklevel=2,
        )
        # The import system returns whatever sys.modules holds under the name afterwards.
        sys.modules[module.__name__] = importlib.import_module(self.target)


class OldPathFinder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith("dmtcore."):
            return None
        new = new_name(fullname)
        return None if new is None else importlib.util.spec_from_loader(fullname, _Alias(new))


def install() -> None:
    if not any(isinstance(finder, OldPathFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, OldPathFinder())
