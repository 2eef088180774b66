"""Evaluation of a trained network on prepared patients.

Classifiers: per-slice metrics on the labelled prepared slices (precision, recall, F1,
accuracy, sensitivity, specificity, ROC AUC) and patient-level results through the
serving path: the slices chosen by ``select_open_lung_slices`` on the whole volume are
classified and :func:`covidct.preprocessing.patient_vote.patient_vote` decides (reported for the
pipeline's vote fraction and for the authors' released 0.10).
Segmenters: pooled Dice and pixel precision/recall at 0.5, against an all-background
prediction.

:func:`pick_vote_threshold` chooses the patient vote threshold (``VoteConfig.
positive_fraction``) on the patients' positive-slice fractions: the midpoint between
the largest negative and the smallest positive fraction when they separate, else the
threshold with the largest Youden index J = sensitivity + specificity - 1 (ties: the
lowest threshold, sensitivity first for triage).

:func:`write_report` writes ``report.json`` plus PNG plots (ROC, confusion matrices,
training curves when a history is given).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from torch import nn

from covidct.errors import DatasetError
from covidct.preprocessing.config import PipelineConfig, VoteConfig
from covidct.preprocessing.patient_vote import patient_vote
from covidct.training.datasets import PreparedPatient
from covidct.training.metrics import classification_metrics, confusion_counts, roc_curve, segmentation_metrics
from covidct.training.patients import UNLABELLED
from covidct.training.predict import predict_probabilities

REPORT_FILENAME = "report.json"
RELEASED_CODE_VOTE_FRACTION = 0.10


def selected_probabilities(p: PreparedPatient, probs: np.ndarray) -> np.ndarray:
    """Probabilities of the patient's selected slices, from those of its prepared slices."""
    position = {int(v): i for i, v in enumerate(p.indices)}
    missing = [int(s) for s in p.selected if int(s) not in position]
    if missing:
        raise DatasetError(
            f"patient {p.patient_id}: selected slices {missing[:5]} were not prepared; "
            f"prepare with slices='selected' or 'all'"
        )
    return probs[[position[int(s)] for s in p.selected]]


def evaluate_classifier(
    model: nn.Module,
    patients: Sequence[PreparedPatient],
    pipeline: PipelineConfig,
    *,
    batch_size: int = 32,
    device: str = "cpu",
) -> dict[str, Any]:
    """Slice-level and patient-level (selection + vote) results; see the module docstring."""
    per_patient = []
    all_labels, all_probs = [], []
    votes = {
        "pipeline": pipeline.vote,
        "released_code": dataclasses.replace(pipeline.vote, positive_fraction=RELEASED_CODE_VOTE_FRACTION),
    }
    decisions: dict[str, list[tuple[int, int]]] = {k: [] for k in votes}
    for p in patients:
        probs = predict_probabilities(model, p.inputs, batch_size=batch_size, device=device)
        labelled = p.slice_labels != UNLABELLED
        all_labels.append(p.slice_labels[labelled])
        all_probs.append(probs[labelled])
        sel_probs = selected_probabilities(p, probs)
        entry: dict[str, Any] = {
            "patient_id": p.patient_id,
            "label": p.label,
            "num_slices": p.num_slices,
            "num_selected": int(len(p.selected)),
        }
        for name, vote_cfg in votes.items():
            if len(sel_probs) == 0:
                positive, fraction = False, 0.0
            else:
                result = patient_vote(sel_probs, vote_cfg)
                positive, fraction = bool(result.positive), float(result.positive_fraction)
            entry[f"vote_{name}"] = {"positive": positive, "positive_fraction": fraction,
                                     "threshold": vote_cfg.positive_fraction}
            decisions[name].append((p.label, int(positive)))
        per_patient.append(entry)
    labels = np.concatenate(all_labels) if all_labels else np.zeros(0)
    probs = np.concatenate(all_probs) if all_probs else np.zeros(0)
    slice_metrics = classification_metrics(labels, probs, threshold=pipeline.vote.slice_threshold)
    fpr, tpr, _ = roc_curve(labels, probs)
    patient_metrics = {}
    for name, pairs in decisions.items():
        y = np.array([a for a, _ in pairs])
        pred = np.array([b for _, b in pairs])
        counts = confusion_counts(y, pred)
        patient_metrics[name] = {
            "vote_fraction": votes[name].positive_fraction,
            **counts,
            "correct": int(counts["tp"] + counts["tn"]),
            "patients": int(len(pairs)),
            "accuracy": float(np.mean(y == pred)) if len(pairs) else math.nan,
        }
    return {
        "task": "classification",
        "slice": slice_metrics,
        "slice_scores": {"labels": labels.astype(int).tolist(), "probs": probs.astype(float).tolist()},
        "patient": patient_metrics,
        "patients": per_patient,
        "roc_curve": {"fpr": fpr.tolist(), "tpr": tpr.tolist()},
    }


