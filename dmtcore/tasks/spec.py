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
from dmtcore.tasks.names import InputSpec, validate_task_name

OutputKind = Literal[
    "binary",
    "multiclass",
    "multilabel",
    "regression",
    "segmentation",
    "depth",
    "normals",
    "detection",
    "box-attributes",
]
IMAGE_KINDS: tuple[str, ...] = ("binary", "multiclass", "multilabel", "regression")
# Pixel-level kinds: one output map per image, at the store's input size (NDDR-CNN §4).
DENSE_KINDS: tuple[str, ...] = ("segmentation", "depth", "normals")
# Region-level kinds (cross-stitch §6.4): a list of boxes per image. `detection` finds them
# (xyxy in pixels, a class id each); `box-attributes` gives every box a multi-hot vector.
REGION_KINDS: tuple[str, ...] = ("detection", "box-attributes")
OUTPUT_KINDS: tuple[str, ...] = IMAGE_KINDS + DENSE_KINDS + REGION_KINDS
# Unlabelled pixels of a segmentation mask (the NYUv2 convention of MTAN and LibMTL): the
# default of `TaskSpec.ignore_label`, and the value every declared one becomes in the targets
# the loss and metrics take. Depth marks them with 0, normals with an all-zero vector.
IGNORE_LABEL = -1
# A declared ignore value must fit the int32 labels of any dataset (and the manifest).
IGNORE_LABEL_RANGE = (-(2**31), 2**31 - 1)
# Output channels fixed by the kind; the others are the plugin's to give.
FIXED_OUTPUTS = {"binary": 2, "depth": 1, "normals": 3}
# Kinds whose class_names name every output (for box-attributes: the attributes).
NAMED_OUTPUT_KINDS = ("binary", "multiclass", "segmentation", *REGION_KINDS)

DEFAULT_LOSS = {
    "binary": "cross_entropy",
    "multiclass": "cross_entropy",
    "multilabel": "bce_with_logits",
    "regression": "mse",
    "segmentation": "pixel_cross_entropy",
    "depth": "depth_l1",
    "normals": "cosine",
    "detection": "fcos",
    "box-attributes": "attribute_bce",
}
DEFAULT_METRICS = {
    "binary": ("balanced_accuracy", "accuracy"),
    "multiclass": ("accuracy", "balanced_accuracy"),
    "multilabel": ("label_accuracy",),
    "regression": ("neg_mae", "neg_rmse"),
    "segmentation": ("miou", "pixel_accuracy"),
    "depth": ("abs_rel", "rmse", "delta1", "abs_err"),
    "normals": ("mean_angle", "median_angle", "within_11_25", "within_22_5", "within_30"),
    # AP at IoU 0.5 (PASCAL VOC's threshold, the paper's Table 6) and COCO's AP averaged over
    # IoU 0.5:0.95, both by torchmetrics' MeanAveragePrecision (the `detection` extra).
    "detection": ("map_50", "map"),
    "box-attributes": ("attribute_map",),
}
HEAD_KINDS = ("linear", "mlp", "dense", "fcos", "roi-mlp")
DENSE_HEAD_WIDTH = 64
# The heads each output kind may have; the first is its default.
HEADS_BY_KIND = {
    **{kind: ("linear", "mlp") for kind in IMAGE_KINDS},
    **{kind: ("dense",) for kind in DENSE_KINDS},
    "detection": ("fcos",),
    "box-attributes": ("roi-mlp",),
}
# Region heads' widths. `fcos`: one entry per convolution of each FCOS tower, all equal (the
# pyramid's channels; FCOS's GroupNorm takes 32 groups, so a multiple of 32). torchvision's
# default is 4 convolutions for 800-pixel images; on 32..64 pixel images 2 already cover an
# object at stride 4 (5×5 cells, 20 pixels) and halve the head's cost on a CPU. `roi-mlp`: the
# width of the attribute head's two fully connected layers (Faster R-CNN's box head).
FCOS_TOWER = (64, 64)
FCOS_GROUPS = 32
ROI_MLP_WIDTH = 128
# Losses and metrics a kind may use (implemented in dmtcore.tasks.metrics).
LOSSES_BY_KIND = {
    **{kind: ("cross_entropy",) for kind in ("binary", "multiclass")},
    "multilabel": ("bce_with_logits",),
    "regression": ("mse", "l1"),
    "segmentation": ("pixel_cross_entropy",),
    "depth": ("depth_l1", "berhu"),
    "normals": ("cosine", "normals_l1"),
    "detection": ("fcos",),
    "box-attributes": ("attribute_bce",),
}
METRICS_BY_KIND = {
    "binary": ("accuracy", "balanced_accuracy"),
    "multiclass": ("accuracy", "balanced_accuracy"),
    "multilabel": ("label_accuracy",),
    "regression": ("neg_mae", "neg_rmse"),
    **{kind: DEFAULT_METRICS[kind] for kind in DENSE_KINDS + REGION_KINDS},
}
LOSS_NAMES = tuple(dict.fromkeys(n for names in LOSSES_BY_KIND.values() for n in names))
METRIC_NAMES = tuple(dict.fromkeys(n for names in METRICS_BY_KIND.values() for n in names))
# Errors are better when lower; everything else when higher. The best-epoch rule, reports and
# tracking read the direction from here rather than assuming one.
LOWER_IS_BETTER = frozenset({"abs_rel", "rmse", "abs_err", "mean_angle", "median_angle"})
# Where a task's data stands, as `TaskSpec.data_status` says it (shown by `dmt tasks`):
# shipped with or generated by the plugin, found under --data-dir, or absent and fetched by
# --download, or absent and to be fetched by hand.
DATA_BUILTIN, DATA_ON_DISK, DATA_DOWNLOAD, DATA_MISSING = (
    "built-in",
    "on disk",
    "needs --download",
    "missing",
)
DATA_STATES = (DATA_BUILTIN, DATA_ON_DISK, DATA_DOWNLOAD, DATA_MISSING)


