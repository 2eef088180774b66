"""List the files of a DICOM folder or zip and read their headers (no pixel data).

Every file is read with ``stop_before_pixels=True`` and classified: a slice candidate
(:class:`SliceHeader`) or a skipped file (:class:`SkippedFile`, with its reason). Files
are never opened outside the given root: symlinks that resolve outside a folder are
skipped, and a zip entry that would land outside the archive's root (``../x``, absolute
paths, drive letters) rejects the whole archive. Zip members are read in memory; nothing
is extracted.

Grouping, the choice of one series and the geometry checks live in
:mod:`preprocessing.io.dicom_series`.
"""

from __future__ import annotations

import logging
import os
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import pydicom
import pydicom.config
from pydicom.errors import InvalidDicomError
from pydicom.uid import DeflatedExplicitVRLittleEndian

from covidct.errors import UnsafeArchivePathError, UnsupportedFormatError, dicom_tag

logger = logging.getLogger(__name__)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_SOP_CLASSES = ("1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.2.2")
LOCALIZER_IMAGE_TYPES = ("LOCALIZER", "SCOUT")
PIXEL_DATA_TAG = dicom_tag(0x7FE0, 0x0010)
_PIXEL_DATA_LE = b"\xe0\x7f\x10\x00"
_PIXEL_DATA_BE = b"\x7f\xe0\x00\x10"
#: |z component| of the slice normal above which a slice counts as axial (45 degrees).
AXIAL_MIN_NORMAL_Z = 0.7071

# Skip kinds (SkippedFile.kind); dicom_series maps them to the error raised when no
# series is left.
NOT_DICOM, NON_IMAGE, MODALITY, UNSUPPORTED, LOCALIZER, NON_AXIAL, OTHER_SERIES = (
    "not_dicom", "non_image", "modality", "unsupported", "localizer", "non_axial", "other_series",
)


@dataclass(frozen=True)
class FileRef:
    """One file of the input: ``name`` is its POSIX path relative to the input root.

    ``path`` is the file on disk (folder input) or the zip archive; ``member`` the raw
    zip entry name (``None`` for folder input).
    """

    name: str
    path: str
    member: str | None = None

    @property
    def display(self) -> str:
        """How messages name the file: the path, or ``archive.zip::member``."""
        return f"{self.path}::{self.member}" if self.member is not None else self.path


@dataclass(frozen=True)
class SkippedFile:
    """A file left out of the volume, with a human-readable reason."""

    name: str
    reason: str
    kind: str


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


def list_folder(root: Path) -> tuple[list[FileRef], list[SkippedFile]]:
    """All regular files under ``root`` (recursive, sorted), never leaving it.

    Symlinked folders are not entered; a symlinked file is kept only when it resolves
    inside ``root``.
    """
    real_root = root.resolve()
    refs: list[FileRef] = []
    skipped: list[SkippedFile] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for fname in sorted(filenames):
            path = Path(dirpath) / fname
            rel = path.relative_to(root).as_posix()
            target = path.resolve()
            if not target.is_relative_to(real_root):
                reason = f"symlink resolves outside {root}; not followed"
                skip_file(skipped, rel, reason, UNSUPPORTED)
            elif not target.is_file():
                skip_file(skipped, rel, "not a regular file", UNSUPPORTED)
            else:
                refs.append(FileRef(rel, str(path)))
    return refs, skipped


def safe_member_name(archive: Path, member: str) -> str:
    """The member's POSIX path inside the archive, or :class:`UnsafeArchivePathError`."""
    name = member.replace("\\", "/")
    parts = PurePosixPath(name).parts
    if name.startswith("/") or (len(name) > 1 and name[1] == ":") or ".." in parts:
        raise UnsafeArchivePathError(
            f"{archive}: zip entry {member!r} points outside the archive's root; "
            "expected a relative path without '..'"
        )
    return "/".join(p for p in parts if p != ".")


def list_zip(archive: Path) -> list[FileRef]:
    """All file entries of a zip archive (sorted), after checking every entry's path."""
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise UnsupportedFormatError(f"{archive}: not a readable zip archive ({exc})") from exc
    refs = [
        FileRef(safe_member_name(archive, info.filename), str(archive), info.filename)
        for info in infos
        if not info.is_dir()
    ]
    return sorted(refs, key=lambda r: r.name)


def read_headers(refs: list[FileRef], skipped: list[SkippedFile]) -> list[SliceHeader]:
    """Read and classify every file; skipped files are appended to ``skipped`` and logged."""
    headers: list[SliceHeader] = []
    with ExitStack() as stack:
        archive = None
        if refs and refs[0].member is not None:
            archive = stack.enter_context(zipfile.ZipFile(refs[0].path))
        for ref in refs:
            try:
                fp = archive.open(ref.member or "") if archive else open(ref.path, "rb")
            except (zipfile.BadZipFile, RuntimeError, OSError) as exc:  # encrypted, no access
                skip_file(skipped, ref.name, f"cannot be opened ({exc})", NOT_DICOM)
                continue
            with fp:
                result = classify_file(ref, fp)
            if isinstance(result, SkippedFile):
                skip_file(skipped, result.name, result.reason, result.kind)
            else:
                headers.append(result)
    return headers


def classify_file(ref: FileRef, fp: BinaryIO) -> SliceHeader | SkippedFile:
    """Read one file's header and decide whether it is an axial CT image slice."""
    ds, has_pixels, problem = _read_header(fp)
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


def _read_header(fp: BinaryIO) -> tuple[pydicom.Dataset | None, bool, str]:
    """(dataset, pixel data follows, problem); the dataset is ``None`` for non-DICOM."""
    if not fp.read(1):
        return None, False, "empty file (0 bytes); expected a DICOM file"
    with quiet_pydicom():
        try:
            fp.seek(0)
            ds = pydicom.dcmread(fp, stop_before_pixels=True)
        except InvalidDicomError:
            try:  # DICOM without the 128-byte preamble and 'DICM' prefix
                fp.seek(0)
                ds = pydicom.dcmread(fp, stop_before_pixels=True, force=True)
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
    if ds.file_meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
        return True  # inflated in memory; the decode step tells
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
    )


def skip_file(skipped: list[SkippedFile], name: str, reason: str, kind: str) -> None:
    """Record a skipped file with its reason and log it (INFO)."""
    logger.info("skipping %s: %s", name, reason)
    skipped.append(SkippedFile(name, reason, kind))


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
