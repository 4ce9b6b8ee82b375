"""Every connection kind against its paper's formula, on hand-made tensors with known weights."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

EPS_SCALE = 1 / math.sqrt(1 + 1e-5)  # BatchNorm in eval mode with fresh statistics


def build(host, kind: str, own: int, sources: int, shape: tuple[int, ...], **options):
    connection_kind = host.kinds.connection(kind)
    module = connection_kind.build(own, sources, shape, connection_kind.resolve_options(options))
    module.eval()  # fresh BatchNorm statistics: an identity up to EPS_SCALE
    return module


# -- TTC (DMT §3) --------------------------------------------------------------------------


def test_ttc_matches_the_paper_formula(host) -> None:
    connection = build(host, "ttc", 1, 3, (2, 3, 3))
    with torch.no_grad():
        connection.beta.copy_(torch.tensor([0.5, -2.0]))  # sources 0 and 2
    h = [torch.full((1, 2, 3, 3), v) for v in (1.0, 10.0, 100.0)]
    expected = 10.0 + 1.0 / (1 + math.exp(-0.5)) * 1.0 + 1.0 / (1 + math.exp(2.0)) * 100.0
    out = connection(h)
    assert torch.allclose(out, torch.full_like(out, expected * EPS_SCALE), atol=1e-4)
    weights = connection.relation_weights()
    assert weights[1] == 1.0  # alpha_ii is fixed at 1
    assert weights[0] == pytest.approx(1 / (1 + math.exp(-0.5)))


def test_ttc_trains_through_one_contraction_with_the_sum_s_values_and_gradients(host) -> None:
    """While β trains, the sources are summed in one contraction (fewer operations per step);
    evaluation keeps the per-source sum. Both give the formula's values, and β the same
    gradient, up to float rounding."""
    torch.manual_seed(0)
    connection = build(host, "ttc", 2, 9, (4, 3, 3))
    with torch.no_grad():
        connection.beta.copy_(torch.randn(8))
    own = torch.randn(5, 4, 3, 3, requires_grad=True)
    h = [torch.randn(5, 4, 3, 3) for _ in range(9)]
    h[2] = own
    trained = connection(h)
    (trained * torch.arange(trained.numel()).view_as(trained)).sum().backward()
    fused_grads = connection.beta.grad.clone(), own.grad.clone()
    connection.beta.grad, own.grad = None, None
    alphas = torch.sigmoid(connection.beta)
    summed = own + sum(a * x for a, x in zip(alphas, h[:2] + h[3:], strict=True))
    expected = connection.norm(summed)
    (expected * torch.arange(expected.numel()).view_as(expected)).sum().backward()
    torch.testing.assert_close(trained, expected)
    torch.testing.assert_close(fused_grads[0], connection.beta.grad)
    torch.testing.assert_close(fused_grads[1], own.grad)
    with torch.no_grad():
        evaluated = connection(h)
    torch.testing.assert_close(evaluated, expected.detach())


def test_ttc_initial_alpha_and_learning_rate_group(host) -> None:
    connection = build(host, "ttc", 0, 4, (8,), init_alpha=0.2, lr_mult=7.0)
    assert connection.relation_weights() == pytest.approx([1.0, 0.2, 0.2, 0.2])
    (group,) = connection.param_groups()
    assert group.lr_mult == 7.0 and any(p is connection.beta for p in group.params)


def test_ttc_drop_source_keeps_the_other_gates(host) -> None:
    connection = build(host, "ttc", 2, 4, (2,))
    with torch.no_grad():
        connection.beta.copy_(torch.tensor([1.0, 2.0, 3.0]))  # sources 0, 1, 3
    connection.drop_source(1)
    assert connection.own == 1 and connection.num_sources == 3
    assert connection.beta.tolist() == [1.0, 3.0]


def test_ttc_with_every_gate_one_and_equal_columns_is_hard_sharing(host) -> None:
    """DMT §3: with every α = 1 every task receives the same features."""
    h = [torch.randn(4, 3, 2, 2) for _ in range(3)]
    outs = []
    for own in range(3):
        connection = build(host, "ttc", own, 3, (3, 2, 2))
        with torch.no_grad():
            connection.beta.fill_(50.0)  # sigmoid(50) == 1 in float32
        outs.append(connection(h))
    assert torch.allclose(outs[0], outs[1]) and torch.allclose(outs[1], outs[2])


def test_none_passes_own_features(host) -> None:
    connection = build(host, "none", 1, 2, (3,))
    h = [torch.randn(2, 3), torch.randn(2, 3)]
    assert connection(h) is h[1]
    assert connection.param_groups() == []


# -- NDDR (Gao et al. §3–4) ----------------------------------------------------------------


def test_nddr_matches_concat_bn_conv_relu(host) -> None:
    connection = build(host, "nddr", 0, 2, (2, 1, 1))
    weight = torch.tensor([[1.0, -2.0, 0.5, 3.0], [0.0, 1.0, -1.0, 2.0]])  # C × K·C
    with torch.no_grad():
        connection.project.weight.copy_(weight.view(2, 4, 1, 1))
    h = [torch.tensor([1.0, 2.0]).view(1, 2, 1, 1), torch.tensor([3.0, -4.0]).view(1, 2, 1, 1)]
    concat = torch.tensor([1.0, 2.0, 3.0, -4.0]) * EPS_SCALE
    expected = torch.relu(weight @ concat)
    assert torch.allclose(connection(h).view(2), expected, atol=1e-5)


def test_nddr_diagonal_init_spreads_beta(host) -> None:
    connection = build(host, "nddr", 1, 3, (4, 2, 2))
    blocks = connection.project.weight.detach().view(4, 12).split(4, dim=1)
    for block, value in zip(blocks, (0.05, 0.9, 0.05), strict=True):
        assert torch.allclose(block, value * torch.eye(4))
    assert connection.relation_weights() == pytest.approx([0.05 / 0.9, 1.0, 0.05 / 0.9])
    single = build(host, "nddr", 0, 1, (4, 2, 2))
    assert torch.allclose(single.project.weight.view(4, 4), torch.eye(4))  # α + β, no others


def test_nddr_xavier_init_is_dense(host) -> None:
    weight = build(host, "nddr", 0, 2, (8, 2, 2), init="xavier").project.weight.detach().view(8, 16)
    assert (weight[:, 1:8] != 0).any()


def test_nddr_weight_decay_and_learning_rate_groups(host) -> None:
    connection = build(host, "nddr", 0, 2, (4, 2, 2), weight_decay=3e-4)
    conv, norm = connection.param_groups()
    assert conv.params == [connection.project.weight] and conv.weight_decay == 3e-4
    assert conv.lr_mult == 100.0 and norm.lr_mult == 100.0 and norm.weight_decay == 0.0


def test_nddr_with_beta_zero_is_single_task(host) -> None:
    connection = build(host, "nddr", 0, 3, (4, 3, 3), beta=0.0, alpha=1.0)
    own = torch.rand(2, 4, 3, 3)
    first = connection([own, torch.rand(2, 4, 3, 3), torch.rand(2, 4, 3, 3)])
    second = connection([own, torch.rand(2, 4, 3, 3), torch.rand(2, 4, 3, 3)])
    assert torch.equal(first, second)
    assert torch.allclose(first, own * EPS_SCALE, atol=1e-6)


def test_nddr_drop_source_equals_a_layer_built_without_it(host) -> None:
    connection = build(host, "nddr", 2, 3, (3, 2, 2), init="xavier")
    connection.train()
    connection([torch.rand(8, 3, 2, 2) * (i + 1) for i in range(3)])  # move the BN statistics
    connection.eval()
    h = [torch.rand(2, 3, 2, 2) for _ in range(3)]
    expected_weight = torch.cat(
        [connection.project.weight[:, :3], connection.project.weight[:, 6:]], 1
    )
    connection.drop_source(1)
    assert connection.own == 1 and connection.norm.num_features == 6
    assert torch.equal(connection.project.weight, expected_weight)
    manual = build(host, "nddr", 1, 2, (3, 2, 2))
    manual.load_state_dict(connection.state_dict())
    assert torch.allclose(connection([h[0], h[2]]), manual([h[0], h[2]]))


def test_nddr_shortcut_resizes_concatenates_and_starts_as_identity(host) -> None:
    kind = host.kinds.connection("nddr-shortcut")
    shortcut = kind.build_shortcut([(2, 8, 8), (3, 4, 4), (5, 2, 2)], kind.resolve_options({}))
    outputs = [torch.rand(1, 2, 8, 8), torch.rand(1, 3, 4, 4), torch.rand(1, 5, 2, 2)]
    assert torch.allclose(shortcut(outputs), outputs[-1])  # identity on the last NDDR output
    with torch.no_grad():
        shortcut.project.weight.zero_()
        shortcut.project.weight[0, 0] = 1.0  # read channel 0 of the first (8×8) output
    pooled = torch.nn.functional.interpolate(outputs[0], size=(2, 2), mode="bilinear")
    assert torch.allclose(shortcut(outputs)[0, 0], pooled[0, 0])
    (group,) = shortcut.param_groups()
    assert group.lr_mult == 100.0 and group.weight_decay == 1e-4


# -- Cross-stitch (Misra et al. §3–5) -------------------------------------------------------


def test_cross_stitch_mixes_same_channels(host) -> None:
    unit = build(host, "cross-stitch", 0, 2, (2, 1, 1))
    with torch.no_grad():
        unit.weights.copy_(torch.tensor([[0.7, 0.2], [0.3, 0.8]]))  # sources × channels
    h = [torch.tensor([1.0, 2.0]).view(1, 2, 1, 1), torch.tensor([10.0, 20.0]).view(1, 2, 1, 1)]
    expected = torch.tensor([0.7 * 1 + 0.3 * 10, 0.2 * 2 + 0.8 * 20])
    assert torch.allclose(unit(h).view(2), expected)
    assert unit.relation_weights() == pytest.approx([0.45, 0.55])


def test_cross_stitch_init_is_convex_and_learns_fast(host) -> None:
    unit = build(host, "cross-stitch", 1, 3, (4, 2, 2))
    assert unit.weights[:, 0].tolist() == pytest.approx([0.05, 0.9, 0.05])
    assert torch.allclose(unit.weights.sum(0), torch.ones(4))
    (group,) = unit.param_groups()
    assert group.lr_mult == 100.0
    unit.drop_source(0)
    assert unit.weights[:, 0].tolist() == pytest.approx([0.9, 0.05]) and unit.own == 0


def test_cross_stitch_is_nddr_with_a_diagonal_only_projection(host) -> None:
    """Gao et al. §2: fixing NDDR's off-diagonal weights to 0 gives a cross-stitch unit."""
    unit = build(host, "cross-stitch", 0, 2, (3, 2, 2))
    with torch.no_grad():
        unit.weights.copy_(torch.rand(2, 3))
    nddr = build(host, "nddr", 0, 2, (3, 2, 2), relu=False)
    blocks = [torch.diag(unit.weights[j].detach()) for j in range(2)]
    with torch.no_grad():
        nddr.project.weight.copy_(torch.cat(blocks, 1).view(3, 6, 1, 1))
    h = [torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2)]
    assert torch.allclose(nddr(h), unit(h) * EPS_SCALE, atol=1e-6)


