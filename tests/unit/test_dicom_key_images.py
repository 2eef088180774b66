"""Key images (Secondary Capture overlays) of an answer, built over a phantom series written as
real DICOM files (supine, and a decubitus series whose stored pixels are transposed against
the volume's patient layout), written with the SEG and SR and read back with pydicom."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pydicom
import pytest
from pydicom.uid import SecondaryCaptureImageStorage

from covidct.client.cli import build_parser, main
from covidct.client.dicom_key_images import (
    KeyImageConfig,
    build_key_images,
    infection_areas,
    key_slices,
    patient_orientation,
    render_key_image,
)
from covidct.client.dicom_results import (
    build_dicom_results,
    dicom_results_for,
    read_source_headers,
    write_dicom_results,
)
from covidct.client.dicom_seg import DicomOutputConfig
from covidct.client.result import Assessment, Reason
from covidct.errors import ConfigError, DicomResultsError, SourceHeaderError
from covidct.preprocessing.io.series_reader import read_series
from covidct.preprocessing.io.series_writer import write_dicom_series
from covidct.preprocessing.resize import resize_nearest
from covidct.preprocessing.synthetic.phantom import make_phantom
from tests.unit.test_dicom_results import (
    N,
    ORIENTED_SPACING,
    SIZE,
    answer,
    oriented_phantom,
    patient_origin,
    patient_points,
    write_oriented_series,
)

REASONS = (Reason("no_lungs", "no aerated lung found"), Reason("implausible_lung_volume", "0 ml"))


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    phantom = make_phantom(N, SIZE, covid=True, seed=3)
    folder = tmp_path_factory.mktemp("key_images") / "series"
    write_dicom_series(phantom.volume, folder)
    volume = read_series(folder)
    return phantom, folder, volume, read_source_headers(folder, volume.source_names)


def infected_answer(phantom, **changes):
    """A positive answer whose selected slices are every lung-bearing slice; lung labels 1 in
    the image's left half (patient right), 2 in its right half (patient left)."""
    base = answer(phantom)
    probabilities = np.linspace(0.1, 0.9, base.lung_slices.size).astype(np.float32)
    labels = base.lung_mask.copy()
    labels[:, :, labels.shape[2] // 2:] *= 2
    return answer(phantom, selected_indices=base.lung_slices, slice_probabilities=probabilities,
                  lung_mask=labels, **changes)


def not_assessable(phantom):
    return answer(
        phantom, verdict="not_assessable", positive_fraction=float("nan"), lesion_burden_pct=float("nan"),
        assessment=Assessment(assessable=False, reasons=REASONS), selected_indices=np.zeros(0, np.int32),
        slice_probabilities=np.zeros(0, np.float32),
    )


def written(results, folder, name="p"):
    paths = write_dicom_results(results, folder, name)
    return paths, [pydicom.dcmread(p) for p in paths[2:]]


def source_index(image, headers) -> int:
    uids = [str(h.SOPInstanceUID) for h in headers]
    return uids.index(str(image.SourceImageSequence[0].ReferencedSOPInstanceUID))


def test_key_images_are_the_most_infected_selected_slices_in_one_new_series(series, tmp_path):
    phantom, folder, volume, headers = series
    result = infected_answer(phantom)
    areas = infection_areas(result)
    assert np.count_nonzero(areas) > 3  # the choice below is a real choice
    results = dicom_results_for(folder, volume, result, DicomOutputConfig(key_images=3))
    paths, images = written(results, tmp_path)
    assert [p.name for p in paths] == ["p_seg.dcm", "p_sr.dcm", "p_key01.dcm", "p_key02.dcm", "p_key03.dcm"]
    assert len(results.datasets) == 5 and results.datasets[:2] == (results.segmentation, results.report)
    indices = [source_index(image, headers) for image in images]
    assert indices == sorted(indices) and len(set(indices)) == 3
    chosen = np.isin(result.selected_indices, indices)
    assert areas[chosen].min() > 0 and areas[chosen].min() >= areas[~chosen].max()
    assert len({str(image.SeriesInstanceUID) for image in images}) == 1
    assert str(images[0].SeriesInstanceUID) not in {str(headers[0].SeriesInstanceUID),
                                                      str(results.segmentation.SeriesInstanceUID)}
    assert [int(image.InstanceNumber) for image in images] == [1, 2, 3]
    for image, index in zip(images, indices, strict=True):
        header = headers[index]
        assert image.SOPClassUID == SecondaryCaptureImageStorage
        assert (image.PhotometricInterpretation, image.SamplesPerPixel, image.BitsAllocated) == ("RGB", 3, 8)
        assert [float(v) for v in image.ImagePositionPatient] == [float(v) for v in header.ImagePositionPatient]
        assert [float(v) for v in image.PixelSpacing] == [float(v) for v in header.PixelSpacing]
        assert str(image.FrameOfReferenceUID) == str(header.FrameOfReferenceUID)
        assert (image.StudyInstanceUID, image.PatientID) == (header.StudyInstanceUID, header.PatientID)
        assert int(image.SeriesNumber) == KeyImageConfig().series_number
        assert image.SeriesDescription == "covidct DEMO key images: positive"
        assert f"slice {index}, slice probability" in image.ImageComments
        assert result.demo_warning in image.ImageComments and image.BurnedInAnnotation == "NO"


def test_red_pixels_are_the_upsampled_infection_mask_and_the_rest_is_the_lung_window(series):
    phantom, _, volume, headers = series
    result = infected_answer(phantom)
    images = build_key_images(headers, volume.hu, result, DicomOutputConfig(key_images=2))
    assert len(images) == 2
    for image in images:
        index = source_index(image, headers)
        rgb = image.pixel_array.astype(np.int32)
        k = int(np.flatnonzero(result.lung_slices == index)[0])
        infection = resize_nearest(result.infection_mask[k][None], (SIZE, SIZE))[0] > 0
        lung = resize_nearest(result.lung_mask[k][None], (SIZE, SIZE))[0]
        red = (rgb[..., 0] > rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2])
        np.testing.assert_array_equal(red, infection)
        cyan = (rgb[..., 0] == 0) & (rgb[..., 1] == 255) & (rgb[..., 2] == 255)
        green = (rgb[..., 0] == 0) & (rgb[..., 1] == 255) & (rgb[..., 2] == 0)
        assert cyan.any() and (lung[cyan] == 1).all() and green.any() and (lung[green] == 2).all()
        gray = (rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2])
        window = np.rint(np.clip((volume.hu[index].astype(np.float64) + 1000.0) * 255.0 / 1400.0, 0, 255))
        np.testing.assert_array_equal(rgb[..., 0][gray & ~infection], window[gray & ~infection])
        assert (gray & (lung == 0)).sum() > 0.5 * SIZE * SIZE


