"""The batch report: a readable table for people, a JSON document for machines.

The JSON document follows ``client/result_schema.json`` (draft 2020-12); validate with
:func:`validate_report` (needs ``jsonschema``, a dev dependency).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from client.batch import PatientOutcome, batch_exit_code

SCHEMA_PATH = Path(__file__).with_name("result_schema.json")
REPORT_VERSION = 1
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
    ok = [o for o in outcomes if o.ok]
    return {
        "report_version": REPORT_VERSION,
        "server": url,
        "model": model,
        "exit_code": int(batch_exit_code(outcomes)) if outcomes else 0,
        "summary": {
            "patients": len(outcomes),
            "succeeded": len(ok),
            "failed": len(outcomes) - len(ok),
            "positive": sum(o.result.positive for o in ok),
            "negative": sum(not o.result.positive for o in ok),
        },
        "timing_note": TIMING_NOTE,
        "patients": patients,
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


def format_table(outcomes: Sequence[PatientOutcome]) -> str:
    """One row per input: verdict, positive fraction, burden, lung volume, slices, times."""
    width = max([len("input"), *(min(len(o.input), 48) for o in outcomes)])
    header = (
        f"{'input':<{width}}  {'verdict':<9} {'pos.frac':>8} {'burden %':>8} {'lung ml':>8} "
        f"{'selected':>9} {'read s':>7} {'send s':>7} {'total s':>7}  via"
    )
    lines = [header, "-" * len(header)]
    for o in outcomes:
        name = _short(o.input, width)
        if not o.ok:
            lines.append(f"{name:<{width}}  {'ERROR':<9} [exit {o.exit_code}] {o.error_type}: {o.error}")
            continue
        r, t = o.result, o.result.timings
        verdict = "POSITIVE" if r.positive else "negative"
        selected = f"{len(r.selected_indices)}/{r.num_slices}"
        lines.append(
            f"{name:<{width}}  {verdict:<9} {r.positive_fraction:>8.2f} {r.lesion_burden_pct:>8.2f} "
            f"{r.lung_volume_ml:>8.0f} {selected:>9} {t.read_s:>7.2f} {t.prepare_s + t.round_trip_s:>7.2f} "
            f"{t.total_s:>7.2f}  {r.transport}"
        )
    ok = [o for o in outcomes if o.ok]
    lines.append(
        f"{len(outcomes)} patients: {sum(o.result.positive for o in ok)} positive, "
        f"{sum(not o.result.positive for o in ok)} negative, {len(outcomes) - len(ok)} failed"
    )
    return "\n".join(lines)
