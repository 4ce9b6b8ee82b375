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


PANELS_PER_ROW = 3
OWN_COLOUR = "#d9d9d9"


def colour_limits(stages: list[tuple[int, Matrix]]) -> tuple[float, float]:
    """The colour scale shared by every panel: the range of the links between different
    tasks. The own column's weight (1.0 by definition for TTC gates and NDDR norms) is left
    out: on a 0–1 scale it would squeeze gates of 0.10–0.18 into one colour."""
    values = [
        v
        for _, matrix in stages
        for i, row in enumerate(matrix)
        for j, v in enumerate(row)
        if v is not None and i != j
    ]
    if not values:
        return 0.0, 1.0
    low, high = min(values), max(values)
    if high - low < 1e-9:
        return low - 0.5 * abs(low or 1.0), high + 0.5 * abs(high or 1.0)
    return low, high


def plot(manifest: dict[str, Any], stages: list[tuple[int, Matrix]], path: Path) -> Path:
    """Heatmaps of the selected stages in one PNG, up to three per row. Each task's own
    column is drawn grey and marked 'own' (it is the reference the others are measured
    against), so the colours and the shared colour bar span only the links between tasks;
    every cell carries its value, legibly."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = [t["name"] for t in manifest["tasks"]]
    low, high = colour_limits(stages)
    columns = min(PANELS_PER_ROW, len(stages))
    rows = -(-len(stages) // columns)
    side = max(3.2, 0.75 * len(names) + 2.2)
    figure, axes = plt.subplots(
        rows,
        columns,
        figsize=(side * columns + 1.0, side * rows + 0.6),
        squeeze=False,
        layout="constrained",
    )
    cmap = plt.get_cmap("viridis").with_extremes(bad="white")  # no link: reads no later task
    image = None
    for axis, (stage, matrix) in zip(axes.flat, stages, strict=False):
        image = _heatmap(axis, matrix, names, cmap, low, high, np)
        axis.set_title(boundary_label(manifest, stage))
    for axis in list(axes.flat)[len(stages) :]:
        axis.set_visible(False)
    kind = manifest["connection"]["name"]
    if any(
        i != j and v is not None
        for _, m in stages
        for i, row in enumerate(m)
        for j, v in enumerate(row)
    ):
        colourbar = figure.colorbar(image, ax=axes, shrink=0.8, aspect=30)
        colourbar.set_label(f"{RELATION_LABELS.get(kind, 'weight')} (own column left out)")
    figure.suptitle(
        f"{manifest['name']} v{manifest['version']}: {kind} relations\n"
        "row: task, column: the source it reads"
    )
    path = Path(path)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


# What the numbers are, per connection kind (see the module's docstring).
RELATION_LABELS = {
    "ttc": "gate α",
    "nddr": "block norm / own block norm",
    "cross-stitch": "mean cross-stitch weight",
}


def _heatmap(
    axis: Any, matrix: Matrix, names: list[str], cmap: Any, low: float, high: float, np: Any
) -> Any:
    """One stage's panel: links coloured on the shared scale, own cells grey, every cell
    labelled in a colour that reads on its background."""
    from matplotlib.colors import Normalize
    from matplotlib.patches import Rectangle

    values = np.array([[np.nan if v is None else v for v in row] for row in matrix], dtype=float)
    np.fill_diagonal(values, np.nan)
    norm = Normalize(vmin=low, vmax=high)
    image = axis.imshow(np.ma.masked_invalid(values), cmap=cmap, norm=norm)
    size = 10 if len(names) <= 6 else 8
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            if value is None:
                continue
            if i == j:
                axis.add_patch(
                    Rectangle(
                        (j - 0.5, i - 0.5),
                        1,
                        1,
                        facecolor=OWN_COLOUR,
                        hatch="//",
                        edgecolor="white",
                        linewidth=0,
                    )
                )
                axis.text(
                    j,
                    i,
                    f"own\n{value:.2f}",
                    ha="center",
                    va="center",
                    fontsize=size - 1,
                    color="#404040",
                )
                continue
            red, green, blue, _ = cmap(norm(value))
            dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5
            axis.text(
                j,
                i,
                f"{value:.3f}",
                ha="center",
                va="center",
                fontsize=size,
                color="white" if dark else "black",
            )
    axis.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=9)
    axis.set_yticks(range(len(names)), names, fontsize=9)
    axis.set_xlabel("source")
    axis.set_ylabel("task")
    return image
