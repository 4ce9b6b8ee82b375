"""What the gates learned: per stage, how much each task draws from each other task.

The numbers come from the manifest (each task's `relations`, written at every commit), so they
are read without torch: TTC gates α_ij, NDDR block norms relative to the own block,
cross-stitch weights (per channel: their mean; per layer: the unit's weight). `plot` draws
them as heatmaps, one per stage boundary. Where the store fuses the last stage's features
into the head (connection option `head_fusion`), the last boundary is that connection:
`stage L → head` (DMT Table 6's "layer 6 to layer 7" for dmt-cnn).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from dmtcore.errors import InvalidValueError
from dmtcore.hooks.kinds import HEAD_FUSION

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


def connection_label(manifest: dict[str, Any]) -> str:
    """How reports name the store's connections: the kind, and for cross-stitch units per layer
    activation map (`granularity=layer`) that they are; per channel, the default, is not said."""
    kind = manifest["connection"]["name"]
    return f"{kind} (one unit per layer)" if _per_layer(manifest) else kind


def relation_label(manifest: dict[str, Any]) -> str:
    """What the relation numbers of the store's connection kind are, for a plot's colour bar."""
    if _per_layer(manifest):
        return "cross-stitch weight"
    return RELATION_LABELS.get(manifest["connection"]["name"], "weight")


def _per_layer(manifest: dict[str, Any]) -> bool:
    connection = manifest["connection"]
    return connection["name"] == "cross-stitch" and (
        connection["options"].get("granularity") == "layer"
    )


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
    kind = connection_label(manifest)
    if any(
        i != j and v is not None
        for _, m in stages
        for i, row in enumerate(m)
        for j, v in enumerate(row)
    ):
        colourbar = figure.colorbar(image, ax=axes, shrink=0.8, aspect=30)
        colourbar.set_label(f"{relation_label(manifest)} (own column left out)")
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


# The run artifact's heatmap (`heatmap_png`): cell side, margins and font sizes in pixels.
CELL = 64
GAP = 24
FONT = 13


def heatmap_png(manifest: dict[str, Any], stages: list[tuple[int, Matrix]], path: Path) -> Path:
    """The heatmaps of `plot` drawn with Pillow alone, for the relations.png every tracked run
    logs: the same panels (one per stage, up to three per row), the same shared viridis scale
    over the links between tasks, own cells grey and marked 'own', every cell labelled, and a
    colour bar. Why not `plot`: importing matplotlib and laying its figure out cost about 1 CPU
    second per run, more than the rest of the run's tracking; this takes milliseconds.
    `dmt connections --plot` still draws with matplotlib."""
    from PIL import Image, ImageDraw

    from dmtcore.tasks.visualize import viridis

    names = [t["name"] for t in manifest["tasks"]]
    font, small = _font(FONT), _font(FONT - 2)
    low, high = colour_limits(stages)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def width(text: str, face: Any = font) -> int:
        return int(measure.textlength(text, font=face))

    label = max(width(n) for n in names) + 8  # row labels left of, column labels under a grid
    side = CELL * len(names)
    panel_w, panel_h = label + side, FONT + 8 + side + label
    columns = min(PANELS_PER_ROW, len(stages))
    rows = -(-len(stages) // columns)
    kind = connection_label(manifest)
    title = [
        f"{manifest['name']} v{manifest['version']}: {kind} relations",
        "row: task, column: the source it reads",
    ]
    bar = f"{relation_label(manifest)} (own column left out)"
    top = 2 * (FONT + 6) + GAP
    figure_w = max(GAP + columns * (panel_w + GAP), max(width(t) for t in title) + 2 * GAP)
    figure_h = top + rows * (panel_h + GAP) + 3 * FONT + GAP
    image = Image.new("RGB", (figure_w, figure_h), "white")
    draw = ImageDraw.Draw(image)
    for line, text in enumerate(title):
        draw.text((figure_w // 2, GAP // 2 + line * (FONT + 6)), text, "black", font, "ma")
    for index, (stage, matrix) in enumerate(stages):
        x = GAP + (index % columns) * (panel_w + GAP)
        y = top + (index // columns) * (panel_h + GAP)
        draw.text((x + label + side // 2, y), boundary_label(manifest, stage), "black", font, "ma")
        grid_x, grid_y = x + label, y + FONT + 8
        for i, row in enumerate(matrix):
            draw.text((grid_x - 6, grid_y + i * CELL + CELL // 2), names[i], "black", font, "rm")
            for j, value in enumerate(row):
                box = (grid_x + j * CELL, grid_y + i * CELL)
                centre = (box[0] + CELL // 2, box[1] + CELL // 2)
                end = (box[0] + CELL - 1, box[1] + CELL - 1)
                if value is None:  # no link: reads no later task
                    draw.rectangle((box, end), "white", "#eeeeee")
                elif i == j:
                    draw.rectangle((box, end), OWN_COLOUR, "white")
                    draw.text(centre, f"own\n{value:.2f}", "#404040", small, "mm", align="center")
                else:
                    colour = tuple(int(c) for c in viridis((value - low) / (high - low)))
                    dark = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2] < 128
                    draw.rectangle((box, end), colour)
                    draw.text(centre, f"{value:.3f}", "white" if dark else "black", font, "mm")
        for j, name in enumerate(names):  # column labels, vertical, under the grid
            text = Image.new("RGB", (width(name) + 4, FONT + 6), "white")
            ImageDraw.Draw(text).text((2, 2), name, "black", font)
            image.paste(
                text.rotate(90, expand=True),
                (grid_x + j * CELL + CELL // 2 - FONT // 2 - 3, grid_y + side + 4),
            )
    links = any(
        i != j and v is not None
        for _, m in stages
        for i, r in enumerate(m)
        for j, v in enumerate(r)
    )
    if links:  # the colour bar, under the panels
        bar_y = top + rows * (panel_h + GAP)
        bar_w = min(figure_w - 4 * GAP, 360)
        bar_x = (figure_w - bar_w) // 2
        ramp = viridis([k / (bar_w - 1) for k in range(bar_w)])
        image.paste(Image.fromarray(ramp[None].repeat(FONT, 0)), (bar_x, bar_y))
        draw.text((bar_x - 6, bar_y + FONT // 2), f"{low:.3f}", "black", small, "rm")
        draw.text((bar_x + bar_w + 6, bar_y + FONT // 2), f"{high:.3f}", "black", small, "lm")
        draw.text((figure_w // 2, bar_y + FONT + 4), bar, "black", small, "ma")
    path = Path(path)
    image.save(path, format="PNG")
    return path


def _font(size: int) -> Any:
    """DejaVu Sans at `size`, the font matplotlib draws `plot` with (its file ships inside the
    matplotlib package, found without importing it), which has the '→' and 'α' the labels use;
    Pillow's own font where that file or FreeType is missing."""
    import importlib.util

    from PIL import ImageFont

    spec = importlib.util.find_spec("matplotlib")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        with contextlib.suppress(OSError, ImportError):
            return ImageFont.truetype(str(Path(folder, "mpl-data/fonts/ttf/DejaVuSans.ttf")), size)
    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError, TypeError):
        return ImageFont.load_default()
