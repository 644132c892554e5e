"""The spec's quality metrics, one implementation for the promotion gate (training) and the monitor (realised
metric once labels have arrived)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, log_loss, mean_absolute_error, roc_auc_score, root_mean_squared_error


def metric_value(metric: str, y_true: np.ndarray, scores: np.ndarray) -> float:
    """`metric` of `scores` (class-1 probabilities for classifiers, values for regressors) against `y_true`."""
    if metric == "roc_auc":
        return float(roc_auc_score(y_true, scores))
    if metric == "log_loss":
        return float(log_loss(y_true, np.clip(scores, 1e-7, 1 - 1e-7), labels=[0, 1]))
    if metric == "accuracy":
        return float(accuracy_score(y_true, scores > 0.5))
    if metric == "rmse":
        return float(root_mean_squared_error(y_true, scores))
    if metric == "mae":
        return float(mean_absolute_error(y_true, scores))
    raise ValueError(f"unknown metric {metric!r}")


def defined(metric: str, y_true: np.ndarray) -> bool:
    """Whether the metric can be computed on these labels (ROC AUC needs both classes; any metric needs rows)."""
    if len(y_true) == 0:
        return False
    return metric != "roc_auc" or len(np.unique(y_true)) == 2
