"""Health of a running server: one tiny request through the whole ensemble, and the
Python-backend stub processes read from ``/proc``.

- :func:`probe_pipeline` sends a small synthetic volume (``PROBE_SHAPE`` = ``[N, H, W]``
  int16 HU, spacing ``PROBE_SPACING_MM`` (z, y, x) mm) to ``covid_ct_pipeline`` over
  Triton's HTTP endpoint (KServe v2 JSON, standard library only) within a timeout. Any
  answer - "not assessable" included - means every step ran; an error names the failing
  step when Triton's message names its model instance.
- :func:`check_processes` compares the live ``triton_python_backend_stub`` children of a
  ``tritonserver`` process with the instance counts of the Python-based models of its
  model repository (Linux ``/proc``).
- :func:`probe_live` asks ``/v2/health/live`` (the server process answers at all);
  :func:`completed_requests` reads Triton's request counters (is a slow server busy?);
  :func:`mapped_files` lists what a process maps (who still holds a shared-memory file).

Every function returns a :class:`ProbeResult` and never raises for an unhealthy server.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from covidct.serving import tensors

STUB_NAME = "triton_python_backend_stub"
SERVER_NAME = "tritonserver"
PROBE_SHAPE = (4, 64, 64)
PROBE_SPACING_MM = (5.0, 0.7, 0.7)
BUILTIN_BACKENDS = frozenset({"onnxruntime", "tensorrt", "pytorch", "tensorflow", "openvino", "fil", "identity"})
"""Backends that run in the server process itself (no stub); any other backend name
(``python``, or a Python-based backend such as ``covidct``) runs in stub processes."""
_INSTANCE = re.compile(r"(?:model instance|Stub process|instance) '([A-Za-z0-9_.\-]+?)_\d+_\d+'")
_MODEL = re.compile(r"(?:model|for model) '([A-Za-z0-9_.\-]+)'")


@dataclass(frozen=True)
class ProbeResult:
    """Outcome of one check: ``healthy``, a one-line ``reason``, the failing ``step``
    (model name) when known, how long the check took (seconds), and ``timed_out``: no
    answer within the timeout (a busy server looks the same as a hung one)."""

    healthy: bool
    reason: str
    step: str | None = None
    seconds: float = 0.0
    timed_out: bool = False


@dataclass(frozen=True)
class StubProcess:
    """One Python-backend stub: its pid and Triton's instance name (``preprocess_0_0``)."""

    pid: int
    instance: str

    @property
    def model(self) -> str:
        """The model the instance belongs to (``preprocess`` for ``preprocess_0_0``)."""
        parts = self.instance.rsplit("_", 2)
        return parts[0] if len(parts) == 3 else self.instance


@dataclass(frozen=True)
class ProcessState:
    """What :func:`check_processes` saw: expected and alive stub count per model."""

    expected: dict[str, int] = field(default_factory=dict)
    alive: dict[str, int] = field(default_factory=dict)

    @property
    def missing(self) -> dict[str, int]:
        """Model -> how many of its stubs are not running."""
        return {m: n - self.alive.get(m, 0) for m, n in self.expected.items() if self.alive.get(m, 0) < n}


def failing_step(message: str) -> str | None:
    """The model named by a Triton error message (``preprocess`` for "... model instance
    'preprocess_0_0' ..."), ``None`` when it names none."""
    match = _INSTANCE.search(message) or _MODEL.search(message)
    return match.group(1) if match else None


def _base_url(url: str) -> str:
    url = url.rstrip("/")
    return url if url.startswith(("http://", "https://")) else f"http://{url}"


def _opener() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy


def probe_request_body() -> bytes:
    """The JSON body of the probe request: a uniform soft-tissue box (40 HU) with an air
    border, ``PROBE_SHAPE`` slices x rows x columns, too small to hold lungs."""
    n, h, w = PROBE_SHAPE
    row_air, row_body = [-1000] * w, [-1000] * 4 + [40] * (w - 8) + [-1000] * 4
    plane = row_air * 4 + row_body * (h - 8) + row_air * 4
    inputs = [
        {"name": tensors.HU_VOLUME, "shape": [n, h, w], "datatype": "INT16", "data": plane * n},
        {"name": tensors.SPACING_MM, "shape": [3], "datatype": "FP32", "data": list(PROBE_SPACING_MM)},
        {"name": tensors.SLICE_POSITIONS_MM, "shape": [n], "datatype": "FP32",
         "data": [i * PROBE_SPACING_MM[0] for i in range(n)]},
    ]
    outputs = [{"name": tensors.VERDICT}, {"name": tensors.ASSESSMENT}]
    return json.dumps({"inputs": inputs, "outputs": outputs}).encode()


