"""Key images: a DICOM Secondary Capture series of overlay images beside the SEG and SR.

For a viewer or PACS that shows neither SEG nor SR, the answer is also stored as plain
pictures: one RGB Secondary Capture instance (highdicom ``SCImage``, 8 bits per sample)
per key slice, all in one new series of the source study.

Key slices (:func:`key_slices`, never more than the requested count, ascending):

* the selected slices (``SELECTED_INDICES``) with the largest infection area on the
  server's ``INFECTION_MASK``, largest first (ties: higher slice probability, then lower
  index); only slices with some infection count;
* when no selected slice is infected, or the answer is not assessable: lung-bearing
  slices (``LUNG_SLICES``) evenly spaced from the lowest to the highest; a series
  without any lung-bearing slice gets evenly spaced slices of the whole series, so that
  the reasons still reach the PACS.

Each image (:func:`render_key_image`) is the source slice in a lung window (default
-1000..400 HU) as gray, the infection blended red, the right lung outlined cyan and the
left lung green; the ``[L, m, m]`` masks are upsampled nearest to ``H x W`` with
:func:`covidct.preprocessing.resize.resize_nearest` (:func:`covidct.client.overlay.slice_masks`). An
infected pixel is always red (its red sample exceeds green and blue), a lung outline is
drawn only where there is no infection, every other pixel is gray. No text is burnt
in: the answer goes into SeriesDescription (``covidct DEMO key images: positive``), the
answer, reasons, warnings (e.g. ``partial_coverage``), slice figures and the demo warning
into ImageComments (0020,4000).

The image is rendered in the volume's patient layout (rows anterior to posterior,
columns patient right to left) and then turned back into the source frame's stored
layout with ``CTVolume.orientation.to_source``, so that it carries that frame's geometry:
each instance copies patient and study from the source header of its slice (absent Type 2
attributes stay empty, :func:`covidct.client.dicom_seg.with_type2_attributes`), carries the
frame's ImagePositionPatient (mm), ImageOrientationPatient, PixelSpacing (mm, row then
column) and Frame of Reference, and references it in SourceImageSequence (0008,2112)
(with Referenced Frame Number (0008,1160) when the source is one multi-frame image).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from covidct.errors import ConfigError, SourceHeaderError
from covidct.preprocessing.orientation import IDENTITY, InPlaneTransform

from covidct.client.dicom_seg import (
    DicomOutputConfig,
    frame_geometry,
    is_multiframe,
    series_description,
    with_type2_attributes,
)
from covidct.client.overlay import LEFT_LUNG, RIGHT_LUNG, slice_masks
from covidct.client.result import NOT_ASSESSABLE, PipelineResult

#: Purpose of reference of the source slice (DCM 121322).
SOURCE_IMAGE_PURPOSE = hd.sr.CodedConcept("121322", "DCM", "Source image for image processing operation")
#: Patient direction letters of the +x, +y, +z axes (and their opposites) of the patient coordinate system.
AXIS_LETTERS = (("L", "R"), ("P", "A"), ("H", "F"))
RGB = tuple[int, int, int]


@dataclass(frozen=True)
class KeyImageConfig:
    """How key images look and which series they form.

    window_hu: (low, high) HU mapped to black..white.
    infection_alpha: weight of ``infection_rgb`` over the gray pixel (0 < alpha <= 1).
    infection_rgb / right_lung_rgb / left_lung_rgb: 8-bit colours of the infection fill
        and the lung outlines.
    series_number: Series Number (0020,0011) of the key image series.
    """

    window_hu: tuple[float, float] = (-1000.0, 400.0)
    infection_alpha: float = 0.45
    infection_rgb: RGB = (255, 0, 0)
    right_lung_rgb: RGB = (0, 255, 255)
    left_lung_rgb: RGB = (0, 255, 0)
    series_number: int = 9803

    def __post_init__(self) -> None:
        low, high = self.window_hu
        if not (np.isfinite(low) and np.isfinite(high) and low < high):
            raise ConfigError(f"key images: window_hu {self.window_hu!r}; expected finite (low, high) HU, low < high")
        if not 0.0 < self.infection_alpha <= 1.0:
            raise ConfigError(f"key images: infection_alpha {self.infection_alpha}; expected 0 < alpha <= 1")


def _evenly_spaced(pool: np.ndarray, count: int) -> list[int]:
    if pool.size > count:
        pool = pool[np.unique(np.linspace(0, pool.size - 1, count).round().astype(int))]
    return [int(i) for i in pool]


def infection_areas(result: PipelineResult) -> np.ndarray:
    """int64 ``[K]``: infected pixels of the m x m ``INFECTION_MASK`` plane of each selected
    slice (0 for a selected slice outside ``LUNG_SLICES``)."""
    areas = np.zeros(len(result.selected_indices), np.int64)
    plane_of = {int(index): k for k, index in enumerate(result.lung_slices)}
    for j, index in enumerate(result.selected_indices):
        k = plane_of.get(int(index))
        if k is not None:
            areas[j] = int(np.count_nonzero(result.infection_mask[k]))
    return areas


def key_slices(result: PipelineResult, count: int, num_slices: int | None = None) -> list[int]:
    """The slice indices (ascending, into the sent volume) of at most ``count`` key images.

    ``num_slices`` (N of the sent volume, default ``result.num_slices``) is used only when
    the answer has no lung-bearing slice. Raises ConfigError when ``count`` < 0.
    """
    if int(count) != count or count < 0:
        raise ConfigError(f"key images: count {count!r}; expected an integer >= 0 (0 = no key images)")
    count = int(count)
    if count == 0:
        return []
    if result.verdict != NOT_ASSESSABLE and len(result.selected_indices):
        areas = infection_areas(result)
        probabilities = np.asarray(result.slice_probabilities, np.float64)
        if probabilities.size != areas.size:
            probabilities = np.zeros(areas.size)
        order = sorted(
            (j for j in range(areas.size) if areas[j] > 0),
            key=lambda j: (-areas[j], -probabilities[j], int(result.selected_indices[j])),
        )
        if order:
            return sorted(int(result.selected_indices[j]) for j in order[:count])
    lung = np.unique(np.asarray(result.lung_slices, np.int64))
    if lung.size:
        return _evenly_spaced(lung, count)
    n = int(num_slices if num_slices is not None else result.num_slices)
    return _evenly_spaced(np.arange(n), count)


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it (the image edge counts as outside)."""
    padded = np.pad(mask, 1, constant_values=False)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def render_key_image(
    hu: np.ndarray,
    lung: np.ndarray | None,
    infection: np.ndarray | None,
    config: KeyImageConfig = KeyImageConfig(),
) -> np.ndarray:
    """uint8 ``[H, W, 3]`` RGB of one slice.

    hu: ``[H, W]`` HU. lung: uint8 ``[H, W]`` (0 background, 1 right, 2 left lung) or
    ``None``; infection: bool ``[H, W]`` or ``None`` (both at the slice size).
    """
    low, high = config.window_hu
    gray = np.clip((np.asarray(hu, np.float32) - low) * (255.0 / (high - low)), 0.0, 255.0)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    if lung is not None:
        for label, colour in ((RIGHT_LUNG, config.right_lung_rgb), (LEFT_LUNG, config.left_lung_rgb)):
            rgb[_outline(lung == label)] = colour
    if infection is not None and infection.any():
        alpha = np.float32(config.infection_alpha)
        tint = np.asarray(config.infection_rgb, np.float32)
        rgb[infection] = (1.0 - alpha) * gray[infection][:, None] + alpha * tint
    return np.rint(rgb).astype(np.uint8)


