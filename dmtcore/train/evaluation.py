"""Metrics of stored or training tasks over a split, computing every needed column once.

`evaluate_tasks` runs tasks whose splits hold the very same images (the digits attributes, the
CelebA attributes) through one forward pass per batch: every column is computed once for all
of them, where one pass per task would recompute the shared earlier columns for each.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch.utils.data import TensorDataset

from dmtcore.model.multitask import evaluating
from dmtcore.tasks.data import Batches
from dmtcore.tasks.metrics import MetricState
from dmtcore.tasks.spec import TaskSpec
from dmtcore.train.feature_cache import FeatureCache


def autocast(device: torch.device, precision: str) -> AbstractContextManager[Any]:
    """bf16 autocast when asked for: matrix products in bfloat16, the rest in float32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def evaluate(
    model: Any,
    spec: TaskSpec,
    batches: Batches,
    cache: FeatureCache | None = None,
    precision: str = "fp32",
) -> dict[str, float]:
    """The task's metrics over a whole split, in eval mode (frozen features from `cache`)."""
    state = metric_state(spec)
    with evaluating(model), torch.inference_mode(), autocast(batches.device, precision):
        for images, batch_labels, index in batches.indexed():
            given = cache.lookup(spec.name, "val", index) if cache else None
            state.update(model(images, [spec.name], given)[spec.name], batch_labels)
    return state.result()


def metric_state(spec: TaskSpec) -> MetricState:
    return MetricState(spec.output, list(spec.metrics), spec.num_outputs)


def shared_images(dataset: Any) -> Any:
    """A key equal for in-memory datasets whose image tensor is the very same memory."""
    if isinstance(dataset, TensorDataset):
        images = dataset.tensors[0]
        return (images.data_ptr(), tuple(images.shape), images.stride(), images.dtype)
    return id(dataset)


def evaluate_tasks(
    model: Any, specs: Sequence[TaskSpec], splits: Sequence[Batches], precision: str = "fp32"
) -> dict[str, dict[str, float]]:
    """Metrics of every task on its split; tasks whose splits share their images take one
    forward pass per batch together."""
    groups: dict[Any, list[int]] = {}
    for position, batches in enumerate(splits):
        groups.setdefault(shared_images(batches.dataset), []).append(position)
    results = {}
    for positions in groups.values():
        if len(positions) == 1:
            [i] = positions
            results[specs[i].name] = evaluate(model, specs[i], splits[i], precision=precision)
        else:
            results.update(
                _evaluate_together(
                    model,
                    [specs[i] for i in positions],
                    splits[positions[0]],
                    [splits[i] for i in positions],
                    precision,
                )
            )
    return {spec.name: results[spec.name] for spec in specs}


def _evaluate_together(
    model: Any,
    specs: list[TaskSpec],
    lead: Batches,
    splits: list[Batches],
    precision: str,
) -> dict[str, dict[str, float]]:
    names = [spec.name for spec in specs]
    labels = {spec.name: batches.all_labels() for spec, batches in zip(specs, splits, strict=True)}
    states = {spec.name: metric_state(spec) for spec in specs}
    with evaluating(model), torch.inference_mode(), autocast(lead.device, precision):
        for images, _, index in lead.indexed():
            logits = model(images, names)
            for name in names:
                batch_labels = labels[name][index.to(labels[name].device)]
                states[name].update(logits[name], batch_labels)
    return {name: state.result() for name, state in states.items()}
