"""The served networks on labelled real HU series, through the real Triton server and client.

For a COVID-CT-MD layout folder (``labels.csv`` + one DICOM folder per patient), every
series is sent to a Triton server serving a model repository (built from checkpoints, the
shipped ones by default) and the answers are scored against the radiologists' labels:

- per series: verdict, positive fraction and vote threshold, lesion burden (%), lung
  volume (ml), latency (s), slices selected, and the slice ROC AUC of infected against
  non-infected selected slices where a series has both;
- pooled: the slice ROC AUC of COVID-19 infected slices against the selected slices of
  normal patients, of every infected slice (COVID-19 or CAP) against them, and of COVID-19
  infected slices against CAP slices (scikit-learn's ``roc_auc_score``).

    python -m covidct.benchmarks.real_series --data ../shared/data/covid-ct-md \
        --out benchmarks/results/cpu-2core/shipped_models
    python -m covidct.benchmarks.real_series --data DIR --out OUT --record-in-cards  # also into the model cards

Writes ``real_series.json`` and ``real_series.md``. ``--record-in-cards`` adds the figures
to the checkpoints' model cards (``evaluation.real_series_through_server``): only figures
this command measured, with the data folder's name and the date.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from covidct.benchmarks.common import machine_info, machine_line


def _auc(labels: list[int], scores: list[float]) -> float | None:
    from sklearn.metrics import roc_auc_score

    if len(set(labels)) < 2:
        return None
    return float(roc_auc_score(labels, scores))


def score_series(result: Any, labels: dict[int, int], diagnosis: str) -> dict[str, Any]:
    """Per-series figures from a :class:`covidct.client.result.PipelineResult` and slice labels (index -> 0/1)."""
    probs = [float(p) for p in result.slice_probabilities]
    selected = [int(i) for i in result.selected_indices]
    labelled = [(labels[i], p) for i, p in zip(selected, probs) if labels.get(i, -1) in (0, 1)]
    return {
        "diagnosis": diagnosis,
        "verdict": result.verdict,
        "assessable": bool(result.assessment.assessable),
        "reasons": [r.code for r in result.assessment.reasons],
        "warnings": [w.code for w in result.assessment.warnings],
        "positive_fraction": float(result.positive_fraction),
        "vote_threshold": float(result.vote_threshold),
        "slices": int(result.num_slices),
        "selected_slices": len(selected),
        "slice_auc_infected_vs_not": _auc([y for y, _ in labelled], [p for _, p in labelled]),
        "mean_probability": float(np.mean(probs)) if probs else None,
        "lesion_burden_pct": float(result.lesion_burden_pct),
        "lung_volume_ml": float(result.lung_volume_ml),
        "latency_s": float(result.latency_s),
        "_selected": [(labels.get(i, -1), p) for i, p in zip(selected, probs)],
    }


def pooled_figures(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """COVID-19 infected slices against normal patients' and CAP slices (selected slices only)."""
    covid_inf = [p for r in rows.values() if r["diagnosis"] == "COVID-19" for y, p in r["_selected"] if y == 1]
    cap_inf = [p for r in rows.values() if r["diagnosis"] == "CAP" for y, p in r["_selected"] if y == 1]
    normal = [p for r in rows.values() if r["diagnosis"] == "Normal" for _, p in r["_selected"]]

    def auc(pos: list[float], neg: list[float]) -> float | None:
        return _auc([1] * len(pos) + [0] * len(neg), pos + neg) if pos and neg else None

    return {
        "covid_infected_vs_normal": auc(covid_inf, normal),
        "any_infected_vs_normal": auc(covid_inf + cap_inf, normal),
        "covid_infected_vs_cap_infected": auc(covid_inf, cap_inf),
        "slices": {"covid_infected": len(covid_inf), "cap_infected": len(cap_inf), "normal": len(normal)},
    }


