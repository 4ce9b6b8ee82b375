"""Pixel-level losses and metrics against numpy on small hand-made tensors: what is counted
(labelled pixels only), streaming over batches, each metric's direction, and the best-epoch
score that reads those directions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dmtcore.tasks.dense_labels import dense_targets
from dmtcore.tasks.metrics import (
    LOSSES,
    MetricState,
    berhu,
    cosine,
    depth_l1,
    normals_l1,
    pixel_cross_entropy,
)
from dmtcore.tasks.spec import (
    DEFAULT_METRICS,
    DENSE_KINDS,
    IGNORE_LABEL,
    METRIC_NAMES,
    TaskSpec,
    higher_is_better,
)
from dmtcore.train.loop import Target, epoch_score

K = 4


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def segmentation_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of 4 classes; truth uses classes 0..2 (3 appears in neither truth nor
    prediction below, so it must not count), with unlabelled pixels."""
    g = generator(seed)
    logits = torch.randn(2, K, 5, 6, generator=g)
    logits[:, 3] = -100.0  # never predicted
    labels = torch.randint(0, 2, (2, 5, 6), generator=g)
    labels[0, 0, :] = IGNORE_LABEL
    labels[1, :, 0] = IGNORE_LABEL
    return logits, labels


def numpy_segmentation(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    predicted = logits.argmax(1).numpy().ravel()
    truth = labels.numpy().ravel()
    keep = truth != IGNORE_LABEL
    predicted, truth = predicted[keep], truth[keep]
    ious = []
    for c in range(K):
        union = np.sum((predicted == c) | (truth == c))
        if union:
            ious.append(np.sum((predicted == c) & (truth == c)) / union)
    return {"miou": float(np.mean(ious)), "pixel_accuracy": float(np.mean(predicted == truth))}


def depth_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = generator(seed)
    truth = torch.rand(2, 1, 5, 6, generator=g) * 4 + 0.5
    truth[truth < 1.0] = 0.0  # no ground truth there
    predicted = truth * (0.6 + 0.8 * torch.rand(2, 1, 5, 6, generator=g)) + 0.1
    predicted[0, 0, 0, 0] = 1e6  # a wild prediction where there is no truth must not count
    truth[0, 0, 0, 0] = 0.0
    return predicted, truth


def numpy_depth(predicted: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    p, t = predicted.double().numpy().ravel(), truth.double().numpy().ravel()
    p, t = p[t > 0], t[t > 0]
    error = np.abs(p - t)
    return {
        "abs_rel": float(np.mean(error / t)),
        "rmse": float(np.sqrt(np.mean(error**2))),
        "delta1": float(np.mean(np.maximum(p / t, t / p) < 1.25)),
        "abs_err": float(np.mean(error)),
    }


def normals_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Unnormalised predictions against unit truth with all-zero (unlabelled) pixels: 53
    labelled pixels, an odd number, so the median is one of them."""
    g = generator(seed)
    truth = torch.nn.functional.normalize(torch.randn(2, 3, 5, 6, generator=g), dim=1)
    predicted = 3.0 * (truth + 0.7 * torch.randn(2, 3, 5, 6, generator=g))
    truth[0, :, 1, :] = 0.0
    truth[1, :, 2, 3] = 0.0
    return predicted, truth


def numpy_angles(predicted: torch.Tensor, truth: torch.Tensor) -> np.ndarray:
    p = predicted.double().permute(0, 2, 3, 1).reshape(-1, 3).numpy()
    t = truth.double().permute(0, 2, 3, 1).reshape(-1, 3).numpy()
    keep = np.abs(t).sum(1) > 0
    p, t = p[keep], t[keep]
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    return np.degrees(np.arccos(np.clip((p * t).sum(1), -1, 1)))


def result(kind: str, num_outputs: int, *batches: tuple[torch.Tensor, torch.Tensor]):
    state = MetricState(kind, list(DEFAULT_METRICS[kind]), num_outputs)
    for outputs, labels in batches:
        state.update(outputs, labels)
    return state.result()


def both(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.cat([x, y]) for x, y in zip(a, b, strict=True))


# -- metrics against numpy ------------------------------------------------------------------


def test_miou_and_pixel_accuracy_count_labelled_pixels_and_present_classes() -> None:
    logits, labels = segmentation_batch()
    got = result("segmentation", K, (logits, labels))
    expected = numpy_segmentation(logits, labels)
    assert got == pytest.approx(expected, abs=1e-12)
    # Class 3 (in neither truth nor prediction) would pull a mean over all classes down.
    assert got["miou"] > 0.0 and len({int(c) for c in labels.unique()} - {IGNORE_LABEL}) == 2


def test_an_unlabelled_pixel_never_changes_the_segmentation_metrics() -> None:
    logits, labels = segmentation_batch()
    changed = logits.clone()
    changed[0, :, 0, :] = torch.randn(K, 6) * 50  # row 0 of image 0 is unlabelled
    assert result("segmentation", K, (changed, labels)) == result(
        "segmentation", K, (logits, labels)
    )


def test_depth_metrics_count_pixels_with_ground_truth_only() -> None:
    predicted, truth = depth_batch()
    got = result("depth", 1, (predicted, truth))
    assert got == pytest.approx(numpy_depth(predicted, truth), rel=1e-6)
    assert 0.0 < got["delta1"] < 1.0  # the batch exercises both sides of the threshold


def test_a_non_positive_depth_prediction_is_never_within_delta1() -> None:
    truth = torch.full((1, 1, 1, 2), 2.0)
    predicted = torch.tensor([2.0, -2.0]).view(1, 1, 1, 2)
    assert result("depth", 1, (predicted, truth))["delta1"] == 0.5


def test_normal_metrics_count_labelled_pixels_and_the_median_is_exact() -> None:
    predicted, truth = normals_batch()
    angles = numpy_angles(predicted, truth)
    assert len(angles) % 2 == 1 and len(angles) < predicted.shape[0] * 30
    got = result("normals", 3, (predicted, truth))
    assert got["mean_angle"] == pytest.approx(float(np.mean(angles)), rel=1e-6)
    assert abs(got["median_angle"] - float(np.median(angles))) <= 0.005 + 1e-5  # float32 angles
    for name, limit in (("within_11_25", 11.25), ("within_22_5", 22.5), ("within_30", 30.0)):
        assert got[name] == pytest.approx(float(np.mean(angles < limit)), abs=1e-12), name
    assert 0.0 < got["within_11_25"] < got["within_30"] < 1.0


@pytest.mark.parametrize(
    ("kind", "num_outputs", "make"),
    [("segmentation", K, segmentation_batch), ("depth", 1, depth_batch), ("normals", 3, normals_batch)],
)  # fmt: skip
def test_streaming_two_batches_equals_one_batch_of_both(kind, num_outputs, make) -> None:
    first, second = make(0), make(1)
    streamed = result(kind, num_outputs, first, second)
    whole = result(kind, num_outputs, both(first, second))
    assert streamed.keys() == whole.keys() == set(DEFAULT_METRICS[kind])
    assert streamed == pytest.approx(whole, rel=1e-6, abs=1e-12)


@pytest.mark.parametrize(
    ("kind", "num_outputs", "make"),
    [("segmentation", K, segmentation_batch), ("depth", 1, depth_batch), ("normals", 3, normals_batch)],
)  # fmt: skip
def test_a_split_without_any_labelled_pixel_gives_nan_metrics(kind, num_outputs, make) -> None:
    outputs, labels = make(0)
    empty = torch.full_like(labels, IGNORE_LABEL) if kind == "segmentation" else labels * 0
    values = result(kind, num_outputs, (outputs, empty))
    assert all(math.isnan(v) for v in values.values()), values


# -- losses ---------------------------------------------------------------------------------


def dense_loss_cases():
    """(loss, outputs, labels, an index of an unlabelled pixel in the outputs)."""
    logits, labels = segmentation_batch()
    depth, truth = depth_batch()
    normals, unit = normals_batch()
    return [
        ("pixel_cross_entropy", logits, labels, (0, slice(None), 0, 2)),
        ("depth_l1", depth, truth, (0, 0, 0, 0)),
        ("berhu", depth, truth, (0, 0, 0, 0)),
        ("cosine", normals, unit, (0, slice(None), 1, 4)),
        ("normals_l1", normals, unit, (0, slice(None), 1, 4)),
    ]


LOSS_CASES = ["pixel_cross_entropy", "depth_l1", "berhu", "cosine", "normals_l1"]


@pytest.mark.parametrize("case", range(len(LOSS_CASES)), ids=LOSS_CASES)
def test_a_loss_ignores_predictions_at_unlabelled_pixels(case: int) -> None:
    name, outputs, labels, unlabelled = dense_loss_cases()[case]
    loss = LOSSES[name]
    changed = outputs.clone()
    changed[unlabelled] = 1e4
    assert torch.equal(loss(changed, labels), loss(outputs, labels)), name


@pytest.mark.parametrize("case", range(len(LOSS_CASES)), ids=LOSS_CASES)
def test_a_batch_without_labelled_pixels_gives_zero_loss_and_zero_gradient(case: int) -> None:
    name, outputs, labels, _ = dense_loss_cases()[case]
    empty = torch.full_like(labels, IGNORE_LABEL) if name == "pixel_cross_entropy" else labels * 0
    outputs = outputs.clone().requires_grad_(True)
    loss = LOSSES[name](outputs, empty)
    loss.backward()
    assert loss.item() == 0.0, name
    assert outputs.grad is not None and torch.equal(outputs.grad, torch.zeros_like(outputs))


def test_losses_match_their_formulas_over_labelled_pixels() -> None:
    logits, labels = segmentation_batch()
    keep = labels != IGNORE_LABEL
    flat_logits = logits.permute(0, 2, 3, 1)[keep]
    expected_ce = torch.nn.functional.cross_entropy(flat_logits, labels[keep])
    assert pixel_cross_entropy(logits, labels).item() == pytest.approx(expected_ce.item(), rel=1e-6)

    predicted, truth = depth_batch()
    p, t = predicted[truth > 0], truth[truth > 0]
    assert depth_l1(predicted, truth).item() == pytest.approx((p - t).abs().mean().item(), rel=1e-6)
    error = (p - t).abs()
    c = 0.2 * error.max()
    expected_berhu = torch.where(error <= c, error, (error**2 + c**2) / (2 * c)).mean()
    assert berhu(predicted, truth).item() == pytest.approx(expected_berhu.item(), rel=1e-6)

    normals, unit = normals_batch()
    angles = numpy_angles(normals, unit)
    expected_cosine = float(np.mean(1 - np.cos(np.radians(angles))))
    assert cosine(normals, unit).item() == pytest.approx(expected_cosine, rel=1e-5)


def test_normals_l1_is_the_mean_component_error_of_the_normalised_prediction() -> None:
    """By hand: (2, 0, 0) normalises to (1, 0, 0), 2 off (0, 1, 0) over 3 components; (0, 0, 5)
    is exact; the all-zero pixel is not counted: (2 + 0) / 6."""
    outputs = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 5.0], [9.0, 9.0, 9.0]]).T.reshape(
        1, 3, 1, 3
    )
    truth = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]).T.reshape(1, 3, 1, 3)
    assert normals_l1(outputs, truth).item() == pytest.approx(1 / 3, rel=1e-6)
    normals, unit = normals_batch()  # and against numpy on the shared batch
    p = normals.double().permute(0, 2, 3, 1).reshape(-1, 3).numpy()
    t = unit.double().permute(0, 2, 3, 1).reshape(-1, 3).numpy()
    keep = np.abs(t).sum(1) > 0
    p = p[keep] / np.linalg.norm(p[keep], axis=1, keepdims=True)
    expected = float(np.abs(p - t[keep]).mean())
    assert normals_l1(normals, unit).item() == pytest.approx(expected, rel=1e-5)


# -- directions and the best-epoch score -----------------------------------------------------

LOWER = {"abs_rel", "rmse", "abs_err", "mean_angle", "median_angle"}
HIGHER = {"miou", "pixel_accuracy", "delta1", "within_11_25", "within_22_5", "within_30"}


def test_every_dense_metric_has_its_papers_direction() -> None:
    dense = {m for kind in DENSE_KINDS for m in DEFAULT_METRICS[kind]}
    assert dense == LOWER | HIGHER and dense <= set(METRIC_NAMES)
    assert [m for m in sorted(dense) if not higher_is_better(m)] == sorted(LOWER)
    for metric in ("accuracy", "balanced_accuracy", "label_accuracy", "neg_mae", "neg_rmse"):
        assert higher_is_better(metric), metric


def target(name: str, output: str, primary: str | None = None, **kwargs) -> Target:
    spec = TaskSpec(
        name, "a test task", (3, 16, 16), output, lambda request: None,
        primary_metric=primary, **kwargs,
    )  # fmt: skip
    return Target(spec, None, None)  # type: ignore[arg-type]


def test_a_lower_is_better_primary_metric_scores_higher_when_lower() -> None:
    depth = [target("t.depth", "depth")]  # primary: abs_rel
    better = epoch_score(depth, {"t.depth": {"abs_rel": 0.1}}, {"t.depth": {"abs_rel": 0.3}})
    worse = epoch_score(depth, {"t.depth": {"abs_rel": 0.2}}, {"t.depth": {"abs_rel": 0.3}})
    assert better > worse
    assert better == pytest.approx(-0.1)
    miou = [target("t.seg", "segmentation", num_outputs=2)]
    assert epoch_score(miou, {"t.seg": {"miou": 0.7}}, {"t.seg": {"miou": 0.5}}) == 0.7


def test_a_dense_group_is_scored_by_mean_relative_improvement() -> None:
    group = [target("t.seg", "segmentation", num_outputs=2), target("t.normals", "normals")]
    reference = {"t.seg": {"miou": 0.5}, "t.normals": {"mean_angle": 30.0}}
    # mIoU +20 %, mean angle 10 % worse (33° vs 30°): (0.2 − 0.1) / 2.
    first = {"t.seg": {"miou": 0.6}, "t.normals": {"mean_angle": 33.0}}
    assert epoch_score(group, first, reference) == pytest.approx(0.05)
    # Degrees dwarf mIoU: a mean of signed raw values would prefer 1° less angle error
    # (second) over mIoU 0.5 → 0.8 at 1° more (third); relative improvement prefers third.
    second = {"t.seg": {"miou": 0.3}, "t.normals": {"mean_angle": 29.0}}
    third = {"t.seg": {"miou": 0.8}, "t.normals": {"mean_angle": 31.0}}
    assert (0.3 - 29.0) / 2 > (0.8 - 31.0) / 2
    assert epoch_score(group, third, reference) == pytest.approx((0.6 - 1 / 30) / 2)
    assert epoch_score(group, third, reference) > epoch_score(group, second, reference)


def test_a_nan_metric_never_wins_the_best_epoch() -> None:
    group = [target("t.seg", "segmentation", num_outputs=2), target("t.depth", "depth")]
    reference = {"t.seg": {"miou": 0.5}, "t.depth": {"abs_rel": 0.3}}
    nan = {"t.seg": {"miou": math.nan}, "t.depth": {"abs_rel": 0.01}}
    assert epoch_score(group, nan, reference) == -math.inf
    assert epoch_score([group[1]], {"t.depth": {"abs_rel": math.nan}}, reference) == -math.inf


# -- labels at the store's size --------------------------------------------------------------


def doubled(labels: torch.Tensor) -> torch.Tensor:
    return labels.repeat_interleave(2, -1).repeat_interleave(2, -2)


def test_labels_are_resized_by_nearest_neighbour_to_the_stores_size() -> None:
    """A task served at twice the store's size: ids stay ids (-1 included), depth 0 stays
    0, normals stay unit or all-zero; nothing is averaged across a boundary."""
    _, labels = segmentation_batch()
    _, depth = depth_batch()
    _, normals = normals_batch()
    size = tuple(labels.shape[-2:])
    spec = {kind: target("t.x", kind, num_outputs=2 if kind == "segmentation" else None).spec
            for kind in DENSE_KINDS}  # fmt: skip
    assert torch.equal(dense_targets(spec["segmentation"], doubled(labels), size), labels)
    assert torch.equal(dense_targets(spec["depth"], doubled(depth), size), depth)
    resized = dense_targets(spec["normals"], doubled(normals), size)
    assert torch.allclose(resized, normals, atol=1e-6)
    lengths = resized.norm(dim=1)
    assert torch.all((lengths == 0) | ((lengths - 1).abs() < 1e-6))
