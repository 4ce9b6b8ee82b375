"""What a task plugin declares: the data, the output, the head, the loss and the metrics.

Everything here is plain data (no torch import) so that listing tasks stays fast and a store's
manifest can describe a task without the plugin that defined it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from dmtcore.errors import InvalidValueError
from dmtcore.names import InputSpec, validate_task_name

OutputKind = Literal[
    "binary", "multiclass", "multilabel", "regression", "segmentation", "depth", "normals"
]
IMAGE_KINDS: tuple[str, ...] = ("binary", "multiclass", "multilabel", "regression")
# Pixel-level kinds: one output map per image, at the store's input size (NDDR-CNN §4).
DENSE_KINDS: tuple[str, ...] = ("segmentation", "depth", "normals")
OUTPUT_KINDS: tuple[str, ...] = IMAGE_KINDS + DENSE_KINDS
# Unlabelled pixels of a segmentation mask (the NYUv2 convention of MTAN and LibMTL). Depth
# marks them with 0, normals with an all-zero vector.
IGNORE_LABEL = -1
# Output channels fixed by the kind; the others are the plugin's to give.
FIXED_OUTPUTS = {"binary": 2, "depth": 1, "normals": 3}

DEFAULT_LOSS = {
    "binary": "cross_entropy",
    "multiclass": "cross_entropy",
    "multilabel": "bce_with_logits",
    "regression": "mse",
    "segmentation": "pixel_cross_entropy",
    "depth": "depth_l1",
    "normals": "cosine",
}
DEFAULT_METRICS = {
    "binary": ("balanced_accuracy", "accuracy"),
    "multiclass": ("accuracy", "balanced_accuracy"),
    "multilabel": ("label_accuracy",),
    "regression": ("neg_mae", "neg_rmse"),
    "segmentation": ("miou", "pixel_accuracy"),
    "depth": ("abs_rel", "rmse", "delta1", "abs_err"),
    "normals": ("mean_angle", "median_angle", "within_11_25", "within_22_5", "within_30"),
}
HEAD_KINDS = ("linear", "mlp", "dense")
DENSE_HEAD_WIDTH = 64
# Losses and metrics a kind may use (implemented in dmtcore.metrics).
LOSSES_BY_KIND = {
    **{kind: ("cross_entropy",) for kind in ("binary", "multiclass")},
    "multilabel": ("bce_with_logits",),
    "regression": ("mse", "l1"),
    "segmentation": ("pixel_cross_entropy",),
    "depth": ("depth_l1", "berhu"),
    "normals": ("cosine",),
}
METRICS_BY_KIND = {
    "binary": ("accuracy", "balanced_accuracy"),
    "multiclass": ("accuracy", "balanced_accuracy"),
    "multilabel": ("label_accuracy",),
    "regression": ("neg_mae", "neg_rmse"),
    **{kind: DEFAULT_METRICS[kind] for kind in DENSE_KINDS},
}
LOSS_NAMES = tuple(dict.fromkeys(n for names in LOSSES_BY_KIND.values() for n in names))
METRIC_NAMES = tuple(dict.fromkeys(n for names in METRICS_BY_KIND.values() for n in names))
# Errors are better when lower; everything else when higher. The best-epoch rule, reports and
# tracking read the direction from here rather than assuming one.
LOWER_IS_BETTER = frozenset({"abs_rel", "rmse", "abs_err", "mean_angle", "median_angle"})


def higher_is_better(metric: str) -> bool:
    return metric not in LOWER_IS_BETTER


@dataclass(frozen=True)
class HeadSpec:
    """A declarative head: `linear`, or `mlp` with hidden widths, for image-level tasks; `dense`
    for pixel-level ones (an ASPP-lite decoder of `hidden[0]` channels, upsampled to the
    input size). Outputs come from the task."""

    kind: str = "linear"
    hidden: tuple[int, ...] = ()
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in HEAD_KINDS:
            raise InvalidValueError(
                f"unknown head kind {self.kind!r}; valid: {', '.join(HEAD_KINDS)}"
            )
        if self.kind == "dense" and not self.hidden:
            object.__setattr__(self, "hidden", (DENSE_HEAD_WIDTH,))
        if self.kind == "dense" and len(self.hidden) != 1:
            raise InvalidValueError(
                f"a 'dense' head has one width (its decoder's channels), got hidden={self.hidden}"
            )
        if self.kind == "mlp" and not self.hidden:
            raise InvalidValueError(
                "an 'mlp' head needs at least one hidden width, e.g. hidden=(128,)"
            )
        if any(int(h) < 1 for h in self.hidden):
            raise InvalidValueError(f"head hidden widths must be positive, got {self.hidden}")
        if not 0.0 <= self.dropout < 1.0:
            raise InvalidValueError(f"head dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "hidden": list(self.hidden), "dropout": self.dropout}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HeadSpec:
        return cls(
            str(data["kind"]),
            tuple(int(h) for h in data.get("hidden", ())),
            float(data.get("dropout", 0.0)),
        )


@dataclass(frozen=True)
class DataRequest:
    """What the engine tells a dataset factory: where data lives and what size it will use.

    `seed` is the task's split seed: the `--seed` it was added with, recorded in the manifest
    and given again on every later call (eval, remove-task), so a factory that splits its
    samples by it serves the same train/val split each time. Randomness that may vary between
    runs, such as augmentation, should draw from torch's global RNG, which dmt seeds from the
    command's `--seed`."""

    data_dir: Path
    input_spec: InputSpec | None
    seed: int = 0
    download: bool = False


