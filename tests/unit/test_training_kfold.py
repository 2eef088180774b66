"""Patient-level k-fold (``python -m covidct.training kfold``): pooled out-of-fold figures,
plots, and the final model whose card carries them. Phantom patients (fast) and the
three real COVID-CT-MD series (slow)."""

from __future__ import annotations

import json

import pytest
import torch

from covidct.errors import ConfigError
from covidct.preprocessing.config import PipelineConfig
from covidct.training.cli import main
from covidct.training.config import resolve_train_config
from covidct.training.kfold import run_kfold
from covidct.training.model_card import file_sha256, load_model_card


@pytest.fixture(autouse=True)
def _two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(min(2, threads))
    yield
    torch.set_num_threads(threads)


def _phantom_cfg(**over):
    return resolve_train_config("kfold-small", {
        "input_size": 32, "epochs": 1,
        "data": {"kind": "phantom", "phantom_patients": 4, "phantom_slices": 12, "phantom_size": 64}, **over,
    })


def test_kfold_on_phantoms_writes_report_plots_and_final_card(tmp_path):
    report = run_kfold(_phantom_cfg(), tmp_path, folds=2, progress=False)
    assert report["method"] == "2-fold" and report["folds"] == 2 and report["patients"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "final", "fold0", "fold1", "patient_fractions.png", "report.json", "roc_curve.png"]
    written = json.loads((tmp_path / "report.json").read_text())
    held_out = sorted(p for f in written["fold_details"] for p in f["validation"])
    assert held_out == sorted(v["patient_id"] for v in written["patient_verdicts"]) and len(set(held_out)) == 4
    for fold in written["fold_details"]:
        assert not set(fold["train"]) & set(fold["validation"])
    assert written["slice"]["n"] == written["slices"] > 0
    card = load_model_card(tmp_path / "final")
    assert card.demo and card.training_data.num_patients == 4  # the final model saw every patient
    assert card.weights_sha256 == file_sha256(tmp_path / "final" / "weights.pt")
    for key in ("method", "slice_roc_auc", "patient_verdicts", "vote_threshold", "seconds", "warnings"):
        assert card.evaluation[key] == written[key], key
    assert json.loads((tmp_path / "final" / "split.json").read_text())["validation"] == []


def test_kfold_argument_errors(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"kfold needs --folds K >= 2 or --leave-one-patient-out; got folds=0"):
        run_kfold(_phantom_cfg(), tmp_path, progress=False)
    with pytest.raises(ConfigError, match=r"kfold evaluates classifiers; 'unet' is a segmentation network"):
        run_kfold(_phantom_cfg(model="unet"), tmp_path, folds=2, progress=False)
    rc = main(["kfold", "--data", "phantom", "--folds", "2", "--leave-one-patient-out", "--out", str(tmp_path)])
    assert rc == 2 and "exactly one of --folds K and --leave-one-patient-out" in capsys.readouterr().out
    rc = main(["kfold", "--data", "dicom-csv", "--data-path", str(tmp_path), "--label-rule", "three-class",
               "--leave-one-patient-out", "--out", str(tmp_path / "o")])
    assert rc == 2 and "label_rule 'three-class' is not supported by cnn6" in capsys.readouterr().out


@pytest.mark.real_data
@pytest.mark.slow
def test_leave_one_patient_out_on_the_real_series(real_data_dir, tmp_path, capsys):
    """The CLI on the three real series (cnn6 at 64 px, 2 epochs: about 30 s on 2 cores)."""
    out = tmp_path / "lopo"
    rc = main(["kfold", "--preset", "kfold-small", "--input-size", "64", "--epochs", "2", "--data", "dicom-csv",
               "--data-path", str(real_data_dir), "--leave-one-patient-out", "--apply-vote-threshold",
               "--out", str(out), "--quiet"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "leave-one-patient-out" and report["folds"] == 3
    assert {v["patient_id"]: (v["label"], v["diagnosis"]) for v in report["patient_verdicts"]} == {
        "P002": (1, "COVID-19"), "cap002": (0, "CAP"), "normal002": (0, "Normal")}
    # per-slice figures over the labelled open-lung slices of all three held-out series:
    # positives only from P002's 68 slices marked infected
    slices = report["slice"]
    assert 0 < slices["positives"] <= 68 and 0 < slices["n"] - slices["positives"] <= 65 + 131 + 167
    # the fold holding out the only COVID-19 patient trains on negative slices only: said so
    fold = next(f for f in report["fold_details"] if f["validation"] == ["P002"])
    assert fold["training_slice_classes"] == [0]
    assert any("held out: P002" in w and "class [0] only" in w for w in report["warnings"])
    for name in ("roc_curve.png", "patient_fractions.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    card = load_model_card(out / "final")
    assert not card.demo and card.training_data.source_kind == "dicom-csv"
    assert card.training_data.label_rule == "covid-vs-rest"
    assert card.training_data.patients_per_class == {"CAP": 1, "COVID-19": 1, "Normal": 1}
    ev = card.evaluation
    assert ev["patient_verdicts"] == report["patient_verdicts"] and ev["seconds"] == report["seconds"] > 0
    assert ev["slice_roc_auc"] == report["slice_roc_auc"] and ev["vote_threshold"] == 0.3
    pick = ev["vote_threshold_pick"]
    deployed = PipelineConfig.load(out / "final").vote.positive_fraction
    assert deployed == (pytest.approx(pick["value"]) if pick["applied"] else 0.3)
    assert pick["applied"] == pick["better_than_chance"]
