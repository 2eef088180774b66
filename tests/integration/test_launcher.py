"""The Triton launcher against the real server: ports, readiness, stop, errors, the bundle's
backend, loopback-only listening, restricted admin protocols and gRPC TLS."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from covidct.errors import ServerError
from covidct.serving import source_repository
from covidct.serving import tensors as T
from covidct.serving.steps import slice_positions
from covidct.app.triton_server import ADMIN_HEADER, GRPC_ADMIN_HEADER, GrpcTls, ServerConfig, TritonServer
from covidct.preprocessing.config import PipelineConfig
from covidct.preprocessing.synthetic.phantom import make_phantom

pytestmark = pytest.mark.integration


def write_preprocess_repository(root: Path) -> Path:
    """A repository holding only the bundle's ``preprocess`` model (no networks needed)."""
    shutil.copytree(source_repository() / "preprocess", root / "preprocess", ignore=shutil.ignore_patterns(".gitkeep"))
    PipelineConfig().save(root / "preprocess" / "1")
    return root


def preprocess_inputs(size: int = 64) -> list[grpcclient.InferInput]:
    volume = make_phantom(36, size=size, covid=False, seed=1).volume
    hu = grpcclient.InferInput(T.HU_VOLUME, list(volume.hu.shape), "INT16")
    hu.set_data_from_numpy(volume.hu)
    spacing = grpcclient.InferInput(T.SPACING_MM, [3], "FP32")
    spacing.set_data_from_numpy(np.asarray(volume.spacing_mm, np.float32))
    positions = grpcclient.InferInput(T.SLICE_POSITIONS_MM, [volume.num_slices], "FP32")
    positions.set_data_from_numpy(slice_positions(volume))
    return [hu, spacing, positions]


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT of closed clients
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def listening_addresses(port: int) -> set[str]:
    """Local IPv4/IPv6 addresses (hex, as /proc/net/tcp* writes them) listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


def test_start_ready_bundle_backend_and_clean_stop(tmp_path):
    repository = write_preprocess_repository(tmp_path / "repo")
    server = TritonServer(ServerConfig(repository, log_path=tmp_path / "triton.log"))
    with server:
        http_port, grpc_port, metrics_port = server.ports
        assert len({http_port, grpc_port, metrics_port}) == 3
        assert server.is_running()
        client = grpcclient.InferenceServerClient(server.grpc_url)
        assert client.is_server_ready() and client.is_model_ready("preprocess")
        result = client.infer("preprocess", preprocess_inputs())
        client.close()
        pid = server.pid
        # every endpoint listens on loopback only: 127.0.0.1 as /proc/net/tcp writes it, or
        # IPv4-mapped (::ffff:127.0.0.1) in /proc/net/tcp6; never a wildcard address
        loopback = {"0100007F", "0000000000000000FFFF00000100007F"}
        for port in (http_port, grpc_port, metrics_port):
            assert listening_addresses(port) and listening_addresses(port) <= loopback, port
    # numpy 1.26 in the stub: with numpy 2 Triton 2.51's stub returns empty outputs
    assert result.as_numpy(T.CLASSIFIER_INPUT).size > 0
    assert json.loads(result.as_numpy(T.ASSESSMENT)[0])["assessable"] is True
    assert (server_backend := Path(server.log_path).read_text()).count("successfully loaded 'preprocess'") == 1
    assert "covidct" in server_backend
    # clean stop: process reaped and gone, ports released, log kept
    assert not server.is_running() and server.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert port_is_free(grpc_port) and port_is_free(http_port)


def test_invalid_repository_raises_with_log_tail(tmp_path):
    repository = write_preprocess_repository(tmp_path / "repo")
    (repository / "broken" / "1").mkdir(parents=True)
    (repository / "broken" / "config.pbtxt").write_text('backend: "covidct"\nmax_batch_size: nonsense\n')
    server = TritonServer(ServerConfig(repository, startup_timeout_s=60))
    expected = r"(?s)exited with code .*before becoming ready.*server log .*errors:.*broken.config.pbtxt"
    with pytest.raises(ServerError, match=expected):
        server.start()
    assert not server.is_running()


def test_step_that_fails_to_load_is_reported(tmp_path):
    repository = write_preprocess_repository(tmp_path / "repo")
    config = (repository / "preprocess" / "config.pbtxt").read_text()
    (repository / "preprocess" / "config.pbtxt").write_text(config.replace('"preprocess" }', '"no_such_step" }'))
    with pytest.raises(ServerError, match=r"(?s)server log .*parameter 'step' is 'no_such_step'"):
        TritonServer(ServerConfig(repository, startup_timeout_s=60)).start()


def test_admin_protocols_need_the_key_inference_and_health_do_not(tmp_path):
    repository = write_preprocess_repository(tmp_path / "repo")
    with TritonServer(ServerConfig(repository, admin_key="s3cret-key")) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        assert client.is_server_live() and client.is_model_ready("preprocess")
        assert client.infer("preprocess", preprocess_inputs()).as_numpy(T.LUNG_SLICES).size > 0
        for call in (client.get_model_repository_index, lambda: client.get_inference_statistics("preprocess"),
                     lambda: client.get_model_config("preprocess"), client.get_log_settings):
            with pytest.raises(InferenceServerException, match=r"(?i)restricted|unavailable|permission|denied"):
                call()
        index = client.get_model_repository_index(headers={GRPC_ADMIN_HEADER: "s3cret-key"})
        assert [m.name for m in index.models] == ["preprocess"]
        with pytest.raises(InferenceServerException):
            client.get_inference_statistics("preprocess", headers={GRPC_ADMIN_HEADER: "wrong"})
        client.close()
        import urllib.error
        import urllib.request

        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://{server.http_url}/v2/models/stats", timeout=10)
        assert refused.value.code in (401, 403)
        stats_url = f"http://{server.http_url}/v2/models/stats"
        request = urllib.request.Request(stats_url, headers={ADMIN_HEADER: "s3cret-key"})
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            assert response.status == 200


def make_certificates(folder: Path) -> dict[str, Path]:
    """A test CA, a server certificate for 127.0.0.1/localhost and a client certificate (openssl)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: cannot make test certificates")
    folder.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=covidct test CA",
        "-keyout", "ca.key", "-out", "ca.pem")
    (folder / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN=covidct {name}", "-keyout", f"{name}.key",
            "-out", f"{name}.csr")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", "san.cnf", "-out", f"{name}.pem")
    return {name: folder / name for name in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}


