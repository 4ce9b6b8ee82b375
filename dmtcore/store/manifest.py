"""The manifest: a JSON document that fully describes one version of a store.

It names the input spec, the backbone recipe, the connection kind, and every task in order with
its source set, head, output, metrics and the sha256 of each weight file, so a store can be
loaded without any plugin code.

`SCHEMA` below is the one place that says what a manifest holds: every field any command reads,
with its type and range, followed by the rules that tie fields together (`CROSS_CHECKS`). A
manifest that passes both can be read by every command without a further check, so consumers
index it directly. `manifest_problems` lists every problem (for `dmt verify`);
`validate_manifest` refuses a manifest on load, naming the file and the field path.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from dmtcore.errors import StoreError
from dmtcore.tasks.names import MAX_INPUT_CHANNELS, MAX_INPUT_SIDE, TASK_NAME_PATTERN
from dmtcore.tasks.spec import (
    DENSE_KINDS,
    FIXED_OUTPUTS,
    HEAD_KINDS,
    HEADS_BY_KIND,
    IGNORE_LABEL_RANGE,
    LOSS_NAMES,
    NAMED_OUTPUT_KINDS,
    OUTPUT_KINDS,
    REGION_KINDS,
)

# Format 2 (issue 14) adds pixel-level tasks: the output kinds segmentation/depth/normals, the
# 'dense' head, their losses and metrics, and spatial column options. Format 1 manifests (every
# store written before) are read as they are; every new version is written as format 2.
# Format 3 (issue 26) adds region-level tasks (detection, box-attributes, their 'fcos' and
# 'roi-mlp' heads, 'boxes_from'); it is written only for a version holding one, so that a
# store without them stays readable by releases that read format 2.
FORMAT = 2
REGION_FORMAT = 3
READABLE_FORMATS = (1, 2, 3)
WEIGHT_PARTS = ("column", "connections", "head")
MAX_VERSION = 999_999  # version files are named vNNNNNN.json
SLOT = re.compile(r"^t(\d{1,9})$")


def written_format(manifest: dict[str, Any]) -> int:
    """The format a new version is written as: REGION_FORMAT when it holds a region-level
    task, else FORMAT."""
    kinds = {task["output"]["kind"] for task in manifest.get("tasks", ())}
    return REGION_FORMAT if kinds & set(REGION_KINDS) else FORMAT


def new_manifest(
    name: str,
    input_spec: list[int] | None,
    backbone: dict[str, Any],
    connection: dict[str, Any],
    model_name: str | None = None,
) -> dict[str, Any]:
    """The manifest of an empty store (version 1). `store_id` identifies the store's lineage
    across copies and pulls; `model_name` is its registered model in MLflow."""
    return {
        "format": FORMAT,
        "name": name,
        "store_id": uuid.uuid4().hex,
        "model_name": model_name or name,
        "version": 1,
        "parent": None,
        "created": None,
        "operation": {"name": "init", "tasks": []},
        "input_spec": input_spec,
        "backbone": backbone,
        "connection": connection,
        "next_slot": 0,
        "tasks": [],
    }


# -- the schema's building blocks ----------------------------------------------------------------


def _shown(value: Any) -> str:
    """A value as a message shows it: its repr, cut short (a damaged field may be huge)."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _join(at: str, key: str | int) -> str:
    """The path of a member: `tasks[1].metrics.accuracy`, `relations[0]['digits.class']`."""
    if isinstance(key, int):
        return f"{at}[{key}]"
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        return f"{at}.{key}" if at else key
    return f"{at}[{key!r}]"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class Node:
    """One part of the schema: `problems` yields one message per thing wrong at `at`."""

    expected = "a value"

    def accepts(self, value: Any) -> bool:
        return True

    def problems(self, value: Any, at: str) -> Iterator[str]:
        if not self.accepts(value):
            yield f"{at} must be {self.expected}, got {_shown(value)}"


@dataclass(frozen=True)
class Integer(Node):
    low: int | None = None
    high: int | None = None

    @property
    def expected(self) -> str:
        if self.low is not None and self.high is not None:
            return f"an integer from {self.low} to {self.high}"
        return f"an integer ≥ {self.low}" if self.low is not None else "an integer"

    def accepts(self, value: Any) -> bool:
        return (
            _is_int(value)
            and (self.low is None or value >= self.low)
            and (self.high is None or value <= self.high)
        )


