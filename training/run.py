"""Whole runs: data -> split -> train -> checkpoint -> report (what the CLI calls).

- :func:`run_training`: one training run (patient-level hold-out or one fold), the
  checkpoint folder being ``out_dir`` itself (weights, model/pipeline/training configs,
  history, report and plots of the validation patients).
- :func:`run_crossval`: patient-level k-fold cross-validation, one run per fold in
  ``out_dir/fold<i>``, mean and standard deviation in ``out_dir/crossval.json``.
- :func:`run_kfold` (``python -m training kfold``): patient-level k-fold or
  leave-one-patient-out of a classifier with pooled out-of-fold figures
  (``out_dir/report.json`` + plots), then the final model trained on every patient in
  ``out_dir/final`` whose model card carries those figures.
- :func:`evaluate_checkpoint`: a saved checkpoint on a data set (optionally picking the
  vote threshold on its patients).

Every checkpoint written here carries a model card (:mod:`training.model_card`): the
training data (kind, label rule, patients and slices per class), the training config
and, where the run evaluated patients, the figures.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from covidct.errors import ConfigError, DatasetError
from preprocessing.config import ModelInputConfig, PipelineConfig
from training.checkpoint import WEIGHTS_FILENAME, load_checkpoint, load_training_state
from training.config import IMAGE_KINDS, DataConfig, TrainConfig
from training.datasets import PreparedPatient, SliceDataset, prepare_cases
from training.evaluate import REPORT_FILENAME, evaluate, finite_json, patient_fractions, pick_vote_threshold
from training.evaluate import vote_config_with, write_report
from training.file_sources import dicom_csv_cases, nifti_cases, tiff_cases
from training.model_card import file_sha256, holdout_evaluation, load_model_card, make_card, training_data_for_run
from training.patients import UNLABELLED, PatientCase, lesion_insertion_cases, phantom_cases
from training.registry import ModelConfig, create_model_from_config, resolve_config
from training.splits import Fold, holdout_split, patient_kfold
from training.trainer import TrainState, load_history, train_model


@dataclass(frozen=True)
class RunResult:
    """Checkpoint folder, per-epoch history and validation report of one run."""

    checkpoint: Path
    history: list[dict[str, Any]]
    report: dict[str, Any] | None
    fold: Fold


def cases_for(data: DataConfig) -> list[PatientCase]:
    """The patient cases a :class:`DataConfig` describes."""
    if data.kind == "phantom":
        return phantom_cases(data.phantom_patients, num_slices=data.phantom_slices, size=data.phantom_size,
                             seed=data.seed)
    if data.path is None:
        raise ConfigError(f"data kind {data.kind!r} needs a data path (--data-path)")
    if data.kind == "lesion-insertion":
        root = Path(data.path)
        subdirs = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        has_files = root.is_dir() and any(p.is_file() for p in root.iterdir())
        sources = [str(root)] if (not root.is_dir() or has_files or not subdirs) else [str(p) for p in subdirs]
        return lesion_insertion_cases(sources, copies=data.insertion_copies, seed=data.seed)
    if data.kind == "dicom-csv":
        return dicom_csv_cases(data.path, label_rule=data.label_rule)
    if data.kind == "tiff":
        return tiff_cases(data.path)
    if data.kind in IMAGE_KINDS:
        from training.sets import set_cases, spec_of

        return set_cases(spec_of(data))
    if data.kind == "sets":
        raise ConfigError("data kind 'sets' trains through a recipe run (python -m training train --preset ...)")
    return nifti_cases(data.path)


def prepare_for(data: DataConfig, cases: Sequence[PatientCase], pipeline: PipelineConfig, task: str, *,
                slices: str, out_dir: str | Path | None = None, progress: bool = True
                ) -> tuple[list[PreparedPatient], list[dict[str, str]]]:
    """Prepare ``cases`` of ``data``: (prepared cases, skipped cases with their reasons). For the
    8-bit image kinds, images whose gray-to-HU map cannot be estimated are skipped, and listed in
    ``out_dir/data_report.json`` when ``out_dir`` is given (never dropped silently)."""
    if data.kind not in IMAGE_KINDS:
        return prepare_cases(cases, pipeline, task, slices=slices, seg_target=data.seg_target, progress=progress), []
    from training.sets import data_report, prepare_set, spec_of

    prepared = prepare_set(spec_of(data), pipeline, task, slices="all", seg_target=data.seg_target,
                           progress=progress, cases=cases)
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "data_report.json").write_text(json.dumps(data_report([prepared], []), indent=2) + "\n",
                                                        encoding="utf-8")
    return list(prepared.patients), list(prepared.skipped)


def check_label_rule(data: DataConfig, model_cfg: ModelConfig) -> None:
    """The three-class rule needs a three-output classifier, which no registered one is."""
    if data.kind == "dicom-csv" and data.label_rule == "three-class" and model_cfg.task == "classification":
        raise ConfigError(
            f"label_rule 'three-class' is not supported by {model_cfg.name} (classifiers here have 1 "
            f"output (sigmoid) or 2 (softmax: COVID-19 vs rest)); use label_rule 'covid-vs-rest'"
        )


def model_config_for(cfg: TrainConfig) -> ModelConfig:
    """The registry config of ``cfg``'s network (its defaults with the run's options), not built."""
    overrides: dict[str, Any] = dict(cfg.model_options)
    if cfg.input_size is not None:
        overrides["input_size"] = cfg.input_size
    if cfg.num_outputs is not None:
        overrides["num_outputs"] = cfg.num_outputs
    if cfg.mask_channels:
        overrides["in_channels"] = 3
    return resolve_config(cfg.model, **overrides)


def model_for(cfg: TrainConfig) -> torch.nn.Module:
    """Create the (seeded) network of ``cfg`` from the registry."""
    torch.manual_seed(cfg.seed)
    return create_model_from_config(model_config_for(cfg))


def pipeline_for(cfg: TrainConfig, model_cfg: ModelConfig, base: PipelineConfig | None = None) -> PipelineConfig:
    """``base`` (default PipelineConfig) with the network's input settings and vote."""
    base = base or PipelineConfig()
    inp = ModelInputConfig(size=model_cfg.input_size, lung_crop=cfg.lung_crop,
                           mask_channels=model_cfg.in_channels == 3)
    if model_cfg.in_channels not in (1, 3):
        raise ConfigError(f"in_channels must be 1 or 3 (image [+ lung + infection]); got {model_cfg.in_channels}")
    field = "classifier_input" if model_cfg.task == "classification" else "segmenter_input"
    return dataclasses.replace(base, **{field: inp, "vote": vote_config_with(base, cfg.vote_fraction)})


