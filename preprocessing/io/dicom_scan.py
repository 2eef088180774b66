"""Read the headers of a DICOM folder's or zip's files (no pixel data) and classify them.

The files come from :mod:`preprocessing.io.input_files` (listing, special files, zip
limits; its names are re-exported here). Every file is read up to its Pixel Data and
classified: a slice candidate (:class:`SliceHeader`) or a skipped file
(:class:`SkippedFile`, with its reason). Zip members are read in memory; nothing is
extracted. A header parse stops after :data:`MAX_HEADER_ELEMENTS` top-level elements or
at an element longer than its file, data without the 'DICM' prefix is parsed only when it
starts like a data set, and the Deflated transfer syntax (inflated whole, without a
bound) is skipped.

Grouping, the choice of one series and the geometry checks live in
:mod:`preprocessing.io.dicom_series`.
"""

from __future__ import annotations

import warnings
import zipfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import BinaryIO

import pydicom
import pydicom.config
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_partial
from pydicom.uid import DeflatedExplicitVRLittleEndian

from covidct.errors import dicom_tag
from preprocessing.config import ReaderConfig
from preprocessing.io.dicom_identity import Identity, identity_of
from preprocessing.io.input_files import (  # noqa: F401 - re-exported for dicom_series and callers
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

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_SOP_CLASSES = ("1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.2.2")
LOCALIZER_IMAGE_TYPES = ("LOCALIZER", "SCOUT")
PIXEL_DATA_TAG = dicom_tag(0x7FE0, 0x0010)
_PIXEL_DATA_LE = b"\xe0\x7f\x10\x00"
_PIXEL_DATA_BE = b"\x7f\xe0\x00\x10"
#: Pixel Data, Float and Double Float Pixel Data: the header scan stops before them.
_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
#: Top-level data elements read before the header scan gives up (real CT: a few hundred).
MAX_HEADER_ELEMENTS = 10_000
#: Groups a DICOM data set without the 'DICM' preamble may start with (file meta, identifying).
_RAW_FIRST_GROUPS = (0x0002, 0x0008)
_UNDEFINED_LENGTH = 0xFFFFFFFF
#: Bytes searched for the Deflated transfer syntax UID in the file meta group.
_META_SEARCH_BYTES = 4096
#: |z component| of the slice normal above which a slice counts as axial (45 degrees).
AXIAL_MIN_NORMAL_Z = 0.7071

@dataclass(frozen=True)
class SliceHeader:
    """The header values of one CT image file that reading needs (mm, HU rescale).

    ``series_uid`` stays inside the scan (grouping only); it never reaches a CTVolume.
    Numeric values are ``None`` when the tag is absent or not numeric.
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
                result = classify_file(ref, fp, size)
            if isinstance(result, SkippedFile):
                skip_file(skipped, result.name, result.reason, result.kind)
            else:
                headers.append(result)
    return headers


def classify_file(ref: FileRef, fp: BinaryIO, size: int | None = None) -> SliceHeader | SkippedFile:
    """Read one file's header (``size``: its length in bytes, when known) and decide
    whether it is an axial CT image slice."""
    if DeflatedExplicitVRLittleEndian.encode() in fp.read(_META_SEARCH_BYTES):
        return SkippedFile(
            ref.name,
            f"transfer syntax {DeflatedExplicitVRLittleEndian.name!r} {dicom_tag(0x0002, 0x0010)} is not "
            "read: the data set inflates as a whole, without a size bound",
            UNSUPPORTED,
        )
    fp.seek(0)
    ds, has_pixels, problem = _read_header(fp, size)
    if ds is None:
        return SkippedFile(ref.name, problem, NOT_DICOM)
    with quiet_pydicom():  # values are validated lazily, on access
        return _classify_dataset(ref, ds, has_pixels)


@contextmanager
def quiet_pydicom() -> Iterator[None]:
    """Read without pydicom's value-validation warnings and log records (scanners write
    non-conformant values, e.g. UUIDs as UIDs; they do not matter here)."""
    with warnings.catch_warnings(), pydicom.config.disable_value_validation():
        warnings.simplefilter("ignore")
        yield


class _HeaderLimitError(Exception):
    """A header parse stopped by :func:`_header_guard`."""


def _header_guard(size: int | None) -> Callable[[int, str | None, int], bool]:
    """pydicom ``stop_when`` callback: stop at Pixel Data; raise after
    :data:`MAX_HEADER_ELEMENTS` elements or at an element longer than the file."""
    count = 0

    def stop(tag: int, vr: str | None, length: int) -> bool:
        nonlocal count
        if tag in _PIXEL_TAGS:
            return True
        count += 1
        if count > MAX_HEADER_ELEMENTS:
            raise _HeaderLimitError(f"more than {MAX_HEADER_ELEMENTS} data elements before Pixel Data")
        if size is not None and length != _UNDEFINED_LENGTH and length > size:
            raise _HeaderLimitError(
                f"data element {dicom_tag(tag >> 16, tag & 0xFFFF)} declares {length} bytes; the file has {size}"
            )
        return False

    return stop


def _starts_like_a_data_set(head: bytes) -> bool:
    """Whether bytes 0-1 hold the group of a data set's first element (either byte order)."""
    return len(head) >= 2 and any(
        int.from_bytes(head[:2], order) in _RAW_FIRST_GROUPS for order in ("little", "big")
    )


