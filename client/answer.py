"""The JSON parts of the ensemble's answer: ``ASSESSMENT`` and ``MODEL_CARD``.

``ASSESSMENT`` (BYTES ``[1]``) is ``{"assessable": bool, "reasons": [{"code", "message"}],
"measurements": {name: number}}``: why a series is not assessable (machine-readable
``code``, readable ``message``) and the server's plausibility measurements (units in the
name, e.g. ``lung_volume_ml``). ``MODEL_CARD`` (BYTES ``[1]``) is ``{"classifier": card,
"segmenter": card}``, each card a dict with at least ``network``, ``task``, ``demo``,
``training_data`` (``source_kind``, ``synthetic``, ...) and ``intended_use``; ``{}`` for a
repository exported without cards. Both are checked here; anything malformed is an
:class:`~covidct.errors.InferenceFailedError` naming the tensor.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from covidct.errors import InferenceFailedError
from covidct.serving.tensors import ASSESSMENT, MODEL_CARD

DEMO_WARNING = "Demo model trained on synthetic data; not for clinical use."
"""Shown beside every answer of a demo model whose card carries no warning of its own."""
CARD_KEYS = ("network", "task", "demo", "training_data", "intended_use")
"""Keys every model card has (``MODEL_CARD`` may also be ``{}``: no cards at all)."""


@dataclass(frozen=True)
class Reason:
    """Why a series is not assessable: a machine-readable ``code`` and a readable ``message``."""

    code: str
    message: str


@dataclass(frozen=True)
class Assessment:
    """The server's plausibility verdict on the series itself (before any COVID-19 answer).

    assessable: False when the series is not a plausible adult chest CT.
    reasons: one :class:`Reason` per failed check (empty when assessable).
    warnings: what holds the answer back without refusing it (e.g. ``partial_coverage``:
        a margin of the lung bases or apices outside the scan), same form as ``reasons``.
    measurements: name -> value of what the checks measured (units in the name; NaN
        where the server sent ``null``).
    """

    assessable: bool = True
    reasons: tuple[Reason, ...] = ()
    warnings: tuple[Reason, ...] = ()
    measurements: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON values; a non-finite measurement becomes ``null``."""
        return {
            "assessable": self.assessable,
            "reasons": [{"code": r.code, "message": r.message} for r in self.reasons],
            "warnings": [{"code": w.code, "message": w.message} for w in self.warnings],
            "measurements": {k: (v if math.isfinite(v) else None) for k, v in self.measurements.items()},
        }


def decode_json_tensor(array: np.ndarray, name: str, context: str) -> Any:
    """The JSON value in a BYTES ``[1]`` tensor; InferenceFailedError naming ``name`` otherwise."""
    values = np.asarray(array, dtype=object).reshape(-1)
    if values.size != 1:
        raise InferenceFailedError(f"{context}: output tensor {name} has {values.size} elements; expected 1 JSON text")
    value = values[0]
    try:
        text = value.decode("utf-8") if isinstance(value, bytes) else str(value)
        return json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InferenceFailedError(f"{context}: output tensor {name} is not valid UTF-8 JSON ({exc})") from exc


def _malformed(context: str, name: str, what: str) -> InferenceFailedError:
    return InferenceFailedError(f"{context}: output tensor {name} is malformed: {what}")


def parse_assessment(document: Any, context: str) -> Assessment:
    """An :class:`Assessment` from the decoded ``ASSESSMENT`` JSON (checked field by field)."""
    if not isinstance(document, dict):
        raise _malformed(context, ASSESSMENT, f"expected a JSON object, got {type(document).__name__}")
    assessable = document.get("assessable")
    if not isinstance(assessable, bool):
        raise _malformed(context, ASSESSMENT, f"'assessable' is {assessable!r}; expected true or false")
    reasons = _parse_reasons(document, "reasons", context)
    warnings = _parse_reasons(document, "warnings", context)
    if not assessable and not reasons:
        raise _malformed(context, ASSESSMENT, "not assessable without any reason")
    raw_measurements = document.get("measurements", {})
    if not isinstance(raw_measurements, dict):
        raise _malformed(
            context, ASSESSMENT, f"'measurements' is {type(raw_measurements).__name__}; expected an object"
        )
    measurements = {}
    for key, value in raw_measurements.items():
        if value is None:
            measurements[key] = math.nan
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            measurements[key] = float(value)
        else:
            raise _malformed(context, ASSESSMENT, f"measurement {key!r} is {value!r}; expected a number or null")
    return Assessment(assessable=assessable, reasons=reasons, warnings=warnings, measurements=measurements)