def test_a_cross_stitch_unit_per_layer_is_one_weight_per_source(host) -> None:
    """§6.4: one unit per layer activation map, out = Σ_j a_j · h_j, K weights in all."""
    unit = build(host, "cross-stitch", 1, 3, (4, 2, 2), granularity="layer")
    assert [p.shape for p in unit.parameters()] == [torch.Size([3])]
    assert unit.weights.tolist() == pytest.approx([0.05, 0.9, 0.05])
    with torch.no_grad():
        unit.weights.copy_(torch.tensor([0.2, 0.7, -0.4]))
    h = [torch.randn(2, 4, 2, 2) for _ in range(3)]
    expected = 0.2 * h[0] + 0.7 * h[1] - 0.4 * h[2]
    assert torch.allclose(unit(h), expected, atol=1e-6)
    assert unit.relation_weights() == pytest.approx([0.2, 0.7, -0.4])
    flat = build(host, "cross-stitch", 0, 2, (5,), granularity="layer")
    vectors = [torch.randn(3, 5), torch.randn(3, 5)]
    assert torch.allclose(flat(vectors), 0.9 * vectors[0] + 0.1 * vectors[1], atol=1e-6)
    (group,) = unit.param_groups()
    assert group.lr_mult == 100.0 and group.params == [unit.weights]
    unit.drop_source(0)
    assert unit.own == 0 and unit.weights.tolist() == pytest.approx([0.7, -0.4])
    assert torch.allclose(unit([h[1], h[2]]), 0.7 * h[1] - 0.4 * h[2], atol=1e-6)


