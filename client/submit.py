"""Send one patient series to the ``covid_ct_pipeline`` ensemble over gRPC.

Only ``HU_VOLUME`` (int16 ``[N, H, W]``, HU), ``SPACING_MM`` (float32 (z, y, x), mm)
and ``SLICE_POSITIONS_MM`` (float32 ``[N]``, mm from the first slice: where slices are
missing, the server sees the gap) leave the client: no patient identifier, no DICOM header, no file name, no request id.
The answer comes back as a frozen :class:`~covidct.client.result.PipelineResult`.

Typical use::

    result = submit("patients/P002", "localhost:8001")          # DICOM folder/zip, NIfTI, TIFF
    with PipelineClient("localhost:8001") as client:            # reuse one connection
        results = [covidct.client.submit(path) for path in paths]

:class:`PipelineClient` is thread-safe (one gRPC channel, shared by threads); see
:mod:`covidct.client.batch` for many patients in flight.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from covidct.errors import ClientError, ModelNotReadyError, ServerUnavailableError
from covidct.serving import tensors
from covidct.preprocessing.reader_config import ReaderConfig
from covidct.preprocessing.io.series_reader import read_series
from covidct.preprocessing.volume import CTVolume

from covidct.client.result import PipelineResult, Timings, parse_result, server_seconds
from covidct.client.shared_memory import SharedMemoryUnavailableError, shared_memory_inputs
from covidct.client.transport import TransportConfig, classify_failure, connect, is_local_url, never_connected

DEFAULT_MODEL = tensors.ENSEMBLE
Source = str | os.PathLike | np.ndarray | CTVolume

__all__ = ["DEFAULT_MODEL", "PipelineClient", "PipelineResult", "build_inputs", "read_volume", "submit"]


def read_volume(
    source: Source,
    *,
    spacing_mm: tuple[float, float, float] | None = None,
    reader: ReaderConfig = ReaderConfig(),
) -> tuple[CTVolume, float]:
    """``(volume, seconds spent reading and decoding)`` of a path, array or CTVolume."""
    if isinstance(source, CTVolume):
        return source, 0.0
    start = time.perf_counter()
    volume = read_series(source, config=reader, spacing_mm=spacing_mm)
    return volume, time.perf_counter() - start


def request_arrays(volume: CTVolume) -> dict[str, np.ndarray]:
    """The three request tensors of one series, by name: nothing but HU, spacing and the
    slice positions relative to the first slice (mm)."""
    positions = np.asarray(volume.positions_mm, dtype=np.float64)
    return {
        tensors.HU_VOLUME: np.ascontiguousarray(volume.hu, dtype=np.int16),
        tensors.SPACING_MM: np.asarray(volume.spacing_mm, dtype=np.float32),
        tensors.SLICE_POSITIONS_MM: (positions - positions[0]).astype(np.float32),
    }


def build_inputs(volume: CTVolume) -> list[grpcclient.InferInput]:
    """The request tensors of one series as plain gRPC inputs (data inside the message)."""
    inputs = []
    for name, array in request_arrays(volume).items():
        item = grpcclient.InferInput(name, list(array.shape), "INT16" if array.dtype == np.int16 else "FP32")
        item.set_data_from_numpy(array)
        inputs.append(item)
    return inputs


class PipelineClient:
    """One connection to the ensemble ``model`` at ``url`` (``host:port`` of Triton's gRPC).

    Checks once (lazily) that the server and model are ready, retrying with backoff while
    they are not reachable or not ready yet. Uses system shared memory for ``HU_VOLUME``
    when ``transport.shared_memory`` allows it and the server is on this host and accepts
    the region; otherwise sends the volume inside the gRPC message.

    ``client``: an existing ``tritonclient.grpc.InferenceServerClient`` to use (not closed here).
    """

    def __init__(
        self,
        url: str,
        *,
        model: str = DEFAULT_MODEL,
        transport: TransportConfig = TransportConfig(),
        client: grpcclient.InferenceServerClient | None = None,
    ) -> None:
        self.url = url
        self.model = model
        self.transport = transport
        self._own_client = client is None
        self._client = client if client is not None else connect(url, transport)
        self._lock = threading.Lock()
        self._ready = False
        self._use_shm = transport.shared_memory == "on" or (
            transport.shared_memory == "auto" and is_local_url(url)
        )

    # -- life cycle
    def close(self) -> None:
        if self._own_client:
            self._client.close()

    def __enter__(self) -> "PipelineClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def grpc(self) -> grpcclient.InferenceServerClient:
        """The underlying tritonclient client."""
        return self._client

    @property
    def uses_shared_memory(self) -> bool:
        """Whether the next request will try system shared memory."""
        return self._use_shm

    # -- readiness
    def _pause(self, attempt: int) -> None:
        time.sleep(self.transport.backoff_s * (2**attempt))

    def wait_ready(self) -> None:
        """Check (once per client) that the server and the model are ready.

        Retries ``transport.retries`` times with backoff on UNAVAILABLE or not-ready.
        Raises ServerUnavailableError, ModelNotReadyError, TLSConfigError or
        DeadlineExceededError.
        """
        with self._lock:
            if self._ready:
                return
            t = self.transport
            kwargs = {"headers": t.header_dict, "client_timeout": t.connect_timeout_s}
            what = f"readiness check of {self.url}"
            for attempt in range(t.retries + 1):
                last = attempt == t.retries
                try:
                    if not self._client.is_server_ready(**kwargs):
                        if last:
                            raise ServerUnavailableError(
                                f"Triton at {self.url} is live but not ready after {t.retries + 1} checks "
                                "(models still loading or shutting down)"
                            )
                        self._pause(attempt)
                        continue
                    if not self._client.is_model_ready(self.model, **kwargs):
                        served, message = self._model_state()
                        if last or not served:  # a missing model does not appear by waiting
                            raise ModelNotReadyError(message)
                        self._pause(attempt)
                        continue
                    self._ready = True
                    return
                except InferenceServerException as exc:
                    if never_connected(exc) and not last:
                        self._pause(attempt)
                        continue
                    raise classify_failure(
                        exc, url=self.url, model=self.model, what=what, config=t, sent=False
                    ) from exc

    def _model_state(self) -> tuple[bool, str]:
        """(model listed in the repository index, message for ModelNotReadyError)."""
        try:
            index = self._client.get_model_repository_index(
                headers=self.transport.header_dict, as_json=True, client_timeout=self.transport.connect_timeout_s
            )
            states = {m.get("name"): m.get("state", "UNKNOWN") for m in index.get("models", [])}
        except InferenceServerException:
            return True, f"model {self.model!r} at {self.url} is not ready (repository index unavailable)"
        if self.model in states:
            return True, f"model {self.model!r} at {self.url} is not ready (state {states[self.model]})"
        served = ", ".join(sorted(n for n in states if n)) or "none listed"
        return False, f"model {self.model!r} is not served at {self.url}; the server has: {served}"

    # -- requests
    def infer_volume(self, volume: CTVolume, *, read_s: float = 0.0) -> PipelineResult:
        """Send one volume; the result's timings include ``read_s`` (seconds)."""
        start = time.perf_counter()
        self.wait_ready()
        t = self.transport
        what = f"series {volume.series_key} ({volume.num_slices} slices)"
        outputs = [grpcclient.InferRequestedOutput(name) for name in tensors.ENSEMBLE_OUTPUTS]
        for attempt in range(t.retries + 1):
            try:
                response, transport, prepare_s, round_trip_s = self._attempt(volume, outputs)
                break
            except InferenceServerException as exc:
                if never_connected(exc) and attempt < t.retries:
                    self._pause(attempt)
                    continue
                raise classify_failure(exc, url=self.url, model=self.model, what=what, config=t, sent=True) from exc
        result = parse_result(
            response,
            round_trip_s,
            positions_mm=volume.positions_mm,
            num_slices=volume.num_slices,
            transport=transport,
            context=f"{self.model} at {self.url}, {what}",
        )
        timings = Timings(
            read_s=read_s,
            prepare_s=prepare_s,
            round_trip_s=round_trip_s,
            total_s=read_s + time.perf_counter() - start,
            server_s=server_seconds(response),
        )
        return replace(result, timings=timings, source_series=volume.source_series,
                       series_left_out=volume.series_left_out)

    def _attempt(self, volume: CTVolume, outputs: list) -> tuple[object, str, float, float]:
        """One request: ``(response, transport, prepare seconds, round-trip seconds)``."""
        t = self.transport
        arrays = request_arrays(volume)
        if self._use_shm:
            start = time.perf_counter()
            try:
                with shared_memory_inputs(
                    self._client,
                    arrays,
                    headers=t.header_dict,
                    timeout_s=t.connect_timeout_s,
                    release_wait_s=t.shm_release_wait_s,
                ) as inputs:
                    prepare_s = time.perf_counter() - start
                    call = time.perf_counter()
                    response = self._client.infer(
                        self.model, inputs, outputs=outputs, client_timeout=t.timeout_s, headers=t.header_dict
                    )
                    return response, "shared_memory", prepare_s, time.perf_counter() - call
            except SharedMemoryUnavailableError as exc:
                if t.shared_memory == "on":
                    raise ClientError(f"shared memory was required but is unavailable: {exc}") from exc
                self._use_shm = False  # same host but no shared /dev/shm (e.g. a container)
        start = time.perf_counter()
        inputs = build_inputs(volume)
        prepare_s = time.perf_counter() - start
        call = time.perf_counter()
        response = self._client.infer(
            self.model, inputs, outputs=outputs, client_timeout=t.timeout_s, headers=t.header_dict
        )
        return response, "grpc", prepare_s, time.perf_counter() - call

    def submit(
        self,
        source: Source,
        *,
        spacing_mm: tuple[float, float, float] | None = None,
        reader: ReaderConfig = ReaderConfig(),
    ) -> PipelineResult:
        """Read ``source`` (path, HU array with ``spacing_mm``, or CTVolume) and send it."""
        volume, read_s = read_volume(source, spacing_mm=spacing_mm, reader=reader)
        return self.infer_volume(volume, read_s=read_s)


def submit(
    source: Source,
    url: str,
    *,
    model: str = DEFAULT_MODEL,
    timeout_s: float | None = None,
    client: grpcclient.InferenceServerClient | None = None,
    transport: TransportConfig | None = None,
    spacing_mm: tuple[float, float, float] | None = None,
    reader: ReaderConfig = ReaderConfig(),
) -> PipelineResult:
    """Send one series to ``model`` at ``url`` (``host:port`` of Triton's gRPC endpoint).

    Args:
        source: DICOM folder/zip/file, ``.nii``/``.nii.gz``, TIFF folder, HU array
            ``[N, H, W]`` (with ``spacing_mm``) or a :class:`CTVolume`.
        timeout_s: deadline of the inference call in seconds (default
            ``transport.timeout_s``, 300 s).
        client: reuse an existing ``tritonclient.grpc.InferenceServerClient``.
        transport: TLS, headers, shared memory, retries (:class:`TransportConfig`).

    Raises:
        SeriesReadError / VolumeError: the series cannot be read.
        ServerUnavailableError, ModelNotReadyError, DeadlineExceededError,
        TLSConfigError, InferenceFailedError (all ClientError), chained to the
        tritonclient exception.
    """
    transport = transport or TransportConfig()
    if timeout_s is not None:
        transport = replace(transport, timeout_s=timeout_s)
    volume, read_s = read_volume(source, spacing_mm=spacing_mm, reader=reader)
    with PipelineClient(url, model=model, transport=transport, client=client) as pipeline:
        return pipeline.infer_volume(volume, read_s=read_s)


def describe_source(source: Source) -> str:
    """A short label of a source for reports (path as given, or the array's shape)."""
    if isinstance(source, CTVolume):
        return f"volume {source.series_key}"
    if isinstance(source, np.ndarray):
        return f"array {list(source.shape)}"
    return str(Path(source))
