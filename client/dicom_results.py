"""DICOM result objects of one patient: the SEG and the SR, built from the source headers,
and, when ``DicomOutputConfig.key_images`` asks for them, a Secondary Capture series of key
images (:mod:`covidct.client.dicom_key_images`, made from the HU volume).

The client's reader returns a :class:`~covidct.preprocessing.volume.CTVolume` without headers;
:func:`read_source_headers` reads the headers of the chosen series' files again (no pixel
data) in the sorted order of ``CTVolume.source_names`` (slice i of the volume is header
i). When the source is one multi-frame file (``CTVolume.source_frames`` non-empty, every
name the same file) its one header is read once and slice i is its frame
``source_frames[i]`` (1-based). ``CTVolume.orientation`` (an
:class:`~covidct.preprocessing.orientation.InPlaneTransform`) says how the stored pixels were
turned into the volume's patient layout; the SEG and the key images are turned back
with it, so a source frame's Rows x Columns is the volume's ``H x W`` or, when the
transform transposes, ``W x H``.

:func:`check_source_headers` refuses a series whose headers lack what the SEG needs (the
Type 1 SOP Class/Instance UID, Study/Series UID and Frame of Reference UID, each a valid
UID; position, orientation, pixel spacing, matrix) with a
:class:`~covidct.errors.SourceHeaderError` naming the file and tag. Absent or empty Type 2
patient and study attributes are no error: they stay empty in the results
(:func:`covidct.client.dicom_seg.with_type2_attributes`). :func:`write_dicom_results` writes all
objects under temporary names and renames them only when all are complete: a failure
leaves no half-written file.

Only the HU volume and the spacing go to the server; the objects are made here.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from covidct.errors import CovidCTError, DicomResultsError, SourceHeaderError, dicom_tag
from covidct.preprocessing.orientation import IDENTITY, InPlaneTransform
from covidct.preprocessing.volume import CTVolume

from covidct.client.dicom_key_images import build_key_images
from covidct.client.dicom_seg import (
    DicomOutputConfig,
    build_segmentation,
    frame_geometry,
    is_multiframe,
    with_type2_attributes,
)
from covidct.client.dicom_sr import build_report
from covidct.client.result import PipelineResult

#: Keyword and tag of the Type 1 UIDs the SEG and SR need from each source header.
REQUIRED_UIDS = (
    ("SOPClassUID", dicom_tag(0x0008, 0x0016)),
    ("SOPInstanceUID", dicom_tag(0x0008, 0x0018)),
    ("StudyInstanceUID", dicom_tag(0x0020, 0x000D)),
    ("SeriesInstanceUID", dicom_tag(0x0020, 0x000E)),
    ("FrameOfReferenceUID", dicom_tag(0x0020, 0x0052)),
)
#: Keyword and tag of every attribute the SEG and SR need from each single-frame source
#: header (a multi-frame header holds the geometry in its functional groups instead).
REQUIRED_ATTRIBUTES = (
    *REQUIRED_UIDS,
    ("ImagePositionPatient", dicom_tag(0x0020, 0x0032)),
    ("ImageOrientationPatient", dicom_tag(0x0020, 0x0037)),
    ("PixelSpacing", dicom_tag(0x0028, 0x0030)),
    ("Rows", dicom_tag(0x0028, 0x0010)),
    ("Columns", dicom_tag(0x0028, 0x0011)),
)
SEG_SUFFIX, SR_SUFFIX = "_seg.dcm", "_sr.dcm"
#: File name suffix of key image number i (1-based, slice order): ``_key01.dcm``.
KEY_IMAGE_SUFFIX = "_key{:02d}.dcm"


@dataclass(frozen=True)
class DicomResults:
    """The result objects of one patient: ``segmentation`` (SEG), ``report`` (SR) and the
    ``key_images`` (Secondary Capture, one series; empty unless asked for)."""

    segmentation: hd.seg.Segmentation
    report: hd.sr.Comprehensive3DSR
    key_images: tuple[hd.sc.SCImage, ...] = ()

    @property
    def datasets(self) -> tuple[Dataset, ...]:
        """``(SEG, SR, *key images)``, the order they are stored in (the SR references the SEG)."""
        return self.segmentation, self.report, *self.key_images


def _read_header(root: Path, name: str, archive: zipfile.ZipFile | None) -> Dataset:
    if archive is not None:
        with archive.open(name) as fp:
            return pydicom.dcmread(fp, stop_before_pixels=True)
    path = root / name if root.is_dir() else root
    return pydicom.dcmread(path, stop_before_pixels=True)


def read_source_headers(source: str | os.PathLike, source_names: Sequence[str]) -> list[Dataset]:
    """The headers (no pixel data) of ``source_names`` inside ``source`` (DICOM folder, zip
    or single file), in the given order.

    Raises SourceHeaderError when the source is no DICOM input, names no file, or a file
    cannot be read as DICOM.
    """
    root = Path(source)
    if not source_names:
        raise SourceHeaderError(
            f"{root}: the series names no source file (not a DICOM input?); DICOM SEG/SR need the source headers"
        )
    headers: list[Dataset] = []
    name = str(root)
    try:
        with ExitStack() as stack:
            archive = None
            if root.is_file() and root.suffix.lower() == ".zip":
                archive = stack.enter_context(zipfile.ZipFile(root))
            for name in source_names:
                headers.append(_read_header(root, name, archive))
    except (OSError, KeyError, zipfile.BadZipFile, InvalidDicomError) as exc:
        raise SourceHeaderError(f"{root}: header of {name} cannot be read for DICOM SEG/SR ({exc})") from exc
    return headers


def _check_present(header: Dataset, name: str, attributes: Sequence[tuple[str, str]]) -> None:
    """SourceHeaderError naming ``name`` and the tag unless every attribute is present and
    non-empty and every UID among them is a valid UID (digits and dots, 64 characters at most)."""
    for keyword, tag in attributes:
        value = str(header.get(keyword, "") or "").strip()
        if not value:
            raise SourceHeaderError(f"{name}: {keyword} {tag} is missing or empty; DICOM SEG/SR need it")
        if keyword.endswith("UID") and not UID(value).is_valid:
            raise SourceHeaderError(
                f"{name}: {keyword} {tag} is {value[:80]!r}, not a valid UID (digits and dots, "
                "at most 64 characters); DICOM SEG/SR need it"
            )


def _check_matrix(header: Dataset, name: str, shape_hw: tuple[int, int], orientation: InPlaneTransform) -> None:
    rows, cols = int(header.Rows), int(header.Columns)
    if orientation.patient_shape((rows, cols)) != tuple(shape_hw):
        h, w = shape_hw
        raise SourceHeaderError(
            f"{name}: Rows/Columns {dicom_tag(0x0028, 0x0010)} {rows} x {cols} "
            f"({orientation.describe()} to the patient layout); expected the volume's {h} x {w}"
        )


def _check_multiframe(
    header: Dataset, name: str, shape_nhw: tuple[int, int, int], orientation: InPlaneTransform,
    source_frames: Sequence[int],
) -> None:
    n, h, w = shape_nhw
    if not is_multiframe(header):
        raise SourceHeaderError(
            f"{name}: source frames given, but Number of Frames {dicom_tag(0x0028, 0x0008)} or the "
            f"Per-Frame Functional Groups {dicom_tag(0x5200, 0x9230)} are missing; expected a multi-frame image"
        )
    _check_present(header, name, (*REQUIRED_UIDS, ("Rows", dicom_tag(0x0028, 0x0010)),
                                  ("Columns", dicom_tag(0x0028, 0x0011))))
    _check_matrix(header, name, (h, w), orientation)
    if len(source_frames) != n:
        raise SourceHeaderError(f"{name}: {len(source_frames)} source frames for a volume of {n} slices")
    count = int(header.NumberOfFrames)
    for frame in source_frames:
        if not 1 <= int(frame) <= count:
            raise SourceHeaderError(
                f"{name}: source frame {frame}; expected 1..{count} (Number of Frames {dicom_tag(0x0028, 0x0008)})"
            )
        try:
            frame_geometry(header, int(frame))
        except SourceHeaderError as exc:
            raise SourceHeaderError(f"{name}: {exc}") from exc
    if len(set(source_frames)) != len(source_frames):
        raise SourceHeaderError(f"{name}: {len(source_frames) - len(set(source_frames))} repeated source frames")


def check_source_headers(
    headers: Sequence[Dataset],
    names: Sequence[str],
    shape_nhw: tuple[int, int, int],
    *,
    orientation: InPlaneTransform = IDENTITY,
    source_frames: Sequence[int] = (),
) -> None:
    """SourceHeaderError unless the headers fit the volume of ``shape_nhw`` (``[N, H, W]``,
    patient layout).

    Single-frame sources (``source_frames`` empty): one header per slice, each with
    :data:`REQUIRED_ATTRIBUTES` (UIDs valid), one Frame of Reference, one series, distinct
    SOP instances and Rows x Columns that ``orientation`` turns into ``H x W``. One
    multi-frame source: ``headers`` is its one header, with the UIDs, Rows x Columns as
    above, and position, orientation and pixel spacing for every frame in
    ``source_frames`` (N distinct 1-based frame numbers).
    """
    n, h, w = shape_nhw
    if source_frames:
        if len(headers) != 1:
            raise SourceHeaderError(
                f"source series: {len(headers)} headers with source frames; expected the one multi-frame source"
            )
        _check_multiframe(headers[0], names[0] if names else "source", shape_nhw, orientation, source_frames)
        return
    if len(headers) != n:
        raise SourceHeaderError(f"source series: {len(headers)} headers for a volume of {n} slices")
    for header, name in zip(headers, names, strict=True):
        _check_present(header, name, REQUIRED_ATTRIBUTES)
        _check_matrix(header, name, (h, w), orientation)
    for keyword, tag in (("FrameOfReferenceUID", dicom_tag(0x0020, 0x0052)),
                         ("SeriesInstanceUID", dicom_tag(0x0020, 0x000E))):
        values = {str(header.get(keyword)) for header in headers}
        if len(values) > 1:
            raise SourceHeaderError(f"source series: {len(values)} different {keyword} {tag}; expected one")
    uids = {str(header.SOPInstanceUID) for header in headers}
    if len(uids) != len(headers):
        raise SourceHeaderError(
            f"source series: {len(headers) - len(uids)} duplicate SOPInstanceUID {dicom_tag(0x0008, 0x0018)}"
        )


def build_dicom_results(
    headers: Sequence[Dataset],
    result: PipelineResult,
    config: DicomOutputConfig = DicomOutputConfig(),
    *,
    names: Sequence[str] | None = None,
    hu: np.ndarray | None = None,
    orientation: InPlaneTransform = IDENTITY,
    source_frames: Sequence[int] = (),
) -> DicomResults:
    """SEG and SR of ``result`` over the source ``headers``: one per slice of the sent
    volume (ascending position), or the one header of a multi-frame source whose frame
    ``source_frames[i]`` (1-based) is slice i. ``names`` label the headers in error
    messages. ``orientation`` (``CTVolume.orientation``) maps the masks and key images
    from the volume's patient layout back to the stored layout of the source frames.

    With ``config.key_images`` > 0 also the key images, rendered from ``hu`` (int16
    ``[N, H, W]`` HU of the sent volume, patient layout); DicomResultsError when ``hu``
    is not given.
    """
    names = list(names) if names is not None else [f"slice {i}" for i in range(len(headers))]
    rows = int(headers[0].get("Rows", 0) or 0) if headers else 0
    cols = int(headers[0].get("Columns", 0) or 0) if headers else 0
    slices = len(source_frames) if source_frames else len(headers)
    shape = (result.num_slices or slices, *orientation.patient_shape((rows, cols)))
    check_source_headers(headers, names, shape, orientation=orientation, source_frames=source_frames)
    frames = tuple(int(f) for f in source_frames)
    headers = with_type2_attributes(headers)  # once here: the builders find them complete
    try:
        segmentation = build_segmentation(headers, result, config, orientation=orientation, source_frames=frames)
        report = build_report(headers, segmentation, result, config)
    except CovidCTError:
        raise
    except (ValueError, TypeError, AttributeError) as exc:
        raise DicomResultsError(f"DICOM SEG/SR cannot be built from the source headers: {exc}") from exc
    if config.key_images == 0:
        return DicomResults(segmentation, report)
    if hu is None:
        raise DicomResultsError(f"key images ({config.key_images} asked for) need the HU volume; none was given")
    try:
        key_images = build_key_images(headers, hu, result, config, orientation=orientation, source_frames=frames)
    except CovidCTError:
        raise
    except (ValueError, TypeError, AttributeError) as exc:
        raise DicomResultsError(f"DICOM key images cannot be built from the source headers: {exc}") from exc
    return DicomResults(segmentation, report, tuple(key_images))


def dicom_results_for(
    source: str | os.PathLike,
    volume: CTVolume,
    result: PipelineResult,
    config: DicomOutputConfig = DicomOutputConfig(),
) -> DicomResults:
    """Read the headers of ``volume``'s source files in ``source`` and build SEG and SR
    (and the key images from ``volume.hu`` when ``config.key_images`` > 0), mapped back to
    the source frames with ``volume.orientation``.

    A multi-frame source (``volume.source_frames`` non-empty) must be one file: its header
    is read once. Raises SourceHeaderError naming the file and tag.
    """
    names = list(volume.source_names)
    if volume.source_frames:
        files = sorted(set(names))
        if len(files) != 1:
            raise SourceHeaderError(
                f"{source}: the volume's slices come from frames of {len(files)} files "
                f"({', '.join(files[:3])}{', ...' if len(files) > 3 else ''}); DICOM SEG/SR support one "
                "multi-frame source or single-frame files"
            )
        names = files
    headers = read_source_headers(source, names)
    check_source_headers(headers, names, volume.hu.shape, orientation=volume.orientation,
                         source_frames=volume.source_frames)
    return build_dicom_results(
        headers, result, config, names=names, hu=volume.hu, orientation=volume.orientation,
        source_frames=volume.source_frames,
    )


def write_dicom_results(results: DicomResults, out_dir: str | os.PathLike, name: str) -> list[Path]:
    """Write ``<out_dir>/<name>_seg.dcm``, ``<name>_sr.dcm`` and the key images
    ``<name>_key01.dcm``, ... (slice order); return the paths.

    All are written under temporary names first and renamed only when all are
    complete. Raises DicomResultsError naming the file when writing fails.
    """
    out = Path(out_dir)
    targets = [out / f"{name}{SEG_SUFFIX}", out / f"{name}{SR_SUFFIX}"]
    targets += [out / f"{name}{KEY_IMAGE_SUFFIX.format(i)}" for i in range(1, len(results.key_images) + 1)]
    temporaries = [path.with_name(f".{path.name}.{os.getpid()}.tmp") for path in targets]
    try:
        out.mkdir(parents=True, exist_ok=True)
        for dataset, temporary in zip(results.datasets, temporaries, strict=True):
            dataset.save_as(temporary, enforce_file_format=True)
        for temporary, target in zip(temporaries, targets, strict=True):
            os.replace(temporary, target)
    except OSError as exc:
        raise DicomResultsError(f"{out}: DICOM results of {name} cannot be written ({exc.strerror})") from exc
    finally:
        for temporary in temporaries:
            with suppress(OSError):
                temporary.unlink(missing_ok=True)
    return targets