def test_not_assessable_answer_gets_evenly_spaced_lung_slices_and_its_reasons(series, tmp_path):
    phantom, folder, volume, headers = series
    result = not_assessable(phantom)
    lung = result.lung_slices
    assert lung.size > 8
    results = dicom_results_for(folder, volume, result, DicomOutputConfig(key_images=4))
    _, images = written(results, tmp_path)
    indices = [source_index(image, headers) for image in images]
    assert len(indices) == 4 and indices[0] == lung.min() and indices[-1] == lung.max()
    assert set(indices) <= set(lung.tolist())
    steps = np.diff(np.searchsorted(lung, indices))
    assert steps.max() - steps.min() <= 1
    for image in images:
        assert image.SeriesDescription == "covidct DEMO key images: not_assessable"
        assert "no_lungs: no aerated lung found; implausible_lung_volume: 0 ml" in image.ImageComments
        assert "not_assessable" in image.ImageComments and result.demo_warning in image.ImageComments


def test_no_infection_and_no_lung_fall_back_to_evenly_spaced_slices(series):
    phantom, _, volume, headers = series
    no_infection = np.zeros_like(answer(phantom).infection_mask)
    clean = infected_answer(phantom, verdict="negative", infection_mask=no_infection)
    assert key_slices(clean, 100) == clean.lung_slices.tolist()
    assert len(key_slices(clean, 5)) == 5
    images = build_key_images(headers, volume.hu, clean, DicomOutputConfig(key_images=2))
    for image in images:
        rgb = image.pixel_array.astype(np.int32)
        assert not (rgb[..., 0] > rgb[..., 1]).any()
    no_lung = answer(phantom, lung_slices=np.zeros(0, np.int32), lung_mask=np.zeros((0, 16, 16), np.uint8),
                     infection_mask=np.zeros((0, 16, 16), np.uint8))
    assert key_slices(no_lung, 3, num_slices=N) == [0, 12, 23]
    assert key_slices(no_lung, 0) == []


def test_zero_key_images_keep_seg_and_sr_only(series):
    phantom, _, volume, headers = series
    results = build_dicom_results(headers, infected_answer(phantom), hu=volume.hu)
    assert results.key_images == () and len(results.datasets) == 2


def test_render_and_orientation_helpers():
    hu = np.array([[-2000, -1000], [400, 1000]], np.int16)
    rgb = render_key_image(hu, None, None)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3)
    np.testing.assert_array_equal(rgb[..., 0], [[0, 0], [255, 255]])
    assert patient_orientation([1, 0, 0, 0, 1, 0]) == ("L", "P")
    assert patient_orientation([-1, 0, 0, 0, 0, -1]) == ("R", "F")


