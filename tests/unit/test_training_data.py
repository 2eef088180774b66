"""Data sources (layouts and their errors), slice data sets, checkpoints."""

from __future__ import annotations

import dataclasses

import nibabel as nib
import numpy as np
import pytest
import tifffile
import torch

from covidct.errors import CheckpointError, ConfigError, DatasetError
from covidct.preprocessing.config import ModelInputConfig, PipelineConfig
from covidct.preprocessing.io.series_writer import write_dicom_series
from covidct.preprocessing.synthetic.phantom import make_phantom
from covidct.training.checkpoint import load_checkpoint, save_checkpoint
from covidct.training.config import DataConfig, TrainConfig
from covidct.training.datasets import SliceDataset, prepare_cases
from covidct.training.file_sources import dicom_csv_cases, nifti_cases, slice_label, tiff_cases
from covidct.training.patients import UNLABELLED, phantom_cases
from covidct.training.registry import create_model
from covidct.training.run import check_label_rule

LABELS_HEADER = "patient,diagnosis,slice_rank,sop_file,infected\n"


def _patient_folder(root, name, files=("IM0001.dcm", "IM0002.dcm")):
    folder = root / name
    folder.mkdir(parents=True)
    for f in files:
        (folder / f).write_bytes(b"x")
    return folder


def test_dicom_csv_missing_labels_file(tmp_path):
    _patient_folder(tmp_path, "P001")
    with pytest.raises(DatasetError, match=r"labels.csv: labels file not found"):
        dicom_csv_cases(tmp_path)


def test_dicom_csv_label_for_unknown_file(tmp_path):
    _patient_folder(tmp_path, "P001")
    (tmp_path / "labels.csv").write_text(LABELS_HEADER + "P001,COVID-19,0,IM0001.dcm,1\nP001,COVID-19,1,IM0099.dcm,0\n")
    with pytest.raises(DatasetError, match=r"line 3: label for unknown file P001/IM0099.dcm"):
        dicom_csv_cases(tmp_path)


def test_dicom_csv_empty_patient_folder_and_missing_folder(tmp_path):
    (tmp_path / "P001").mkdir()
    (tmp_path / "labels.csv").write_text(LABELS_HEADER + "P001,COVID-19,0,IM0001.dcm,1\n")
    with pytest.raises(DatasetError, match=r"P001: empty patient folder"):
        dicom_csv_cases(tmp_path)
    (tmp_path / "labels.csv").write_text(LABELS_HEADER + "P002,COVID-19,0,IM0001.dcm,1\n")
    with pytest.raises(DatasetError, match=r"patient 'P002' has labels but no folder"):
        dicom_csv_cases(tmp_path)


def test_dicom_csv_bad_value(tmp_path):
    _patient_folder(tmp_path, "P001")
    (tmp_path / "labels.csv").write_text(LABELS_HEADER + "P001,COVID-19,0,IM0001.dcm,yes\n")
    with pytest.raises(DatasetError, match=r"line 2: infected must be 0, 1 or blank; got 'yes'"):
        dicom_csv_cases(tmp_path)


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ("P001,Flu,0,IM0001.dcm,1\n",
         r"labels.csv line 2: unknown diagnosis 'Flu'; accepted values \(any case\): \['CAP', 'COVID-19', 'Normal'\]"),
        ("P001,COVID-19,0,IM0001.dcm,1\nP001,CAP,1,IM0002.dcm,0\n",
         r"line 3: patient 'P001' has two diagnoses: 'CAP' here and 'COVID-19' on line 2"),
        ("P001,Normal,0,IM0001.dcm,0\nP001,normal,1,IM0002.dcm,1\n",
         r"line 3: infected=1 on slice P001/IM0002.dcm of a Normal patient; accepted values for a Normal "
         r"patient: 0 or blank"),
        ("P001,,0,IM0001.dcm,1\n", r"line 2: blank diagnosis; label rule 'covid-vs-rest' needs one of"),
    ],
)
def test_dicom_csv_label_errors(tmp_path, rows, match):
    _patient_folder(tmp_path, "P001")
    (tmp_path / "labels.csv").write_text(LABELS_HEADER + rows)
    with pytest.raises(DatasetError, match=match):
        dicom_csv_cases(tmp_path)


def test_dicom_csv_diagnosis_column_needed_by_the_rule(tmp_path):
    _patient_folder(tmp_path, "P001")
    (tmp_path / "labels.csv").write_text("patient,sop_file,infected\nP001,IM0001.dcm,1\nP001,IM0002.dcm,\n")
    with pytest.raises(DatasetError, match=r"labels.csv: missing column 'diagnosis' needed by label rule "
                                           r"'three-class' \(values \['CAP', 'COVID-19', 'Normal'\]\)"):
        dicom_csv_cases(tmp_path, label_rule="three-class")
    [case] = dicom_csv_cases(tmp_path, label_rule="slice-labels")
    assert case.label == 1 and case.diagnosis == ""
    with pytest.raises(ConfigError, match=r"unknown label_rule 'covid'; expected one of \['covid-vs-rest', "):
        dicom_csv_cases(tmp_path, label_rule="covid")
    with pytest.raises(ConfigError, match=r"data.label_rule must be one of"):
        TrainConfig(data=DataConfig(label_rule="binary"))


