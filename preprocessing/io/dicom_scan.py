"""Files of a DICOM folder or zip -> CT slice headers (:class:`SliceHeader`) or skipped files, no pixel data.

The files come from :mod:`covidct.preprocessing.io.input_files` (listing, special files, zip
limits; its names are re-exported here). Every file's header is read up to its Pixel Data,
within bounds (:mod:`covidct.preprocessing.io.dicom_header`), and classified: slice
candidates (:class:`SliceHeader`) or a skipped file (:class:`SkippedFile`, with its reason
and, where the header was read, its series, named by :func:`series_label`). A
single-frame CT Image Storage file gives one slice; an Enhanced or Legacy Converted
Enhanced CT file gives one slice per frame (``SliceHeader.frame``, values from its
functional groups: :mod:`covidct.preprocessing.io.dicom_multiframe`). A DICOMDIR (the index of a
CD/PACS export) is skipped as such, not as a bad file. Zip members are read in memory;
nothing is extracted. The Deflated transfer syntax (inflated whole, without a bound) is
skipped.

Grouping, the choice of one series and the geometry checks live in
:mod:`covidct.preprocessing.io.dicom_series`; :mod:`covidct.preprocessing.io.dicom_series_text`
words that choice (Series Number, Series Description, slice count and thickness in mm, the rule).
"""

from __future__ import annotations

import zipfile
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace
from typing import BinaryIO

import pydicom
from pydicom.uid import DeflatedExplicitVRLittleEndian, MediaStorageDirectoryStorage

from covidct.errors import dicom_tag
from covidct.preprocessing.io.dicom_header import quiet_pydicom, read_header
from covidct.preprocessing.io.dicom_identity import Identity, identity_of
from covidct.preprocessing.io.dicom_multiframe import (
    FrameTableError,
    frame_values,
    header_float,
    header_floats,
    header_int,
    header_list,
)
from covidct.preprocessing.io.input_files import (  # noqa: F401 - re-exported for dicom_series and callers
    DIRECTORY,
    LOCALIZER,
    MODALITY,
    NON_AXIAL,
    NON_IMAGE,
    NOT_DICOM,
    OTHER_SERIES,
    SPECIAL,
    TOO_LARGE,
    UNSUPPORTED,
    FileRef,
    SkippedFile,
    list_folder,
    list_zip,
    open_regular,
    safe_member_name,
    skip_file,
    special_file_kind,
)
from covidct.preprocessing.reader_config import ReaderConfig
from covidct.preprocessing.volume import make_series_key

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_SOP_CLASSES = ("1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.2.2")
LOCALIZER_IMAGE_TYPES = ("LOCALIZER", "SCOUT")
PIXEL_DATA_TAG = dicom_tag(0x7FE0, 0x0010)
#: Bytes searched for the Deflated transfer syntax UID in the file meta group.
_META_SEARCH_BYTES = 4096
#: |z component| of the slice normal above which a slice counts as axial (45 degrees).
AXIAL_MIN_NORMAL_Z = 0.7071


@dataclass(frozen=True)
class SliceHeader:
    """The header values of one CT image file that reading needs (mm, HU rescale).

    ``series_uid`` stays inside the scan (grouping only); it never reaches a CTVolume.
    Numeric values are ``None`` when the tag is absent or not numeric. A frame of a
    multi-frame file has ``frame`` (1-based, also in ``ref.frame`` so that messages name
    it) and the values of its functional groups.
    """

    ref: FileRef
    series_uid: str = field(repr=False)
    rows: int | None
    columns: int | None
    orientation: tuple[float, ...] | None  # (0020,0037), 6 direction cosines
    position: tuple[float, ...] | None  # (0020,0032), mm
    slice_location: float | None  # (0020,1041), mm
    pixel_spacing: tuple[float, ...] | None  # (0028,0030), (row, column) mm
    slice_thickness: float | None  # (0018,0050), mm
    intercept: float | None  # (0028,1052), HU
    slope: float | None  # (0028,1053)
    has_pixel_data: bool
    identity: Identity = field(repr=False)  # sha256 digests only, see dicom_identity
    frame: int | None = None  # 1-based frame number inside a multi-frame file; None: single-frame
    series_number: int | None = None  # (0020,0011)
    series_description: str = ""  # (0008,103E)


