"""Whole runs: data -> split -> train -> checkpoint -> report (what the CLI calls).

- :func:`run_training`: one training run (patient-level hold-out or one fold), the
  checkpoint folder being ``out_dir`` itself (weights, model/pipeline/training configs,
  history, report and plots of the validation patients).
- :func:`run_crossval`: patient-level k-fold cross-validation, one run per fold in
  ``out_dir/fold<i>``, mean and standard deviation in ``out_dir/crossval.json``.
- :func:`evaluate_checkpoint`: a saved checkpoint on a data set.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from covidct.errors import ConfigError
from preprocessing.config import ModelInputConfig, PipelineConfig
from training.checkpoint import load_checkpoint, load_training_state
from training.config import DataConfig, TrainConfig
from training.datasets import PreparedPatient, SliceDataset, prepare_cases
from training.evaluate import evaluate, vote_config_with, write_report
from training.file_sources import dicom_csv_cases, nifti_cases, tiff_cases
from training.patients import PatientCase, lesion_insertion_cases, phantom_cases
from training.registry import ModelConfig, create_model
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
        return dicom_csv_cases(data.path)
    if data.kind == "tiff":
        return tiff_cases(data.path)
    return nifti_cases(data.path)


def model_for(cfg: TrainConfig) -> torch.nn.Module:
    """Create the (seeded) network of ``cfg`` from the registry."""
    overrides: dict[str, Any] = dict(cfg.model_options)
    if cfg.input_size is not None:
        overrides["input_size"] = cfg.input_size
    if cfg.num_outputs is not None:
        overrides["num_outputs"] = cfg.num_outputs
    if cfg.mask_channels:
        overrides["in_channels"] = 3
    torch.manual_seed(cfg.seed)
    return create_model(cfg.model, **overrides)


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
) -> RunResult:
    """Split, train, write the checkpoint and the validation report into ``out_dir``."""
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
    prepared = prepare_cases(cases_for(cfg.data), pipeline, model.model_config.task,
                             slices=cfg.train_slices, seg_target=cfg.data.seg_target, progress=progress)
    return train_on_prepared(cfg, prepared, pipeline, out_dir, model=model, state=state, progress=progress)


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
    prepared = prepare_cases(cases_for(cfg.data), pipeline, model.model_config.task,
                             slices=cfg.train_slices, seg_target=cfg.data.seg_target, progress=progress)
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


def evaluate_checkpoint(
    checkpoint: str | Path,
    data: DataConfig,
    out_dir: str | Path,
    *,
    slices: str = "selected",
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate a saved checkpoint on every patient of ``data``; report in ``out_dir``."""
    model, mcfg, pipeline = load_checkpoint(checkpoint, map_location=device)
    prepared = prepare_cases(cases_for(data), pipeline, mcfg.task, slices=slices,
                             seg_target=data.seg_target, progress=progress)
    report = evaluate(model, prepared, pipeline, device=device)
    report["checkpoint"] = str(checkpoint)
    report["data"] = dataclasses.asdict(data)
    write_report(report, out_dir)
    return report
