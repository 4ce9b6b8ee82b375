"""dmt: grow a multi-task vision model one task at a time.

The public plugin API. Importing it is cheap (no torch, no mlflow), so plugins that only
declare tasks load fast. Everything a task plugin declares comes from here (the contract of
its data: docs/plugins.md):

    from dmtcore import DataRequest, HeadSpec, TaskData, TaskSpec, hookimpl

    @hookimpl
    def dmt_register_tasks(kinds):
        kinds.add_task(TaskSpec(name="my.task", ...))

A plugin's loss weighting subclasses `dmtcore.Weighting` (loaded on first use: it needs
torch) and registers a `WeightingKind` in `dmt_register_weightings` (docs/weighting.md).
"""

from dmtcore import old_paths
from dmtcore.errors import DmtError
from dmtcore.hooks.kinds import BackboneKind, ConnectionKind, Kinds, Registry, WeightingKind
from dmtcore.hooks.specs import hookimpl
from dmtcore.tasks.names import InputSpec
from dmtcore.tasks.spec import DataRequest, HeadSpec, TaskData, TaskSpec

__all__ = [
    "BackboneKind",
    "ConnectionKind",
    "DataRequest",
    "DmtError",
    "HeadSpec",
    "InputSpec",
    "Kinds",
    "Registry",
    "TaskData",
    "TaskSpec",
    "WeightingKind",
    "hookimpl",
]
__version__ = "0.1.0"

# How dmt reads an image file for the store's input (the reader `dmt predict` uses), for
# plugins that read image files, so that a file trains exactly as it is predicted.
IMAGE_READING = {
    "read_image": "read_image",
    "image_header": "image_header",
    "ImageConversions": "Conversions",
}

old_paths.install()  # `import dmtcore.taskspec` and the other flat-layout paths still work


def __getattr__(name: str) -> object:
    """`dmtcore.open_store` and `dmtcore.ModelStore`, the Python API of the commands, and
    `dmtcore.Weighting`, the base of loss weightings, and the image reader (IMAGE_READING)
    load on first use, so that a plugin
    importing `dmtcore` pays nothing for them."""
    if name in ("open_store", "ModelStore"):
        from dmtcore import api

        return getattr(api, name)
    if name == "Weighting":
        from dmtcore.train.weighting import Weighting

        return Weighting
    if name in IMAGE_READING:
        from dmtcore.inference import predict

        return getattr(predict, IMAGE_READING[name])
    raise AttributeError(f"module 'dmtcore' has no attribute {name!r}")
