"""The LibMTL side of benchmarks/peer_libmtl.py; runs only in benchmarks/.venvs/libmtl.

    benchmarks/.venvs/libmtl/bin/python benchmarks/peers/libmtl_side.py --child CONFIG

Trains LibMTL 1.1.5's `Cross_stitch` architecture with its `EW` weighting through its own
`Trainer.train` loop, over four dmt-cnn columns built by dmt's backbone factory and linear
heads built by dmt's heads module (so the columns and heads match dmt's parameter for
parameter), on the tensors the dmt side saved (.npz, no pickle). Prints one JSON line: the
process CPU seconds of the training call (building the model and the Trainer, then
`train`), the validation accuracy of every task at every epoch and at LibMTL's best epoch,
and the parameter counts; untimed, the final model's accuracy with BatchNorm on the
validation batch's statistics instead of its running averages (a diagnostic: where the two
differ, the running averages lag the weights).

LibMTL 1.1.5 needs four minimal adaptations, each kept to LibMTL's own behaviour:

1. `Cross_stitch` only wraps ResNets: its `_transform_resnet_cross` reads a ResNet's
   conv1/bn1/relu/maxpool stem and layer1..layer4, mixing before layers 2-4. `ColumnCross`
   is the same transform over a dmt-cnn column's six stages (an identity stem), with LibMTL's
   forward unchanged but for looping over six stages instead of four layers; so tasks mix
   after every stage but the last, at the five boundaries where dmt's cross-stitch units
   sit. `Cross_stitch` itself is used as shipped: the module attribute it builds its
   transform from is pointed at `ColumnCross`.
2. `Trainer.__init__` hard-codes `torch.device('cuda:0')`: `CPUTrainer` sets the CPU.
3. `Trainer._process_data` calls `iterator.next()`, which torch's loader iterators no longer
   have (a bare `except` hides the first failure): `CPUTrainer` calls `next(iterator)`.
4. `import LibMTL` imports `torchvision.models.utils`, gone since torchvision 0.13: a stand-in
   module gives its one function, torch.hub's `load_state_dict_from_url` (for ResNet
   weights, which this benchmark never loads).

The data come as in-memory batches (`Batches`): shuffled every epoch, the last partial
batch dropped as dmt's loader drops it, so both sides take the same number of optimiser
steps per epoch; no per-sample collation, the cheapest path a LibMTL user could write.
"""

from __future__ import annotations

import contextlib
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

from LibMTL import Trainer  # noqa: E402
from LibMTL.architecture import Cross_stitch  # noqa: E402 (the class; see below)
from LibMTL.loss import CELoss  # noqa: E402
from LibMTL.metrics import AccMetric  # noqa: E402
from LibMTL.weighting import EW  # noqa: E402

from dmtcore.model.backbones import dmt_cnn  # noqa: E402
from dmtcore.model.heads import build_head  # noqa: E402
from dmtcore.tasks.names import InputSpec  # noqa: E402
from dmtcore.tasks.spec import HeadSpec  # noqa: E402

# LibMTL.architecture's `Cross_stitch` is the class, which hides its module of the same name.
cross_stitch_module = sys.modules["LibMTL.architecture.Cross_stitch"]


class ColumnCross(cross_stitch_module._transform_resnet_cross):
    """LibMTL's `_transform_resnet_cross` over dmt-cnn columns (see the module docstring)."""

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


class CPUTrainer(Trainer):
    """LibMTL's Trainer on the CPU, reading batches with `next(iterator)`."""

    def _prepare_model(self, *args: Any) -> None:
        self.device = torch.device("cpu")
        super()._prepare_model(*args)

    def _process_data(self, loader: list[Any]) -> Any:
        try:
            return next(loader[1])
        except StopIteration:
            loader[1] = iter(loader[0])
            return next(loader[1])


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


def run(config: dict[str, Any]) -> dict[str, Any]:
    torch.set_num_threads(config["threads"])
    torch.manual_seed(config["seed"])
    np.random.seed(config["seed"])
    data = np.load(config["data"], allow_pickle=False)
    tasks = [t.split(".")[-1] for t in config["tasks"]]  # ModuleDict keys may not hold dots
    outputs = dict(zip(tasks, config["num_outputs"], strict=True))
    spec = InputSpec.from_shape(tuple(config["input_shape"]))

    def split(name: str, shuffle: bool) -> Batches:
        labels = {t: torch.from_numpy(data[f"y_{name}_{t}"]).long() for t in tasks}
        images = torch.from_numpy(data[f"x_{name}"])
        return Batches(images, labels, config["batch_size"], shuffle)

    train, val = split("train", True), split("val", False)
    history: list[dict[str, float]] = []
    marks: list[float] = []  # CPU clock at the start of train and at each epoch's end
    cpu = time.process_time()
    column = dmt_cnn.build(spec, {})  # the decoders' input size only; not trained
    decoders = nn.ModuleDict(
        {
            t: build_head(HeadSpec(), column.out_shape, outputs[t], (spec.height, spec.width))
            for t in tasks
        }
    )
    task_dict = {
        t: {"metrics": ["Acc"], "metrics_fn": AccMetric(), "loss_fn": CELoss(), "weight": [1]}
        for t in tasks
    }
    with contextlib.redirect_stdout(sys.stderr):  # LibMTL prints its log
        trainer = CPUTrainer(
            task_dict=task_dict,
            weighting=EW,
            architecture=Cross_stitch,
            encoder_class=lambda: dmt_cnn.build(spec, {}),
            decoders=decoders,
            rep_grad=False,
            multi_input=False,
            optim_param={"optim": "adam", "lr": config["lr"]},
            scheduler_param=None,
            weight_args={},
            arch_args={},
        )
        display = trainer.meter.display

        def record(mode: str, epoch: int) -> None:
            if mode == "test":
                history.append({t: trainer.meter.results[t][0] for t in tasks})
            display(mode=mode, epoch=epoch)
            if mode == "test":
                marks.append(time.process_time())

        trainer.meter.display = record
        marks.append(time.process_time())
        trainer.train(train, val, config["epochs"])
    cpu = time.process_time() - cpu
    model = trainer.model
    model.train()  # a diagnostic, untimed: the final model with BatchNorm on batch statistics
    with torch.no_grad():
        logits = model(val.images)
    batch_stats = {t: (logits[t].argmax(1) == val.labels[t]).float().mean().item() for t in tasks}
    cross = model.encoder.cross_unit.numel()
    best = trainer.meter.best_result["epoch"]
    return {
        "cpu_s": cpu,
        "accuracy": dict(zip(config["tasks"], history[best].values(), strict=True)),
        "epochs_cpu_s": marks[-1] - marks[0],
        "best_epoch": best + 1,
        "epoch_accuracy": [sum(h.values()) / len(h) for h in history],
        "final_accuracy_batch_stats": sum(batch_stats.values()) / len(tasks),
        "params_columns_heads": sum(p.numel() for p in model.parameters()) - cross,
        "params_connections": cross,
        "steps_per_epoch": len(train),
    }


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "--child":
        raise SystemExit(__doc__)
    print(json.dumps(run(json.loads(sys.argv[2]))))
