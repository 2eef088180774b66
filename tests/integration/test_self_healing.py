"""The supervised server against the real Triton: a killed Python-backend stub under load
is detected, the server restarts on the same ports with its old shared memory removed, every
request gets an answer; a client killed while its shared-memory region is registered has
the region unregistered by the janitor. Loopback only; each wait is bounded."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from covidct.client.result import PipelineResult
from covidct.client.submit import submit
from covidct.client.transport import TransportConfig
from covidct.app import health
from covidct.app.cli import main
from covidct.errors import ClientError
from covidct.app.shm_regions import SHM_DIR, client_region_pid, registered_regions, remove_stale_server_regions
from covidct.app.supervisor import SupervisedServer, SupervisorConfig
from covidct.app.triton_server import ServerConfig
from covidct.preprocessing.synthetic.phantom import make_phantom

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
DETECT_S = 10.0  # the probe reports the fault within this
RECOVER_S = 30.0  # a request succeeds again within this after the kill
LOAD_THREADS = 3
TRANSPORT = TransportConfig(timeout_s=60.0, connect_timeout_s=5.0, retries=3, backoff_s=0.5)

KILLED_CLIENT = """
import sys
from covidct.client.submit import PipelineClient
from covidct.client.transport import TransportConfig
from covidct.preprocessing.synthetic.phantom import make_phantom

volume = make_phantom(60, size=96, seed=3).volume
print("sending", flush=True)
with PipelineClient(sys.argv[1], transport=TransportConfig(shared_memory="on", timeout_s=120)) as client:
    while True:
        client.infer_volume(volume)
"""


@pytest.fixture(scope="module")
def supervised(model_repository, tmp_path_factory):
    log_path = tmp_path_factory.mktemp("supervised_log") / "tritonserver.log"
    # With an admin key, as `covidct serve` runs it: health, inference and shared memory stay open.
    config = ServerConfig(model_repository, log_path=log_path, startup_timeout_s=180, admin_key="self-healing-test-key")
    watch = SupervisorConfig(
        check_interval_s=0.5, probe_interval_s=3.0, probe_timeout_s=10.0, backoff_initial_s=0.5,
        backoff_max_s=4.0, janitor_interval_s=1.0, stop_timeout_s=5.0,
    )
    server = SupervisedServer(config, watch).start()
    try:
        yield server
    finally:
        server.stop()


class Load:
    """Threads submitting small phantoms until stopped; every outcome is kept."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.volume = make_phantom(40, size=64).volume
        self.outcomes: list[object] = []
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(LOAD_THREADS)]

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                outcome: object = submit(self.volume, self.url, transport=TRANSPORT)
            except Exception as exc:  # noqa: BLE001 - every outcome is judged by the test
                outcome = exc
            with self.lock:
                self.outcomes.append(outcome)

    def __enter__(self) -> "Load":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=TRANSPORT.timeout_s + 30)


def wait_until(condition, timeout_s: float, pause_s: float = 0.2):
    """The first truthy value of ``condition()`` within ``timeout_s`` seconds, else ``None``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(pause_s)
    return None


def one_request_succeeds(url: str) -> bool:
    try:
        return isinstance(submit(make_phantom(40, size=64, seed=5).volume, url, transport=TRANSPORT), PipelineResult)
    except ClientError:
        return False


def test_probe_command_on_the_healthy_server(supervised, capsys):
    assert wait_until(lambda: supervised.ready, RECOVER_S)
    assert main(["probe", "--url", supervised.http_url, "--timeout", "30"]) == 0
    assert "covid_ct_pipeline answered" in capsys.readouterr().out
    assert main(["probe", "--liveness", "--url", supervised.http_url]) == 0
    assert "stubs are running" in capsys.readouterr().out


@pytest.mark.parametrize("model", ["preprocess", "vote", "classifier"])
def test_killed_stub_is_detected_and_the_server_heals(supervised, model):
    assert wait_until(lambda: supervised.ready, RECOVER_S), "the supervised server is not ready before the kill"
    url, http_url, restarts = supervised.grpc_url, supervised.http_url, supervised.restarts
    with Load(url) as load:
        assert wait_until(lambda: len(load.outcomes) >= LOAD_THREADS, 60.0), "no request finished before the kill"
        old_pid = supervised.pid
        stub = next(s for s in health.stub_processes(old_pid) if s.model == model)
        os.kill(stub.pid, signal.SIGKILL)
        processes = wait_until(lambda: (p := health.check_processes(old_pid)) and not p.healthy and p, DETECT_S, 0.05)
        assert processes, f"the process check still sees the {model} stub {DETECT_S} s after the kill"
        assert processes.step in (model, None), processes.reason  # None: the server already went down
        unhealthy = wait_until(lambda: (p := health.probe_pipeline(http_url, 5.0)) and not p.healthy and p, DETECT_S)
        assert unhealthy, f"the ensemble probe still reports healthy {DETECT_S} s after killing the {model} stub"
        assert wait_until(lambda: not supervised.ready or supervised.restarts > restarts, DETECT_S)
        assert wait_until(lambda: one_request_succeeds(url), RECOVER_S), f"no answer {RECOVER_S} s after the kill"
        done = len(load.outcomes)
        assert wait_until(lambda: len(load.outcomes) > done, 60.0), "the load stopped getting answers"
    assert all(not t.is_alive() for t in load.threads), "a request never got an answer"
    strays = [o for o in load.outcomes if not isinstance(o, (PipelineResult, ClientError))]
    assert not strays, f"untyped outcomes: {strays[:3]}"
    assert supervised.restarts > restarts
    assert supervised.pid != old_pid
    assert remove_stale_server_regions(supervised.server.shm_prefix) == [], "old server's /dev/shm pool left"
    assert health.probe_pipeline(http_url, 10.0).healthy


def test_janitor_unregisters_region_of_killed_client(supervised):
    assert wait_until(lambda: supervised.ready, RECOVER_S)
    http_url = supervised.http_url
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_CLIENT, supervised.grpc_url],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        assert child.stdout.readline().strip() == "sending"

        def own_region():
            return next((r for r in registered_regions(http_url) if client_region_pid(r["key"]) == child.pid), None)

        region = wait_until(own_region, 60.0, pause_s=0.02)
        assert region, "the client never registered a shared-memory region"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    names = lambda: {r["name"] for r in registered_regions(http_url)}  # noqa: E731
    assert wait_until(lambda: region["name"] not in names(), 30.0), f"{region['name']} still registered"
    assert not (SHM_DIR / region["key"].lstrip("/")).exists()
    assert any(e.kind == "swept" and region["name"] in e.message for e in supervised.events)
