"""The LibMTL side of benchmarks/peer_libmtl.py; runs only in benchmarks/.venvs/libmtl.

    benchmarks/.venvs/libmtl/bin/python benchmarks/peers/libmtl_side.py --child CONFIG

Trains LibMTL 1.1.5's `Cross_stitch` architecture with one of its weighting methods (EW, UW,
DWA, GradNorm, PCGrad, or Aligned_MTL: adaptation 6) through its own `Trainer.train` loop,
over dmt-cnn columns built by dmt's backbone factory (in their spatial form for pixel-level
tasks) and heads built by dmt's heads module from each task's head spec (linear, or the
dense ASPP-lite decoder), so the columns and heads match dmt's parameter for parameter. Each
task's loss is dmt's own (`dmtcore.tasks.metrics.loss_function` of the task's loss name) and
its metrics dmt's (`MetricState`, every metric the task records, as LibMTL's `metrics_fn`),
on the tensors the dmt side saved (.npz, no pickle). Prints one JSON line: the process CPU
seconds of the training call (building the model and the Trainer, then `train`), every
task's metrics at every epoch and at LibMTL's best epoch, each task's mean weight in the last
epoch (what the method's `backward` returned), and the parameter counts; untimed, the final
model's metrics with BatchNorm on each validation batch's statistics instead of its running
averages (a diagnostic: where the two differ, the running averages lag the weights).

LibMTL 1.1.5 needs six minimal adaptations, each kept to LibMTL's own behaviour:

1. `Cross_stitch` only wraps ResNets: its `_transform_resnet_cross` reads a ResNet's
   conv1/bn1/relu/maxpool stem and layer1..layer4, mixing before layers 2-4. `ColumnCross`
   is the same transform over a dmt-cnn column's stages (six; five in the spatial form, an
   identity stem), with LibMTL's forward unchanged but for looping over the column's stages
   instead of four layers; so tasks mix after every stage but the last, at the boundaries
   where dmt's cross-stitch units sit. `Cross_stitch` itself is used as shipped: the module
   attribute it builds its transform from is pointed at `ColumnCross`.
2. `Trainer.__init__` hard-codes `torch.device('cuda:0')`: `CPUTrainer` sets the CPU.
3. `Trainer._process_data` calls `iterator.next()`, which torch's loader iterators no longer
   have (a bare `except` hides the first failure): `CPUTrainer` calls `next(iterator)`.
4. `import LibMTL` imports `torchvision.models.utils`, gone since torchvision 0.13: a stand-in
   module gives its one function, torch.hub's `load_state_dict_from_url` (for ResNet
   weights, which this benchmark never loads).
5. `zero_grad()` sets gradients to None since torch 2.0 (they were zeroed before), and
   LibMTL's gradient methods then fail in `_reset_grad` (`param.grad.data` of None) once
   `zero_grad_share_params` has cleared the shared gradients. LibMTL's own fix (commit
   b1ff34d, 2023-12-20, "the default of set_to_none in zero_grad() is True in torch2"), made
   after 1.1.5: `CrossStitch.zero_grad_share_params` and the Trainer's optimiser zero with
   `set_to_none=False`, as LibMTL did on torch 1.x.
6. `Aligned_MTL` is not in the 1.1.5 on PyPI (released 2021-12-30): LibMTL added it in commit
   0aaada5 (2023-06-19) of its repository, keeping the version number. The class below is
   that commit's `LibMTL/weighting/Aligned_MTL.py`, its `backward` unchanged; it calls
   `torch.symeig`, removed from torch in 2.0, so `torch.symeig` here is the equivalent that
   torch's own removal message gives, `torch.linalg.eigh` (ascending eigenvalues with their
   eigenvectors, as symeig returned them; upper triangle by default, as symeig read it).

The data come as in-memory batches (`Batches`): shuffled every epoch, the last partial
batch dropped as dmt's loader drops it, so both sides take the same number of optimiser
steps per epoch; no per-sample collation, the cheapest path a LibMTL user could write.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # dmtcore from this repository

import types

import numpy as np
import torch
import torch._dynamo  # a one-time import, kept out of the timer (peer_libmtl.py)
import torch.hub
from torch import nn

# LibMTL's ResNet module (imported by `import LibMTL`, unused here) imports
# torchvision.models.utils, which torchvision 0.13 removed; its one function is torch.hub's.
sys.modules["torchvision.models.utils"] = types.SimpleNamespace(  # type: ignore[assignment]
    load_state_dict_from_url=torch.hub.load_state_dict_from_url
)

import LibMTL.weighting as libmtl_weighting  # noqa: E402
from LibMTL import Trainer  # noqa: E402
from LibMTL.architecture import Cross_stitch  # noqa: E402 (the class; see below)
from LibMTL.loss import AbsLoss  # noqa: E402
from LibMTL.metrics import AbsMetric  # noqa: E402
from LibMTL.utils import set_random_seed  # noqa: E402
from LibMTL.weighting.abstract_weighting import AbsWeighting  # noqa: E402

from dmtcore.model.backbones import dmt_cnn  # noqa: E402
from dmtcore.model.heads import build_head  # noqa: E402
from dmtcore.tasks.metrics import MetricState, loss_function  # noqa: E402
from dmtcore.tasks.names import InputSpec  # noqa: E402
from dmtcore.tasks.spec import HeadSpec, higher_is_better  # noqa: E402

# LibMTL.architecture's `Cross_stitch` is the class, which hides its module of the same name.
cross_stitch_module = sys.modules["LibMTL.architecture.Cross_stitch"]


class ColumnCross(cross_stitch_module._transform_resnet_cross):
    """LibMTL's `_transform_resnet_cross` over dmt-cnn columns (adaptation 1)."""

    def __init__(self, encoder_list: Any, task_name: list[str], device: Any) -> None:
        nn.Module.__init__(self)
        self.task_name = task_name
        self.task_num = len(task_name)
        self.device = device
        self.resnet_conv = nn.ModuleDict({task: nn.Identity() for task in task_name})
        stages = len(encoder_list[0].stages)
        self.resnet_layer = nn.ModuleDict(
            {str(i): nn.ModuleList(e.stages[i] for e in encoder_list) for i in range(stages)}
        )
        self.cross_unit = nn.Parameter(torch.ones(stages, self.task_num))  # LibMTL: (4, T)

    def forward(self, inputs: torch.Tensor) -> list[torch.Tensor]:
        # LibMTL 1.1.5's forward, `range(4)` replaced by the number of stages.
        layers = len(self.resnet_layer)
        s_rep = {task: self.resnet_conv[task](inputs) for task in self.task_name}
        ss_rep: dict[int, list[Any]] = {i: [0] * self.task_num for i in range(layers)}
        for i in range(layers):
            for tn, task in enumerate(self.task_name):
                if i == 0:
                    ss_rep[i][tn] = self.resnet_layer[str(i)][tn](s_rep[task])
                else:
                    cross_rep = sum(
                        [self.cross_unit[i - 1][j] * ss_rep[i - 1][j] for j in range(self.task_num)]
                    )
                    ss_rep[i][tn] = self.resnet_layer[str(i)][tn](cross_rep)
        return ss_rep[layers - 1]