def probe_pipeline(url: str, timeout_s: float = 5.0, model: str = tensors.ENSEMBLE) -> ProbeResult:
    """Send the probe volume through ``model`` at ``url`` (``host:port`` of Triton's HTTP
    endpoint). Healthy when an answer with a ``VERDICT`` comes back within ``timeout_s``."""
    start = time.monotonic()
    endpoint = f"{_base_url(url)}/v2/models/{model}/infer"
    request = urllib.request.Request(  # noqa: S310 - an http:// URL built here
        endpoint, data=probe_request_body(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with _opener().open(request, timeout=timeout_s) as response:
            answer = json.loads(response.read().decode("utf-8", errors="replace"))
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read().decode("utf-8", errors="replace")).get("error", "")
        except (ValueError, OSError, AttributeError):
            message = ""
        step = failing_step(message)
        where = f" at step {step!r}" if step else ""
        return ProbeResult(False, f"{model} failed{where} (HTTP {exc.code}): {message}", step, time.monotonic() - start)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        timed_out = isinstance(reason, TimeoutError) or "timed out" in str(reason)
        what = f"did not answer within {timeout_s:g} s" if timed_out else "unreachable"
        return ProbeResult(False, f"{endpoint} {what}: {reason}", None, time.monotonic() - start, timed_out)
    names = {o.get("name") for o in answer.get("outputs", [])}
    if tensors.VERDICT not in names:
        return ProbeResult(False, f"{model} answered without {tensors.VERDICT} (got {sorted(names)})", None,
                           time.monotonic() - start)
    return ProbeResult(True, f"{model} answered in {time.monotonic() - start:.2f} s", None, time.monotonic() - start)


def probe_live(url: str, timeout_s: float = 5.0) -> ProbeResult:
    """``GET /v2/health/live`` at ``url`` (HTTP ``host:port``): healthy on HTTP 200."""
    start = time.monotonic()
    endpoint = f"{_base_url(url)}/v2/health/live"
    try:
        with _opener().open(endpoint, timeout=timeout_s) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, OSError) as exc:
        return ProbeResult(False, f"{endpoint} unreachable: {getattr(exc, 'reason', exc)}", None,
                           time.monotonic() - start)
    return ProbeResult(status == 200, f"{endpoint} answered HTTP {status}", None, time.monotonic() - start)


# ------------------------------------------------------------------------ processes
def server_arguments(pid: int) -> list[str]:
    """The command line of process ``pid`` (``[]`` when it is gone)."""
    return _cmdline(pid)


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode("utf-8", errors="replace") for part in raw.split(b"\0") if part]


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, parent pid) of ``pid`` from ``/proc/<pid>/stat``; ``None`` when gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1])


def pid_alive(pid: int) -> bool:
    """``pid`` exists in this PID namespace and is not a zombie."""
    state = _stat(pid)
    return state is not None and state[0] not in ("Z", "X")


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def stub_processes(server_pid: int) -> list[StubProcess]:
    """The live stub processes whose parent is ``server_pid`` (instance name = the stub's
    9th command-line argument, as Triton 2.51 starts it)."""
    stubs = []
    for pid in _pids():
        state = _stat(pid)
        if state is None or state[1] != server_pid or state[0] in ("Z", "X"):
            continue
        argv = _cmdline(pid)
        if argv and Path(argv[0]).name == STUB_NAME:
            stubs.append(StubProcess(pid, argv[8] if len(argv) > 8 else "unknown_0_0"))
    return stubs


def find_server(port: int) -> int | None:
    """The pid of the ``tritonserver`` on this host listening on ``port`` (its HTTP or gRPC
    port flag), or the only ``tritonserver`` when none names a port; ``None`` if none."""
    servers = []
    for pid in _pids():
        argv = _cmdline(pid)
        if argv and Path(argv[0]).name == SERVER_NAME and pid_alive(pid):
            servers.append((pid, argv))
    for pid, argv in servers:
        if f"--http-port={port}" in argv or f"--grpc-port={port}" in argv:
            return pid
    unnamed = [pid for pid, argv in servers if not any(a.startswith(("--http-port", "--grpc-port")) for a in argv)]
    return unnamed[0] if len(unnamed) == 1 else None


