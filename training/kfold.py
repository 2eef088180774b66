"""Patient-level cross-validation: a TrainConfig -> one checkpoint per fold -> pooled figures
(``crossval.json`` or ``report.json`` + plots) and, for :func:`run_kfold`, a final checkpoint.

- :func:`run_crossval`: patient-level k-fold cross-validation, one run per fold in
  ``out_dir/fold<i>``, mean and standard deviation in ``out_dir/crossval.json``.
- :func:`run_kfold` (``python -m covidct.training kfold``): patient-level k-fold or
  leave-one-patient-out of a classifier with pooled out-of-fold figures
  (``out_dir/report.json`` + plots), then the final model trained on every patient in
  ``out_dir/final`` whose model card carries those figures.

Each fold is one run of :func:`covidct.training.run.train_on_prepared` (checkpoint, model
card, validation report). Durations are seconds.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from covidct.errors import ConfigError, DatasetError
from covidct.preprocessing.config import PipelineConfig
from covidct.training.config import TrainConfig
from covidct.training.datasets import PreparedPatient
from covidct.training.evaluate import REPORT_FILENAME, finite_json, pick_vote_threshold, vote_config_with
from covidct.training.patients import UNLABELLED
from covidct.training.run import cases_for, check_label_rule, model_for, pipeline_for, prepare_for, train_on_prepared


def _summary(values: list[float]) -> dict[str, float]:
    arr = np.array([v for v in values if v is not None and v == v], dtype=float)
    return {"mean": float(arr.mean()) if arr.size else float("nan"),
            "std": float(arr.std()) if arr.size else float("nan")}


def run_crossval(cfg: TrainConfig, out_dir: str | Path, *, progress: bool = True) -> dict[str, Any]:
    """Patient-level k-fold cross-validation (``cfg.folds`` >= 2)."""
    if cfg.folds < 2:
        raise ConfigError(f"cross-validation needs folds >= 2; got {cfg.folds}")
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    out = Path(out_dir)
    model = model_for(cfg)
    pipeline = pipeline_for(cfg, model.model_config)
    check_label_rule(cfg.data, model.model_config)
    prepared, _ = prepare_for(cfg.data, cases_for(cfg.data), pipeline, model.model_config.task,
                              slices=cfg.train_slices, out_dir=out, progress=progress)
    folds = []
    for f in range(cfg.folds):
        fcfg = dataclasses.replace(cfg, fold=f)
        folds.append(train_on_prepared(fcfg, prepared, pipeline, out / f"fold{f}", progress=progress))
    summary: dict[str, Any] = {"folds": cfg.folds, "task": model.model_config.task}
    if model.model_config.task == "classification":
        for key in ("roc_auc", "accuracy", "precision", "recall", "f1", "sensitivity", "specificity"):
            summary[f"slice_{key}"] = _summary([r.report["slice"][key] for r in folds])
        for vote in ("pipeline", "released_code"):
            summary[f"patients_correct_{vote}"] = _summary([r.report["patient"][vote]["correct"] for r in folds])
            summary[f"patient_accuracy_{vote}"] = _summary([r.report["patient"][vote]["accuracy"] for r in folds])
    else:
        for key in ("dice", "pixel_precision", "pixel_recall"):
            summary[key] = _summary([r.report["all_slices"][key] for r in folds])
    (out / "crossval.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def _fold_scores(model: torch.nn.Module, patients: Sequence[PreparedPatient], pipeline: PipelineConfig,
                 device: str) -> list[dict[str, Any]]:
    """Per held-out patient: labelled slice labels/probabilities, selected-slice
    probabilities and the pipeline's vote."""
    from covidct.preprocessing.patient_vote import patient_vote
    from covidct.training.evaluate import selected_probabilities
    from covidct.training.predict import predict_probabilities

    rows = []
    for p in patients:
        probs = predict_probabilities(model, p.inputs, device=device)
        selected = selected_probabilities(p, probs)
        labelled = p.slice_labels != UNLABELLED
        vote = patient_vote(selected, pipeline.vote) if len(selected) else None
        rows.append({
            "patient_id": p.patient_id, "label": int(p.label),
            "slice_labels": p.slice_labels[labelled].astype(np.int64), "slice_probs": probs[labelled],
            "selected_probs": selected,
            "positive_fraction": float(vote.positive_fraction) if vote else 0.0,
            "verdict": int(vote.positive) if vote else 0,
        })
    return rows


