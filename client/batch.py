"""Many patients in flight: :func:`submit_many` and the per-patient outcomes.

Concurrency model: a thread pool over one shared :class:`~covidct.client.submit.PipelineClient`
(one gRPC channel; tritonclient's gRPC client is thread-safe for unary calls). Threads,
not ``tritonclient.grpc.aio``, because reading a series (file I/O, pydicom/pylibjpeg
decoding) is blocking work that an asyncio loop would hand to an executor anyway; the
blocking gRPC call releases the GIL while it waits, so ``concurrency`` threads keep that
many patients in flight; and the system-shared-memory helpers of tritonclient are
synchronous. At most ``concurrency`` volumes are in memory at once.

Every input gets exactly one :class:`PatientOutcome`, in input order: a result or the
error with its exit code; nothing is lost when some patients fail. A not-assessable
series is a result (exit code 11), not an error: the rest of the batch is unaffected.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass

from covidct.errors import (
    ClientError,
    CovidCTError,
    DeadlineExceededError,
    DicomResultsError,
    InferenceFailedError,
    InputError,
    ModelNotReadyError,
    ServerUnavailableError,
    TLSConfigError,
)
from covidct.preprocessing.reader_config import ReaderConfig
from covidct.preprocessing.volume import CTVolume

from covidct.client.result import PipelineResult
from covidct.client.submit import DEFAULT_MODEL, PipelineClient, Source, describe_source, read_volume
from covidct.client.transport import TransportConfig


class ExitCode(enum.IntEnum):
    """Exit codes of ``covidct-client`` (also per patient in the JSON report)."""

    NEGATIVE = 0  # every patient negative
    INTERNAL = 1  # unexpected error (a bug): see the message
    BAD_INPUT = 2  # unreadable/invalid series, bad arguments
    SERVER_UNAVAILABLE = 3  # nothing answers, wrong port, server not ready, connection lost
    DEADLINE = 4  # the request's deadline passed (it may have run)
    TLS = 5  # certificate files or TLS handshake
    MODEL_NOT_READY = 6  # the model is missing or not ready
    INFERENCE_FAILED = 7  # the server rejected or failed the request
    PARTIAL = 8  # several patients, some failed (see the report)
    RESULTS_NOT_STORED = 9  # answered, but the DICOM SEG/SR could not be built, written or stored
    POSITIVE = 10  # at least one patient positive, none failed
    NOT_ASSESSABLE = 11  # at least one series not assessable, none positive, none failed


def exit_code_of(error: BaseException) -> ExitCode:
    """The exit code of one error (narrowest class first)."""
    for cls, code in (
        (DicomResultsError, ExitCode.RESULTS_NOT_STORED),
        (TLSConfigError, ExitCode.TLS),
        (DeadlineExceededError, ExitCode.DEADLINE),
        (ModelNotReadyError, ExitCode.MODEL_NOT_READY),
        (ServerUnavailableError, ExitCode.SERVER_UNAVAILABLE),
        (InferenceFailedError, ExitCode.INFERENCE_FAILED),
        (InputError, ExitCode.BAD_INPUT),
        (ClientError, ExitCode.SERVER_UNAVAILABLE),
        (CovidCTError, ExitCode.BAD_INPUT),
    ):
        if isinstance(error, cls):
            return code
    return ExitCode.INTERNAL


def exit_code_of_result(result: PipelineResult) -> ExitCode:
    """The exit code of one answer: 10 positive, 11 not assessable, 0 negative."""
    if result.positive:
        return ExitCode.POSITIVE
    if not result.assessable:
        return ExitCode.NOT_ASSESSABLE
    return ExitCode.NEGATIVE


@dataclass(frozen=True)
class PatientOutcome:
    """One input's outcome: ``result`` or (``error_type``, ``error``, ``exit_code``).

    With a result, ``exit_code`` is that answer's code (:func:`exit_code_of_result`).
    """

    input: str
    result: PipelineResult | None = None
    error_type: str | None = None
    error: str | None = None
    exit_code: int = 0

    def __post_init__(self) -> None:
        if self.result is not None:
            object.__setattr__(self, "exit_code", int(exit_code_of_result(self.result)))

    @property
    def ok(self) -> bool:
        return self.result is not None

    @classmethod
    def failed(cls, label: str, error: BaseException) -> "PatientOutcome":
        return cls(label, error_type=type(error).__name__, error=str(error), exit_code=int(exit_code_of(error)))


def batch_exit_code(outcomes: Sequence[PatientOutcome]) -> ExitCode:
    """The exit code of a whole batch.

    Only answers (no failure): 10 when any patient is positive, else 11 when any series
    is not assessable, else 0 (all negative). Failures: every input failed with one
    shared code: that code; mixed failure codes, or failures next to answers: 8.
    """
    failed = [o for o in outcomes if not o.ok]
    if not failed:
        if any(o.result.positive for o in outcomes):
            return ExitCode.POSITIVE
        if any(not o.result.assessable for o in outcomes):
            return ExitCode.NOT_ASSESSABLE
        return ExitCode.NEGATIVE
    codes = {o.exit_code for o in failed}
    if len(failed) == len(outcomes) and len(codes) == 1:
        return ExitCode(codes.pop())
    return ExitCode.PARTIAL


AfterHook = Callable[[str, CTVolume, PipelineResult], None]


def submit_many(
    sources: Sequence[Source],
    url: str,
    *,
    model: str = DEFAULT_MODEL,
    transport: TransportConfig = TransportConfig(),
    concurrency: int = 8,
    reader: ReaderConfig | None = None,
    progress: bool = False,
    after: AfterHook | None = None,
) -> list[PatientOutcome]:
    """Read and send every source with ``concurrency`` patients in flight.

    Returns one :class:`PatientOutcome` per source, in input order. A server that is
    unreachable before the first request fails every patient with that error (no
    reading). ``reader`` defaults to one decode process per series when
    ``concurrency > 1`` (the threads already use the cores). ``after(label, volume,
    result)`` runs in the worker thread after each success (e.g. overlays); its error
    becomes the patient's error. ``progress`` shows a bar on stderr when it is a terminal.
    """
    if concurrency < 1:
        raise ClientError(f"concurrency is {concurrency}; expected at least 1")
    labels = [describe_source(s) for s in sources]
    if reader is None:
        reader = ReaderConfig(decode_workers=1) if concurrency > 1 else ReaderConfig()
    outcomes: list[PatientOutcome | None] = [None] * len(sources)
    try:
        client = PipelineClient(url, model=model, transport=transport)
    except ClientError as exc:  # e.g. TLS files unreadable
        return [PatientOutcome.failed(label, exc) for label in labels]
    with client:
        try:
            client.wait_ready()
        except ClientError as exc:
            return [PatientOutcome.failed(label, exc) for label in labels]

        def run(index: int) -> PatientOutcome:
            label = labels[index]
            try:
                volume, read_s = read_volume(sources[index], reader=reader)
                result = client.infer_volume(volume, read_s=read_s)
                if after is not None:
                    after(label, volume, result)
                return PatientOutcome(label, result=result)
            except Exception as exc:  # noqa: BLE001 - every patient is reported, whatever failed
                return PatientOutcome.failed(label, exc)

        from covidct.progress import progress as progress_bar

        with ThreadPoolExecutor(max_workers=min(concurrency, max(1, len(sources)))) as pool:
            futures = {pool.submit(run, i): i for i in range(len(sources))}
            bar = progress_bar(total=len(sources), unit="patient", disable=not progress, leave=False)
            try:
                for future in as_completed(futures):
                    outcomes[futures[future]] = future.result()
                    bar.update(1)
            finally:
                bar.close()
    missing = ClientError("no outcome recorded")  # cannot happen: every future is collected
    return [o if o is not None else PatientOutcome.failed(labels[i], missing) for i, o in enumerate(outcomes)]

