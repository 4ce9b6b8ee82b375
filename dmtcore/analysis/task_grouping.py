"""Which tasks to train together, before any joint training (DMT §2, Tables 1–2).

The DMT paper groups binary tasks by their **response contrast maps** (RCM): the mean feature
map of a task's positive samples minus that of its negative samples, at one stage of a CNN.
Where the contrast is high, that region and channel carry the task's key signal; two tasks
whose maps overlap have "more overlapped interest spots" and are more likely to benefit from
learning jointly. The paper measures this with the L1 distance between maps, and compares it
with grouping by how often labels co-occur (Liu et al. 2015).

Choices made here, and why:

- **Features** come from the output of stage N of one column of a store (any stored task's;
  the column then sees every task's images through the store's connections), or, when the
  store is absent or empty, of a fresh hard-shared column (one trunk, one head per given task)
  trained briefly on all the given tasks: features that know something of every task, none
  favoured, and nothing committed anywhere. The default stage is the last convolutional one
  (the last stage with a C×H×W output), whose responses are the most task-specific that are
  still maps.
- **A contrast map is mean(positive) − mean(negative)** over every channel and position, as
  in the paper: signed, since the direction says which responses a task's positives raise
  and which they lower (|contrast| maps were tried: they blur "raises left features,
  lowers right ones" into "uses position features" and placed `red-circle` nearer to
  `position` than to `kind` on one seed of three). Which label a task calls positive is
  arbitrary ("the digit is large" and "the digit is small" are one question), so the
  distance between two maps is the smaller of the distance to the other map and to its
  negation.
- **Normalised distance**: each map is scaled to an L1 norm of 1, and the distance is half
  the L1 distance between two maps, in [0, 1]: 0 = the same contrast in the same proportions,
  1 = contrasts on disjoint features (or exactly opposite ones, were polarity not folded).
  Maps from different stages, columns, datasets or class balances are so comparable, and a
  threshold means the same thing on any of them.
- **Multi-class tasks** get one map per class (one class against the rest) and the distance
  between two tasks is, by default, the **minimum** over their pairs of class maps. A
  multi-class task is the union of its one-vs-rest questions, and joint training pays off
  when any of them shares interest spots with the other task: the composite "red circle"
  shares its spots with "circle" within `kind` and with "red" within `colour`, and a mean
  would drown that pair in the unrelated ones (`reduce="mean"` is there to compare). The cost:
  a task with more classes has more chances to be near, so it reads slightly closer to
  everything; the class pair that decided each distance is reported.
- **Co-occurrence** is shown where two tasks label the very same images (the same image
  tensor in memory, as the digits attributes or shapes tasks do): the phi coefficient
  (the correlation of the two label indicators, in [−1, 1]); for a multi-class task the
  one-vs-rest indicator pair with the largest |phi|, sign kept.
- **Groups** come from average-linkage hierarchical clustering of the distance matrix, cut
  at a distance (`threshold`), into a number of groups (`groups`), or by default in the
  middle of the largest gap between successive merge heights.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dmtcore.errors import DataError, InvalidValueError
from dmtcore.tasks.names import unknown_name

REDUCTIONS = ("min", "mean")
SPLITS = ("train", "val")
SUPPORTED_OUTPUTS = ("binary", "multiclass")
Notify = Callable[[str], None]


@dataclass(frozen=True)
class RelateOptions:
    """What `relate` computes from: `column` (a stored task) and `stage` (from 1), or a fresh
    column when the store has no tasks; the split whose samples give the maps; the reduction
    over class pairs; and how the dendrogram is cut."""

    column: str | None = None
    stage: int | None = None
    split: str = "val"
    reduce: str = "min"
    threshold: float | None = None
    groups: int | None = None


@dataclass
class ContrastMaps:
    """One task's maps: one row per class whose contrast is defined (binary: the positive
    class only), each of L1 norm 1, with the class names in the same order."""

    task: str
    classes: list[str]
    maps: np.ndarray  # K × D
    labels: np.ndarray | None = None  # the split's labels, for co-occurrence
    images_key: Any = None  # equal for tasks whose split holds the very same images
    samples: int = 0


@dataclass
class Relatedness:
    tasks: list[str]
    features: dict[str, Any]
    reduce: str
    distance: np.ndarray
    via: list[list[list[str] | None]]
    cooccurrence: list[list[float | None]]
    linkage: np.ndarray
    cut: dict[str, Any]
    groups: list[list[str]]
    samples: dict[str, int] = field(default_factory=dict)

    def nearest(self) -> dict[str, list[str]]:
        """Every task's other tasks, nearest first."""
        order: dict[str, list[str]] = {}
        for i, name in enumerate(self.tasks):
            others = [j for j in np.argsort(self.distance[i], kind="stable") if j != i]
            order[name] = [self.tasks[j] for j in others]
        return order

    def as_dict(self) -> dict[str, Any]:
        return {
            "tasks": self.tasks,
            "features": self.features,
            "samples": self.samples,
            "reduce": self.reduce,
            "distance": _rounded(self.distance),
            "via": self.via,
            "nearest": self.nearest(),
            "cooccurrence": [
                [None if v is None else round(v, 4) for v in row] for row in self.cooccurrence
            ],
            "groups": self.groups,
            "cut": self.cut,
            "linkage": _rounded(self.linkage),
        }