def read_headers(
    refs: list[FileRef], skipped: list[SkippedFile], config: ReaderConfig = ReaderConfig()
) -> list[SliceHeader]:
    """Read and classify every file; skipped files are appended to ``skipped`` and logged."""
    headers: list[SliceHeader] = []
    with ExitStack() as stack:
        archive = None
        if refs and refs[0].member is not None:
            archive = stack.enter_context(zipfile.ZipFile(refs[0].path))
        for ref in refs:
            try:
                if archive is not None:
                    fp, size = archive.open(ref.member or ""), archive.getinfo(ref.member or "").file_size
                else:
                    opened = open_regular(ref, config)
                    if isinstance(opened, SkippedFile):
                        skip_file(skipped, opened.name, opened.reason, opened.kind)
                        continue
                    fp, size = opened
            except (zipfile.BadZipFile, RuntimeError, NotImplementedError, OSError) as exc:
                skip_file(skipped, ref.name, f"cannot be opened ({exc})", NOT_DICOM)  # encrypted, no access
                continue
            with fp:
                result = classify_file(ref, fp, size, config)
            if isinstance(result, SkippedFile):
                skip_file(skipped, result.name, result.reason, result.kind, result.series)
            else:
                headers.extend(result)
    return headers


def classify_file(
    ref: FileRef, fp: BinaryIO, size: int | None = None, config: ReaderConfig = ReaderConfig()
) -> tuple[SliceHeader, ...] | SkippedFile:
    """Read one file's header (``size``: its length in bytes, when known) and decide
    whether it holds axial CT slices: one per single-frame file, one per frame of a
    multi-frame file (at most ``config.max_slices``)."""
    if DeflatedExplicitVRLittleEndian.encode() in fp.read(_META_SEARCH_BYTES):
        return SkippedFile(
            ref.name,
            f"transfer syntax {DeflatedExplicitVRLittleEndian.name!r} {dicom_tag(0x0002, 0x0010)} is not "
            "read: the data set inflates as a whole, without a size bound",
            UNSUPPORTED,
        )
    fp.seek(0)
    ds, has_pixels, problem = read_header(fp, size)
    if ds is None:
        return SkippedFile(ref.name, problem, NOT_DICOM)
    with quiet_pydicom():  # values are validated lazily, on access
        return _classify_dataset(ref, ds, has_pixels, config)