def test_slice_label_rules():
    """covid-vs-rest / three-class / slice-labels on every (diagnosis, infected) pair."""
    pairs = [(d, i) for d in ("covid", "cap", "normal") for i in (1, 0, UNLABELLED) if not (d == "normal" and i == 1)]
    rules = ("covid-vs-rest", "three-class", "slice-labels")
    got = {rule: [slice_label(rule, d, i) for d, i in pairs] for rule in rules}
    # pairs: covid 1/0/-1, cap 1/0/-1, normal 0/-1
    assert got["covid-vs-rest"] == [1, 0, UNLABELLED, 0, 0, 0, 0, 0]
    assert got["three-class"] == [2, 0, UNLABELLED, 1, 0, UNLABELLED, 0, 0]
    assert got["slice-labels"] == [1, 0, UNLABELLED, 1, 0, UNLABELLED, 0, UNLABELLED]


def test_three_class_is_refused_for_the_classifiers():
    data = DataConfig(kind="dicom-csv", path="x", label_rule="three-class")
    with pytest.raises(ConfigError, match=r"label_rule 'three-class' is not supported by cnn6 \(classifiers"):
        check_label_rule(data, create_model("cnn6", input_size=32).model_config)
    check_label_rule(data, create_model("unet", input_size=32).model_config)  # segmenters use masks


def _write_dicom_patients(root):
    """Three 6-slice DICOM patients (COVID-19, CAP, Normal) written from phantoms."""
    for i, pid in enumerate(("covid1", "cap1", "normal1")):
        volume = make_phantom(num_slices=6, size=32, covid=i < 2, seed=i).volume
        write_dicom_series(volume, root / pid, patient_id=pid)
    names = {pid: sorted(p.name for p in (root / pid).iterdir()) for pid in ("covid1", "cap1", "normal1")}
    return names


def test_covid_vs_rest_on_dicom_files(tmp_path):
    """Row-less and blank slices: unlabelled in the COVID-19 patient, 0 by diagnosis elsewhere."""
    from covidct.preprocessing.io.series_reader import read_series

    names = _write_dicom_patients(tmp_path)
    order = {pid: list(read_series(tmp_path / pid).source_names) for pid in names}
    rows = []
    for pid, diag, values in (("covid1", "COVID-19", ["1", "0", "", "1"]), ("cap1", "CAP", ["1", "0", "", "1"]),
                              ("normal1", "Normal", ["", "", "0", ""])):
        for rank, value in enumerate(values):  # slices 4 and 5 have no row
            rows.append(f"{pid},{diag},{rank},{order[pid][rank].split('/')[-1]},{value}\n")
    (tmp_path / "labels.csv").write_text(LABELS_HEADER + "".join(rows))
    cases = {c.patient_id: c for c in dicom_csv_cases(tmp_path)}
    assert {pid: (c.label, c.diagnosis) for pid, c in cases.items()} == {
        "covid1": (1, "COVID-19"), "cap1": (0, "CAP"), "normal1": (0, "Normal")}
    labels = {pid: c.load().slice_labels.tolist() for pid, c in cases.items()}
    assert labels == {"covid1": [1, 0, -1, 1, -1, -1], "cap1": [0] * 6, "normal1": [0] * 6}
    three = {c.patient_id: (c.label, c.load().slice_labels.tolist())
             for c in dicom_csv_cases(tmp_path, label_rule="three-class")}
    assert three == {"covid1": (2, [2, 0, -1, 2, -1, -1]), "cap1": (1, [1, 0, -1, 1, -1, -1]),
                     "normal1": (0, [0] * 6)}


def _write_tiff_patient(folder, n=4, seed=0):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        tifffile.imwrite(folder / f"IM{i:05d}.tif", rng.integers(0, 2000, (32, 32)).astype(np.uint16))


def test_tiff_layout_and_errors(tmp_path):
    with pytest.raises(DatasetError, match="empty folder"):
        tiff_cases(tmp_path)
    _write_tiff_patient(tmp_path / "covid" / "patient1" / "SR_2")
    _write_tiff_patient(tmp_path / "normal" / "patient7")
    cases = tiff_cases(tmp_path)
    assert [(c.patient_id, c.label, c.group) for c in cases] == [
        ("covid/patient1/SR_2", 1, "covid/patient1"),
        ("normal/patient7", 0, "normal/patient7"),
    ]
    data = cases[1].load()
    assert data.hu.shape == (4, 32, 32) and (data.slice_labels == 0).all()
    (tmp_path / "normal" / "patient8").mkdir()
    with pytest.raises(DatasetError, match="patient8: empty patient folder"):
        tiff_cases(tmp_path)
    (tmp_path / "normal" / "patient8").rmdir()
    (tmp_path / "pneumonia").mkdir()
    with pytest.raises(DatasetError, match="unknown class folder 'pneumonia'"):
        tiff_cases(tmp_path)


