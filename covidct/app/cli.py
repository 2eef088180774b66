"""``covidct`` command line: ``covidct serve``, ``covidct probe`` and ``covidct demo``.

``main()`` returns an exit code (0 ok, 1 a covidct error, 130 interrupted); it never
calls ``sys.exit`` itself (``python -m covidct`` does).
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from covidct.errors import ConfigError, CovidCTError, RestartLimitError
from covidct.serving.tensors import ENSEMBLE
from covidct.app.supervisor import SupervisedServer, SupervisorConfig
from covidct.app.triton_server import ADMIN_HEADER, GRPC_ADMIN_HEADER, MIB, GrpcTls, ServerConfig

ADMIN_KEY_ENV = "COVIDCT_ADMIN_KEY"
CACHE_ENV = "COVIDCT_CACHE_DIR"

log = logging.getLogger("covidct")


def _add_serve(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="run a local Triton server on a model repository until Ctrl-C",
        description="Start the pip-installed Triton server (make setup) on a model repository, "
        "print its gRPC/HTTP/metrics addresses and run until Ctrl-C.",
    )
    serve.add_argument("--model-repository", type=Path, default=None,
                       help="Triton model repository folder (default: the shipped networks, exported once into "
                            f"${CACHE_ENV} or ~/.cache/covidct-triton)")
    serve.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (0 = pick a free one)")
    serve.add_argument("--http-port", type=int, default=8000, help="HTTP port (0 = pick a free one)")
    serve.add_argument("--metrics-port", type=int, default=8002, help="metrics port (0 = pick a free one)")
    serve.add_argument(
        "--shm-mib", type=int, default=64, help="Python backend shared-memory pool and growth step (MiB)"
    )
    serve.add_argument("--gpu", action="store_true", help="keep GPU support on (pinned memory, GPU metrics)")
    serve.add_argument("--log-file", type=Path, default=None, help="server log file (default: a temp file)")
    serve.add_argument("--log-verbose", type=int, default=0, help="Triton --log-verbose level")
    serve.add_argument("--startup-timeout", type=float, default=300.0, help="seconds to wait for readiness")
    serve.add_argument(
        "--address", default="127.0.0.1",
        help="interface gRPC, HTTP and metrics listen on (default 127.0.0.1: this host only; 0.0.0.0 opens it)",
    )
    serve.add_argument(
        "--admin-key-file", type=Path, default=None,
        help=f"file holding the key that opens the admin protocols (HTTP header {ADMIN_HEADER}, gRPC "
        f"{GRPC_ADMIN_HEADER}); default "
        f"${ADMIN_KEY_ENV}, else a random key nobody knows: model repository, config, statistics, "
        "trace and logging stay closed while inference, health and shared memory stay open",
    )
    serve.add_argument(
        "--probe-interval", type=float, default=SupervisorConfig.probe_interval_s,
        help="seconds between the supervisor's requests through the whole ensemble",
    )
    serve.add_argument(
        "--max-restarts", type=int, default=SupervisorConfig.max_restarts,
        help="restarts in a row after which the supervisor gives up (exit code 1)",
    )
    serve.add_argument("--grpc-tls-cert", type=Path, default=None, help="PEM server certificate: gRPC over TLS")
    serve.add_argument("--grpc-tls-key", type=Path, default=None, help="PEM private key of --grpc-tls-cert")
    serve.add_argument(
        "--grpc-tls-client-ca", type=Path, default=None,
        help="PEM CA of client certificates: mutual TLS (clients must present a certificate it signed)",
    )


def _add_probe(subparsers: argparse._SubParsersAction) -> None:
    probe = subparsers.add_parser(
        "probe",
        help="exit 0 when a Triton server is healthy, 1 when not (health checks, Kubernetes probes)",
        description="Readiness (default): one tiny request through the whole ensemble over Triton's HTTP "
        "endpoint, plus, when the server runs on this host, a check that every Python-backend stub "
        "process is alive. --liveness: HTTP /v2/health/live plus the process check, no inference.",
    )
    probe.add_argument("--url", default="127.0.0.1:8000", help="Triton's HTTP endpoint host:port (default %(default)s)")
    probe.add_argument("--timeout", type=float, default=5.0, help="seconds (default %(default)s)")
    probe.add_argument("--model", default=ENSEMBLE, help="the ensemble to send the probe through")
    probe.add_argument("--liveness", action="store_true", help="cheap check: HTTP live + stub processes")


def _add_demo(subparsers: argparse._SubParsersAction) -> None:
    from covidct.app.demo import DemoConfig

    defaults = DemoConfig()
    demo = subparsers.add_parser(
        "demo",
        help="synthetic and real series -> the shipped networks -> export -> Triton -> verdicts",
        description="End-to-end demo on CPU: synthetic CT phantoms (labelled as such), the shipped networks "
        "trained on public real chest CT (or, with --demo-models, small phantom-trained demo models), the "
        "portable model repository, a local Triton server, one gRPC request per series. Adds the real "
        "series when COVIDCT_DATA_DIR points to the COVID-CT-MD samples.",
    )
    demo.add_argument("--output", type=Path, default=Path(defaults.output_dir), help="output folder")
    demo.add_argument(
        "--slices",
        type=int,
        nargs="+",
        default=list(defaults.slice_counts),
        help="slice count of each synthetic patient (alternating positive/negative)",
    )
    demo.add_argument("--size", type=int, default=defaults.size, help="synthetic slice size (pixels)")
    demo.add_argument("--seed", type=int, default=defaults.seed)
    demo.add_argument("--demo-models", action="store_true",
                      help="serve small demo models trained here on the phantom instead of the shipped networks")
    demo.add_argument("--quick", action="store_true", help="train the demo models in quick mode (--demo-models)")
    demo.add_argument("--no-real", action="store_true", help="skip the real series even if COVIDCT_DATA_DIR is set")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="covidct", description="COVID-19 CT triage on NVIDIA Triton")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_serve(subparsers)
    _add_probe(subparsers)
    _add_demo(subparsers)
    return parser


def admin_key(key_file: Path | None) -> str:
    """The admin key: from ``key_file``, else ``$COVIDCT_ADMIN_KEY``, else a random one."""
    if key_file is not None:
        try:
            key = key_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{key_file}: cannot read the admin key ({exc.strerror})") from exc
        if not key:
            raise ConfigError(f"{key_file}: the admin key file is empty")
        return key
    return os.environ.get(ADMIN_KEY_ENV, "").strip() or secrets.token_hex(24)


def grpc_tls(args: argparse.Namespace) -> GrpcTls | None:
    """TLS settings from ``--grpc-tls-*`` (certificate and key go together)."""
    if args.grpc_tls_cert is None and args.grpc_tls_key is None:
        if args.grpc_tls_client_ca is not None:
            raise ConfigError("--grpc-tls-client-ca needs --grpc-tls-cert and --grpc-tls-key")
        return None
    if args.grpc_tls_cert is None or args.grpc_tls_key is None:
        raise ConfigError("--grpc-tls-cert and --grpc-tls-key go together; got only one")
    ca = args.grpc_tls_client_ca
    return GrpcTls(args.grpc_tls_cert, args.grpc_tls_key, root_cert=ca, mutual=ca is not None)


def shipped_repository(cache_dir: Path | None = None) -> Path:
    """The portable repository of the shipped checkpoints, exported once per pair of weights.

    Kept in ``cache_dir`` (default ``$COVIDCT_CACHE_DIR``, else ``~/.cache/covidct-triton``)
    under the first 12 hex digits of both weights' SHA-256, so new weights export anew.
    """
    from covidct.export.repository import build_repository
    from covidct.training.model_card import file_sha256
    from covidct.training.shipped import shipped_checkpoint

    checkpoints = {role: shipped_checkpoint(role) for role in ("classifier", "segmenter")}
    key = "-".join(file_sha256(p / "weights.pt")[:12] for p in checkpoints.values())
    root = cache_dir or Path(os.environ.get(CACHE_ENV, "") or Path.home() / ".cache" / "covidct-triton")
    repository = root / f"shipped-{key}" / "model_repository"
    if not (repository / ENSEMBLE / "config.pbtxt").is_file():
        print(f"exporting the shipped networks into {repository} (once)", flush=True)
        build_repository(checkpoints["classifier"], checkpoints["segmenter"], repository, profile="portable")
    return repository


def run_serve(args: argparse.Namespace) -> int:
    if args.model_repository is None:
        args.model_repository = shipped_repository()
    config = ServerConfig(
        address=args.address,
        admin_key=admin_key(args.admin_key_file),
        grpc_tls=grpc_tls(args),
        model_repository=args.model_repository,
        http_port=args.http_port or None,
        grpc_port=args.grpc_port or None,
        metrics_port=args.metrics_port or None,
        shm_default_byte_size=args.shm_mib * MIB,
        shm_growth_byte_size=args.shm_mib * MIB,
        gpu=args.gpu,
        log_path=args.log_file,
        log_verbose=args.log_verbose,
        startup_timeout_s=args.startup_timeout,
    )
    supervisor = SupervisorConfig(probe_interval_s=args.probe_interval, max_restarts=args.max_restarts)
    server = SupervisedServer(config, supervisor)
    server.start()
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)  # `kill`/docker stop: stop cleanly
    try:
        print(f"Triton is ready (pid {server.pid}); model repository {args.model_repository}")
        print(f"  gRPC     {server.grpc_url}")
        print(f"  HTTP     http://{server.http_url}")
        print(f"  metrics  {server.metrics_url}")
        print(f"  log      {server.log_path}")
        print("Supervised: a dead server or Python-backend stub is restarted on the same ports.")
        print("Press Ctrl-C to stop.", flush=True)
        server.wait()
        return 0
    except RestartLimitError as exc:
        print(f"{exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping Triton ...", flush=True)
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.stop()


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_probe(args: argparse.Namespace) -> int:
    """Exit code 0 healthy, 1 unhealthy; one line on stdout (healthy) or stderr (not)."""
    from covidct.app import health

    port = args.url.rstrip("/").rsplit(":", 1)[-1]
    server_pid = health.find_server(int(port)) if port.isdigit() else None
    results = [health.probe_live(args.url, args.timeout) if args.liveness
               else health.probe_pipeline(args.url, args.timeout, args.model)]
    if server_pid is not None:
        results.append(health.check_processes(server_pid))
    failed = [r for r in results if not r.healthy]
    for result in failed or results:
        print(("healthy: " if result.healthy else "unhealthy: ") + result.reason,
              file=sys.stderr if failed else sys.stdout)
    return 1 if failed else 0


def run_demo_command(args: argparse.Namespace) -> int:
    from covidct.app.demo import DemoConfig, run_demo

    config = DemoConfig(
        output_dir=str(args.output),
        slice_counts=tuple(args.slices),
        size=args.size,
        seed=args.seed,
        models="demo" if args.demo_models else "shipped",
        quick=args.quick,
        include_real=not args.no_real,
    )
    run_demo(config)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "serve":
            return run_serve(args)
        if args.command == "probe":
            return run_probe(args)
        return run_demo_command(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except CovidCTError as exc:
        print(f"covidct {args.command}: error: {exc}", file=sys.stderr)
        return 1
