"""Evaluation metrics in numpy; ROC AUC and the ROC curve from scikit-learn.

Binary classification: labels {0, 1} ``[N]``, scores (probabilities) ``[N]``.
Segmentation: predicted and true masks as bool arrays of equal shape (pixels pooled
over all slices).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def confusion_counts(labels: np.ndarray, predicted: np.ndarray) -> dict[str, int]:
    """``tp, fp, tn, fn`` of binary ``predicted`` against binary ``labels``."""
    y = np.asarray(labels).astype(bool).ravel()
    p = np.asarray(predicted).astype(bool).ravel()
    return {
        "tp": int(np.sum(y & p)),
        "fp": int(np.sum(~y & p)),
        "tn": int(np.sum(~y & ~p)),
        "fn": int(np.sum(y & ~p)),
    }


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else float("nan")


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (scikit-learn's ``roc_auc_score``; ties count 1/2).

    NaN when only one class is present.
    """
    from sklearn.metrics import roc_auc_score

    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.all() or not y.any():
        return float("nan")
    return float(roc_auc_score(y, s))


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)`` over the distinct scores, descending; starts at (0, 0)
    (scikit-learn's ``roc_curve`` without dropping intermediate points). With one class only,
    the rates of the missing class are 0."""
    from sklearn.metrics import roc_curve as sk_roc_curve

    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.size == 0:
        return np.zeros(1), np.zeros(1), np.array([np.inf])
    if y.all() or not y.any():
        order = np.unique(s)[::-1]
        hits = np.array([(s >= t).sum() / y.size for t in order])
        zeros = np.zeros_like(hits)
        fpr, tpr = (zeros, hits) if y.all() else (hits, zeros)
        return np.r_[0.0, fpr], np.r_[0.0, tpr], np.r_[np.inf, order]
    return sk_roc_curve(y, s, drop_intermediate=False)


def classification_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> dict[str, Any]:
    """Per-slice precision, recall, F1, accuracy, sensitivity, specificity, ROC AUC.

    A slice is predicted positive when its score is at or above ``threshold``.
    """
    y = np.asarray(labels).astype(int).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    c = confusion_counts(y, s >= threshold)
    tp, fp, tn, fn = c["tp"], c["fp"], c["tn"], c["fn"]
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    return {
        "n": int(y.size),
        "positives": int(y.sum()),
        "threshold": float(threshold),
        **c,
        "precision": precision,
        "recall": recall,
        "sensitivity": recall,
        "specificity": _ratio(tn, tn + fp),
        "f1": f1,
        "accuracy": _ratio(tp + tn, y.size),
        "roc_auc": roc_auc(y, s),
    }


def segmentation_metrics(predicted: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """Pooled Dice, pixel precision/recall/F1, and the Dice of an all-background
    prediction (0 when the truth has foreground, 1 when both are empty)."""
    p = np.asarray(predicted).astype(bool)
    g = np.asarray(truth).astype(bool)
    c = confusion_counts(g, p)
    tp, fp, fn = c["tp"], c["fp"], c["fn"]
    dice = 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)
    return {
        "pixels": int(g.size),
        "foreground_pixels": int(g.sum()),
        **c,
        "dice": float(dice),
        "pixel_precision": _ratio(tp, tp + fp),
        "pixel_recall": _ratio(tp, tp + fn),
        "pixel_f1": float(dice),
        "dice_all_background": 1.0 if g.sum() == 0 else 0.0,
    }