def evaluate_segmenter(
    model: nn.Module,
    patients: Sequence[PreparedPatient],
    *,
    batch_size: int = 16,
    device: str = "cpu",
    threshold: float = 0.5,
) -> dict[str, Any]:
    """Pooled Dice (top-level key ``dice``) / pixel precision / recall at probability
    ``threshold`` (the served ``vote.infection_threshold``), over all prepared slices and over
    the slices whose truth has foreground; ``median_image_dice`` over the slices with
    foreground in the truth or the prediction."""
    preds, truths = [], []
    per_patient = []
    for p in patients:
        if p.masks is None:
            raise DatasetError(f"patient {p.patient_id}: no target masks to evaluate a segmenter against")
        prob = predict_probabilities(model, p.inputs, batch_size=batch_size, device=device)
        pred, truth = prob >= threshold, p.masks >= 0.5
        preds.append(pred)
        truths.append(truth)
        per_patient.append({"patient_id": p.patient_id, **segmentation_metrics(pred, truth)})
    pred = np.concatenate(preds)
    truth = np.concatenate(truths)
    positive = truth.reshape(len(truth), -1).any(axis=1)
    per_image = [2.0 * float(np.logical_and(a, b).sum()) / float(a.sum() + b.sum())
                 for a, b in zip(pred, truth) if a.any() or b.any()]
    pooled = segmentation_metrics(pred, truth)
    return {
        "task": "segmentation",
        "threshold": float(threshold),
        "dice": pooled["dice"],
        "median_image_dice": float(np.median(per_image)) if per_image else math.nan,
        "all_slices": pooled,
        "foreground_slices": segmentation_metrics(pred[positive], truth[positive]),
        "patients": per_patient,
    }


def evaluate(model: nn.Module, patients: Sequence[PreparedPatient], pipeline: PipelineConfig,
             *, batch_size: int = 32, device: str = "cpu") -> dict[str, Any]:
    """:func:`evaluate_classifier` or :func:`evaluate_segmenter` by the model's task."""
    if model.model_config.task == "classification":
        return evaluate_classifier(model, patients, pipeline, batch_size=batch_size, device=device)
    return evaluate_segmenter(model, patients, batch_size=batch_size, device=device,
                              threshold=pipeline.vote.infection_threshold)


