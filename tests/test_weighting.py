"""Loss weighting and gradient methods (`--weighting`): each built-in method's step against an
independent implementation (numpy, from the papers' formulas) on fixed tiny problems, which
parameters count as shared, a third-party method through the hook, and `dmt train` /
`dmt remove-task` with them end to end (recorded in the version and MLflow)."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from dmtcore.train.weighting import backward, make_weighting

TASKS = ["a", "b", "c"]


def method(host, name: str, tasks=TASKS, seed: int = 0, **options):
    return make_weighting(host.kinds, name, options, tasks, seed)


def losses_of(*values: float) -> dict[str, torch.Tensor]:
    return {
        t: torch.tensor(v, dtype=torch.float64, requires_grad=True)
        for t, v in zip(TASKS, values, strict=False)
    }


# -- loss methods ------------------------------------------------------------------------------


def test_equal_is_the_plain_sum(host) -> None:
    losses = losses_of(0.5, 2.0, 3.25)
    assert method(host, "equal").loss(losses).item() == 5.75


def test_uncertainty_matches_its_closed_form(host) -> None:
    """Σ L/(2e^s) + s/2: its value and its gradient in s are the paper's; learned alone on
    fixed losses, s reaches its closed-form optimum log L."""
    uw = method(host, "uncertainty", init=0.3)
    values = np.array([0.5, 2.0, 4.0])
    total = uw.loss({t: torch.tensor(v) for t, v in zip(TASKS, values, strict=False)})
    s = 0.3
    assert total.item() == pytest.approx(float(np.sum(values / (2 * np.exp(s)) + s / 2)))
    total.backward()
    np.testing.assert_allclose(
        uw.log_variance.grad.numpy(), 0.5 - values / (2 * np.exp(s)), rtol=1e-6
    )
    optimiser = torch.optim.SGD(uw.parameters(), lr=0.5)
    for _ in range(400):
        optimiser.zero_grad()
        uw.loss({t: torch.tensor(v) for t, v in zip(TASKS, values, strict=False)}).backward()
        optimiser.step()
    np.testing.assert_allclose(uw.log_variance.detach().numpy(), np.log(values), atol=1e-4)
    np.testing.assert_allclose(list(uw.weights().values()), 1 / (2 * values), rtol=1e-3)


def test_dwa_weights_follow_the_rates_of_the_last_two_epochs(host) -> None:
    dwa = method(host, "dwa", temperature=2.0)
    history = [[1.0, 2.0, 4.0], [0.5, 1.8, 4.0], [0.4, 1.0, 3.0]]
    seen = []
    for epoch, row in enumerate(history, start=1):
        seen.append(list(dwa.weights().values()))
        dwa.end_epoch(epoch, dict(zip(TASKS, row, strict=True)))
    seen.append(list(dwa.weights().values()))
    assert seen[0] == seen[1] == [1.0, 1.0, 1.0]  # epochs 1 and 2 weigh 1 each

    def expected(before, last):
        r = np.array(last) / np.array(before) / 2.0
        return 3 * np.exp(r) / np.exp(r).sum()

    # Epoch 3 from the rates of epochs 1 and 2; then (epoch 4) of epochs 2 and 3.
    np.testing.assert_allclose(seen[2], expected(history[0], history[1]), rtol=1e-12)
    np.testing.assert_allclose(seen[3], expected(history[1], history[2]), rtol=1e-12)
    losses = losses_of(1.0, 1.0, 1.0)
    assert dwa.loss(losses).item() == pytest.approx(3.0)  # the weights sum to K
    assert dwa.loss(losses_of(1.0, 0.0, 0.0)).item() == pytest.approx(seen[3][0])


# -- gradient methods --------------------------------------------------------------------------


def test_pcgrad_projects_two_conflicting_gradients(host) -> None:
    g1, g2 = np.array([1.0, 0.0]), np.array([-1.0, 1.0])  # g1 · g2 = -1: they conflict
    grads = torch.tensor(np.stack([g1, g2]))
    out = method(host, "pcgrad", tasks=["a", "b"]).combine(losses_of(1.0, 1.0), grads)
    p1 = g1 - g1 @ g2 / (g2 @ g2) * g2
    p2 = g2 - g2 @ g1 / (g1 @ g1) * g1
    np.testing.assert_allclose(out.numpy(), p1 + p2, rtol=1e-9)
    assert p1 @ g2 == pytest.approx(0) and p2 @ g1 == pytest.approx(0)  # no conflict left
    # Gradients that agree are summed untouched.
    agree = torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=torch.float64)
    same = method(host, "pcgrad", tasks=["a", "b"]).combine(losses_of(1.0, 1.0), agree)
    np.testing.assert_array_equal(same.numpy(), [3.0, 3.0])


def test_pcgrad_with_three_tasks_in_the_seeded_order(host) -> None:
    """Algorithm 1 with the other tasks visited in the order a generator seeded by --seed
    draws; the recorded weights are the coefficients of the original gradients."""
    rng = np.random.default_rng(4)
    grads = rng.normal(size=(3, 5))
    grads[2] = -grads[0] + 0.1 * rng.normal(size=5)  # make some pairs conflict
    out = method(host, "pcgrad", seed=7)
    result = out.combine(losses_of(1.0, 1.0, 1.0), torch.tensor(grads))
    generator = torch.Generator().manual_seed(7)
    total, coefficients = np.zeros(5), np.eye(3)
    for i in range(3):
        others = [j for j in range(3) if j != i]
        g = grads[i].copy()
        for k in torch.randperm(2, generator=generator).tolist():
            j = others[k]
            if g @ grads[j] < 0:
                scale = g @ grads[j] / (grads[j] @ grads[j])
                g = g - scale * grads[j]
                coefficients[i, j] -= scale
        total += g
    np.testing.assert_allclose(result.numpy(), total, rtol=1e-10)
    np.testing.assert_allclose(list(out.weights().values()), coefficients.sum(0), rtol=1e-10)
    np.testing.assert_allclose(coefficients.sum(0) @ grads, total, rtol=1e-10)


def test_gradnorm_step_and_target_ratios(host) -> None:
    """One step from given weights: the shared gradient is Σ w_t g_t with w = K softmax(v),
    and v's gradient is that of Σ |w_t ‖g_t‖ - Ḡ r_t^α| with the targets held constant,
    r_t the loss ratios L_t / L_t(0) relative to their mean."""
    rng = np.random.default_rng(0)
    grads = rng.normal(size=(3, 6)) * np.array([[1.0], [3.0], [0.2]])
    first, now = np.array([2.0, 1.0, 4.0]), np.array([1.0, 0.9, 1.0])
    gn = method(host, "gradnorm", alpha=1.5)
    logits = np.array([0.2, -0.1, 0.4])
    with torch.no_grad():
        gn.logits.copy_(torch.tensor(logits))
    gn.initial = dict(zip(TASKS, first, strict=True))
    out = gn.combine(losses_of(*now), torch.tensor(grads))

    p = np.exp(logits) / np.exp(logits).sum()
    w = 3 * p
    norms = w * np.linalg.norm(grads, axis=1)
    ratios = (now / first) / (now / first).mean()
    np.testing.assert_allclose(ratios, [10 / 11, 18 / 11, 5 / 11])  # 0.5, 0.9, 0.25 over 0.55
    target = norms.mean() * ratios**1.5
    dl_dw = np.sign(norms - target) * np.linalg.norm(grads, axis=1)
    dl_dv = 3 * (p * dl_dw - p * (p @ dl_dw))
    np.testing.assert_allclose(out.numpy(), w @ grads, rtol=1e-6)
    np.testing.assert_allclose(gn.logits.grad.numpy(), dl_dv, rtol=1e-5)
    np.testing.assert_allclose(list(gn.weights().values()), w, rtol=1e-6)
    assert sum(gn.weights().values()) == pytest.approx(3.0)


def test_gradnorm_takes_the_first_step_losses_as_initial(host) -> None:
    gn = method(host, "gradnorm", tasks=["a", "b"])
    grads = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    gn.combine(losses_of(3.0, 5.0), grads)
    assert gn.initial == {"a": 3.0, "b": 5.0}


def test_aligned_mtl_equals_the_svd_form(host) -> None:
    """Σ α_t g_t with α = 1ᵀ B equals σ_min 1ᵀ U Vᵀ of G's thin SVD: the aligned gradients
    are orthogonal, all of norm σ_min."""
    rng = np.random.default_rng(1)
    grads = rng.normal(size=(3, 8)) * np.array([[5.0], [1.0], [0.3]])
    out = method(host, "aligned-mtl").combine(losses_of(1.0, 1.0, 1.0), torch.tensor(grads))
    u, s, vt = np.linalg.svd(grads, full_matrices=False)
    aligned = s.min() * (u @ vt)
    np.testing.assert_allclose(aligned @ aligned.T, s.min() ** 2 * np.eye(3), atol=1e-9)
    np.testing.assert_allclose(out.numpy(), aligned.sum(0), rtol=1e-8)


def test_aligned_mtl_drops_a_dependent_direction(host) -> None:
    grads = torch.tensor([[1.0, 0.0, 0.0], [2.0, 0.0, 0.0]], dtype=torch.float64)
    out = method(host, "aligned-mtl", tasks=["a", "b"]).combine(losses_of(1.0, 1.0), grads)
    # Rank 1: M = [[1, 2], [2, 4]] keeps λ = 5 with v = (1, 2)/√5, so B = v vᵀ, α = (3/5, 6/5)
    # and the step is 3/5·g_a + 6/5·g_b = (3, 0, 0).
    np.testing.assert_allclose(out.numpy(), [3.0, 0.0, 0.0], rtol=1e-6)


# -- the step on a model: shared and own parameters ---------------------------------------------


class TwoHeads(nn.Module):
    """A shared trunk read by both tasks, one head each."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Linear(4, 3)
        self.heads = nn.ModuleDict({"a": nn.Linear(3, 1), "b": nn.Linear(3, 1)})

    def losses(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = torch.tanh(self.trunk(x))
        return {
            "a": self.heads["a"](h).square().mean(),
            "b": (self.heads["b"](h) - 1).square().mean(),
        }


@pytest.mark.parametrize("name", ["pcgrad", "gradnorm", "aligned-mtl"])
def test_gradient_methods_shape_the_shared_parameters_only(host, name) -> None:
    """The trunk (reached by both losses) takes the method's combination of the two tasks'
    gradients; each head keeps its own task's plain gradient."""
    model = TwoHeads()
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
    params = list(model.parameters())
    weighting = method(host, name, tasks=["a", "b"], seed=3)
    backward(weighting, model.losses(x), params)
    got = {n: p.grad.clone() for n, p in model.named_parameters()}

    losses = model.losses(x)
    trunk = list(model.trunk.parameters())
    own = {
        t: torch.autograd.grad(losses[t], list(model.heads[t].parameters()), retain_graph=True)
        for t in "ab"
    }
    rows = torch.stack(
        [
            torch.cat(
                [g.reshape(-1) for g in torch.autograd.grad(losses[t], trunk, retain_graph=True)]
            )
            for t in "ab"
        ]
    )
    reference = method(host, name, tasks=["a", "b"], seed=3)
    expected = reference.combine(model.losses(x), rows)
    flat = torch.cat([got["trunk.weight"].reshape(-1), got["trunk.bias"].reshape(-1)])
    torch.testing.assert_close(flat, expected)
    for t in "ab":
        torch.testing.assert_close(got[f"heads.{t}.weight"], own[t][0])
        torch.testing.assert_close(got[f"heads.{t}.bias"], own[t][1])


def test_a_loss_method_backpropagates_its_loss(host) -> None:
    model = TwoHeads()
    x = torch.randn(8, 4)
    uw = method(host, "uncertainty", tasks=["a", "b"])
    backward(uw, model.losses(x), list(model.parameters()))
    got = model.trunk.weight.grad.clone()
    model.zero_grad()
    losses = model.losses(x)
    (losses["a"] / (2 * math.exp(-0.5)) + losses["b"] / (2 * math.exp(-0.5))).backward()
    torch.testing.assert_close(got, model.trunk.weight.grad)


# -- bad input ---------------------------------------------------------------------------------


def test_unknown_weighting_and_bad_option_fail_before_anything_is_made(run_cli, tmp_path) -> None:
    store = tmp_path / "store"
    result = run_cli(
        "train",
        "digits.class",
        "digits.even",
        "--store",
        store,
        "--weighting",
        "pcgard",
        "--no-tracking",
        expect=3,
    )
    assert "unknown weighting 'pcgard'" in result.stderr and "pcgrad" in result.stderr
    assert "Known: aligned-mtl, dwa, equal, gradnorm, pcgrad, uncertainty" in result.stderr
    result = run_cli(
        "train",
        "digits.class",
        "digits.even",
        "--store",
        store,
        "--weighting",
        "gradnorm",
        "--weighting-option",
        "beta=2",
        "--no-tracking",
        expect=11,
    )
    assert "weighting 'gradnorm' has no option 'beta'; valid: alpha" in result.stderr
    result = run_cli(
        "train",
        "digits.class",
        "digits.even",
        "--store",
        store,
        "--weighting",
        "dwa",
        "--weighting-option",
        "temperature=0",
        "--no-tracking",
        expect=11,
    )
    assert "'temperature' must be positive, got 0.0" in result.stderr
    assert not store.exists()  # nothing was created


def test_compare_with_a_store_lacking_the_tasks_is_refused_before_training(
    run_cli, store_copy, tmp_path
) -> None:
    result = run_cli(
        "train",
        "digits.large",
        "digits.prime",
        "--store",
        tmp_path / "new",
        "--compare-with",
        store_copy,
        "--no-tracking",
        expect=11,
    )
    assert "has no task 'digits.large'; it holds digits.class, digits.even" in result.stderr
    assert not (tmp_path / "new").exists()


# -- end to end --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["uncertainty", "dwa", "gradnorm", "pcgrad", "aligned-mtl"])
def test_every_method_trains_a_digits_group(host, tmp_path, name) -> None:
    from dmtcore.operations import train_tasks
    from dmtcore.train.loop import TrainSettings

    settings = TrainSettings(epochs=2, batch_size=64, weighting=name)
    result = train_tasks(
        tmp_path / "s", ["digits.class", "digits.even"], host, settings, notify=lambda m: None
    )
    assert result.metrics["digits.class"]["accuracy"] > 0.5  # chance: 0.1
    assert result.metrics["digits.even"]["accuracy"] > 0.75  # chance: about 0.5
    record = result.summary["weighting"]
    assert record["name"] == name and set(record["weights"]) == {"digits.class", "digits.even"}
    assert all(math.isfinite(w) and w > 0 for w in record["weights"].values())
    assert result.summary["settings"]["weighting"] == name


@pytest.mark.parametrize("name", ["dwa", "gradnorm", "pcgrad", "aligned-mtl"])
def test_every_method_trains_the_dense_group(host, tmp_path, name) -> None:
    """Segmentation + normals + depth at 16×16 for one epoch (uncertainty: the test below)."""
    from dmtcore.operations import init_store, train_tasks
    from dmtcore.tasks.names import InputSpec
    from dmtcore.train.loop import TrainSettings

    tasks = ["scenes.segmentation", "scenes.normals", "scenes.depth"]
    store = tmp_path / "s"
    init_store(store, host, input_spec=InputSpec(3, 16, 16), backbone_options={"spatial": True})
    settings = TrainSettings(epochs=1, weighting=name)
    result = train_tasks(store, tasks, host, settings, notify=lambda m: None)
    assert result.metrics["scenes.segmentation"]["miou"] > 0.1
    assert math.isfinite(result.metrics["scenes.normals"]["mean_angle"])
    weights = result.summary["weighting"]["weights"]
    assert set(weights) == set(tasks) and all(math.isfinite(w) for w in weights.values())


def test_dense_group_with_uncertainty_reports_delta_m_and_logs_weights(
    run_cli, new_store_dir, tmp_path
) -> None:
    """The issue's command at 16×16 for one epoch: Δm against a store of the tasks trained
    alone, and the weights per epoch as MLflow series."""
    from mlflow.tracking import MlflowClient

    tasks = ["scenes.segmentation", "scenes.normals", "scenes.depth"]
    alone = tmp_path / "alone"
    run_cli(
        "init",
        "--store",
        alone,
        "--input",
        "3x16x16",
        "--connection",
        "none",
        "--backbone-option",
        "spatial=true",
    )
    run_cli("add-task", *tasks, "--store", alone, "--epochs", "1", "--no-tracking")
    run_cli(
        "init", "--store", new_store_dir, "--input", "3x16x16", "--backbone-option", "spatial=true"
    )
    result = run_cli(
        "train",
        *tasks,
        "--store",
        new_store_dir,
        "--epochs",
        "1",
        "--weighting",
        "uncertainty",
        "--compare-with",
        alone,
        "--no-register",
    )
    assert (
        "weighting uncertainty: last epoch's mean weights scenes.segmentation 0.8" in result.stdout
    )
    assert f"against {alone}" in result.stdout
    manifest = json.loads((new_store_dir / "versions" / "v000002.json").read_text())
    operation = manifest["operation"]
    assert operation["weighting"]["name"] == "uncertainty"
    assert operation["weighting"]["options"] == {"init": -0.5}
    assert operation["delta_m"]["baseline"] == str(alone)
    assert math.isfinite(operation["delta_m"]["value"])
    client = MlflowClient(tracking_uri=f"sqlite:///{new_store_dir / 'mlflow.db'}")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.data.params["weighting"] == "uncertainty"
    weights = client.get_metric_history(run.info.run_id, "loss_weight.scenes.depth")
    assert sorted(m.step for m in weights) == [0, 1]  # epoch 1, and the final record
    assert all(0.5 < m.value < 1.0 for m in weights)  # 1/(2 e^s), s near its start -0.5: 0.82
    assert run.data.metrics["delta_m"] == pytest.approx(operation["delta_m"]["value"])


def test_a_plugin_adds_a_method_through_the_hook(run_cli, write_plugin, tmp_path) -> None:
    plugin = write_plugin(
        "fixed_weights",
        '''
import torch
from dmtcore import Weighting, WeightingKind, hookimpl


class Fixed(Weighting):
    """Weights given as options: first task `first`, the others 1."""

    def loss(self, losses):
        self.last = {t: (self.options["first"] if t == self.tasks[0] else 1.0) for t in self.tasks}
        return sum(self.last[t] * loss for t, loss in losses.items())


@hookimpl
def dmt_register_weightings(kinds):
    kinds.add_weighting(WeightingKind(name="fixed", description="fixed weights", build=Fixed,
                                      default_options={"first": 1.0}))
''',
    )
    listed = json.loads(run_cli("weightings", "-p", plugin, "--json").stdout)
    row = next(r for r in listed if r["name"] == "fixed")
    assert row["plugin"] == "fixed_weights" and row["uses_gradients"] is False
    assert listed[0]["name"] == "equal"
    store = tmp_path / "store"
    payload = json.loads(
        run_cli(
            "train",
            "digits.class",
            "digits.even",
            "--store",
            store,
            "--epochs",
            "1",
            "--weighting",
            "fixed",
            "--weighting-option",
            "first=0.25",
            "-p",
            plugin,
            "--no-tracking",
            "--json",
        ).stdout
    )
    assert payload["weighting"] == {
        "name": "fixed",
        "options": {"first": 0.25},
        "weights": {"digits.class": 0.25, "digits.even": 1.0},
    }


def test_remove_task_reconnects_under_a_weighting_in_rounds(run_cli, store_copy, host) -> None:
    """remove-task retrains several tasks' connections together: with pcgrad, tasks that take
    turns step once per round of one batch each."""
    from dmtcore.operations import add_task
    from dmtcore.train.loop import TrainSettings

    add_task(store_copy, "shapes.kind", host, TrainSettings(epochs=1), notify=lambda m: None)
    shutil.rmtree(store_copy / "features", ignore_errors=True)
    result = run_cli(
        "remove-task",
        "digits.class",
        "--store",
        store_copy,
        "--epochs",
        "1",
        "--weighting",
        "pcgrad",
        "--joint-mode",
        "turns",
        "--no-tracking",
    )
    assert "one step per round of one batch of each task" in result.stderr
    manifest = json.loads((store_copy / "versions" / "v000005.json").read_text())
    assert manifest["operation"]["weighting"]["name"] == "pcgrad"
    assert set(manifest["operation"]["weighting"]["weights"]) == {"digits.even", "shapes.kind"}
