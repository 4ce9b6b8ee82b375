"""Validation of the names and shapes users type: task names and the store's input spec."""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

from dmtcore.errors import InvalidValueError, UnknownNameError

TASK_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]*(\.[a-z0-9][a-z0-9_-]*)*$")
MAX_TASK_NAME_LENGTH = 64
MAX_INPUT_SIDE = 4096
MAX_INPUT_CHANNELS = 16


def validate_task_name(name: str) -> str:
    """Return `name` if it is a valid task name, else raise naming the rule it breaks.

    Task names become MLflow metric keys and manifest keys, never file names, but we still keep
    them to a portable alphabet so that no name can ever be read as a path.
    """
    if not isinstance(name, str) or not name:
        raise InvalidValueError("task name must be a non-empty string")
    if len(name) > MAX_TASK_NAME_LENGTH:
        raise InvalidValueError(
            f"task name {name[:20]!r}... is {len(name)} characters long; "
            f"at most {MAX_TASK_NAME_LENGTH} are allowed"
        )
    if not TASK_NAME_PATTERN.match(name):
        raise InvalidValueError(
            f"invalid task name {name!r}: use lowercase letters, digits, '-' and '_', "
            "in dot-separated parts (e.g. 'digits.even')"
        )
    return name


# Up to this many known names are listed in an unknown-name error; past it (136 tasks), the
# close matches and the command that lists them all say more than one very long line.
MAX_LISTED_NAMES = 12
# The command that lists the names of a kind, for an error that does not list them.
LISTED_BY = {"task": "dmt tasks", "backbone": "dmt backbones", "weighting": "dmt weightings"}


def suggest(name: str, known: Iterable[str]) -> str:
    """A ' Did you mean ...?' hint for an unknown name, or '' when nothing is close: names
    spelled alike, then names of which it is the last dotted part ('even' → 'digits.even')."""
    known = list(known)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    close += [k for k in known if k.endswith(f".{name}") and k not in close]
    if not close:
        return ""
    return " Did you mean " + " or ".join(repr(c) for c in close[:3]) + "?"


def unknown_name(kind: str, name: str, known: Iterable[str], where: str = "") -> UnknownNameError:
    """The error for a name that is not registered, with close matches and the valid names
    (or, when there are many, how many there are and which command lists them)."""
    known = sorted(known)
    place = f" {where}" if where else ""
    if len(known) <= MAX_LISTED_NAMES:
        listing = f" Known: {', '.join(known) if known else 'none'}."
    else:
        command = "dmt status" if where else LISTED_BY.get(kind)
        lists = f"; '{command}' lists them" if command else ""
        listing = f" {len(known)} {kind}s are known{lists}."
    return UnknownNameError(f"unknown {kind} {name!r}{place}.{suggest(name, known)}{listing}")


@dataclass(frozen=True)
class InputSpec:
    """The image shape every task's images are adapted to: channels × height × width."""

    channels: int
    height: int
    width: int

    @classmethod
    def parse(cls, text: str) -> InputSpec:
        """Parse 'CxHxW' (e.g. '3x32x32'), raising with the valid form on anything else."""
        parts = str(text).lower().replace("×", "x").split("x")
        if len(parts) != 3 or not all(p.strip().isdigit() for p in parts):
            raise InvalidValueError(
                f"invalid input spec {text!r}: expected CxHxW with positive integers, e.g. 3x32x32"
            )
        return cls.from_shape([int(p) for p in parts])

    @classmethod
    def from_shape(cls, shape: Iterable[int]) -> InputSpec:
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3:
            raise InvalidValueError(
                f"invalid input shape {shape}: expected (channels, height, width)"
            )
        channels, height, width = shape
        if not 1 <= channels <= MAX_INPUT_CHANNELS:
            raise InvalidValueError(
                f"invalid input spec {channels}x{height}x{width}: channels must be 1 to "
                f"{MAX_INPUT_CHANNELS}"
            )
        if not (4 <= height <= MAX_INPUT_SIDE and 4 <= width <= MAX_INPUT_SIDE):
            raise InvalidValueError(
                f"invalid input spec {channels}x{height}x{width}: height and width must be 4 to "
                f"{MAX_INPUT_SIDE} pixels"
            )
        return cls(channels, height, width)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)

    def __str__(self) -> str:
        return f"{self.channels}x{self.height}x{self.width}"


def parse_option(text: str) -> tuple[str, object]:
    """`KEY=VALUE` as typed for `--backbone-option` and `--connection-option`: the value read
    as JSON (`true`, `2`, `0.5`), or kept as text when it is not JSON (`weights.safetensors`)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise InvalidValueError(f"invalid option {text!r}: expected KEY=VALUE")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value
