"""dmt: grow a multi-task vision model one task at a time.

The public plugin API. Importing it is cheap (no torch, no mlflow), so plugins that only
declare tasks load fast. Everything a task plugin declares comes from here (the contract of
its data: README, "Writing a task plugin"):

    from dmtcore import DataRequest, HeadSpec, TaskData, TaskSpec, hookimpl

    @hookimpl
    def dmt_register_tasks(registry):
        registry.add_task(TaskSpec(name="my.task", ...))
"""

from dmtcore.errors import DmtError
from dmtcore.hookspecs import hookimpl
from dmtcore.registry import BackboneKind, ConnectionKind, Registry
from dmtcore.taskspec import DataRequest, HeadSpec, TaskData, TaskSpec

__all__ = [
    "BackboneKind",
    "ConnectionKind",
    "DataRequest",
    "DmtError",
    "HeadSpec",
    "Registry",
    "TaskData",
    "TaskSpec",
    "hookimpl",
]
__version__ = "0.1.0"