def _rounded(values: np.ndarray) -> list[list[float]]:
    return [[round(float(v), 4) for v in row] for row in np.asarray(values)]


# -- checks -------------------------------------------------------------------------------


def check_request(names: Sequence[str], options: RelateOptions) -> None:
    """Everything about the request that needs neither data nor a model, checked first."""
    if len(names) < 2 or len(set(names)) != len(names):
        raise InvalidValueError(
            f"give two or more distinct tasks to relate, got {' '.join(names) or 'none'}"
        )
    if options.reduce not in REDUCTIONS:
        raise InvalidValueError(
            f"unknown reduction {options.reduce!r}; valid: {', '.join(REDUCTIONS)}"
        )
    if options.split not in SPLITS:
        raise InvalidValueError(f"unknown split {options.split!r}; valid: {', '.join(SPLITS)}")
    if options.threshold is not None and options.groups is not None:
        raise InvalidValueError("give --threshold or --groups, not both")
    threshold = options.threshold
    if threshold is not None and not (math.isfinite(threshold) and threshold > 0):
        raise InvalidValueError(
            f"threshold must be a distance > 0 (distances run from 0 to 1), got {threshold}"
        )
    if options.groups is not None and not 1 <= options.groups <= len(names):
        raise InvalidValueError(
            f"--groups must be 1 to {len(names)} (the number of tasks), got {options.groups}"
        )


def check_tasks(specs: Sequence[Any]) -> None:
    for spec in specs:
        if spec.output not in SUPPORTED_OUTPUTS:
            raise InvalidValueError(
                f"task {spec.name!r} is {spec.output}; response contrast maps need classes of "
                f"images: valid tasks are {' or '.join(SUPPORTED_OUTPUTS)}"
            )


def check_stage(stage: int | None, shapes: Sequence[tuple[int, ...]], where: str) -> int:
    """The stage asked for (from 1) or the default, the last stage with a C×H×W output."""
    if stage is None:
        spatial = [number for number, shape in enumerate(shapes, 1) if len(shape) == 3]
        return spatial[-1] if spatial else len(shapes)
    if not 1 <= stage <= len(shapes):
        raise InvalidValueError(
            f"stage {stage} does not exist in {where}; valid: 1 to {len(shapes)}"
        )
    return stage


# -- maps, distances, co-occurrence, groups (numpy only) -----------------------------------


