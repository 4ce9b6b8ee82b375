"""Which trained column a new column starts from (`dmt add-task --init-from auto`).

Starting a new column from a trained single-task column beats fresh weights (NDDR-CNN Table 3,
cross-stitch Table 3), but not every trained column is as good a start: on shapes.red-circle
after shapes.kind + shapes.colour, the kind column reached the single-task score 11x sooner
than training alone, the colour column 2.2x (benchmarks/incremental_transfer.py). `auto` asks
each stored column how well its own last-stage features already answer the new task: a
nearest-class-mean probe on a fixed, evenly spaced sample of the new task's training images,
scored by balanced accuracy on two folds (class means from one half, scored on the other). It costs one
forward pass of those images through the stored columns, with no training and no randomness,
so it neither touches the training run's random state nor needs the old tasks' data.

`auto` warm-starts only under the connection kinds in `WARM_KINDS`, where it was measured to
help; under the others it starts from fresh weights. Tasks the probe cannot score (not binary or multiclass, or data a plugin streams rather than
keeps in memory) start from the most recently added column, the cheapest guess.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from dmtcore.model.multitask import MultiTaskModel, evaluating

PROBE_SAMPLES = 1024
PROBED_OUTPUTS = ("binary", "multiclass")
# Connection kinds whose transfer a warm start was measured to speed up; others start fresh
# under `auto`. On shapes.red-circle (seed 0) a warm start from shapes.kind cut ttc's steps
# to the single-task score 11x (fresh: 1.1x), but slowed nddr (11.5x vs 23x fresh) and
# cross-stitch (2.8x vs 11x): their mixing weights start far from the identity, so a copied
# column mostly duplicates a source the new column already reads.
WARM_KINDS = ("ttc",)


@dataclass
class Choice:
    """The column a new task starts from, why, and the probe's scores (empty if none ran)."""

    column: str
    reason: str
    scores: dict[str, float] = field(default_factory=dict)


def choose_column(model: MultiTaskModel, candidates: Sequence[str], target: object) -> Choice:
    """The stored task (of `candidates`, in the order they were added) whose column's
    features predict `target`'s labels best; the last one when that cannot be measured."""
    spec, batches = target.spec, target.train  # type: ignore[attr-defined]
    latest = candidates[-1]
    if spec.output not in PROBED_OUTPUTS or not batches.in_memory:
        return Choice(latest, "the most recently added task; a probe needs in-memory class labels")
    if len(candidates) == 1:
        return Choice(latest, "the only stored task")
    size = len(batches.dataset)
    index = torch.linspace(0, size - 1, steps=min(PROBE_SAMPLES, size)).round().long().unique()
    labels = batches.all_labels()[index].reshape(len(index), -1)[:, 0].long().cpu()
    images = batches.fetch(index)
    features = last_stage_features(model, candidates, images)
    scores = {name: round(probe_score(features[name], labels), 4) for name in candidates}
    best = max(reversed(candidates), key=lambda name: scores[name])  # ties: the latest
    listed = ", ".join(f"{name} {score:.3f}" for name, score in scores.items())
    reason = (
        f"its features predict {spec.name} best; balanced accuracy of a nearest-class-mean "
        f"probe on {len(index)} training images: {listed}"
    )
    return Choice(best, reason, scores)


def last_stage_features(
    model: MultiTaskModel, tasks: Sequence[str], images: torch.Tensor, chunk: int = 256
) -> dict[str, torch.Tensor]:
    """Each task's last-stage column output, spatially averaged to one vector per image."""
    captured: dict[str, list[torch.Tensor]] = {name: [] for name in tasks}
    handles = [
        model.columns[model.tasks[name].slot]
        .stages[-1]
        .register_forward_hook(
            lambda module, inputs, output, name=name: captured[name].append(output.float())
        )
        for name in tasks
    ]
    try:
        with evaluating(model), torch.no_grad():
            for start in range(0, len(images), chunk):
                model(images[start : start + chunk], list(tasks))
    finally:
        for handle in handles:
            handle.remove()
    pooled = {}
    for name, parts in captured.items():
        values = torch.cat(parts)
        pooled[name] = values.flatten(2).mean(2) if values.dim() > 2 else values
        pooled[name] = pooled[name].cpu().double()
    return pooled


def probe_score(features: torch.Tensor, labels: torch.Tensor) -> float:
    """Two-fold balanced accuracy of a nearest-class-mean classifier on standardised
    features: no parameter to tune and nothing to overfit (a ridge probe on 360 features
    from 256 images per fold did, and picked the worse column on one seed of three)."""
    folds = (torch.arange(len(labels)) % 2).bool()
    scores = []
    for train in (folds, ~folds):
        x, y = features[train], labels[train]
        mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
        classes = y.unique()
        centres = torch.stack([((x[y == c] - mean) / std).mean(0) for c in classes])
        test = (features[~train] - mean) / std
        predicted = classes[torch.cdist(test, centres).argmin(1)]
        scores.append(balanced_accuracy(labels[~train], predicted))
    return sum(scores) / len(scores)


def balanced_accuracy(labels: torch.Tensor, predicted: torch.Tensor) -> float:
    recalls = [
        float((predicted[labels == c] == c).double().mean()) for c in labels.unique().tolist()
    ]
    return sum(recalls) / len(recalls)