def server_repository(server_pid: int) -> Path | None:
    """The ``--model-repository`` of a running server (relative paths resolved against its cwd)."""
    for arg in _cmdline(server_pid):
        if arg.startswith("--model-repository="):
            path = Path(arg.split("=", 1)[1])
            if not path.is_absolute():
                try:
                    path = Path(os.readlink(f"/proc/{server_pid}/cwd")) / path
                except OSError:
                    return None
            return path
    return None


def expected_stubs(model_repository: Path | str) -> dict[str, int]:
    """Model name -> stub processes it runs: the instance counts (``instance_group``,
    default 1) of every model whose backend runs in stubs (not :data:`BUILTIN_BACKENDS`,
    no ``platform``: ensembles and built-in runtimes have none). One version per model."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    counts = {}
    for config_file in sorted(Path(model_repository).glob("*/config.pbtxt")):
        config = model_config_pb2.ModelConfig()
        try:
            text_format.Parse(config_file.read_text(encoding="utf-8"), config, allow_unknown_field=True)
        except (text_format.ParseError, OSError, UnicodeDecodeError):
            continue  # a model Triton could not load either; the probe reports it
        if config.platform or not config.backend or config.backend in BUILTIN_BACKENDS:
            continue
        groups = config.instance_group
        counts[config.name or config_file.parent.name] = (
            sum(max(g.count, 1) * max(len(g.gpus), 1) for g in groups) if groups else 1
        )
    return counts


def process_state(server_pid: int, model_repository: Path | str | None = None) -> ProcessState:
    """Expected and alive stub counts per model of the server ``server_pid``."""
    repository = model_repository if model_repository is not None else server_repository(server_pid)
    expected = expected_stubs(repository) if repository is not None else {}
    alive: dict[str, int] = {}
    for stub in stub_processes(server_pid):
        alive[stub.model] = alive.get(stub.model, 0) + 1
    return ProcessState(expected, alive)


def check_processes(server_pid: int, model_repository: Path | str | None = None) -> ProbeResult:
    """Healthy when ``server_pid`` runs and every expected stub is alive; the reason names
    the models whose stubs are missing (the first one is ``step``)."""
    start = time.monotonic()
    if not pid_alive(server_pid):
        return ProbeResult(False, f"{SERVER_NAME} (pid {server_pid}) is not running", None, 0.0)
    state = process_state(server_pid, model_repository)
    missing = state.missing
    if missing:
        names = ", ".join(f"{m} ({n} of {state.expected[m]})" for m, n in sorted(missing.items()))
        return ProbeResult(False, f"{STUB_NAME} not running for {names}", sorted(missing)[0], time.monotonic() - start)
    total = sum(state.alive.values())
    return ProbeResult(True, f"{SERVER_NAME} (pid {server_pid}) and its {total} stubs are running", None,
                       time.monotonic() - start)


def mapped_files(pid: int) -> set[str]:
    """Paths of the files process ``pid`` maps (``/proc/<pid>/maps``, " (deleted)" removed).

    Raises PermissionError when the maps of ``pid`` cannot be read; empty when it is gone.
    """
    try:
        text = Path(f"/proc/{pid}/maps").read_text(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return set()
    paths = set()
    for line in text.splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5].startswith("/"):
            paths.add(parts[5].removesuffix(" (deleted)"))
    return paths


def mapped_by_anyone(paths: set[str]) -> set[str]:
    """Those of ``paths`` that some process (readable in ``/proc``) maps."""
    found: set[str] = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                found |= mapped_files(int(name)) & paths
            except PermissionError:
                continue
    return found


def completed_requests(metrics_url: str, model: str, timeout_s: float = 5.0) -> float | None:
    """Requests of ``model`` Triton finished (``nv_inference_request_success`` +
    ``nv_inference_request_failure`` on its metrics page ``metrics_url``); ``None`` when unreadable."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(metrics_url, timeout=timeout_s) as response:
            text = response.read().decode("utf-8", errors="replace")
    except (urllib.error.URLError, OSError):
        return None
    counts = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(("nv_inference_request_success{", "nv_inference_request_failure{"))
        and f'model="{model}"' in line
    ]
    return sum(counts) if counts else None