def finite_json(value: Any) -> Any:
    """``value`` with NaN/inf floats as None and numpy scalars as Python (for JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    if isinstance(value, np.generic):
        return finite_json(value.item())
    return value


def write_report(report: dict[str, Any], out_dir: str | Path,
                 history: Sequence[dict[str, Any]] | None = None, prefix: str = "") -> Path:
    """``<prefix>report.json`` (NaN -> null) plus PNG plots in ``out_dir``."""
    from covidct.training import plots

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if report.get("task") == "classification":
        roc = report["roc_curve"]
        auc = report["slice"]["roc_auc"]
        plots.plot_roc(np.array(roc["fpr"]), np.array(roc["tpr"]), auc if auc == auc else float("nan"),
                       out / f"{prefix}roc_curve.png")
        threshold = report["slice"].get("threshold", 0.5)
        plots.plot_confusion(report["slice"], out / f"{prefix}confusion_slices.png",
                             f"slices (threshold {threshold:.2f})")
        if "slice_scores" in report:
            scores = report.pop("slice_scores")
            if len(set(scores["labels"])) == 2:
                report["reliability"] = plots.plot_reliability(np.array(scores["labels"]), np.array(scores["probs"]),
                                                               out / f"{prefix}reliability.png")
        if "patient" in report:
            vote = report["patient"]["pipeline"]
            plots.plot_confusion(vote, out / f"{prefix}confusion_patients.png",
                                 f"patients (vote >= {vote['vote_fraction']:.0%})")
    if history:
        plots.plot_training_curves(history, out / f"{prefix}training_curves.png")
    path = out / f"{prefix}{REPORT_FILENAME}"
    path.write_text(json.dumps(finite_json(report), indent=2) + "\n", encoding="utf-8")
    return path


def vote_config_with(pipeline: PipelineConfig, fraction: float | None) -> VoteConfig:
    """The pipeline's vote config, with ``positive_fraction`` replaced when given."""
    return pipeline.vote if fraction is None else dataclasses.replace(pipeline.vote, positive_fraction=fraction)


def patient_fractions(report: dict[str, Any], vote: str = "pipeline") -> tuple[np.ndarray, np.ndarray]:
    """(positive-slice fractions float64 ``[P]``, patient labels int ``[P]``) of a
    classifier report's ``patients``."""
    rows = report.get("patients") or []
    fractions = np.array([r[f"vote_{vote}"]["positive_fraction"] for r in rows], dtype=np.float64)
    return fractions, np.array([int(r["label"]) for r in rows], dtype=np.int64)


def pick_vote_threshold(fractions: Sequence[float], labels: Sequence[int]) -> dict[str, Any]:
    """Vote threshold (fraction of selected slices, 0..1) picked on patients.

    ``fractions``: each patient's fraction of selected slices with probability >=
    ``slice_threshold``; ``labels``: 1 COVID-19, 0 not. Returns ``value``, ``method``
    (``midpoint`` or ``youden``), ``separable``, ``better_than_chance`` (Youden J > 0;
    a pick that is not should not be applied), ``max_negative_fraction``,
    ``min_positive_fraction``, ``youden_j``, ``positives``, ``negatives`` and ``rule``
    (a sentence). Raises DatasetError without both positive and negative patients or for
    labels other than 0/1.
    """
    f = np.asarray(fractions, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel()
    if f.shape != y.shape or not np.isin(y, (0, 1)).all():
        raise DatasetError(
            f"picking a vote threshold needs one 0/1 label per patient fraction; got {f.size} fractions "
            f"and labels {sorted(set(y.tolist()))}"
        )
    pos, neg = f[y == 1], f[y == 0]
    if pos.size == 0 or neg.size == 0:
        raise DatasetError(
            f"picking a vote threshold needs positive and negative patients; got {pos.size} positive "
            f"and {neg.size} negative"
        )
    separable = bool(neg.max() < pos.min())
    if separable:
        value, method = float((neg.max() + pos.min()) / 2.0), "midpoint"
    else:
        best = None
        for t in np.unique(f):
            j = float(np.mean(pos >= t) - np.mean(neg >= t))
            if best is None or j > best[1] + 1e-12:
                best = (float(t), j)
        value, method = best[0], "youden"
    j = float(np.mean(pos >= value) - np.mean(neg >= value))
    rule = (
        "midpoint between the largest negative and the smallest positive patient fraction"
        if separable else
        "patient fraction with the largest Youden index (sensitivity + specificity - 1), lowest on ties"
    )
    return {
        "value": value, "method": method, "rule": rule, "separable": separable, "better_than_chance": j > 0,
        "max_negative_fraction": float(neg.max()), "min_positive_fraction": float(pos.min()),
        "youden_j": j, "positives": int(pos.size), "negatives": int(neg.size),
    }
