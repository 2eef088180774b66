"""Container health check: exit 0 when Triton answers HTTP 200 on its readiness endpoint.

Used by the image's HEALTHCHECK and by docker/compose.yaml. The readiness check is standard
library only, so it runs with the container's python3 (NVIDIA's image has no curl
guarantee). ``--pipeline`` adds the check of the whole ensemble that ``covidct probe`` runs
(the bundle is installed in the image): one tiny request through ``covid_ct_pipeline`` and,
for the server on this host, every Python-backend stub process alive. Triton keeps
reporting READY after a stub died; only this check sees it. Exit status: 0 ready, 1 not
ready (non-200 status, refused connection, timeout, failed step, dead stub). Times in seconds.

    python3 healthcheck.py [--url http://127.0.0.1:8000/v2/health/ready] [--timeout 4] [--pipeline]
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.parse
import urllib.request

DEFAULT_URL = "http://127.0.0.1:8000/v2/health/ready"


def is_ready(url: str, timeout_s: float) -> tuple[bool, str]:
    """GET ``url``; (True, reason) only for HTTP 200, else (False, reason)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - a fixed local http URL
            status = response.status
    except urllib.error.HTTPError as exc:
        return False, f"{url} answered HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return False, f"{url} unreachable: {exc}"
    if status != 200:
        return False, f"{url} answered HTTP {status}, expected 200"
    return True, f"{url} answered HTTP 200"


def pipeline_healthy(url: str, timeout_s: float) -> tuple[bool, str]:
    """``covidct probe`` for the server behind readiness ``url``: the ensemble answers a tiny
    request within ``timeout_s`` and (server on this host) no stub process is missing."""
    try:
        from covidct.app import health
    except ImportError as exc:
        return False, f"--pipeline needs the covidct bundle installed in this python ({exc})"
    parts = urllib.parse.urlsplit(url)
    host_port = parts.netloc
    results = [health.probe_pipeline(host_port, timeout_s)]
    server_pid = health.find_server(parts.port) if parts.port else None
    if server_pid is not None:
        results.append(health.check_processes(server_pid))
    failed = [r.reason for r in results if not r.healthy]
    return (False, "; ".join(failed)) if failed else (True, "; ".join(r.reason for r in results))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=DEFAULT_URL, help="readiness URL (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=4.0, help="seconds (default: %(default)s)")
    parser.add_argument(
        "--pipeline", action="store_true",
        help="also send one tiny request through the ensemble and check the stub processes",
    )
    args = parser.parse_args(argv)
    ready, reason = is_ready(args.url, args.timeout)
    if ready and args.pipeline:
        ready, reason = pipeline_healthy(args.url, args.timeout)
    print(reason, file=sys.stdout if ready else sys.stderr)
    return 0 if ready else 1


if __name__ == "__main__":
    sys.exit(main())
