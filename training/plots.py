"""Evaluation plots as PNG (matplotlib, Agg backend): ROC curve, confusion matrix,
training curves, per-patient positive-slice fraction against the slice threshold."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _roc_axes(ax, title: str, fontsize: float | None = None) -> None:
    """Chance diagonal, rate labels, limits, title and legend of a ROC plot."""
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1)
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_title(title, fontsize=fontsize)
    ax.legend(loc="lower right", fontsize=fontsize and fontsize - 3)


def _save(plt, fig, path: str | Path) -> Path:
    """Lay out, write the PNG and close the figure."""
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def plot_roc(fpr: np.ndarray, tpr: np.ndarray, auc: float, path: str | Path, title: str = "ROC (per slice)") -> Path:
    """ROC curve with the chance diagonal; ``auc`` in the legend."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    ax.plot(fpr, tpr, lw=2, label=f"AUC = {auc:.3f}")
    _roc_axes(ax, title)
    return _save(plt, fig, path)


def plot_confusion(counts: dict[str, int], path: str | Path, title: str = "confusion matrix",
                   labels: Sequence[str] = ("negative", "COVID-19")) -> Path:
    """2x2 confusion matrix (rows: truth, columns: prediction) from tp/fp/tn/fn."""
    plt = _pyplot()
    matrix = np.array([[counts["tn"], counts["fp"]], [counts["fn"], counts["tp"]]])
    fig, ax = plt.subplots(figsize=(4, 3.6), dpi=100)
    ax.imshow(matrix, cmap="Blues")
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, str(v), ha="center", va="center",
                color="white" if v > matrix.max() / 2 else "black", fontsize=12)
    ax.set_xticks([0, 1], labels)
    ax.set_yticks([0, 1], labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return _save(plt, fig, path)


def plot_training_curves(history: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Loss (train/validation) and the validation metric per epoch."""
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3.4), dpi=100)
    ax1.plot(epochs, [h["loss"] for h in history], marker="o", label="train")
    if any("val_loss" in h for h in history):
        ax1.plot(epochs, [h.get("val_loss", np.nan) for h in history], marker="o", label="validation")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.legend()
    for key, name in (("val_auc", "validation ROC AUC"), ("val_dice", "validation Dice")):
        if any(key in h for h in history):
            ax2.plot(epochs, [h.get(key, np.nan) for h in history], marker="o", color="C2")
            ax2.set_ylabel(name)
    ax2.set_xlabel("epoch")
    ax2.set_ylim(0, 1.02)
    return _save(plt, fig, path)


def plot_patient_fractions(
    patients: Sequence[tuple[str, int, np.ndarray]],
    vote_threshold: float,
    slice_threshold: float,
    path: str | Path,
    title: str = "patients: fraction of selected slices at or above a probability",
) -> Path:
    """One curve per patient: fraction of its selected slices with probability >= t
    against t in [0, 1] (``patients``: (id, label 0/1, probabilities ``[K]``)); the vote
    threshold (horizontal, grey) and the slice threshold (vertical, dotted). Positive
    patients are drawn solid, negative ones dashed."""
    plt = _pyplot()
    t = np.linspace(0.0, 1.0, 201)
    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=100)
    for i, (pid, label, probs) in enumerate(patients):
        p = np.asarray(probs, dtype=np.float64).ravel()
        frac = (p[None, :] >= t[:, None]).mean(axis=1) if p.size else np.zeros_like(t)
        ax.plot(t, frac, lw=2, color=f"C{i % 10}", ls="-" if label == 1 else "--",
                label=f"{pid} ({'positive' if label == 1 else 'negative'})")
    ax.axhline(vote_threshold, ls="--", color="grey", lw=1, label=f"vote threshold {vote_threshold:.2f}")
    ax.axvline(slice_threshold, ls=":", color="black", lw=1, label=f"slice threshold {slice_threshold:.2f}")
    ax.set_xlabel("slice probability threshold")
    ax.set_ylabel("fraction of selected slices")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper right", fontsize=7)
    return _save(plt, fig, path)


def plot_roc_sets(sets: Sequence[tuple[str, np.ndarray, np.ndarray]], path: str | Path,
                  title: str = "ROC per slice, each set held out") -> Path:
    """One ROC curve per ``(name, labels, probabilities)`` (scikit-learn's ``roc_curve``)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4.6), dpi=100)
    for name, y, p in sets:
        if len(np.unique(y)) < 2:
            continue
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, lw=2, label=f"{name}: AUC {roc_auc_score(y, p):.3f} (n={len(y)})")
    _roc_axes(ax, title, fontsize=10)
    return _save(plt, fig, path)


def plot_reliability(labels: np.ndarray, probs: np.ndarray, path: str | Path, bins: int = 10,
                     title: str = "reliability (calibration) per slice") -> dict[str, Any]:
    """Reliability diagram (scikit-learn's ``calibration_curve``, uniform bins); returns the
    curve and the expected calibration error (bin-weighted |observed - predicted|)."""
    from sklearn.calibration import calibration_curve

    y = np.asarray(labels).astype(int).ravel()
    p = np.asarray(probs, dtype=np.float64).ravel()
    observed, predicted = calibration_curve(y, p, n_bins=bins, strategy="uniform")
    counts = np.histogram(p, bins=np.linspace(0, 1, bins + 1))[0]
    weights = counts[counts > 0] / max(len(p), 1)
    ece = float(np.sum(weights[: len(observed)] * np.abs(observed - predicted)))
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfect calibration")
    ax.plot(predicted, observed, marker="o", lw=2, label=f"model (ECE {ece:.3f})")
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("fraction of COVID-19 slices")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    _save(plt, fig, path)
    return {"predicted": predicted.tolist(), "observed": observed.tolist(), "expected_calibration_error": ece,
            "bins": bins}