class ContrastAccumulator:
    """Per-class feature sums of one task over a split, filled batch by batch, so that no
    feature is kept: a split of any size costs K×D numbers."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.sums: np.ndarray | None = None
        self.counts = np.zeros(num_classes, dtype=np.int64)

    def add(self, features: np.ndarray, labels: np.ndarray) -> None:
        features = features.reshape(len(features), -1).astype(np.float64)
        if self.sums is None:
            self.sums = np.zeros((self.num_classes, features.shape[1]))
        np.add.at(self.sums, labels, features)
        self.counts += np.bincount(labels, minlength=self.num_classes)

    def maps(self, task: str, output: str) -> tuple[np.ndarray, list[int]]:
        """Normalised contrast maps (one class against the rest) of every class that some
        samples have and some lack (binary: of class 1), with the classes they belong to."""
        total = int(self.counts.sum())
        if self.sums is None or total == 0:
            raise DataError(f"task {task!r}: the split has no samples")
        classes = [1] if output == "binary" else range(self.num_classes)
        classes = [c for c in classes if 0 < self.counts[c] < total]
        if not classes:
            raise DataError(
                f"task {task!r}: every sample of the split has the same label; a contrast map "
                "needs positive and negative samples"
            )
        overall = self.sums.sum(0)
        rows = []
        for c in classes:
            inside = self.sums[c] / self.counts[c]
            outside = (overall - self.sums[c]) / (total - self.counts[c])
            rows.append(normalised(inside - outside))
        return np.stack(rows), classes


def normalised(values: np.ndarray) -> np.ndarray:
    """Scaled to an L1 norm of 1 (an all-zero map stays zero: at distance 0.5 from any other)."""
    total = float(np.abs(values).sum())
    return values / total if total > 0 else values


def map_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Half the L1 distance of two maps of L1 norm 1, to the other map or to its negation
    (the task asked the other way round), whichever is nearer: in [0, 1]."""
    return signed_map_distance(a, b)[0]


def signed_map_distance(a: np.ndarray, b: np.ndarray) -> tuple[float, bool]:
    """`map_distance`, and whether the negation of `b` was the nearer one."""
    same, opposite = float(np.abs(a - b).sum()), float(np.abs(a + b).sum())
    return 0.5 * min(same, opposite), opposite < same


