"""The training loop shared by add-task and remove-task's reconnection.

Only the parts in the model's `TrainingPlan` learn; frozen columns run without autograd and in
eval mode. Several targets train by taking turns, one batch each, each on its own data and loss
(DMT §4.1). After every epoch the targets are validated and the best epoch by the mean primary
metric is kept; the trained parts are restored to it at the end.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from tqdm import tqdm

from dmtcore.data import Batches
from dmtcore.errors import InvalidValueError, TrainingError
from dmtcore.manifest import WEIGHT_PARTS
from dmtcore.metrics import compute_metrics, loss_function
from dmtcore.model import MultiTaskModel
from dmtcore.runinfo import EpochReport
from dmtcore.taskspec import TaskSpec


@dataclass(frozen=True)
class TrainSettings:
    """What a user tunes for one operation; validated before anything is loaded."""

    epochs: int = 5
    batch_size: int = 64
    lr: float = 1e-3
    connection_lr_mult: float | None = None
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise InvalidValueError(f"epochs must be a positive integer, got {self.epochs!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise InvalidValueError(
                f"batch size must be a positive integer, got {self.batch_size!r}"
            )
        if not (isinstance(self.lr, float | int) and math.isfinite(self.lr) and self.lr > 0):
            raise InvalidValueError(f"learning rate must be a positive number, got {self.lr!r}")
        mult = self.connection_lr_mult
        if mult is not None and not (math.isfinite(mult) and mult > 0):
            raise InvalidValueError(
                f"connection learning-rate multiplier must be positive, got {mult!r}"
            )


@dataclass
class Target:
    """One task being trained: its spec and its batches."""

    spec: TaskSpec
    train: Batches
    val: Batches


@dataclass
class FitResult:
    best_epoch: int
    metrics: dict[str, dict[str, float]]
    epochs: list[EpochReport]


def evaluate(model: MultiTaskModel, spec: TaskSpec, batches: Batches) -> dict[str, float]:
    """The task's metrics over a whole split, in eval mode."""
    was_training = model.training
    model.eval()
    outputs, labels = [], []
    with torch.inference_mode():
        for images, batch_labels in batches:
            outputs.append(model(images, [spec.name])[spec.name].float().cpu())
            labels.append(batch_labels.cpu())
    model.train(was_training)
    return compute_metrics(list(spec.metrics), torch.cat(outputs), torch.cat(labels))


def _turns(targets: list[Target]) -> Iterator[tuple[Target, torch.Tensor, torch.Tensor]]:
    """Batches of all targets interleaved, one of each in turn, until every loader is spent."""
    iterators = [(t, iter(t.train)) for t in targets]
    while iterators:
        still_running = []
        for target, iterator in iterators:
            batch = next(iterator, None)
            if batch is not None:
                still_running.append((target, iterator))
                yield target, *batch
        iterators = still_running


def flat_relation_weights(model: MultiTaskModel, tasks: list[str]) -> dict[str, float]:
    """'alpha.<task>.stage<l>.<source>' -> weight, for the tasks being trained."""
    weights = model.relation_weights()
    return {
        f"alpha.{task}.stage{stage}.{source}": value
        for task in tasks
        for stage, row in enumerate(weights[task], start=1)
        for source, value in row.items()
        if source != task
    }


def fit(
    model: MultiTaskModel,
    targets: list[Target],
    settings: TrainSettings,
    on_epoch: Callable[[EpochReport], None] = lambda report: None,
) -> FitResult:
    """Train the model's planned parts on `targets`; returns the best epoch's metrics."""
    groups = model.param_groups(settings.connection_lr_mult)
    optimizer = torch.optim.Adam(
        [
            {"params": g.params, "lr": settings.lr * g.lr_mult, "weight_decay": g.weight_decay}
            for g in groups
        ]
    )
    names = [t.spec.name for t in targets]
    losses = {t.spec.name: loss_function(t.spec.loss) for t in targets}
    best_score = -math.inf
    best_state: dict[tuple[str, str], dict[str, torch.Tensor]] | None = None
    best: tuple[int, dict[str, dict[str, float]]] | None = None
    reports: list[EpochReport] = []
    steps_per_epoch = sum(len(t.train) for t in targets)
    for epoch in range(1, settings.epochs + 1):
        started = time.perf_counter()
        model.train_mode()
        totals: dict[str, torch.Tensor] = {}
        counts = dict.fromkeys(names, 0)
        bar = tqdm(
            total=steps_per_epoch,
            desc=f"epoch {epoch}/{settings.epochs}",
            leave=False,
            disable=None,
            file=sys.stderr,
        )
        for step, (target, images, labels) in enumerate(_turns(targets)):
            name = target.spec.name
            loss = losses[name](model(images, [name])[name], labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            totals[name] = totals[name] + loss.detach() if name in totals else loss.detach()
            counts[name] += 1
            if step == 0:
                _check_finite(name, loss.item(), epoch, settings)
            bar.update()
        bar.close()
        train_loss = {name: float(totals[name]) / counts[name] for name in names if counts[name]}
        for name, value in train_loss.items():
            _check_finite(name, value, epoch, settings)
        metrics = {t.spec.name: evaluate(model, t.spec, t.val) for t in targets}
        score = sum(metrics[t.spec.name][t.spec.primary_metric] for t in targets) / len(targets)
        is_best = score > best_score
        if is_best:
            best_score, best_state, best = score, _snapshot(model), (epoch, metrics)
        report = EpochReport(
            epoch,
            train_loss,
            metrics,
            flat_relation_weights(model, names),
            time.perf_counter() - started,
            is_best,
        )
        reports.append(report)
        on_epoch(report)
    assert best_state is not None and best is not None
    _restore(model, best_state)
    model.eval()
    return FitResult(best[0], best[1], reports)


def _check_finite(task: str, value: float, epoch: int, settings: TrainSettings) -> None:
    if not math.isfinite(value):
        raise TrainingError(
            f"task {task!r}: the training loss became {value} in epoch {epoch}; "
            f"lower the learning rate (now {settings.lr}) or check the data for NaN/inf values"
        )


def _snapshot(model: MultiTaskModel) -> dict[tuple[str, str], dict[str, torch.Tensor]]:
    """Copies of the trained parts' weights and BatchNorm statistics."""
    plan = model.plan
    trained = {"column": plan.columns, "connections": plan.connections, "head": plan.heads}
    return {
        (name, part): {
            k: v.detach().clone() for k, v in model.part(name, part).state_dict().items()
        }
        for part in WEIGHT_PARTS
        for name in trained[part]
    }


def _restore(
    model: MultiTaskModel, snapshot: dict[tuple[str, str], dict[str, torch.Tensor]]
) -> None:
    for (name, part), state in snapshot.items():
        model.part(name, part).load_state_dict(state)