def patient_orientation(orientation: Sequence[float]) -> tuple[str, str]:
    """Patient Orientation (0020,0020) letters of the row and column directions of
    ImageOrientationPatient ``[rx, ry, rz, cx, cy, cz]``: the dominant axis of each
    (``[1,0,0,0,1,0]`` -> ``("L", "P")``)."""
    letters = []
    for vector in (orientation[:3], orientation[3:6]):
        values = np.asarray(vector, np.float64)
        axis = int(np.argmax(np.abs(values)))
        letters.append(AXIS_LETTERS[axis][0 if values[axis] >= 0 else 1])
    return letters[0], letters[1]


def image_comments(result: PipelineResult, index: int, probability: float | None, infected_mm2: float) -> str:
    """ImageComments (0020,4000): answer, reasons, warnings, this slice's figures and the demo warning."""
    parts = [f"covidct answer: {result.verdict}"]
    if result.verdict == NOT_ASSESSABLE:
        reasons = "; ".join(f"{r.code}: {r.message}" for r in result.assessment.reasons) or "none given"
        parts.append(f"reasons: {reasons}")
    else:
        parts.append(f"positive slice fraction {result.positive_fraction:.3f} (threshold {result.vote_threshold:.3f})")
    if result.assessment.warnings:
        parts.append("warnings: " + "; ".join(f"{w.code}: {w.message}" for w in result.assessment.warnings))
    slice_text = f"slice {index}"
    if probability is not None:
        slice_text += f", slice probability {probability:.3f}"
    slice_text += f", infection {infected_mm2:.1f} mm2"
    parts.append(slice_text)
    parts.append("red: infection; cyan/green outline: right/left lung")
    if result.demo_warning:
        parts.append(result.demo_warning)
    return ". ".join(parts)[:10240]


