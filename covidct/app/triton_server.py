"""Launch a local Triton Inference Server (the pip-installed ``nvidia-pytriton`` build).

Turns a :class:`ServerConfig` (model repository, ports, shared-memory and CUDA pool sizes,
timeouts, admin key, gRPC TLS) into the ``tritonserver`` command line
(:func:`server_command`) and into a running server process (:class:`TritonServer`): it
prepares the installation (:mod:`covidct.app.triton_install`: stub, backend, environment),
picks free ports, starts the server, waits for readiness, explains a failed start from the
server log and stops the server again.

Typical use::

    with TritonServer(ServerConfig(model_repository="demo_output/model_repository")) as server:
        client = tritonclient.grpc.InferenceServerClient(server.grpc_url)

Ports are TCP ports on ``ServerConfig.address`` (127.0.0.1 by default); sizes are bytes; times are seconds.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from covidct.app.server_log import log_excerpt
from covidct.app.triton_install import TritonInstall, build_environment, locate_triton, prepare_backend, prepare_stub
from covidct.errors import ServerError

log = logging.getLogger(__name__)

CUDA_POOL_BYTES = 4 * 1024**3
"""CUDA memory pool of GPU 0 for the ``KIND_GPU`` steps: one 2,000-slice series' network inputs
and infection probabilities, 2,000 x (512^2 + 2 x 256^2) x 4 bytes = 2.9 GiB, with headroom.
Triton's default (64 MB) fails such requests with "failed to load GPU buffers"."""
MIB = 1024 * 1024

ADMIN_PROTOCOLS = ("model-repository", "model-config", "statistics", "trace", "logging")
"""Triton protocol groups restricted behind :data:`ADMIN_HEADER` when an admin key is set."""
ADMIN_HEADER = "covidct-admin-key"
"""HTTP header that opens the admin protocols (``--http-restricted-api``)."""
GRPC_ADMIN_HEADER = f"triton-grpc-protocol-{ADMIN_HEADER}"
"""gRPC metadata key that opens them: Triton 2.51 prefixes ``--grpc-restricted-protocol``
keys with ``triton-grpc-protocol-`` (its error message names the expected header)."""


@dataclass(frozen=True)
class GrpcTls:
    """TLS files of the gRPC endpoint (PEM). ``root_cert`` + ``mutual``: clients must
    present a certificate signed by it."""

    server_cert: Path | str
    server_key: Path | str
    root_cert: Path | str | None = None
    mutual: bool = False

    def arguments(self) -> list[str]:
        files = {"server-cert": self.server_cert, "server-key": self.server_key}
        if self.root_cert is not None:
            files["root-cert"] = self.root_cert
        for label, path in files.items():
            if not Path(path).is_file():
                raise ServerError(f"gRPC TLS {label} {path}: file not found")
        if self.mutual and self.root_cert is None:
            raise ServerError("gRPC mutual TLS needs root_cert (the CA that signs client certificates)")
        args = ["--grpc-use-ssl=true", *(f"--grpc-{label}={Path(path).resolve()}" for label, path in files.items())]
        if self.mutual:
            args.append("--grpc-use-ssl-mutual=true")
        return args


