"""Avalanche's side of benchmarks/peer_avalanche.py: a progressive neural network (PNN) grown
one experience at a time, run by the peer venv's python (benchmarks/.venvs/avalanche), never
by dmt's. It imports nothing from dmt; the digits tensors come as .npy files (loaded with
allow_pickle=False) and the result goes to stdout as one JSON line.

    python avalanche_pnn.py prepare CONFIG   grow a PNN over experiences 0..k-1 (1 epoch each,
                                             like dmt's frozen columns) and save a checkpoint
                                             after each k in CONFIG["ks"]
    python avalanche_pnn.py add CONFIG       what a user runs to add the (k+1)-th task: load the
                                             k-column checkpoint, train experience k, save

The PNN is `avalanche.models.PNN(num_layers, in_features=64, hidden_features_per_column=width)`
with its default MLP adapters, trained by `avalanche.training.PNNStrategy` with Adam. The
benchmark is task-incremental (experience i has task label i) from `tensors_benchmark`: one
experience per digits task, all on the same images. Saving and loading use Avalanche's own
checkpointing (`avalanche.checkpointing.save_checkpoint` / `maybe_load_checkpoint`), which
pickles the whole strategy (model with its k columns, optimiser, clock, plugins) with dill:
the PNN's column-per-task bookkeeping is not in its state_dict, so this is Avalanche's path
to resume a grown model in a new process.

To do the work dmt does, the training call is told `drop_last=True` (dmt drops a last partial
batch) and the strategy validates on the new task's validation split after every epoch
(`eval_every=1`) but not before training: Avalanche's periodic evaluation also evaluates once
before the first epoch (`PeriodicEval.do_initial`), which dmt does not, so it is turned off.
A counting plugin reports the optimisation steps and validation passes actually run.
"""

from __future__ import annotations

import itertools
import json
import sys
import time

MARKS = [("interpreter start", time.process_time())]


def mark(label: str) -> None:
    MARKS.append((label, time.process_time()))


def phases() -> dict[str, float]:
    out = {MARKS[0][0]: MARKS[0][1]}
    for (_, before), (label, at) in itertools.pairwise(MARKS):
        out[label] = at - before
    return out


def dill_can_find_torch_optimisers() -> None:
    """Let Avalanche's checkpointing save an optimiser again. `torch.optim/__init__.py` deletes
    its submodule attributes (`del adam`), so dill 0.4.1, which locates a class through its
    module's parent package, cannot find `torch.optim.adam.Adam` by reference, pickles the
    class by value and fails ("Can't pickle sentinel: it's not the same object as
    typing_extensions.sentinel"). Putting the already-imported submodules back as attributes
    restores what dill expects; nothing else reads them."""
    import torch.optim

    for name, module in list(sys.modules.items()):
        parent, _, child = name.rpartition(".")
        if parent == "torch.optim" and not hasattr(torch.optim, child):
            setattr(torch.optim, child, module)


def main() -> None:
    mode, config = sys.argv[1], json.loads(sys.argv[2])
    import torch

    torch.set_num_threads(1)
    dill_can_find_torch_optimisers()
    mark("import torch")
    from avalanche.benchmarks.scenarios.deprecated.generators import tensors_benchmark
    from avalanche.checkpointing import maybe_load_checkpoint, save_checkpoint
    from avalanche.core import SupervisedPlugin
    from avalanche.evaluation.metrics import accuracy_metrics, loss_metrics
    from avalanche.models import PNN
    from avalanche.training import PNNStrategy
    from avalanche.training.plugins import EvaluationPlugin
    from avalanche.training.templates.base_sgd import PeriodicEval

    mark("import avalanche")

    class Counter(SupervisedPlugin):
        """Counts optimisation steps and validation passes of the measured training call."""

        def __init__(self) -> None:
            super().__init__()
            self.steps = self.evals = 0

        def after_training_iteration(self, strategy, **kwargs):
            self.steps += 1

        def after_eval_exp(self, strategy, **kwargs):
            self.evals += 1

    import numpy as np

    folder = config["data"]
    tasks = config["tasks"]  # experience i is task tasks[i] (label files y_SPLIT_TASK.npy)

    def load(name: str) -> torch.Tensor:
        return torch.from_numpy(np.load(f"{folder}/{name}.npy", allow_pickle=False))

    x_train, x_val = load("x_train"), load("x_val")
    benchmark = tensors_benchmark(
        train_tensors=[(x_train, load(f"y_train_{task}")) for task in tasks],
        test_tensors=[(x_val, load(f"y_val_{task}")) for task in tasks],
        task_labels=list(range(len(tasks))),
    )
    mark("data and benchmark")

    torch.manual_seed(config["seed"])
    model = PNN(
        num_layers=config["layers"],
        in_features=int(np.prod(x_train.shape[1:])),
        hidden_features_per_column=config["width"],
    )
    strategy = PNNStrategy(
        model=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=config["lr"]),
        train_mb_size=config["batch_size"],
        eval_mb_size=config["batch_size"],
        train_epochs=config["epochs"],
        device="cpu",
        evaluator=EvaluationPlugin(
            accuracy_metrics(epoch=True, experience=True),
            loss_metrics(epoch=True, experience=True),
            loggers=[],
        ),
        eval_every=1,
    )

    def no_initial_eval() -> None:
        for plugin in strategy.plugins:
            if isinstance(plugin, PeriodicEval):
                plugin.do_initial = False

    def train(k: int, epochs: int) -> None:
        strategy.train_epochs = epochs
        no_initial_eval()
        strategy.train(
            benchmark.train_stream[k], eval_streams=[benchmark.test_stream[k]], drop_last=True
        )

    if mode == "prepare":
        for k in range(max(config["ks"])):
            train(k, 1)
            if k + 1 in config["ks"]:
                strategy.train_epochs = config["epochs"]
                save_checkpoint(strategy, f"{config['checkpoints']}/k{k + 1}.ckpt")
        print(json.dumps({"prepared": config["ks"]}))
        return

    k = config["k"]
    strategy, done = maybe_load_checkpoint(strategy, config["checkpoint"])
    if done != k:
        raise SystemExit(f"{config['checkpoint']} holds {done} trained experiences, not {k}")
    mark("load checkpoint")
    counter = Counter()
    strategy.plugins.append(counter)
    started = time.process_time()
    train(k, config["epochs"])
    train_cpu = time.process_time() - started
    mark("train (add the task)")
    strategy.plugins.remove(counter)
    save_checkpoint(strategy, config["save_to"])
    mark("save checkpoint")
    metrics = strategy.evaluator.get_last_metrics()
    accuracy = [v for name, v in metrics.items() if name.startswith("Top1_Acc_Exp/eval_phase")]
    print(
        json.dumps(
            {
                "train_cpu": train_cpu,
                "phases": phases(),
                "steps": counter.steps,
                "evals": counter.evals,
                "columns": strategy.model.layers[0].num_columns,
                "val_accuracy": accuracy[-1] if accuracy else None,
                "torch": torch.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
