"""The dmt model as an MLflow pyfunc, in MLflow's "models from code" form.

MLflow runs this file to load a registered dmt model; nothing is unpickled. The model's only
artifact is `store`: a one-version dmt store (CURRENT, the version's manifest, and the
safetensors blobs it names), loaded with checksums verified. Loading needs dmt installed, but no
task plugin.

Input, either:
- a batch of numbers N×C×H×W (`{"inputs": [...]}` to `mlflow models serve`), decoded like
  `dmt predict` decodes `.npy` arrays (uint8 and uint16 scaled by their range, other numbers
  taken as they are) and adapted to the store's input spec; or
- a DataFrame whose `image` column (or only column) holds image file paths, raw bytes, or base64
  text of encoded images (`{"dataframe_split": {"columns": ["image"], "data": [["iVBOR..."]]}}`).
Output: one row per image with, for every task, the prediction (class name or index, 0/1 labels,
or values) and `<task>.probabilities`. A pixel-level task's prediction is a map at the store's
input size, as nested lists: class ids H×W for segmentation (with `<task>.probabilities`, the
per-pixel softmax K×H×W), depth H×W, unit normals 3×H×W (no probabilities column for those two).
The optional param `tasks` (comma-separated) selects tasks.
The logged signature declares the `tasks` param and leaves the input open, since MLflow's schema
enforcement cannot accept both input forms; `predict` checks its input itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
from mlflow.pyfunc import PythonModel


class DmtModel(PythonModel):
    """Every task of one store version, computed together in one pass per batch."""

    # `predict` has no type hints (see there): this tells MLflow not to derive a schema from
    # them, as its own ChatModel does, instead of warning at every load that it cannot.
    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        from dmtcore.operations import load_current
        from dmtcore.plugins import create_plugin_host
        from dmtcore.predict import task_outputs

        self.model, self.manifest = load_current(
            Path(context.artifacts["store"]), create_plugin_host(autoload=False)
        )
        self.outputs = task_outputs(self.manifest)

    def predict(self, context, model_input, params=None):
        # No type hints on purpose: MLflow would try (and fail) to derive a schema from them;
        # the logged signature is the schema.
        import numpy as np
        import pandas as pd

        from dmtcore.errors import DataError
        from dmtcore.operations import select_tasks
        from dmtcore.predict import decode_array, decode_images, predict

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
