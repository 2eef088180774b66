"""One training run: a TrainConfig -> patient cases, prepared patients, network, pipeline config and
patient split -> a checkpoint folder (what ``python -m covidct.training train`` calls).

- :func:`run_training`: one training run (patient-level hold-out or one fold), the
  checkpoint folder being ``out_dir`` itself (weights, model/pipeline/training configs,
  history, report and plots of the validation patients).
- :func:`train_on_prepared`: the same from already prepared patients (also each fold and the
  final model of :mod:`covidct.training.kfold`).
- :func:`cases_for`, :func:`prepare_for`, :func:`model_for`, :func:`pipeline_for`,
  :func:`split_patients`: a config's data, network, pipeline and patient split, shared with
  :mod:`covidct.training.kfold`, :mod:`covidct.training.checkpoint_eval` and
  :mod:`covidct.training.recipes`.

Every checkpoint written here carries a model card (:mod:`covidct.training.model_card`): the
training data (kind, label rule, patients and slices per class), the training config
and, where the run evaluated patients, the figures. Cross-validation and k-fold runs are in
:mod:`covidct.training.kfold`; evaluating a saved checkpoint in :mod:`covidct.training.checkpoint_eval`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from covidct.errors import ConfigError
from covidct.preprocessing.config import ModelInputConfig, PipelineConfig
from covidct.training.checkpoint import WEIGHTS_FILENAME, load_checkpoint, load_training_state
from covidct.training.config import IMAGE_KINDS, DataConfig, TrainConfig
from covidct.training.datasets import PreparedPatient, SliceDataset, prepare_cases
from covidct.training.evaluate import evaluate, vote_config_with, write_report
from covidct.training.file_sources import dicom_csv_cases, nifti_cases, tiff_cases
from covidct.training.model_card import file_sha256, holdout_evaluation, make_card, training_data_for_run
from covidct.training.patients import PatientCase, lesion_insertion_cases, phantom_cases
from covidct.training.registry import ModelConfig, create_model_from_config, resolve_config
from covidct.training.splits import Fold, holdout_split, patient_kfold
from covidct.training.trainer import TrainState, load_history, train_model


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
        from covidct.training.sets import set_cases, spec_of

        return set_cases(spec_of(data))
    if data.kind == "sets":
        raise ConfigError("data kind 'sets' trains through a recipe run "
                          "(python -m covidct.training train --preset ...)")
    return nifti_cases(data.path)


def prepare_for(data: DataConfig, cases: Sequence[PatientCase], pipeline: PipelineConfig, task: str, *,
                slices: str, out_dir: str | Path | None = None, progress: bool = True
                ) -> tuple[list[PreparedPatient], list[dict[str, str]]]:
    """Prepare ``cases`` of ``data``: (prepared cases, skipped cases with their reasons). For the
    8-bit image kinds, images whose gray-to-HU map cannot be estimated are skipped, and listed in
    ``out_dir/data_report.json`` when ``out_dir`` is given (never dropped silently)."""
    if data.kind not in IMAGE_KINDS:
        return prepare_cases(cases, pipeline, task, slices=slices, seg_target=data.seg_target, progress=progress), []
    from covidct.training.sets import data_report, prepare_set, spec_of

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
        from covidct.training.plots import plot_training_curves

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
