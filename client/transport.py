"""gRPC connection settings and the translation of gRPC failures into client errors.

:class:`TransportConfig` holds everything about *how* a request travels: message-size
limits (volumes of hundreds of MB), TLS files, extra headers (e.g. the keys of Triton's
``--grpc-restricted-protocol``), shared-memory use, deadline and retry policy.
:func:`connect` builds a ``tritonclient.grpc.InferenceServerClient`` from it;
:func:`classify_failure` maps an ``InferenceServerException`` to the narrowest
:mod:`covidct.errors` class and says whether the request can have reached the server.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from covidct.errors import (
    ClientError,
    DeadlineExceededError,
    InferenceFailedError,
    ModelNotReadyError,
    ServerUnavailableError,
    TLSConfigError,
)

MIB = 1024 * 1024
#: Default gRPC message limit: 1 GiB, room for a 1,100-slice 512x512 int16 volume (577 MB).
DEFAULT_MAX_MESSAGE_BYTES = 1024 * MIB
SHARED_MEMORY_MODES = ("auto", "on", "off")

#: Substrings of gRPC UNAVAILABLE details that mean "no connection was made", so the
#: request never left the client and may be retried.
NOT_CONNECTED_MARKERS = (
    "failed to connect to all addresses",
    "connection refused",
    "name resolution",
    "dns resolution failed",
    "no route to host",
    "connect failed",
)
#: Substrings that mean something answered but does not speak gRPC/HTTP2 (a wrong port).
WRONG_ENDPOINT_MARKERS = (
    "socket closed", "http1.x", "http/1", "trying to connect an http1", "bad http/2", "protocol error",
)
TLS_MARKERS = ("ssl", "tls", "handshake", "certificate")
#: Substrings of a failure that a dying server or a dead Python-backend worker causes.
WORKER_FAULT_MARKERS = ("stub process", "is not healthy", "stub has exited", "failed to send request to stub")
RETRYABLE = "a server-side fault, not a problem of this series; retry the request once the server is ready"


@dataclass(frozen=True)
class TransportConfig:
    """How requests travel to the server.

    timeout_s: deadline of each inference call (``client_timeout``), seconds.
    connect_timeout_s: deadline of each readiness/metadata call, seconds.
    retries: extra attempts after UNAVAILABLE *before the request reached the server*
        (connection refused, server or model not ready yet); never after a request
        may have run.
    backoff_s: first wait between attempts, doubled each time (seconds).
    shared_memory: ``"auto"`` (system shared memory when the server is on this host and
        accepts the registration, else plain gRPC), ``"on"`` (required), ``"off"``.
    max_message_bytes: gRPC send/receive limit (bytes).
    root_certificates / private_key / certificate_chain: PEM files; any of them (or
        ``ssl=True``) makes the channel TLS.
    headers: extra request headers, e.g. ``{"infer-key": "secret"}`` for a restricted
        protocol.
    shm_release_wait_s: after a failed request, how long to keep retrying the unregister
        of its shared-memory region while the server still uses it (seconds).
    """

    timeout_s: float = 300.0
    connect_timeout_s: float = 10.0
    retries: int = 3
    backoff_s: float = 0.5
    shared_memory: str = "auto"
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    ssl: bool = False
    root_certificates: Path | str | None = None
    private_key: Path | str | None = None
    certificate_chain: Path | str | None = None
    headers: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    shm_release_wait_s: float = 60.0

    def __post_init__(self) -> None:
        if self.shared_memory not in SHARED_MEMORY_MODES:
            raise ClientError(
                f"TransportConfig.shared_memory={self.shared_memory!r}; expected one of {SHARED_MEMORY_MODES}"
            )
        if not self.timeout_s > 0 or not self.connect_timeout_s > 0:
            raise ClientError(
                f"TransportConfig timeouts must be > 0 s; got timeout_s={self.timeout_s}, "
                f"connect_timeout_s={self.connect_timeout_s}"
            )
        if self.retries < 0 or self.backoff_s < 0:
            raise ClientError(f"TransportConfig retries={self.retries}, backoff_s={self.backoff_s}; expected >= 0")

    @property
    def uses_tls(self) -> bool:
        return bool(self.ssl or self.root_certificates or self.private_key or self.certificate_chain)

    @property
    def header_dict(self) -> dict[str, str] | None:
        return dict(self.headers) or None


def is_local_url(url: str) -> bool:
    """True for ``unix:`` addresses and hosts ``localhost``, ``127.x.y.z`` or ``::1``."""
    if url.startswith("unix:"):
        return True
    host = url.rsplit(":", 1)[0] if url.count(":") == 1 or url.startswith("[") else url
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read_pem(path: Path | str | None, what: str) -> bytes | None:
    if path is None:
        return None
    file = Path(path)
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise TLSConfigError(f"TLS {what} {file}: cannot be read ({exc.strerror})") from exc
    if b"-----BEGIN " not in data:
        raise TLSConfigError(f"TLS {what} {file}: not a PEM file (no '-----BEGIN' line)")
    return data


def channel_credentials(config: TransportConfig) -> grpc.ChannelCredentials:
    """TLS credentials from the PEM files of ``config`` (TLSConfigError on a bad file)."""
    if (config.private_key is None) != (config.certificate_chain is None):
        raise TLSConfigError(
            "TLS client authentication needs both private_key and certificate_chain; got "
            f"private_key={config.private_key}, certificate_chain={config.certificate_chain}"
        )
    return grpc.ssl_channel_credentials(
        root_certificates=_read_pem(config.root_certificates, "root certificate"),
        private_key=_read_pem(config.private_key, "private key"),
        certificate_chain=_read_pem(config.certificate_chain, "certificate chain"),
    )


def connect(url: str, config: TransportConfig = TransportConfig()) -> grpcclient.InferenceServerClient:
    """A gRPC client for ``url`` (``host:port``) with the limits and TLS of ``config``.

    No call is made: a server that is down shows up at the first request.
    """
    limit = int(config.max_message_bytes)
    channel_args = [
        ("grpc.max_send_message_length", limit),
        ("grpc.max_receive_message_length", limit),
        ("grpc.keepalive_time_ms", 2**31 - 1),
        ("grpc.keepalive_timeout_ms", 20000),
        ("grpc.http2.max_pings_without_data", 2),
    ]
    creds = channel_credentials(config) if config.uses_tls else None
    try:
        return grpcclient.InferenceServerClient(url, creds=creds, channel_args=channel_args)
    except InferenceServerException as exc:
        raise ServerUnavailableError(f"cannot open a gRPC channel to {url}: {exc.message()}") from exc


def status_of(exc: InferenceServerException) -> str:
    """``"UNAVAILABLE"``, ``"DEADLINE_EXCEEDED"``, ... (without ``StatusCode.``)."""
    return str(exc.status() or "").removeprefix("StatusCode.")


def details_of(exc: InferenceServerException) -> str:
    return f"{exc.message() or ''} {exc.debug_details() or ''}".lower()


def never_connected(exc: InferenceServerException) -> bool:
    """True when the failure happened before any byte of a request reached a server."""
    return status_of(exc) == "UNAVAILABLE" and any(m in details_of(exc) for m in NOT_CONNECTED_MARKERS)


def classify_failure(
    exc: InferenceServerException, *, url: str, model: str, what: str, config: TransportConfig, sent: bool
) -> ClientError:
    """The client error for a failed call (not raised; the caller chains it).

    ``sent``: the call carried a patient request (inference), so unless the failure
    provably happened before connecting, the message says it may have run.
    """
    status, message, details = status_of(exc), exc.message() or "", details_of(exc)
    may_have_run = (
        " The request may have reached the server and run; it was not re-sent."
        if sent and not never_connected(exc)
        else ""
    )
    if config.uses_tls and (status == "UNAVAILABLE") and any(m in details for m in TLS_MARKERS):
        return TLSConfigError(f"{what}: TLS handshake with {url} failed: {message}")
    if status == "DEADLINE_EXCEEDED":
        return DeadlineExceededError(
            f"{what}: deadline of {config.timeout_s if sent else config.connect_timeout_s:g} s exceeded "
            f"at {url}.{may_have_run or ' Nothing was sent.'}"
        )
    if status == "UNAVAILABLE":
        if any(m in details for m in WRONG_ENDPOINT_MARKERS):
            return ServerUnavailableError(
                f"{what}: something listens at {url} but closed the connection: not a Triton gRPC "
                f"endpoint (wrong port? Triton's gRPC port is 8001 by default): {message}.{may_have_run}"
            )
        if never_connected(exc):
            return ServerUnavailableError(
                f"{what}: no server answers at {url} (is Triton running?): {message}. "
                "Retryable once the server is up (it may be restarting)."
            )
        return ServerUnavailableError(f"{what}: connection to {url} lost ({RETRYABLE}): {message}.{may_have_run}")
    if status in ("NOT_FOUND",) or "unknown model" in details or "is not found" in details:
        return ModelNotReadyError(f"{what}: model {model!r} is not served at {url}: {message}")
    if "not ready" in details:
        return ModelNotReadyError(f"{what}: model {model!r} at {url} is not ready: {message}")
    if sent and any(m in details for m in WORKER_FAULT_MARKERS):
        return InferenceFailedError(
            f"{what}: {model} at {url} failed the request ({status}) because a server worker died ({RETRYABLE}): "
            f"{message}"
        )
    if sent:
        return InferenceFailedError(f"{what}: {model} at {url} failed the request ({status}): {message}")
    return ClientError(f"{what}: call to {url} failed ({status}): {message}")