def run_kfold(
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    folds: int | None = None,
    leave_one_out: bool = False,
    apply_vote_threshold: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Patient-level k-fold (``folds``) or leave-one-patient-out of a classifier.

    Each fold's network (``out_dir/fold<i>``) scores its held-out patients; the pooled
    out-of-fold figures (per-slice ROC AUC over the labelled slices, each patient's
    positive-slice fraction and verdict at the pipeline's vote threshold, a vote
    threshold picked on those fractions, seconds taken) go to ``out_dir/report.json``,
    ``roc_curve.png`` and ``patient_fractions.png``. Then the final network is trained
    on every patient into ``out_dir/final``; its model card carries the figures and its
    pipeline the picked vote threshold only when ``apply_vote_threshold``. A fold whose
    training slices hold one class only is trained anyway and listed in ``warnings``.
    """
    import time

    from covidct.training.metrics import classification_metrics, roc_curve
    from covidct.training.plots import plot_patient_fractions, plot_roc

    t_start = time.perf_counter()
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base_model = model_for(cfg)
    if base_model.model_config.task != "classification":
        raise ConfigError(f"kfold evaluates classifiers; {cfg.model!r} is a {base_model.model_config.task} "
                          f"network (use `evaluate --folds K` for segmenters)")
    check_label_rule(cfg.data, base_model.model_config)
    pipeline = pipeline_for(cfg, base_model.model_config)
    cases = cases_for(cfg.data)
    diagnoses = {c.patient_id: c.diagnosis for c in cases}
    prepared, _ = prepare_for(cfg.data, cases, pipeline, "classification", slices=cfg.train_slices, out_dir=out,
                              progress=progress)
    groups = sorted({p.group_id for p in prepared})
    k = len(groups) if leave_one_out else int(folds or cfg.folds)
    if k < 2:
        raise ConfigError(f"kfold needs --folds K >= 2 or --leave-one-patient-out; got folds={k}")
    method = "leave-one-patient-out" if leave_one_out else f"{k}-fold"
    fold_rows, scores, warnings = [], [], []
    for f in range(k):
        fcfg = dataclasses.replace(cfg, folds=k, fold=f)
        model = model_for(fcfg)
        result = train_on_prepared(fcfg, prepared, pipeline, out / f"fold{f}", model=model, progress=progress,
                                   diagnoses=diagnoses)
        val = [p for p in prepared if p.group_id in set(result.fold.validation)]
        train_classes = sorted({int(v) for p in prepared if p.group_id in set(result.fold.train)
                                for v in p.slice_labels if v != UNLABELLED})
        if len(train_classes) < 2:
            warnings.append(f"fold {f} (held out: {', '.join(result.fold.validation)}): its training patients "
                            f"({', '.join(result.fold.train)}) have slices of class {train_classes} only; the "
                            f"network never saw the other class")
        fold_scores = _fold_scores(model, val, pipeline, cfg.device)
        scores += fold_scores
        fold_rows.append({"fold": f, "train": list(result.fold.train), "validation": list(result.fold.validation),
                          "training_slice_classes": train_classes,
                          "patients": [{k2: r[k2] for k2 in ("patient_id", "positive_fraction", "verdict")}
                                       for r in fold_scores]})
    labels = np.concatenate([r["slice_labels"] for r in scores])
    probs = np.concatenate([r["slice_probs"] for r in scores])
    slice_metrics = classification_metrics(labels, probs, threshold=pipeline.vote.slice_threshold)
    fpr, tpr, _ = roc_curve(labels, probs)
    verdicts = [{"patient_id": r["patient_id"], "label": r["label"], "diagnosis": diagnoses.get(r["patient_id"], ""),
                 "positive_fraction": r["positive_fraction"], "verdict": r["verdict"],
                 "correct": r["verdict"] == r["label"]} for r in scores]
    fractions = np.array([r["positive_fraction"] for r in scores])
    patient_labels = np.array([r["label"] for r in scores])
    pick: dict[str, Any] | None = None
    try:
        pick = pick_vote_threshold(fractions, patient_labels)
    except DatasetError as exc:  # patients of one class only
        warnings.append(f"no vote threshold picked: {exc}")
    applied = bool(apply_vote_threshold and pick is not None and pick["better_than_chance"])
    if apply_vote_threshold and not applied:
        warnings.append("the picked vote threshold does not separate the patients better than chance; not applied")
    seconds_folds = time.perf_counter() - t_start
    evaluation = {
        "method": method, "folds": k, "patients": len(scores), "slices": int(labels.size),
        "slice_roc_auc": slice_metrics["roc_auc"], "slice_threshold": pipeline.vote.slice_threshold,
        "vote_threshold": pipeline.vote.positive_fraction, "patient_verdicts": verdicts,
        "patients_correct": int(sum(v["correct"] for v in verdicts)),
        "vote_threshold_pick": None if pick is None else {**pick, "applied": applied},
        "seconds": round(seconds_folds, 1), "warnings": warnings,
    }
    final_pipeline = pipeline
    if applied:
        final_pipeline = dataclasses.replace(pipeline, vote=vote_config_with(pipeline, pick["value"]))
    final_cfg = dataclasses.replace(cfg, folds=0, fold=0, validation_fraction=0.0)
    final = train_on_prepared(final_cfg, prepared, final_pipeline, out / "final", progress=progress,
                              diagnoses=diagnoses, evaluation=evaluation)
    report = {
        "task": "classification", **evaluation, "slice": slice_metrics,
        "roc_curve": {"fpr": fpr.tolist(), "tpr": tpr.tolist()}, "fold_details": fold_rows,
        "final_checkpoint": str(final.checkpoint), "seconds_total": round(time.perf_counter() - t_start, 1),
    }
    auc = slice_metrics["roc_auc"]
    plot_roc(fpr, tpr, auc, out / "roc_curve.png", title=f"ROC (per slice, {method}, out of fold)")
    plot_patient_fractions([(r["patient_id"], r["label"], r["selected_probs"]) for r in scores],
                           pipeline.vote.positive_fraction, pipeline.vote.slice_threshold,
                           out / "patient_fractions.png")
    (out / REPORT_FILENAME).write_text(json.dumps(finite_json(report), indent=2) + "\n", encoding="utf-8")
    return report
