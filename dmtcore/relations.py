"""What the gates learned: per stage, how much each task draws from each other task.

The numbers come from the manifest (each task's `relations`, written at every commit), so they
are read without torch: TTC gates α_ij, NDDR block norms relative to the own block, mean
cross-stitch weights. `plot` draws them as heatmaps, one per stage boundary. Where the store
fuses the last stage's features into the head (connection option `head_fusion`), the last
boundary is that connection: `stage L → head` (DMT Table 6's "layer 6 to layer 7" for dmt-cnn).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dmtcore.errors import InvalidValueError
from dmtcore.registry import HEAD_FUSION

Matrix = list[list[float | None]]


def relation_matrices(manifest: dict[str, Any]) -> list[Matrix]:
    """One matrix per stage boundary: row = reading task, column = source, None = no link.
    The manifest schema guarantees every task's `relations` (a list of source -> weight)."""
    names = [t["name"] for t in manifest["tasks"]]
    stages = max((len(t["relations"]) for t in manifest["tasks"]), default=0)
    matrices: list[Matrix] = []
    for stage in range(stages):
        matrix: Matrix = []
        for task in manifest["tasks"]:
            rows = task["relations"]
            row = rows[stage] if stage < len(rows) else {}
            matrix.append([row.get(source) for source in names])
        matrices.append(matrix)
    return matrices


def fuses_head(manifest: dict[str, Any]) -> bool:
    """Whether the store's last boundary is the connection into the head; a manifest written
    before the option existed does not fuse."""
    return bool(manifest["connection"]["options"].get(HEAD_FUSION, False))


def into_head(stage: int, count: int, head_fusion: bool) -> bool:
    """Whether boundary `stage` (from 1) of `count` is the connection into the head."""
    return head_fusion and stage == count


def boundary_label(manifest: dict[str, Any], stage: int) -> str:
    """How reports name boundary `stage` (from 1): 'stage 3 → 4', or 'stage 6 → head' for the
    connection that fuses the last stage's features into the head."""
    count = max((len(t["relations"]) for t in manifest["tasks"]), default=0)
    if into_head(stage, count, fuses_head(manifest)):
        return f"stage {stage} → head"
    return f"stage {stage} → {stage + 1}"


def gate_series_layer(stage: int, count: int, head_fusion: bool) -> str:
    """The layer part of a gate's metric name, `alpha.<task>.<layer>.<source>`: 'stage3' for
    the connection after stage 3, 'head' for the one into the head."""
    return "head" if into_head(stage, count, head_fusion) else f"stage{stage}"


def select_stage(matrices: list[Matrix], stage: int | None) -> list[tuple[int, Matrix]]:
    """(stage number from 1, matrix) pairs: all, or the one asked for."""
    numbered = list(enumerate(matrices, start=1))
    if stage is None:
        return numbered
    if not 1 <= stage <= len(matrices):
        raise InvalidValueError(f"stage {stage} does not exist; valid: 1 to {len(matrices)}")
    return [numbered[stage - 1]]


def plot(manifest: dict[str, Any], stages: list[tuple[int, Matrix]], path: Path) -> Path:
    """Heatmaps of the selected stages in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = [t["name"] for t in manifest["tasks"]]
    size = max(3.0, 0.55 * len(names) + 1.5)
    top = max(
        1.0, max((v for _, m in stages for row in m for v in row if v is not None), default=1.0)
    )
    figure, axes = plt.subplots(
        1, len(stages), figsize=(size * len(stages), size), squeeze=False, layout="constrained"
    )
    for axis, (stage, matrix) in zip(axes[0], stages, strict=True):
        values = np.array(
            [[np.nan if v is None else v for v in row] for row in matrix], dtype=float
        )
        image = axis.imshow(values, cmap="viridis", vmin=0.0, vmax=top)
        axis.set_title(boundary_label(manifest, stage))
        axis.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
        axis.set_yticks(range(len(names)), names, fontsize=7)
        axis.set_xlabel("source")
        axis.set_ylabel("task")
        for i, row in enumerate(matrix):
            for j, value in enumerate(row):
                if value is not None:
                    colour = "black" if value > 0.6 * top else "white"
                    axis.text(
                        j, i, f"{value:.2f}", ha="center", va="center", fontsize=6, color=colour
                    )
    figure.colorbar(image, ax=list(axes[0]), fraction=0.02)  # one scale for every stage
    kind = manifest["connection"]["name"]
    figure.text(
        0.005, 0.995, f"{manifest['name']} v{manifest['version']}: {kind} relations", va="top"
    )
    path = Path(path)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
