"""Pieces of the supervisor and the health probe without a Triton server: instance counts
from real config.pbtxt files, stub processes and shared-memory mappings of real child
processes (/proc), the probe against a local HTTP server, config checks."""

from __future__ import annotations

import http.server
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from covidct.app import health
from covidct.app.cli import main
from covidct.errors import ConfigError, ServerError
from covidct.serving import source_repository
from covidct.app.shm_regions import client_region_is_stale, client_region_pid, remove_stale_server_regions
from covidct.app.supervisor import SupervisedServer, SupervisorConfig, backoff_delay
from covidct.app.triton_server import ServerConfig

TRITON_STUB_DEAD = "in ensemble 'covid_ct_pipeline', Stub process 'preprocess_0_0' is not healthy."
TRITON_INSTANCE_FAILED = (
    "in ensemble 'covid_ct_pipeline', Failed to process the request(s) for model instance 'vote_0_1', "
    "message: Stub process 'vote_0_1' is not healthy."
)
METRICS = """# HELP nv_inference_request_success Number of successful inference requests
nv_inference_request_success{model="covid_ct_pipeline",version="1"} 41
nv_inference_request_success{model="preprocess",version="1"} 45
nv_inference_request_failure{model="covid_ct_pipeline",reason="BACKEND",version="1"} 3
nv_inference_count{model="covid_ct_pipeline",version="1"} 44
"""
SLEEPER = "import sys, time; time.sleep(60)"
MAPPER = (
    "import mmap, os, sys, time\n"
    "path = sys.argv[1].replace('PID', str(os.getpid()))\n"
    "f = open(path, 'w+b'); f.write(b'x' * 4096); f.flush()\n"
    "m = mmap.mmap(f.fileno(), 4096)\n"
    "print(path, flush=True); time.sleep(60)\n"
)


def write_config(repo: Path, name: str, text: str) -> None:
    (repo / name).mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(f'name: "{name}"\n{text}\n', encoding="utf-8")


@pytest.fixture()
def children():
    procs: list[subprocess.Popen] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)


def spawn(children: list, argv: list[str]) -> subprocess.Popen:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    children.append(proc)
    return proc


# ------------------------------------------------------------------------- stub counts
def test_expected_stubs_counts_instances_of_python_based_models(tmp_path):
    write_config(tmp_path, "pre", 'backend: "python"\ninstance_group [ { count: 2, kind: KIND_CPU } ]')
    write_config(tmp_path, "vote", 'backend: "covidct"  # a Python-based backend')
    write_config(tmp_path, "net", 'backend: "onnxruntime"\ninstance_group [ { count: 3 } ]')
    write_config(tmp_path, "pipe", 'platform: "ensemble"')
    assert health.expected_stubs(tmp_path) == {"pre": 2, "vote": 1}


def test_expected_stubs_of_the_source_repository_are_the_four_steps():
    assert health.expected_stubs(source_repository()) == {"classifier": 1, "preprocess": 1, "segmenter": 1, "vote": 1}


def test_check_processes_names_the_model_whose_stub_died(tmp_path, children):
    repo = tmp_path / "repo"
    for name in ("preprocess", "vote"):
        write_config(repo, name, 'backend: "covidct"')
    stub = tmp_path / health.STUB_NAME
    stub.symlink_to(sys.executable)
    procs = {
        name: spawn(children, [str(stub), "-c", SLEEPER, "region", "1", "1", "dir", "3", f"{name}_0_0"])
        for name in ("preprocess", "vote")
    }
    found = health.stub_processes(os.getpid())
    assert sorted((s.model, s.pid) for s in found) == sorted((n, p.pid) for n, p in procs.items())
    assert health.check_processes(os.getpid(), repo).healthy
    procs["vote"].send_signal(signal.SIGKILL)
    procs["vote"].wait(timeout=10)
    result = health.check_processes(os.getpid(), repo)
    assert not result.healthy and result.step == "vote"
    assert "vote (1 of 1)" in result.reason


def test_check_processes_of_a_dead_server(children):
    proc = spawn(children, [sys.executable, "-c", "pass"])
    proc.wait(timeout=30)
    result = health.check_processes(proc.pid)
    assert not result.healthy and "is not running" in result.reason


# ---------------------------------------------------------------------- shared memory
def test_remove_stale_server_regions_keeps_mapped_and_foreign_files(tmp_path, children):
    shm = tmp_path.resolve()
    prefix = "covidct_1_2_"
    stale, foreign = shm / f"{prefix}dead", shm / "covidct_9_9_other"
    for path in (stale, foreign):
        path.write_bytes(b"x" * 4096)
    mapper = spawn(children, [sys.executable, "-c", MAPPER, str(shm / f"{prefix}live")])
    live = Path(mapper.stdout.readline().strip())
    assert remove_stale_server_regions(prefix, shm) == [stale]
    assert live.exists() and foreign.exists() and not stale.exists()


