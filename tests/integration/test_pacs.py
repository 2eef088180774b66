"""Results where clinicians look: SEG + SR through a real Triton server into a real Orthanc.

The series is uploaded to Orthanc (STOW-RS), the client triages it on Triton and stores
SEG + SR (STOW-RS or C-STORE); the objects are read back through QIDO-RS/WADO-RS and
checked against the served answer. The DICOM node receives a series by C-STORE and
stores its SEG + SR in Orthanc. Skipped where Orthanc is not installed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from covidct.client.cli import main
from covidct.client.dicom_sr import report_values
from covidct.client.listener import ListenerConfig, ListenerNode
from covidct.client.pacs import StoreDestination
from covidct.client.submit import submit
from covidct.preprocessing.io.series_writer import write_dicom_series
from covidct.preprocessing.resize import resize_nearest
from covidct.preprocessing.synthetic.phantom import make_phantom
from tests.integration.orthanc import free_port, orthanc  # noqa: F401 - the fixture


@pytest.fixture(scope="module")
def triton_server(shipped_server):
    """These tests run against the shipped networks trained on real chest CT."""
    return shipped_server


pytestmark = pytest.mark.integration
WAIT_S = 120.0


def upload(orthanc, folder: Path) -> list[pydicom.Dataset]:  # noqa: F811 - fixture value
    from dicomweb_client.api import DICOMwebClient

    datasets = [pydicom.dcmread(p) for p in sorted(folder.iterdir())]
    DICOMwebClient(orthanc.dicomweb_url).store_instances(datasets)
    return datasets


def stored(orthanc, modality: str) -> list[pydicom.Dataset]:  # noqa: F811
    """Every instance of ``modality`` in Orthanc, found by QIDO-RS and read by WADO-RS."""
    from dicomweb_client.api import DICOMwebClient

    web = DICOMwebClient(orthanc.dicomweb_url)
    found = web.search_for_instances(search_filters={"Modality": modality})
    datasets = []
    for item in found:
        meta = pydicom.Dataset.from_json(item)
        datasets.append(web.retrieve_instance(meta.StudyInstanceUID, meta.SeriesInstanceUID, meta.SOPInstanceUID))
    return datasets


def dciodvfy_messages(dataset: pydicom.Dataset, folder: Path) -> list[str]:
    """dciodvfy's warnings and errors of ``dataset`` (empty when the tool is absent)."""
    if shutil.which("dciodvfy") is None:
        return []
    path = folder / f"{dataset.Modality}.dcm"
    dataset.save_as(path, enforce_file_format=True)
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith(("Error", "Warning"))]


