"""Group scanned DICOM slices into series, pick one, and validate its geometry.

Works on headers only (:mod:`covidct.preprocessing.io.dicom_scan`), so every check (one patient
and study, slice count, matrix size and memory budget, rescale, geometry, spacing,
positions) happens before a single pixel is decoded.

Slices are sorted by patient position, inferior to superior: Image Position (Patient)
(0020,0032) projected onto the slice normal of Image Orientation (Patient) (0020,0037)
turned to point superior (so a feet-first series sorts like a head-first one); where a
slice lacks them, Slice Location (0020,1041) for the whole series. Never by file name.

The in-plane layout comes from (0020,0037) too: every axis-aligned orientation (supine,
prone, feet-first, decubitus) gets the :class:`~covidct.preprocessing.orientation.InPlaneTransform`
that brings its stored pixels to the patient frame of every ``CTVolume`` (rows anterior ->
posterior, columns patient right -> left); a series whose direction cosines lie more
than ``ReaderConfig.max_oblique_deg`` off the patient axes (oblique, gantry tilt) raises
:class:`~covidct.errors.ObliqueSeriesError`. Gaps between slice positions are not an
error here: the positions travel with the volume and the server's assessment decides
(``slice_gap`` when lung lies at a gap).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from covidct.errors import (
    ConfigError,
    DuplicatePositionError,
    EmptySeriesError,
    GeometryMismatchError,
    MissingPixelDataError,
    MixedSeriesError,
    ModalityError,
    NotDicomError,
    ObliqueSeriesError,
    RescaleMissingError,
    ResourceLimitError,
    SeriesReadError,
    UnsupportedFormatError,
    dicom_tag,
)
from covidct.preprocessing.io import dicom_scan as scan
from covidct.preprocessing.reader_config import ReaderConfig
from covidct.preprocessing.io.dicom_identity import check_one_patient
from covidct.preprocessing.io.dicom_scan import FileRef, SkippedFile, SliceHeader
from covidct.preprocessing.io.dicom_series_text import describe_series_choice
from covidct.preprocessing.io.limits import check_matrix, check_volume_bytes
from covidct.preprocessing.io.reader_checks import (
    check_pixel_spacing,
    check_rescale,
    check_slice_count,
    check_slice_spacing,
)
from covidct.preprocessing.orientation import (
    IDENTITY,
    InPlaneTransform,
    obliquity_degrees,
    superior_normal,
    transform_from_orientation,
)
from covidct.preprocessing.volume import make_series_key

SERIES_RULES = ("most_slices", "thinnest")
#: Two slices closer than this along the normal are at one position (mm).
DUPLICATE_TOLERANCE_MM = 0.01
#: Largest allowed difference between direction cosines of slices of one series.
ORIENTATION_TOLERANCE = 1e-3
IPP = dicom_tag(0x0020, 0x0032)
ROWS = dicom_tag(0x0028, 0x0010)
COLUMNS = dicom_tag(0x0028, 0x0011)
PIXEL_SPACING = dicom_tag(0x0028, 0x0030)
IOP = dicom_tag(0x0020, 0x0037)
SLICE_LOCATION = dicom_tag(0x0020, 0x1041)


@dataclass(frozen=True)
class ScanReport:
    """What the header scan found and chose (no pixel data, no patient identifiers).

    Attributes:
        source: the input path as given.
        source_format: ``"dicom"`` (folder or single file) or ``"dicom-zip"``.
        slices: the chosen series' headers, sorted by position ascending.
        positions_mm: float64 ``[N]`` ascending slice positions along the normal (mm).
        spacing_mm: (z, y, x) mm in the patient frame; z is the median distance between
            sorted positions, (y, x) the Pixel Spacing after ``orientation``.
        series_key: :func:`make_series_key` of the Series Instance UID.
        position_tag: the tag positions came from, ``(0020,0032)`` or ``(0020,1041)``.
        skipped: every file left out, with its reason.
        series_sizes: (series_key, slice count) of every candidate series.
        orientation: the in-plane transform from the stored pixels to the patient frame.
        chosen_series: which series was read and why, in words (Series Number, Series
            Description, slice count, slice thickness mm, the series rule; no patient identifier).
        series_left_out: one such text per series left out (other candidates; series whose
            files the scan skipped: scouts, reformats, reports).
    """

    source: str
    source_format: str
    slices: tuple[SliceHeader, ...]
    positions_mm: np.ndarray
    spacing_mm: tuple[float, float, float]
    series_key: str
    position_tag: str
    skipped: tuple[SkippedFile, ...]
    series_sizes: tuple[tuple[str, int], ...]
    orientation: InPlaneTransform = IDENTITY
    chosen_series: str = ""
    series_left_out: tuple[str, ...] = ()

    @property
    def source_names(self) -> tuple[str, ...]:
        return tuple(h.ref.name for h in self.slices)

    @property
    def source_frames(self) -> tuple[int, ...]:
        """Per slice, its 1-based frame in its file; empty when every file is single-frame."""
        if all(h.frame is None for h in self.slices):
            return ()
        return tuple(h.frame or 1 for h in self.slices)


def scan_dicom(source: Path, config: ReaderConfig = ReaderConfig()) -> ScanReport:
    """Scan a DICOM folder, zip or single file: pick one CT series and validate it."""
    if config.series_rule not in SERIES_RULES:
        raise ConfigError(
            f"ReaderConfig.series_rule is {config.series_rule!r}; expected one of {SERIES_RULES}"
        )
    skipped: list[SkippedFile] = []
    if source.is_dir():
        refs, skipped = scan.list_folder(source, config)
        fmt = "dicom"
    elif source.suffix.lower() == ".zip":
        refs, fmt = scan.list_zip(source, config), "dicom-zip"
    else:
        refs, fmt = [FileRef(source.name, str(source))], "dicom"
    if not refs and not skipped:
        raise EmptySeriesError(
            f"{source}: holds no file; expected the DICOM files of one CT series"
        )
    headers = scan.read_headers(refs, skipped, config)
    groups: dict[str, list[SliceHeader]] = {}
    for header in headers:
        groups.setdefault(header.series_uid, []).append(header)
    if not groups:
        raise _nothing_left_error(source, refs, skipped)
    check_one_patient(str(source), [(h.ref.display, h.identity) for h in headers])
    uid = _pick_series(groups, config.series_rule)
    for other_uid, members in groups.items():
        if other_uid != uid:
            reason = (
                f"other series {_key(other_uid, members)} ({len(members)} slices); "
                f"rule {config.series_rule!r} chose {_key(uid, groups[uid])}"
            )
            for name in dict.fromkeys(h.ref.name for h in members):  # a multi-frame file once
                scan.skip_file(skipped, name, reason, scan.OTHER_SERIES)
    chosen_series, left_out = describe_series_choice(groups, uid, skipped, config.series_rule, _key)
    ordered, positions, tag = _sorted_positions(groups[uid], config)
    spacing = _validate(ordered, positions, tag, config)
    orientation = _in_plane_transform(ordered, config)
    return ScanReport(
        source=str(source),
        source_format=fmt,
        slices=tuple(ordered),
        positions_mm=positions,
        spacing_mm=(spacing[0], *orientation.patient_spacing(spacing[1:])),
        series_key=_key(uid, ordered),
        position_tag=tag,
        skipped=tuple(skipped),
        series_sizes=tuple((_key(u, m), len(m)) for u, m in groups.items()),
        orientation=orientation,
        chosen_series=chosen_series,
        series_left_out=left_out,
    )


def _in_plane_transform(ordered: list[SliceHeader], config: ReaderConfig) -> InPlaneTransform:
    """The transform of the series' (shared) Image Orientation (Patient); the identity
    when a slice has none. ObliqueSeriesError beyond ``config.max_oblique_deg``."""
    first = ordered[0]
    if any(h.orientation is None for h in ordered):
        return IDENTITY
    orientation = first.orientation
    transform = transform_from_orientation(orientation)
    angle = obliquity_degrees(orientation)
    if transform is None or angle > config.max_oblique_deg:
        raise ObliqueSeriesError(
            f"{first.ref.display}: Image Orientation {IOP} {list(orientation)} lies {angle:.3g} degrees off the "
            f"patient axes; expected an axial series within {config.max_oblique_deg:g} degrees of them "
            "(supine, prone, feet-first or decubitus; oblique and gantry-tilted series are not read)"
        )
    return transform


def _key(uid: str, members: list[SliceHeader]) -> str:
    if uid:
        return make_series_key(uid)
    return make_series_key("no-series-uid", *sorted(h.ref.name for h in members))


def _nothing_left_error(
    source: Path, refs: list[FileRef], skipped: list[SkippedFile]
) -> SeriesReadError:
    """The most specific error when no CT image file is left."""
    by_kind: dict[str, SkippedFile] = {}
    for s in skipped:
        by_kind.setdefault(s.kind, s)
    if scan.TOO_LARGE in by_kind:
        example = by_kind[scan.TOO_LARGE]
        return ResourceLimitError(f"{source}: no CT image left; e.g. {example.name}: {example.reason}")
    if by_kind and set(by_kind) <= {scan.NOT_DICOM, scan.SPECIAL}:
        first = skipped[0]
        where = f"{source}" if len(refs) == 1 and not by_kind.get(scan.SPECIAL) else (
            f"{source}: no DICOM file; e.g. {first.name}"
        )
        return NotDicomError(f"{where}: {first.reason}")
    for kind, error in (
        (scan.MODALITY, ModalityError),
        (scan.NON_IMAGE, MissingPixelDataError),
        (scan.UNSUPPORTED, UnsupportedFormatError),
    ):
        if kind in by_kind:
            example = by_kind[kind]
            return error(f"{source}: no CT image left; e.g. {example.name}: {example.reason}")
    reasons = "; ".join(f"{s.name}: {s.reason}" for s in skipped[:5])
    return EmptySeriesError(
        f"{source}: no axial CT image among {len(refs)} files ({reasons}); "
        "expected one axial CT series"
    )


def _spacing_estimate(members: list[SliceHeader]) -> float:
    """Median distance between distinct positions (mm); inf when unknown."""
    values = [_position(h, h.orientation) for h in members]
    known = np.unique([v for v in values if v is not None])
    diffs = np.diff(known)
    diffs = diffs[diffs > DUPLICATE_TOLERANCE_MM]
    return float(np.median(diffs)) if diffs.size else float("inf")


def _thickness(members: list[SliceHeader]) -> float:
    values = [h.slice_thickness for h in members if h.slice_thickness]
    return float(np.median(values)) if values else _spacing_estimate(members)


def _pick_series(groups: dict[str, list[SliceHeader]], rule: str) -> str:
    """The Series Instance UID the rule ranks first; :class:`MixedSeriesError` on a tie."""
    if len(groups) == 1:
        return next(iter(groups))
    if rule == "most_slices":  # most slices, then thinnest slice thickness
        rank = {uid: (-len(m), _thickness(m)) for uid, m in groups.items()}
        mm = {uid: r[1] for uid, r in rank.items()}
    else:  # smallest slice spacing, then most slices
        rank = {uid: (_spacing_estimate(m), -len(m)) for uid, m in groups.items()}
        mm = {uid: r[0] for uid, r in rank.items()}
    order = sorted(rank, key=rank.__getitem__)
    tied = [uid for uid in order if rank[uid] == rank[order[0]]]
    if len(tied) > 1:
        listing = ", ".join(
            f"{_key(u, groups[u])} ({len(groups[u])} slices, {mm[u]:g} mm)" for u in tied
        )
        raise MixedSeriesError(
            f"{groups[order[0]][0].ref.display}: series rule {rule!r} cannot choose between "
            f"series {listing}; expected one series to rank first"
        )
    return order[0]


def _position(h: SliceHeader, normal_from: tuple[float, ...] | None) -> float | None:
    if h.position is not None and normal_from is not None:
        return float(np.dot(h.position, _normal(normal_from)))
    return h.slice_location


def _normal(orientation: tuple[float, ...]) -> np.ndarray:
    return superior_normal(orientation)


def _sorted_positions(
    members: list[SliceHeader], config: ReaderConfig
) -> tuple[list[SliceHeader], np.ndarray, str]:
    """Check the count, matrix and memory budget, then sort by position: (sorted headers,
    positions mm, tag used)."""
    check_slice_count(members[0].ref.display, len(members), config)
    for h in members:
        check_matrix(h.ref.display, h.rows, h.columns, config, f"Rows {ROWS} x Columns {COLUMNS}")
    first = members[0]
    check_volume_bytes(
        f"{first.ref.display} and {len(members) - 1} more", (len(members), first.rows, first.columns), config
    )
    reference = members[0].orientation
    if all(h.position is not None and h.orientation is not None for h in members):
        tag = IPP
    elif all(h.slice_location is not None for h in members):
        tag, reference = SLICE_LOCATION, None
    else:
        bad = next((h for h in members if h.slice_location is None and (h.position is None or h.orientation is None)),
                   next(h for h in members if h.slice_location is None))  # the slice (frame) lacking both
        raise GeometryMismatchError(
            f"{bad.ref.display}: no slice position: Image Position {IPP} with Orientation "
            f"{IOP}, or Slice Location {SLICE_LOCATION}, expected on every slice"
        )
    positions = np.array([_position(h, reference) for h in members], dtype=np.float64)
    order = np.argsort(positions, kind="stable")
    return [members[i] for i in order], positions[order], tag


def _validate(
    ordered: list[SliceHeader], positions: np.ndarray, tag: str, config: ReaderConfig
) -> tuple[float, float, float]:
    """Check pixels, rescale, geometry and duplicates; return the stored spacing (z, row, column) mm."""
    first = ordered[0]
    for h in ordered:
        if not h.has_pixel_data:
            raise MissingPixelDataError(
                f"{h.ref.display}: no Pixel Data {scan.PIXEL_DATA_TAG}; expected a CT image"
            )
        if h.intercept is None or h.slope is None:
            missing = " and ".join(
                f"{name} {dicom_tag(0x0028, element)}"
                for name, element, value in (
                    ("Rescale Intercept", 0x1052, h.intercept),
                    ("Rescale Slope", 0x1053, h.slope),
                )
                if value is None
            )
            raise RescaleMissingError(
                f"{h.ref.display}: {missing} missing or not numeric; expected numbers "
                "(HU = stored * slope + intercept)"
            )
        check_rescale(h.ref.display, h.slope, h.intercept)
        if (h.rows, h.columns) != (first.rows, first.columns):
            raise GeometryMismatchError(
                f"{h.ref.display}: Rows {dicom_tag(0x0028, 0x0010)} x Columns "
                f"{dicom_tag(0x0028, 0x0011)} is {h.rows}x{h.columns}; expected "
                f"{first.rows}x{first.columns} like {first.ref.display}"
            )
        same_orientation = tag != IPP or np.allclose(
            h.orientation or (), first.orientation or (), rtol=0.0, atol=ORIENTATION_TOLERANCE
        )
        if not same_orientation:
            raise GeometryMismatchError(
                f"{h.ref.display}: Image Orientation {IOP} {list(h.orientation or ())}; expected "
                f"{list(first.orientation or ())} like {first.ref.display}"
            )
        check_pixel_spacing(h.ref.display, f"Pixel Spacing {PIXEL_SPACING}", h.pixel_spacing, config)
        if h.pixel_spacing != first.pixel_spacing:
            raise GeometryMismatchError(
                f"{h.ref.display}: Pixel Spacing {PIXEL_SPACING} is {list(h.pixel_spacing or ())} mm; "
                f"expected it equal on all slices ({list(first.pixel_spacing or ())} on {first.ref.display})"
            )
    if not np.isfinite(positions).all():
        bad = ordered[int(np.flatnonzero(~np.isfinite(positions))[0])]
        raise GeometryMismatchError(
            f"{bad.ref.display}: slice position ({tag}) is not a finite number; expected mm values"
        )
    diffs = np.diff(positions)
    dup = np.flatnonzero(diffs < DUPLICATE_TOLERANCE_MM)
    if dup.size:
        a, b = ordered[dup[0]], ordered[dup[0] + 1]
        raise DuplicatePositionError(
            f"{a.ref.display} and {b.ref.display}: both at {positions[dup[0]]:g} mm ({tag}); "
            "expected one slice per position"
        )
    z = float(np.median(diffs))
    check_slice_spacing(
        f"{first.ref.display} and {len(ordered) - 1} more", f"the median distance between slice positions {tag}",
        z, config,
    )
    row_mm, col_mm = first.pixel_spacing  # type: ignore[misc]
    return (z, float(row_mm), float(col_mm))
