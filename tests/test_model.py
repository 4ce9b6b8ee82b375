"""Columns' shapes, freezing, the forward pass over source sets, and removal."""

from __future__ import annotations

import pytest
import torch

from dmtcore.model.multitask import MultiTaskModel, TrainingPlan, evaluating
from dmtcore.tasks.names import InputSpec
from dmtcore.tasks.spec import HeadSpec


@pytest.mark.parametrize(
    ("spec", "shapes"),
    [
        ((1, 8, 8), [(40, 4, 4), (60, 2, 2), (80, 1, 1), (100, 1, 1), (140, 1, 1), (360,)]),
        ((3, 32, 32), [(40, 16, 16), (60, 8, 8), (80, 4, 4), (100, 2, 2), (140, 2, 2), (360,)]),
    ],
)
def test_dmt_cnn_column_adapts_to_the_input(host, spec, shapes) -> None:
    column = host.kinds.backbone("dmt-cnn").build(InputSpec(*spec), {"fc_width": 360})
    assert column.feature_shapes == shapes
    convs = [m for m in column.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size[0]) for c in convs] == [
        (40, 5),
        (60, 5),
        (80, 3),
        (100, 3),
        (140, 2),
    ]


def test_resnet18_column_has_four_stages(host) -> None:
    column = host.kinds.backbone("resnet18").build(InputSpec(1, 32, 32), {"weights_file": None})
    assert [s[0] for s in column.feature_shapes] == [64, 128, 256, 512]
    assert column.out_shape == (512,) and not column.spatial


def model_with(host, connection: str, tasks: int) -> MultiTaskModel:
    model = MultiTaskModel(
        InputSpec(1, 8, 8),
        host.kinds.backbone("dmt-cnn"),
        {"fc_width": 32},
        host.kinds.connection(connection),
        host.kinds.connection(connection).resolve_options({}),
    )
    names = [f"t{i}" for i in range(tasks)]
    for i, name in enumerate(names):
        model.add_task(name, name, names[: i + 1], HeadSpec(), 2)
    return model


def test_training_plan_freezes_old_tasks(host) -> None:
    model = model_with(host, "ttc", 3)
    model.configure_training(TrainingPlan(frozenset({"t2"}), frozenset({"t2"}), frozenset({"t2"})))
    model.train_mode()
    for name in ("t0", "t1"):
        for part in ("column", "connections", "head"):
            module = model.part(name, part)
            assert not any(p.requires_grad for p in module.parameters())
            assert not any(m.training for m in module.modules())
    assert all(m.training for m in model.part("t2", "column").modules())
    stats = model.part("t0", "column").stages[0][2].running_mean.clone()
    outputs = model(torch.rand(8, 1, 8, 8))
    assert outputs["t0"].grad_fn is None and outputs["t2"].grad_fn is not None
    assert torch.equal(stats, model.part("t0", "column").stages[0][2].running_mean)


def test_evaluating_restores_each_module_mode(host) -> None:
    """Validation inside training flips only the trained parts and puts them back; a model
    put wholly in training mode comes back wholly in training mode."""
    model = model_with(host, "ttc", 3)
    model.configure_training(TrainingPlan(frozenset({"t2"}), frozenset({"t2"}), frozenset({"t2"})))
    model.train_mode()
    before = {name: m.training for name, m in model.named_modules()}
    with evaluating(model):
        assert not any(m.training for m in model.modules())
    assert {name: m.training for name, m in model.named_modules()} == before
    model.train_mode()  # a second call changes nothing
    assert {name: m.training for name, m in model.named_modules()} == before
    model.train()
    with evaluating(model):
        assert not any(m.training for m in model.modules())
    assert all(m.training for m in model.modules())
    model.train_mode()  # after a whole-model switch, the frozen parts go back to eval mode
    assert {name: m.training for name, m in model.named_modules()} == before


def test_remove_task_reports_downstream_tasks(host) -> None:
    model = model_with(host, "ttc", 4)
    assert model.remove_task("t1") == ["t2", "t3"]
    assert model.tasks["t3"].sources == ["t0", "t2", "t3"]
    assert model.connection_modules("t3")[0].beta.numel() == 2
    assert set(model(torch.rand(2, 1, 8, 8))) == {"t0", "t2", "t3"}


def test_closure_follows_source_sets(host) -> None:
    model = model_with(host, "ttc", 3)
    assert model.closure(["t1"]) == ["t0", "t1"]
    assert model.closure(["t0"]) == ["t0"]
