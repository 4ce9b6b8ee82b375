"""The object plugins register into: tasks, backbones (column recipes), connection kinds and
loss weightings.

Modelled on tox 4's registry objects: a plugin calls `kinds.add_*`, the object remembers
which plugin added what, and a duplicate is refused with a message naming both owners.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dmtcore.errors import ConflictError, InvalidValueError
from dmtcore.tasks.names import unknown_name
from dmtcore.tasks.spec import TaskSpec

# The connection option every kind accepts: fuse the last stage's features of a task's sources
# into its head (DMT Table 6, "layer 6 to layer 7"). A manifest without it does not fuse.
HEAD_FUSION = "head_fusion"
# The `lr_mult` option value that defers a connection kind's learning-rate multiplier to the
# optimiser a training command uses (`ConnectionKind.lr_mult_by_optimizer`).
AUTO_LR_MULT = "auto"
# The optimiser a multiplier of "auto" stands for where no training command names one (a layer
# built to check options, to predict, or for a caller's own loop): the papers' optimiser, so a
# layer on its own carries its paper's multiplier. `fit` sets the one for its optimiser.
NOMINAL_OPTIMIZER = "sgd"


@dataclass(frozen=True)
class BackboneKind:
    """A column recipe: `build(input_spec, options)` returns a `Column` (see dmtcore.model.backbones)."""

    name: str
    description: str
    build: Callable[..., Any] = field(repr=False)
    default_options: dict[str, Any] = field(default_factory=dict)
    # Options used only to initialise a new column (restoring a stored one ignores them).
    init_only_options: tuple[str, ...] = ()
    # Optional `weights(options) -> PublishedWeights | None`: the pretrained weights the
    # options ask for (see dmtcore.model.backbones.pretrained), None for a random start.
    # A kind with it takes them as `build(input_spec, options, weights=state_dict)`.
    weights: Callable[[dict[str, Any]], Any] | None = field(default=None, repr=False)

    def resolve_options(self, given: dict[str, Any] | None) -> dict[str, Any]:
        return _resolve("backbone", self.name, self.default_options, given)


@dataclass(frozen=True)
class BackboneFamily:
    """Backbones named `PREFIX:MODEL` that a library makes on request (`timm:resnet50`):
    `make(model)` returns the `BackboneKind` for one model, or raises a DmtError that says
    why not (the library missing, an unknown model)."""

    prefix: str
    description: str
    make: Callable[[str], BackboneKind] = field(repr=False)
    examples: tuple[str, ...] = ()


@dataclass(frozen=True)
class ConnectionKind:
    """A transfer-connection kind: `build(own, num_sources, feature_shape, options)` returns a
    `TransferConnection` (see dmtcore.model.connections) fusing the sources' features for one stage."""

    name: str
    description: str
    build: Callable[..., Any] = field(repr=False)
    default_options: dict[str, Any] = field(default_factory=dict)
    isolated: bool = False  # True: a task reads only its own column, S(i) = {i}
    # Optional `build_shortcut(boundary_shapes, options)`: a module merging all of a task's
    # connection outputs into its last stage's input (NDDR-CNN-Shortcut).
    build_shortcut: Callable[..., Any] | None = field(default=None, repr=False)
    # Optional `head_fusion_default(backbone_name, backbone_options) -> bool`: whether a new
    # store of this kind fuses into the head when the user does not say (off without it).
    head_fusion_default: Callable[[str, dict[str, Any]], bool] | None = field(
        default=None, repr=False
    )
    # The connection weights' learning-rate multiplier per optimiser ({"sgd": 100, "adam": 1}),
    # for kinds whose papers tuned it for one optimiser. The kind's `lr_mult` option may then be
    # "auto" (its default): training resolves it from --optimizer, see `lr_mult_for`.
    lr_mult_by_optimizer: dict[str, float] = field(default_factory=dict)

    def resolve_options(
        self,
        given: dict[str, Any] | None,
        backbone: str | None = None,
        backbone_options: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The kind's options plus `head_fusion`, whose default depends on the column the
        store uses (`backbone`): the paper's pairing fuses, anything else does not. `lr_mult`
        may be "auto" where the kind has a multiplier per optimiser."""
        rule = self.head_fusion_default
        fuse = (
            rule is not None
            and backbone is not None
            and bool(rule(backbone, backbone_options or {}))
        )
        defaults = {**self.default_options, HEAD_FUSION: fuse}
        given = dict(given or {})
        per_optimizer = self.lr_mult_by_optimizer and "lr_mult" in self.default_options
        lr_mult = given.pop("lr_mult", None) if per_optimizer else None
        options = _resolve("connection kind", self.name, defaults, given)
        if lr_mult is not None:
            options["lr_mult"] = self._checked_lr_mult(lr_mult)
        return options

    def _checked_lr_mult(self, value: Any) -> float | str:
        """'auto', or a positive finite number (as a float)."""
        if value == AUTO_LR_MULT:
            return AUTO_LR_MULT
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not (number and math.isfinite(value) and value > 0):
            raise InvalidValueError(
                f"connection kind {self.name!r} option 'lr_mult' must be a positive number or "
                f"{AUTO_LR_MULT!r} (per optimiser: {_per_optimizer(self.lr_mult_by_optimizer)}), "
                f"got {value!r}"
            )
        return float(value)

    def lr_mult_for(self, options: dict[str, Any], optimizer: str) -> tuple[float | None, str]:
        """The multiplier the store's `options` give under `optimizer`, and where it comes from:
        'store' (a number in the store's options: set at `dmt init`, or written by a release
        before per-optimiser defaults, which keeps training its stores as it did), 'default'
        (option "auto": the kind's value for this optimiser), or 'none' (no such option)."""
        value = options.get("lr_mult")
        if value is None:
            return None, "none"
        if value != AUTO_LR_MULT:
            return float(value), "store"
        return auto_lr_mult(self.lr_mult_by_optimizer, optimizer), "default"


@dataclass(frozen=True)
class WeightingKind:
    """A loss weighting or gradient method for jointly trained tasks: `build(tasks, options,
    seed)` returns a `dmtcore.train.weighting.Weighting` over those task names. `paper`: the
    work it implements, shown by `dmt weightings`."""

    name: str
    description: str
    build: Callable[..., Any] = field(repr=False)
    default_options: dict[str, Any] = field(default_factory=dict)
    paper: str = ""

    def resolve_options(self, given: dict[str, Any] | None) -> dict[str, Any]:
        return _resolve("weighting", self.name, self.default_options, given)


def auto_lr_mult(by_optimizer: dict[str, float], optimizer: str = NOMINAL_OPTIMIZER) -> float:
    """The multiplier for `optimizer`; one the kind does not list gets its first value."""
    return float(by_optimizer.get(optimizer, next(iter(by_optimizer.values()))))


def concrete_lr_mult(value: Any, by_optimizer: dict[str, float]) -> float:
    """A stored `lr_mult` as a number to build a layer with: "auto" is the value for the
    papers' optimiser (training sets the one for its optimiser on the parameter groups)."""
    return auto_lr_mult(by_optimizer) if value == AUTO_LR_MULT else float(value)


def _per_optimizer(by_optimizer: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:g}" for name, value in by_optimizer.items())


def split_head_fusion(options: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
    """Whether a store fuses into the head, and the options its kind's `build` gets: a kind
    never sees `head_fusion`, and a manifest written before the option existed does not fuse."""
    fuse = options.get(HEAD_FUSION, False)
    if not isinstance(fuse, bool):
        raise InvalidValueError(
            f"connection option {HEAD_FUSION!r} must be true or false, got {fuse!r}"
        )
    return fuse, {k: v for k, v in options.items() if k != HEAD_FUSION}


def _resolve(
    what: str, name: str, defaults: dict[str, Any], given: dict[str, Any] | None
) -> dict[str, Any]:
    """The defaults overridden by `given`; unknown names and values of the wrong type are refused."""
    given = dict(given or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        valid = ", ".join(sorted(defaults)) or "none"
        raise InvalidValueError(f"{what} {name!r} has no option {unknown[0]!r}; valid: {valid}")
    return {
        key: _coerce(f"{what} {name!r}", key, given[key], default) if key in given else default
        for key, default in defaults.items()
    }


def _coerce(kind: str, key: str, value: Any, default: Any) -> Any:
    """`value` converted to the type of the option's default, or a clear error."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(default, bool):
        valid, expected = isinstance(value, bool), "true or false"
    elif isinstance(default, float):
        valid, expected = number and math.isfinite(value), "a finite number"
        value = float(value) if valid else value
    elif isinstance(default, int):
        valid, expected = number and float(value).is_integer(), "an integer"
        value = int(value) if valid else value
    elif isinstance(default, str) or default is None:
        valid, expected = isinstance(value, str) or value is None, "a string"
    else:
        valid, expected = True, ""
    if not valid:
        raise InvalidValueError(f"{kind} option {key!r} must be {expected}, got {value!r}")
    return value


class Kinds:
    """Everything the loaded plugins offer, with the plugin that offered each entry.

    Registration hooks receive it as `kinds` (or under its old name `registry`, which
    plugins written before the rename use); "registry" otherwise means MLflow's alone.
    """

    def __init__(self) -> None:
        self.tasks: dict[str, TaskSpec] = {}
        self.backbones: dict[str, BackboneKind] = {}
        self.backbone_families: dict[str, BackboneFamily] = {}
        self.connections: dict[str, ConnectionKind] = {}
        self.weightings: dict[str, WeightingKind] = {}
        self.owners: dict[tuple[str, str], str] = {}
        self.current_plugin = "<unknown>"

    def _add(self, table: dict[str, Any], what: str, name: str, entry: Any) -> None:
        if name in table:
            first = self.owners[(what, name)]
            raise ConflictError(
                f"{what} {name!r} is registered twice: by plugin {first!r} and by plugin "
                f"{self.current_plugin!r}; block one with '-p no:NAME'"
            )
        table[name] = entry
        self.owners[(what, name)] = self.current_plugin

    def add_task(self, spec: TaskSpec) -> None:
        if not isinstance(spec, TaskSpec):
            raise InvalidValueError(
                f"plugin {self.current_plugin!r} passed {type(spec).__name__} to add_task; "
                "expected a dmtcore.TaskSpec"
            )
        self._add(self.tasks, "task", spec.name, spec)

    def add_backbone(self, kind: BackboneKind) -> None:
        self._add(self.backbones, "backbone", kind.name, kind)

    def add_backbone_family(self, family: BackboneFamily) -> None:
        self._add(self.backbone_families, "backbone family", family.prefix, family)

    def add_connection(self, kind: ConnectionKind) -> None:
        self._add(self.connections, "connection kind", kind.name, kind)

    def add_weighting(self, kind: WeightingKind) -> None:
        if not isinstance(kind, WeightingKind):
            raise InvalidValueError(
                f"plugin {self.current_plugin!r} passed {type(kind).__name__} to add_weighting; "
                "expected a dmtcore.WeightingKind"
            )
        self._add(self.weightings, "weighting", kind.name, kind)

    def owner(self, what: str, name: str) -> str:
        return self.owners[(what, name)]

    def task(self, name: str) -> TaskSpec:
        if name not in self.tasks:
            raise unknown_name("task", name, self.tasks)
        return self.tasks[name]

    def backbone(self, name: str) -> BackboneKind:
        """The named backbone; `PREFIX:MODEL` is made by its family the first time it is asked
        for, then kept (owned by the family's plugin)."""
        if name not in self.backbones:
            prefix, colon, model = name.partition(":")
            family = self.backbone_families.get(prefix) if colon else None
            if family is None:
                offered = {**self.backbones, **{f"{p}:MODEL": None for p in self.backbone_families}}
                raise unknown_name("backbone", name, offered)
            kind = family.make(model)
            self.backbones[name] = kind
            self.owners[("backbone", name)] = self.owners[("backbone family", prefix)]
        return self.backbones[name]

    def connection(self, name: str) -> ConnectionKind:
        if name not in self.connections:
            raise unknown_name("connection kind", name, self.connections)
        return self.connections[name]

    def weighting(self, name: str) -> WeightingKind:
        if name not in self.weightings:
            raise unknown_name("weighting", name, self.weightings)
        return self.weightings[name]


Registry = Kinds  # the name plugins written before the rename import
