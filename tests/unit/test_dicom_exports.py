"""The DICOM forms hospitals export: Enhanced / Legacy Converted Enhanced CT (multi-frame),
CD/PACS exports with a DICOMDIR, folders holding several series. Each reads to the same
HU volume ``[N, H, W]``, spacing (mm) and positions (mm) as the plain folder of slices."""

from __future__ import annotations

import copy
import re
import shutil
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, encapsulate_extended, generate_frames, get_frame
from pydicom.fileset import FileSet
from pydicom.uid import (
    BasicTextSRStorage,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    LegacyConvertedEnhancedCTImageStorage,
    RLELossless,
    generate_uid,
)

from covidct.errors import (
    DuplicatePositionError,
    EmptySeriesError,
    GeometryMismatchError,
    ImplausibleSpacingError,
    PixelDecodeError,
    RescaleMissingError,
    ResourceLimitError,
    UnsupportedFormatError,
)
from covidct.preprocessing.reader_config import ReaderConfig
from covidct.preprocessing.io import dicom_decode
from covidct.preprocessing.io.dicom_decode import chunk_size, decode_series, tasks_for_slices
from covidct.preprocessing.io.dicom_scan import DIRECTORY, LOCALIZER, NON_AXIAL, NON_IMAGE, OTHER_SERIES
from covidct.preprocessing.io.dicom_series import scan_dicom
from covidct.preprocessing.io.series_reader import read_dicom_series, read_series
from covidct.preprocessing.io.series_writer import iter_dicom_datasets, write_dicom_series
from covidct.preprocessing.synthetic.phantom import make_phantom
from covidct.preprocessing.volume import CTVolume

#: Copied from the first single-frame data set to the multi-frame one (patient, study, pixels).
COMMON_KEYWORDS = (
    "SpecificCharacterSet", "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
    "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName", "Modality", "Manufacturer",
    "FrameOfReferenceUID", "SamplesPerPixel", "PhotometricInterpretation", "Rows", "Columns", "BitsAllocated",
    "BitsStored", "HighBit", "PixelRepresentation",
)


def item(**values) -> Dataset:
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def file_meta(sop_class: str, syntax: str = ExplicitVRLittleEndian) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    return meta


def multi_frame(
    singles: Sequence[Dataset],
    order: Sequence[int],
    *,
    sop_class: str = EnhancedCTImageStorage,
    rescale: str = "shared",
    intercepts: Sequence[float] | None = None,
    series_number: int = 5,
    description: str = "enhanced",
) -> Dataset:
    """An Enhanced-style CT data set whose frame k is ``singles[order[k - 1]]``: positions
    per frame, orientation and pixel measures shared, the rescale ``"per_frame"``,
    ``"shared"``, at the ``"top_level"`` or ``"none"`` (stored values are HU). With
    ``intercepts`` (per single), the stored values are re-based on each frame's intercept."""
    first = singles[0]
    ds = Dataset()
    ds.file_meta = file_meta(sop_class)
    for keyword in COMMON_KEYWORDS:
        if keyword in first:
            setattr(ds, keyword, first.data_element(keyword).value)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, ds.file_meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = generate_uid(), series_number, description
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.NumberOfFrames = len(order)
    shared = item(
        PlaneOrientationSequence=[item(ImageOrientationPatient=first.ImageOrientationPatient)],
        PixelMeasuresSequence=[item(PixelSpacing=first.PixelSpacing, SliceThickness=first.SliceThickness)],
    )
    stored = []
    per_frame = []
    for k, index in enumerate(order):
        single = singles[index]
        intercept = float(single.RescaleIntercept) if intercepts is None else intercepts[index]
        pixels = single.pixel_array.astype(np.int32) + int(float(single.RescaleIntercept)) - int(intercept)
        stored.append(pixels.astype(single.pixel_array.dtype))
        groups = item(
            PlanePositionSequence=[item(ImagePositionPatient=single.ImagePositionPatient)],
            FrameContentSequence=[item(InStackPositionNumber=k + 1)],
        )
        if rescale == "per_frame":
            rescaled = item(RescaleIntercept=intercept, RescaleSlope=1, RescaleType="HU")
            groups.PixelValueTransformationSequence = [rescaled]
        per_frame.append(groups)
    if rescale == "shared":
        shared.PixelValueTransformationSequence = [
            item(RescaleIntercept=first.RescaleIntercept, RescaleSlope=1, RescaleType="HU")
        ]
    elif rescale == "top_level":
        ds.RescaleIntercept, ds.RescaleSlope = first.RescaleIntercept, 1
    ds.SharedFunctionalGroupsSequence = [shared]
    ds.PerFrameFunctionalGroupsSequence = per_frame
    ds.PixelData = b"".join(np.ascontiguousarray(s).tobytes() for s in stored)
    return ds


