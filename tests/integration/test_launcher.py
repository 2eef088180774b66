"""The Triton launcher against the real server: ports, readiness, stop, errors, stub imports."""

from __future__ import annotations

import os
import socket
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from covidct.errors import ServerError
from covidct.triton_server import REPO_ROOT, ServerConfig, TritonServer

pytestmark = pytest.mark.integration

PROBE_CONFIG = """
backend: "python"
max_batch_size: 0
input [ { name: "X" data_type: TYPE_INT16 dims: [ -1 ] } ]
output [ { name: "INFO" data_type: TYPE_STRING dims: [ -1 ] } ]
instance_group [ { kind: KIND_CPU count: 1 } ]
"""

# The same PYTHONPATH prologue as the project's model.py files; then it reports where
# numpy and the project's packages came from.
PROBE_MODEL = '''
import os
import sys

sys.path[:0] = [entry for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep) if entry]

import numpy as np
import scipy
import triton_python_backend_utils as pb_utils

import covidct.errors
import preprocessing.config


class TritonPythonModel:
    def execute(self, requests):
        info = [np.__version__, np.__file__, preprocessing.config.__file__, covidct.errors.__file__]
        tensor = np.array([s.encode() for s in info], dtype=np.object_)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("INFO", tensor)]) for _ in requests]
'''


def write_probe_repository(root: Path) -> Path:
    (root / "probe" / "1").mkdir(parents=True)
    (root / "probe" / "config.pbtxt").write_text(textwrap.dedent(PROBE_CONFIG))
    (root / "probe" / "1" / "model.py").write_text(PROBE_MODEL)
    return root


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT of closed clients
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_start_ready_stub_imports_and_clean_stop(tmp_path):
    repository = write_probe_repository(tmp_path / "repo")
    server = TritonServer(ServerConfig(repository, log_path=tmp_path / "triton.log"))
    with server:
        http_port, grpc_port, metrics_port = server.ports
        assert len({http_port, grpc_port, metrics_port}) == 3
        assert server.is_running()
        client = grpcclient.InferenceServerClient(server.grpc_url)
        assert client.is_server_ready() and client.is_model_ready("probe")
        x = grpcclient.InferInput("X", [2], "INT16")
        x.set_data_from_numpy(np.zeros(2, np.int16))
        version, numpy_file, config_file, errors_file = [
            v.decode() for v in client.infer("probe", [x]).as_numpy("INFO")
        ]
        client.close()
        pid = server.pid
    # numpy 1.26 from .triton/stub-site first (numpy 2 makes the stub return empty outputs)
    assert version.startswith("1.26"), (version, numpy_file)
    assert "stub-site" in numpy_file
    assert Path(config_file) == REPO_ROOT / "preprocessing" / "config.py"
    assert Path(errors_file) == REPO_ROOT / "covidct" / "errors.py"
    # clean stop: process reaped and gone, ports released, log kept
    assert not server.is_running() and server.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert port_is_free(grpc_port) and port_is_free(http_port)
    assert "successfully loaded 'probe'" in (tmp_path / "triton.log").read_text()


def test_invalid_repository_raises_with_log_tail(tmp_path):
    repository = write_probe_repository(tmp_path / "repo")
    (repository / "broken" / "1").mkdir(parents=True)
    (repository / "broken" / "config.pbtxt").write_text('backend: "python"\nmax_batch_size: nonsense\n')
    server = TritonServer(ServerConfig(repository, startup_timeout_s=60))
    with pytest.raises(ServerError, match=r"(?s)exited with code .*before becoming ready.*server log .*errors:.*broken.config.pbtxt"):
        server.start()
    assert not server.is_running()


def test_model_that_fails_to_import_is_reported(tmp_path):
    repository = write_probe_repository(tmp_path / "repo")
    (repository / "probe" / "1" / "model.py").write_text("import no_such_module_here\n")
    with pytest.raises(ServerError, match=r"(?s)server log .*no_such_module_here"):
        TritonServer(ServerConfig(repository, startup_timeout_s=60)).start()
