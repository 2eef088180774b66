"""Data sources (layouts and their errors), slice data sets, checkpoints."""

from __future__ import annotations

import dataclasses

import nibabel as nib
import numpy as np
import pytest
import tifffile
import torch

from covidct.errors import CheckpointError, DatasetError
from preprocessing.config import ModelInputConfig, PipelineConfig
from training.checkpoint import load_checkpoint, save_checkpoint
from training.datasets import SliceDataset, prepare_cases
from training.file_sources import dicom_csv_cases, nifti_cases, tiff_cases
from training.patients import phantom_cases
from training.registry import create_model

LABELS_HEADER = "patient,slice_rank,sop_file,infected\n"


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
    (tmp_path / "labels.csv").write_text(LABELS_HEADER + "P001,0,IM0001.dcm,1\nP001,1,IM0099.dcm,0\n")
    with pytest.raises(DatasetError, match=r"line 3: label for unknown file P001/IM0099.dcm"):
        dicom_csv_cases(tmp_path)


def test_dicom_csv_empty_patient_folder_and_missing_folder(tmp_path):
    (tmp_path / "P001").mkdir()
    (tmp_path / "labels.csv").write_text(LABELS_HEADER + "P001,0,IM0001.dcm,1\n")
    with pytest.raises(DatasetError, match=r"P001: empty patient folder"):
        dicom_csv_cases(tmp_path)
    (tmp_path / "labels.csv").write_text(LABELS_HEADER + "P002,0,IM0001.dcm,1\n")
    with pytest.raises(DatasetError, match=r"patient 'P002' has labels but no folder"):
        dicom_csv_cases(tmp_path)


def test_dicom_csv_bad_value(tmp_path):
    _patient_folder(tmp_path, "P001")
    (tmp_path / "labels.csv").write_text(LABELS_HEADER + "P001,0,IM0001.dcm,yes\n")
    with pytest.raises(DatasetError, match=r"line 2: infected must be 0, 1 or blank; got 'yes'"):
        dicom_csv_cases(tmp_path)


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
def test_real_covid_ct_md_labels_follow_slice_order(real_data_dir):
    cases = {c.patient_id: c for c in dicom_csv_cases(real_data_dir)}
    assert {cases["P002"].label, cases["cap002"].label, cases["normal002"].label} == {1, 0}
    data = cases["P002"].load()  # checks slice_rank against the sorted order
    assert data.hu.shape[0] == 133 and int((data.slice_labels == 1).sum()) == 68


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
