"""A Triton server that heals itself: :class:`SupervisedServer`.

Turns a :class:`covidct.app.triton_server.ServerConfig` and a :class:`SupervisorConfig`
(intervals, timeouts, backoff in seconds) into a server that is watched and restarted,
with a record of what happened (:class:`SupervisorEvent`).

Triton 2.51 does not replace a Python-backend stub that died: every later request to
that step fails while the server, the step and the ensemble keep reporting READY, and
the dead stub's shared-memory pool stays in ``/dev/shm``. The supervisor's watcher
thread therefore checks, every ``check_interval_s``:

- the server process and the stub processes of every Python-based model
  (:func:`covidct.app.health.check_processes`, from ``/proc``), and every ``probe_interval_s``
  one tiny request through the ensemble (:func:`covidct.app.health.probe_pipeline`);
- on a fault it clears :attr:`SupervisedServer.ready`, stops the server (SIGTERM, then
  SIGKILL of its process group after ``stop_timeout_s``: requests in flight get an
  error), removes the shared-memory files of the old server that no live process maps
  (:func:`covidct.app.shm_regions.remove_stale_server_regions`), waits the backoff
  (``backoff_initial_s`` doubling up to ``backoff_max_s``) and starts the server again
  on the same ports;
- every ``janitor_interval_s`` it looks for system shared-memory regions that clients
  registered (``covidct_client_<pid>_...``) and that their process no longer holds
  (the client was killed); one found in two passes in a row is unregistered and its
  ``/dev/shm`` file unlinked (:func:`covidct.app.shm_regions.sweep_client_regions`).

Times are seconds. Linux only (``/proc``); clients must share the supervisor's PID
namespace for the janitor to judge their regions (same host, same container).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import urllib.error
from dataclasses import dataclass, replace
from pathlib import Path

from covidct.errors import ConfigError, RestartLimitError, ServerError
from covidct.app.health import (
    ProbeResult,
    check_processes,
    completed_requests,
    pid_alive,
    probe_pipeline,
    stub_processes,
)
from covidct.app.shm_regions import remove_stale_server_regions, sweep_client_regions
from covidct.serving.tensors import ENSEMBLE
from covidct.app.triton_server import ServerConfig, TritonServer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SupervisorConfig:
    """How the supervisor watches and restarts (seconds unless noted).

    check_interval_s: period of the process check (server and stubs alive).
    probe_interval_s / probe_timeout_s: period and deadline of the ensemble probe.
    probe_failures: consecutive failed probes (error answers or refused connections) that
        trigger a restart; any failed probe clears ``ready`` at once.
    probe_timeouts: consecutive probes without an answer, while the ensemble finished no
        other request either (Triton's request counters), that trigger a restart; a probe
        that times out behind finished requests met a busy server and counts for nothing.
    backoff_initial_s / backoff_max_s: wait before a restart, doubled per restart in a row.
    healthy_reset_s: after this long without a fault the backoff starts again at its initial value.
    max_restarts: restarts in a row (without ``healthy_reset_s`` of health in between)
        before the supervisor gives up (:class:`RestartLimitError` from :meth:`SupervisedServer.wait`).
    stop_timeout_s: how long a faulty server gets after SIGTERM before SIGKILL.
    janitor_interval_s: period of the stale client-region sweep.
    """

    check_interval_s: float = 1.0
    probe_interval_s: float = 15.0
    probe_timeout_s: float = 10.0
    probe_failures: int = 2
    probe_timeouts: int = 6
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    healthy_reset_s: float = 120.0
    max_restarts: int = 10
    stop_timeout_s: float = 5.0
    janitor_interval_s: float = 5.0

    def __post_init__(self) -> None:
        for name in ("check_interval_s", "probe_interval_s", "probe_timeout_s", "backoff_initial_s",
                     "stop_timeout_s", "janitor_interval_s"):
            value = getattr(self, name)
            if not 0 < value <= 3600:
                raise ConfigError(f"SupervisorConfig.{name}={value}; expected 0 < value <= 3600 s")
        if self.backoff_max_s < self.backoff_initial_s:
            raise ConfigError(
                f"SupervisorConfig.backoff_max_s={self.backoff_max_s}; expected >= "
                f"backoff_initial_s={self.backoff_initial_s}"
            )
        for name in ("probe_failures", "probe_timeouts", "max_restarts"):
            if getattr(self, name) < 1:
                raise ConfigError(f"SupervisorConfig.{name}={getattr(self, name)}; expected >= 1")


def backoff_delay(config: SupervisorConfig, restart: int) -> float:
    """Seconds to wait before restart number ``restart`` (1-based) of a series."""
    return min(config.backoff_initial_s * 2.0 ** max(restart - 1, 0), config.backoff_max_s)


@dataclass(frozen=True)
class SupervisorEvent:
    """One thing the supervisor did or saw: ``kind`` (unhealthy, restarting, restarted,
    start_failed, gave_up, swept) and a message; ``time_s`` from ``time.monotonic()``."""

    time_s: float
    kind: str
    message: str


class SupervisedServer:
    """A :class:`TritonServer` restarted on the same ports when it or a stub dies.

    Context manager like :class:`TritonServer`; :meth:`start` starts the server (raising
    ServerError as the launcher does) and the watcher thread. Start it from a long-lived
    thread (see ``ServerConfig.stop_with_parent``).
    """

    def __init__(self, config: ServerConfig, supervisor: SupervisorConfig = SupervisorConfig()) -> None:
        self.config = config
        self.supervisor = supervisor
        self._server: TritonServer | None = None
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._events: list[SupervisorEvent] = []
        self._restarts = 0
        self._error: RestartLimitError | None = None
        self._last_probe: ProbeResult | None = None
        self._completed: float | None = None
        self._suspects: frozenset[str] = frozenset()

    # -- state
    @property
    def server(self) -> TritonServer:
        """The server running now (a new object after each restart)."""
        if self._server is None:
            raise ServerError("the supervised Triton server has not been started")
        return self._server

    @property
    def ready(self) -> bool:
        """False from the moment a fault is seen until the restarted server is ready."""
        return self._ready.is_set()

    @property
    def restarts(self) -> int:
        """How many restarts succeeded since :meth:`start`."""
        return self._restarts

    @property
    def events(self) -> tuple[SupervisorEvent, ...]:
        with self._lock:
            return tuple(self._events)

    @property
    def last_probe(self) -> ProbeResult | None:
        return self._last_probe

    @property
    def grpc_url(self) -> str:
        return self.server.grpc_url

    @property
    def http_url(self) -> str:
        return self.server.http_url

    @property
    def metrics_url(self) -> str:
        return self.server.metrics_url

    @property
    def log_path(self) -> Path:
        return self.server.log_path

    @property
    def pid(self) -> int | None:
        return self.server.pid

    def _record(self, kind: str, message: str) -> None:
        level = logging.INFO if kind in ("restarted", "swept") else logging.WARNING
        log.log(level, "supervisor: %s: %s", kind, message)
        with self._lock:
            self._events.append(SupervisorEvent(time.monotonic(), kind, message))
            del self._events[:-1000]

    # -- life cycle
    def start(self) -> "SupervisedServer":
        """Start the server, pin its ports for restarts, start the watcher thread."""
        if self._thread is not None:
            raise ServerError("the supervised Triton server is already running")
        server = TritonServer(self.config).start()
        http, grpc, metrics = server.ports
        self.config = replace(self.config, http_port=http, grpc_port=grpc, metrics_port=metrics)
        self._server = server
        self._stopping.clear()
        self._ready.set()
        self._thread = threading.Thread(target=self._watch, name="covidct-supervisor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> int | None:
        """Stop watching, then stop the server (``ServerConfig.stop_timeout_s``) and remove
        its shared-memory files. Returns the server's exit code. Safe to call twice."""
        self._stopping.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._thread = None
        self._ready.clear()
        if self._server is None:
            return None
        return self._shutdown(self._server, self.config.stop_timeout_s)

    def wait(self) -> None:
        """Block until :meth:`stop` (another thread, or a signal handler's exception) or
        until the supervisor gives up; then raises :class:`RestartLimitError`."""
        while self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=1.0)
        if self._error is not None:
            raise self._error

    def __enter__(self) -> "SupervisedServer":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- watcher
    def _watch(self) -> None:
        s = self.supervisor
        now = time.monotonic()
        next_probe, next_sweep, healthy_since = now + s.probe_interval_s, now + s.janitor_interval_s, now
        failures = timeouts = streak = 0
        while not self._stopping.wait(s.check_interval_s):
            server = self.server
            problem = check_processes(server.pid) if server.pid is not None else None
            if problem is not None and problem.healthy:
                problem = None
            now = time.monotonic()
            if problem is None and now >= next_probe:
                next_probe = now + s.probe_interval_s
                result = self._last_probe = probe_pipeline(server.http_url, s.probe_timeout_s)
                busy = result.timed_out and self._made_progress(server)
                failures, timeouts = (0, 0) if result.healthy or busy else (
                    failures + (not result.timed_out), timeouts + result.timed_out
                )
                if result.healthy:
                    self._ready.set()
                elif not busy:
                    self._ready.clear()
                    if failures >= s.probe_failures or timeouts >= s.probe_timeouts:
                        problem = result
            if problem is None and now >= next_sweep:
                next_sweep = now + s.janitor_interval_s
                self._sweep(server)
            if problem is None:
                continue
            self._ready.clear()
            self._record("unhealthy", problem.reason)
            streak = 0 if now - healthy_since >= s.healthy_reset_s else streak
            streak = self._restart(streak)
            if streak < 0:
                return
            failures = timeouts = 0
            self._completed = None  # the new server counts from zero
            now = time.monotonic()
            next_probe, next_sweep, healthy_since = now, now + s.janitor_interval_s, now

    def _made_progress(self, server: TritonServer) -> bool:
        """Whether the ensemble finished requests since the last call (Triton's request
        counters): a probe that timed out behind them met a busy server, not a hung one."""
        done = completed_requests(server.metrics_url, ENSEMBLE, self.supervisor.probe_timeout_s)
        previous, self._completed = self._completed, done
        return done is not None and previous is not None and done > previous

    def _sweep(self, server: TritonServer) -> None:
        try:
            timeout_s = self.supervisor.probe_timeout_s
            swept, self._suspects = sweep_client_regions(server.http_url, self._suspects, timeout_s)
            for name in swept:
                self._record("swept", f"unregistered stale client shared-memory region {name}")
        except (urllib.error.URLError, OSError, ValueError) as exc:
            log.debug("shared-memory sweep skipped: %s", exc)

    def _restart(self, streak: int) -> int:
        """Stop the faulty server and start a new one; returns the new restart streak,
        or -1 when stopping or giving up (``self._error`` set)."""
        s = self.supervisor
        while not self._stopping.is_set():
            streak += 1
            self._shutdown(self.server, s.stop_timeout_s)
            if streak > s.max_restarts:
                self._error = RestartLimitError(
                    f"Triton failed {streak} times in a row (limit max_restarts={s.max_restarts}); "
                    f"last log {self.server.log_path}"
                )
                self._record("gave_up", str(self._error))
                return -1
            delay = backoff_delay(s, streak)
            self._record("restarting", f"restart {streak} in a row after {delay:g} s on the same ports")
            if self._stopping.wait(delay):
                return -1
            config = self.config
            if config.log_path is not None:
                path = Path(config.log_path)
                restarted_log = path.with_name(f"{path.stem}.restart{self._restarts + 1}{path.suffix}")
                config = replace(config, log_path=restarted_log)
            server = TritonServer(config)
            try:
                server.start()
            except ServerError as exc:
                self._record("start_failed", str(exc).splitlines()[0])
                self._server = server
                continue
            self._server = server
            self._restarts += 1
            self._ready.set()
            self._record("restarted", f"Triton pid {server.pid} ready on {server.grpc_url} (gRPC)")
            return streak
        return -1

    def _shutdown(self, server: TritonServer, timeout_s: float) -> int | None:
        """Stop ``server``, make sure its stubs are gone, remove its stale shared memory."""
        stubs = stub_processes(server.pid) if server.pid is not None else []
        code = server.stop(timeout_s=timeout_s)
        deadline = time.monotonic() + 10.0
        while any(pid_alive(stub.pid) for stub in stubs) and time.monotonic() < deadline:
            time.sleep(0.1)
        for stub in stubs:  # outlived the server and its group: ours to end
            if pid_alive(stub.pid):
                try:
                    os.kill(stub.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    continue
        try:
            prefix = server.shm_prefix
        except ServerError:
            return code
        removed = remove_stale_server_regions(prefix)
        if removed:
            log.info("removed %d shared-memory file(s) of the stopped server: %s", len(removed),
                     ", ".join(p.name for p in removed))
        return code