@dataclass
class TaskData:
    """The splits a dataset factory returns: torch datasets of (image C×H×W float in [0, 1], label).

    `deterministic` says that a sample's image is the same every time it is read (no random
    augmentation), which lets training reuse the frozen columns' features of earlier epochs.
    `None` means: true for in-memory `TensorDataset`s, false for anything else."""

    train: Any
    val: Any
    test: Any = None
    deterministic: bool | None = None


DatasetFactory = Callable[[DataRequest], "TaskData | tuple[Any, Any]"]


@dataclass(frozen=True)
class TaskSpec:
    """A task a plugin offers. Only name, description, input_shape, output and datasets are required.

    `num_outputs` defaults to 2 for binary tasks (a two-way softmax, so every task reports
    probabilities the same way), 1 for depth and 3 for normals; multiclass, multilabel,
    regression and segmentation tasks must give it.

    Pixel-level kinds (`DENSE_KINDS`) label every pixel: segmentation an H×W integer map of
    class ids (`IGNORE_LABEL` for unlabelled pixels), depth a 1×H×W float map (0 where there
    is no ground truth), normals a 3×H×W map of unit vectors (all-zero where there is none).

    `recipe` is for tasks that no plugin registers by name, such as an image folder given on
    the command line: a JSON-able description from which a plugin's `dmt_task_from_recipe`
    hook rebuilds the spec. It is stored in the manifest, so later commands (eval,
    remove-task) find the task's data again without being told where it came from.
    """

    name: str
    description: str
    input_shape: tuple[int, int, int]
    output: OutputKind
    datasets: DatasetFactory = field(repr=False)
    num_outputs: int | None = None
    head: HeadSpec | None = None  # linear for image-level kinds, dense for pixel-level ones
    loss: str | None = None
    metrics: Sequence[str] | None = None
    primary_metric: str | None = None
    class_names: Sequence[str] | None = None
    recipe: dict[str, Any] | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        validate_task_name(self.name)
        if self.output not in OUTPUT_KINDS:
            raise InvalidValueError(
                f"task {self.name!r}: unknown output kind {self.output!r}; valid: {', '.join(OUTPUT_KINDS)}"
            )
        InputSpec.from_shape(self.input_shape)
        object.__setattr__(self, "input_shape", tuple(int(s) for s in self.input_shape))
        fixed = FIXED_OUTPUTS.get(self.output)
        if self.num_outputs is None:
            if fixed is None:
                raise InvalidValueError(
                    f"task {self.name!r}: {self.output} tasks must set num_outputs"
                )
            object.__setattr__(self, "num_outputs", fixed)
        if fixed is not None and self.num_outputs != fixed:
            raise InvalidValueError(
                f"task {self.name!r}: {self.output} tasks have num_outputs={fixed}, "
                f"got {self.num_outputs}"
            )
        two_or_more = ("multiclass", "segmentation")
        if self.num_outputs < 1 or (self.output in two_or_more and self.num_outputs < 2):
            raise InvalidValueError(
                f"task {self.name!r}: num_outputs={self.num_outputs} is too small"
            )
        if not callable(self.datasets):
            raise InvalidValueError(
                f"task {self.name!r}: datasets must be a callable DataRequest -> TaskData"
            )
        self._resolve_head()
        if self.loss is None:
            object.__setattr__(self, "loss", DEFAULT_LOSS[self.output])
        if self.metrics is None:
            object.__setattr__(self, "metrics", DEFAULT_METRICS[self.output])
        object.__setattr__(self, "metrics", tuple(self.metrics))
        for value, valid, known, what in [
            (self.loss, LOSSES_BY_KIND[self.output], LOSS_NAMES, "loss"),
            *((m, METRICS_BY_KIND[self.output], METRIC_NAMES, "metric") for m in self.metrics),
        ]:
            if value not in valid:
                problem = "does not fit" if value in known else "is unknown for"
                raise InvalidValueError(
                    f"task {self.name!r}: {what} {value!r} {problem} a {self.output} task; "
                    f"valid: {', '.join(valid)}"
                )
        if self.primary_metric is None:
            object.__setattr__(self, "primary_metric", self.metrics[0])
        if self.primary_metric not in self.metrics:
            raise InvalidValueError(
                f"task {self.name!r}: primary metric {self.primary_metric!r} is not among its metrics {list(self.metrics)}"
            )
        if self.class_names is not None:
            object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
            if (
                self.output in ("binary", "multiclass", "segmentation")
                and len(self.class_names) != self.num_outputs
            ):
                raise InvalidValueError(
                    f"task {self.name!r}: {len(self.class_names)} class names for {self.num_outputs} outputs"
                )
        if self.recipe is not None:
            if not isinstance(self.recipe, dict):
                raise InvalidValueError(
                    f"task {self.name!r}: recipe must be a dict, got {type(self.recipe).__name__}"
                )
            try:  # a private copy, exactly as the manifest will hold it
                recipe = json.loads(json.dumps(self.recipe, allow_nan=False))
            except (TypeError, ValueError) as exc:
                raise InvalidValueError(
                    f"task {self.name!r}: recipe must be JSON-able (it goes into the manifest): {exc}"
                ) from exc
            object.__setattr__(self, "recipe", recipe)

    @property
    def dense(self) -> bool:
        """Whether the task labels every pixel (and needs a column with spatial features)."""
        return self.output in DENSE_KINDS

    def _resolve_head(self) -> None:
        head = self.head
        if head is None:
            head = HeadSpec("dense") if self.dense else HeadSpec()
            object.__setattr__(self, "head", head)
        if not isinstance(head, HeadSpec):
            raise InvalidValueError(
                f"task {self.name!r}: head must be a HeadSpec, got {type(head).__name__}"
            )
        if (head.kind == "dense") != self.dense:
            valid = "dense" if self.dense else "linear or mlp"
            raise InvalidValueError(
                f"task {self.name!r}: a {self.output} task cannot have a {head.kind!r} head; "
                f"valid: {valid}"
            )

    def describe(self) -> dict[str, Any]:
        """The part of the spec a store keeps, so the task can be used without its plugin."""
        return {
            "description": self.description,
            "native_input_shape": list(self.input_shape),
            "output": {"kind": self.output, "size": self.num_outputs},
            "head": self.head.to_dict(),
            "loss": self.loss,
            "metrics": list(self.metrics),
            "primary_metric": self.primary_metric,
            "class_names": list(self.class_names) if self.class_names else None,
            # Only tasks built from a recipe carry one; manifests without it stay as they were.
            **({"recipe": self.recipe} if self.recipe is not None else {}),
        }
