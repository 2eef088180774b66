"""Typed answers of the ``covid_ct_pipeline`` ensemble and their parsing.

:class:`PipelineResult` is what :func:`client.submit.submit` returns for one series;
:class:`Timings` splits the client-side wall time of that call. Times are seconds,
positions mm, volumes ml, burden percent.

Server time: Triton 2.51 puts no per-request timing into the inference response, and
the ``get_inference_statistics`` counters are cumulative over all clients (a delta is
not per-request safe under concurrency). The client therefore reports the measured
round trip of the gRPC call (``round_trip_s``: request serialization + transfer +
server queue and compute + response) and fills ``server_s`` only when the response
carries a ``server_compute_ns``-style parameter (none does today); the benchmark
``benchmarks/bench_client.py`` splits transfer and server compute at concurrency 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from covidct.errors import InferenceFailedError

OUTPUT_NAMES = (
    "VERDICT",
    "POSITIVE_FRACTION",
    "VOTE_THRESHOLD",
    "SLICE_PROBABILITIES",
    "SELECTED_INDICES",
    "LESION_BURDEN_PCT",
    "LUNG_VOLUME_ML",
    "MODEL_VERSIONS",
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


@dataclass(frozen=True)
class PipelineResult:
    """The ensemble's answer for one series.

    verdict: 1 = COVID-19 positive, 0 = negative.
    positive_fraction: fraction of selected slices whose probability passed the slice threshold.
    vote_threshold: fraction needed for a positive verdict.
    slice_probabilities: float32 ``[K]``, one per selected slice.
    selected_indices: int32 ``[K]``, indices into the sent volume's slice axis.
    lesion_burden_pct: infected share of the lung over the selected slices (percent).
    lung_volume_ml: lung volume over the selected slices (ml).
    model_versions: ``"name=arch:version:sha256:..."`` per served network.
    latency_s: wall time of the gRPC call (seconds; same as ``timings.round_trip_s``).
    slice_positions_mm: float64 ``[K]``, slice positions of the selected slices (mm,
        ``CTVolume.positions_mm``); empty when the caller did not give positions.
    num_slices: N, slices of the sent volume.
    transport: ``"shared_memory"`` or ``"grpc"`` (how HU_VOLUME travelled).
    timings: client-side time split, see :class:`Timings`.
    """

    verdict: int
    positive_fraction: float
    vote_threshold: float
    slice_probabilities: np.ndarray
    selected_indices: np.ndarray
    lesion_burden_pct: float
    lung_volume_ml: float
    model_versions: tuple[str, ...]
    latency_s: float
    slice_positions_mm: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    num_slices: int = 0
    transport: str = "grpc"
    timings: Timings = field(default_factory=Timings)

    @property
    def positive(self) -> bool:
        return self.verdict == 1

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable values (the ``result`` object of ``result_schema.json``)."""
        t = self.timings
        return {
            "verdict": int(self.verdict),
            "positive_fraction": float(self.positive_fraction),
            "vote_threshold": float(self.vote_threshold),
            "slice_probabilities": [float(p) for p in self.slice_probabilities],
            "selected_indices": [int(i) for i in self.selected_indices],
            "slice_positions_mm": [float(z) for z in self.slice_positions_mm],
            "lesion_burden_pct": float(self.lesion_burden_pct),
            "lung_volume_ml": float(self.lung_volume_ml),
            "model_versions": list(self.model_versions),
            "latency_s": float(self.latency_s),
            "num_slices": int(self.num_slices),
            "transport": self.transport,
            "timings": {
                "read_s": float(t.read_s),
                "prepare_s": float(t.prepare_s),
                "round_trip_s": float(t.round_trip_s),
                "total_s": float(t.total_s),
                "server_s": None if t.server_s is None else float(t.server_s),
            },
        }


def output_arrays(response: Any, context: str) -> dict[str, np.ndarray]:
    """The ensemble's output tensors of a tritonclient ``InferResult`` by name.

    Raises InferenceFailedError naming the missing tensor (``context`` says which request).
    """
    arrays = {}
    for name in OUTPUT_NAMES:
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


def parse_result(
    response: Any,
    latency_s: float,
    *,
    positions_mm: np.ndarray | None = None,
    num_slices: int = 0,
    transport: str = "grpc",
    timings: Timings | None = None,
    context: str = "covid_ct_pipeline",
) -> PipelineResult:
    """Turn the ensemble's output tensors into a :class:`PipelineResult`.

    ``positions_mm`` (mm, ``[N]``) of the sent volume gives ``slice_positions_mm``;
    an index outside ``[0, N)`` raises InferenceFailedError.
    """
    arrays = output_arrays(response, context)
    selected = arrays["SELECTED_INDICES"].astype(np.int32).reshape(-1)
    if positions_mm is not None and len(positions_mm):
        if selected.size and (selected.min() < 0 or selected.max() >= len(positions_mm)):
            raise InferenceFailedError(
                f"{context}: SELECTED_INDICES {selected.min()}..{selected.max()} outside the "
                f"{len(positions_mm)} slices sent"
            )
        slice_positions = np.asarray(positions_mm, dtype=np.float64)[selected]
    else:
        slice_positions = np.zeros(0, np.float64)
    return PipelineResult(
        verdict=int(arrays["VERDICT"].reshape(-1)[0]),
        positive_fraction=float(arrays["POSITIVE_FRACTION"].reshape(-1)[0]),
        vote_threshold=float(arrays["VOTE_THRESHOLD"].reshape(-1)[0]),
        slice_probabilities=arrays["SLICE_PROBABILITIES"].astype(np.float32).reshape(-1),
        selected_indices=selected,
        lesion_burden_pct=float(arrays["LESION_BURDEN_PCT"].reshape(-1)[0]),
        lung_volume_ml=float(arrays["LUNG_VOLUME_ML"].reshape(-1)[0]),
        model_versions=tuple(
            v.decode("utf-8") if isinstance(v, bytes) else str(v)
            for v in arrays["MODEL_VERSIONS"].reshape(-1)
        ),
        latency_s=latency_s,
        slice_positions_mm=slice_positions,
        num_slices=int(num_slices),
        transport=transport,
        timings=timings or Timings(round_trip_s=latency_s, total_s=latency_s),
    )
