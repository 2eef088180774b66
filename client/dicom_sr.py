"""The answer of one patient as a DICOM TID 1500 Measurement Report (Comprehensive 3D SR).

Content tree (highdicom :class:`~highdicom.sr.MeasurementReport`)::

    Imaging Measurement Report (TID 1500), observer: device "covidct-triton"
    +-- Measurement Group "covidct triage" (TID 1501), algorithm: the classifier's card
    |   +-- COVID-19 triage answer = Positive | Negative | Indeterminate (not assessable)
    |   +-- Not assessable reason = <code>           (one per reason, coded 99COVIDCT)
    |   +-- Assessment warning = <code>              (one per warning, e.g. partial_coverage)
    |   +-- Positive slice fraction (1), Patient vote threshold (1), Selected slices ({slices})
    |   +-- TEXT: reason messages, warning messages, model card summary, demo warning
    +-- Measurement Group "lung" (TID 1411), segment 1 of the SEG: Volume (ml)
    +-- Measurement Group "infection" (TID 1411), segment 2 of the SEG: Lesion burden (%)

Values the server could not compute (JSON ``null``) are left out. The evidence lists
the source series' instances and the SEG. Patient and study attributes come from the
first source header; absent Type 2 ones stay empty
(:func:`covidct.client.dicom_seg.with_type2_attributes`). :func:`report_values` reads the values back
from a stored report (the names and units are those of the JSON report).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import highdicom as hd
from pydicom import Dataset

from covidct.client.answer import model_summary
from covidct.client.dicom_seg import (
    INFECTION_SEGMENT,
    LESION_CODE,
    LUNG_CODE,
    LUNG_SEGMENT,
    DicomOutputConfig,
    algorithm_name,
    card_parameters,
    role_version,
    series_description,
    with_type2_attributes,
)
from covidct.client.result import NEGATIVE, POSITIVE, PipelineResult

SCHEME = "99COVIDCT"
ANSWER = hd.sr.CodedConcept("answer", SCHEME, "COVID-19 triage answer")
REASON = hd.sr.CodedConcept("reason", SCHEME, "Not assessable reason")
REASON_TEXT = hd.sr.CodedConcept("reason_msg", SCHEME, "Not assessable reason message")
WARNING = hd.sr.CodedConcept("warning", SCHEME, "Assessment warning")
WARNING_TEXT = hd.sr.CodedConcept("warning_msg", SCHEME, "Assessment warning message")
MODEL_SUMMARY = hd.sr.CodedConcept("model_summary", SCHEME, "Model card summary")
DEMO_WARNING = hd.sr.CodedConcept("demo_warning", SCHEME, "Demo model warning")
POSITIVE_FRACTION = hd.sr.CodedConcept("pos_fraction", SCHEME, "Positive slice fraction")
VOTE_THRESHOLD = hd.sr.CodedConcept("vote_threshold", SCHEME, "Patient vote threshold")
SELECTED_SLICES = hd.sr.CodedConcept("selected_slices", SCHEME, "Selected slices")
LESION_BURDEN = hd.sr.CodedConcept("lesion_burden", SCHEME, "Lesion burden of the whole lung")
VOLUME = hd.sr.CodedConcept("118565006", "SCT", "Volume")
ANSWER_CODES = {
    POSITIVE: hd.sr.CodedConcept("10828004", "SCT", "Positive"),
    NEGATIVE: hd.sr.CodedConcept("260385009", "SCT", "Negative"),
}
NOT_ASSESSABLE_CODE = hd.sr.CodedConcept("82334004", "SCT", "Indeterminate")
CT_CHEST = hd.sr.CodedConcept("24627-2", "LN", "CT Chest")
UNIT_ONE = hd.sr.CodedConcept("1", "UCUM", "no units")
UNIT_SLICES = hd.sr.CodedConcept("{slices}", "UCUM", "slices")
UNIT_ML = hd.sr.CodedConcept("ml", "UCUM", "milliliter")
UNIT_PERCENT = hd.sr.CodedConcept("%", "UCUM", "percent")
#: Concept value -> key of the JSON report's ``result`` object.
MEASUREMENT_KEYS = {
    POSITIVE_FRACTION.value: "positive_fraction",
    VOTE_THRESHOLD.value: "vote_threshold",
    SELECTED_SLICES.value: "selected_slices",
    VOLUME.value: "lung_volume_ml",
    LESION_BURDEN.value: "lesion_burden_pct",
}


def _measurement(name: hd.sr.CodedConcept, value: float, unit: hd.sr.CodedConcept) -> list[hd.sr.Measurement]:
    """One measurement, or none when ``value`` is not finite (the JSON report's ``null``)."""
    return [hd.sr.Measurement(name=name, value=float(value), unit=unit)] if math.isfinite(value) else []


def _text(name: hd.sr.CodedConcept, value: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(name=name, value=value, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)


def _algorithm(result: PipelineResult, role: str) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(
        name=algorithm_name(result, role),
        version=role_version(result.model_versions, role),
        parameters=[f"{k}={v}" for k, v in card_parameters(result.model_card.get(role, {})).items()] or None,
    )


def triage_group(result: PipelineResult) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """The answer, its reasons and warnings, the vote figures and the model card summary."""
    answer = ANSWER_CODES.get(result.verdict, NOT_ASSESSABLE_CODE)
    assessment = result.assessment
    evaluations = [hd.sr.QualitativeEvaluation(ANSWER, answer)]
    evaluations += [
        hd.sr.QualitativeEvaluation(name, hd.sr.CodedConcept(r.code, SCHEME, r.code[:64]))
        for name, items in ((REASON, assessment.reasons), (WARNING, assessment.warnings))
        for r in items
    ]
    measurements = [
        *_measurement(POSITIVE_FRACTION, result.positive_fraction, UNIT_ONE),
        *_measurement(VOTE_THRESHOLD, result.vote_threshold, UNIT_ONE),
        *_measurement(SELECTED_SLICES, float(len(result.selected_indices)), UNIT_SLICES),
    ]
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="covidct triage"),
        algorithm_id=_algorithm(result, "classifier"),
        measurements=measurements,
        qualitative_evaluations=evaluations,
    )
    items = group[0].ContentSequence
    for reason in assessment.reasons:
        items.append(_text(REASON_TEXT, f"{reason.code}: {reason.message}"))
    for warning in assessment.warnings:
        items.append(_text(WARNING_TEXT, f"{warning.code}: {warning.message}"))
    items.append(_text(MODEL_SUMMARY, model_summary(result.model_card)))
    if result.demo_warning:
        items.append(_text(DEMO_WARNING, result.demo_warning))
    return group