def evaluate_real_series(data: Path, repository: Path) -> dict[str, Any]:
    """Start a server on ``repository``, send every series of ``data``, score the answers."""
    from covidct.client.submit import submit
    from covidct.app.triton_server import ServerConfig, TritonServer
    from covidct.preprocessing.io.series_reader import read_series
    from covidct.training.file_sources import _parse_labels_csv

    rows_by_patient = _parse_labels_csv(data / "labels.csv", "slice-labels")
    rows: dict[str, dict[str, Any]] = {}
    cards: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        server = TritonServer(ServerConfig(repository, log_path=Path(tmp) / "tritonserver.log",
                                           startup_timeout_s=300))
        server.start()
        try:
            for pid in sorted(rows_by_patient):
                volume = read_series(data / pid)
                index = {Path(name).name: i for i, name in enumerate(volume.source_names)}
                labels = {index[Path(r.sop).name]: r.infected for r in rows_by_patient[pid]
                          if Path(r.sop).name in index}
                diagnosis = {"covid": "COVID-19", "cap": "CAP", "normal": "Normal"}.get(
                    rows_by_patient[pid][0].diagnosis, "")
                if diagnosis == "Normal":
                    labels = {i: 0 for i in range(volume.hu.shape[0])}
                result = submit(volume, server.grpc_url, timeout_s=900)
                rows[pid] = score_series(result, labels, diagnosis)
                cards = result.model_card
        finally:
            server.stop()
    pooled = pooled_figures(rows)
    for r in rows.values():
        r.pop("_selected")
    return {"data": data.name, "series": rows, "pooled_slice_auc": pooled,
            "model_card_networks": {k: v.get("network") for k, v in cards.items()}, "machine": machine_info()}


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# Served networks on the labelled real series of `{report['data']}`", "",
             "Through the real Triton server and client (portable profile, ONNX Runtime on CPU).", "",
             "| series | diagnosis | verdict | positive fraction / threshold | slice AUC infected vs not | "
             "burden % | lung volume ml | latency s |", "|---|---|---|---|---|---|---|---|"]
    for pid, r in report["series"].items():
        auc = r["slice_auc_infected_vs_not"]
        lines.append(f"| {pid} | {r['diagnosis']} | {r['verdict']} | {r['positive_fraction']:.2f} / "
                     f"{r['vote_threshold']:.2f} | {'-' if auc is None else f'{auc:.3f}'} | "
                     f"{r['lesion_burden_pct']:.2f} | {r['lung_volume_ml']:.0f} | {r['latency_s']:.1f} |")
    p = report["pooled_slice_auc"]
    fmt = {k: ("-" if v is None else f"{v:.3f}") for k, v in p.items() if k != "slices"}
    lines += ["", "Pooled slice ROC AUC (selected slices): COVID-19 infected vs normal "
              f"{fmt['covid_infected_vs_normal']}, any infected vs normal {fmt['any_infected_vs_normal']}, "
              f"COVID-19 infected vs CAP infected {fmt['covid_infected_vs_cap_infected']} (slices: {p['slices']}).",
              "", machine_line(report["machine"]), ""]
    return "\n".join(lines)


def record_in_cards(report: dict[str, Any], checkpoints: list[Path]) -> None:
    """Add the figures to each checkpoint's model card (``evaluation.real_series_through_server``)."""
    from covidct.training.model_card import load_model_card, utc_now

    entry = {"data": report["data"], "measured_utc": utc_now(), "series": report["series"],
             "pooled_slice_auc": report["pooled_slice_auc"],
             "note": "three public series also used while developing the bundle; not a held-out test"}
    for ckpt in checkpoints:
        load_model_card(ckpt).with_evaluation(real_series_through_server=entry).save(ckpt)


def main(argv: list[str] | None = None) -> int:
    from covidct.export.repository import build_repository
    from covidct.training.shipped import shipped_checkpoint

    p = argparse.ArgumentParser(prog="python -m covidct.benchmarks.real_series", description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, required=True, help="COVID-CT-MD layout folder (labels.csv + series)")
    p.add_argument("--classifier", type=Path, default=None, help="classifier checkpoint (default: shipped)")
    p.add_argument("--segmenter", type=Path, default=None, help="segmenter checkpoint (default: shipped)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--record-in-cards", action="store_true", help="add the figures to the checkpoints' model cards")
    args = p.parse_args(argv)
    classifier = args.classifier or shipped_checkpoint("classifier")
    segmenter = args.segmenter or shipped_checkpoint("segmenter")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        repository = build_repository(classifier, segmenter, Path(tmp) / "model_repository", profile="portable")
        report = evaluate_real_series(args.data, repository)
    report["checkpoints"] = {"classifier": classifier.name, "segmenter": segmenter.name}
    (args.out / "real_series.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (args.out / "real_series.md").write_text(markdown(report), encoding="utf-8")
    print(markdown(report))
    if args.record_in_cards:
        record_in_cards(report, [classifier, segmenter])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
