"""The dmt model as an MLflow pyfunc, in MLflow's "models from code" form.

MLflow runs this file to load a registered dmt model; nothing is unpickled. The model's only
artifact is `store`: a one-version dmt store (CURRENT, the version's manifest, and the
safetensors blobs it names), loaded with checksums verified. Loading needs dmt installed, but no
task plugin.

Every published store version is logged twice from this file, with one signature each:
- `model`, the registered version (`models:/NAME@current`): input schema Tensor float32
  (-1, C, H, W) at the store's input spec, values in [0, 1] (`{"inputs": [...]}` to
  `mlflow models serve`);
- `model-images`, in the same run (its URI is the version's tag `dmt.images_model` and the
  `dmt_images_model` metadata of `model`): input schema a string column `image` of image file
  paths or base64 text of encoded images, adapted to the input spec like `dmt predict` does
  (`{"dataframe_split": {"columns": ["image"], "data": [["iVBOR..."]]}}`).
Why two models and not one: MLflow enforces a declared input schema before `predict` runs,
and no schema admits both a float tensor and a column of strings except one that says nothing
(Tensor object (-1,)). A params switch cannot help (the input is checked whatever the params),
and an open schema leaves the UI, `mlflow models serve` and clients unable to tell what to send.
So each form has a real schema, checked by MLflow, and the same code; called directly
(`unwrap_python_model().predict(None, x)`, no schema), `predict` still takes either form, and
raw bytes in the `image` column, and uint8/uint16 arrays (scaled by their range).
Output: one row per image with, for every task, the prediction (class name or index, 0/1 labels,
or values) and `<task>.probabilities`. A pixel-level task's prediction is a map at the store's
input size, as nested lists: class ids H×W for segmentation (with `<task>.probabilities`, the
per-pixel softmax K×H×W), depth H×W, unit normals 3×H×W (no probabilities column for those two).
A region task's column is of dtype object and holds, per image, a list (best first, possibly
empty) of dicts of plain Python values: `{"box": [x1, y1, x2, y2], "label": class name or id,
"score": s}` for detection, `{"box": [...], "attributes": [names], "probabilities": [one per
attribute]}` for box-attributes (no `<task>.probabilities` column for either), boxes in pixels of
the store's input; `mlflow models serve` answers them as JSON records, unchanged.
The optional param `tasks` (comma-separated) selects tasks.
Errors of the input or params (an unknown task, an undecodable image) are raised as an
`MlflowException` INVALID_PARAMETER_VALUE carrying dmt's one-line message: MLflow's scoring
server answers those with HTTP 400 and the message, where any other exception becomes a generic
400 with the useful line buried in a stack trace.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel


class InvalidInput(MlflowException):
    """dmt's message for a bad request, as MLflow reports it: HTTP 400, no stack trace.

    MLflow's scoring server rewrites a model's `MlflowException` message to "Failed to predict
    data '<the whole request>'. Error: ...", so the message is kept as dmt wrote it; the dmt
    error is its `__cause__` (and `dmt_error`)."""

    def __init__(self, error: Exception) -> None:
        self.dmt_error = error
        super().__init__(str(error), error_code=INVALID_PARAMETER_VALUE)

    @property
    def message(self) -> str:
        return str(self.dmt_error)

    @message.setter
    def message(self, value: str) -> None:
        pass


class DmtModel(PythonModel):
    """Every task of one store version, computed together in one pass per batch."""

    # `predict` has no type hints (see there): this tells MLflow not to derive a schema from
    # them, as its own ChatModel does, instead of warning at every load that it cannot.
    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        from dmtcore.hooks.host import create_plugin_host
        from dmtcore.inference.predict import task_outputs
        from dmtcore.operations import load_current

        self.model, self.manifest = load_current(
            Path(context.artifacts["store"]), create_plugin_host(autoload=False)
        )
        self.outputs = task_outputs(self.manifest)

    def predict(self, context, model_input, params=None):
        # No type hints on purpose: MLflow would try (and fail) to derive a schema from them;
        # the logged signature is the schema.
        from dmtcore.errors import DmtError

        try:
            return self._predict(model_input, params)
        except DmtError as exc:
            raise InvalidInput(exc) from exc

    def _predict(self, model_input: Any, params: dict[str, Any] | None) -> Any:
        import numpy as np
        import pandas as pd

        from dmtcore.errors import DataError
        from dmtcore.inference.predict import decode_array, decode_images, predict
        from dmtcore.operations import select_tasks

        requested = [t for t in str((params or {}).get("tasks") or "").split(",") if t]
        tasks = select_tasks(self.manifest, requested)
        if isinstance(model_input, pd.DataFrame):
            if "image" not in model_input.columns and len(model_input.columns) != 1:
                raise DataError(
                    f"expected an 'image' column, got columns {list(model_input.columns)}"
                )
            column = (
                model_input["image"] if "image" in model_input.columns else model_input.iloc[:, 0]
            )
            images = decode_images(list(column), self.model.input_spec)
        else:
            images = decode_array(np.asarray(model_input), self.model.input_spec, "the input")
        batches = (images[i : i + 256] for i in range(0, len(images), 256))
        result = predict(self.model, batches, tasks, self.outputs)
        columns: dict[str, list[Any]] = {}
        for task in tasks:
            columns[task] = result[task]["prediction"]
            if "probabilities" in result[task]:
                columns[f"{task}.probabilities"] = result[task]["probabilities"]
        return pd.DataFrame(columns)


mlflow.models.set_model(DmtModel())
