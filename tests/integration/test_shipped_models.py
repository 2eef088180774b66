"""The shipped networks: their checkpoints load, carry a card that tells the truth, export to
ONNX with parity, and answer the real series through the real server and client with that
card in the answer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from covidct.client.cli import main
from covidct.preprocessing.config import PipelineConfig
from covidct.training.checkpoint import load_checkpoint
from covidct.training.model_card import load_model_card
from covidct.training.shipped import shipped_checkpoint

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROLES = ("classifier", "segmenter")
NETWORKS = {"classifier": "efficientnet_lite0", "segmenter": "unet_lite0"}


@pytest.mark.parametrize("role", ROLES)
def test_shipped_checkpoint_loads_with_a_card_of_real_data(role):
    path = shipped_checkpoint(role)
    model, config, pipeline = load_checkpoint(path)
    card = load_model_card(path)
    assert config.name == card.network == NETWORKS[role]
    assert card.demo is False and "not" in card.warning and "clinical" in card.intended_use
    assert card.datasets, "the card names its data sets"
    for entry in card.datasets:
        assert entry["licence"] and entry["origin"] and entry["role"] in ("train", "validation")
        assert entry["used"] + len(entry["skipped"]) == entry["listed"]
    assert card.limitations and (card.licence or "").startswith("Research use only")
    if role == "classifier":  # MosMedData CC BY-NC-ND 3.0, Sao Paulo CC BY-NC-SA 4.0
        assert "non-commercial" in card.licence and "CC BY-NC-ND 3.0" in card.licence
    assert any(d["role"] == "validation" for d in card.datasets) or card.evaluation["method"] == "leave-one-source-out"
    vote = pipeline.vote
    for value in (vote.slice_threshold, vote.positive_fraction, vote.infection_threshold):
        assert 0.0 < value < 1.0
    report = json.loads((path / "report.json").read_text())
    if role == "classifier":
        assert (vote.slice_threshold, vote.positive_fraction) == (
            report["thresholds"]["slice_threshold"], report["thresholds"]["vote_fraction"])
        assert set(report["validation_per_set"]) == {d["folder"] for d in card.datasets if d["role"] == "train"}
    else:
        assert vote.infection_threshold == report["thresholds"]["infection_threshold"]
        assert 0.0 < report["dice"] <= 1.0
    for name in ("train_config.json", "data_report.json", "run_info.json", "training_curves.png"):
        assert (path / name).is_file(), name


def test_shipped_repository_serves_both_cards_and_thresholds(shipped_repository):
    for role in ROLES:
        onnx = sorted((shipped_repository / role).glob("*/*.onnx"))
        assert len(onnx) == 1, role
    cards = json.loads(next((shipped_repository / "vote").glob("*/model_cards.json")).read_text())
    assert {cards[r]["network"] for r in ROLES} == set(NETWORKS.values())
    served = PipelineConfig.load(next((shipped_repository / "preprocess").glob("*/pipeline_config.json")))
    classifier = PipelineConfig.load(shipped_checkpoint("classifier"))
    segmenter = PipelineConfig.load(shipped_checkpoint("segmenter"))
    assert served.vote.slice_threshold == classifier.vote.slice_threshold
    assert served.vote.positive_fraction == classifier.vote.positive_fraction
    assert served.vote.infection_threshold == segmenter.vote.infection_threshold


@pytest.mark.real_data
def test_real_series_answered_by_the_shipped_networks_with_their_card(shipped_server, real_data_dir, capsys):
    series = [real_data_dir / name for name in ("P002", "cap002", "normal002")]
    main([*map(str, series), "--url", shipped_server.grpc_url, "--json", "--no-progress", "--concurrency", "1"])
    document = json.loads(capsys.readouterr().out)
    answers = {Path(p["input"]).name: p for p in document["patients"]}
    assert set(answers) == {"P002", "cap002", "normal002"}
    for name, patient in answers.items():
        assert patient["status"] == "ok", (name, patient.get("error"))
        patient = patient["result"]
        assert patient["verdict"] in ("positive", "negative"), (name, patient["verdict"])
        assert patient["demo"] is False, name
        cards = patient["model_card"]
        assert cards["classifier"]["network"] == "efficientnet_lite0", name
        assert cards["segmenter"]["network"] == "unet_lite0", name
        assert cards["classifier"]["demo"] is False and cards["classifier"]["datasets"], name
        probabilities = np.asarray(patient["slice_probabilities"], dtype=float)
        assert probabilities.size and np.all((probabilities >= 0) & (probabilities <= 1)), name
        assert patient["lung_volume_ml"] > 1000, name


def test_covidct_serve_exports_the_shipped_networks_once_per_pair_of_weights(tmp_path, capsys):
    from covidct.app.cli import shipped_repository

    repository = shipped_repository(tmp_path)
    assert "exporting the shipped networks" in capsys.readouterr().out
    onnx = sorted(repository.glob("*/*/*.onnx"))
    assert [p.parent.parent.name for p in onnx] == ["classifier", "segmenter"]
    stamps = [p.stat().st_mtime_ns for p in onnx]
    assert shipped_repository(tmp_path) == repository
    assert capsys.readouterr().out == "" and [p.stat().st_mtime_ns for p in onnx] == stamps