def segment_group(
    segmentation: Dataset, segment: int, label: str, finding: hd.sr.CodedConcept, measurements: list,
    result: PipelineResult,
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    """A volumetric group over one segment of the SEG (TID 1411)."""
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"covidct {label}"),
        referenced_segment=hd.sr.ReferencedSegment(
            sop_class_uid=segmentation.SOPClassUID,
            sop_instance_uid=segmentation.SOPInstanceUID,
            segment_number=segment,
            source_series=hd.sr.SourceSeriesForSegmentation(
                segmentation.ReferencedSeriesSequence[0].SeriesInstanceUID
            ),
        ),
        finding_type=finding,
        algorithm_id=_algorithm(result, "segmenter"),
        measurements=measurements,
    )


def build_report(
    headers: Sequence[Dataset],
    segmentation: Dataset,
    result: PipelineResult,
    config: DicomOutputConfig = DicomOutputConfig(),
) -> hd.sr.Comprehensive3DSR:
    """The Measurement Report of ``result`` referencing the source series (``headers``: the
    single-frame slices, or the one multi-frame header) and ``segmentation`` (its segments
    1 lung, 2 infection)."""
    headers = with_type2_attributes(headers)
    observer = hd.sr.ObserverContext(
        observer_type=hd.sr.CodedConcept("121007", "DCM", "Device"),
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name="covidct-triton", manufacturer_name=config.manufacturer,
            model_name=config.model_name,
        ),
    )
    groups = [
        triage_group(result),
        segment_group(segmentation, LUNG_SEGMENT, "lung", LUNG_CODE,
                      _measurement(VOLUME, result.lung_volume_ml, UNIT_ML), result),
        segment_group(segmentation, INFECTION_SEGMENT, "infection", LESION_CODE,
                      _measurement(LESION_BURDEN, result.lesion_burden_pct, UNIT_PERCENT), result),
    ]
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=CT_CHEST,
        imaging_measurements=groups,
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=[*headers, segmentation],
        content=report[0],
        series_instance_uid=hd.UID(),
        series_number=config.sr_series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=config.manufacturer,
        is_complete=True,
    )
    sr.SeriesDescription = series_description(result, f"triage report: {result.verdict}")
    scheme = Dataset()
    scheme.CodingSchemeDesignator = SCHEME
    scheme.CodingSchemeName = "covidct-triton local codes"
    scheme.CodingSchemeResponsibleOrganization = config.manufacturer
    sr.CodingSchemeIdentificationSequence = [scheme]
    return sr


