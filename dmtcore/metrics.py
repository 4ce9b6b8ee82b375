"""Losses and metrics by name, so a store records them as strings and needs no plugin code.

Every metric is "higher is better" (regression errors are reported negated), which lets the
trainer keep the best epoch by the primary metric without knowing what it measures.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from dmtcore.names import unknown_name
from dmtcore.taskspec import LOSS_NAMES, METRIC_NAMES

LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "cross_entropy": F.cross_entropy,
    "bce_with_logits": F.binary_cross_entropy_with_logits,
    "mse": F.mse_loss,
    "l1": F.l1_loss,
}


def loss_function(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if name not in LOSSES:
        raise unknown_name("loss", name, LOSSES)
    return LOSSES[name]


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(1) == labels).float().mean().item()


def balanced_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean of per-class recalls over the classes present (the DMT paper's imbalance metric)."""
    predictions = logits.argmax(1)
    recalls = [(predictions[labels == c] == c).float().mean() for c in labels.unique()]
    return torch.stack(recalls).mean().item()


def label_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return ((logits > 0).float() == labels).float().mean().item()


def neg_mae(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    return -(outputs - targets).abs().mean().item()


def neg_rmse(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    return -((outputs - targets) ** 2).mean().sqrt().item()


METRICS: dict[str, Callable[[torch.Tensor, torch.Tensor], float]] = {
    "accuracy": accuracy,
    "balanced_accuracy": balanced_accuracy,
    "label_accuracy": label_accuracy,
    "neg_mae": neg_mae,
    "neg_rmse": neg_rmse,
}


def compute_metrics(
    names: list[str], outputs: torch.Tensor, labels: torch.Tensor
) -> dict[str, float]:
    for name in names:
        if name not in METRICS:
            raise unknown_name("metric", name, METRICS)
    return {name: METRICS[name](outputs, labels) for name in names}


def probabilities(output_kind: str, logits: torch.Tensor) -> torch.Tensor:
    """What `predict` reports: softmax for one-of-N outputs, sigmoid for multilabel, raw values
    for regression."""
    if output_kind in ("binary", "multiclass"):
        return logits.softmax(1)
    if output_kind == "multilabel":
        return logits.sigmoid()
    return logits


assert set(LOSSES) == set(LOSS_NAMES) and set(METRICS) == set(METRIC_NAMES)