class Boolean(Node):
    expected = "true or false"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, bool)


@dataclass(frozen=True)
class Number(Node):
    """Any JSON number; `finite` also refuses NaN and infinities."""

    finite: bool = False

    @property
    def expected(self) -> str:
        return "a finite number" if self.finite else "a number"

    def accepts(self, value: Any) -> bool:
        number = _is_int(value) or isinstance(value, float)
        return number and (not self.finite or math.isfinite(value))


@dataclass(frozen=True)
class Fraction(Node):
    """A number in [0, 1)."""

    expected = "a number from 0 up to (not including) 1"

    def accepts(self, value: Any) -> bool:
        return Number(finite=True).accepts(value) and 0 <= value < 1


@dataclass(frozen=True)
class Text(Node):
    """A non-empty string, optionally one of `choices` or matching `pattern`."""

    choices: tuple[str, ...] = ()
    pattern: re.Pattern[str] | None = None
    describe: str = "a non-empty string"

    @property
    def expected(self) -> str:
        return f"one of {', '.join(self.choices)}" if self.choices else self.describe

    def accepts(self, value: Any) -> bool:
        if not isinstance(value, str) or not value:
            return False
        if self.choices:
            return value in self.choices
        return self.pattern is None or bool(self.pattern.fullmatch(value))


@dataclass(frozen=True)
class Timestamp(Node):
    expected = "an ISO 8601 date and time"

    def accepts(self, value: Any) -> bool:
        if not isinstance(value, str):
            return False
        try:
            dt.datetime.fromisoformat(value)
        except ValueError:
            return False
        return True


@dataclass(frozen=True)
class Anything(Node):
    """Written for people or for tracking, read by no command."""


@dataclass(frozen=True)
class Nullable(Node):
    """`null`, or what `inner` accepts."""

    inner: Node

    def problems(self, value: Any, at: str) -> Iterator[str]:
        if value is None:
            return
        if not self.inner.accepts(value):
            yield f"{at} must be null or {self.inner.expected}, got {_shown(value)}"
        else:
            yield from self.inner.problems(value, at)


@dataclass(frozen=True)
class Tuple(Node):
    """A list of fixed length whose items each have their own rule."""

    items: tuple[Node, ...]
    describe: str = ""

    @property
    def expected(self) -> str:
        return self.describe or f"a list of {len(self.items)}"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, list) and len(value) == len(self.items)

    def problems(self, value: Any, at: str) -> Iterator[str]:
        if not self.accepts(value):
            yield f"{at} must be {self.expected}, got {_shown(value)}"
            return
        for index, (node, item) in enumerate(zip(self.items, value, strict=True)):
            yield from node.problems(item, _join(at, index))


@dataclass(frozen=True)
class ListOf(Node):
    item: Node
    length: int | None = None
    min_length: int = 0

    @property
    def expected(self) -> str:
        if self.length is not None:
            return f"a list of {self.length}"
        return f"a list of at least {self.min_length}" if self.min_length else "a list"

    def accepts(self, value: Any) -> bool:
        return (
            isinstance(value, list)
            and (self.length is None or len(value) == self.length)
            and len(value) >= self.min_length
        )

    def problems(self, value: Any, at: str) -> Iterator[str]:
        if not self.accepts(value):
            yield f"{at} must be {self.expected}, got {_shown(value)}"
            return
        for index, item in enumerate(value):
            yield from self.item.problems(item, _join(at, index))


@dataclass(frozen=True)
class MapOf(Node):
    """An object whose keys are free (task names, metric names, option names)."""

    value: Node
    key: Text = Text()
    expected = "an object"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, dict)

    def problems(self, value: Any, at: str) -> Iterator[str]:
        if not isinstance(value, dict):
            yield f"{at} must be {self.expected}, got {_shown(value)}"
            return
        for key, item in value.items():
            if not self.key.accepts(key):
                yield f"{at} has the key {_shown(key)}; keys must be {self.key.expected}"
            else:
                yield from self.value.problems(item, _join(at, key))


