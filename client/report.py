"""The batch report: a readable table for people, a JSON document for machines.

The JSON document follows ``client/result_schema.json`` (draft 2020-12, ``report_version``
3); validate with :func:`validate_report` (needs ``jsonschema``, a dev dependency). The
masks stay out of the JSON (overlays show them); every answer carries its model card, and
the answer of a demo model carries the demo warning in the JSON and in the table.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from covidct.client.batch import PatientOutcome, batch_exit_code
from covidct.client.result import NEGATIVE, NOT_ASSESSABLE, POSITIVE, model_summary

SCHEMA_PATH = Path(__file__).with_name("result_schema.json")
REPORT_VERSION = 3
TIMING_NOTE = (
    "timings.round_trip_s covers transfer, server queueing and server compute together; "
    "timings.server_s is null because the server does not report per-request compute time"
)


def report_dict(outcomes: Sequence[PatientOutcome], *, url: str, model: str) -> dict[str, Any]:
    """The JSON report: every input once, in input order, with its result or error."""
    patients = []
    for o in outcomes:
        entry: dict[str, Any] = {
            "input": o.input,
            "status": "ok" if o.ok else "error",
            "exit_code": int(o.exit_code),
        }
        if o.ok:
            entry["result"] = o.result.to_dict()
        else:
            entry["error"] = {"type": o.error_type, "message": o.error}
        patients.append(entry)
    return {
        "report_version": REPORT_VERSION,
        "server": url,
        "model": model,
        "exit_code": int(batch_exit_code(outcomes)) if outcomes else 0,
        "summary": summary_counts(outcomes),
        "timing_note": TIMING_NOTE,
        "patients": patients,
    }


def summary_counts(outcomes: Sequence[PatientOutcome]) -> dict[str, int]:
    """Patients, answers (succeeded), failures, and the answers by name."""
    answers = [o.result.verdict for o in outcomes if o.ok]
    return {
        "patients": len(outcomes),
        "succeeded": len(answers),
        "failed": len(outcomes) - len(answers),
        "positive": answers.count(POSITIVE),
        "negative": answers.count(NEGATIVE),
        "not_assessable": answers.count(NOT_ASSESSABLE),
    }


def report_json(outcomes: Sequence[PatientOutcome], *, url: str, model: str) -> str:
    return json.dumps(report_dict(outcomes, url=url, model=model), indent=2)


def load_schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def validate_report(document: dict[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` when ``document`` breaks the schema."""
    import jsonschema

    jsonschema.validate(document, load_schema(), cls=jsonschema.Draft202012Validator)


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else "..." + text[-(width - 3):]


def answer_label(outcome: PatientOutcome) -> str:
    """``POSITIVE`` / ``negative`` / ``NOT ASSESSABLE``, with ``*`` when a demo model answered."""
    r = outcome.result
    label = {POSITIVE: "POSITIVE", NOT_ASSESSABLE: "NOT ASSESSABLE"}.get(r.verdict, "negative")
    return label + ("*" if r.demo else "")


def _figure(value: float, fmt: str, width: int) -> str:
    return f"{value:>{width}{fmt}}" if value == value else f"{'-':>{width}}"


def format_table(outcomes: Sequence[PatientOutcome]) -> str:
    """One row per input: answer, positive fraction, burden, lung volume, slices, times,
    transport, the reason codes of a not-assessable series or the warning codes
    (``warning: partial_coverage``) of an answer given with a warning; then the counts, which
    series an input of several series was read from (and the ones left out), the
    models that answered (network + training data), the demo warning when a demo
    model answered (its answers are marked ``*``), and the card warnings of models trained
    on real data (``note: ...``)."""
    width = max([len("input"), *(min(len(o.input), 48) for o in outcomes)])
    header = (
        f"{'input':<{width}}  {'answer':<15} {'pos.frac':>8} {'burden %':>8} {'lung ml':>8} "
        f"{'selected':>9} {'read s':>7} {'send s':>7} {'total s':>7}  {'via':<13}  reasons / warnings"
    )
    lines = [header, "-" * len(header)]
    for o in outcomes:
        name = _short(o.input, width)
        if not o.ok:
            lines.append(f"{name:<{width}}  {'ERROR':<15} [exit {o.exit_code}] {o.error_type}: {o.error}")
            continue
        r, t = o.result, o.result.timings
        assessed = r.assessable
        fraction = r.positive_fraction if assessed else float("nan")
        burden = r.lesion_burden_pct if assessed else float("nan")
        selected = f"{len(r.selected_indices)}/{r.num_slices}"
        lines.append(
            f"{name:<{width}}  {answer_label(o):<15} {_figure(fraction, '.2f', 8)} {_figure(burden, '.2f', 8)} "
            f"{_figure(r.lung_volume_ml, '.0f', 8)} {selected:>9} {t.read_s:>7.2f} "
            f"{t.prepare_s + t.round_trip_s:>7.2f} {t.total_s:>7.2f}  {r.transport:<13}  "
            f"{', '.join(r.reason_codes if not assessed else [f'warning: {c}' for c in r.warning_codes])}".rstrip()
        )
    counts = summary_counts(outcomes)
    lines.append(
        f"{counts['patients']} patients: {counts['positive']} positive, {counts['negative']} negative, "
        f"{counts['not_assessable']} not assessable, {counts['failed']} failed"
    )
    summaries = dict.fromkeys(model_summary(o.result.model_card) for o in outcomes if o.ok)
    lines.extend(f"models: {summary}" for summary in summaries)
    lines.extend(f"{o.input}: read {o.result.source_series}; left out: {'; '.join(o.result.series_left_out)}"
                 for o in outcomes if o.ok and o.result.series_left_out)
    warnings = dict.fromkeys(o.result.demo_warning for o in outcomes if o.ok and o.result.demo)
    lines.extend(f"* {warning}" for warning in warnings)
    # a model trained on real data still says what it is not for (its card's warning)
    notes = dict.fromkeys(str(card["warning"]) for o in outcomes if o.ok and not o.result.demo
                          for card in o.result.model_card.values()
                          if isinstance(card, dict) and card.get("warning") and not card.get("demo"))
    lines.extend(f"note: {note}" for note in notes)
    return "\n".join(lines)
