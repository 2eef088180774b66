"""The server's lung and infection masks as one DICOM Segmentation (highdicom, BINARY).

The ensemble answers with ``LUNG_MASK`` (0 background, 1 right lung, 2 left lung) and
``INFECTION_MASK`` (1 = infected), uint8 ``[L, m, m]``, one plane per lung-bearing slice
(``LUNG_SLICES``) on a reduced grid covering the whole ``H x W`` slice. This module
resamples them back to the source geometry (nearest neighbour, the same
:func:`preprocessing.resize.resize_nearest` the overlays use) and writes one
Segmentation instance with two segments over the source series:

1. ``Lung`` (SNOMED CT 39607008, category "Anatomical Structure"), both lungs;
2. ``Infection`` (SNOMED CT "Lesion" 52988006, category "Morphologically Abnormal
   Structure"), the segmenter's infection mask.

The frames reference the source SOP instances one to one (frame i of the pixel array is
source slice i in ascending position); frames without any segment are omitted, as
highdicom allows (a series without lung keeps its empty frames so that the object still
references the series). The algorithm identification carries the model card: name
(``covidct <network>`` with ``DEMO`` for a demo model), version (``MODEL_VERSIONS``),
family (Artificial Intelligence) and the training data as parameters.

Everything is made on the workstation from the source headers; the server never sees them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.codedict import codes

from covidct.errors import SourceHeaderError
from preprocessing.resize import resize_nearest

from client.result import PipelineResult

LUNG_SEGMENT, INFECTION_SEGMENT = 1, 2
LUNG_CODE = hd.sr.CodedConcept("39607008", "SCT", "Lung")
LESION_CODE = hd.sr.CodedConcept("52988006", "SCT", "Lesion")
ANATOMICAL_STRUCTURE = hd.sr.CodedConcept("91723000", "SCT", "Anatomical Structure")
ABNORMAL_STRUCTURE = hd.sr.CodedConcept("49755003", "SCT", "Morphologically Abnormal Structure")
LUNG_COLOR = hd.color.CIELabColor(70.0, -40.0, 20.0)
INFECTION_COLOR = hd.color.CIELabColor(55.0, 70.0, 50.0)


@dataclass(frozen=True)
class DicomOutputConfig:
    """Fixed attributes of the result objects (SEG and SR).

    manufacturer / model_name / software_version: General Equipment of both objects.
    seg_series_number / sr_series_number: Series Number (0020,0011) of the new series.
    key_images: how many key images (Secondary Capture overlays, :mod:`client.dicom_key_images`)
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


def full_resolution_masks(result: PipelineResult, shape_nhw: tuple[int, int, int]) -> np.ndarray:
    """bool ``[N, H, W, 2]``: (lung, infection) of every source slice at the source size.

    Grid pixel (r, c) of the m x m planes covers the source block around it (nearest
    neighbour); slices outside ``LUNG_SLICES`` are empty.
    """
    n, h, w = shape_nhw
    masks = np.zeros((n, h, w, 2), dtype=bool)
    if result.lung_slices.size == 0:
        return masks
    lung = resize_nearest(result.lung_mask, (h, w))
    infection = resize_nearest(result.infection_mask, (h, w))
    masks[result.lung_slices, :, :, 0] = lung > 0
    masks[result.lung_slices, :, :, 1] = infection > 0
    return masks


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


def build_segmentation(
    headers: Sequence[Dataset],
    result: PipelineResult,
    config: DicomOutputConfig = DicomOutputConfig(),
) -> hd.seg.Segmentation:
    """One BINARY Segmentation over ``headers`` (the source slices in ascending position,
    no pixel data needed) from the server's masks.

    Raises SourceHeaderError when ``headers`` do not match the result (slice count).
    """
    if len(headers) != result.num_slices:
        raise SourceHeaderError(
            f"DICOM SEG: the source series has {len(headers)} headers; the answer covers {result.num_slices} slices"
        )
    shape = (len(headers), int(headers[0].Rows), int(headers[0].Columns))
    masks = full_resolution_masks(result, shape)
    return hd.seg.Segmentation(
        source_images=list(headers),
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