def save(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def phantom() -> CTVolume:
    return make_phantom(num_slices=16, size=64, covid=False, seed=1).volume


@pytest.fixture(scope="module")
def singles(phantom) -> list[Dataset]:
    return [ds for _, ds in iter_dicom_datasets(phantom, pixel_representation=1, name_order="anatomical")]


@pytest.fixture(scope="module")
def plain(phantom, tmp_path_factory) -> CTVolume:
    folder = tmp_path_factory.mktemp("plain")
    write_dicom_series(phantom, folder)
    return read_series(folder)


def assert_same_volume(volume: CTVolume, reference: CTVolume) -> None:
    np.testing.assert_array_equal(volume.hu, reference.hu)
    assert volume.spacing_mm == pytest.approx(reference.spacing_mm, abs=1e-9)
    np.testing.assert_allclose(volume.positions_mm, reference.positions_mm, atol=1e-9)


SHUFFLED = (5, 0, 11, 3, 15, 8, 1, 13, 6, 10, 2, 14, 4, 9, 12, 7)


@pytest.mark.parametrize("sop_class", [EnhancedCTImageStorage, LegacyConvertedEnhancedCTImageStorage],
                         ids=["enhanced", "legacy-converted"])
@pytest.mark.parametrize("rescale", ["per_frame", "shared", "top_level", "none"])
def test_multi_frame_out_of_order_reads_like_the_folder(tmp_path, singles, plain, sop_class, rescale):
    intercepts = [float(-100 * (i % 4)) for i in range(len(singles))] if rescale == "per_frame" else None
    path = save(multi_frame(singles, SHUFFLED, sop_class=sop_class, rescale=rescale, intercepts=intercepts),
                tmp_path / "export" / "ct.dcm")
    volume, report = read_dicom_series(tmp_path / "export")
    assert_same_volume(volume, plain)
    # ascending position i is single i, which is frame SHUFFLED.index(i) + 1
    assert volume.source_frames == tuple(SHUFFLED.index(i) + 1 for i in range(16))
    assert volume.source_names == ("ct.dcm",) * 16
    assert report.source_frames == volume.source_frames and report.skipped == ()
    assert report.slices[0].ref.display == f"{path} (frame {SHUFFLED.index(0) + 1})"
    assert "16 slices (frames of 1 multi-frame file)" in report.chosen_series


def test_plain_folder_has_no_source_frames(singles, tmp_path):
    volume, report = read_dicom_series(plain_folder(tmp_path, singles))
    assert volume.source_frames == () == report.source_frames
    assert report.chosen_series.startswith("series 1 'covidct synthetic chest CT' [")
    assert report.chosen_series.endswith(": 16 slices, slice thickness 19.375 mm; the only axial CT series "
                                         "(ReaderConfig.series_rule 'most_slices' had no choice to make)")
    assert report.series_left_out == ()


def test_a_multi_frame_file_given_as_the_source(tmp_path, singles, plain):
    path = save(multi_frame(singles, SHUFFLED), tmp_path / "ct.dcm")
    assert_same_volume(read_series(path), plain)


@pytest.mark.parametrize("offsets", ["basic", "extended"])
def test_rle_multi_frame_in_a_zip_decoded_by_two_workers(tmp_path, offsets):
    volume = make_phantom(num_slices=48, size=32, covid=False, seed=2).volume
    rle = [ds for _, ds in iter_dicom_datasets(volume, compression="rle", name_order="anatomical")]
    raw = [ds for _, ds in iter_dicom_datasets(volume, name_order="anatomical")]
    ds = multi_frame(raw, list(range(47, -1, -1)))
    ds.file_meta.TransferSyntaxUID = RLELossless
    frames = [get_frame(s.PixelData, 0) for s in reversed(rle)]
    if offsets == "basic":
        ds.PixelData = encapsulate(frames)
    else:
        ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = encapsulate_extended(frames)
    ds["PixelData"].VR = "OB"
    save(ds, tmp_path / "ct.dcm")
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(tmp_path / "ct.dcm", "study/ct.dcm")
    read = read_series(archive, config=ReaderConfig(decode_workers=2))
    np.testing.assert_array_equal(read.hu, volume.hu)
    assert read.source_frames == tuple(range(48, 0, -1)) and read.source_format == "dicom-zip"


def test_an_undecodable_frame_is_named(tmp_path, phantom, singles):
    rle = [ds for _, ds in iter_dicom_datasets(phantom, compression="rle", name_order="anatomical")]
    ds = multi_frame(singles, range(16))
    ds.file_meta.TransferSyntaxUID = RLELossless
    frames = [get_frame(s.PixelData, 0) for s in rle]
    frames[2] = b"\x01" * 64  # an RLE header that promises segments the frame does not hold
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    save(ds, tmp_path / "ct.dcm")
    with pytest.raises(PixelDecodeError, match=r"ct\.dcm \(frame 3\): cannot decode Pixel Data \(7FE0,0010\)"):
        read_series(tmp_path, config=ReaderConfig(decode_workers=1))


def test_a_multi_frame_file_is_read_once_not_once_per_frame(tmp_path, singles, plain, monkeypatch):
    save(multi_frame(singles, SHUFFLED), tmp_path / "ct.dcm")
    tasks = tasks_for_slices(scan_dicom(tmp_path).slices)
    assert [t.frame for t in tasks] == [SHUFFLED.index(i) + 1 for i in range(16)]
    reads = []
    original = dicom_decode.read_pixel_dataset

    def counted(task, archive):
        reads.append(task.display)
        return original(task, archive)

    monkeypatch.setattr(dicom_decode, "read_pixel_dataset", counted)
    np.testing.assert_array_equal(decode_series(tasks, workers=1), plain.hu)
    assert len(reads) == 1
    assert chunk_size(tasks, 2) == 8  # one chunk (one read of the file) per worker
    single_frame = tasks_for_slices(scan_dicom(plain_folder(tmp_path, singles)).slices)
    assert chunk_size(single_frame, 2) == 2  # 4 chunks per worker


def plain_folder(tmp_path: Path, singles: Sequence[Dataset]) -> Path:
    for i, ds in enumerate(singles):
        save(ds, tmp_path / "plain" / f"IM{i:04d}.dcm")
    return tmp_path / "plain"


def test_thousands_of_frames_pass_the_header_guards(tmp_path):
    n = 3000
    rng = np.random.default_rng(0)
    hu = rng.integers(-1024, 1500, size=(n, 32, 32)).astype(np.int16)
    ds = Dataset()
    ds.file_meta = file_meta(EnhancedCTImageStorage)
    ds.SOPClassUID, ds.SOPInstanceUID = EnhancedCTImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.NumberOfFrames = "CT", generate_uid(), n
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.Rows, ds.Columns = 1, "MONOCHROME2", 32, 32
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.SharedFunctionalGroupsSequence = [item(
        PlaneOrientationSequence=[item(ImageOrientationPatient=[1, 0, 0, 0, 1, 0])],
        PixelMeasuresSequence=[item(PixelSpacing=[0.7, 0.7], SliceThickness=0.5)],
        PixelValueTransformationSequence=[item(RescaleIntercept=0, RescaleSlope=1)],
    )]
    ds.PerFrameFunctionalGroupsSequence = [
        item(PlanePositionSequence=[item(ImagePositionPatient=[0, 0, 0.5 * k])]) for k in range(n)
    ]
    ds.PixelData = hu.tobytes()
    save(ds, tmp_path / "ct.dcm")
    volume = read_series(tmp_path, config=ReaderConfig(max_slices=4000))
    np.testing.assert_array_equal(volume.hu, hu)
    assert volume.spacing_mm == pytest.approx((0.5, 0.7, 0.7))
    with pytest.raises(ResourceLimitError, match=r"ct\.dcm: Number of Frames \(0028,0008\) is 3000; expected at "
                       r"most 2000 \(ReaderConfig\.max_slices\)"):
        read_series(tmp_path)


def broken(singles, tmp_path, change) -> Path:
    ds = multi_frame(singles, range(16), rescale="per_frame")
    change(ds)
    return save(ds, tmp_path / "ct.dcm")


def test_a_frame_without_position_names_file_frame_and_tag(tmp_path, singles):
    def no_position(ds):
        del ds.PerFrameFunctionalGroupsSequence[4].PlanePositionSequence

    path = broken(singles, tmp_path, no_position)
    with pytest.raises(GeometryMismatchError, match=re.escape(f"{path} (frame 5)") + r": no slice position: Image "
                       r"Position \(0020,0032\) with Orientation \(0020,0037\), or Slice Location \(0020,1041\)"):
        read_series(tmp_path)


def test_a_frame_without_its_rescale_names_file_frame_and_tags(tmp_path, singles):
    broken(singles, tmp_path,
           lambda ds: delattr(ds.PerFrameFunctionalGroupsSequence[2], "PixelValueTransformationSequence"))
    with pytest.raises(RescaleMissingError, match=r"ct\.dcm \(frame 3\): Rescale Intercept \(0028,1052\) and "
                       r"Rescale Slope \(0028,1053\) missing or not numeric"):
        read_series(tmp_path)


def test_a_rescale_item_without_intercept(tmp_path, singles):
    def no_intercept(ds):
        del ds.PerFrameFunctionalGroupsSequence[0].PixelValueTransformationSequence[0].RescaleIntercept

    broken(singles, tmp_path, no_intercept)
    with pytest.raises(RescaleMissingError, match=r"ct\.dcm \(frame 1\): Rescale Intercept \(0028,1052\) missing"):
        read_series(tmp_path)


def test_no_pixel_measures_anywhere(tmp_path, singles):
    broken(singles, tmp_path, lambda ds: delattr(ds.SharedFunctionalGroupsSequence[0], "PixelMeasuresSequence"))
    with pytest.raises(ImplausibleSpacingError, match=r"ct\.dcm \(frame 1\): Pixel Spacing \(0028,0030\) is missing"):
        read_series(tmp_path)


def test_two_frames_at_one_position(tmp_path, singles):
    def same_position(ds):
        frames = ds.PerFrameFunctionalGroupsSequence
        frames[6].PlanePositionSequence = frames[5].PlanePositionSequence

    broken(singles, tmp_path, same_position)
    with pytest.raises(DuplicatePositionError, match=r"ct\.dcm \(frame [67]\) and .*ct\.dcm \(frame [67]\): both at"):
        read_series(tmp_path)


def test_one_per_frame_item_missing(tmp_path, singles):
    broken(singles, tmp_path, lambda ds: ds.PerFrameFunctionalGroupsSequence.pop())
    with pytest.raises(UnsupportedFormatError, match=r"ct\.dcm: Per-frame Functional Groups Sequence \(5200,9230\) has "
                       r"15 items; expected one per frame \(Number of Frames \(0028,0008\) is 16\)"):
        read_series(tmp_path)


def test_memory_budget_refuses_a_multi_frame_file_before_decoding(tmp_path, singles):
    def truncate(ds):
        ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]  # decoding would fail

    broken(singles, tmp_path, truncate)
    with pytest.raises(PixelDecodeError, match=r"ct\.dcm: Pixel Data \(7FE0,0010\) has 65536 bytes; expected 16 "):
        read_series(tmp_path)
    with pytest.raises(ResourceLimitError, match=r"the volume of 16 x 64 x 64 int16 voxels would take 131072 bytes.*"
                       r"expected at most 100000 bytes"):
        read_series(tmp_path, config=ReaderConfig(max_volume_bytes=100_000))