@dataclass(frozen=True)
class ServerConfig:
    """How to start one server.

    model_repository: folder handed to ``--model-repository``.
    http_port / grpc_port / metrics_port: ``None`` picks a free port.
    shm_default_byte_size / shm_growth_byte_size: the Python backend's shared-memory pool
        per model instance and its growth step (bytes); large CT volumes need 64 MB+.
    startup_timeout_s: how long to wait for ``/v2/health/ready``.
    stop_timeout_s: how long to wait after SIGTERM before SIGKILL.
    gpu: leave GPU support on (pinned memory pool, GPU metrics, the CUDA memory pool of
        GPU 0 sized ``cuda_memory_pool_byte_size``); off on CPU machines.
    cuda_memory_pool_byte_size: Triton's CUDA memory pool of GPU 0 (bytes), through which
        the ``KIND_GPU`` Python steps hand on GPU tensors; :data:`CUDA_POOL_BYTES` holds a
        2,000-slice series.
    log_path: server log file; ``None`` writes one into a fresh temporary folder.
    triton_dir: the installation; ``None`` uses ``$COVIDCT_TRITON_DIR`` or ``<repo>/.triton``.
    log_verbose: Triton's ``--log-verbose`` level.
    extra_args: appended to the command line unchanged.
    address: the interface gRPC, HTTP and metrics listen on; ``127.0.0.1`` (this host
        only) unless the operator opens it (e.g. ``0.0.0.0`` inside a container).
    admin_key: when set, the admin protocol groups (:data:`ADMIN_PROTOCOLS`: model
        repository, model config, statistics, trace, logging) answer only requests whose
        header :data:`ADMIN_HEADER` (HTTP) / :data:`GRPC_ADMIN_HEADER` (gRPC) carries this value (Triton's
        ``--grpc-restricted-protocol`` / ``--http-restricted-api``); inference, health,
        metadata and the shared-memory calls stay open. ``None`` leaves them open.
    grpc_tls: serve gRPC over TLS (server or mutual), see :class:`GrpcTls`.
    stop_with_parent: Linux: the server gets SIGTERM when the thread that started it dies
        (no orphaned servers after a crashed test run). Start it from a long-lived thread.
    """

    model_repository: Path | str
    http_port: int | None = None
    grpc_port: int | None = None
    metrics_port: int | None = None
    shm_default_byte_size: int = 64 * MIB
    shm_growth_byte_size: int = 64 * MIB
    startup_timeout_s: float = 180.0
    stop_timeout_s: float = 30.0
    gpu: bool = False
    cuda_memory_pool_byte_size: int = CUDA_POOL_BYTES
    log_path: Path | str | None = None
    triton_dir: Path | str | None = None
    log_verbose: int = 0
    extra_args: tuple[str, ...] = ()
    address: str = "127.0.0.1"
    admin_key: str | None = None
    grpc_tls: GrpcTls | None = None
    stop_with_parent: bool = True


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports that were free on localhost a moment ago."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def server_command(
    install: TritonInstall, config: ServerConfig, ports: tuple[int, int, int], shm_prefix: str
) -> list[str]:
    """The ``tritonserver`` command line for ``config`` on (http, grpc, metrics) ports."""
    http_port, grpc_port, metrics_port = ports
    command = [
        str(install.server_bin),
        f"--model-repository={Path(config.model_repository).resolve()}",
        f"--backend-directory={install.backend_dir}",
        f"--http-port={http_port}",
        f"--grpc-port={grpc_port}",
        f"--metrics-port={metrics_port}",
        "--allow-metrics=true",
        f"--allow-gpu-metrics={'true' if config.gpu else 'false'}",
        f"--log-verbose={config.log_verbose}",
        f"--exit-timeout-secs={max(1, int(config.stop_timeout_s))}",
        f"--backend-config=python,shm-default-byte-size={config.shm_default_byte_size}",
        f"--backend-config=python,shm-growth-byte-size={config.shm_growth_byte_size}",
        f"--backend-config=python,shm-region-prefix-name={shm_prefix}",
    ]
    command += [f"--{endpoint}-address={config.address}" for endpoint in ("grpc", "http", "metrics")]
    if config.admin_key is not None:
        if not config.admin_key or any(c in config.admin_key for c in ",:= \t\n"):
            raise ServerError("admin_key must be non-empty and hold no ',', ':', '=' or whitespace")
        groups = ",".join(ADMIN_PROTOCOLS)
        command += [
            f"--grpc-restricted-protocol={groups}:{ADMIN_HEADER}={config.admin_key}",
            f"--http-restricted-api={groups}:{ADMIN_HEADER}={config.admin_key}",
        ]
    if config.grpc_tls is not None:
        command += config.grpc_tls.arguments()
    if config.gpu:
        command.append(f"--cuda-memory-pool-byte-size=0:{config.cuda_memory_pool_byte_size}")
    else:
        command.append("--pinned-memory-pool-byte-size=0")
    command.extend(config.extra_args)
    return command