def higher_is_better(metric: str) -> bool:
    return metric not in LOWER_IS_BETTER


@dataclass(frozen=True)
class HeadSpec:
    """A declarative head: `linear`, or `mlp` with hidden widths, for image-level tasks; `dense`
    for pixel-level ones (an ASPP-lite decoder of `hidden[0]` channels, upsampled to the
    input size); for region-level ones `fcos` (detection: FCOS over a feature pyramid of
    `hidden[0]` channels on the column's stages) and `roi-mlp` (box attributes: RoI-aligned
    pyramid features of each box through two fully connected layers of `hidden[0]` units).
    Outputs come from the task."""

    kind: str = "linear"
    hidden: tuple[int, ...] = ()
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in HEAD_KINDS:
            raise InvalidValueError(
                f"unknown head kind {self.kind!r}; valid: {', '.join(HEAD_KINDS)}"
            )
        defaults = {"dense": (DENSE_HEAD_WIDTH,), "fcos": FCOS_TOWER, "roi-mlp": (ROI_MLP_WIDTH,)}
        if self.kind in defaults and not self.hidden:
            object.__setattr__(self, "hidden", defaults[self.kind])
        if self.kind in ("dense", "roi-mlp") and len(self.hidden) != 1:
            what = "its decoder's channels" if self.kind == "dense" else "its layers' units"
            raise InvalidValueError(
                f"a {self.kind!r} head has one width ({what}), got hidden={self.hidden}"
            )
        if self.kind == "fcos" and (len(set(self.hidden)) != 1 or self.hidden[0] % FCOS_GROUPS):
            raise InvalidValueError(
                f"an 'fcos' head's hidden widths are one per convolution of its towers, all "
                f"equal and a multiple of {FCOS_GROUPS} (FCOS normalises with GroupNorm of "
                f"{FCOS_GROUPS} groups), e.g. {FCOS_TOWER}; got hidden={self.hidden}"
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
    class ids (`ignore_label` for unlabelled pixels), depth a 1×H×W float map (0 where there
    is no ground truth), normals a 3×H×W map of unit vectors (all-zero where there is none).

    Region-level kinds (`REGION_KINDS`) label boxes: per image a dict of `boxes` (n×4 float,
    x1, y1, x2, y2 in pixels) with `labels` (n class ids) for detection, or `attributes` (n×A
    0/1) for box-attributes, whose `boxes_from` names the detection task whose boxes
    `dmt predict` describes (None: the store's one detection task).

    `ignore_label` is the value a segmentation task's data marks unlabelled pixels with:
    `IGNORE_LABEL` (-1) unless the plugin declares another (255 in many preprocessed copies).
    It must not be a class id; any other label value outside 0..num_outputs-1 is refused as
    bad data. Other kinds have none (their "no ground truth" is fixed by the kind).

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
    # Optional, for `dmt tasks`: one of DATA_STATES, or a function of the --data-dir that
    # returns one by looking for files, never loading them (it runs for every listed task).
    data_status: str | Callable[[Path], str] | None = field(default=None, repr=False, compare=False)
    ignore_label: int | None = None  # segmentation only; None: IGNORE_LABEL
    # box-attributes only: the detection task whose boxes `dmt predict` describes (None: the
    # store's one detection task). Training and eval use the ground-truth boxes.
    boxes_from: str | None = None

    def __post_init__(self) -> None:
        validate_task_name(self.name)
        if self.output not in OUTPUT_KINDS:
            raise InvalidValueError(
                f"task {self.name!r}: unknown output kind {self.output!r}; valid: {', '.join(OUTPUT_KINDS)}"
            )
        InputSpec.from_shape(self.input_shape)
        if isinstance(self.data_status, str) and self.data_status not in DATA_STATES:
            raise InvalidValueError(
                f"task {self.name!r}: unknown data_status {self.data_status!r}; valid: "
                f"{', '.join(DATA_STATES)}, or a function of the data directory returning one"
            )
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
        self._resolve_ignore_label()
        if self.boxes_from is not None:
            if self.output != "box-attributes":
                raise InvalidValueError(
                    f"task {self.name!r}: only box-attributes tasks name a detection task to "
                    f"take boxes from, got boxes_from={self.boxes_from!r} for a {self.output} task"
                )
            validate_task_name(self.boxes_from)
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
            if self.output in NAMED_OUTPUT_KINDS and len(self.class_names) != self.num_outputs:
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

    @property
    def region(self) -> bool:
        """Whether the task's labels are boxes (its head reads a feature pyramid of the
        column's stages, so it needs a column with spatial features too)."""
        return self.output in REGION_KINDS

    def _resolve_head(self) -> None:
        head = self.head
        valid_heads = HEADS_BY_KIND[self.output]
        if head is None:
            head = HeadSpec(valid_heads[0])
            object.__setattr__(self, "head", head)
        if not isinstance(head, HeadSpec):
            raise InvalidValueError(
                f"task {self.name!r}: head must be a HeadSpec, got {type(head).__name__}"
            )
        if head.kind not in valid_heads:
            valid = " or ".join(valid_heads)
            raise InvalidValueError(
                f"task {self.name!r}: a {self.output} task cannot have a {head.kind!r} head; "
                f"valid: {valid}"
            )

    def _resolve_ignore_label(self) -> None:
        value = self.ignore_label
        if self.output != "segmentation":
            if value is not None:
                raise InvalidValueError(
                    f"task {self.name!r}: only segmentation tasks declare an ignore_label, got "
                    f"{value!r} for a {self.output} task (depth marks pixels without ground "
                    "truth with 0, normals with an all-zero vector)"
                )
            return
        if value is None:
            value = IGNORE_LABEL
        low, high = IGNORE_LABEL_RANGE
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise InvalidValueError(
                f"task {self.name!r}: ignore_label must be an integer from {low} to {high}, "
                f"got {value!r}"
            )
        if 0 <= value < self.num_outputs:
            raise InvalidValueError(
                f"task {self.name!r}: ignore_label {value} is a class id (valid class ids: "
                f"0..{self.num_outputs - 1}); declare a value outside them, e.g. -1 or 255"
            )
        object.__setattr__(self, "ignore_label", int(value))

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
            # Likewise only a segmentation task declaring another value than -1 (absent: -1).
            **(
                {"ignore_label": self.ignore_label}
                if self.ignore_label not in (None, IGNORE_LABEL)
                else {}
            ),
            **({"boxes_from": self.boxes_from} if self.boxes_from is not None else {}),
        }
