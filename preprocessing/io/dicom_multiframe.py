"""The per-frame header values of multi-frame CT files (Enhanced and Legacy Converted Enhanced CT).

One Enhanced CT Image Storage (1.2.840.10008.5.1.4.1.1.2.1) or Legacy Converted Enhanced
CT Image Storage (1.2.840.10008.5.1.4.1.1.2.2) file holds a whole series: Number of
Frames (0028,0008) frames of Rows x Columns pixels. What a single-frame file says at its
top level, a multi-frame file says per frame in functional groups: the frame's item of the
Per-frame Functional Groups Sequence (5200,9230), else the one item of the Shared
Functional Groups Sequence (5200,9229).

- position (mm): Plane Position Sequence (0020,9113) > Image Position (Patient) (0020,0032);
- orientation: Plane Orientation Sequence (0020,9116) > Image Orientation (Patient) (0020,0037);
- pixel spacing and slice thickness (mm): Pixel Measures Sequence (0028,9110) > Pixel
  Spacing (0028,0030), Slice Thickness (0018,0050);
- rescale (HU = stored * slope + intercept): Pixel Value Transformation Sequence
  (0028,9145) > Rescale Intercept (0028,1052), Rescale Slope (0028,1053);
- slice location (mm, legacy converted files): Unassigned Per-frame / Shared Converted
  Attributes Sequence (0020,9171) / (0020,9170) > Slice Location (0020,1041).

Orientation, pixel spacing and thickness fall back to the top-level attribute where no
functional group holds them (some writers keep them there). Where no frame has a Pixel
Value Transformation item, the top-level Rescale Intercept/Slope apply, and without them
the CT default: slope 1, intercept 0 (stored values are HU); where some frame has one,
every frame needs one. A value that is absent or
not numeric is ``None``, as on single-frame files, so that the series checks of
:mod:`covidct.preprocessing.io.dicom_series` raise the same errors for frame ``k`` of a file
(messages name ``file (frame k)`` and the tag). A frame table that cannot describe the
frames (Number of Frames missing, one item per frame missing) skips the file
(:class:`FrameTableError`).

The value readers at the end are shared with the single-frame scan
(:mod:`covidct.preprocessing.io.dicom_scan`): ``None`` for an absent or non-numeric value.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from covidct.errors import dicom_tag
from covidct.preprocessing.io.input_files import TOO_LARGE, UNSUPPORTED

NUMBER_OF_FRAMES = dicom_tag(0x0028, 0x0008)
PER_FRAME_GROUPS = dicom_tag(0x5200, 0x9230)
SHARED_GROUPS = dicom_tag(0x5200, 0x9229)
#: Stored values are HU where a multi-frame CT file carries no rescale at all.
CT_DEFAULT_RESCALE = (0.0, 1.0)  # (intercept HU, slope)
_RESCALE = "PixelValueTransformationSequence"


class FrameTableError(Exception):
    """The frame table of a multi-frame file cannot describe its frames. Never leaves the
    header scan: the file is skipped with ``reason`` (naming the tags) and ``kind``
    (:data:`~covidct.preprocessing.io.input_files.UNSUPPORTED` or ``TOO_LARGE``)."""

    def __init__(self, reason: str, kind: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind


@dataclass(frozen=True)
class FrameValues:
    """One frame's header values (mm, HU rescale); ``None`` where absent or not numeric.

    ``frame`` is 1-based, the frame's position in the Pixel Data and in (5200,9230).
    """

    frame: int
    orientation: tuple[float, ...] | None  # (0020,0037), 6 direction cosines
    position: tuple[float, ...] | None  # (0020,0032), mm
    slice_location: float | None  # (0020,1041), mm
    pixel_spacing: tuple[float, ...] | None  # (0028,0030), (row, column) mm
    slice_thickness: float | None  # (0018,0050), mm
    intercept: float | None  # (0028,1052), HU
    slope: float | None  # (0028,1053)


def frame_values(ds: Dataset, max_frames: int) -> tuple[FrameValues, ...]:
    """Every frame's values of a multi-frame data set (header only, no Pixel Data).

    Args:
        ds: the data set as read up to its Pixel Data.
        max_frames: the most frames read (``ReaderConfig.max_slices``); more are refused
            before any per-frame item is looked at.

    Raises:
        FrameTableError: Number of Frames missing, not a whole number >= 1 or above
            ``max_frames``; a Per-frame Functional Groups Sequence without one item per
            frame; functional groups that cannot be parsed.
    """
    count = header_int(ds, "NumberOfFrames")
    if count is None or count < 1 or header_float(ds, "NumberOfFrames") != count:
        raise FrameTableError(
            f"Number of Frames {NUMBER_OF_FRAMES} is {ds.get('NumberOfFrames', '(missing)')!r}; "
            "expected a whole number >= 1 in a multi-frame CT file", UNSUPPORTED,
        )
    if count > max_frames:
        raise FrameTableError(
            f"Number of Frames {NUMBER_OF_FRAMES} is {count}; expected at most {max_frames} "
            "(ReaderConfig.max_slices); not read", TOO_LARGE,
        )
    try:
        per_frame = _items(ds, "PerFrameFunctionalGroupsSequence")
        shared_items = _items(ds, "SharedFunctionalGroupsSequence")
        if per_frame and len(per_frame) != count:
            raise FrameTableError(
                f"Per-frame Functional Groups Sequence {PER_FRAME_GROUPS} has {len(per_frame)} items; "
                f"expected one per frame (Number of Frames {NUMBER_OF_FRAMES} is {count})", UNSUPPORTED,
            )
        shared = shared_items[0] if shared_items else Dataset()
        own = per_frame or [Dataset()] * count
        rescaled = _first(shared, _RESCALE) is not None or any(_first(item, _RESCALE) is not None for item in own)
        return tuple(_frame(ds, index + 1, item, shared, rescaled) for index, item in enumerate(own))
    except FrameTableError:
        raise
    except Exception as exc:  # a garbled nested item skips the file
        raise FrameTableError(
            f"functional groups {PER_FRAME_GROUPS}/{SHARED_GROUPS} cannot be parsed "
            f"({type(exc).__name__}: {exc}); expected DICOM sequences", UNSUPPORTED,
        ) from exc


def _frame(ds: Dataset, frame: int, own: Dataset, shared: Dataset, rescaled: bool) -> FrameValues:
    """One frame's values: its own functional groups, then the shared ones, then the top
    level; ``rescaled``: some frame has a Pixel Value Transformation item (then every
    frame needs one)."""

    def macro(keyword: str) -> Dataset | None:
        item = _first(own, keyword)
        return item if item is not None else _first(shared, keyword)

    def holding(item: Dataset | None, keyword: str) -> Dataset:
        return item if item is not None and keyword in item else ds

    plane = macro("PlanePositionSequence")
    measures = macro("PixelMeasuresSequence")
    converted = _first(own, "UnassignedPerFrameConvertedAttributesSequence")
    if converted is None:
        converted = _first(shared, "UnassignedSharedConvertedAttributesSequence")
    if rescaled:
        rescale = macro(_RESCALE) or Dataset()  # an empty item: both values missing
        intercept, slope = header_float(rescale, "RescaleIntercept"), header_float(rescale, "RescaleSlope")
    elif "RescaleIntercept" in ds or "RescaleSlope" in ds:
        intercept, slope = header_float(ds, "RescaleIntercept"), header_float(ds, "RescaleSlope")
    else:
        intercept, slope = CT_DEFAULT_RESCALE
    return FrameValues(
        frame=frame,
        orientation=header_floats(
            holding(macro("PlaneOrientationSequence"), "ImageOrientationPatient"), "ImageOrientationPatient", 6
        ),
        position=header_floats(plane, "ImagePositionPatient", 3) if plane is not None else None,
        slice_location=header_float(converted, "SliceLocation") if converted is not None else None,
        pixel_spacing=header_floats(holding(measures, "PixelSpacing"), "PixelSpacing", 2),
        slice_thickness=header_float(holding(measures, "SliceThickness"), "SliceThickness"),
        intercept=intercept,
        slope=slope,
    )


def _items(ds: Dataset, keyword: str) -> list[Dataset]:
    """The items of a sequence attribute; empty when absent, empty or not a sequence."""
    value = ds.get(keyword)
    return list(value) if isinstance(value, Sequence) else []


def _first(ds: Dataset, keyword: str) -> Dataset | None:
    """The first item of a functional group's sequence, ``None`` when there is none."""
    value = ds.get(keyword)
    return value[0] if isinstance(value, Sequence) and len(value) else None


# ------------------------------------------------------------------ header value readers
def header_list(value: object) -> list:
    """A value as a list: ``[]`` for absent/empty, the items of a multi-value, else ``[value]``."""
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]


def header_floats(ds: Dataset, keyword: str, count: int) -> tuple[float, ...] | None:
    """``count`` numbers of attribute ``keyword``, or ``None`` (absent, not numeric, other count)."""
    try:
        values = tuple(float(v) for v in header_list(ds.get(keyword)))
    except (TypeError, ValueError, OverflowError):
        return None
    return values if len(values) == count else None


def header_float(ds: Dataset, keyword: str) -> float | None:
    """One number of attribute ``keyword``, or ``None``."""
    values = header_floats(ds, keyword, 1)
    return values[0] if values else None


def header_int(ds: Dataset, keyword: str) -> int | None:
    """One number of attribute ``keyword`` truncated to an integer, or ``None``."""
    value = header_float(ds, keyword)
    if value is None or value != value or value in (float("inf"), float("-inf")):
        return None
    return int(value)