def test_remove_stale_server_regions_needs_a_prefix(tmp_path):
    with pytest.raises(ConfigError, match="non-empty prefix"):
        remove_stale_server_regions("", tmp_path)


def test_client_region_of_a_dead_or_reused_pid_is_stale(tmp_path, children):
    shm = tmp_path.resolve()
    holder = spawn(children, [sys.executable, "-c", MAPPER, str(shm / "covidct_client_PID_abc")])
    key = Path(holder.stdout.readline().strip()).name
    assert client_region_pid(key) == holder.pid
    assert not client_region_is_stale(f"/{key}", shm)
    assert client_region_is_stale(f"covidct_client_{os.getpid()}_abc", shm)  # alive, maps nothing: reused pid
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=10)
    assert client_region_is_stale(key, shm)
    assert not client_region_is_stale("someone_else_12_abc", shm)
    assert client_region_pid("covidct_client_x_1") is None


# ----------------------------------------------------------------------------- probe
class TritonLike(http.server.BaseHTTPRequestHandler):
    """Answers like Triton's HTTP endpoint in the mode its server was given."""

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        mode = self.server.mode
        if mode == "slow":
            time.sleep(2.0)
        if mode == "dead_stub":
            body, code = {"error": TRITON_STUB_DEAD}, 500
        else:
            body, code = {"outputs": [{"name": "VERDICT", "datatype": "INT32", "shape": [1], "data": [-1]}]}, 200
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        data = METRICS.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture()
def triton_like():
    servers = []

    def start(mode: str) -> str:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), TritonLike)
        server.mode = mode
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_probe_names_the_failing_step(triton_like):
    result = health.probe_pipeline(triton_like("dead_stub"), 5.0)
    assert not result.healthy and result.step == "preprocess" and not result.timed_out
    assert "HTTP 500" in result.reason


def test_probe_healthy_on_any_answer_and_times_out_on_a_slow_one(triton_like):
    assert health.probe_pipeline(triton_like("ok"), 5.0).healthy
    slow = health.probe_pipeline(triton_like("slow"), 0.5)
    assert not slow.healthy and slow.timed_out


def test_completed_requests_reads_triton_counters(triton_like):
    metrics_url = f"http://{triton_like('ok')}/metrics"
    assert health.completed_requests(metrics_url, "covid_ct_pipeline") == 44.0
    assert health.completed_requests(metrics_url, "vote") is None
    assert health.completed_requests("http://127.0.0.1:1/metrics", "covid_ct_pipeline") is None


def test_failing_step_from_triton_messages():
    assert health.failing_step(TRITON_STUB_DEAD) == "preprocess"
    assert health.failing_step(TRITON_INSTANCE_FAILED) == "vote"
    assert health.failing_step("connection refused") is None


def test_probe_request_is_a_valid_small_volume():
    body = json.loads(health.probe_request_body())
    hu = body["inputs"][0]
    assert hu["shape"] == list(health.PROBE_SHAPE) and len(hu["data"]) == math.prod(hu["shape"])


def test_probe_command_exits_1_when_nothing_answers(capsys, triton_like):
    assert main(["probe", "--url", "127.0.0.1:1", "--timeout", "2"]) == 1
    assert "unhealthy" in capsys.readouterr().err
    assert main(["probe", "--url", triton_like("dead_stub")]) == 1
    assert "step 'preprocess'" in capsys.readouterr().err
    assert main(["probe", "--url", triton_like("ok")]) == 0


# ---------------------------------------------------------------------- configuration
def test_backoff_doubles_up_to_its_bound():
    config = SupervisorConfig(backoff_initial_s=1.0, backoff_max_s=5.0)
    assert [backoff_delay(config, n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_supervisor_config_rejects_bad_values():
    with pytest.raises(ConfigError, match=r"check_interval_s=0; expected 0 < value"):
        SupervisorConfig(check_interval_s=0)
    with pytest.raises(ConfigError, match=r"backoff_max_s=1.0; expected >= backoff_initial_s=2.0"):
        SupervisorConfig(backoff_initial_s=2.0, backoff_max_s=1.0)
    with pytest.raises(ConfigError, match=r"max_restarts=0; expected >= 1"):
        SupervisorConfig(max_restarts=0)


def test_supervised_server_needs_a_repository(tmp_path):
    server = SupervisedServer(ServerConfig(tmp_path / "missing"))
    with pytest.raises(ServerError, match="has not been started"):
        _ = server.grpc_url
    with pytest.raises(ServerError, match=r"missing is not a directory"):
        server.start()