def distance_matrix(
    maps: Sequence[ContrastMaps], reduce: str = "min"
) -> tuple[np.ndarray, list[list[list[str] | None]]]:
    """Task × task distances, and for multi-class pairs the class pair that gave the minimum
    (None on the diagonal and between two binary tasks)."""
    n = len(maps)
    distance = np.zeros((n, n))
    via: list[list[list[str] | None]] = [[None] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            signed = [[signed_map_distance(a, b) for b in maps[j].maps] for a in maps[i].maps]
            pairs = np.array([[d for d, _ in row] for row in signed])
            a, b = np.unravel_index(int(pairs.argmin()), pairs.shape)
            distance[i, j] = distance[j, i] = pairs.min() if reduce == "min" else pairs.mean()
            if pairs.size > 1:
                # "not green": the class's contrast matched with its sign flipped
                negated = "not " if signed[a][b][1] else ""
                via[i][j] = [maps[i].classes[a], negated + maps[j].classes[b]]
                via[j][i] = [maps[j].classes[b], negated + maps[i].classes[a]]
    return distance, via


def indicators(labels: np.ndarray, output: str, num_classes: int) -> np.ndarray:
    """N × K one-vs-rest indicators (binary: the positive class only)."""
    classes = [1] if output == "binary" else list(range(num_classes))
    return np.stack([labels == c for c in classes], axis=1).astype(np.float64)


def phi(a: np.ndarray, b: np.ndarray) -> float:
    """The strongest phi coefficient between columns of two indicator matrices, sign kept
    (constant columns have none)."""
    a = a - a.mean(0)
    b = b - b.mean(0)
    scale = np.outer(np.sqrt((a**2).sum(0)), np.sqrt((b**2).sum(0)))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.where(scale > 0, (a.T @ b) / np.where(scale > 0, scale, 1.0), np.nan)
    if np.all(np.isnan(corr)):
        return float("nan")
    index = np.unravel_index(int(np.nanargmax(np.abs(corr))), corr.shape)
    return float(corr[index])


def cooccurrence_matrix(
    maps: Sequence[ContrastMaps], indicator_sets: Sequence[np.ndarray]
) -> list[list[float | None]]:
    """Phi coefficients of the pairs of tasks whose split holds the very same images."""
    n = len(maps)
    matrix: list[list[float | None]] = [[None] * n for _ in range(n)]
    for i in range(n):
        for j in range(n):
            same = maps[i].images_key is not None and maps[i].images_key == maps[j].images_key
            if same and len(indicator_sets[i]) == len(indicator_sets[j]):
                value = phi(indicator_sets[i], indicator_sets[j])
                matrix[i][j] = None if math.isnan(value) else value
    return matrix


def suggest_groups(
    names: Sequence[str],
    distance: np.ndarray,
    threshold: float | None = None,
    groups: int | None = None,
) -> tuple[np.ndarray, dict[str, Any], list[list[str]]]:
    """Average-linkage clustering of the distances, cut as asked: (linkage, cut, groups).
    Groups are listed in the order of their first task among `names`."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    tree = linkage(squareform(distance, checks=False), method="average")
    heights = tree[:, 2]
    if groups is not None:
        labels = fcluster(tree, groups, criterion="maxclust")
        cut = {"rule": "groups", "groups": groups}
    else:
        rule = "threshold"
        if threshold is None:
            rule, threshold = "largest gap", largest_gap(heights)
        labels = fcluster(tree, threshold, criterion="distance")
        cut = {"rule": rule, "threshold": round(float(threshold), 4)}
    members: dict[int, list[str]] = {}
    for name, label in zip(names, labels, strict=True):
        members.setdefault(int(label), []).append(name)
    cut["groups"] = len(members)
    return tree, cut, list(members.values())


def largest_gap(heights: np.ndarray) -> float:
    """The middle of the largest gap between successive merge heights; with one merge only
    (two tasks), just above it: one group."""
    heights = np.sort(heights)
    if len(heights) < 2:
        return float(heights[-1]) + 1e-9 if len(heights) else 1.0
    gaps = np.diff(heights)
    i = int(gaps.argmax())
    return float(heights[i] + heights[i + 1]) / 2


# -- features -----------------------------------------------------------------------------


@dataclass
class FeatureSource:
    """A callable images → stage-N features, and what it is, for the report."""

    extract: Callable[[Any], Any]
    description: dict[str, Any]
    input_spec: Any
    model: Any


@dataclass
class RelatePlan:
    """A checked request: the tasks' specs and where their features come from."""

    names: list[str]
    specs: list[Any]
    source: FeatureSource
    options: RelateOptions


def plan_relate(
    path: Path,
    names: Sequence[str],
    host: Any,
    settings: Any,
    options: RelateOptions = RelateOptions(),
) -> RelatePlan:
    """Check everything that needs no data (names, options, the column and its stage) and
    build the feature source: a bad request fails here, before any run is tracked."""
    names = list(names)
    check_request(names, options)
    specs = [host.kinds.task(name) for name in names]
    check_tasks(specs)
    return RelatePlan(names, specs, feature_source(path, specs, host, settings, options), options)


def measure(
    plan: RelatePlan,
    host: Any,
    settings: Any,
    data: Any,
    notify: Notify = lambda message: None,
) -> Relatedness:
    """Distances between the tasks' response contrast maps, co-occurrence, and groups.
    Reads the store (if any) and never writes it."""
    options = plan.options
    maps = contrast_maps(plan.source, plan.specs, host, settings, data, options.split, notify)
    distance, via = distance_matrix(maps, options.reduce)
    indicator_sets = [
        indicators(m.labels, spec.output, spec.num_outputs)
        for m, spec in zip(maps, plan.specs, strict=True)
    ]
    tree, cut, groups = suggest_groups(plan.names, distance, options.threshold, options.groups)
    return Relatedness(
        tasks=plan.names,
        features={**plan.source.description, "split": options.split},
        reduce=options.reduce,
        distance=distance,
        via=via,
        cooccurrence=cooccurrence_matrix(maps, indicator_sets),
        linkage=tree,
        cut=cut,
        groups=groups,
        samples={m.task: m.samples for m in maps},
    )


def relate(
    path: Path,
    names: Sequence[str],
    host: Any,
    settings: Any,
    data: Any,
    options: RelateOptions = RelateOptions(),
    notify: Notify = lambda message: None,
) -> Relatedness:
    """`plan_relate` then `measure`."""
    return measure(plan_relate(path, names, host, settings, options), host, settings, data, notify)


def feature_source(
    path: Path, specs: Sequence[Any], host: Any, settings: Any, options: RelateOptions
) -> FeatureSource:
    """The stored column asked for (or the default one), or, for a store that is absent or
    has no task, a fresh column to be trained on the tasks (see `train_fresh`)."""
    from dmtcore.store.directory import Store

    manifest = Store.open(path).manifest() if Path(path).exists() else None
    if manifest is not None and manifest["tasks"]:
        return _stored_column(path, manifest, specs, host, options)
    if options.column is not None:
        state = "has no tasks" if manifest is not None else "does not exist"
        raise InvalidValueError(
            f"--column {options.column} needs a stored task, but store {str(path)!r} {state}; "
            "leave --column out to train a fresh column on the tasks"
        )
    return _fresh_column(manifest, specs, host, settings, options)


def _stored_column(
    path: Path,
    manifest: dict[str, Any],
    specs: Sequence[Any],
    host: Any,
    options: RelateOptions,
) -> FeatureSource:
    from dmtcore.store.checkpoint import load_model
    from dmtcore.store.directory import Store

    stored = [t["name"] for t in manifest["tasks"]]
    column = options.column
    if column is None:
        column = next((s.name for s in specs if s.name in stored), stored[0])
    elif column not in stored:
        raise unknown_name("task", column, stored, f"in store {str(path)!r} (for --column)")
    model = load_model(Store.open(path), manifest, host.kinds)
    assert model is not None  # a store with tasks has an input spec
    stages = model.part(column, "column")
    shapes = stages.feature_shapes
    stage = check_stage(options.stage, shapes, f"the column of {column!r}")
    module = stages.stages[stage - 1]

    def extract(images: Any) -> Any:
        captured: list[Any] = []
        handle = module.register_forward_hook(lambda m, i, output: captured.append(output))
        try:
            model(images, [column])
        finally:
            handle.remove()
        return captured[0]

    description = {
        "source": "store",
        "store": str(path),
        "version": manifest["version"],
        "backbone": manifest["backbone"]["name"],
        "column": column,
        "stage": stage,
        "stages": len(shapes),
        "shape": list(shapes[stage - 1]),
    }
    return FeatureSource(extract, description, model.input_spec, model)


def _fresh_column(
    manifest: dict[str, Any] | None,
    specs: Sequence[Any],
    host: Any,
    settings: Any,
    options: RelateOptions,
) -> FeatureSource:
    """A hard-shared column (one trunk, a head per task) of the store's recipe, or the default
    one; trained later by `contrast_maps`, once the data is loaded."""
    import torch

    from dmtcore.model.baselines import HardSharingModel
    from dmtcore.operations import DEFAULT_BACKBONE
    from dmtcore.tasks.names import InputSpec

    backbone_name = manifest["backbone"]["name"] if manifest else DEFAULT_BACKBONE
    backbone_options = dict(manifest["backbone"]["options"]) if manifest else {}
    shape = (manifest or {}).get("input_spec") or specs[0].input_shape
    input_spec = InputSpec.from_shape(shape)
    torch.manual_seed(settings.seed)
    normalization = manifest["backbone"].get("normalization") if manifest else None
    model = HardSharingModel(
        input_spec, host.kinds.backbone(backbone_name), backbone_options, specs, normalization
    )
    shapes = model.trunk.feature_shapes
    stage = check_stage(options.stage, shapes, f"a {backbone_name} column")
    stages = model.trunk.stages[:stage]
    trunk = torch.nn.Sequential(*([model.normalize] if model.normalize else []), *stages)

    def extract(images: Any) -> Any:
        return trunk(images)

    description = {
        "source": "fresh",
        "backbone": backbone_name,
        "column": None,
        "stage": stage,
        "stages": len(shapes),
        "shape": list(shapes[stage - 1]),
        "epochs": settings.epochs,
        "seed": settings.seed,
    }
    return FeatureSource(extract, description, input_spec, model)


def contrast_maps(
    source: FeatureSource,
    specs: Sequence[Any],
    host: Any,
    settings: Any,
    data: Any,
    split: str,
    notify: Notify,
) -> list[ContrastMaps]:
    """Load every task's data (checked), train a fresh column first if that is the source,
    then one pass per distinct image set accumulates every task's per-class sums."""
    import torch

    from dmtcore.model.multitask import evaluating
    from dmtcore.operations import make_target
    from dmtcore.tasks.data import Batches, resolve_device
    from dmtcore.train.evaluation import shared_images

    device = resolve_device(settings.device)
    torch.manual_seed(settings.seed)
    owners = {spec.name: host.kinds.owner("task", spec.name) for spec in specs}
    targets = [
        make_target(spec, source.input_spec, settings, data, device, plugin=owners[spec.name])
        for spec in specs
    ]
    source.model.to(device)
    if source.description["source"] == "fresh":
        _train_fresh(source, targets, settings, notify)
    batches = {
        spec.name: Batches(
            spec,
            getattr(target, split).dataset,
            source.input_spec,
            settings.eval_batch_size,
            False,
            device,
            split=split,
            plugin=owners[spec.name],
        )
        for spec, target in zip(specs, targets, strict=True)
    }
    groups: dict[Any, list[Any]] = {}
    for spec in specs:
        groups.setdefault(shared_images(batches[spec.name].dataset), []).append(spec)
    where = _where(source.description)
    notify(f"response contrast maps of {len(specs)} tasks from {where}, {split} split")
    results: dict[str, ContrastMaps] = {}
    with evaluating(source.model), torch.inference_mode():
        for key, members in groups.items():
            lead = batches[members[0].name]
            labels = {
                s.name: batches[s.name].all_labels() if lead.in_memory else None for s in members
            }
            sums = {s.name: ContrastAccumulator(max(s.num_outputs, 2)) for s in members}
            seen: dict[str, list[np.ndarray]] = {s.name: [] for s in members}
            for images, batch_labels, index in lead.indexed():
                features = source.extract(images).float().cpu().numpy()
                for spec in members:
                    own = labels[spec.name]
                    y = batch_labels if own is None else own[index.to(own.device)]
                    y = y.cpu().numpy().astype(np.int64)
                    sums[spec.name].add(features, y)
                    seen[spec.name].append(y)
            for spec in members:
                matrix, classes = sums[spec.name].maps(spec.name, spec.output)
                class_names = list(spec.class_names or []) or [
                    str(c) for c in range(max(spec.num_outputs, 2))
                ]
                all_labels = np.concatenate(seen[spec.name])
                results[spec.name] = ContrastMaps(
                    spec.name,
                    [class_names[c] for c in classes],
                    matrix,
                    all_labels,
                    key,
                    len(all_labels),
                )
    return [results[spec.name] for spec in specs]


def describe_features(description: dict[str, Any]) -> str:
    """Where the features came from, in words."""
    shape = "×".join(map(str, description["shape"]))
    split = f", {description['split']} split" if "split" in description else ""
    return f"{_where(description)} ({shape}){split}"


def _where(description: dict[str, Any]) -> str:
    stage = f"stage {description['stage']} of {description['stages']}"
    if description["source"] == "fresh":
        return f"a fresh {description['backbone']} column, {stage}"
    return f"the column of {description['column']!r} (store v{description['version']}), {stage}"


def _train_fresh(source: FeatureSource, targets: list[Any], settings: Any, notify: Notify) -> None:
    """Train the fresh hard-shared column on every task, taking turns (DMT §4.1), briefly."""
    from dmtcore.train.loop import fit

    names = ", ".join(t.spec.name for t in targets)
    notify(
        f"training a fresh {source.description['backbone']} column on {names} for "
        f"{settings.epochs} epoch(s) (nothing is stored)"
    )
    fit(source.model, targets, settings, notify=notify)


# -- plot ---------------------------------------------------------------------------------


def plot(result: Relatedness, path: Path) -> Path:
    """The dendrogram beside the distance heatmap (and the co-occurrence heatmap where tasks
    share images), rows and columns in the dendrogram's order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.cluster.hierarchy import dendrogram

    names = result.tasks
    n = len(names)
    shared = any(
        v is not None
        for i, row in enumerate(result.cooccurrence)
        for j, v in enumerate(row)
        if i != j
    )
    panels = 3 if shared else 2
    side = max(3.2, 0.5 * n + 2.0)
    figure, axes = plt.subplots(
        1,
        panels,
        figsize=(side * (panels - 0.4), side),
        gridspec_kw={"width_ratios": [0.6] + [1.0] * (panels - 1)},
        layout="constrained",
    )
    tree = dendrogram(
        result.linkage,
        orientation="left",
        labels=names,
        ax=axes[0],
        color_threshold=result.cut.get("threshold", 0) if "threshold" in result.cut else 0,
        above_threshold_color="grey",
    )
    axes[0].invert_yaxis()  # leaves top to bottom, as the heatmap rows
    axes[0].set_title("average linkage")
    axes[0].set_xlabel("distance")
    if "threshold" in result.cut:
        axes[0].axvline(result.cut["threshold"], color="red", linestyle="--", linewidth=1)
    axes[0].tick_params(axis="y", labelsize=8)
    order = [names.index(label) for label in tree["ivl"]]
    ordered = [names[i] for i in order]
    distance = result.distance[np.ix_(order, order)]
    _heatmap(axes[1], distance, ordered, "RCM distance (0 = same contrast)", "viridis_r", 0.0, 1.0)
    if shared:
        values = np.array(
            [
                [
                    np.nan if result.cooccurrence[i][j] is None else result.cooccurrence[i][j]
                    for j in order
                ]
                for i in order
            ]
        )
        _heatmap(axes[2], values, ordered, "label co-occurrence (phi)", "coolwarm", -1.0, 1.0)
    features = result.features
    figure.suptitle(f"response contrast maps: {describe_features(features)}", fontsize=9)
    path = Path(path)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _heatmap(
    axis: Any, values: np.ndarray, names: list[str], title: str, cmap: str, low: float, high: float
) -> None:
    image = axis.imshow(values, cmap=cmap, vmin=low, vmax=high)
    axis.set_title(title, fontsize=9)
    axis.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    axis.set_yticks(range(len(names)), names, fontsize=7)
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            if not np.isnan(value):
                share = (value - low) / (high - low)
                colour = (
                    "white"
                    if (share > 0.55 if cmap == "viridis_r" else abs(value) > 0.6)
                    else "black"
                )
                axis.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7, color=colour)
    axis.figure.colorbar(image, ax=axis, fraction=0.046)
