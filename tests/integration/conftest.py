"""Session fixtures of the integration tests: demo models trained once (quick mode), the
portable model repository built once, one Triton server on free ports for the session;
and the same for the shipped networks trained on real chest CT (``shipped_server``), which
the trust, acquisition and PACS tests are run against.

Everything here is real: torch training, ONNX export, ONNX Runtime, the Triton server
binary, gRPC. The server's log is kept in the session's temporary folder.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from covidct.app.triton_server import ServerConfig, TritonServer
from covidct.preprocessing.config import PipelineConfig

ENSEMBLE = "covid_ct_pipeline"
STEP_MODELS = ("preprocess", "classifier", "segmenter", "vote")


@pytest.fixture(scope="session")
def demo_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Classifier and segmenter checkpoints of the demo models (quick mode, seed 0)."""
    import torch

    from covidct.training.demo_models import train_demo_models

    threads = torch.get_num_threads()
    torch.set_num_threads(min(2, threads))
    try:
        checkpoints = train_demo_models(tmp_path_factory.mktemp("demo_models"), seed=0, quick=True)
    finally:
        torch.set_num_threads(threads)
    return {name: Path(path) for name, path in checkpoints.items()}


@pytest.fixture(scope="session")
def model_repository(demo_checkpoints, tmp_path_factory) -> Path:
    """The deployable ``portable`` repository built by the exporter from the demo models."""
    from covidct.export.repository import build_repository

    out = tmp_path_factory.mktemp("served") / "model_repository"
    return Path(
        build_repository(demo_checkpoints["classifier"], demo_checkpoints["segmenter"], out, profile="portable")
    )


def _serve(repository: Path, log_dir: Path) -> Iterator[TritonServer]:
    """A Triton server on free ports serving ``repository`` until the generator is closed."""
    server = TritonServer(ServerConfig(repository, log_path=log_dir / "tritonserver.log", startup_timeout_s=300))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _client(server: TritonServer):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.grpc_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def triton_server(model_repository, tmp_path_factory) -> Iterator[TritonServer]:
    """One Triton server for the whole session, on free ports."""
    yield from _serve(model_repository, tmp_path_factory.mktemp("triton_log"))


@pytest.fixture(scope="session")
def grpc_client(triton_server):
    yield from _client(triton_server)


@pytest.fixture(scope="session")
def served_pipeline_config(model_repository) -> PipelineConfig:
    """The pipeline config the Python models of the served repository load."""
    return PipelineConfig.load(model_repository / "preprocess" / "1")


class OnnxNetwork:
    """``x -> first output`` of an ONNX file through ONNX Runtime (CPU, 1 thread)."""

    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})[0]


@pytest.fixture(scope="session")
def onnx_networks(model_repository) -> dict[str, OnnxNetwork]:
    """The classifier's and segmenter's ONNX files of the served repository, run directly."""
    networks = {}
    for name in ("classifier", "segmenter"):
        files = sorted((model_repository / name).glob("*/*.onnx"))
        if not files:
            raise FileNotFoundError(f"no ONNX file under {model_repository / name}")
        networks[name] = OnnxNetwork(files[0])
    return networks



@pytest.fixture(scope="session")
def shipped_repository(tmp_path_factory) -> Path:
    """The ``portable`` repository the exporter builds from the shipped checkpoints (with parity checks)."""
    from covidct.export.repository import build_repository
    from covidct.training.shipped import shipped_checkpoint

    out = tmp_path_factory.mktemp("shipped") / "model_repository"
    return Path(build_repository(shipped_checkpoint("classifier"), shipped_checkpoint("segmenter"), out,
                                 profile="portable"))


@pytest.fixture(scope="session")
def shipped_server(shipped_repository, tmp_path_factory) -> Iterator[TritonServer]:
    """A Triton server serving the shipped networks, on free ports, for the whole session."""
    yield from _serve(shipped_repository, tmp_path_factory.mktemp("shipped_log"))


@pytest.fixture(scope="session")
def shipped_grpc_client(shipped_server):
    yield from _client(shipped_server)