def split_patients(prepared: Sequence[PreparedPatient], cfg: TrainConfig) -> Fold:
    """Patient-level (group-level) split of ``prepared`` as ``cfg`` asks."""
    groups = [p.group_id for p in prepared]
    labels_by_group: dict[str, int] = {}
    for p in prepared:
        labels_by_group[p.group_id] = max(labels_by_group.get(p.group_id, 0), int(p.label))
    labels = [labels_by_group[g] for g in groups]
    if cfg.folds >= 2:
        if not 0 <= cfg.fold < cfg.folds:
            raise ConfigError(f"fold must be in [0, {cfg.folds}); got {cfg.fold}")
        return patient_kfold(groups, cfg.folds, labels=labels, seed=cfg.seed)[cfg.fold]
    if cfg.validation_fraction > 0:
        return holdout_split(groups, cfg.validation_fraction, labels=labels, seed=cfg.seed)
    return Fold(0, tuple(sorted(set(groups))), ())


def train_on_prepared(
    cfg: TrainConfig,
    prepared: Sequence[PreparedPatient],
    pipeline: PipelineConfig,
    out_dir: str | Path,
    *,
    model: torch.nn.Module | None = None,
    state: TrainState | None = None,
    progress: bool = True,
    diagnoses: Mapping[str, str] | None = None,
    evaluation: dict[str, Any] | None = None,
) -> RunResult:
    """Split, train, write the checkpoint, its model card and the validation report
    into ``out_dir``. ``evaluation`` (figures from elsewhere, e.g. k-fold) goes into the
    card; else the card gets the hold-out figures when there are validation patients."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model if model is not None else model_for(cfg)
    task = model.model_config.task
    fold = split_patients(prepared, cfg)
    val_groups = set(fold.validation)
    train_p = [p for p in prepared if p.group_id not in val_groups]
    val_p = [p for p in prepared if p.group_id in val_groups]
    train_ds = SliceDataset(train_p, task, empty_fraction=cfg.empty_slice_fraction, seed=cfg.seed)
    val_ds = SliceDataset(val_p, task) if val_p else None
    (out / "split.json").write_text(
        json.dumps({"train": list(fold.train), "validation": list(fold.validation)}, indent=2) + "\n",
        encoding="utf-8",
    )
    history = train_model(model, train_ds, val_ds, cfg, pipeline=pipeline, out_dir=out, state=state,
                          progress=progress)
    report = None
    if val_p:
        report = evaluate(model, val_p, pipeline, device=cfg.device)
        report["split"] = {"train": list(fold.train), "validation": list(fold.validation)}
        write_report(report, out, history)
    elif history:
        from training.plots import plot_training_curves

        plot_training_curves(history, out / "training_curves.png")
    method = f"fold {cfg.fold} of {cfg.folds} (patient-level)" if cfg.folds >= 2 else "hold-out"
    card = make_card(
        model.model_config, pipeline, training_data_for_run(cfg.data, train_ds, train_p, diagnoses),
        training_config=cfg.to_dict(),
        evaluation=evaluation or holdout_evaluation(report, len(fold.validation), method),
    )
    if (out / WEIGHTS_FILENAME).is_file():
        card.with_weights(file_sha256(out / WEIGHTS_FILENAME)).save(out)
    return RunResult(out, history, report, fold)


def run_training(
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    resume: str | Path | None = None,
    base_pipeline: PipelineConfig | None = None,
    progress: bool = True,
) -> RunResult:
    """Train ``cfg`` into the checkpoint folder ``out_dir`` (optionally resuming)."""
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    state = None
    if resume is not None:
        model, _, pipeline = load_checkpoint(resume)
        extra, opt_state = load_training_state(resume)
        state = TrainState(int(extra.get("epoch", 0)), load_history(resume), opt_state)
        model.train()
    else:
        model = model_for(cfg)
        pipeline = pipeline_for(cfg, model.model_config, base_pipeline)
    check_label_rule(cfg.data, model.model_config)
    cases = cases_for(cfg.data)
    prepared, _ = prepare_for(cfg.data, cases, pipeline, model.model_config.task, slices=cfg.train_slices,
                              out_dir=out_dir, progress=progress)
    return train_on_prepared(cfg, prepared, pipeline, out_dir, model=model, state=state, progress=progress,
                             diagnoses={c.patient_id: c.diagnosis for c in cases})


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
    from preprocessing.patient_vote import patient_vote
    from training.evaluate import selected_probabilities
    from training.predict import predict_probabilities

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

    from training.metrics import classification_metrics, roc_curve
    from training.plots import plot_patient_fractions, plot_roc

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


def evaluate_checkpoint(
    checkpoint: str | Path,
    data: DataConfig,
    out_dir: str | Path,
    *,
    slices: str = "selected",
    device: str = "cpu",
    progress: bool = True,
    pick_threshold: bool = False,
    apply_threshold: bool = False,
) -> dict[str, Any]:
    """Evaluate a saved checkpoint on every patient of ``data``; report in ``out_dir``.

    ``pick_threshold``: pick the vote threshold on these patients
    (:func:`training.evaluate.pick_vote_threshold`), record it in the report
    (``vote_threshold_pick``) and in the checkpoint's model card (``evaluation.
    vote_threshold_pick``, with ``applied``); ``apply_threshold`` also writes it into the
    checkpoint's ``pipeline_config.json`` (``vote.positive_fraction``).
    """
    if apply_threshold and not pick_threshold:
        raise ConfigError("applying a vote threshold needs picking one (--pick-vote-threshold)")
    model, mcfg, pipeline = load_checkpoint(checkpoint, map_location=device)
    check_label_rule(data, mcfg)
    if pick_threshold:
        load_model_card(checkpoint)  # fail before the evaluation when there is no card
    if data.kind in IMAGE_KINDS and pick_threshold:
        raise ConfigError(f"data kind {data.kind!r} has no patients: a vote threshold is picked on series")
    prepared, skipped = prepare_for(data, cases_for(data), pipeline, mcfg.task, slices=slices, progress=progress)
    report = evaluate(model, prepared, pipeline, device=device)
    if data.kind in IMAGE_KINDS and mcfg.task == "classification":
        # one image is not a patient: no patient verdicts where the data do not say who is who
        for key in ("patient", "patients"):
            report.pop(key, None)
        report["patient_level"] = "not applicable: the images carry no patient identifiers"
    report["images_used"] = len(prepared)
    report["skipped"] = skipped
    report["checkpoint"] = str(checkpoint)
    report["data"] = dataclasses.asdict(data)
    if pick_threshold:
        if mcfg.task != "classification":
            raise ConfigError(f"a vote threshold is picked for classifiers; {mcfg.name!r} is a {mcfg.task} network")
        fractions, labels = patient_fractions(report)
        pick = {**pick_vote_threshold(fractions, labels), "data_kind": data.kind,
                "patients": [p.patient_id for p in prepared]}
        report["vote_threshold_pick"] = record_vote_threshold(checkpoint, pick, apply=apply_threshold)
    write_report(report, out_dir)
    return report


def record_vote_threshold(checkpoint: str | Path, pick: dict[str, Any], *, apply: bool = False) -> dict[str, Any]:
    """Record a :func:`~training.evaluate.pick_vote_threshold` result in the checkpoint's
    model card (``evaluation.vote_threshold_pick`` with ``applied`` and ``previous``);
    ``apply`` also writes ``pick["value"]`` into its ``pipeline_config.json``. A pick
    that is not better than chance is never applied (DatasetError, nothing written).
    Returns the recorded entry."""
    path = Path(checkpoint)
    card = load_model_card(path)
    pipeline = PipelineConfig.load(path)
    if apply and not pick["better_than_chance"]:
        raise DatasetError(
            f"vote threshold {pick['value']:.3f} picked on {pick['positives'] + pick['negatives']} patients does not "
            f"separate them better than chance (Youden J {pick['youden_j']:.2f}); not applied to {path}"
        )
    entry = {**pick, "applied": bool(apply), "previous": pipeline.vote.positive_fraction}
    card.with_evaluation(vote_threshold_pick=entry).save(path)
    if apply:
        dataclasses.replace(pipeline, vote=vote_config_with(pipeline, pick["value"])).save(path)
    return entry

