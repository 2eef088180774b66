"""One patient frame for every DICOM position: prone, feet-first and decubitus series are
read into the layout of a supine head-first one (rows anterior -> posterior, columns
patient right -> left, slices inferior -> superior), checked against the DICOM geometry
itself (Image Position + Orientation + Pixel Spacing of each stored pixel), not against
the transform that wrote them."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from covidct.errors import ConfigError, ObliqueSeriesError
from covidct.preprocessing.reader_config import ReaderConfig
from covidct.preprocessing.io.series_reader import read_dicom_series, read_series
from covidct.preprocessing.io.series_writer import write_dicom_series
from covidct.preprocessing.orientation import (
    IDENTITY,
    PATIENT_POSITION_ORIENTATIONS,
    InPlaneTransform,
    obliquity_degrees,
    source_orientation,
    transform_from_orientation,
)
from covidct.preprocessing.synthetic.phantom import make_phantom
from covidct.preprocessing.volume import CTVolume

POSITIONS = sorted(PATIENT_POSITION_ORIENTATIONS)


@pytest.fixture(scope="module")
def chest() -> CTVolume:
    """A small phantom with a non-square matrix and unequal pixel spacing (a transpose shows)."""
    v = make_phantom(24, size=64, covid=True, seed=3).volume
    z, y, x = v.spacing_mm
    return CTVolume(hu=np.ascontiguousarray(v.hu[:, :, 4:60]), spacing_mm=(z, y, x * 1.25),
                    positions_mm=v.positions_mm + 100.0, series_key="chest", source_format="array")


def patient_coordinates(ds: pydicom.Dataset, row: int, col: int) -> np.ndarray:
    """The DICOM patient coordinate (mm) of stored pixel (row, col): IPP + col*dc*R + row*dr*C."""
    iop = np.asarray(ds.ImageOrientationPatient, float)
    dr, dc = (float(v) for v in ds.PixelSpacing)
    return np.asarray(ds.ImagePositionPatient, float) + col * dc * iop[:3] + row * dr * iop[3:]


@pytest.mark.parametrize("position", POSITIONS)
def test_written_position_follows_the_dicom_geometry(tmp_path, chest, position):
    paths = write_dicom_series(chest, tmp_path, patient_position=position)
    _, rows, cols = chest.hu.shape
    z, sy, sx = chest.spacing_mm
    x0, y0 = -cols * sx / 2, -rows * sy / 2
    rng = np.random.default_rng(0)
    for k in (0, len(paths) // 2, len(paths) - 1):
        ds = pydicom.dcmread(paths[k])
        stored = ds.pixel_array
        assert ds.PatientPosition == position
        for _ in range(20):  # the anatomy at every stored pixel is where its header puts it
            r, c = int(rng.integers(stored.shape[0])), int(rng.integers(stored.shape[1]))
            px, py, pz = patient_coordinates(ds, r, c)
            vr, vc = round((py - y0) / sy), round((px - x0) / sx)
            assert pz == pytest.approx(chest.positions_mm[k], abs=1e-3)
            assert stored[r, c] == chest.hu[k, vr, vc]


@pytest.mark.parametrize("position", POSITIONS)
def test_every_position_reads_to_the_supine_head_first_layout(tmp_path, chest, position):
    write_dicom_series(chest, tmp_path, patient_position=position, name_order="random")
    volume, report = read_dicom_series(tmp_path)
    assert np.array_equal(volume.hu, chest.hu)
    assert volume.spacing_mm == pytest.approx(chest.spacing_mm, abs=1e-3)
    assert np.allclose(volume.positions_mm, chest.positions_mm, atol=1e-3)
    assert volume.orientation == report.orientation
    assert volume.orientation.is_identity == (position == "HFS")
    stored = pydicom.dcmread(tmp_path / volume.source_names[0]).pixel_array
    assert np.array_equal(volume.orientation.to_source(volume.hu)[0], stored)


def test_feet_first_sorts_inferior_to_superior(tmp_path, chest):
    write_dicom_series(chest, tmp_path, patient_position="FFS")
    volume = read_series(tmp_path)
    z = [float(pydicom.dcmread(tmp_path / name).ImagePositionPatient[2]) for name in volume.source_names]
    assert np.all(np.diff(z) > 0)


def test_transform_round_trip_and_shapes():
    a = np.arange(2 * 3 * 5 * 2).reshape(2, 3, 5, 2)
    for transpose in (False, True):
        for rows in (False, True):
            for cols in (False, True):
                t = InPlaneTransform(transpose, rows, cols)
                patient = t.to_patient(a)
                assert patient.shape[1:3] == t.patient_shape((3, 5))
                assert np.array_equal(t.to_source(patient), a)
    assert IDENTITY.describe() == "identity"
    assert InPlaneTransform(True, True, False).describe() == "transpose, flip rows"
    assert InPlaneTransform(True).patient_spacing((0.7, 0.9)) == (0.9, 0.7)


def test_orientation_of_positions_and_obliquity():
    assert transform_from_orientation(source_orientation("HFP")) == InPlaneTransform(False, True, True)
    assert transform_from_orientation(source_orientation("FFS")) == InPlaneTransform(False, False, True)
    assert transform_from_orientation((1, 0, 0, 0, 0, -1)) is None  # coronal
    assert obliquity_degrees(source_orientation("HFDL")) == 0.0
    c, s = np.cos(np.radians(10)), np.sin(np.radians(10))
    assert obliquity_degrees((1, 0, 0, 0, c, -s)) == pytest.approx(10.0)  # 10 degree gantry tilt
    with pytest.raises(ConfigError, match="patient position 'XYZ'; expected one of"):
        source_orientation("XYZ")


def test_tilted_series_is_refused_and_small_rotation_read(tmp_path, chest):
    paths = write_dicom_series(chest, tmp_path)
    for degrees, refused in ((1.0, False), (10.0, True)):
        c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
        for path in paths:
            ds = pydicom.dcmread(path)
            ds.ImageOrientationPatient = [1, 0, 0, 0, f"{c:.6f}", f"{-s:.6f}"]
            ds.save_as(path)
        if refused:
            with pytest.raises(ObliqueSeriesError, match=r"\(0020,0037\) .* lies 10 degrees off the patient axes"):
                read_series(tmp_path)
        else:
            assert np.array_equal(read_series(tmp_path).hu, chest.hu)
    assert read_series(tmp_path, config=ReaderConfig(max_oblique_deg=12.0)).num_slices == chest.num_slices
    with pytest.raises(ConfigError, match="max_oblique_deg=50"):
        ReaderConfig(max_oblique_deg=50)


def test_anatomy_that_contradicts_its_header_is_an_orientation_reason(tmp_path):
    """Pixels stored supine under a prone header: read as the header says, the spine ends
    up anterior, and the assessment names the orientation (it never answers on it)."""
    from covidct.preprocessing.assessment import assess
    from covidct.preprocessing.config import AssessmentConfig, LungSegmentationConfig
    from covidct.preprocessing.lung_segmentation import segment_lungs

    chest = make_phantom(50, size=96, covid=False, seed=4).volume
    for path in write_dicom_series(chest, tmp_path):
        ds = pydicom.dcmread(path)
        ds.ImageOrientationPatient = list(source_orientation("HFP"))
        ds.PatientPosition = "HFP"
        ds.save_as(path)
    volume = read_series(tmp_path)
    assert np.array_equal(volume.hu, chest.hu[:, ::-1, ::-1])
    seg = segment_lungs(volume.hu, volume.spacing_mm, LungSegmentationConfig())
    result = assess(seg, volume.hu, volume.spacing_mm, AssessmentConfig())
    assert "orientation" in result.codes
    truthful = assess(segment_lungs(chest.hu, chest.spacing_mm, LungSegmentationConfig()), chest.hu,
                      chest.spacing_mm, AssessmentConfig())
    assert "orientation" not in truthful.codes
