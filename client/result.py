"""Typed answers of the ``covid_ct_pipeline`` ensemble and their parsing.

:class:`PipelineResult` is what :func:`covidct.client.submit.submit` returns for one series: the
answer (``"positive"``, ``"negative"`` or ``"not_assessable"`` with machine-readable
reasons), the slice probabilities, the whole-lung masks on the server's reduced grid,
the whole-lung volume and lesion burden, and the model cards of the served networks.
:class:`Timings` splits the client-side wall time of that call. Times are seconds,
positions mm, volumes ml, burden percent; masks ``[L, m, m]`` (one plane per lung-bearing
slice, the m x m grid covering the whole ``H x W`` slice).

Every tensor name comes from :mod:`covidct.serving.tensors`. :func:`parse_arrays` turns
a mapping ``name -> numpy array`` into a result; :func:`parse_result` does the same for a
tritonclient ``InferResult``. A missing tensor, a wrong shape or malformed JSON is an
:class:`~covidct.errors.InferenceFailedError` naming the tensor.

Server time: Triton 2.51 puts no per-request timing into the inference response, and
the ``get_inference_statistics`` counters are cumulative over all clients (a delta is
not per-request safe under concurrency). The client therefore reports the measured
round trip of the gRPC call (``round_trip_s``: request serialization + transfer +
server queue and compute + response) and fills ``server_s`` only when the response
carries a ``server_compute_ns``-style parameter (none does today); the benchmark
``benchmarks/bench_client.py`` splits transfer and server compute at concurrency 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from covidct.errors import InferenceFailedError
from covidct.serving import tensors

from covidct.client.answer import (
    DEMO_WARNING,
    Assessment,
    Reason,
    decode_json_tensor,
    demo_warning_of,
    is_demo,
    model_summary,
    parse_assessment,
    parse_model_card,
)

__all__ = [
    "DEMO_WARNING",
    "Assessment",
    "PipelineResult",
    "Reason",
    "Timings",
    "model_summary",
    "output_arrays",
    "parse_arrays",
    "parse_result",
    "server_seconds",
]

#: The names of the answers (``PipelineResult.verdict``), by ``VERDICT`` value.
VERDICT_NAMES: Mapping[int, str] = tensors.VERDICT_NAMES
POSITIVE, NEGATIVE, NOT_ASSESSABLE = (
    tensors.VERDICT_NAMES[tensors.VERDICT_POSITIVE],
    tensors.VERDICT_NAMES[tensors.VERDICT_NEGATIVE],
    tensors.VERDICT_NAMES[tensors.VERDICT_NOT_ASSESSABLE],
)

#: Response parameters (nanoseconds) that would carry the server's own compute time.
SERVER_TIME_PARAMETERS = ("server_compute_ns", "compute_infer_ns")


@dataclass(frozen=True)
class Timings:
    """Client-side time split of one request (seconds).

    read_s: reading and decoding the series into HU (0 for an in-memory volume).
    prepare_s: copying the volume into shared memory and registering it, or building
        the gRPC input tensors (plain path).
    round_trip_s: the gRPC ``infer`` call: transfer + server queue + server compute.
    total_s: read + prepare + round trip + response parsing + clean-up.
    server_s: server compute from the response parameters; ``None`` when the server
        does not report it (Triton 2.51), then ``round_trip_s`` holds both.
    """

    read_s: float = 0.0
    prepare_s: float = 0.0
    round_trip_s: float = 0.0
    total_s: float = 0.0
    server_s: float | None = None


def _empty_masks() -> np.ndarray:
    return np.zeros((0, 0, 0), np.uint8)


@dataclass(frozen=True)
class PipelineResult:
    """The ensemble's answer for one series.

    verdict: ``"positive"``, ``"negative"`` or ``"not_assessable"`` (see ``assessment``).
    verdict_code: the ``VERDICT`` value: 1 positive, 0 negative, -1 not assessable.
    assessment: whether the series is a plausible chest CT, the reasons when not, and the
        server's plausibility measurements (name -> value, units in the name).
    positive_fraction: fraction of selected slices whose probability passed the slice threshold.
    vote_threshold: fraction needed for a positive verdict.
    slice_probabilities: float32 ``[K]``, one per selected slice.
    selected_indices: int32 ``[K]``, indices into the sent volume's slice axis.
    lesion_burden_pct: infected share of the whole lung volume (percent).
    lung_volume_ml: volume of both lungs over every lung-bearing slice (ml).
    model_versions: ``"name=arch:version:sha256:..."`` per served network.
    latency_s: wall time of the gRPC call (seconds; same as ``timings.round_trip_s``).
    lung_slices: int32 ``[L]``, the lung-bearing slices (indices into the sent volume).
    lung_mask: uint8 ``[L, m, m]``: 0 background, 1 right lung, 2 left lung.
    infection_mask: uint8 ``[L, m, m]``: 1 where the segmenter marks infection.
    mask_spacing_mm: ``(z, y, x)`` spacing of the mask grid (mm).
    model_card: ``{"classifier": card, "segmenter": card}`` (``{}`` without cards).
    slice_positions_mm: float64 ``[K]``, slice positions of the selected slices (mm,
        ``CTVolume.positions_mm``); empty when the caller did not give positions.
    num_slices: N, slices of the sent volume.
    transport: ``"shared_memory"`` or ``"grpc"`` (how HU_VOLUME travelled).
    timings: client-side time split, see :class:`Timings`.
    source_series: which series of the input was sent, and why (``CTVolume.source_series``).
    series_left_out: the input's other series, each in words (``CTVolume.series_left_out``).
    """

    verdict: str
    positive_fraction: float
    vote_threshold: float
    slice_probabilities: np.ndarray
    selected_indices: np.ndarray
    lesion_burden_pct: float
    lung_volume_ml: float
    model_versions: tuple[str, ...]
    latency_s: float
    assessment: Assessment = field(default_factory=Assessment)
    lung_slices: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    lung_mask: np.ndarray = field(default_factory=_empty_masks)
    infection_mask: np.ndarray = field(default_factory=_empty_masks)
    mask_spacing_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    model_card: dict[str, Any] = field(default_factory=dict)
    slice_positions_mm: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    num_slices: int = 0
    transport: str = "grpc"
    timings: Timings = field(default_factory=Timings)
    source_series: str = ""
    series_left_out: tuple[str, ...] = ()

    @property
    def verdict_code(self) -> int:
        """The ``VERDICT`` value of the answer: 1 positive, 0 negative, -1 not assessable."""
        return {name: code for code, name in VERDICT_NAMES.items()}[self.verdict]

    @property
    def positive(self) -> bool:
        return self.verdict == POSITIVE

    @property
    def assessable(self) -> bool:
        return self.verdict != NOT_ASSESSABLE

    @property
    def reason_codes(self) -> tuple[str, ...]:
        """The machine-readable codes of the not-assessable reasons (empty otherwise)."""
        return tuple(r.code for r in self.assessment.reasons)

    @property
    def warning_codes(self) -> tuple[str, ...]:
        """The codes of the warnings that hold the answer back without refusing it
        (e.g. ``partial_coverage``)."""
        return tuple(w.code for w in self.assessment.warnings)

    @property
    def demo(self) -> bool:
        """True when any served network's card says it is a demo model."""
        return is_demo(self.model_card)

    @property
    def demo_warning(self) -> str | None:
        """The sentence to show beside this answer when a demo model gave it, else ``None``."""
        return demo_warning_of(self.model_card)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable values (the ``result`` object of ``result_schema.json``).

        The masks stay out (they go to overlays); ``lung_slices`` says where they lie.
        """
        t = self.timings
        return {
            "verdict": self.verdict,
            "assessment": self.assessment.to_dict(),
            "positive_fraction": _finite_or_none(self.positive_fraction),
            "vote_threshold": _finite_or_none(self.vote_threshold),
            "slice_probabilities": [float(p) for p in self.slice_probabilities],
            "selected_indices": [int(i) for i in self.selected_indices],
            "slice_positions_mm": [float(z) for z in self.slice_positions_mm],
            "lung_slices": [int(i) for i in self.lung_slices],
            "mask_spacing_mm": [float(s) for s in self.mask_spacing_mm],
            "lesion_burden_pct": _finite_or_none(self.lesion_burden_pct),
            "lung_volume_ml": _finite_or_none(self.lung_volume_ml),
            "model_versions": list(self.model_versions),
            "model_card": self.model_card,
            "demo": self.demo,
            "demo_warning": self.demo_warning,
            "latency_s": float(self.latency_s),
            "num_slices": int(self.num_slices),
            "transport": self.transport,
            "series": self.source_series,
            "series_left_out": list(self.series_left_out),
            "timings": {
                "read_s": float(t.read_s),
                "prepare_s": float(t.prepare_s),
                "round_trip_s": float(t.round_trip_s),
                "total_s": float(t.total_s),
                "server_s": None if t.server_s is None else float(t.server_s),
            },
        }


def _finite_or_none(value: float) -> float | None:
    """JSON has no NaN: a figure the server could not compute is ``null``."""
    return float(value) if math.isfinite(value) else None


def output_arrays(response: Any, context: str) -> dict[str, np.ndarray]:
    """The ensemble's output tensors of a tritonclient ``InferResult`` by name.

    Raises InferenceFailedError naming the missing tensor (``context`` says which request).
    """
    arrays = {}
    for name in tensors.ENSEMBLE_OUTPUTS:
        array = response.as_numpy(name)
        if array is None:
            raise InferenceFailedError(f"{context}: the server's response has no output tensor {name}")
        arrays[name] = array
    return arrays


def server_seconds(response: Any) -> float | None:
    """Server compute time from the response parameters (seconds), or ``None``."""
    try:
        parameters = response.get_response().parameters
    except AttributeError:
        return None
    for key in SERVER_TIME_PARAMETERS:
        if key in parameters:
            return parameters[key].int64_param / 1e9
    return None


def _scalar(arrays: Mapping[str, np.ndarray], name: str, context: str) -> float:
    array = np.asarray(arrays[name])
    if array.size != 1:
        raise InferenceFailedError(f"{context}: output tensor {name} has shape {list(array.shape)}; expected [1]")
    return array.reshape(-1)[0].item()


def _indices(arrays: Mapping[str, np.ndarray], name: str, num_slices: int, context: str) -> np.ndarray:
    """An INT32 index vector, checked against ``[0, num_slices)`` when ``num_slices`` > 0."""
    indices = np.asarray(arrays[name]).astype(np.int32).reshape(-1)
    if num_slices > 0 and indices.size and (indices.min() < 0 or indices.max() >= num_slices):
        raise InferenceFailedError(
            f"{context}: {name} {indices.min()}..{indices.max()} outside the {num_slices} slices sent"
        )
    return indices


def _masks(arrays: Mapping[str, np.ndarray], num_lung_slices: int, context: str) -> tuple[np.ndarray, np.ndarray]:
    """``(LUNG_MASK, INFECTION_MASK)`` as uint8 ``[L, m, m]``, checked against ``LUNG_SLICES``."""
    masks = []
    for name in (tensors.LUNG_MASK, tensors.INFECTION_MASK):
        mask = np.asarray(arrays[name])
        if num_lung_slices == 0 and mask.size == 0:
            mask = mask.reshape((0, *mask.shape[1:3])) if mask.ndim == 3 else np.zeros((0, 0, 0), np.uint8)
        if mask.ndim != 3 or mask.shape[0] != num_lung_slices or (num_lung_slices and min(mask.shape[1:]) < 1):
            raise InferenceFailedError(
                f"{context}: output tensor {name} has shape {list(mask.shape)}; expected "
                f"[{num_lung_slices}, m, m] (one m x m plane per entry of {tensors.LUNG_SLICES})"
            )
        masks.append(mask.astype(np.uint8, copy=False))
    if masks[0].shape != masks[1].shape:
        raise InferenceFailedError(
            f"{context}: output tensor {tensors.INFECTION_MASK} has shape {list(masks[1].shape)}; expected the shape "
            f"of {tensors.LUNG_MASK} {list(masks[0].shape)}"
        )
    return masks[0], masks[1]


def _verdict(arrays: Mapping[str, np.ndarray], assessment: Assessment, context: str) -> str:
    code = _scalar(arrays, tensors.VERDICT, context)
    if code not in VERDICT_NAMES:
        raise InferenceFailedError(
            f"{context}: output tensor {tensors.VERDICT} is {code}; expected one of {sorted(VERDICT_NAMES)}"
        )
    name = VERDICT_NAMES[code]
    if (name != NOT_ASSESSABLE) != assessment.assessable:
        raise InferenceFailedError(
            f"{context}: output tensor {tensors.VERDICT} is {code} ({name}) but {tensors.ASSESSMENT} says "
            f"assessable={assessment.assessable}"
        )
    return name


def parse_arrays(
    arrays: Mapping[str, np.ndarray],
    latency_s: float,
    *,
    positions_mm: np.ndarray | None = None,
    num_slices: int = 0,
    transport: str = "grpc",
    timings: Timings | None = None,
    context: str = tensors.ENSEMBLE,
) -> PipelineResult:
    """Turn the ensemble's output tensors (name -> numpy array) into a :class:`PipelineResult`.

    ``positions_mm`` (mm, ``[N]``) of the sent volume gives ``slice_positions_mm``; an
    index of ``SELECTED_INDICES`` or ``LUNG_SLICES`` outside ``[0, N)`` raises
    InferenceFailedError, as does a missing tensor, a wrong shape, an unknown ``VERDICT``
    or a malformed ``ASSESSMENT``/``MODEL_CARD`` JSON (``context`` says which request).
    """
    missing = [name for name in tensors.ENSEMBLE_OUTPUTS if name not in arrays]
    if missing:
        raise InferenceFailedError(f"{context}: the server's response has no output tensor {missing[0]}")
    n = int(num_slices) or (len(positions_mm) if positions_mm is not None else 0)
    selected = _indices(arrays, tensors.SELECTED_INDICES, n, context)
    lung_slices = _indices(arrays, tensors.LUNG_SLICES, n, context)
    if positions_mm is not None and len(positions_mm):
        slice_positions = np.asarray(positions_mm, dtype=np.float64)[selected]
    else:
        slice_positions = np.zeros(0, np.float64)
    probabilities = np.asarray(arrays[tensors.SLICE_PROBABILITIES]).astype(np.float32).reshape(-1)
    if probabilities.size != selected.size:
        raise InferenceFailedError(
            f"{context}: output tensor {tensors.SLICE_PROBABILITIES} has {probabilities.size} values; expected one per "
            f"entry of {tensors.SELECTED_INDICES} ({selected.size})"
        )
    spacing = np.asarray(arrays[tensors.MASK_SPACING_MM], dtype=np.float64).reshape(-1)
    if spacing.size != 3:
        raise InferenceFailedError(
            f"{context}: output tensor {tensors.MASK_SPACING_MM} has {spacing.size} values; expected 3"
        )
    lung_mask, infection_mask = _masks(arrays, lung_slices.size, context)
    assessment = parse_assessment(decode_json_tensor(arrays[tensors.ASSESSMENT], tensors.ASSESSMENT, context), context)
    model_card = parse_model_card(decode_json_tensor(arrays[tensors.MODEL_CARD], tensors.MODEL_CARD, context), context)
    return PipelineResult(
        verdict=_verdict(arrays, assessment, context),
        assessment=assessment,
        positive_fraction=float(_scalar(arrays, tensors.POSITIVE_FRACTION, context)),
        vote_threshold=float(_scalar(arrays, tensors.VOTE_THRESHOLD, context)),
        slice_probabilities=probabilities,
        selected_indices=selected,
        lesion_burden_pct=float(_scalar(arrays, tensors.LESION_BURDEN_PCT, context)),
        lung_volume_ml=float(_scalar(arrays, tensors.LUNG_VOLUME_ML, context)),
        model_versions=tuple(
            v.decode("utf-8") if isinstance(v, bytes) else str(v)
            for v in np.asarray(arrays[tensors.MODEL_VERSIONS]).reshape(-1)
        ),
        latency_s=latency_s,
        lung_slices=lung_slices,
        lung_mask=lung_mask,
        infection_mask=infection_mask,
        mask_spacing_mm=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
        model_card=model_card,
        slice_positions_mm=slice_positions,
        num_slices=int(num_slices),
        transport=transport,
        timings=timings or Timings(round_trip_s=latency_s, total_s=latency_s),
    )


def parse_result(
    response: Any,
    latency_s: float,
    *,
    positions_mm: np.ndarray | None = None,
    num_slices: int = 0,
    transport: str = "grpc",
    timings: Timings | None = None,
    context: str = tensors.ENSEMBLE,
) -> PipelineResult:
    """:func:`parse_arrays` of a tritonclient ``InferResult`` (``response.as_numpy(name)``)."""
    return parse_arrays(
        output_arrays(response, context),
        latency_s,
        positions_mm=positions_mm,
        num_slices=num_slices,
        transport=transport,
        timings=timings,
        context=context,
    )
