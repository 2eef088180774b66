"""Read the headers of a DICOM folder's or zip's files (no pixel data) and classify them.

The files come from :mod:`preprocessing.io.input_files` (listing, special files, zip
limits; its names are re-exported here). Every file is read up to its Pixel Data and
classified: slice candidates (:class:`SliceHeader`) or a skipped file
(:class:`SkippedFile`, with its reason and, where the header was read, its series). A
single-frame CT Image Storage file gives one slice; an Enhanced or Legacy Converted
Enhanced CT file gives one slice per frame (``SliceHeader.frame``, values from its
functional groups: :mod:`preprocessing.io.dicom_multiframe`). A DICOMDIR (the index of a
CD/PACS export) is skipped as such, not as a bad file. Zip members are read in memory;
nothing is extracted. A header parse stops after :data:`MAX_HEADER_ELEMENTS` top-level
elements or at an element longer than its file (a functional-group sequence of thousands
of frames is one top-level element), data without the 'DICM' prefix is parsed only when
it starts like a data set, and the Deflated transfer syntax (inflated whole, without a
bound) is skipped.

Grouping, the choice of one series and the geometry checks live in
:mod:`preprocessing.io.dicom_series`; :func:`describe_series_choice` words that choice
(Series Number, Series Description, slice count and thickness in mm, the rule).
"""

from __future__ import annotations

import statistics
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import BinaryIO

import pydicom
import pydicom.config
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_partial
from pydicom.uid import DeflatedExplicitVRLittleEndian, MediaStorageDirectoryStorage

from covidct.errors import dicom_tag
from preprocessing.config import ReaderConfig
from preprocessing.io.dicom_identity import Identity, identity_of
from preprocessing.io.dicom_multiframe import (
    FrameTableError,
    frame_values,
    header_float,
    header_floats,
    header_int,
    header_list,
)
from preprocessing.io.input_files import (  # noqa: F401 - re-exported for dicom_series and callers
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
from preprocessing.volume import make_series_key

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
#: How the series rules of ``ReaderConfig.series_rule`` rank candidate series.
SERIES_RULE_TEXTS = {
    "most_slices": "the most slices, then the thinnest slice thickness",
    "thinnest": "the smallest slice spacing, then the most slices",
}


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
    ds, has_pixels, problem = _read_header(fp, size)
    if ds is None:
        return SkippedFile(ref.name, problem, NOT_DICOM)
    with quiet_pydicom():  # values are validated lazily, on access
        return _classify_dataset(ref, ds, has_pixels, config)


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


# -------------------------------------------------------------- the series choice, in words
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


def describe_series_choice(
    groups: Mapping[str, Sequence[SliceHeader]],
    chosen: str,
    skipped: Sequence[SkippedFile],
    rule: str,
    key: Callable[[str, list[SliceHeader]], str],
) -> tuple[str, tuple[str, ...]]:
    """``(chosen, left out)``: which candidate series (``groups``, by Series Instance UID)
    the series ``rule`` chose, and one text per series left out: the other candidates and
    the series whose files the scan skipped (scouts, reformats, reports). Each names Series
    Number, Series Description, slice count, slice thickness (mm) and the one-way ``key``
    (``key(uid, members)``); none names the patient."""
    labels = {uid: _group_label(members, key(uid, list(members))) for uid, members in groups.items()}
    others = len(groups) - 1
    chosen_text = (
        f"{_group_summary(labels[chosen], groups[chosen])}; chosen by ReaderConfig.series_rule {rule!r} "
        f"({SERIES_RULE_TEXTS.get(rule, rule)}) from {len(groups)} candidate axial CT series"
        if others else
        f"{_group_summary(labels[chosen], groups[chosen])}; the only axial CT series "
        f"(ReaderConfig.series_rule {rule!r} had no choice to make)"
    )
    left_out = [
        f"{_group_summary(labels[uid], members)}; left out: rule {rule!r} chose {labels[chosen]}"
        for uid, members in groups.items()
        if uid != chosen
    ]
    by_series: dict[str, list[SkippedFile]] = {}
    for s in skipped:
        if s.series and s.kind != OTHER_SERIES and s.series not in labels.values():
            by_series.setdefault(s.series, []).append(s)
    for label, files in by_series.items():
        kinds = sorted({f.kind for f in files} - {files[0].kind})
        more = f"; also {', '.join(kinds)}" if kinds else ""
        left_out.append(f"{label}: {len(files)} file(s) left out by the scan: {files[0].reason}{more}")
    return chosen_text, tuple(left_out)


def _group_label(members: Sequence[SliceHeader], key: str) -> str:
    number = next((h.series_number for h in members if h.series_number is not None), None)
    description = next((h.series_description for h in members if h.series_description), "")
    return series_label(number, description, key)


def _group_summary(label: str, members: Sequence[SliceHeader]) -> str:
    thickness = [h.slice_thickness for h in members if h.slice_thickness]
    mm = f"{statistics.median(thickness):g} mm" if thickness else "unknown"
    files = len({h.ref.name for h in members})
    where = f" (frames of {files} multi-frame file{'s' if files > 1 else ''})" if any(h.frame for h in members) else ""
    return f"{label}: {len(members)} slices{where}, slice thickness {mm}"
