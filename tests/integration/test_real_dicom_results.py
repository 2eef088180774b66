"""SEG, SR and key images of the real COVID-CT-MD series, validated by dciodvfy and stored in
a real Orthanc.

Each series (JPEG Lossless, 512 x 512, anonymised: empty or non-conformant UIDs, Type 2
patient and study attributes absent or empty) is copied, given valid UIDs (Study, Series,
Frame of Reference, one SOP Instance per file; pixels and every other attribute left as
they are) and stripped of the Type 2 patient and study attributes the result objects
copy. The answer is made on the workstation without a server: the lungs of
:func:`covidct.preprocessing.lung_segmentation.segment_lungs` on its reduced grid, the dense part
of them as the infection mask, a ``partial_coverage`` warning. SEG + SR + one key image
are built, written, checked with dciodvfy (no error), stored by STOW-RS
(:mod:`covidct.client.pacs`) beside the source series, and read back: every SEG frame references
a source instance of the series, the one at the frame's Image Position (Patient).

Skipped with the reason when the series (``COVIDCT_DATA_DIR``), Orthanc or dciodvfy are absent.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from covidct.client.dicom_results import dicom_results_for, write_dicom_results
from covidct.client.dicom_seg import TYPE2_PATIENT_STUDY, DicomOutputConfig
from covidct.client.dicom_sr import report_values
from covidct.client.pacs import StowDestination
from covidct.client.result import Assessment, PipelineResult, Reason
from covidct.preprocessing.io.series_reader import read_series
from covidct.preprocessing.lung_segmentation import segment_lungs
from covidct.preprocessing.mask_grid import block_mean
from covidct.preprocessing.resize import resize_nearest
from covidct.preprocessing.volume import CTVolume
from tests.integration.orthanc import orthanc  # noqa: F401 - the fixture

pytestmark = [
    pytest.mark.integration, pytest.mark.real_data, pytest.mark.slow,
    # the anonymised originals hold non-conformant UIDs; pydicom warns when the copy reads them
    pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning"),
]
SERIES = ("P002", "cap002", "normal002")
#: Grid HU above which a lung pixel counts as infected in the made-up answer (dense parenchyma).
INFECTION_HU = -500
WARNING = Reason("partial_coverage", "lung bases 10 mm outside the scan")


def anonymised_copy(source: Path, target: Path) -> None:
    """``source`` copied to ``target`` with valid UIDs and without the Type 2 patient/study attributes."""
    shutil.copytree(source, target)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    for path in sorted(target.iterdir()):
        if path.suffix.lower() != ".dcm":
            continue
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        for keyword in TYPE2_PATIENT_STUDY:
            if keyword in ds:
                delattr(ds, keyword)
        ds.save_as(path)


def made_up_answer(volume: CTVolume) -> PipelineResult:
    """A positive answer whose masks are the volume's own lungs on the reduced grid."""
    lungs = segment_lungs(volume.hu, volume.spacing_mm)
    slices = lungs.lung_slices
    labels = lungs.labels[slices].astype(np.uint8)
    grid_hu = np.asarray(block_mean(volume.hu, lungs.factor))[slices]
    infection = ((labels > 0) & (grid_hu > INFECTION_HU)).astype(np.uint8)
    return PipelineResult(
        verdict="positive", positive_fraction=0.5, vote_threshold=0.25,
        slice_probabilities=np.array([0.8, 0.3], np.float32), selected_indices=slices[[0, -1]],
        lesion_burden_pct=100.0 * infection.sum() / max(1, int((labels > 0).sum())),
        lung_volume_ml=lungs.lung_volume_ml,
        model_versions=("classifier=cnn6:1:sha256:aa", "segmenter=unet:1:sha256:bb"), latency_s=0.0,
        assessment=Assessment(assessable=True, warnings=(WARNING,)), lung_slices=slices,
        lung_mask=labels, infection_mask=infection, mask_spacing_mm=lungs.spacing_mm, num_slices=volume.num_slices,
    )


def stored_positions(orthanc, study_uid: str, series_uid: str) -> dict[str, list[float]]:  # noqa: F811
    """SOP Instance UID -> Image Position (Patient) (mm) of every instance of the series in
    Orthanc, from its WADO-RS series metadata."""
    from dicomweb_client.api import DICOMwebClient

    metadata = DICOMwebClient(orthanc.dicomweb_url).retrieve_series_metadata(study_uid, series_uid)
    wanted = ("00080018", "00200032")  # SOP Instance UID, Image Position (Patient)
    instances = [pydicom.Dataset.from_json({tag: item[tag] for tag in wanted}) for item in metadata]
    return {str(ds.SOPInstanceUID): [float(v) for v in ds.ImagePositionPatient] for ds in instances}