def write_sr(path: Path, template: Dataset, series_number: int = 99) -> None:
    ds = Dataset()
    ds.file_meta = file_meta(BasicTextSRStorage)
    ds.SOPClassUID, ds.SOPInstanceUID = BasicTextSRStorage, ds.file_meta.MediaStorageSOPInstanceUID
    for keyword in ("PatientName", "PatientID", "StudyInstanceUID"):
        if keyword in template:
            setattr(ds, keyword, template.data_element(keyword).value)
    ds.Modality, ds.SeriesInstanceUID = "SR", generate_uid()
    ds.SeriesNumber, ds.SeriesDescription = series_number, "report"
    save(ds, path)


def derived_series(singles, number: int, description: str, **changes) -> list[Dataset]:
    """Copies of ``singles`` in a new series (same patient and study) with ``changes``."""
    uid, out = generate_uid(), []
    for ds in singles:
        twin = copy.deepcopy(ds)
        twin.file_meta = file_meta(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
        twin.SOPInstanceUID = twin.file_meta.MediaStorageSOPInstanceUID
        twin.SeriesInstanceUID, twin.SeriesNumber, twin.SeriesDescription = uid, number, description
        for keyword, value in changes.items():
            setattr(twin, keyword, value)
        out.append(twin)
    return out


def test_folder_of_several_series_says_which_it_read(tmp_path, singles, plain):
    root = tmp_path / "study"
    for i, ds in enumerate(derived_series(singles, 2, "thin")):
        save(ds, root / "thin" / f"IM{i:04d}.dcm")
    thick = derived_series(singles[::2], 3, "thick recon", SliceThickness=10)
    save(multi_frame(thick, range(8), series_number=3, description="thick recon"), root / "thick" / "ct.dcm")
    save(derived_series(singles[:1], 1, "Topogram", ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])[0],
         root / "scout" / "IM0001.dcm")
    for i, ds in enumerate(derived_series(singles[:3], 4, "coronal", ImageOrientationPatient=[1, 0, 0, 0, 0, -1])):
        save(ds, root / "coronal" / f"IM{i:04d}.dcm")
    write_sr(root / "sr" / "report.dcm", singles[0])
    volume, report = read_dicom_series(root)
    assert_same_volume(volume, plain)
    kinds = {s.name: s.kind for s in report.skipped}
    assert kinds == {"thick/ct.dcm": OTHER_SERIES, "scout/IM0001.dcm": LOCALIZER, "coronal/IM0000.dcm": NON_AXIAL,
                     "coronal/IM0001.dcm": NON_AXIAL, "coronal/IM0002.dcm": NON_AXIAL, "sr/report.dcm": NON_IMAGE}
    assert len(report.skipped) == 6  # the multi-frame other series once, not once per frame
    assert report.chosen_series.startswith("series 2 'thin' [")
    assert "16 slices, slice thickness 19.375 mm; chosen by ReaderConfig.series_rule 'most_slices' (the most " \
        "slices, then the thinnest slice thickness) from 2 candidate axial CT series" in report.chosen_series
    left = sorted(report.series_left_out)
    assert len(left) == 4
    assert left[0].startswith("series 1 'Topogram'") and "1 file(s) left out by the scan: localizer" in left[0]
    assert left[1].startswith("series 3 'thick recon'") and "8 slices (frames of 1 multi-frame file), slice " \
        "thickness 10 mm; left out: rule 'most_slices' chose series 2 'thin'" in left[1]
    assert left[2].startswith("series 4 'coronal'") and "3 file(s) left out by the scan: non-axial" in left[2]
    assert left[3].startswith("series 99 'report'") and "non-image object (Basic Text SR Storage)" in left[3]
    text = report.chosen_series + " ".join(left)
    for identifier in ("ANON", "PHANTOM", str(singles[0].StudyInstanceUID), str(singles[0].SeriesInstanceUID)):
        assert identifier not in text


