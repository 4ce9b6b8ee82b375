"""Connections against their formulas on hand-made tensors, columns' shapes, and freezing."""

from __future__ import annotations

import math

import pytest
import torch

from dmtcore.model import MultiTaskModel, TrainingPlan
from dmtcore.names import InputSpec
from dmtcore.taskspec import HeadSpec


def identity_norm(connection) -> None:
    """Make the connection's BatchNorm an identity in eval mode, so only the mixing is tested."""
    connection.eval()


def test_ttc_matches_the_paper_formula(host) -> None:
    kind = host.registry.connection("ttc")
    connection = kind.build(1, 3, (2, 3, 3), {"init_alpha": 0.1, "lr_mult": 10.0})
    with torch.no_grad():
        connection.beta.copy_(torch.tensor([0.5, -2.0]))  # sources 0 and 2
    identity_norm(connection)
    h = [torch.full((1, 2, 3, 3), v) for v in (1.0, 10.0, 100.0)]
    expected = 10.0 + 1.0 / (1 + math.exp(-0.5)) * 1.0 + 1.0 / (1 + math.exp(2.0)) * 100.0
    out = connection(h)
    assert torch.allclose(out, torch.full_like(out, expected / math.sqrt(1 + 1e-5)), atol=1e-5)
    weights = connection.relation_weights()
    assert weights[1] == 1.0  # alpha_ii is fixed at 1
    assert weights[0] == pytest.approx(1 / (1 + math.exp(-0.5)))


def test_ttc_initial_alpha_and_learning_rate_group(host) -> None:
    connection = host.registry.connection("ttc").build(
        0, 4, (8,), {"init_alpha": 0.2, "lr_mult": 7.0}
    )
    assert connection.relation_weights() == pytest.approx([1.0, 0.2, 0.2, 0.2])
    (group,) = connection.param_groups()
    assert group.lr_mult == 7.0 and any(p is connection.beta for p in group.params)


def test_ttc_drop_source_keeps_the_other_gates(host) -> None:
    connection = host.registry.connection("ttc").build(
        2, 4, (2,), {"init_alpha": 0.1, "lr_mult": 1.0}
    )
    with torch.no_grad():
        connection.beta.copy_(torch.tensor([1.0, 2.0, 3.0]))  # sources 0, 1, 3
    connection.drop_source(1)
    assert connection.own == 1 and connection.num_sources == 3
    assert connection.beta.tolist() == [1.0, 3.0]
    assert connection.relation_weights()[1] == 1.0


def test_ttc_with_all_gates_one_and_equal_columns_is_hard_sharing(host) -> None:
    """DMT §3: with every α = 1 each task gets the same sum of features."""
    kind = host.registry.connection("ttc")
    h = [torch.randn(4, 3, 2, 2) for _ in range(3)]
    outs = []
    for own in range(3):
        connection = kind.build(own, 3, (3, 2, 2), {"init_alpha": 0.5, "lr_mult": 1.0})
        with torch.no_grad():
            connection.beta.fill_(50.0)  # sigmoid(50) == 1 in float32
        identity_norm(connection)
        outs.append(connection(h))
    assert torch.allclose(outs[0], outs[1]) and torch.allclose(outs[1], outs[2])


def test_none_connection_passes_own_features(host) -> None:
    connection = host.registry.connection("none").build(1, 2, (3,), {})
    h = [torch.randn(2, 3), torch.randn(2, 3)]
    assert connection(h) is h[1]
    assert connection.param_groups() == []


@pytest.mark.parametrize(
    ("spec", "shapes"),
    [
        ((1, 8, 8), [(40, 4, 4), (60, 2, 2), (80, 1, 1), (100, 1, 1), (140, 1, 1), (360,)]),
        ((3, 32, 32), [(40, 16, 16), (60, 8, 8), (80, 4, 4), (100, 2, 2), (140, 2, 2), (360,)]),
    ],
)
def test_dmt_cnn_column_adapts_to_the_input(host, spec, shapes) -> None:
    column = host.registry.backbone("dmt-cnn").build(InputSpec(*spec), {"fc_width": 360})
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
    column = host.registry.backbone("resnet18").build(InputSpec(1, 32, 32), {"weights_file": None})
    assert [s[0] for s in column.feature_shapes] == [64, 128, 256, 512]
    assert column.out_features == 512


def model_with(host, connection: str, tasks: int) -> MultiTaskModel:
    model = MultiTaskModel(
        InputSpec(1, 8, 8),
        host.registry.backbone("dmt-cnn"),
        {"fc_width": 32},
        host.registry.connection(connection),
        host.registry.connection(connection).resolve_options({}),
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


def test_remove_task_reports_downstream_tasks(host) -> None:
    model = model_with(host, "ttc", 4)
    assert model.remove_task("t1") == ["t2", "t3"]
    assert model.tasks["t3"].sources == ["t0", "t2", "t3"]
    assert model.connection_modules("t3")[0].beta.numel() == 2
    assert set(model(torch.rand(2, 1, 8, 8))) == {"t0", "t2", "t3"}


def test_isolated_connection_needs_only_own_column(host) -> None:
    model = model_with(host, "ttc", 3)
    assert model.closure(["t1"]) == ["t0", "t1"]
    assert model.closure(["t0"]) == ["t0"]
