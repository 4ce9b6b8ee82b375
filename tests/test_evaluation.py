"""`eval` runs tasks that share their images through one forward pass per batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dmtcore.operations import evaluate_store, load_current
from dmtcore.tasks.data import Batches
from dmtcore.tasks.spec import DataRequest
from dmtcore.train.evaluation import evaluate, evaluate_tasks, shared_images


def test_shared_evaluation_equals_one_pass_per_task(digits_store: Path, host) -> None:
    model, manifest = load_current(digits_store, host)
    names = [t["name"] for t in manifest["tasks"]]
    specs = [host.kinds.task(n) for n in names]
    splits = [
        Batches(
            s,
            s.datasets(DataRequest(Path("."), None)).val,
            model.input_spec,
            64,
            False,
            torch.device("cpu"),
        )
        for s in specs
    ]
    assert len({shared_images(b.dataset) for b in splits}) == 1, "digits tasks share images"
    calls = []
    forward = model.forward
    model.forward = lambda x, tasks=None, *a: calls.append(list(tasks)) or forward(x, tasks, *a)
    together = evaluate_tasks(model, specs, splits)
    assert all(c == names for c in calls) and len(calls) == len(splits[0])
    model.forward = forward
    for spec, batches in zip(specs, splits, strict=True):
        assert together[spec.name] == pytest.approx(evaluate(model, spec, batches), abs=1e-6)
    assert evaluate_store(digits_store, host) == together