def _walk(container: Dataset):
    """Every content item below ``container``, depth first."""
    for item in getattr(container, "ContentSequence", []):
        yield item
        yield from _walk(item)


def _code(item: Dataset) -> str:
    concept = item.ConceptNameCodeSequence[0]
    return str(concept.get("CodeValue") or concept.get("LongCodeValue") or "")


def report_values(sr: Dataset) -> dict[str, Any]:
    """The values of a report written by :func:`build_report`, keyed like the JSON report.

    ``verdict``, ``reason_codes`` (list), ``reason_messages`` (list of ``code: message``),
    ``warning_codes``, ``warning_messages`` (the same for the assessment's warnings),
    ``model_summary``, ``demo_warning`` (or absent), the measurements (``positive_fraction``,
    ``vote_threshold``, ``selected_slices``, ``lung_volume_ml``, ``lesion_burden_pct``; absent
    when not finite) and ``segments`` (referenced SEG SOP Instance UID, segment number).
    """
    answers = {code.value: name for name, code in ANSWER_CODES.items()}
    values: dict[str, Any] = {
        "reason_codes": [], "reason_messages": [], "warning_codes": [], "warning_messages": [], "segments": [],
    }
    for item in _walk(sr):
        if "ConceptNameCodeSequence" in item:
            code, kind = _code(item), item.ValueType
            if kind == "CODE" and code == ANSWER.value:
                value = item.ConceptCodeSequence[0].CodeValue
                values["verdict"] = answers.get(value, "not_assessable")
            elif kind == "CODE" and code in (REASON.value, WARNING.value):
                key = "reason_codes" if code == REASON.value else "warning_codes"
                values[key].append(str(item.ConceptCodeSequence[0].CodeMeaning))
            elif kind == "NUM" and code in MEASUREMENT_KEYS:
                values[MEASUREMENT_KEYS[code]] = float(item.MeasuredValueSequence[0].NumericValue)
            elif kind == "TEXT" and code in (REASON_TEXT.value, WARNING_TEXT.value):
                key = "reason_messages" if code == REASON_TEXT.value else "warning_messages"
                values[key].append(str(item.TextValue))
            elif kind == "TEXT" and code == MODEL_SUMMARY.value:
                values["model_summary"] = str(item.TextValue)
            elif kind == "TEXT" and code == DEMO_WARNING.value:
                values["demo_warning"] = str(item.TextValue)
            elif kind == "IMAGE" and hasattr(item, "ReferencedSOPSequence"):
                ref = item.ReferencedSOPSequence[0]
                if hasattr(ref, "ReferencedSegmentNumber"):
                    values["segments"].append((str(ref.ReferencedSOPInstanceUID), int(ref.ReferencedSegmentNumber)))
    return values