@dataclass(frozen=True)
class Record(Node):
    """An object with named fields; others may be present and are ignored."""

    required: dict[str, Node]
    optional: dict[str, Node] = field(default_factory=dict)
    expected = "an object"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, dict)

    def problems(self, value: Any, at: str) -> Iterator[str]:
        if not isinstance(value, dict):
            yield f"{at or 'the manifest'} must be {self.expected}, got {_shown(value)}"
            return
        for key, node in self.required.items():
            if key not in value:
                yield f"{_join(at, key)} is missing"
            else:
                yield from node.problems(value[key], _join(at, key))
        for key, node in self.optional.items():
            if key in value:
                yield from node.problems(value[key], _join(at, key))


# -- the schema ------------------------------------------------------------------------------------

NAME = Text()
TASK_NAME = Text(pattern=TASK_NAME_PATTERN, describe="a task name such as 'digits.even'")
SHA256 = Text(pattern=re.compile(r"[0-9a-f]{64}"), describe="64 lowercase hex digits")
VERSION = Integer(1, MAX_VERSION)
SIDE = Integer(4, MAX_INPUT_SIDE)
INPUT_SPEC = Tuple((Integer(1, MAX_INPUT_CHANNELS), SIDE, SIDE), "[channels, height, width]")
METRICS = MapOf(Number())
RECIPE = Record({"name": NAME, "options": MapOf(Anything())})
# The backbone's recipe may name the stages it cuts its network into, the initial column that
# pretrained weights give every new column (a blob of the store), and the input normalisation
# those weights expect.
BACKBONE = Record(
    {"name": NAME, "options": MapOf(Anything())},
    {
        "stages": ListOf(Text()),
        "pretrained": Record({"sha256": SHA256, "name": Text()}),
        "normalization": Record(
            {
                "mean": ListOf(Number(finite=True), min_length=1),
                "std": ListOf(Number(finite=True), min_length=1),
            }
        ),
    },
)

# The settings a task trained with (dmtcore.operations.task_settings), reused where it
# trains again.
TRAINING = Record(
    {
        "epochs": Integer(1),
        "batch_size": Integer(1),
        "lr": Number(finite=True),
        "optimizer": Text(),
        "balance": Boolean(),
        "precision": Text(),
        "connection_lr_mult": Nullable(Number(finite=True)),
        "bn_recalibration": Nullable(Boolean()),
        "weighting": Text(),
        "weighting_options": MapOf(Anything()),
    }
)

TASK = Record(
    {
        "name": TASK_NAME,
        "slot": Text(pattern=SLOT, describe="'t' and a number, e.g. 't0'"),
        "plugin": Nullable(NAME),
        "sources": ListOf(TASK_NAME, min_length=1),
        "description": Anything(),
        "native_input_shape": Tuple((Integer(1),) * 3, "[channels, height, width]"),
        "output": Record({"kind": Text(OUTPUT_KINDS), "size": Integer(1, 1_000_000)}),
        "head": Record(
            {
                "kind": Text(HEAD_KINDS),
                "hidden": ListOf(Integer(1, 1_000_000)),
                "dropout": Fraction(),
            }
        ),
        "loss": Text(LOSS_NAMES),
        "metrics": METRICS,
        "primary_metric": NAME,
        "class_names": Nullable(ListOf(Text(describe="a string"))),
        "weights": Record({part: Record({"sha256": SHA256}) for part in WEIGHT_PARTS}),
        "relations": ListOf(MapOf(Number(finite=True), key=TASK_NAME)),
    },
    # data_seed: the seed the task's dataset factory got when it was trained (absent: 0);
    # training: the settings it trained with, reused where it trains again (absent: none kept);
    # ignore_label: the label value a segmentation task's data marks unlabelled pixels with
    # (absent: -1, as in every store written before it existed); boxes_from: the detection
    # task whose boxes a box-attributes task describes at predict (absent: the store's one)
    {
        "recipe": MapOf(Anything()),
        "data_seed": Integer(0, 2**32 - 1),
        "training": TRAINING,
        "ignore_label": Integer(*IGNORE_LABEL_RANGE),
        "boxes_from": TASK_NAME,
    },
)

