"""Send one patient series to the ``covid_ct_pipeline`` ensemble over gRPC.

Only ``HU_VOLUME`` (int16 ``[N, H, W]``, HU) and ``SPACING_MM`` (float32 (z, y, x), mm)
leave the client: no patient identifier is sent. The answer comes back as a frozen
:class:`PipelineResult`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from covidct.errors import ClientError
from preprocessing.volume import CTVolume

DEFAULT_MODEL = "covid_ct_pipeline"
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
    latency_s: wall time of the gRPC call (seconds).
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

    @property
    def positive(self) -> bool:
        return self.verdict == 1

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable values."""
        data = asdict(self)
        data["slice_probabilities"] = [float(p) for p in self.slice_probabilities]
        data["selected_indices"] = [int(i) for i in self.selected_indices]
        data["model_versions"] = list(self.model_versions)
        return data


def build_inputs(volume: CTVolume) -> list[grpcclient.InferInput]:
    """The two request tensors of one series."""
    hu = np.ascontiguousarray(volume.hu, dtype=np.int16)
    spacing = np.asarray(volume.spacing_mm, dtype=np.float32)
    hu_input = grpcclient.InferInput("HU_VOLUME", list(hu.shape), "INT16")
    hu_input.set_data_from_numpy(hu)
    spacing_input = grpcclient.InferInput("SPACING_MM", [3], "FP32")
    spacing_input.set_data_from_numpy(spacing)
    return [hu_input, spacing_input]


def parse_result(response: grpcclient.InferResult, latency_s: float) -> PipelineResult:
    """Turn the ensemble's output tensors into a :class:`PipelineResult`."""
    arrays = {}
    for name in OUTPUT_NAMES:
        array = response.as_numpy(name)
        if array is None:
            raise ClientError(f"the server's response has no output tensor {name}")
        arrays[name] = array
    return PipelineResult(
        verdict=int(arrays["VERDICT"].reshape(-1)[0]),
        positive_fraction=float(arrays["POSITIVE_FRACTION"].reshape(-1)[0]),
        vote_threshold=float(arrays["VOTE_THRESHOLD"].reshape(-1)[0]),
        slice_probabilities=arrays["SLICE_PROBABILITIES"].astype(np.float32).reshape(-1),
        selected_indices=arrays["SELECTED_INDICES"].astype(np.int32).reshape(-1),
        lesion_burden_pct=float(arrays["LESION_BURDEN_PCT"].reshape(-1)[0]),
        lung_volume_ml=float(arrays["LUNG_VOLUME_ML"].reshape(-1)[0]),
        model_versions=tuple(
            v.decode("utf-8") if isinstance(v, bytes) else str(v)
            for v in arrays["MODEL_VERSIONS"].reshape(-1)
        ),
        latency_s=latency_s,
    )


def submit(
    volume: CTVolume,
    url: str,
    *,
    model: str = DEFAULT_MODEL,
    timeout_s: float = 300.0,
    client: grpcclient.InferenceServerClient | None = None,
) -> PipelineResult:
    """Send ``volume`` to ``model`` at ``url`` (``host:port`` of Triton's gRPC endpoint).

    ``timeout_s`` is the gRPC deadline of the call. Pass ``client`` to reuse a connection.
    Raises ClientError (chained to the tritonclient exception) when the server rejects the
    request, the deadline passes or the server cannot be reached.
    """
    own_client = client is None
    if client is None:
        try:
            client = grpcclient.InferenceServerClient(url)
        except InferenceServerException as exc:
            raise ClientError(f"cannot connect to Triton at {url}: {exc.message()}") from exc
    try:
        inputs = build_inputs(volume)
        outputs = [grpcclient.InferRequestedOutput(name) for name in OUTPUT_NAMES]
        start = time.perf_counter()
        response = client.infer(model, inputs, outputs=outputs, client_timeout=timeout_s)
        latency_s = time.perf_counter() - start
    except InferenceServerException as exc:
        raise ClientError(
            f"{model} at {url} failed for series {volume.series_key} "
            f"({volume.hu.shape[0]} slices): {exc.message()}"
        ) from exc
    finally:
        if own_client:
            client.close()
    return parse_result(response, latency_s)
