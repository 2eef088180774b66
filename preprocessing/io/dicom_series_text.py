"""Candidate series, the chosen one and the skipped files -> the read report's texts on the series choice.

:func:`describe_series_choice` words which series ``ReaderConfig.series_rule`` chose
(:mod:`covidct.preprocessing.io.dicom_series` makes the choice) and why every other series
was left out: the other candidate axial CT series and the series whose files the header
scan skipped (:mod:`covidct.preprocessing.io.dicom_scan`). Each text names Series Number,
Series Description, slice count, slice thickness (mm) and a one-way key; none names the
patient.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence

from covidct.preprocessing.io.dicom_scan import SliceHeader, series_label
from covidct.preprocessing.io.input_files import OTHER_SERIES, SkippedFile

#: How the series rules of ``ReaderConfig.series_rule`` rank candidate series.
SERIES_RULE_TEXTS = {
    "most_slices": "the most slices, then the thinnest slice thickness",
    "thinnest": "the smallest slice spacing, then the most slices",
}


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