OPERATION = Record(
    {"name": NAME, "tasks": ListOf(TASK_NAME)},
    {
        "to_version": VERSION,
        "settings": MapOf(Anything()),
        "best_epoch": Nullable(Integer(0)),
        "metrics": MapOf(METRICS, key=TASK_NAME),
        "feature_cache": MapOf(Anything()),
        "bn_recalibrated": Boolean(),
        "report": MapOf(Anything(), key=TASK_NAME),
        # the connection weights' learning-rate multiplier as used, and where it came from
        "connection_lr_mult": Nullable(
            Record(
                {
                    "value": Nullable(Number(finite=True)),
                    "source": Text(("option", "store", "default", "none")),
                }
            )
        ),
        # how a group trained: one pass per batch, taking turns, or a single task
        "joint_mode": Nullable(Text(("single", "one-pass", "turns"))),
        # the settings each retrained task used (remove-task: its own, or the command's)
        "task_settings": MapOf(TRAINING, key=TASK_NAME),
        # how the group's losses became each step: the method, its options, and each task's
        # mean weight in the last epoch (empty for equal weights or a single task)
        "weighting": Record(
            {
                "name": NAME,
                "options": MapOf(Anything()),
                "weights": MapOf(Number(finite=True), key=TASK_NAME),
            }
        ),
        # Δm in percent against another store's metrics of the same tasks (dmt train
        # --compare-with), and that store's path and version
        "delta_m": Record(
            {"value": Number(finite=True), "baseline": Text(), "baseline_version": VERSION}
        ),
        # where each new column started: requested value, column per task, and why
        "init_from": Record(
            {
                "requested": Text(),
                "columns": MapOf(Nullable(TASK_NAME), key=TASK_NAME),
                "reasons": MapOf(Text(), key=TASK_NAME),
            },
            {"probe": MapOf(Anything(), key=TASK_NAME)},
        ),
    },
)

SCHEMA = Record(
    {
        "format": Integer(min(READABLE_FORMATS), max(READABLE_FORMATS)),
        "name": NAME,
        "store_id": NAME,
        "model_name": NAME,
        "version": VERSION,
        "parent": Nullable(VERSION),
        "created": Timestamp(),
        "operation": OPERATION,
        "input_spec": Nullable(INPUT_SPEC),
        "backbone": BACKBONE,
        "connection": RECIPE,
        "next_slot": Integer(0, 10**9),
        "tasks": ListOf(TASK),
    }
)


# -- rules that tie fields together (run once every field has its type) ---------------------------


def _check_input(data: dict[str, Any]) -> Iterator[str]:
    if data["input_spec"] is None and data["tasks"]:
        yield "input_spec is null, but the store has tasks"


def _check_lineage(data: dict[str, Any]) -> Iterator[str]:
    version, parent = data["version"], data["parent"]
    if version == 1 and parent is not None:
        yield f"parent must be null in version 1, got {_shown(parent)}"
    if version > 1 and (parent is None or parent >= version):
        yield f"parent must be a version from 1 to {version - 1}, got {_shown(parent)}"
    operation = data["operation"]
    if operation["name"] == "rollback":
        target = operation.get("to_version")
        if not (_is_int(target) and 1 <= target < version):
            yield (
                f"operation.to_version must be a version from 1 to {version - 1} in a rollback, "
                f"got {_shown(target)}"
            )


def _check_names(data: dict[str, Any]) -> Iterator[str]:
    names = [task["name"] for task in data["tasks"]]
    slots = [task["slot"] for task in data["tasks"]]
    for index, task in enumerate(data["tasks"]):
        at = _join("tasks", index)
        if task["name"] in names[:index]:
            yield f"{at}.name {task['name']!r} appears twice"
        if task["slot"] in slots[:index]:
            yield f"{at}.slot {task['slot']!r} is used by another task"
        if int(SLOT.fullmatch(task["slot"]).group(1)) >= data["next_slot"]:
            yield f"next_slot {data['next_slot']} must be above every slot, got {task['slot']!r}"


def _check_sources(data: dict[str, Any]) -> Iterator[str]:
    names = {task["name"] for task in data["tasks"]}
    for index, task in enumerate(data["tasks"]):
        at, sources = _join("tasks", index), task["sources"]
        if task["name"] not in sources:
            yield f"{at}.sources must include the task itself ({task['name']!r}), got {sources}"
        if len(set(sources)) != len(sources):
            yield f"{at}.sources lists a task twice: {sources}"
        unknown = sorted(set(sources) - names)
        if unknown:
            yield f"{at}.sources names {unknown}, not tasks of this version"
        for stage, row in enumerate(task["relations"]):
            foreign = sorted(set(row) - set(sources))
            if foreign:
                yield f"{at}.relations[{stage}] names {foreign}, not sources of the task"