# -------------------------------------------------------------------------- server
class TritonServer:
    """One running ``tritonserver`` process (context manager: start on enter, stop on exit)."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self._process: subprocess.Popen[bytes] | None = None
        self._ports: tuple[int, int, int] | None = None
        self._log_path: Path | None = None
        self._log_file = None
        self._shm_prefix: str | None = None

    # -- addresses
    @property
    def ports(self) -> tuple[int, int, int]:
        """(http, grpc, metrics) ports; only after :meth:`start`."""
        if self._ports is None:
            raise ServerError("the Triton server has not been started: no ports assigned yet")
        return self._ports

    @property
    def host(self) -> str:
        """Where this host reaches the server: its listen address, or loopback for a wildcard."""
        address = self.config.address
        return "127.0.0.1" if address in ("0.0.0.0", "::", "") else address

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.ports[0]}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.ports[1]}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.ports[2]}/metrics"

    @property
    def log_path(self) -> Path:
        if self._log_path is None:
            raise ServerError("the Triton server has not been started: no log file yet")
        return self._log_path

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def shm_prefix(self) -> str:
        """Name prefix of the Python backend's shared-memory regions (``/dev/shm/<prefix>*``)
        of the last start (``--backend-config=python,shm-region-prefix-name``)."""
        if self._shm_prefix is None:
            raise ServerError("the Triton server has not been started: no shared-memory prefix yet")
        return self._shm_prefix

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # -- life cycle
    def start(self) -> "TritonServer":
        """Start the server and wait until it and all its models are ready.

        Raises ServerError (with the tail of the server log) when the installation is
        missing, the repository is invalid, a model fails to load, or readiness does not
        come within ``startup_timeout_s``. Auto-picked ports that turn out taken are
        picked again (3 attempts).
        """
        if self.is_running():
            raise ServerError(f"the Triton server is already running (pid {self.pid})")
        repository = Path(self.config.model_repository)
        if not repository.is_dir():
            raise ServerError(f"model repository {repository} is not a directory")
        install = locate_triton(self.config.triton_dir)
        prepare_stub(install)
        prepare_backend(install)
        auto_ports = None in (self.config.http_port, self.config.grpc_port, self.config.metrics_port)
        attempt = 1
        while True:
            try:
                self._launch(install)
                self._wait_ready()
                return self
            except ServerError as exc:
                self.stop()
                tail = log_excerpt(self.log_path)
                if auto_ports and attempt < 3 and "address already in use" in tail.lower():
                    log.warning("port clash starting Triton, retrying with new ports")
                    attempt += 1
                    continue
                raise ServerError(f"{exc}\n--- server log {self.log_path} ---\n{tail}") from exc

    def _launch(self, install: TritonInstall) -> None:
        picked = iter(free_ports(3))
        self._ports = (
            self.config.http_port or next(picked),
            self.config.grpc_port or next(picked),
            self.config.metrics_port or next(picked),
        )
        if self.config.log_path is not None:
            self._log_path = Path(self.config.log_path)
            self._log_path.parent.mkdir(parents=True, exist_ok=True)
        else:
            self._log_path = Path(tempfile.mkdtemp(prefix="covidct-triton-")) / "tritonserver.log"
        shm_prefix = f"covidct_{os.getpid()}_{self._ports[1]}_"
        self._shm_prefix = shm_prefix
        command = server_command(install, self.config, self._ports, shm_prefix)
        self._log_file = open(self._log_path, "wb")  # noqa: SIM115 - closed in stop()
        log.info("starting Triton: %s (log %s)", " ".join(command), self._log_path)
        try:
            self._process = subprocess.Popen(
                command,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=build_environment(install),
                start_new_session=True,
                preexec_fn=_terminate_with_parent if self.config.stop_with_parent else None,
            )
        except OSError as exc:
            raise ServerError(f"cannot execute {install.server_bin}: {exc}") from exc

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.config.startup_timeout_s
        url = f"http://{self.http_url}/v2/health/ready"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
        while time.monotonic() < deadline:
            code = self._process.poll() if self._process is not None else -1
            if code is not None:
                raise ServerError(
                    f"Triton server exited with code {code} before becoming ready "
                    f"(model repository {self.config.model_repository})"
                )
            try:
                with opener.open(url, timeout=2.0) as response:
                    if response.status == 200:
                        log.info("Triton ready: grpc %s http %s", self.grpc_url, self.http_url)
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.25)
        raise ServerError(
            f"Triton server not ready after {self.config.startup_timeout_s:.0f} s "
            f"(model repository {self.config.model_repository})"
        )

    def stop(self, timeout_s: float | None = None) -> int | None:
        """Stop the server: SIGTERM, wait ``timeout_s`` (default ``stop_timeout_s``), then
        SIGKILL its process group (the server and its Python-backend stubs).

        Returns the exit code (``None`` when it was never started). Safe to call twice.
        """
        process, self._process = self._process, None
        code = None
        if process is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=self.config.stop_timeout_s if timeout_s is None else timeout_s)
                except subprocess.TimeoutExpired:
                    log.warning("Triton (pid %d) ignored SIGTERM; killing its group", process.pid)
                    _kill_group(process.pid)
                    process.wait(timeout=10)
            code = process.returncode
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return code

    def wait(self) -> int:
        """Block until the server exits (e.g. for ``covidct serve``); returns its exit code."""
        if self._process is None:
            raise ServerError("the Triton server has not been started")
        return self._process.wait()

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _terminate_with_parent() -> None:
    """In the child before exec: ask Linux to send SIGTERM when the parent dies (best effort)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _kill_group(pgid: int) -> None:
    """SIGKILL the process group this launcher created for the server (the server is still
    alive when this is called, so the group id is certainly ours)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