def _parse_reasons(document: dict, key: str, context: str) -> tuple[Reason, ...]:
    """The ``reasons`` or ``warnings`` list of the ``ASSESSMENT`` JSON (absent = empty)."""
    raw = document.get(key, [])
    if not isinstance(raw, list):
        raise _malformed(context, ASSESSMENT, f"{key!r} is {type(raw).__name__}; expected a list")
    items = []
    for i, item in enumerate(raw):
        if not (isinstance(item, dict) and isinstance(item.get("code"), str) and isinstance(item.get("message"), str)):
            raise _malformed(context, ASSESSMENT, f"{key}[{i}] is {item!r}; expected {{'code': str, 'message': str}}")
        items.append(Reason(item["code"], item["message"]))
    return tuple(items)


def parse_model_card(document: Any, context: str) -> dict[str, Any]:
    """The decoded ``MODEL_CARD`` JSON: network name -> card dict (``{}`` without cards)."""
    if not isinstance(document, dict):
        raise _malformed(context, MODEL_CARD, f"expected a JSON object, got {type(document).__name__}")
    for name, card in document.items():
        if not isinstance(card, dict):
            raise _malformed(context, MODEL_CARD, f"card {name!r} is {type(card).__name__}; expected an object")
        missing = [key for key in CARD_KEYS if key not in card]
        if missing:
            raise _malformed(context, MODEL_CARD, f"card {name!r} lacks {', '.join(missing)}")
        if not isinstance(card["demo"], bool):
            raise _malformed(context, MODEL_CARD, f"card {name!r}: 'demo' is {card['demo']!r}; expected true or false")
        data = card["training_data"]
        if not (isinstance(data, dict) and isinstance(data.get("source_kind"), str)
                and isinstance(data.get("synthetic"), bool)):
            raise _malformed(
                context, MODEL_CARD,
                f"card {name!r}: 'training_data' is {data!r}; expected an object with 'source_kind' (string) "
                "and 'synthetic' (true/false)",
            )
    return document


def is_demo(model_card: dict[str, Any]) -> bool:
    """True when any card of ``{"classifier": card, ...}`` has ``demo: true``."""
    return any(card.get("demo") is True for card in model_card.values() if isinstance(card, dict))


def demo_warning_of(model_card: dict[str, Any]) -> str | None:
    """The warning to show beside an answer of a demo model, else ``None``.

    The cards' own ``warning`` sentences (distinct, in card order) when they carry one,
    else :data:`DEMO_WARNING`.
    """
    if not is_demo(model_card):
        return None
    warnings: list[str] = []
    for card in model_card.values():
        text = card.get("warning") if isinstance(card, dict) and card.get("demo") is True else None
        if isinstance(text, str) and text and text not in warnings:
            warnings.append(text)
    return " ".join(warnings) if warnings else DEMO_WARNING


def model_summary(model_card: dict[str, Any]) -> str:
    """One line naming each network and its training data, e.g.
    ``classifier cnn6 (phantom, synthetic); segmenter unet (phantom, synthetic)``."""
    if not model_card:
        return "no model card"
    parts = []
    for role, card in model_card.items():
        data = card.get("training_data") if isinstance(card.get("training_data"), dict) else {}
        kind = str(data.get("source_kind", "unknown data"))
        if data.get("synthetic") is True:
            kind += ", synthetic"
        if card.get("demo") is True:
            kind += ", demo"
        parts.append(f"{role} {card.get('network', '?')} ({kind})")
    return "; ".join(parts)