def check_seg(seg: pydicom.Dataset, sources: list[pydicom.Dataset], served) -> None:
    import highdicom as hd

    uids = [str(ds.SOPInstanceUID) for ds in sources]
    order = np.argsort([float(ds.ImagePositionPatient[2]) for ds in sources])
    ordered = [uids[i] for i in order]
    referenced = {str(i.ReferencedSOPInstanceUID) for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == set(uids)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == sources[0].SeriesInstanceUID
    pixels = hd.seg.Segmentation.from_dataset(seg).get_pixels_by_source_instance(
        source_sop_instance_uids=ordered, segment_numbers=[1, 2], assert_missing_frames_are_empty=True
    )
    h, w = int(sources[0].Rows), int(sources[0].Columns)
    expected = np.zeros((len(uids), h, w, 2), bool)
    expected[served.lung_slices, ..., 0] = resize_nearest(served.lung_mask, (h, w)) > 0
    expected[served.lung_slices, ..., 1] = resize_nearest(served.infection_mask, (h, w)) > 0
    np.testing.assert_array_equal(pixels.astype(bool), expected)


def check_sr(sr: pydicom.Dataset, seg: pydicom.Dataset, report: dict) -> None:
    values = report_values(sr)
    answer = report["patients"][0]["result"]
    assert values["verdict"] == answer["verdict"]
    for key in ("positive_fraction", "vote_threshold", "lung_volume_ml", "lesion_burden_pct"):
        if answer[key] is None:
            assert key not in values
        else:
            assert values[key] == pytest.approx(answer[key], rel=1e-6), key
    assert values["selected_slices"] == len(answer["selected_indices"])
    assert values["reason_codes"] == [r["code"] for r in answer["assessment"]["reasons"]]
    assert values["segments"] == [(seg.SOPInstanceUID, 1), (seg.SOPInstanceUID, 2)]


@pytest.fixture
def phantom_folder(tmp_path) -> Path:
    folder = tmp_path / "PHANTOM7"
    write_dicom_series(make_phantom(60, size=128, covid=True, seed=7).volume, folder, patient_id="PH7")
    return folder


def test_stow_results_read_back_equal_the_served_answer(triton_server, orthanc, phantom_folder, tmp_path):  # noqa: F811
    sources = upload(orthanc, phantom_folder)
    report_path = tmp_path / "report.json"
    code = main([str(phantom_folder), "--url", triton_server.grpc_url, "--stow", orthanc.dicomweb_url,
                 "--dicom-out", str(tmp_path / "dicom"), "--output", str(report_path), "--no-progress"])
    report = json.loads(report_path.read_text())
    assert code == report["patients"][0]["exit_code"] and code in (0, 10, 11), report
    (seg,), (sr,) = stored(orthanc, "SEG"), stored(orthanc, "SR")
    check_seg(seg, sources, submit(str(phantom_folder), triton_server.grpc_url))
    check_sr(sr, seg, report)
    evidence = {str(i.ReferencedSOPInstanceUID) for study in sr.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence for i in series.ReferencedSOPSequence}
    assert evidence == {str(ds.SOPInstanceUID) for ds in sources} | {seg.SOPInstanceUID}
    assert sorted(p.name for p in (tmp_path / "dicom").iterdir()) == ["PHANTOM7_seg.dcm", "PHANTOM7_sr.dcm"]
    for dataset in (seg, sr):
        messages = dciodvfy_messages(dataset, tmp_path)
        print(dataset.Modality, "dciodvfy:", messages or "clean")
        assert not [m for m in messages if m.startswith("Error")]


def test_c_store_and_a_pacs_that_is_down_or_refuses(triton_server, orthanc, phantom_folder, capsys):  # noqa: F811
    url = triton_server.grpc_url
    assert main([str(phantom_folder), "--url", url, "--store", orthanc.store_address, "--no-progress"]) in (0, 10, 11)
    assert len(stored(orthanc, "SEG")) == 1 and len(stored(orthanc, "SR")) == 1
    capsys.readouterr()
    code = main([str(phantom_folder), "--url", url, "--store", f"127.0.0.1:{free_port()}:NOBODY", "--no-progress"])
    assert code == 9
    assert "results not stored" in capsys.readouterr().err
    code = main([str(phantom_folder), "--url", url, "--stow", f"{orthanc.http_url}/no-such-root", "--no-progress"])
    assert code == 9
    assert "HTTP 404" in capsys.readouterr().err


def test_listener_receives_a_series_by_c_store_and_stores_seg_and_sr(triton_server, orthanc, phantom_folder):  # noqa: F811
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage, MRImageStorage, Verification

    port = free_port()
    node = ListenerNode(
        ListenerConfig(port=port, bind="127.0.0.1", quiet_s=1.0, poll_s=0.2),
        triton_server.grpc_url, StoreDestination("127.0.0.1", orthanc.dicom_port, "ORTHANC"),
    )
    node.start()
    try:
        sources = [pydicom.dcmread(p) for p in sorted(phantom_folder.iterdir())]
        other = pydicom.dcmread(sorted(phantom_folder.iterdir())[0])
        other.SOPClassUID, other.Modality = MRImageStorage, "MR"
        other.SeriesInstanceUID, other.SOPInstanceUID = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
        ae = AE(ae_title="MODALITY")
        for context in (CTImageStorage, MRImageStorage, Verification):
            ae.add_requested_context(context)
        assoc = ae.associate("127.0.0.1", port, ae_title="COVIDCT")
        assert assoc.is_established
        statuses = [int(assoc.send_c_store(ds).Status) for ds in [*sources, other]]
        assoc.release()
        assert statuses == [0] * (len(sources) + 1)
        aborted = ae.associate("127.0.0.1", port, ae_title="COVIDCT")  # a modality that goes away
        partial = pydicom.dcmread(sorted(phantom_folder.iterdir())[1])
        partial.SeriesInstanceUID, partial.SOPInstanceUID = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
        aborted.send_c_store(partial)
        aborted.abort()
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline and len(node.answers) < 2:
            time.sleep(0.5)
        segs = [s for s in stored(orthanc, "SEG")
                if s.ReferencedSeriesSequence[0].SeriesInstanceUID == sources[0].SeriesInstanceUID]
        assert len(segs) == 1, node.answers
        check_seg(segs[0], sources, submit(str(phantom_folder), triton_server.grpc_url))
        srs = [s for s in stored(orthanc, "SR") if (segs[0].SOPInstanceUID, 1) in report_values(s)["segments"]]
        assert len(srs) == 1
        echo = ae.associate("127.0.0.1", port, ae_title="COVIDCT")  # the node survived the abort
        assert int(echo.send_c_echo().Status) == 0
        echo.release()
    finally:
        node.stop()


@pytest.mark.real_data
@pytest.mark.slow
def test_real_series_without_instance_uids_is_a_clear_per_patient_error(
    triton_server, orthanc, real_data_dir, tmp_path, capsys  # noqa: F811
):
    """COVID-CT-MD's anonymised files have an empty SOP Instance UID and Frame of Reference
    UID: the answer is given, the SEG/SR are refused with the tag named, nothing is written."""
    folder = real_data_dir / "P002"
    out = tmp_path / "dicom"
    code = main([str(folder), "--url", triton_server.grpc_url, "--stow", orthanc.dicomweb_url,
                 "--dicom-out", str(out), "--no-progress"])
    assert code == 9
    err = capsys.readouterr().err
    assert "SourceHeaderError: answered" in err and "(0008,0018) is missing or empty" in err
    assert not out.exists()
    assert stored(orthanc, "SEG") == [] and stored(orthanc, "SR") == []
