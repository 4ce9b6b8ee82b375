"""The training loop shared by add-task and remove-task's reconnection.

Only the parts in the model's `TrainingPlan` learn; frozen columns run without autograd and in
eval mode, and with deterministic data their features are computed once and then read from
the feature cache. Several targets whose splits hold the very same images (the digits
attributes) train in one pass per batch: every column runs once and the tasks' losses are
combined into one step by the group's weighting (summed by default: dmtcore.train.weighting;
`joint_mode`); others take turns, one batch each, each on its own data and loss (DMT §4.1),
or under a weighting other than equal one round of one batch per task per step. After every epoch the targets are validated and the best epoch by
`epoch_score` (the primary metric in its direction; a group's mean relative improvement) is kept; the trained parts are restored to it at the end. A caller whose
starting point is already a result (remove-task's cut) passes its metrics as epoch 0: training
then never ends below it. Under torchrun each rank trains on its share of the data through
DistributedDataParallel.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from tqdm import tqdm

from dmtcore.errors import InvalidValueError, TrainingError
from dmtcore.hooks.runinfo import EpochReport
from dmtcore.model.connection_weights import gate_series_layer
from dmtcore.model.multitask import evaluating
from dmtcore.runtime import interrupts
from dmtcore.runtime.distributed import World, sync_buffers, wrap
from dmtcore.runtime.faults import crash_point
from dmtcore.runtime.progress import Stage, bar_disabled, duration
from dmtcore.store.kept_features import DEFAULT_BUDGET_MB, KeptFeatures
from dmtcore.tasks.data import Batches
from dmtcore.tasks.dense_labels import has_labelled_pixels, no_labelled_pixels
from dmtcore.tasks.metrics import loss_function
from dmtcore.tasks.spec import TaskSpec, higher_is_better
from dmtcore.train.evaluation import autocast, evaluate, metric_state, shared_images
from dmtcore.train.feature_cache import FeatureCache, check_cache_settings, size_text
from dmtcore.train.weighting import DEFAULT_WEIGHTING, Weighting, backward
from dmtcore.train.weighting.equal import Equal


def _without_compiler_import(base: type[torch.optim.Optimizer]) -> type[torch.optim.Optimizer]:
    """`base` whose add_param_group, zero_grad and step run torch's own code undecorated.

    torch decorates them to keep torch.compile from tracing an optimiser (`_disable_dynamo`,
    `_use_grad_for_differentiable`), and the decorators import torch._dynamo on first use:
    over a CPU second per command, for an optimiser that is never compiled here (only the
    model's parts are: `Trainable.compile_planned`). The undecorated functions are the same
    arithmetic, so the weights stay bit-identical; step keeps the decorator's grad mode."""
    add_param_group = inspect.unwrap(torch.optim.Optimizer.add_param_group)
    zero_grad = inspect.unwrap(torch.optim.Optimizer.zero_grad)
    step = inspect.unwrap(base.step)

    class Eager(base):  # type: ignore[valid-type, misc]
        def add_param_group(self, param_group: dict[str, Any]) -> None:
            add_param_group(self, param_group)

        def zero_grad(self, set_to_none: bool = True) -> None:
            zero_grad(self, set_to_none)

        def step(self, closure: Callable[[], Any] | None = None) -> Any:
            with torch.set_grad_enabled(self.defaults["differentiable"]):
                return step(self, closure)

    Eager.__name__ = Eager.__qualname__ = base.__name__
    return Eager


_Adam = _without_compiler_import(torch.optim.Adam)
_SGD = _without_compiler_import(torch.optim.SGD)
OPTIMIZERS: dict[str, Callable[[list[dict[str, Any]]], torch.optim.Optimizer]] = {
    "adam": lambda groups: _Adam(groups),
    "sgd": lambda groups: _SGD(groups, momentum=0.9),
}
PRECISIONS = ("fp32", "bf16")
JOINT_MODES = ("auto", "one-pass", "turns")
# BatchNorm's running averages (momentum 0.1) follow the last ~10 steps and start at mean 0,
# variance 1 (0.9**20: 12% of those initial values is left after 20 steps). Fewer steps than
# this per epoch, or in the whole run, make eval-mode scores unreliable: fit warns.
MIN_STEPS_PER_EPOCH = 10
MIN_STEPS_PER_RUN = 20
DEFAULT_BATCH_SIZE = 64
# Batches per trained task that re-estimate BatchNorm statistics: 50 batches of 64 are 3,200
# images, plenty for per-channel means and variances, and bound the pass on large datasets
# to the cost of some 17 training steps.
RECALIBRATION_BATCHES = 50


@dataclass(frozen=True)
class TrainSettings:
    """What a user tunes for one operation; validated before anything is loaded."""

    epochs: int = 5
    # None: DEFAULT_BATCH_SIZE, or fewer for a small training set (`chosen_batch_size`).
    batch_size: int | None = None
    lr: float = 1e-3
    connection_lr_mult: float | None = None
    seed: int = 0
    device: str = "auto"
    eval_every: int | None = None  # validate every N steps instead of after every epoch
    optimizer: str = "adam"  # or "sgd" (momentum 0.9), the papers' optimiser
    balance: bool = False  # draw every class equally often (minority resampling)
    precision: str = "fp32"  # or "bf16": autocast, for GPUs
    feature_cache: str = "auto"  # auto, memory, disk or off: see dmtcore.train.feature_cache
    cache_budget_mb: float = 2048
    cache_dtype: str = "float16"
    # Frozen columns' features kept in the store between operations (dmtcore.store.kept_features),
    # within this many megabytes; 0: none kept or read.
    kept_features_mb: float = DEFAULT_BUDGET_MB
    # NHWC convolutions: no faster for add-task on a CPU (benchmarks/speed_options.py), so off
    # unless asked for; GPUs with tensor cores may gain.
    channels_last: bool = False
    # torch.compile of the trained parts: on a CPU the first epoch pays over a minute of
    # compilation and later epochs run no faster (benchmarks/speed_options.py), so off.
    compile: bool = False
    workers: int = 0  # background processes decoding samples (for image files)
    # Re-estimate the trained parts' BatchNorm statistics on (up to RECALIBRATION_BATCHES of)
    # the training data before every validation, so that validation, the best-epoch choice
    # and the stored model use statistics of the weights as they are: see recalibrate_batchnorm.
    # None (auto): only when a task gets few steps (few_steps_warning), where running averages
    # lag the weights and the pass is a handful of batches; on digits it costs ~20% of an epoch.
    bn_recalibration: bool | None = None
    # How a group of tasks trains: "one-pass" (one forward pass per batch for every task,
    # their losses summed), "turns" (one batch of each task in turn), or "auto": one-pass
    # when the tasks share their training images and nothing resamples them per task.
    joint_mode: str = "auto"
    # Keep the first N stages of each new column as they start (pretrained or warm-started):
    # only the upper stages train, which cuts cost and overfitting on small tasks.
    freeze_stages: int = 0
    # How a group's losses become one step (dmtcore.train.weighting): a method registered
    # through dmt_register_weightings, with its options. "equal" sums them, as dmt always did.
    weighting: str = DEFAULT_WEIGHTING
    weighting_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        seed_limit = 2**32 - 1  # numpy's seeds stop here, torch's at 2**64 - 1: plugins get both
        if type(self.seed) is not int or not 0 <= self.seed <= seed_limit:
            shown = repr(self.seed)
            shown = shown if len(shown) <= 40 else f"{shown[:20]}... ({len(shown)} digits)"
            raise InvalidValueError(
                f"seed must be an integer from 0 to {seed_limit} (2**32 - 1), got {shown}"
            )
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise InvalidValueError(f"epochs must be a positive integer, got {self.epochs!r}")
        size = self.batch_size
        if size is not None and (type(size) is not int or size < 1):
            raise InvalidValueError(f"batch size must be a positive integer, got {size!r}")
        if not (isinstance(self.lr, float | int) and math.isfinite(self.lr) and self.lr > 0):
            raise InvalidValueError(f"learning rate must be a positive number, got {self.lr!r}")
        if self.eval_every is not None and (
            not isinstance(self.eval_every, int) or self.eval_every < 1
        ):
            raise InvalidValueError(
                f"eval_every must be a positive number of steps, got {self.eval_every!r}"
            )
        if self.optimizer not in OPTIMIZERS:
            raise InvalidValueError(
                f"unknown optimizer {self.optimizer!r}; valid: {', '.join(OPTIMIZERS)}"
            )
        if self.precision not in PRECISIONS:
            raise InvalidValueError(
                f"unknown precision {self.precision!r}; valid: {', '.join(PRECISIONS)}"
            )
        if self.joint_mode not in JOINT_MODES:
            raise InvalidValueError(
                f"unknown joint mode {self.joint_mode!r}; valid: {', '.join(JOINT_MODES)}"
            )
        check_cache_settings(self.feature_cache, self.cache_budget_mb, self.cache_dtype)
        kept_mb = self.kept_features_mb
        if not (isinstance(kept_mb, int | float) and math.isfinite(kept_mb) and kept_mb >= 0):
            raise InvalidValueError(
                f"kept features budget must be a number of megabytes ≥ 0, got {kept_mb!r}"
            )
        if type(self.freeze_stages) is not int or self.freeze_stages < 0:
            raise InvalidValueError(
                f"freeze_stages must be a number of stages ≥ 0, got {self.freeze_stages!r}"
            )
        if not isinstance(self.workers, int) or self.workers < 0:
            raise InvalidValueError(
                f"workers must be a number of processes ≥ 0, got {self.workers!r}"
            )
        if not isinstance(self.weighting, str) or not self.weighting:
            raise InvalidValueError(f"weighting must be a method's name, got {self.weighting!r}")
        if not isinstance(self.weighting_options, dict):
            raise InvalidValueError(
                f"weighting options must be a dict of KEY: VALUE, got {self.weighting_options!r}"
            )
        mult = self.connection_lr_mult
        if mult is not None and not (math.isfinite(mult) and mult > 0):
            raise InvalidValueError(
                f"connection learning-rate multiplier must be positive, got {mult!r}"
            )

    @property
    def eval_batch_size(self) -> int:
        """The batch size of passes that do not train (validation, eval)."""
        return self.batch_size or DEFAULT_BATCH_SIZE


def chosen_batch_size(settings: TrainSettings, train_images: int) -> tuple[int, str | None]:
    """The training batch size for a task with `train_images` images (this process's share),
    and a note when dmt chose it: --batch-size as given, else DEFAULT_BATCH_SIZE, or for a
    training set too small for MIN_STEPS_PER_EPOCH steps of that size, the batch that gives
    them (at least 2, as BatchNorm needs)."""
    if settings.batch_size is not None:
        return settings.batch_size, None
    if train_images // DEFAULT_BATCH_SIZE >= MIN_STEPS_PER_EPOCH:
        return DEFAULT_BATCH_SIZE, None
    size = max(2, train_images // MIN_STEPS_PER_EPOCH)
    if size >= DEFAULT_BATCH_SIZE:
        return DEFAULT_BATCH_SIZE, None
    steps = train_images // size
    return size, (
        f"batch size {size} ({train_images} training images: {steps} optimiser steps per epoch "
        f"at {size}, {train_images // DEFAULT_BATCH_SIZE} at the usual {DEFAULT_BATCH_SIZE}; "
        "--batch-size sets it)"
    )


@dataclass
class Target:
    """One task being trained: its spec and its batches; `notes`: what was chosen for it
    (its batch size), said once by the command."""

    spec: TaskSpec
    train: Batches
    val: Batches
    notes: list[str] = field(default_factory=list)


@dataclass
class FitResult:
    best_epoch: int
    metrics: dict[str, dict[str, float]]
    epochs: list[EpochReport]
    feature_cache: dict[str, Any] = field(default_factory=dict)  # empty when not used
    bn_recalibrated: bool = False  # BatchNorm statistics re-estimated before each validation
    # The connections' learning-rate multiplier as trained, and its source (connection_lr_mult).
    connection_lr_mult: dict[str, Any] = field(default_factory=dict)
    joint_mode: str = "single"  # "one-pass" or "turns" for a group: see joint_mode
    # The weighting as trained: name, options, and each task's mean weight in the last epoch.
    weighting: dict[str, Any] = field(default_factory=dict)


def connection_lr_mult(model: Any, settings: TrainSettings) -> dict[str, Any]:
    """The multiplier the connection weights learn at, and why: `--connection-lr-mult`
    ('option') over a number in the store's connection options ('store', set at `dmt init`)
    over the kind's default for `settings.optimizer` ('default'); 'none' for a model without
    connection options (hard sharing, or a kind with no `lr_mult`). The store's options are
    fixed at init while the optimiser is chosen per command: hence resolved here, per run."""
    if settings.connection_lr_mult is not None:
        return {"value": float(settings.connection_lr_mult), "source": "option"}
    kind = getattr(model, "connection", None)
    if kind is None:
        return {"value": None, "source": "none"}
    value, source = kind.lr_mult_for(model.connection_options, settings.optimizer)
    return {"value": value, "source": source}


def stored_lr_mult_note(model: Any, settings: TrainSettings) -> str | None:
    """A note when the store's own `lr_mult` is the kind's value for another optimiser (stores
    written before per-optimiser defaults say 100, the papers' SGD value, for nddr and
    cross-stitch): they keep it, so that a store goes on training as it did, and the note
    says how to use the multiplier measured for this optimiser instead."""
    kind = getattr(model, "connection", None)
    per_optimizer = getattr(kind, "lr_mult_by_optimizer", None)
    if settings.connection_lr_mult is not None or not per_optimizer:
        return None
    value, source = kind.lr_mult_for(model.connection_options, settings.optimizer)
    own = per_optimizer.get(settings.optimizer)
    others = {v for k, v in per_optimizer.items() if k != settings.optimizer}
    if source != "store" or own is None or value == own or value not in others:
        return None
    return (
        f"note: this store's {kind.name} connections learn at x{value:g} (its lr_mult option, "
        f"the value for another optimiser); under {settings.optimizer} {kind.name} now defaults "
        f"to x{own:g}: pass --connection-lr-mult {own:g} to use it"
    )


def connection_lr_mult_params(model: Any, settings: TrainSettings) -> dict[str, Any]:
    """`connection_lr_mult` as flat run parameters (MLflow), next to the settings'."""
    resolved = connection_lr_mult(model, settings)
    return {f"connection_lr_mult.{key}": value for key, value in resolved.items()}


def _turns(
    targets: list[Target],
) -> Iterator[tuple[Target, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Batches of all targets interleaved, one of each in turn, until every loader is spent."""
    iterators = [(t, t.train.indexed()) for t in targets]
    while iterators:
        still_running = []
        for target, iterator in iterators:
            batch = next(iterator, None)
            if batch is not None:
                still_running.append((target, iterator))
                yield target, *batch
        iterators = still_running


def joint_mode(targets: list[Target], settings: TrainSettings) -> tuple[str, str]:
    """How `fit` trains `targets`, and why. 'single' for one task. For a group, 'one-pass'
    when every task's training and validation splits hold the very same in-memory images
    (the digits attributes: `shared_images`): each batch then runs every column once for all
    the tasks, where taking turns runs it once per task. Else 'turns' (DMT §4.1), each task on
    its own batches: their images differ, or --balance draws each task's batches by its own
    classes. `--joint-mode one-pass` where it cannot apply is an error, before anything trains."""
    if len(targets) <= 1:
        return "single", "one task"
    if settings.joint_mode == "turns":
        return "turns", "asked for with --joint-mode turns"
    blocker = _one_pass_blocker(targets, settings)
    if blocker is None:
        return "one-pass", "they share their images"
    if settings.joint_mode == "one-pass":
        raise InvalidValueError(
            f"--joint-mode one-pass needs tasks that share their images, but {blocker}; "
            "use --joint-mode turns or auto"
        )
    return "turns", blocker


def _one_pass_blocker(targets: list[Target], settings: TrainSettings) -> str | None:
    """Why the targets cannot share one pass per batch, or None when they can."""
    if settings.balance:
        return "--balance draws each task's batches by its own classes"
    for split in ("train", "val"):
        batches = [getattr(t, split) for t in targets]
        elsewhere = [t.spec.name for t, b in zip(targets, batches, strict=True) if not b.in_memory]
        if elsewhere:
            return f"the {split} data of {', '.join(elsewhere)} is not in-memory tensors"
        if len({shared_images(b.dataset) for b in batches}) > 1:
            return f"their {split} images differ"
    return None


@dataclass
class _Group:
    """Targets trained in one pass per batch: the first one's batches give the images and
    their order (every target's sampler would draw that same order from the same seed); the
    others' labels are looked up by sample index. `providers`: the targets whose cached
    frozen features together cover what the group reads."""

    targets: list[Target]
    labels: dict[tuple[str, str], torch.Tensor]
    providers: list[str]

    @classmethod
    def of(cls, model: Trainable, targets: list[Target]) -> _Group:
        labels = {
            (t.spec.name, split): getattr(t, split).all_labels().to(getattr(t, split).device)
            for t in targets[1:]
            for split in ("train", "val")
        }
        covered: set[str] = set()
        providers = []
        for target in targets:
            sources = set(model.frozen_sources([target.spec.name]))
            if not sources <= covered:
                providers.append(target.spec.name)
                covered |= sources
        return cls(targets, labels, providers)

    @property
    def names(self) -> list[str]:
        return [t.spec.name for t in self.targets]

    def batches(
        self, split: str
    ) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]]:
        """(images, task -> labels, dataset indices) of every batch of the split."""
        lead = self.targets[0]
        for images, lead_labels, index in getattr(lead, split).indexed():
            labels = {lead.spec.name: lead_labels}
            for target in self.targets[1:]:
                table = self.labels[(target.spec.name, split)]
                labels[target.spec.name] = table[index.to(table.device)]
            yield images, labels, index

    def given(
        self, cache: FeatureCache | None, split: str, index: torch.Tensor
    ) -> dict[str, list[torch.Tensor]] | None:
        """The frozen sources' cached features for the batch, for the whole group."""
        if cache is None:
            return None
        given: dict[str, list[torch.Tensor]] = {}
        for name in self.providers:
            found = cache.lookup(name, split, index)
            if found is None:
                return None
            given.update(found)
        return given or None

    def cached_splits(self) -> dict[tuple[str, str], Any]:
        """The splits whose frozen features the cache keeps: the providers' only."""
        return {
            (t.spec.name, s): getattr(t, s)
            for t in self.targets
            if t.spec.name in self.providers
            for s in ("train", "val")
        }


Pass = tuple[list[str], torch.Tensor, dict[str, torch.Tensor], torch.Tensor]


def _rounds(
    targets: list[Target],
) -> Iterator[list[tuple[Target, torch.Tensor, torch.Tensor, torch.Tensor]]]:
    """One batch of every target still running per round, until every loader is spent: the
    steps of a group that takes turns under a weighting, which needs all the losses at once
    (as LibMTL's multi-input mode draws one batch per task per step)."""
    iterators = [(t, t.train.indexed()) for t in targets]
    while iterators:
        still_running, round_ = [], []
        for target, iterator in iterators:
            batch = next(iterator, None)
            if batch is not None:
                still_running.append((target, iterator))
                round_.append((target, *batch))
        iterators = still_running
        if round_:
            yield round_


def _train_steps(targets: list[Target], group: _Group | None, rounds: bool) -> Iterator[list[Pass]]:
    """The forward passes of each optimiser step, each as (tasks trained, images, task ->
    labels, indices): in one pass, the whole group every step; taking turns, one task a step,
    or with `rounds` one pass per task still running."""
    if group is not None:
        for images, labels, index in group.batches("train"):
            yield [(group.names, images, labels, index)]
    elif rounds:
        for round_ in _rounds(targets):
            yield [
                ([t.spec.name], images, {t.spec.name: labels}, index)
                for t, images, labels, index in round_
            ]
    else:
        for target, images, labels, index in _turns(targets):
            yield [([target.spec.name], images, {target.spec.name: labels}, index)]


def evaluate_group(
    model: Trainable, group: _Group, cache: FeatureCache | None, precision: str
) -> dict[str, dict[str, float]]:
    """Every target's validation metrics from one forward pass per batch: the same numbers
    as `evaluate` per task (eval mode computes each column the same way for any reader)."""
    states = {t.spec.name: metric_state(t.spec) for t in group.targets}
    device = group.targets[0].val.device
    with evaluating(model), torch.inference_mode(), autocast(device, precision):
        for images, labels, index in group.batches("val"):
            logits = model(images, group.names, group.given(cache, "val", index))
            for name, state in states.items():
                state.update(logits[name], labels[name])
    return {name: state.result() for name, state in states.items()}


def flat_relation_weights(model: Any, tasks: list[str]) -> dict[str, float]:
    """'alpha.<task>.stage<l>.<source>' -> weight, for the tasks being trained; the connection
    into the head (head fusion) is 'alpha.<task>.head.<source>'."""
    weights = model.relation_weights()
    fused = bool(getattr(model, "head_fusion", False))
    return {
        f"alpha.{task}.{gate_series_layer(stage, len(rows), fused)}.{source}": value
        for task in tasks
        for rows in [weights.get(task, [])]
        for stage, row in enumerate(rows, start=1)
        for source, value in row.items()
        if source != task
    }


class Trainable(Protocol):
    """What `fit` needs of a model: `MultiTaskModel`, and the hard-sharing baseline."""

    def __call__(
        self, x: torch.Tensor, tasks: list[str], given: Any = None, keep: Any = None
    ) -> dict[str, torch.Tensor]: ...
    def frozen_sources(self, names: list[str]) -> list[str]: ...
    def param_groups(self, connection_lr_mult: float | None = None) -> list[Any]: ...
    def compile_planned(self) -> None: ...
    def train_mode(self) -> None: ...
    def eval(self) -> Any: ...
    def train(self, mode: bool = True) -> Any: ...
    def trained_state(self) -> Any: ...
    def load_trained_state(self, state: Any) -> None: ...
    def relation_weights(self) -> dict[str, list[dict[str, float]]]: ...
    def modules(self) -> Iterator[torch.nn.Module]: ...


def fit(
    model: Trainable,
    targets: list[Target],
    settings: TrainSettings,
    on_epoch: Callable[[EpochReport], None] = lambda report: None,
    notify: Callable[[str], None] = lambda message: None,
    world: World = World(),
    start: dict[str, dict[str, float]] | None = None,
    kept: KeptFeatures | None = None,
    weighting: Weighting | None = None,
    task_lr: dict[str, float] | None = None,
) -> FitResult:
    """Train the model's planned parts on `targets`, validating after every epoch (or every
    `settings.eval_every` steps); the best validation point is restored at the end. `kept`:
    the store's features of frozen columns kept from earlier operations, for the cache's pass.
    `weighting` turns a group's losses into each step (None: equal weights, their sum);
    `task_lr`: a base learning rate of its own for each named task's parameters.

    `start` is the validation metrics of every target before training (remove-task's cut):
    the untrained state is then epoch 0 of the best-epoch rule, kept (`best_epoch` 0) unless a
    later validation beats its mean primary metric, so retraining never ends below it."""
    device = targets[0].train.device
    if settings.compile:
        check_compiler(device)
        notify("torch.compile: the first steps compile the trained parts (a minute or more)")
        model.compile_planned()
    for target in targets:
        warning = few_steps_warning(target, settings)
        if warning:
            notify(warning)
    note = stored_lr_mult_note(model, settings)
    if note:
        notify(note)
    if settings.precision == "bf16" and device.type == "cpu" and not cpu_has_bf16():
        notify(
            "warning: --precision bf16 on a CPU without bfloat16 instructions "
            f"({torch.backends.cpu.get_cpu_capability()}) is emulated and far slower than fp32 "
            "(30x for resnet18 on an AVX2 CPU); it is meant for GPUs"
        )
    mode, reason = joint_mode(targets, settings)
    weighting = _checked_weighting(weighting, targets, world, notify)
    rounds = mode == "turns" and not isinstance(weighting, Equal)
    if mode != "single":
        names = ", ".join(t.spec.name for t in targets)
        how = "in one pass per batch" if mode == "one-pass" else "taking turns, one batch each"
        if rounds:
            how = "taking turns, one step per round of one batch of each task"
        notify(f"training {names} {how} ({reason})")  # a note: how the group trained
    group = _Group.of(model, targets) if mode == "one-pass" else None
    splits = (
        group.cached_splits()
        if group
        else {(t.spec.name, s): getattr(t, s) for t in targets for s in ("train", "val")}
    )
    cache = FeatureCache.plan(
        model,
        splits,
        settings.feature_cache,
        settings.cache_budget_mb,
        settings.cache_dtype,
        device,
        notify,
    )
    if settings.channels_last:
        model.to(memory_format=torch.channels_last)
    bars = contextlib.ExitStack()  # closes the run's bar however it ends, before any message
    try:
        result = _fit(
            model,
            targets,
            settings,
            on_epoch,
            world,
            device,
            cache,
            start,
            notify=notify,
            bars=bars,
            group=group,
            kept=kept,
            weighting=weighting,
            rounds=rounds,
            task_lr=task_lr,
        )
    finally:
        bars.close()
        if cache is not None:
            cache.close()
        model.to(memory_format=torch.contiguous_format)
    if cache is not None:
        result.feature_cache = cache.summary()
        if kept is not None:
            result.feature_cache.update(kept.summary())
    result.joint_mode = mode
    return result


def _fit(
    model: Trainable,
    targets: list[Target],
    settings: TrainSettings,
    on_epoch: Callable[[EpochReport], None],
    world: World,
    device: torch.device,
    cache: FeatureCache | None,
    start: dict[str, dict[str, float]] | None = None,
    *,
    notify: Callable[[str], None],
    bars: contextlib.ExitStack,
    group: _Group | None = None,
    kept: KeptFeatures | None = None,
    weighting: Weighting,
    rounds: bool = False,
    task_lr: dict[str, float] | None = None,
) -> FitResult:
    weighting.to(device)
    optimizer, lr_mult = make_optimizer(model, settings, list(weighting.parameters()), task_lr)
    own = {id(p) for p in weighting.parameters()}
    trained_params = [p for g in optimizer.param_groups for p in g["params"] if id(p) not in own]
    names = [t.spec.name for t in targets]
    losses = {t.spec.name: loss_function(t.spec.loss) for t in targets}
    specs = {t.spec.name: t.spec for t in targets}
    step_model = wrap(model, world, device)
    recalibrates = recalibrates_batchnorm(targets, settings, one_pass=group is not None)
    best_score = -math.inf
    best_state: Any = None
    best: tuple[int, dict[str, dict[str, float]]] | None = None
    reference = start  # what a group's relative improvements are measured against
    if start is not None:  # epoch 0: the state as given, to beat
        best_score, best_state = epoch_score(targets, start, start), model.trained_state()
        best = (0, start)
    reports: list[EpochReport] = []
    unlabelled = {t.spec.name for t in targets if t.spec.dense}  # until epoch 1 shows a label
    step = 0
    totals: dict[str, torch.Tensor] = {}
    counts = dict.fromkeys(names, 0)
    weight_sums: dict[str, float] = {}  # the weighting's weights, summed since the last validation
    last_weights: dict[str, float] = {}
    started = time.perf_counter()
    if cache is not None:  # the frozen columns' one pass, counted in epoch 1's time
        _fill_cache(cache, model, targets, notify, world, kept)
    bar = bars.enter_context(_run_bar(targets, settings, world, group, rounds))

    def validate(epoch: int) -> None:
        nonlocal best_score, best_state, best, totals, counts, started, reference
        nonlocal weight_sums, last_weights
        train_loss = {n: float(totals[n]) / counts[n] for n in names if counts[n]}
        for name, value in train_loss.items():
            _check_finite(name, value, epoch, settings)
        if recalibrates:
            recalibrate_batchnorm(model, targets, cache, settings.precision, group)
        sync_buffers(model, world)
        if group is not None:
            metrics = evaluate_group(model, group, cache, settings.precision)
        else:
            metrics = {
                t.spec.name: evaluate(model, t.spec, t.val, cache, settings.precision)
                for t in targets
            }
        for target in targets:
            if target.spec.dense and math.isnan(
                metrics[target.spec.name][target.spec.primary_metric]
            ):
                raise no_labelled_pixels(target.val.origin)
        reference = reference or metrics
        score = epoch_score(targets, metrics, reference)
        is_best = score > best_score
        if is_best:
            best_score, best_state, best = score, model.trained_state(), (epoch, metrics)
        seconds = time.perf_counter() - started
        weights = flat_relation_weights(model, names)
        task_weights = {
            n: weight_sums[n] / counts[n] for n in names if counts[n] and n in weight_sums
        }
        last_weights = task_weights or last_weights
        report = EpochReport(
            epoch, train_loss, metrics, weights, seconds, is_best, step, task_weights
        )
        reports.append(report)
        bar.clear()  # the epoch's line is printed where the bar was; the bar comes back below
        on_epoch(report)
        crash_point("validated")
        totals, counts, started = {}, dict.fromkeys(names, 0), time.perf_counter()
        weight_sums = {}
        model.train_mode()

    for epoch in range(1, settings.epochs + 1):
        model.train_mode()
        bar.set_description_str(f"epoch {epoch}/{settings.epochs}", refresh=False)
        epoch_totals: dict[str, torch.Tensor] = {}
        epoch_counts = dict.fromkeys(names, 0)
        for passes in _train_steps(targets, group, rounds):
            task_losses: dict[str, torch.Tensor] = {}
            for trained, images, labels, index in passes:
                if epoch == 1:
                    unlabelled -= {
                        n
                        for n in trained
                        if n in unlabelled and has_labelled_pixels(specs[n].output, labels[n])
                    }
                if group is not None:
                    given = group.given(cache, "train", index)
                else:
                    given = cache.lookup(trained[0], "train", index) if cache else None
                with autocast(device, settings.precision):
                    logits = step_model(images, trained, given)
                    task_losses.update(
                        {n: losses[n](_as_float(logits[n]), labels[n]) for n in trained}
                    )
            optimizer.zero_grad(set_to_none=True)
            backward(weighting, task_losses, trained_params)
            optimizer.step()
            step_weights = {} if isinstance(weighting, Equal) else weighting.weights()
            for name, task_loss in task_losses.items():
                value = task_loss.detach()
                totals[name] = totals[name] + value if name in totals else value
                counts[name] += 1
                epoch_totals[name] = epoch_totals[name] + value if name in epoch_totals else value
                epoch_counts[name] += 1
                if step_weights:
                    weight_sums[name] = weight_sums.get(name, 0.0) + step_weights.get(name, 1.0)
            step += 1
            crash_point("step")
            interrupts.check()
            if step == 1:
                for name, task_loss in task_losses.items():
                    _check_finite(name, task_loss.item(), epoch, settings)
            if settings.eval_every and step % settings.eval_every == 0:
                validate(epoch)
            bar.update()
        for target in targets:
            if target.spec.name in unlabelled:
                raise no_labelled_pixels(target.train.origin)
        weighting.end_epoch(
            epoch, {n: float(epoch_totals[n]) / epoch_counts[n] for n in names if epoch_counts[n]}
        )
        if not settings.eval_every:
            validate(epoch)
    if not reports:  # eval_every larger than the whole run: validate once at the end
        validate(settings.epochs)
    assert best is not None
    model.load_trained_state(best_state)
    model.eval()
    crash_point("fitted")
    return FitResult(
        best[0],
        best[1],
        reports,
        bn_recalibrated=recalibrates,
        connection_lr_mult=lr_mult,
        weighting={
            "name": weighting.name if not isinstance(weighting, Equal) else DEFAULT_WEIGHTING,
            "options": dict(weighting.options),
            "weights": {n: round(w, 6) for n, w in last_weights.items()},
        },
    )


def make_optimizer(
    model: Trainable,
    settings: TrainSettings,
    extra: list[torch.nn.Parameter] | None = None,
    task_lr: dict[str, float] | None = None,
) -> tuple[torch.optim.Optimizer, dict[str, Any]]:
    """The optimiser over the model's trained parameters, each group at the base learning rate
    (its task's own in `task_lr`) times its multiplier (the connections' as
    `connection_lr_mult` resolves it), and that resolution, for the record. `extra`:
    parameters a weighting learns, at the base rate."""
    lr_mult = connection_lr_mult(model, settings)
    task_lr = task_lr or {}
    groups = [
        {
            "params": g.params,
            "lr": task_lr.get(g.task or "", settings.lr) * g.lr_mult,
            "weight_decay": g.weight_decay,
        }
        for g in model.param_groups(lr_mult["value"])
    ]
    if extra:
        groups.append({"params": extra, "lr": settings.lr, "weight_decay": 0.0})
    return OPTIMIZERS[settings.optimizer](groups), lr_mult


def _checked_weighting(
    weighting: Weighting | None, targets: list[Target], world: World, notify: Callable[[str], None]
) -> Weighting:
    """The weighting `fit` uses: equal weights where none is given, and for one task (a
    weighting balances a group: one task trains on its own loss, said in a note). Under
    torchrun only equal weights: the others' per-process state would drift apart."""
    names = [t.spec.name for t in targets]
    if weighting is None or isinstance(weighting, Equal):
        return weighting or Equal(names, {})
    method = weighting.name
    if len(targets) == 1:
        notify(f"weighting {method}: {names[0]} trains alone, on its own loss")
        return Equal(names, {})
    if world.size > 1:
        raise InvalidValueError(
            f"a weighting other than equal ({method}) trains in one process only, not under "
            f"torchrun with {world.size} processes; drop --weighting or run without torchrun"
        )
    if sorted(weighting.tasks) != sorted(names):
        raise InvalidValueError(
            f"weighting {method} was made for {weighting.tasks}, not for the tasks trained ({names})"
        )
    return weighting


def _run_bar(
    targets: list[Target],
    settings: TrainSettings,
    world: World,
    group: _Group | None = None,
    rounds: bool = False,
) -> tqdm:
    """One bar for the whole run (every step of every epoch), so that its estimate of the time
    left is the run's; drawn on a terminal only, and never while the CLI prints JSON."""
    if group:
        per_epoch = len(targets[0].train)
    elif rounds:
        per_epoch = max(len(t.train) for t in targets)
    else:
        per_epoch = sum(len(t.train) for t in targets)
    return tqdm(
        total=per_epoch * settings.epochs,
        desc=f"epoch 1/{settings.epochs}",
        unit="step",
        leave=False,
        disable=bar_disabled(world.is_main),
        file=sys.stderr,
    )


def _fill_cache(
    cache: FeatureCache,
    model: Trainable,
    targets: list[Target],
    notify: Callable[[str], None],
    world: World,
    kept: KeptFeatures | None = None,
) -> None:
    """The frozen columns' one pass over every split, said before and after (it can take a
    while: a forward pass of every frozen column over all the training and validation data),
    with what was read from features kept by earlier operations instead."""
    notify(Stage(f"computing the features of {cache.columns} once ({cache.contents})"))
    started = time.perf_counter()
    for target in targets:
        for split in ("train", "val"):
            batches = getattr(target, split)
            cache.fill(
                model,
                target.spec.name,
                split,
                batches,
                progress=not bar_disabled(world.is_main),
                kept=kept,
            )
    seconds = time.perf_counter() - started
    for note in kept.notes if kept is not None else ():
        notify(note)
    read = cache.read_columns - cache.run_columns
    if read and kept is not None:
        size = size_text(kept.summary()["kept_read_bytes"])
        stored = f"read from the features kept in the store ({size} read)"
        computed = len(cache.run_columns)
        how = f"{computed} computed now, {len(read)} {stored}" if computed else stored
        what = f"{cache.columns} for all epochs: {how}"
    else:
        what = f"{cache.columns} computed once for all epochs"
    notify(f"feature cache: {what}; it holds {cache.contents} ({duration(seconds)})")


def epoch_score(
    targets: list[Target],
    metrics: dict[str, dict[str, float]],
    reference: dict[str, dict[str, float]],
) -> float:
    """The best-epoch rule's score, higher is better. One target: its primary metric, negated
    when lower is better (an error). A jointly trained group: the mean of every target's
    relative improvement of its primary metric over `reference` (the first validation, or
    the state training started from), the Δm of Maninis et al. (2019) that LibMTL reports,
    so that an angle error in degrees and an mIoU in [0, 1] count alike. A NaN metric (no
    labelled pixel in the split) never wins."""
    signed = []
    for target in targets:
        name, metric = target.spec.name, target.spec.primary_metric
        sign = 1.0 if higher_is_better(metric) else -1.0
        value = metrics[name][metric]
        if math.isnan(value):
            return -math.inf
        if len(targets) == 1:
            return sign * value
        base = reference[name][metric]
        base = base if math.isfinite(base) and abs(base) > 1e-12 else 1.0
        signed.append(sign * (value - base) / abs(base))
    return sum(signed) / len(signed)


def few_steps_warning(target: Target, settings: TrainSettings) -> str | None:
    """A warning when the task gets too few optimiser steps for its BatchNorm statistics and
    validation scores to mean much (a few hundred images in batches of 64), saying what to do."""
    per_epoch = len(target.train)
    total = per_epoch * settings.epochs
    if per_epoch >= MIN_STEPS_PER_EPOCH and total >= MIN_STEPS_PER_RUN:
        return None
    images = len(target.train.sampler)
    batch_size = target.train.batch_size
    partial = target.train.batch_sampler.drop_last and images % batch_size
    dropped = ", last partial batch dropped" if partial else ""
    advice = []
    if per_epoch < MIN_STEPS_PER_EPOCH:
        smaller = images // MIN_STEPS_PER_EPOCH
        advice.append(
            f"a smaller --batch-size ({smaller} gives {images // smaller} steps per epoch)"
            if smaller >= 2
            else "more training images"
        )
    if total < MIN_STEPS_PER_RUN:
        advice.append("more --epochs")
    unrecalibrated = (
        ", with --no-bn-recalibration even at chance" if settings.bn_recalibration is False else ""
    )
    return (
        f"warning: task {target.spec.name!r} gets only {per_epoch} optimiser "
        f"step{'s' * (per_epoch != 1)} per epoch, {total} in all ({images} training images, "
        f"batch size {batch_size}{dropped}); with fewer than {MIN_STEPS_PER_EPOCH} per "
        f"epoch or {MIN_STEPS_PER_RUN} in all, scores may be poor{unrecalibrated}: "
        f"use {' and '.join(advice)}"
    )


def recalibrates_batchnorm(
    targets: list[Target], settings: TrainSettings, one_pass: bool = False
) -> bool:
    """Whether to re-estimate BatchNorm statistics before each validation: as the option says,
    or by default when some task gets too few steps for its running averages to catch up.

    In one pass per batch, a group of n tasks updates each column's statistics once per batch
    where taking turns updated them n times; so a one-pass run counts as short until it has
    as many updates per column as n turns-taking tasks would need (digits, 4 tasks, 1 epoch:
    22 steps left digits.prime at chance without it)."""
    if settings.bn_recalibration is not None:
        return settings.bn_recalibration
    if any(few_steps_warning(t, settings) for t in targets):
        return True
    steps = min(len(t.train) for t in targets) * settings.epochs
    return one_pass and steps < MIN_STEPS_PER_RUN * len(targets)


def trained_batchnorms(model: Trainable) -> list[torch.nn.modules.batchnorm._BatchNorm]:
    """BatchNorm layers that `train_mode` switches to training: exactly the trained parts',
    never a frozen column's (those must stay bit-identical)."""
    model.train_mode()
    return [
        m
        for m in model.modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
        and m.training
        and m.track_running_stats
    ]


def recalibrate_batchnorm(
    model: Trainable,
    targets: list[Target],
    cache: FeatureCache | None,
    precision: str,
    group: _Group | None = None,
) -> None:
    """Replace the trained parts' BatchNorm running statistics by their plain average over one
    pass of the training data, as the weights now are (no gradients; swa_utils.update_bn).

    With momentum 0.1 the running averages follow the last ~10 steps and start from mean 0,
    variance 1: after a handful of steps they describe weights that no longer exist, and
    eval-mode outputs can be at chance while the training loss is low. Random state (torch's,
    and each training split's shuffling generator) is restored afterwards, so training goes
    on exactly as it would have without this pass."""
    norms = trained_batchnorms(model)
    if not norms:
        return
    device = targets[0].train.device
    momenta = [m.momentum for m in norms]
    generators = {id(t.train.generator): t.train.generator for t in targets if t.train.generator}
    states = {key: g.get_state() for key, g in generators.items()}
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the pass
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            if group is not None:
                batches = group.batches("train")
                for images, _, index in itertools.islice(batches, RECALIBRATION_BATCHES):
                    with autocast(device, precision):
                        model(images, group.names, group.given(cache, "train", index))
            for target in targets if group is None else []:
                name = target.spec.name
                batches = target.train.indexed()
                for images, _, index in itertools.islice(batches, RECALIBRATION_BATCHES):
                    given = cache.lookup(name, "train", index) if cache else None
                    with autocast(device, precision):
                        model(images, [name], given)
    finally:
        for norm, momentum in zip(norms, momenta, strict=True):
            norm.momentum = momentum
        for key, generator in generators.items():
            generator.set_state(states[key])


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX), as oneDNN reports."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check()) if check is not None else False


def check_compiler(device: torch.device) -> None:
    """torch.compile on a CPU generates C++: without a compiler it would fail mid-epoch."""
    if device.type == "cpu" and not any(
        shutil.which(c) for c in (os.environ.get("CXX", ""), "g++", "c++", "clang++") if c
    ):
        raise InvalidValueError(
            "--compile on the CPU needs a C++ compiler (g++ or clang++ on PATH, or CXX=...); "
            "install one, or train without --compile"
        )


def _as_float(output: Any) -> Any:
    """Logits in float32 for the loss; a region head's outputs (boxes are computed from them
    with the labels, in float32: dmtcore.model.region_heads) as they are."""
    return output.float() if torch.is_tensor(output) else output


def _check_finite(task: str, value: float, epoch: int, settings: TrainSettings) -> None:
    if not math.isfinite(value):
        raise TrainingError(
            f"task {task!r}: the training loss became {value} in epoch {epoch}; "
            f"lower the learning rate (now {settings.lr}) or check the data for NaN/inf values"
        )