def fileset_export(datasets: Sequence[Dataset], folder: Path) -> Path:
    fs = FileSet()
    for ds in datasets:
        fs.add(ds)
    fs.write(folder)
    return folder


def test_dicomdir_export_reads_like_the_folder(tmp_path, singles, plain):
    folder = fileset_export(derived_series(singles, 2, "export"), tmp_path / "cd")
    volume, report = read_dicom_series(folder)
    assert_same_volume(volume, plain)
    assert all(n.startswith("PT000000/ST000000/SE000000/IM") and "." not in n for n in volume.source_names)
    assert [(s.name, s.kind) for s in report.skipped] == [("DICOMDIR", DIRECTORY)]
    assert "the index of a CD/PACS export, not an image" in report.skipped[0].reason
    shutil.rmtree(folder / "PT000000")
    with pytest.raises(EmptySeriesError, match=r"no axial CT image among 1 files \(DICOMDIR: DICOMDIR \(Media Storage "
                       r"Directory Storage"):
        read_series(folder)


# ------------------------------------------------------------------ real COVID-CT-MD series
# The originals carry UUIDs where UIDs belong: pydicom warns on reading them.
real_series = pytest.mark.filterwarnings("ignore:Invalid value for VR UI")

@pytest.fixture(scope="module")
def real(real_data_dir):
    """The plain read of P002 and copies of its data sets with valid UIDs (the originals
    carry empty SOP Instance UIDs and UUIDs as study/series UIDs)."""
    folder = real_data_dir / "P002"
    volume = read_series(folder)
    study, series, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    datasets = []
    for path in sorted(folder.iterdir()):
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame_of_reference
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.SeriesNumber = "20200401", "120000", "1", 2
        datasets.append(ds)
    return folder, volume, datasets