def _classify_dataset(
    ref: FileRef, ds: pydicom.Dataset, has_pixels: bool, config: ReaderConfig
) -> tuple[SliceHeader, ...] | SkippedFile:
    sop_class = str(ds.get("SOPClassUID", "") or "")
    media_class = str(getattr(ds, "file_meta", {}).get("MediaStorageSOPClassUID", "") or "")
    if MediaStorageDirectoryStorage in (sop_class, media_class) or "DirectoryRecordSequence" in ds:
        return SkippedFile(
            ref.name,
            f"DICOMDIR ({MediaStorageDirectoryStorage.name}, Media Storage SOP Class {dicom_tag(0x0002, 0x0002)}): "
            "the index of a CD/PACS export, not an image; the images it lists are read from the folder itself",
            DIRECTORY,
        )
    label = series_label_of(ds)
    modality = str(ds.get("Modality", "") or "")
    is_ct_class = sop_class in (CT_IMAGE_STORAGE, *ENHANCED_CT_SOP_CLASSES)
    if not has_pixels and not (is_ct_class or (not sop_class and "Rows" in ds)):
        kind_name = pydicom.uid.UID(sop_class).name if sop_class else "unknown SOP class"
        return SkippedFile(
            ref.name, f"non-image object ({kind_name}): no Pixel Data {PIXEL_DATA_TAG}", NON_IMAGE, label
        )
    if modality != "CT" and not (modality == "" and is_ct_class):  # trust the class if absent
        return SkippedFile(
            ref.name,
            f"Modality {dicom_tag(0x0008, 0x0060)} is {modality or '(missing)'!r}; expected 'CT'",
            MODALITY,
            label,
        )
    multi_frame = sop_class in ENHANCED_CT_SOP_CLASSES
    if sop_class and sop_class != CT_IMAGE_STORAGE and not multi_frame:
        return SkippedFile(
            ref.name,
            f"SOP Class {dicom_tag(0x0008, 0x0016)} is {pydicom.uid.UID(sop_class).name!r}; expected "
            "'CT Image Storage', 'Enhanced CT Image Storage' or 'Legacy Converted Enhanced CT Image Storage'",
            UNSUPPORTED,
            label,
        )
    frames = header_int(ds, "NumberOfFrames") or 1
    samples = header_int(ds, "SamplesPerPixel") or 1
    if (frames > 1 and not multi_frame) or samples != 1:
        return SkippedFile(
            ref.name,
            f"{frames} frames {dicom_tag(0x0028, 0x0008)}, {samples} samples per pixel "
            f"{dicom_tag(0x0028, 0x0002)}; expected greyscale, several frames only in an Enhanced CT file",
            UNSUPPORTED,
            label,
        )
    image_type = [str(v).upper() for v in header_list(ds.get("ImageType"))]
    if any(t in image_type for t in LOCALIZER_IMAGE_TYPES):
        return SkippedFile(
            ref.name, f"localizer/scout image (Image Type {dicom_tag(0x0008, 0x0008)} "
            f"{'/'.join(image_type)})", LOCALIZER, label,
        )
    common = SliceHeader(
        ref=ref,
        series_uid=str(ds.get("SeriesInstanceUID", "") or ""),
        rows=header_int(ds, "Rows"),
        columns=header_int(ds, "Columns"),
        orientation=header_floats(ds, "ImageOrientationPatient", 6),
        position=header_floats(ds, "ImagePositionPatient", 3),
        slice_location=header_float(ds, "SliceLocation"),
        pixel_spacing=header_floats(ds, "PixelSpacing", 2),
        slice_thickness=header_float(ds, "SliceThickness"),
        intercept=header_float(ds, "RescaleIntercept"),
        slope=header_float(ds, "RescaleSlope"),
        has_pixel_data=has_pixels,
        identity=identity_of(ds),
        series_number=header_int(ds, "SeriesNumber"),
        series_description=str(ds.get("SeriesDescription", "") or "").strip(),
    )
    if not multi_frame:
        slices: tuple[SliceHeader, ...] = (common,)
    else:
        try:
            values = frame_values(ds, config.max_slices)
        except FrameTableError as exc:
            return SkippedFile(ref.name, exc.reason, exc.kind, label)
        slices = tuple(
            replace(common, ref=replace(ref, frame=v.frame), **asdict(v))  # FrameValues: SliceHeader fields
            for v in values
        )
    for h in slices:
        if h.orientation is not None and abs(_normal_z(h.orientation)) < AXIAL_MIN_NORMAL_Z:
            where = "" if h.frame is None else f" of frame {h.frame}"
            return SkippedFile(
                ref.name,
                f"non-axial orientation {dicom_tag(0x0020, 0x0037)}{where} {list(h.orientation)}",
                NON_AXIAL,
                label,
            )
    return slices


def _normal_z(orientation: tuple[float, ...]) -> float:
    """The z component of the slice normal (row cosines x column cosines)."""
    return orientation[0] * orientation[4] - orientation[1] * orientation[3]


# -------------------------------------------------------------- naming a series
def series_label(number: int | None, description: str, key: str = "") -> str:
    """A readable, non-identifying name of a series: Series Number (0020,0011), Series
    Description (0008,103E) and the one-way ``key``, e.g. ``series 3 'Thorax 1.0' [1f...]``."""
    text = f"series {number}" if number is not None else "series without number"
    text += f" {description!r}" if description else " (no description)"
    return f"{text} [{key}]" if key else text


def series_label_of(ds: pydicom.Dataset) -> str:
    """:func:`series_label` of a data set's series (the key hashes its Series Instance UID)."""
    uid = str(ds.get("SeriesInstanceUID", "") or "")
    return series_label(
        header_int(ds, "SeriesNumber"),
        str(ds.get("SeriesDescription", "") or "").strip(),
        make_series_key(uid) if uid else "",
    )
