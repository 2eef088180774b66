"""The server's lung and infection masks as one DICOM Segmentation (highdicom, BINARY).

The ensemble answers with ``LUNG_MASK`` (0 background, 1 right lung, 2 left lung) and
``INFECTION_MASK`` (1 = infected), uint8 ``[L, m, m]``, one plane per lung-bearing slice
(``LUNG_SLICES``) on a reduced grid covering the whole ``H x W`` slice. This module
resamples them back to the source geometry (nearest neighbour, the same
:func:`covidct.preprocessing.resize.resize_nearest` the overlays use) and writes one
Segmentation instance with two segments over the source series:

1. ``Lung`` (SNOMED CT 39607008, category "Anatomical Structure"), both lungs;
2. ``Infection`` (SNOMED CT "Lesion" 52988006, category "Morphologically Abnormal
   Structure"), the segmenter's infection mask.

The masks come in the volume's patient layout (rows anterior to posterior, columns
patient right to left); :func:`full_resolution_masks` turns them back into each source
frame's stored layout with ``CTVolume.orientation.to_source`` (a prone, feet-first or
decubitus series is flipped and/or transposed back), so every SEG frame carries the
geometry of the source frame it covers. Over single-frame sources the frames reference
the source SOP instances one to one (frame i of the pixel array is source slice i in
ascending position); over one multi-frame source (Enhanced / Legacy Converted Enhanced
CT) the pixel array follows the source's frames, the mask of volume slice i at source
frame ``CTVolume.source_frames[i]``. Frames without any segment are omitted, as
highdicom allows (a series without lung keeps its empty frames so that the object still
references the series). The algorithm identification carries the model card: name
(``covidct <network>`` with ``DEMO`` for a demo model), version (``MODEL_VERSIONS``),
family (Artificial Intelligence) and the training data as parameters.

Patient and study attributes are copied from the source headers. Those that are Type 2
in the CT Image IOD (:data:`TYPE2_PATIENT_STUDY`: name, ID, birth date, sex, referring
physician, study ID, accession number, study date and time) may be absent or empty in a
valid (e.g. anonymised) source; :func:`with_type2_attributes` gives the SEG, SR and key
image builders header copies where the absent ones are present and empty, so they stay
empty in the results and no value is invented.

Everything is made on the workstation from the source headers; the server never sees them.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.datadict import dictionary_VR
from pydicom.sr.codedict import codes

from covidct.errors import SourceHeaderError, dicom_tag
from covidct.preprocessing.orientation import IDENTITY, InPlaneTransform
from covidct.preprocessing.resize import resize_nearest

from covidct.client.result import PipelineResult

LUNG_SEGMENT, INFECTION_SEGMENT = 1, 2
LUNG_CODE = hd.sr.CodedConcept("39607008", "SCT", "Lung")
LESION_CODE = hd.sr.CodedConcept("52988006", "SCT", "Lesion")
ANATOMICAL_STRUCTURE = hd.sr.CodedConcept("91723000", "SCT", "Anatomical Structure")
ABNORMAL_STRUCTURE = hd.sr.CodedConcept("49755003", "SCT", "Morphologically Abnormal Structure")
LUNG_COLOR = hd.color.CIELabColor(70.0, -40.0, 20.0)
INFECTION_COLOR = hd.color.CIELabColor(55.0, 70.0, 50.0)
#: Type 2 attributes of the Patient, General Study and Patient Study modules of the CT Image
#: IOD that highdicom copies into every result object; absent or empty in many valid sources.
TYPE2_PATIENT_STUDY = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "ReferringPhysicianName",
    "StudyID", "AccessionNumber", "StudyDate", "StudyTime",
)


def with_type2_attributes(headers: Sequence[Dataset]) -> list[Dataset]:
    """``headers`` with every attribute of :data:`TYPE2_PATIENT_STUDY` present.

    A header that lacks some is deep-copied and the absent ones are added empty (zero
    length); present values, empty or not, are kept. The given headers are not changed;
    complete ones are returned as they are. Type 1 attributes (UIDs) are not touched:
    :func:`covidct.client.dicom_results.check_source_headers` refuses a header without them.
    """
    completed = []
    for header in headers:
        missing = [keyword for keyword in TYPE2_PATIENT_STUDY if keyword not in header]
        if missing:
            header = copy.deepcopy(header)
            for keyword in missing:
                header.add_new(keyword, dictionary_VR(keyword), None)
        completed.append(header)
    return completed


def is_multiframe(header: Dataset) -> bool:
    """True for a multi-frame image header (Number of Frames (0028,0008) present, functional groups)."""
    return "NumberOfFrames" in header and "PerFrameFunctionalGroupsSequence" in header


#: Functional group macro (keyword, tag) that holds each geometry attribute of a multi-frame image.
FUNCTIONAL_GROUPS = {
    "ImagePositionPatient": ("PlanePositionSequence", dicom_tag(0x0020, 0x9113)),
    "ImageOrientationPatient": ("PlaneOrientationSequence", dicom_tag(0x0020, 0x9116)),
    "PixelSpacing": ("PixelMeasuresSequence", dicom_tag(0x0028, 0x9110)),
}


def _functional_item(header: Dataset, frame: int, keyword: str) -> Dataset:
    """The item of the functional group holding ``keyword`` that applies to ``frame``
    (1-based): the per-frame one, else the shared one."""
    sequence, tag = FUNCTIONAL_GROUPS[keyword]
    frames = header.get("PerFrameFunctionalGroupsSequence") or []
    if 1 <= frame <= len(frames) and frames[frame - 1].get(sequence):
        return frames[frame - 1][sequence][0]
    shared = header.get("SharedFunctionalGroupsSequence") or []
    if shared and shared[0].get(sequence):
        return shared[0][sequence][0]
    raise SourceHeaderError(
        f"frame {frame}: no {sequence} {tag} in the per-frame or shared functional groups; DICOM SEG/SR need it"
    )


def frame_geometry(header: Dataset, frame: int | None = None) -> tuple[list, list, list]:
    """(ImagePositionPatient ``[x, y, z]`` mm, ImageOrientationPatient six cosines,
    PixelSpacing ``[row, column]`` mm) of a single-frame header (``frame`` ``None``) or of
    ``frame`` (1-based) of a multi-frame one, as read (pydicom DS numbers: floats that keep
    their text, so copies write the source's values unchanged).

    Raises SourceHeaderError naming the tag when one is missing or empty.
    """
    items = {keyword: header if frame is None else _functional_item(header, frame, keyword)
             for keyword in FUNCTIONAL_GROUPS}
    values = []
    for keyword, tag in (("ImagePositionPatient", dicom_tag(0x0020, 0x0032)),
                         ("ImageOrientationPatient", dicom_tag(0x0020, 0x0037)),
                         ("PixelSpacing", dicom_tag(0x0028, 0x0030))):
        value = items[keyword].get(keyword)
        if not value:
            where = "" if frame is None else f"frame {frame}: "
            raise SourceHeaderError(f"{where}{keyword} {tag} is missing or empty; DICOM SEG/SR need it")
        values.append(list(value))
    return values[0], values[1], values[2]


@dataclass(frozen=True)
class DicomOutputConfig:
    """Fixed attributes of the result objects (SEG and SR).

    manufacturer / model_name / software_version: General Equipment of both objects.
    seg_series_number / sr_series_number: Series Number (0020,0011) of the new series.
    key_images: how many key images (Secondary Capture overlays, :mod:`covidct.client.dicom_key_images`)
        to add beside SEG and SR; 0 = none.
    """

    manufacturer: str = "covidct-triton"
    model_name: str = "covid_ct_pipeline"
    software_version: str = "0.1.0"
    device_serial_number: str = "0"
    seg_series_number: int = 9801
    sr_series_number: int = 9802
    key_images: int = 0


def role_version(model_versions: Sequence[str], role: str) -> str:
    """The ``MODEL_VERSIONS`` entry of ``role`` (``"classifier=cnn6:1:sha256:..."`` -> ``"cnn6:1:sha256:..."``),
    cut to 64 characters (LO); ``"unknown"`` when absent."""
    for entry in model_versions:
        name, sep, version = str(entry).partition("=")
        if sep and name == role:
            return version[:64] or "unknown"
    return "unknown"


def algorithm_name(result: PipelineResult, role: str) -> str:
    """``covidct <network>`` of the card of ``role`` (``covidct DEMO <network>`` for a demo model)."""
    card = result.model_card.get(role, {})
    network = str(card.get("network", role))
    demo = " DEMO" if card.get("demo") is True or (not card and result.demo) else ""
    return f"covidct{demo} {network}"[:64]


def card_parameters(card: dict[str, Any]) -> dict[str, str]:
    """The model card's summary as algorithm parameters (text values, 64 characters at most)."""
    data = card.get("training_data") if isinstance(card.get("training_data"), dict) else {}
    values = {
        "task": card.get("task"),
        "demo": card.get("demo"),
        "training_data": data.get("source_kind"),
        "synthetic_training_data": data.get("synthetic"),
        "intended_use": card.get("intended_use"),
    }
    return {key: str(value)[:64] for key, value in values.items() if value is not None}


def algorithm_identification(result: PipelineResult, role: str) -> hd.AlgorithmIdentificationSequence:
    """Algorithm Identification of the network ``role`` (``"segmenter"``, ``"classifier"``)."""
    return hd.AlgorithmIdentificationSequence(
        name=algorithm_name(result, role),
        family=codes.cid7162.ArtificialIntelligence,
        version=role_version(result.model_versions, role),
        source="covidct-triton",
        parameters=card_parameters(result.model_card.get(role, {})) or None,
    )


def full_resolution_masks(
    result: PipelineResult, shape_nhw: tuple[int, int, int], orientation: InPlaneTransform = IDENTITY
) -> np.ndarray:
    """bool ``[N, H_s, W_s, 2]``: (lung, infection) of every volume slice in its source
    frame's stored layout.

    ``shape_nhw`` is the volume's ``[N, H, W]`` (patient layout), the grid the server's
    masks cover; ``orientation`` (``CTVolume.orientation``) maps them back to the stored
    layout (``H_s x W_s`` = ``W x H`` when it transposes). Grid pixel (r, c) of the m x m
    planes covers the block around it (nearest neighbour); slices outside
    ``LUNG_SLICES`` are empty.
    """
    n, h, w = shape_nhw
    masks = np.zeros((n, h, w, 2), dtype=bool)
    if result.lung_slices.size:
        masks[result.lung_slices, :, :, 0] = resize_nearest(result.lung_mask, (h, w)) > 0
        masks[result.lung_slices, :, :, 1] = resize_nearest(result.infection_mask, (h, w)) > 0
    return np.ascontiguousarray(orientation.to_source(masks))


def segment_descriptions(
    result: PipelineResult, config: DicomOutputConfig | None = None
) -> list[hd.seg.SegmentDescription]:
    """The lung (segment 1) and infection (segment 2) descriptions with the model card."""
    config = config or DicomOutputConfig()
    segmenter = algorithm_identification(result, "segmenter")
    return [
        hd.seg.SegmentDescription(
            segment_number=LUNG_SEGMENT,
            segment_label="Lung",
            segmented_property_category=ANATOMICAL_STRUCTURE,
            segmented_property_type=LUNG_CODE,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=hd.AlgorithmIdentificationSequence(
                name=f"covidct{' DEMO' if result.demo else ''} lung segmentation",
                family=codes.cid7162.MorphologicalOperations,
                version=config.software_version,
                source="covidct-triton preprocess step",
            ),
            tracking_uid=hd.UID(),
            tracking_id="covidct lung",
            display_color=LUNG_COLOR,
        ),
        hd.seg.SegmentDescription(
            segment_number=INFECTION_SEGMENT,
            segment_label="Infection",
            segmented_property_category=ABNORMAL_STRUCTURE,
            segmented_property_type=LESION_CODE,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=segmenter,
            tracking_uid=hd.UID(),
            tracking_id="covidct infection",
            anatomic_regions=[LUNG_CODE],
            display_color=INFECTION_COLOR,
        ),
    ]


def series_description(result: PipelineResult, kind: str) -> str:
    """``covidct [DEMO] <kind>``: the demo flag shows in the viewer's series list."""
    return f"covidct{' DEMO' if result.demo else ''} {kind}"[:64]


def source_frame_masks(
    headers: Sequence[Dataset],
    result: PipelineResult,
    orientation: InPlaneTransform = IDENTITY,
    source_frames: Sequence[int] = (),
) -> np.ndarray:
    """bool ``[F, Rows, Columns, 2]``: the masks in the order and stored layout of the source frames.

    Single-frame sources (``source_frames`` empty): ``headers`` are the slices in ascending
    position, F = N. One multi-frame source: ``headers`` is its one header and
    ``source_frames[i]`` (1-based) the frame of volume slice i; F = Number of Frames, and
    frames no slice maps to are empty. Raises SourceHeaderError when headers, frames and
    the answer disagree.
    """
    if not headers:
        raise SourceHeaderError("DICOM SEG: no source header")
    rows, cols = int(headers[0].Rows), int(headers[0].Columns)
    h, w = orientation.patient_shape((rows, cols))
    if not source_frames:
        if len(headers) != result.num_slices:
            raise SourceHeaderError(
                f"DICOM SEG: the source series has {len(headers)} headers; the answer covers "
                f"{result.num_slices} slices"
            )
        return full_resolution_masks(result, (len(headers), h, w), orientation)
    if len(headers) != 1 or not is_multiframe(headers[0]):
        raise SourceHeaderError(
            f"DICOM SEG: source frames given with {len(headers)} headers; expected the one multi-frame source"
        )
    if len(source_frames) != result.num_slices:
        raise SourceHeaderError(
            f"DICOM SEG: {len(source_frames)} source frames; the answer covers {result.num_slices} slices"
        )
    count = int(headers[0].NumberOfFrames)
    frames = np.asarray(source_frames, dtype=np.int64)
    if frames.min() < 1 or frames.max() > count or np.unique(frames).size != frames.size:
        raise SourceHeaderError(
            f"DICOM SEG: source frames {frames.min()}..{frames.max()} ({frames.size}, "
            f"{frames.size - np.unique(frames).size} repeated); expected distinct frames in 1..{count} "
            f"(Number of Frames {dicom_tag(0x0028, 0x0008)})"
        )
    masks = np.zeros((count, rows, cols, 2), dtype=bool)
    masks[frames - 1] = full_resolution_masks(result, (frames.size, h, w), orientation)
    return masks


def build_segmentation(
    headers: Sequence[Dataset],
    result: PipelineResult,
    config: DicomOutputConfig = DicomOutputConfig(),
    *,
    orientation: InPlaneTransform = IDENTITY,
    source_frames: Sequence[int] = (),
) -> hd.seg.Segmentation:
    """One BINARY Segmentation over ``headers`` (no pixel data needed) from the server's masks.

    ``headers``: the single-frame source slices in ascending position, or the one header
    of a multi-frame source whose frame ``source_frames[i]`` (1-based) is volume slice i.
    ``orientation``: ``CTVolume.orientation``; the masks go back to the stored layout.
    Raises SourceHeaderError when ``headers`` do not match the result (slice count, frames).
    """
    masks = source_frame_masks(headers, result, orientation, source_frames)
    return hd.seg.Segmentation(
        source_images=with_type2_attributes(headers),
        pixel_array=masks,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(result, config),
        series_instance_uid=hd.UID(),
        series_number=config.seg_series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=config.manufacturer,
        manufacturer_model_name=config.model_name,
        software_versions=config.software_version,
        device_serial_number=config.device_serial_number,
        series_description=series_description(result, "lung and infection SEG"),
        content_label="COVIDCT",
        content_description=f"covidct {result.verdict} lung and infection masks"[:64],
        omit_empty_frames=bool(masks.any()),
    )