cross_stitch_module._transform_resnet_cross = ColumnCross


class CrossStitch(Cross_stitch):
    """LibMTL's Cross_stitch with its torch-2 fix of `zero_grad_share_params` (adaptation 5)."""

    def zero_grad_share_params(self) -> None:
        self.encoder.zero_grad(set_to_none=False)


def symeig(
    input: torch.Tensor, eigenvectors: bool = False, upper: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.symeig as torch 1.x had it, through torch.linalg.eigh (adaptation 6)."""
    values, vectors = torch.linalg.eigh(input, UPLO="U" if upper else "L")
    return values, vectors if eigenvectors else values.new_empty(0)


torch.symeig = symeig  # type: ignore[attr-defined]  # removed in torch 2.0


class Aligned_MTL(AbsWeighting):
    r"""Aligned-MTL.

    This method is proposed in `Independent Component Alignment for Multi-Task Learning (CVPR 2023) <https://openaccess.thecvf.com/content/CVPR2023/html/Senushkin_Independent_Component_Alignment_for_Multi-Task_Learning_CVPR_2023_paper.html>`_ \
    and implemented by modifying from the `official PyTorch implementation <https://github.com/SamsungLabs/MTL>`_.

    LibMTL commit 0aaada5's LibMTL/weighting/Aligned_MTL.py (adaptation 6), its code unchanged
    but for ruff's formatting.
    """

    def __init__(self):
        super(Aligned_MTL, self).__init__()  # noqa: UP008

    def backward(self, losses, **kwargs):
        grads = self._get_grads(losses, mode="backward")
        if self.rep_grad:
            per_grads, grads = grads[0], grads[1]

        M = torch.matmul(grads, grads.t())  # [num_tasks, num_tasks]
        lmbda, V = torch.symeig(M, eigenvectors=True)
        tol = torch.max(lmbda) * max(M.shape[-2:]) * torch.finfo().eps
        rank = sum(lmbda > tol)

        order = torch.argsort(lmbda, dim=-1, descending=True)
        lmbda, V = lmbda[order][:rank], V[:, order][:, :rank]

        sigma = torch.diag(1 / lmbda.sqrt())
        B = lmbda[-1].sqrt() * ((V @ sigma) @ V.t())
        alpha = B.sum(0)

        if self.rep_grad:
            self._backward_new_grads(alpha, per_grads=per_grads)
        else:
            self._backward_new_grads(alpha, grads=grads)
        return alpha.detach().cpu().numpy()


WEIGHTINGS = {
    "EW": libmtl_weighting.EW,
    "UW": libmtl_weighting.UW,
    "DWA": libmtl_weighting.DWA,
    "GradNorm": libmtl_weighting.GradNorm,
    "PCGrad": libmtl_weighting.PCGrad,
    "Aligned_MTL": Aligned_MTL,
}


class CPUTrainer(Trainer):
    """LibMTL's Trainer on the CPU, reading batches with `next(iterator)`, its optimiser
    zeroing gradients rather than dropping them (adaptations 2, 3 and 5)."""

    def _prepare_model(self, *args: Any) -> None:
        self.device = torch.device("cpu")
        super()._prepare_model(*args)

    def _prepare_optimizer(self, *args: Any) -> None:
        super()._prepare_optimizer(*args)
        self.optimizer.zero_grad = functools.partial(  # type: ignore[method-assign]
            self.optimizer.zero_grad, set_to_none=False
        )

    def _process_data(self, loader: list[Any]) -> Any:
        try:
            return next(loader[1])
        except StopIteration:
            loader[1] = iter(loader[0])
            return next(loader[1])


class DmtLoss(AbsLoss):
    """A task's loss as dmt computes it (on float outputs, as dmt's loop passes them)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.loss_fn = loss_function(name)

    def compute_loss(self, pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(pred.float(), gt)


class DmtMetric(AbsMetric):
    """A task's metrics as dmt computes them (`MetricState`), in the order of `names`."""

    def __init__(self, kind: str, names: list[str], num_outputs: int) -> None:
        super().__init__()
        self.kind, self.names, self.num_outputs = kind, names, num_outputs
        self.state = MetricState(kind, names, num_outputs)

    def update_fun(self, pred: torch.Tensor, gt: torch.Tensor) -> None:
        self.state.update(pred, gt)

    def score_fun(self) -> list[float]:
        result = self.state.result()
        return [result[name] for name in self.names]

    def reinit(self) -> None:
        super().reinit()
        self.state = MetricState(self.kind, self.names, self.num_outputs)


class Batches:
    """(images, {task: labels}) batches of in-memory tensors, reshuffled on every pass."""

    def __init__(
        self, images: torch.Tensor, labels: dict[str, torch.Tensor], size: int, shuffle: bool
    ) -> None:
        self.images, self.labels, self.size, self.shuffle = images, labels, size, shuffle
        n = len(images)
        self.drop_last = shuffle and n > size  # dmt's loader's rule
        self.count = n // size if self.drop_last else math.ceil(n / size)

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Any:
        n = len(self.images)
        order = torch.randperm(n) if self.shuffle else torch.arange(n)
        for b in range(self.count):
            index = order[b * self.size : (b + 1) * self.size]
            yield self.images[index], {t: y[index] for t, y in self.labels.items()}


def batch_stats_metrics(
    model: nn.Module, val: Batches, task_dict: dict[str, Any], tasks: list[str]
) -> dict[str, list[float]]:
    """The final model's metrics with BatchNorm on each validation batch's statistics."""
    metrics = {t: task_dict[t]["metrics_fn"] for t in tasks}
    for m in metrics.values():
        m.reinit()
    model.train()
    with torch.no_grad():
        for images, labels in val:
            preds = model(images)
            for t in tasks:
                metrics[t].update_fun(preds[t], labels[t])
    return {t: metrics[t].score_fun() for t in tasks}


def run(config: dict[str, Any]) -> dict[str, Any]:
    torch.set_num_threads(config["threads"])
    set_random_seed(config["seed"])  # LibMTL's: random (PCGrad's order), numpy and torch
    data = np.load(config["data"], allow_pickle=False)
    specs = config["tasks"]
    tasks = [s["name"].split(".")[-1] for s in specs]  # ModuleDict keys may not hold dots
    assert len(set(tasks)) == len(tasks), tasks
    spec = InputSpec.from_shape(tuple(config["input_shape"]))
    column_options = {"spatial": True} if config["spatial"] else {}

    def split(name: str, shuffle: bool) -> Batches:
        labels = {t: torch.from_numpy(data[f"y_{name}_{t}"]) for t in tasks}
        images = torch.from_numpy(data[f"x_{name}"])
        return Batches(images, labels, config["batch_size"], shuffle)

    train, val = split("train", True), split("val", False)
    history: list[dict[str, list[float]]] = []
    marks: list[float] = []  # CPU clock at the start of train and at each epoch's end
    cpu = time.process_time()
    column = dmt_cnn.build(spec, column_options)  # the decoders' input shape only; not trained
    decoders = nn.ModuleDict(
        {
            t: build_head(
                HeadSpec(s["head"]["kind"], tuple(s["head"]["hidden"]), s["head"]["dropout"]),
                column.out_shape,
                s["num_outputs"],
                (spec.height, spec.width),
            )
            for t, s in zip(tasks, specs, strict=True)
        }
    )
    task_dict = {
        t: {
            "metrics": list(s["metrics"]),
            "metrics_fn": DmtMetric(s["kind"], list(s["metrics"]), s["num_outputs"]),
            "loss_fn": DmtLoss(s["loss"]),
            "weight": [int(higher_is_better(m)) for m in s["metrics"]],
        }
        for t, s in zip(tasks, specs, strict=True)
    }
    with contextlib.redirect_stdout(sys.stderr):  # LibMTL prints its log
        trainer = CPUTrainer(
            task_dict=task_dict,
            weighting=WEIGHTINGS[config["method"]],
            architecture=CrossStitch,
            encoder_class=lambda: dmt_cnn.build(spec, column_options),
            decoders=decoders,
            rep_grad=False,
            multi_input=False,
            optim_param={"optim": "adam", "lr": config["lr"]},
            scheduler_param=None,
            weight_args=dict(config["weight_args"]),
            arch_args={},
        )
        display = trainer.meter.display

        def record(mode: str, epoch: int) -> None:
            if mode == "test":
                history.append({t: list(trainer.meter.results[t]) for t in tasks})
            display(mode=mode, epoch=epoch)
            if mode == "test":
                marks.append(time.process_time())

        trainer.meter.display = record
        marks.append(time.process_time())
        batch_weight = trainer.train(train, val, config["epochs"], return_weight=True)
    cpu = time.process_time() - cpu
    model = trainer.model
    names = dict(zip(tasks, (s["name"] for s in specs), strict=True))

    def by_name(values: dict[str, list[float]]) -> dict[str, dict[str, float]]:
        return {
            names[t]: dict(zip(s["metrics"], values[t], strict=True))
            for t, s in zip(tasks, specs, strict=True)
        }

    best = trainer.meter.best_result["epoch"]
    final = batch_stats_metrics(model, val, task_dict, tasks)  # untimed diagnostic
    cross = model.encoder.cross_unit.numel()
    own = sum(p.numel() for part in (model.encoder, model.decoders) for p in part.parameters())
    last_weights = batch_weight[:, -1, :].mean(axis=1)
    return {
        "cpu_s": cpu,
        "metrics": by_name(history[best]),
        "epochs_cpu_s": marks[-1] - marks[0],
        "best_epoch": best + 1,
        "epoch_metrics": [by_name(h) for h in history],
        "weights": {names[t]: float(w) for t, w in zip(tasks, last_weights, strict=True)},
        "final_metrics_batch_stats": by_name(final),
        "params_columns_heads": own - cross,
        "params_connections": cross,
        "steps_per_epoch": len(train),
    }


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "--child":
        raise SystemExit(__doc__)
    print(json.dumps(run(json.loads(sys.argv[2]))))