def test_bad_counts_volumes_and_configs_are_clear_errors(series):
    phantom, _, volume, headers = series
    result = infected_answer(phantom)
    with pytest.raises(ConfigError, match=r"count -1; expected an integer >= 0"):
        key_slices(result, -1)
    with pytest.raises(ConfigError, match=r"count -2"):
        build_dicom_results(headers, result, DicomOutputConfig(key_images=-2), hu=volume.hu)
    with pytest.raises(DicomResultsError, match=r"key images \(3 asked for\) need the HU volume"):
        build_dicom_results(headers, result, DicomOutputConfig(key_images=3))
    with pytest.raises(SourceHeaderError, match=rf"HU volume of shape \[{N - 1}, {SIZE}, {SIZE}\]; expected \[{N}"):
        build_key_images(headers, volume.hu[1:], result, DicomOutputConfig(key_images=3))
    with pytest.raises(ConfigError, match=r"window_hu \(400.0, -1000.0\)"):
        KeyImageConfig(window_hu=(400.0, -1000.0))
    with pytest.raises(ConfigError, match=r"infection_alpha 0.0"):
        KeyImageConfig(infection_alpha=0.0)


def test_cli_key_images_option(capsys):
    parser = build_parser()
    assert parser.parse_args(["p"]).key_images == 0
    assert parser.parse_args(["p", "--key-images"]).key_images == 6
    assert parser.parse_args(["p", "--key-images", "3"]).key_images == 3
    assert main(["p", "--key-images", "-1"]) == 2
    assert "expected a slice count >= 0" in capsys.readouterr().err
    assert main(["p", "--key-images"]) == 2
    assert "add --dicom-out, --stow or --store" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (Debian package dicom3tools) not installed")
def test_key_image_passes_dciodvfy_without_errors(series, tmp_path):
    phantom, _, volume, headers = series
    results = build_dicom_results(headers, infected_answer(phantom), DicomOutputConfig(key_images=1), hu=volume.hu)
    paths = write_dicom_results(results, tmp_path, "p")
    run = subprocess.run(["dciodvfy", str(paths[2])], capture_output=True, text=True, timeout=60)
    output = (run.stdout + run.stderr).splitlines()
    assert any("SCImage" in line for line in output), output
    errors = [line for line in output if line.startswith("Error")]
    assert errors == [], errors


def test_key_images_carry_the_warnings_in_image_comments(series):
    phantom, _, volume, headers = series
    warnings = (Reason("partial_coverage", "lung apices 8 mm outside the scan"),)
    result = infected_answer(phantom, assessment=Assessment(assessable=True, warnings=warnings))
    images = build_key_images(headers, volume.hu, result, DicomOutputConfig(key_images=2))
    assert len(images) == 2
    for image in images:
        assert "warnings: partial_coverage: lung apices 8 mm outside the scan" in image.ImageComments
        assert "covidct answer: positive" in image.ImageComments
    plain = build_key_images(headers, volume.hu, infected_answer(phantom), DicomOutputConfig(key_images=1))
    assert "warnings" not in plain[0].ImageComments


def test_key_image_of_a_decubitus_series_is_in_its_source_frame_layout(series, tmp_path):
    phantom, _, _, _ = series
    patient, base = oriented_phantom(phantom)
    volume, transform = write_oriented_series(patient, tmp_path / "HFDL", "HFDL")
    assert transform.transpose
    result = answer(phantom, selected_indices=base.lung_slices, lung_mask=base.lung_mask,
                    infection_mask=base.infection_mask,
                    slice_probabilities=np.linspace(0.1, 0.9, base.lung_slices.size).astype(np.float32))
    results = dicom_results_for(tmp_path / "HFDL", volume, result, DicomOutputConfig(key_images=2))
    _, images = written(results, tmp_path / "out")
    headers = read_source_headers(tmp_path / "HFDL", volume.source_names)
    assert len(images) == 2
    for image in images:
        index = source_index(image, headers)
        header = headers[index]
        assert (int(image.Rows), int(image.Columns)) == (int(header.Rows), int(header.Columns)) == (48, 64)
        assert [float(v) for v in image.PixelSpacing] == [ORIENTED_SPACING[1], ORIENTED_SPACING[0]]
        assert [float(v) for v in image.ImageOrientationPatient] == [float(v) for v in header.ImageOrientationPatient]
        rgb = image.pixel_array.astype(np.int32)
        red = (rgb[..., 0] > rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2])
        k = int(np.flatnonzero(result.lung_slices == index)[0])
        infection = resize_nearest(result.infection_mask[k][None], patient.hu.shape[1:])[0] > 0
        assert infection.any()
        r, c = np.nonzero(infection)
        want = np.unique(np.round(patient_origin(patient)[None, :] + np.stack(
            [c * ORIENTED_SPACING[1], r * ORIENTED_SPACING[0]], axis=1), 2), axis=0)
        got = patient_points(red, image.ImagePositionPatient, image.ImageOrientationPatient, image.PixelSpacing)
        np.testing.assert_allclose(got, want, atol=0.011)