def _nifti(path, array):
    nib.save(nib.Nifti1Image(array, np.diag([0.7, 0.7, 2.0, 1.0])), str(path))


def test_nifti_pairs_and_errors(tmp_path):
    with pytest.raises(DatasetError, match="images: empty or missing folder"):
        nifti_cases(tmp_path)
    for d in ("images", "infection_masks"):
        (tmp_path / d).mkdir()
    image = np.full((32, 32, 6), -800, np.int16)
    mask = np.zeros((32, 32, 6), np.uint8)
    mask[10:15, 10:15, 2:4] = 1
    _nifti(tmp_path / "images" / "case1.nii.gz", image)
    _nifti(tmp_path / "infection_masks" / "case1.nii.gz", mask)
    data = nifti_cases(tmp_path)[0].load()
    assert data.infection_mask.shape == data.hu.shape and data.slice_labels.sum() == 2 and data.label == 1
    _nifti(tmp_path / "infection_masks" / "case9.nii.gz", mask)
    with pytest.raises(DatasetError, match="mask for unknown volume 'case9'"):
        nifti_cases(tmp_path)


@pytest.mark.real_data
@pytest.mark.slow
def test_real_covid_ct_md_covid_vs_rest(real_data_dir):
    """Default rule on the real series: positives only on the COVID-19 patient's slices
    marked infected, negatives on every CAP and Normal slice (Normal's blank column too)."""
    cases = {c.patient_id: c for c in dicom_csv_cases(real_data_dir)}
    assert {pid: (c.label, c.diagnosis) for pid, c in cases.items()} == {
        "P002": (1, "COVID-19"), "cap002": (0, "CAP"), "normal002": (0, "Normal")}
    data = {pid: c.load() for pid, c in cases.items()}  # checks slice_rank against the sorted order
    assert data["P002"].hu.shape[0] == 133 and int((data["P002"].slice_labels == 1).sum()) == 68
    assert int((data["P002"].slice_labels == 0).sum()) == 65
    for pid, n in (("cap002", 131), ("normal002", 167)):
        assert data[pid].slice_labels.shape == (n,) and (data[pid].slice_labels == 0).all(), pid


def test_phantom_slices_keep_patient_ids():
    cfg = PipelineConfig(classifier_input=ModelInputConfig(size=32))
    prepared = prepare_cases(phantom_cases(4, num_slices=16, size=64), cfg, "classification")
    ds = SliceDataset(prepared, "classification")
    assert ds.inputs.shape[1:] == (1, 32, 32) and len(set(ds.patient_ids)) == 4
    assert ds.labels[[i for i, p in enumerate(ds.patient_ids) if p.endswith("n")]].sum() == 0


def test_checkpoint_round_trip_and_mismatch(tmp_path):
    torch.manual_seed(0)
    model = create_model("cnn6", input_size=64)
    pipeline = PipelineConfig(classifier_input=ModelInputConfig(size=64))
    save_checkpoint(tmp_path / "ck", model, pipeline, extra={"epoch": 3})
    loaded, mcfg, pcfg = load_checkpoint(tmp_path / "ck")
    assert mcfg == model.model_config and pcfg == pipeline
    x = torch.rand(2, 1, 64, 64)
    model.eval()
    assert torch.allclose(loaded(x), model(x))
    # weights of another network under this config
    other = create_model("cnn6", input_size=128)
    torch.save(other.state_dict(), tmp_path / "ck" / "weights.pt")
    with pytest.raises(CheckpointError, match=r"weights do not match network 'cnn6'.*wrong shape"):
        load_checkpoint(tmp_path / "ck")
    torch.save(create_model("unet", input_size=64).state_dict(), tmp_path / "ck" / "weights.pt")
    with pytest.raises(CheckpointError, match=r"weights do not match network 'cnn6'.*missing"):
        load_checkpoint(tmp_path / "ck")
    bad_pipeline = dataclasses.replace(pipeline, classifier_input=ModelInputConfig(size=224))
    with pytest.raises(CheckpointError, match="pipeline classifier_input is 224x224"):
        save_checkpoint(tmp_path / "ck2", model, bad_pipeline)
    with pytest.raises(CheckpointError, match="checkpoint lacks weights.pt"):
        (tmp_path / "ck" / "weights.pt").unlink()
        load_checkpoint(tmp_path / "ck")