def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """(errors, warnings) of dciodvfy on ``path``."""
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    lines = (run.stdout + run.stderr).splitlines()
    return [m for m in lines if m.startswith("Error")], [m for m in lines if m.startswith("Warning")]


def read_back(orthanc, modality: str) -> list[pydicom.Dataset]:  # noqa: F811 - fixture value
    """Every instance of ``modality`` in Orthanc, found by QIDO-RS and read by WADO-RS."""
    from dicomweb_client.api import DICOMwebClient

    web = DICOMwebClient(orthanc.dicomweb_url)
    datasets: list[pydicom.Dataset] = []
    for item in web.search_for_instances(search_filters={"Modality": modality}):
        meta = pydicom.Dataset.from_json(item)
        datasets.append(web.retrieve_instance(meta.StudyInstanceUID, meta.SeriesInstanceUID, meta.SOPInstanceUID))
    return datasets


@pytest.mark.parametrize("name", SERIES)
def test_real_series_results_validate_store_and_reference_the_right_source_frames(
    real_data_dir, orthanc, tmp_path, name  # noqa: F811 - the fixture
):
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (Debian package dicom3tools) not installed")
    folder = tmp_path / name
    anonymised_copy(real_data_dir / name, folder)
    volume = read_series(folder)
    assert volume.num_slices > 100 and volume.hu.shape[1:] == (512, 512)
    result = made_up_answer(volume)
    assert result.lung_slices.size > 50 and result.infection_mask.any()

    results = dicom_results_for(folder, volume, result, DicomOutputConfig(key_images=1))
    paths = write_dicom_results(results, tmp_path / "out", name)
    assert [p.name for p in paths] == [f"{name}_seg.dcm", f"{name}_sr.dcm", f"{name}_key01.dcm"]
    for path in paths:
        errors, warnings = dciodvfy(path)
        print(path.name, "dciodvfy warnings:", sorted(set(warnings)) or "none")
        assert errors == [], f"{path.name}: {errors}"

    from dicomweb_client.api import DICOMwebClient

    sources = [pydicom.dcmread(folder / source_name) for source_name in volume.source_names]
    DICOMwebClient(orthanc.dicomweb_url).store_instances(sources)
    StowDestination(orthanc.dicomweb_url).store(results.datasets)
    (seg,), (sr,) = read_back(orthanc, "SEG"), read_back(orthanc, "SR")
    position_of = stored_positions(orthanc, str(sources[0].StudyInstanceUID), str(sources[0].SeriesInstanceUID))
    assert set(position_of) == {str(ds.SOPInstanceUID) for ds in sources}

    for dataset in (seg, sr):
        for keyword in TYPE2_PATIENT_STUDY:
            assert keyword in dataset and dataset[keyword].is_empty, f"{dataset.Modality} {keyword}"
        assert str(dataset.StudyInstanceUID) == str(sources[0].StudyInstanceUID)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == sources[0].SeriesInstanceUID
    frames = seg.PerFrameFunctionalGroupsSequence
    assert len(frames) == int(seg.NumberOfFrames) >= result.lung_slices.size
    for item in frames:
        uid = str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        assert uid in position_of, uid
        assert [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient] == position_of[uid]

    import highdicom as hd

    uids = [str(ds.SOPInstanceUID) for ds in sources]
    pixels = hd.seg.Segmentation.from_dataset(seg).get_pixels_by_source_instance(
        source_sop_instance_uids=uids, segment_numbers=[1, 2], assert_missing_frames_are_empty=True
    ).astype(bool)
    expected = np.zeros_like(pixels)
    expected[result.lung_slices, ..., 0] = resize_nearest(result.lung_mask, (512, 512)) > 0
    expected[result.lung_slices, ..., 1] = resize_nearest(result.infection_mask, (512, 512)) > 0
    np.testing.assert_array_equal(pixels, expected)

    values = report_values(sr)
    assert values["verdict"] == "positive" and values["warning_codes"] == [WARNING.code]
    assert values["segments"] == [(seg.SOPInstanceUID, 1), (seg.SOPInstanceUID, 2)]
    assert values["lung_volume_ml"] == pytest.approx(result.lung_volume_ml)