def test_cross_stitch_per_channel_is_the_default_and_the_reading_of_old_options(host) -> None:
    """A store written before `granularity` existed has no such option: per channel."""
    kind = host.kinds.connection("cross-stitch")
    assert kind.resolve_options({})["granularity"] == "channel"
    old = {"alpha": 0.9, "beta": 0.1, "lr_mult": 100.0}
    assert kind.build(0, 2, (4, 2, 2), old).weights.shape == (2, 4)


DIGITS = ["--input", "1x8x8", "--connection", "cross-stitch"]
FAST = ["--epochs", "1", "--batch-size", "64", "--no-tracking"]


def test_cross_stitch_granularity_is_checked_recorded_and_shown(run_cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    result = run_cli(
        "init", "--store", bad, *DIGITS, "--connection-option", "granularity=pixel", expect=11
    )
    assert result.stderr.strip().splitlines()[-1] == (
        "Error: cross-stitch granularity 'pixel' is unknown; valid: channel, layer"
    )
    assert not (bad / "CURRENT").exists()
    store = tmp_path / "store"
    run_cli("init", "--store", store, *DIGITS, "--connection-option", "granularity=layer")
    options = json.loads(run_cli("status", "--store", store, "--json").stdout)["connection"]
    assert options["options"]["granularity"] == "layer"
    shown = run_cli("status", "--store", store).stdout
    assert "connection cross-stitch (one unit per layer)" in shown, shown


def test_a_cross_stitch_store_written_before_granularity_stays_per_channel(
    run_cli, tmp_path: Path
) -> None:
    """Such a store's manifests have no `granularity`: it opens, predicts and grows exactly as
    per-channel units, and its later versions keep the options as they were."""
    import numpy as np

    store = tmp_path / "store"
    run_cli("init", "--store", store, *DIGITS)
    for task in ("digits.class", "digits.even"):
        run_cli("add-task", task, "--store", store, *FAST)
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((5, 1, 8, 8), dtype=np.float32))
    predict = ("predict", tmp_path / "x.npy", "--store", store, "--json")
    before = json.loads(run_cli(*predict).stdout)["tasks"]
    for version in (store / "versions").glob("v*.json"):
        manifest = json.loads(version.read_text())
        assert manifest["connection"]["options"].pop("granularity") == "channel"
        version.write_text(json.dumps(manifest))
    assert json.loads(run_cli(*predict).stdout)["tasks"] == before
    run_cli("verify", "--all", "--store", store)
    run_cli("add-task", "digits.prime", "--store", store, *FAST)
    after = json.loads(run_cli(*predict).stdout)["tasks"]
    assert {t: after[t] for t in before} == before
    status = json.loads(run_cli("status", "--store", store, "--json").stdout)
    assert "granularity" not in status["connection"]["options"]
    shown = run_cli("connections", "--store", store).stdout
    assert shown.startswith("cross-stitch relations"), shown