@pytest.mark.real_data
@real_series
def test_real_series_as_legacy_converted_enhanced_ct_frames_out_of_order(real, tmp_path):
    from highdicom.legacy import LegacyConvertedEnhancedCTImage

    _, plain_volume, datasets = real
    converted = LegacyConvertedEnhancedCTImage(
        datasets, series_instance_uid=generate_uid(), series_number=3, sop_instance_uid=generate_uid(),
        instance_number=1,
    )
    assert converted.file_meta.TransferSyntaxUID == datasets[0].file_meta.TransferSyntaxUID  # JPEG Lossless kept
    n = len(datasets)
    order = np.random.default_rng(7).permutation(n)  # frames and their per-frame items shuffled alike
    frames = list(generate_frames(converted.PixelData, number_of_frames=n))
    items = list(converted.PerFrameFunctionalGroupsSequence)
    converted.PerFrameFunctionalGroupsSequence = [items[i] for i in order]
    converted.PixelData = encapsulate([frames[i] for i in order])
    save(converted, tmp_path / "export" / "ct.dcm")
    volume, report = read_dicom_series(tmp_path / "export")
    assert_same_volume(volume, plain_volume)
    frame_at = {
        round(float(groups.PlanePositionSequence[0].ImagePositionPatient[2]), 3): k + 1
        for k, groups in enumerate(converted.PerFrameFunctionalGroupsSequence)
    }
    assert volume.source_frames == tuple(frame_at[round(float(p), 3)] for p in volume.positions_mm)
    assert sorted(volume.source_frames) == list(range(1, n + 1)) and volume.source_frames != tuple(range(1, n + 1))
    assert report.position_tag == "(0020,0032)" and report.skipped == ()


