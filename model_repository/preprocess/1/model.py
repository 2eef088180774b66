"""Triton Python model ``preprocess``: selected HU slices -> network inputs and lung mask.

Tensors are declared in this model's ``config.pbtxt``; the numerics live in
:func:`preprocessing.pipeline_steps.preprocess_step` (unit-tested without Triton);
settings come from ``pipeline_config.json`` in this version folder.
"""

import os
import sys

# The stub's embedded interpreter ignores PYTHONPATH for sys.path; the launcher
# (covidct/triton_server.py) lists numpy 1.26, the venv and the repository there, in order.
sys.path[:0] = [entry for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep) if entry]

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

from covidct.errors import InputError  # noqa: E402
from preprocessing.config import PipelineConfig  # noqa: E402
from preprocessing.pipeline_steps import preprocess_step  # noqa: E402


class TritonPythonModel:
    """Unpack SELECTED_HU and SPACING_MM, call ``preprocess_step``, pack the configured outputs."""

    def initialize(self, args):
        self.model_name = args["model_name"]
        model_config = json.loads(args["model_config"])
        self.input_names = [t["name"] for t in model_config["input"]]
        self.outputs = {
            t["name"]: (pb_utils.triton_string_to_numpy(t["data_type"]), [int(d) for d in t["dims"]])
            for t in model_config["output"]
        }
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.config = PipelineConfig.load(version_dir)

    def execute(self, requests):
        return [self._respond(request) for request in requests]

    def _respond(self, request):
        try:
            arrays = {
                name.lower(): pb_utils.get_input_tensor_by_name(request, name).as_numpy()
                for name in self.input_names
            }
            result = preprocess_step(**arrays, config=self.config)
            tensors = [self._pack(name, result[name]) for name in self.outputs]
        except InputError as exc:  # a bad request: INVALID_ARGUMENT for this request only
            error = pb_utils.TritonError(f"{self.model_name}: {exc}", pb_utils.TritonError.INVALID_ARG)
            return pb_utils.InferenceResponse(error=error)
        except Exception as exc:  # a bug must fail this request only, never the server
            pb_utils.Logger.log_error(f"{self.model_name}: {type(exc).__name__}: {exc}")
            error = pb_utils.TritonError(
                f"{self.model_name}: internal error: {type(exc).__name__}: {exc}", pb_utils.TritonError.INTERNAL
            )
            return pb_utils.InferenceResponse(error=error)
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def _pack(self, name, value):
        """One output as its configured dtype (and fixed shape, where config.pbtxt fixes it)."""
        dtype, dims = self.outputs[name]
        if dtype == np.object_:
            array = np.array([v.encode("utf-8") if isinstance(v, str) else v for v in value], dtype=np.object_)
        else:
            array = np.ascontiguousarray(value, dtype=dtype)
        if all(d >= 0 for d in dims):
            array = array.reshape(dims)
        return pb_utils.Tensor(name, array)
