"""The launcher's pure parts: locating the install, the stub copy, environment, command line."""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

import pytest

from covidct.errors import ServerError
from covidct.app.triton_install import STUB_NAME, build_environment, locate_triton, package_root, prepare_stub
from covidct.app.server_log import log_excerpt, read_log_tail
from covidct.app.triton_server import (
    ServerConfig,
    TritonServer,
    free_ports,
    CUDA_POOL_BYTES,
    server_command,
)


def fake_install(root: Path, stub_versions=("3.11", "3.12")) -> Path:
    """The file layout of ``pip install --no-deps --target root nvidia-pytriton`` (empty files)."""
    server = root / "pytriton" / "tritonserver"
    (server / "bin").mkdir(parents=True)
    (server / "bin" / "tritonserver").write_bytes(b"")
    (server / "backends" / "python").mkdir(parents=True)
    (server / "backends" / "python" / "libtriton_python.so").write_bytes(b"")
    for version in stub_versions:
        (server / "python_backend_stubs" / version).mkdir(parents=True)
        (server / "python_backend_stubs" / version / STUB_NAME).write_bytes(f"stub {version}".encode())
    (root / "nvidia_pytriton.libs").mkdir()
    (root / "stub-site" / "numpy").mkdir(parents=True)
    return root


def test_locate_missing_install_says_make_setup(tmp_path):
    with pytest.raises(ServerError, match=r"tritonserver does not exist .*run `make setup`"):
        locate_triton(tmp_path / "nowhere")


def test_locate_uses_env_variable(tmp_path, monkeypatch):
    fake_install(tmp_path / "t")
    monkeypatch.setenv("COVIDCT_TRITON_DIR", str(tmp_path / "t"))
    install = locate_triton()
    assert install.root == (tmp_path / "t").resolve()
    assert install.python_backend_dir == install.backend_dir / "python"


def test_locate_reports_missing_stub_site(tmp_path):
    root = fake_install(tmp_path / "t")
    (root / "stub-site" / "numpy").rmdir()
    with pytest.raises(ServerError, match=r"stub-site/numpy does not exist"):
        locate_triton(root)


def test_prepare_stub_copies_matching_version(tmp_path):
    install = locate_triton(fake_install(tmp_path / "t"))
    target = prepare_stub(install, (3, 12))
    assert target.read_bytes() == b"stub 3.12"
    assert os.access(target, os.X_OK)
    assert prepare_stub(install, (3, 11)).read_bytes() == b"stub 3.11"
    leftovers = [p.name for p in install.python_backend_dir.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_prepare_stub_unknown_python_version(tmp_path):
    install = locate_triton(fake_install(tmp_path / "t"))
    with pytest.raises(ServerError, match=r"no Python-backend stub for Python 3\.7 .*available: 3\.11, 3\.12"):
        prepare_stub(install, (3, 7))


def test_environment_order(tmp_path):
    install = locate_triton(fake_install(tmp_path / "t"))
    env = build_environment(install, base_env={"LD_LIBRARY_PATH": "/opt/x", "HOME": "/root"})
    ld = env["LD_LIBRARY_PATH"].split(os.pathsep)
    assert ld == [sysconfig.get_config_var("LIBDIR"), str(install.libs_dir), "/opt/x"]
    assert env["PYTHONHOME"] == sys.base_prefix
    path = env["PYTHONPATH"].split(os.pathsep)
    assert path[0] == str(install.stub_site)  # numpy 1.26 before the venv's numpy 2
    assert path[1] == sysconfig.get_paths()["purelib"]
    assert path[-1] == str(package_root())
    assert env["HOME"] == "/root"


def test_server_command_flags(tmp_path):
    install = locate_triton(fake_install(tmp_path / "t"))
    config = ServerConfig(model_repository=tmp_path, shm_default_byte_size=123, shm_growth_byte_size=456)
    command = server_command(install, config, (1001, 1002, 1003), "covidct_x_")
    assert command[0] == str(install.server_bin)
    for flag in (
        f"--model-repository={tmp_path.resolve()}",
        "--http-port=1001",
        "--grpc-port=1002",
        "--metrics-port=1003",
        "--backend-config=python,shm-default-byte-size=123",
        "--backend-config=python,shm-growth-byte-size=456",
        "--backend-config=python,shm-region-prefix-name=covidct_x_",
        "--pinned-memory-pool-byte-size=0",
    ):
        assert flag in command
    gpu_command = server_command(install, ServerConfig(tmp_path, gpu=True), (1, 2, 3), "p")
    assert "--pinned-memory-pool-byte-size=0" not in gpu_command
    assert "--allow-gpu-metrics=true" in gpu_command
    # The KIND_GPU steps hand a 2,000-slice series' tensors on through this pool.
    assert f"--cuda-memory-pool-byte-size=0:{CUDA_POOL_BYTES}" in gpu_command
    assert CUDA_POOL_BYTES >= 2000 * (512**2 + 2 * 256**2) * 4
    assert not any(arg.startswith("--cuda-memory-pool") for arg in command)


def test_free_ports_distinct():
    ports = free_ports(3)
    assert len(set(ports)) == 3 and all(1024 <= p <= 65535 for p in ports)


def test_log_tail(tmp_path):
    log = tmp_path / "server.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert read_log_tail(log, 3) == "line 97\nline 98\nline 99"
    assert read_log_tail(tmp_path / "missing.log") == ""


def test_unstarted_server_has_no_urls(tmp_path):
    server = TritonServer(ServerConfig(tmp_path))
    with pytest.raises(ServerError, match="has not been started"):
        _ = server.grpc_url
    assert server.stop() is None


def test_missing_repository_is_rejected(tmp_path):
    with pytest.raises(ServerError, match=r"model repository .*missing is not a directory"):
        TritonServer(ServerConfig(tmp_path / "missing")).start()


def test_log_excerpt_keeps_errors_and_drops_tables(tmp_path):
    log = tmp_path / "server.log"
    log.write_text(
        'E1122 16:11:08.007406 1 server.cc:241] "CudaDriverHelper has not been initialized."\n'
        'E1122 16:11:08.012928 1 model_repository_manager.cc:1460] "Poll failed for model directory \'broken\'"\n'
        "+-------+---------+--------+\n"
        "| probe | 1       | READY  |\n"
        "| bad   | 1       | UNAVAILABLE: Internal: ImportError |\n"
        "error: creating server: Internal - failed to load all models\n"
    )
    excerpt = log_excerpt(log)
    assert "Poll failed for model directory 'broken'" in excerpt
    assert "CudaDriverHelper" not in excerpt
    assert "UNAVAILABLE: Internal: ImportError" in excerpt
    assert "READY" not in excerpt and "+---" not in excerpt
    assert excerpt.endswith("failed to load all models")