@pytest.mark.real_data
@real_series
def test_real_series_as_a_dicomdir_export(real, tmp_path):
    _, plain_volume, datasets = real
    volume, report = read_dicom_series(fileset_export(datasets, tmp_path / "cd"))
    assert_same_volume(volume, plain_volume)
    assert all("/" in n and "." not in n for n in volume.source_names)
    assert [(s.name, s.kind) for s in report.skipped] == [("DICOMDIR", DIRECTORY)]


@pytest.mark.real_data
@real_series
def test_real_series_among_a_thick_recon_scout_and_report(real, tmp_path):
    folder, plain_volume, datasets = real
    root = tmp_path / "study"
    shutil.copytree(folder, root / "axial")  # the originals, as exported
    first = pydicom.dcmread(folder / "IM0001.dcm", stop_before_pixels=True)
    hu = plain_volume.hu
    n, thick = len(datasets), []
    for k, ds in enumerate(derived_series(datasets[1 : 3 * (n // 3) : 3], 3, "thick 6 mm")):
        middle = n - 1 - (3 * k + 1)  # 3 slices averaged, 6 mm; IM0001 is the most superior slice
        mean = hu[middle - 1 : middle + 2].mean(axis=0)
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.PixelData = np.rint(mean - float(ds.RescaleIntercept)).astype("<u2").tobytes()
        ds["PixelData"].VR = "OW"
        ds.StudyInstanceUID, ds.SliceThickness, ds.BitsStored, ds.HighBit = first.StudyInstanceUID, 6, 16, 15
        thick.append(ds)
    for k, ds in enumerate(thick):
        save(ds, root / "thick" / f"IM{k:04d}.dcm")
    scout = derived_series(thick[:1], 1, "Topogram", ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])[0]
    scout.StudyInstanceUID = first.StudyInstanceUID
    save(scout, root / "scout" / "IM0001.dcm")
    write_sr(root / "sr" / "report", first)
    volume, report = read_dicom_series(root)
    assert_same_volume(volume, plain_volume)
    assert report.chosen_series.startswith(f"series without number (no description) [{plain_volume.series_key}]: "
                                           f"{len(datasets)} slices, slice thickness 2 mm")
    assert sorted(t.split(" [")[0] for t in report.series_left_out) == [
        "series 1 'Topogram'", "series 3 'thick 6 mm'", "series 99 'report'"]
    assert {s.kind for s in report.skipped} == {OTHER_SERIES, LOCALIZER, NON_IMAGE}
