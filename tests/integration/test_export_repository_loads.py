"""A repository generated in the portable profile loads in the real Triton server: every
model (the Python steps, the runner models, the ensemble) reports READY, and a real
inference through the classifier model alone equals ONNX Runtime on the same file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from covidct.app.triton_server import ServerConfig, TritonServer
from covidct.export.parity import onnxruntime_function
from covidct.export.repository import build_repository
from covidct.preprocessing.config import ModelInputConfig, PipelineConfig
from covidct.training.checkpoint import save_checkpoint
from covidct.training.registry import create_model

pytestmark = pytest.mark.integration

SIZE = 64
MODELS = ("preprocess", "classifier", "segmenter", "vote", "covid_ct_pipeline")


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("export_loads")
    pipeline = PipelineConfig(classifier_input=ModelInputConfig(size=SIZE), segmenter_input=ModelInputConfig(size=SIZE))
    torch.manual_seed(0)
    c = save_checkpoint(root / "cnn6", create_model("cnn6", input_size=SIZE), pipeline)
    s = save_checkpoint(root / "unet", create_model("unet", input_size=SIZE), pipeline)
    return build_repository(c, s, root / "model_repository", profile="portable")


@pytest.fixture(scope="module")
def client(repository, tmp_path_factory):
    log_path = tmp_path_factory.mktemp("export_loads_log") / "tritonserver.log"
    with TritonServer(ServerConfig(repository, log_path=log_path, startup_timeout_s=300)) as server:
        grpc = grpcclient.InferenceServerClient(server.grpc_url)
        try:
            yield grpc
        finally:
            grpc.close()


def test_every_model_is_ready(client, repository):
    index = {m.name: m.state for m in client.get_model_repository_index().models}
    assert {name: index.get(name) for name in MODELS} == {name: "READY" for name in MODELS}
    for name in MODELS:
        assert client.is_model_ready(name)
    meta = client.get_model_metadata("classifier")
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("CLASSIFIER_INPUT", "FP32", [-1, 1, SIZE, SIZE])
    ]


def test_classifier_inference_equals_onnxruntime(client, repository):
    x = np.random.default_rng(7).random((70, 1, SIZE, SIZE), dtype=np.float32)  # > one 64-slice chunk
    inp = grpcclient.InferInput("CLASSIFIER_INPUT", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("classifier", [inp], outputs=[grpcclient.InferRequestedOutput("PROBABILITY")])
    served = result.as_numpy("PROBABILITY")
    assert served.shape == (70, 1) and served.dtype == np.float32
    assert np.all((served >= 0) & (served <= 1))
    reference = onnxruntime_function(repository / "classifier" / "1" / "model.onnx", "CLASSIFIER_INPUT",
                                     "PROBABILITY", threads=1)(x)
    np.testing.assert_allclose(served, reference, atol=1e-5)


def test_wrong_shape_is_rejected_naming_the_tensor(client):
    x = np.zeros((2, 1, SIZE // 2, SIZE // 2), np.float32)
    inp = grpcclient.InferInput("CLASSIFIER_INPUT", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException, match="CLASSIFIER_INPUT"):
        client.infer("classifier", [inp])
    # the model keeps serving after a bad request
    ok = grpcclient.InferInput("CLASSIFIER_INPUT", [1, 1, SIZE, SIZE], "FP32")
    ok.set_data_from_numpy(np.zeros((1, 1, SIZE, SIZE), np.float32))
    assert client.infer("classifier", [ok]).as_numpy("PROBABILITY").shape == (1, 1)