def _read_header(fp: BinaryIO, size: int | None = None) -> tuple[pydicom.Dataset | None, bool, str]:
    """(dataset, pixel data follows, problem); the dataset is ``None`` for non-DICOM."""
    head = fp.read(4)
    if not head:
        return None, False, "empty file (0 bytes); expected a DICOM file"
    with quiet_pydicom():
        try:
            fp.seek(0)
            ds = read_partial(fp, stop_when=_header_guard(size))
        except InvalidDicomError:
            if not _starts_like_a_data_set(head):
                return None, False, (
                    "not DICOM: no 'DICM' prefix at byte 128 and no data element of group 0002/0008 "
                    f"(SOP Class UID {dicom_tag(0x0008, 0x0016)}) at byte 0; expected a DICOM file"
                )
            try:  # DICOM without the 128-byte preamble and 'DICM' prefix
                fp.seek(0)
                ds = read_partial(fp, stop_when=_header_guard(size), force=True)
            except Exception as exc:  # noqa: BLE001 - anything unparsable is "not DICOM"
                return None, False, (
                    f"not DICOM: no 'DICM' prefix and unparsable ({exc}); expected a DICOM file"
                )
            if "SOPClassUID" not in ds:
                return None, False, (
                    "not DICOM: no 'DICM' prefix at byte 128 and no SOP Class UID "
                    f"{dicom_tag(0x0008, 0x0016)}; expected a DICOM file"
                )
        except Exception as exc:  # noqa: BLE001 - truncated/garbled header
            return None, False, (
                f"not DICOM: unreadable header ({type(exc).__name__}: {exc}); "
                "expected a DICOM file"
            )
    return ds, _pixel_data_follows(fp, ds), ""


def _pixel_data_follows(fp: BinaryIO, ds: pydicom.Dataset) -> bool:
    """Whether (7FE0,0010) comes next: stop_before_pixels leaves the file just before it."""
    tag = fp.read(4)
    return tag == (_PIXEL_DATA_LE if ds.original_encoding[1] in (True, None) else _PIXEL_DATA_BE)


def _classify_dataset(
    ref: FileRef, ds: pydicom.Dataset, has_pixels: bool
) -> SliceHeader | SkippedFile:
    sop_class = str(ds.get("SOPClassUID", "") or "")
    modality = str(ds.get("Modality", "") or "")
    is_ct_class = sop_class in (CT_IMAGE_STORAGE, *ENHANCED_CT_SOP_CLASSES)
    if not has_pixels and not (is_ct_class or (not sop_class and "Rows" in ds)):
        kind_name = pydicom.uid.UID(sop_class).name if sop_class else "unknown SOP class"
        return SkippedFile(
            ref.name,
            f"non-image object ({kind_name}): no Pixel Data {PIXEL_DATA_TAG}",
            NON_IMAGE,
        )
    if modality != "CT" and not (modality == "" and is_ct_class):  # trust the class if absent
        return SkippedFile(
            ref.name,
            f"Modality {dicom_tag(0x0008, 0x0060)} is {modality or '(missing)'!r}; expected 'CT'",
            MODALITY,
        )
    if sop_class and sop_class != CT_IMAGE_STORAGE:
        return SkippedFile(
            ref.name,
            f"SOP Class {dicom_tag(0x0008, 0x0016)} is {pydicom.uid.UID(sop_class).name!r}; "
            "expected single-frame 'CT Image Storage'",
            UNSUPPORTED,
        )
    frames = _int(ds, "NumberOfFrames") or 1
    samples = _int(ds, "SamplesPerPixel") or 1
    if frames > 1 or samples != 1:
        return SkippedFile(
            ref.name,
            f"{frames} frames {dicom_tag(0x0028, 0x0008)}, {samples} samples per pixel "
            f"{dicom_tag(0x0028, 0x0002)}; expected single-frame greyscale",
            UNSUPPORTED,
        )
    image_type = [str(v).upper() for v in _as_list(ds.get("ImageType"))]
    if any(t in image_type for t in LOCALIZER_IMAGE_TYPES):
        return SkippedFile(
            ref.name, f"localizer/scout image (Image Type {dicom_tag(0x0008, 0x0008)} "
            f"{'/'.join(image_type)})", LOCALIZER,
        )
    orientation = _floats(ds, "ImageOrientationPatient", 6)
    if orientation is not None:
        normal_z = orientation[0] * orientation[4] - orientation[1] * orientation[3]
        if abs(normal_z) < AXIAL_MIN_NORMAL_Z:
            return SkippedFile(
                ref.name,
                f"non-axial orientation {dicom_tag(0x0020, 0x0037)} {list(orientation)}",
                NON_AXIAL,
            )
    return SliceHeader(
        ref=ref,
        series_uid=str(ds.get("SeriesInstanceUID", "") or ""),
        rows=_int(ds, "Rows"),
        columns=_int(ds, "Columns"),
        orientation=orientation,
        position=_floats(ds, "ImagePositionPatient", 3),
        slice_location=_float(ds, "SliceLocation"),
        pixel_spacing=_floats(ds, "PixelSpacing", 2),
        slice_thickness=_float(ds, "SliceThickness"),
        intercept=_float(ds, "RescaleIntercept"),
        slope=_float(ds, "RescaleSlope"),
        has_pixel_data=has_pixels,
        identity=identity_of(ds),
    )


def _as_list(value: object) -> list:
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]


def _floats(ds: pydicom.Dataset, keyword: str, count: int) -> tuple[float, ...] | None:
    try:
        values = tuple(float(v) for v in _as_list(ds.get(keyword)))
    except (TypeError, ValueError):
        return None
    return values if len(values) == count else None


def _float(ds: pydicom.Dataset, keyword: str) -> float | None:
    values = _floats(ds, keyword, 1)
    return values[0] if values else None


def _int(ds: pydicom.Dataset, keyword: str) -> int | None:
    value = _float(ds, keyword)
    return int(value) if value is not None else None
