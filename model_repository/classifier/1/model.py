"""Triton Python model ``classifier`` (portable profile): per-slice P(COVID-19).

Tensors and knobs are declared in this model's ``config.pbtxt``; the network runs in
:mod:`export.runners` (unit-tested without Triton): ONNX Runtime on ``KIND_CPU``
instances (``model.onnx`` in this version folder), torch FP16 on ``KIND_GPU`` instances
(``weights.pt`` + ``model_config.json`` in this version folder).
"""

import os
import sys

# The stub's embedded interpreter ignores PYTHONPATH for sys.path; the launcher
# (covidct/triton_server.py) lists numpy 1.26, the venv and the repository there, in order.
sys.path[:0] = [entry for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep) if entry]

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import triton_python_backend_utils as pb_utils  # noqa: E402

from covidct.errors import CovidCTError  # noqa: E402
from export.runners import RunnerSettings, create_runner  # noqa: E402


class TritonPythonModel:
    """Unpack the input slices, run the network runner, pack the probabilities."""

    def initialize(self, args):
        self.model_name = args["model_name"]
        self.settings = RunnerSettings.from_model_config(json.loads(args["model_config"]))
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.runner = create_runner(
            args["model_instance_kind"],
            version_dir,
            self.settings,
            device_id=int(args.get("model_instance_device_id", 0) or 0),
        )

    def execute(self, requests):
        return [self._respond(request) for request in requests]

    def _respond(self, request):
        try:
            tensor = pb_utils.get_input_tensor_by_name(request, self.settings.input_name)
            data = tensor.to_dlpack() if self.runner.accepts_dlpack else tensor.as_numpy()
            result = self.runner(data)
        except CovidCTError as exc:  # a bad request: INVALID_ARGUMENT for this request only
            error = pb_utils.TritonError(f"{self.model_name}: {exc}", pb_utils.TritonError.INVALID_ARG)
            return pb_utils.InferenceResponse(error=error)
        except Exception as exc:  # a bug must fail this request only, never the server
            pb_utils.Logger.log_error(f"{self.model_name}: {type(exc).__name__}: {exc}")
            error = pb_utils.TritonError(
                f"{self.model_name}: internal error: {type(exc).__name__}: {exc}", pb_utils.TritonError.INTERNAL
            )
            return pb_utils.InferenceResponse(error=error)
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.settings.output_name, result)])
