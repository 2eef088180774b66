"""Command line: ``python -m covidct.training {train,evaluate,kfold,models,presets}``.

Examples::

    python -m covidct.training train --preset paper000 --input-size 64 --epochs 5 --out runs/cnn6
    python -m covidct.training train --model unet --data dicom-csv --data-path DATA --out runs/unet
    python -m covidct.training train --resume runs/cnn6 --epochs 10 --out runs/cnn6
    python -m covidct.training evaluate --checkpoint runs/cnn6 --data dicom-csv --data-path DATA --out eval/
    python -m covidct.training evaluate --checkpoint runs/cnn6 --data dicom-csv --data-path VAL --out eval/ \
        --pick-vote-threshold [--apply-vote-threshold]
    python -m covidct.training evaluate --folds 5 --preset paper000 --out cv/      # k-fold CV
    python -m covidct.training kfold --preset kfold-small --data dicom-csv --data-path DATA \
        --leave-one-patient-out --out runs/lopo   # pooled figures + final model in runs/lopo/final

``kfold`` trains one classifier per patient-level fold, pools the held-out patients'
figures into ``report.json`` (+ ``roc_curve.png``, ``patient_fractions.png``), then
trains the final model on every patient into ``OUT/final``; its ``model_card.json``
carries the figures. ``--apply-vote-threshold`` writes the vote threshold picked on the
held-out patients into the final model's ``pipeline_config.json`` (kfold) or into the
evaluated checkpoint's (evaluate with ``--pick-vote-threshold``); without it the pick is
only recorded (report and model card).

Options given on the command line override the preset, which overrides the defaults;
the resolved config is written as ``train_config.json`` into the checkpoint folder.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Sequence

from covidct.errors import ConfigError, CovidCTError
from covidct.training.config import DATA_KINDS, OPTIMIZERS, PRESETS, TrainConfig, resolve_train_config
from covidct.training.labels import LABEL_RULES

TOP_LEVEL = {
    "model": "model", "input_size": "input_size", "num_outputs": "num_outputs", "epochs": "epochs",
    "batch_size": "batch_size", "optimizer": "optimizer", "lr": "lr", "loss": "loss", "seed": "seed",
    "device": "device", "folds": "folds", "fold": "fold", "validation_fraction": "validation_fraction",
    "train_slices": "train_slices", "lr_schedule": "lr_schedule", "num_threads": "num_threads",
    "vote_fraction": "vote_fraction", "empty_slice_fraction": "empty_slice_fraction",
}
DATA_KEYS = {
    "data": "kind", "data_path": "path", "phantom_patients": "phantom_patients",
    "phantom_slices": "phantom_slices", "phantom_size": "phantom_size",
    "insertion_copies": "insertion_copies", "seg_target": "seg_target", "label_rule": "label_rule",
    "transform": "transform", "train_set": "train_sets", "validation_set": "validation_sets",
}


def _add_train_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", choices=sorted(PRESETS), help="the papers' settings")
    p.add_argument("--model", help="registry name (python -m covidct.training models)")
    p.add_argument("--input-size", type=int, help="square input side in pixels")
    p.add_argument("--num-outputs", type=int, choices=(1, 2), help="1 sigmoid/BCE, 2 softmax/CCE")
    p.add_argument("--mask-channels", action="store_true", default=None, help="lung+infection masks as channels")
    p.add_argument("--lung-crop", action="store_true", default=None, help="paper 003's lung crop")
    p.add_argument("--model-option", action="append", default=[], metavar="KEY=JSON",
                   help="architecture option, e.g. dropout=0.1 (repeatable)")
    p.add_argument("--data", choices=DATA_KINDS, help="data source kind (default phantom)")
    p.add_argument("--data-path", help="data folder (all kinds except phantom)")
    p.add_argument("--phantom-patients", type=int)
    p.add_argument("--phantom-slices", type=int)
    p.add_argument("--phantom-size", type=int)
    p.add_argument("--insertion-copies", type=int)
    p.add_argument("--seg-target", choices=("infection", "lung"))
    p.add_argument("--label-rule", choices=sorted(LABEL_RULES),
                   help="dicom-csv: diagnosis + infected -> slice labels (default covid-vs-rest)")
    p.add_argument("--transform", help="image kinds: stored image -> patient frame (none, rot90, transpose, ...)")
    p.add_argument("--train-set", action="append", default=None, metavar="KIND:PATH[:TRANSFORM]",
                   help="data kind 'sets': a training set under --data-path (repeatable)")
    p.add_argument("--validation-set", action="append", default=None, metavar="KIND:PATH[:TRANSFORM]",
                   help="data kind 'sets': a validation set under --data-path, never trained on (repeatable)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--optimizer", choices=OPTIMIZERS)
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--lr-schedule", choices=("constant", "cosine"))
    p.add_argument("--loss", help="bce, cce, dice, focal_tversky, bce_dice")
    p.add_argument("--no-augment", action="store_true", help="switch augmentation off")
    p.add_argument("--train-slices", choices=("selected", "all"))
    p.add_argument("--empty-slice-fraction", type=float)
    p.add_argument("--validation-fraction", type=float, help="patient-level hold-out (0 = none)")
    p.add_argument("--folds", type=int, help="k of patient-level k-fold")
    p.add_argument("--fold", type=int, help="which fold to train (train command)")
    p.add_argument("--vote-fraction", type=float, help="patient vote threshold (paper 0.30, code 0.10)")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="cpu or cuda[:n]")
    p.add_argument("--num-threads", type=int, help="torch CPU threads (0 = torch default)")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults < ``--preset`` < explicit options."""
    over: dict[str, Any] = {}
    for arg, key in TOP_LEVEL.items():
        value = getattr(args, arg, None)
        if value is not None:
            over[key] = value
    data = {key: getattr(args, arg) for arg, key in DATA_KEYS.items() if getattr(args, arg, None) is not None}
    if data:
        over["data"] = data
    for flag in ("mask_channels", "lung_crop"):
        if getattr(args, flag, None):
            over[flag] = True
    if getattr(args, "no_augment", False):
        over["augment"] = {"enabled": False}
    options = {}
    for item in getattr(args, "model_option", []):
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--model-option expects KEY=VALUE; got {item!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    if options:
        over["model_options"] = options
    return resolve_train_config(args.preset, over)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m covidct.training", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a network into a checkpoint folder")
    _add_train_options(train)
    train.add_argument("--out", required=True, help="checkpoint folder to write")
    train.add_argument("--resume", help="checkpoint folder to continue from")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    ev = sub.add_parser("evaluate", help="evaluate a checkpoint, or k-fold cross-validate")
    _add_train_options(ev)
    ev.add_argument("--checkpoint", help="checkpoint folder to evaluate (else: k-fold CV with --folds)")
    ev.add_argument("--slices", choices=("selected", "all"), default="selected",
                    help="slices for the per-slice metrics (the vote always uses the selection)")
    ev.add_argument("--out", required=True, help="report folder")
    ev.add_argument("--quiet", action="store_true")
    ev.add_argument("--pick-vote-threshold", action="store_true",
                    help="pick the vote threshold on these patients (report + model card)")
    ev.add_argument("--apply-vote-threshold", action="store_true",
                    help="also write it into the checkpoint's pipeline_config.json")
    kf = sub.add_parser("kfold", help="patient-level k-fold of a classifier, then the final model on all patients")
    _add_train_options(kf)
    kf.add_argument("--leave-one-patient-out", action="store_true", help="one fold per patient (instead of --folds)")
    kf.add_argument("--apply-vote-threshold", action="store_true",
                    help="write the vote threshold picked on the held-out patients into the final model")
    kf.add_argument("--out", required=True, help="folder for report.json, plots, fold<i>/ and final/")
    kf.add_argument("--quiet", action="store_true")
    sub.add_parser("models", help="list registered networks")
    sub.add_parser("presets", help="show the papers' presets")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "models":
        from covidct.training.registry import default_config, list_models

        for name in list_models():
            c = default_config(name)
            print(f"{name:16s} {c.task:15s} input {c.input_size:4d}  outputs {c.num_outputs}")
        return 0
    if args.command == "presets":
        print(json.dumps(PRESETS, indent=2))
        return 0
    from covidct.training import checkpoint_eval, kfold, run

    try:
        cfg = config_from_args(args)
        if args.command == "train" and cfg.data.kind == "sets":
            from covidct.training.recipes import run_sets

            report = run_sets(cfg, args.out, progress=not args.quiet)
            summary = {k: report.get(k) for k in ("method", "validation_per_set", "thresholds", "dice",
                                                  "median_image_dice", "run_info")}
            summary["checkpoint"] = str(args.out)
        elif args.command == "train":
            result = run.run_training(cfg, args.out, resume=args.resume, progress=not args.quiet)
            summary: dict[str, Any] = {"checkpoint": str(result.checkpoint), "last_epoch": result.history[-1]
                                       if result.history else None}
            if result.report is not None:
                summary["validation"] = result.report.get("slice") or result.report.get("all_slices")
                summary["patients"] = result.report.get("patient")
        elif args.command == "kfold":
            if args.leave_one_patient_out == bool(args.folds):
                raise ConfigError("kfold needs exactly one of --folds K and --leave-one-patient-out")
            report = kfold.run_kfold(cfg, args.out, folds=args.folds, leave_one_out=args.leave_one_patient_out,
                                     apply_vote_threshold=args.apply_vote_threshold, progress=not args.quiet)
            summary = {k: report[k] for k in ("method", "patients", "slice_roc_auc", "vote_threshold",
                                              "patient_verdicts", "vote_threshold_pick", "seconds", "warnings",
                                              "final_checkpoint")}
            summary["report"] = str(Path(args.out) / "report.json")
        elif args.checkpoint:
            report = checkpoint_eval.evaluate_checkpoint(args.checkpoint, cfg.data, args.out, slices=args.slices,
                                                         device=cfg.device, progress=not args.quiet,
                                                         pick_threshold=args.pick_vote_threshold,
                                                         apply_threshold=args.apply_vote_threshold)
            summary = {k: report.get(k) for k in ("slice", "patient", "all_slices", "vote_threshold_pick")
                       if k in report}
            summary["report"] = str(Path(args.out) / "report.json")
        else:
            summary = kfold.run_crossval(cfg, args.out, progress=not args.quiet)
    except CovidCTError as exc:
        print(f"error: {exc}")
        return 2
    print(json.dumps(summary, indent=2, default=str))
    return 0
