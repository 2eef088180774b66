"""Model cards: the record, its JSON file, checkpoints and training runs writing it,
and the vote threshold picked on patients."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from covidct.errors import CheckpointError, ConfigError, DatasetError
from covidct.preprocessing.config import ModelInputConfig, PipelineConfig
from covidct.training.checkpoint import load_checkpoint, save_checkpoint
from covidct.training.checkpoint_eval import evaluate_checkpoint, record_vote_threshold
from covidct.training.config import resolve_train_config
from covidct.training.evaluate import pick_vote_threshold
from covidct.training.model_card import (
    DEMO_WARNING,
    FILENAME,
    ModelCard,
    file_sha256,
    load_model_card,
    make_card,
    training_data_record,
)
from covidct.training.registry import create_model
from covidct.training.run import run_training

SIZE = 32


def _pipeline() -> PipelineConfig:
    return PipelineConfig(classifier_input=ModelInputConfig(size=SIZE), segmenter_input=ModelInputConfig(size=SIZE))


def _phantom_card(patients: int = 12) -> ModelCard:
    model_config = create_model("cnn6", input_size=SIZE).model_config
    data = training_data_record("phantom", {"positive": patients // 2, "negative": patients // 2},
                                {"positive": 40, "negative": 200})
    return make_card(model_config, _pipeline(), data, weights_sha256="ab" * 32)


def test_phantom_card_is_a_demo_and_round_trips(tmp_path):
    card = _phantom_card()
    assert card.demo and card.training_data.synthetic and card.warning == DEMO_WARNING
    assert DEMO_WARNING == "Demo model trained on synthetic data; not for clinical use."
    assert card.summary() == (
        "cnn6 (classification) trained on phantom data: 12 patients; DEMO - synthetic training data, "
        "not for clinical use"
    )
    card.save(tmp_path / FILENAME)
    assert load_model_card(tmp_path) == card
    data = json.loads((tmp_path / FILENAME).read_text())
    assert data["input"] == {"size": SIZE, "channels": 1, "hu_window": [-1000.0, 400.0], "lung_crop": False}
    assert data["card_version"] == 2 and data["created_utc"].endswith("Z") and data["evaluation"] is None
    assert (data["datasets"], data["limitations"], data["licence"]) == (None, None, None)


def test_real_data_card_is_not_a_demo_but_warns():
    model_config = create_model("cnn6", input_size=SIZE).model_config
    data = training_data_record("dicom-csv", {"COVID-19": 1, "CAP": 1, "Normal": 1}, {"negative": 9, "positive": 3},
                                label_rule="covid-vs-rest")
    card = make_card(model_config, _pipeline(), data).with_evaluation(method="leave-one-patient-out",
                                                                      slice_roc_auc=float("nan"))
    assert not card.demo and not card.training_data.synthetic
    assert card.warning == "Research model trained on 3 patients; not validated for clinical use."
    assert card.training_data.label_definition.startswith("COVID-vs-rest: slices a radiologist marked infected")
    assert card.summary() == "cnn6 (classification) trained on dicom-csv data: 3 patients"
    assert card.to_dict()["evaluation"]["slice_roc_auc"] is None  # NaN is written as null
    lesion = training_data_record("lesion-insertion", {"positive": 4}, {})
    assert lesion.synthetic


def test_load_model_card_errors(tmp_path):
    with pytest.raises(CheckpointError, match=r"model_card\.json: checkpoint has no model card; retrain it with "
                                              r"`python -m covidct.training train`"):
        load_model_card(tmp_path)
    (tmp_path / FILENAME).write_text("{not json")
    with pytest.raises(CheckpointError, match=r"model_card\.json: model card is not valid JSON"):
        load_model_card(tmp_path)
    good = _phantom_card().to_dict()
    (tmp_path / FILENAME).write_text(json.dumps({**good, "colour": "red"}))
    with pytest.raises(CheckpointError, match=r"model card keys unknown \['colour'\], missing \[\]"):
        load_model_card(tmp_path)
    del good["demo"]
    (tmp_path / FILENAME).write_text(json.dumps(good))
    with pytest.raises(CheckpointError, match=r"missing \['demo'\]"):
        load_model_card(tmp_path)
    (tmp_path / FILENAME).write_text(json.dumps({**good, "demo": "yes"}))
    with pytest.raises(CheckpointError, match=r"model card field demo must be true or false; got 'yes'"):
        load_model_card(tmp_path)


def test_save_checkpoint_writes_and_keeps_the_card(tmp_path):
    torch.manual_seed(0)
    model = create_model("cnn6", input_size=SIZE)
    ckpt = save_checkpoint(tmp_path / "ck", model, _pipeline())
    card = load_model_card(ckpt)
    assert card.training_data.source_kind == "none" and card.demo
    assert card.summary() == "cnn6 (classification): no training data recorded; DEMO - no recorded training data, " \
                             "not for clinical use"
    assert card.weights_sha256 == file_sha256(ckpt / "weights.pt")
    # a card given to save_checkpoint is written with the new weights' hash ...
    save_checkpoint(ckpt, model, _pipeline(), card=_phantom_card())
    assert load_model_card(ckpt).training_data.source_kind == "phantom"
    # ... and kept (hash refreshed) when the same network is saved again without one
    with torch.no_grad():
        model.fc2.bias.add_(1.0)
    save_checkpoint(ckpt, model, _pipeline())
    kept = load_model_card(ckpt)
    assert kept.training_data.source_kind == "phantom" and kept.weights_sha256 == file_sha256(ckpt / "weights.pt")
    assert kept.weights_sha256 != card.weights_sha256
    # a checkpoint without a card still loads (the exporter is the one that refuses it)
    (ckpt / FILENAME).unlink()
    assert load_checkpoint(ckpt)[1].name == "cnn6"


def test_pick_vote_threshold_rules():
    sep = pick_vote_threshold([0.0, 0.1, 0.5, 0.7], [0, 0, 1, 1])
    assert (sep["method"], sep["value"], sep["separable"], sep["better_than_chance"]) == ("midpoint", 0.3, True, True)
    overlap = pick_vote_threshold([0.0, 0.4, 0.3, 0.6, 0.2], [0, 0, 1, 1, 1])
    # J = tpr - fpr: 0.0 -> 0, 0.2 -> 1 - 1/2, 0.3 -> 2/3 - 1/2, 0.4 -> 1/3 - 1/2, 0.6 -> 1/3 - 0
    assert overlap["method"] == "youden" and overlap["value"] == 0.2 and overlap["youden_j"] == pytest.approx(0.5)
    useless = pick_vote_threshold([0.9, 0.0], [0, 1])
    assert not useless["better_than_chance"] and useless["youden_j"] == 0.0
    with pytest.raises(DatasetError, match=r"needs positive and negative patients; got 2 positive and 0 negative"):
        pick_vote_threshold([0.1, 0.2], [1, 1])
    with pytest.raises(DatasetError, match=r"one 0/1 label per patient fraction; got 2 fractions and labels \[0, 2\]"):
        pick_vote_threshold([0.1, 0.2], [0, 2])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """cnn6 at 32 px, 2 epochs on 6 phantom patients (hold-out of 2)."""
    torch.set_num_threads(min(2, torch.get_num_threads()))
    cfg = resolve_train_config(None, {
        "model": "cnn6", "input_size": SIZE, "epochs": 2, "batch_size": 16, "validation_fraction": 0.34,
        "data": {"kind": "phantom", "phantom_patients": 6, "phantom_slices": 16, "phantom_size": 64},
    })
    out = tmp_path_factory.mktemp("run") / "ckpt"
    return run_training(cfg, out, progress=False)


def test_training_run_writes_a_demo_card(trained):
    card = load_model_card(trained.checkpoint)
    assert (card.network, card.task, card.demo, card.training_data.source_kind) == ("cnn6", "classification",
                                                                                    True, "phantom")
    train_patients = len(trained.fold.train)
    assert card.training_data.num_patients == train_patients == 4
    assert set(card.training_data.patients_per_class) == {"positive", "negative"}
    assert sum(card.training_data.slices_per_class.values()) > 0
    assert card.training_config["epochs"] == 2 and card.training_config["data"]["kind"] == "phantom"
    assert card.evaluation["method"] == "hold-out" and card.evaluation["patients"] == 2
    assert card.evaluation["vote_threshold"] == 0.3
    assert card.weights_sha256 == file_sha256(trained.checkpoint / "weights.pt")
    assert card.summary().startswith("cnn6 (classification) trained on phantom data: 4 patients; hold-out slice AUC")


def test_evaluate_picks_the_vote_threshold(trained, tmp_path):
    from covidct.training.config import DataConfig

    ckpt = trained.checkpoint
    data = DataConfig(kind="phantom", phantom_patients=4, phantom_slices=16, phantom_size=64, seed=5)
    report = evaluate_checkpoint(ckpt, data, tmp_path / "eval", progress=False, pick_threshold=True)
    pick = report["vote_threshold_pick"]
    assert len(pick["patients"]) == 4 and pick["applied"] is False and pick["previous"] == 0.3
    assert load_model_card(ckpt).evaluation["vote_threshold_pick"] == json.loads(json.dumps(pick))
    written = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert written["vote_threshold_pick"]["method"] == pick["method"]
    assert PipelineConfig.load(ckpt).vote.positive_fraction == 0.3  # not applied without the flag
    fractions = [p["vote_pipeline"]["positive_fraction"] for p in report["patients"]]
    labels = [p["label"] for p in report["patients"]]
    assert pick == {**pick, **pick_vote_threshold(np.array(fractions), np.array(labels))}
    with pytest.raises(ConfigError, match=r"applying a vote threshold needs picking one"):
        evaluate_checkpoint(ckpt, data, tmp_path / "eval2", progress=False, apply_threshold=True)


def test_record_vote_threshold_applies_only_on_request(tmp_path):
    ckpt = save_checkpoint(tmp_path / "ck", create_model("cnn6", input_size=SIZE), _pipeline(), card=_phantom_card())
    useless = pick_vote_threshold([0.9, 0.0], [0, 1])
    with pytest.raises(DatasetError, match=r"vote threshold 0.000 picked on 2 patients does not separate them better "
                                           r"than chance \(Youden J 0.00\); not applied to"):
        record_vote_threshold(ckpt, useless, apply=True)
    assert "vote_threshold_pick" not in (load_model_card(ckpt).evaluation or {})
    good = pick_vote_threshold([0.0, 0.1, 0.5, 0.7], [0, 0, 1, 1])
    record_vote_threshold(ckpt, good)
    assert PipelineConfig.load(ckpt).vote.positive_fraction == 0.3
    assert load_model_card(ckpt).evaluation["vote_threshold_pick"]["applied"] is False
    entry = record_vote_threshold(ckpt, good, apply=True)
    assert entry["applied"] is True and entry["value"] == pytest.approx(0.3) and entry["previous"] == 0.3
    good = pick_vote_threshold([0.0, 0.1, 0.3, 0.7], [0, 0, 1, 1])
    record_vote_threshold(ckpt, good, apply=True)
    assert PipelineConfig.load(ckpt).vote.positive_fraction == pytest.approx(0.2)
    card = load_model_card(ckpt)
    assert card.evaluation["vote_threshold_pick"]["previous"] == pytest.approx(0.3)
    assert card.weights_sha256 == file_sha256(ckpt / "weights.pt")  # the card still describes these weights


def test_version_1_cards_still_load_and_unknown_versions_do_not(tmp_path):
    model = create_model("cnn6", input_size=SIZE)
    card = make_card(model.model_config, PipelineConfig(classifier_input=ModelInputConfig(size=SIZE)),
                     training_data_record("phantom", {"COVID-19": 1}, {"COVID-19": 3}))
    data = card.to_dict()
    for key in ("datasets", "limitations", "licence"):
        del data[key]
    (tmp_path / FILENAME).write_text(json.dumps({**data, "card_version": 1}))
    assert load_model_card(tmp_path).card_version == 1
    (tmp_path / FILENAME).write_text(json.dumps({**data, "card_version": 3}))
    with pytest.raises(ConfigError, match=r"model card version 3 is not supported; expected one of \[1, 2\]"):
        load_model_card(tmp_path)
