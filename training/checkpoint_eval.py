"""A saved checkpoint on a data set -> evaluation report (``report.json`` + plots), and a picked
vote threshold -> the checkpoint's model card (and, when applied, its ``pipeline_config.json``).

- :func:`evaluate_checkpoint` (``python -m covidct.training evaluate --checkpoint``): a saved
  checkpoint on every patient of a data set (optionally picking the vote threshold on them).
- :func:`record_vote_threshold`: record a picked vote threshold (a fraction of slices) in a
  checkpoint's model card, optionally applying it to its pipeline config.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from covidct.errors import ConfigError, DatasetError
from covidct.preprocessing.config import PipelineConfig
from covidct.training.checkpoint import load_checkpoint
from covidct.training.config import IMAGE_KINDS, DataConfig
from covidct.training.evaluate import evaluate, patient_fractions, pick_vote_threshold, vote_config_with, write_report
from covidct.training.model_card import load_model_card
from covidct.training.run import cases_for, check_label_rule, prepare_for


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
    (:func:`covidct.training.evaluate.pick_vote_threshold`), record it in the report
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
    """Record a :func:`~covidct.training.evaluate.pick_vote_threshold` result in the checkpoint's
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
