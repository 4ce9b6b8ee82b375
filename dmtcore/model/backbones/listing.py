"""What `dmt backbones` lists: every column recipe with its stages (channels and reduction)
for a given input size, and the pretrained weights it can start from.

Each recipe is built on torch's meta device: shapes come out exactly, in milliseconds, and
no weight is allocated or initialised (a VGG-16 column alone is half a gigabyte).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dmtcore.errors import DmtError, first_line
from dmtcore.hooks.kinds import Kinds
from dmtcore.tasks.names import InputSpec


def describe_backbone(
    kinds: Kinds, name: str, input_spec: InputSpec, options: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One row: name, plugin, description, options, stages at `input_spec` (or why the recipe
    cannot take that input), and whether it offers pretrained weights."""
    import torch

    kind = kinds.backbone(name)
    resolved = kind.resolve_options(options)
    row: dict[str, Any] = {
        "name": name,
        "plugin": kinds.owner("backbone", name),
        "description": kind.description,
        "options": resolved,
        "pretrained": kind.weights is not None,
        "input": list(input_spec.shape),
    }
    try:
        with torch.device("meta"):
            column = kind.build(input_spec, resolved)
        row["stages"] = column.describe_stages()
        row["parameters"] = sum(p.numel() for p in column.parameters())
    except Exception as exc:  # a recipe that cannot take this input says why, in its row
        shown = (
            str(exc) if isinstance(exc, DmtError) else f"{type(exc).__name__}: {first_line(exc)}"
        )
        row["stages"], row["error"] = [], shown
    return row


def list_backbones(
    kinds: Kinds,
    input_spec: InputSpec,
    names: Sequence[str] = (),
    options: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Rows for the named backbones (`timm:MODEL` included), or for every registered one, and
    a row per family (`timm:MODEL`) that says how to name its members."""
    if names:
        return [describe_backbone(kinds, name, input_spec, options) for name in names]
    rows = [describe_backbone(kinds, name, input_spec, options) for name in list(kinds.backbones)]
    for prefix, family in kinds.backbone_families.items():
        rows.append(
            {
                "name": f"{prefix}:MODEL",
                "plugin": kinds.owner("backbone family", prefix),
                "description": family.description,
                "examples": list(family.examples),
                "pretrained": True,
                "stages": [],
            }
        )
    return rows