def _check_outputs(data: dict[str, Any]) -> Iterator[str]:
    for index, task in enumerate(data["tasks"]):
        at, output, head = _join("tasks", index), task["output"], task["head"]
        kind, size = output["kind"], output["size"]
        fixed = FIXED_OUTPUTS.get(kind)
        if fixed is not None and size != fixed:
            yield f"{at}.output.size must be {fixed} for a {kind} task, got {size}"
        if kind in ("multiclass", "segmentation") and size < 2:
            yield f"{at}.output.size must be at least 2 for a {kind} task, got {size}"
        names = task["class_names"]
        if names is not None and kind in NAMED_OUTPUT_KINDS and len(names) != size:
            yield f"{at}.class_names must name {size} classes (output.size), got {len(names)}"
        if head["kind"] not in HEADS_BY_KIND[kind]:
            yield f"{at}.head.kind {head['kind']!r} does not fit a {kind} task"
        if kind in DENSE_KINDS and data["format"] < 2:
            yield f"{at}.output.kind {kind!r} needs manifest format 2, got {data['format']}"
        if kind in REGION_KINDS and data["format"] < REGION_FORMAT:
            yield (
                f"{at}.output.kind {kind!r} needs manifest format {REGION_FORMAT}, "
                f"got {data['format']}"
            )
        boxes_from = task.get("boxes_from")
        if boxes_from is not None and kind != "box-attributes":
            yield f"{at}.boxes_from is for box-attributes tasks only, got one for a {kind} task"
        ignore = task.get("ignore_label")
        if ignore is not None and kind != "segmentation":
            yield f"{at}.ignore_label is for segmentation tasks only, got one for a {kind} task"
        if ignore is not None and kind == "segmentation" and 0 <= ignore < size:
            yield f"{at}.ignore_label {ignore} is a class id (0..{size - 1}); it must be another value"
        if head["kind"] == "mlp" and not head["hidden"]:
            yield f"{at}.head.hidden must list at least one width for an 'mlp' head"
        if task["primary_metric"] not in task["metrics"]:
            yield (
                f"{at}.primary_metric {task['primary_metric']!r} must be one of its metrics "
                f"{sorted(task['metrics'])}"
            )


CROSS_CHECKS: tuple[Callable[[dict[str, Any]], Iterator[str]], ...] = (
    _check_input,
    _check_lineage,
    _check_names,
    _check_sources,
    _check_outputs,
)


def manifest_problems(data: Any) -> list[str]:
    """Every problem of a manifest, each naming its field path; empty when it is well-formed.

    The rules between fields are checked once every field has the right type, so each rule may
    index the manifest freely."""
    if isinstance(data, dict) and "format" in data and data["format"] not in READABLE_FORMATS:
        readable = " or ".join(map(str, READABLE_FORMATS))
        return [
            f"unsupported manifest format {_shown(data['format'])} (this release reads "
            f"{readable}; a newer format was written by a newer dmt)"
        ]
    problems = list(SCHEMA.problems(data, ""))
    if not problems:
        for check in CROSS_CHECKS:
            problems.extend(check(data))
    return problems


def validate_manifest(data: Any, where: str) -> dict[str, Any]:
    """Return `data` if it is a well-formed manifest, else raise naming the file, the first
    problem's field path and how many more there are."""
    problems = manifest_problems(data)
    if problems:
        more = len(problems) - 1
        tail = f" (and {more} more problem{'s' * (more > 1)}: see 'dmt verify')" if more else ""
        raise StoreError(f"{where}: {problems[0]}{tail}")
    return data


def weight_refs(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Every blob a manifest refers to: each task's parts, and the backbone's pretrained
    initial column where it has one. What a commit, a clean-up, verify, rollback and the
    registry's snapshot must find or keep."""
    refs = [ref for task in manifest["tasks"] for ref in task["weights"].values()]
    pretrained = manifest["backbone"].get("pretrained")
    if pretrained:
        refs.append(pretrained)
    return refs