@pytest.mark.slow
def test_grpc_mutual_tls_end_to_end(tmp_path):
    certs = make_certificates(tmp_path / "certs")
    repository = write_preprocess_repository(tmp_path / "repo")
    tls = GrpcTls(certs["server.pem"], certs["server.key"], root_cert=certs["ca.pem"], mutual=True)
    with TritonServer(ServerConfig(repository, grpc_tls=tls)) as server:
        trusted = grpcclient.InferenceServerClient(
            server.grpc_url, ssl=True, root_certificates=str(certs["ca.pem"]),
            private_key=str(certs["client.key"]), certificate_chain=str(certs["client.pem"]),
        )
        assert trusted.infer("preprocess", preprocess_inputs()).as_numpy(T.LUNG_SLICES).size > 0
        trusted.close()
        anonymous = grpcclient.InferenceServerClient(server.grpc_url, ssl=True, root_certificates=str(certs["ca.pem"]))
        with pytest.raises(InferenceServerException):
            anonymous.is_server_ready()
        anonymous.close()
        plain = grpcclient.InferenceServerClient(server.grpc_url)
        with pytest.raises(InferenceServerException):
            plain.is_server_ready()
        plain.close()


def test_tls_configuration_errors(tmp_path):
    with pytest.raises(ServerError, match=r"gRPC TLS server-cert .*nope.pem: file not found"):
        GrpcTls(tmp_path / "nope.pem", tmp_path / "nope.key").arguments()
    (tmp_path / "a.pem").write_text("x")
    with pytest.raises(ServerError, match=r"mutual TLS needs root_cert"):
        GrpcTls(tmp_path / "a.pem", tmp_path / "a.pem", mutual=True).arguments()