def _source_reference(header: Dataset, frame: int | None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = header.SOPClassUID
    item.ReferencedSOPInstanceUID = header.SOPInstanceUID
    if frame is not None:
        item.ReferencedFrameNumber = int(frame)
    item.PurposeOfReferenceCodeSequence = [SOURCE_IMAGE_PURPOSE]
    return item


def _series_reference(header: Dataset) -> Dataset:
    instance = Dataset()
    instance.ReferencedSOPClassUID = header.SOPClassUID
    instance.ReferencedSOPInstanceUID = header.SOPInstanceUID
    series = Dataset()
    series.SeriesInstanceUID = header.SeriesInstanceUID
    series.ReferencedInstanceSequence = [instance]
    return series


def _slice_source(
    headers: Sequence[Dataset], index: int, source_frames: Sequence[int]
) -> tuple[Dataset, int | None]:
    """(header, 1-based frame or ``None``) of volume slice ``index``."""
    if not source_frames:
        return headers[index], None
    return headers[0], int(source_frames[index])


def build_key_images(
    headers: Sequence[Dataset],
    hu: np.ndarray,
    result: PipelineResult,
    output: DicomOutputConfig = DicomOutputConfig(),
    config: KeyImageConfig = KeyImageConfig(),
    *,
    orientation: InPlaneTransform = IDENTITY,
    source_frames: Sequence[int] = (),
) -> list[hd.sc.SCImage]:
    """One RGB Secondary Capture per key slice (``output.key_images`` at most), one new series.

    headers: the single-frame source headers in ascending position, one per slice of
    ``hu``; or the one header of a multi-frame source whose frame ``source_frames[i]``
    (1-based) is slice i. hu: int16 ``[N, H, W]`` HU of the sent volume (patient layout).
    orientation: ``CTVolume.orientation``; each image goes back to its frame's stored
    layout. Instance numbers follow slice order. Raises ConfigError for a negative count
    and SourceHeaderError when ``hu``, ``headers`` and ``source_frames`` disagree in slice
    count or ``H x W``.
    """
    indices = key_slices(result, output.key_images, num_slices=len(source_frames) or len(headers))
    volume = np.asarray(hu)
    slices = len(source_frames) if source_frames else len(headers)
    if source_frames and (len(headers) != 1 or not is_multiframe(headers[0])):
        raise SourceHeaderError(
            f"key images: source frames given with {len(headers)} headers; expected the one multi-frame source"
        )
    if volume.ndim != 3 or volume.shape[0] != slices:
        raise SourceHeaderError(
            f"key images: HU volume of shape {list(volume.shape)}; "
            f"expected [{slices}, H, W] (one slice per {'source frame' if source_frames else 'header'})"
        )
    headers = with_type2_attributes(headers)
    probabilities = dict(zip(result.selected_indices.tolist(), result.slice_probabilities.tolist()))
    series_uid = hd.UID()
    images = []
    for number, index in enumerate(indices, start=1):
        header, frame = _slice_source(headers, index, source_frames)
        stored_shape = (int(header.Rows), int(header.Columns))
        shape = orientation.patient_shape(stored_shape)
        if volume.shape[1:] != shape:
            raise SourceHeaderError(
                f"key images: slice {index} has Rows/Columns {stored_shape[0]} x {stored_shape[1]} "
                f"({shape[0]} x {shape[1]} in the patient layout, {orientation.describe()}); "
                f"the HU volume's slices are {volume.shape[1]} x {volume.shape[2]}"
            )
        position, cosines, spacing = frame_geometry(header, frame)
        masks = slice_masks(result, index, shape)
        lung, infection = masks if masks is not None else (None, None)
        infected_mm2 = float(np.count_nonzero(infection)) * spacing[0] * spacing[1] if infection is not None else 0.0
        rgb = render_key_image(volume[index], lung, infection, config)
        image = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=header,
            pixel_array=np.ascontiguousarray(orientation.to_source(rgb[None])[0]),
            photometric_interpretation="RGB",
            bits_allocated=8,
            coordinate_system="PATIENT",
            series_instance_uid=series_uid,
            series_number=config.series_number,
            sop_instance_uid=hd.UID(),
            instance_number=number,
            manufacturer=output.manufacturer,
            pixel_spacing=tuple(spacing),
            patient_orientation=patient_orientation(cosines),
            transfer_syntax_uid=ExplicitVRLittleEndian,
            series_description=series_description(result, f"key images: {result.verdict}"),
            manufacturer_model_name=output.model_name,
            software_versions=output.software_version,
            device_serial_number=output.device_serial_number,
        )
        image.ImagePositionPatient = position
        image.ImageOrientationPatient = cosines
        image.FrameOfReferenceUID = header.FrameOfReferenceUID
        image.BodyPartExamined = "CHEST"  # an unpaired body part: no Laterality (0020,0060)
        image.BurnedInAnnotation = "NO"
        image.ImageComments = image_comments(result, index, probabilities.get(index), infected_mm2)
        low, high = config.window_hu
        image.DerivationDescription = (
            f"covidct key image of slice {index}: window {low:g}..{high:g} HU; infection red, "
            "right lung cyan, left lung green outline"
        )[:1024]
        image.SourceImageSequence = [_source_reference(header, frame)]
        image.ReferencedSeriesSequence = [_series_reference(header)]
        images.append(image)
    return images
