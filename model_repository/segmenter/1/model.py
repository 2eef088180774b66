"""Triton Python model ``segmenter`` (portable profile): per-pixel infection probability.

Tensors and knobs are declared in this model's ``config.pbtxt``; the network runs in
:mod:`covidct.serving.runners` (unit-tested without Triton): ONNX Runtime on ``KIND_CPU``
instances (``model.onnx`` in this version folder), torch FP16 on ``KIND_GPU`` instances
(``weights.pt`` + ``model_config.json`` in this version folder). Request handling is
:class:`covidct.serving.step_model.StepModel`.
"""

import os
import sys

# The stub's embedded interpreter ignores PYTHONPATH for sys.path; the launcher
# (covidct/triton_server.py) lists numpy 1.26, the venv and the repository there, in order.
# In NVIDIA's container the bundle is pip-installed and this line changes nothing.
sys.path[:0] = [entry for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep) if entry]

import triton_python_backend_utils as pb_utils  # noqa: E402

from covidct.serving.step_model import StepModel, model_config, runner_step, version_dir  # noqa: E402
from covidct.serving.runners import RunnerSettings, create_runner  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        settings = RunnerSettings.from_model_config(model_config(args))
        runner = create_runner(
            args["model_instance_kind"],
            version_dir(args),
            settings,
            device_id=int(args.get("model_instance_device_id", 0) or 0),
        )
        step = runner_step(runner, settings.input_name, settings.output_name)
        self.model = StepModel(args, pb_utils, step, dlpack_inputs=runner.accepts_dlpack)

    def execute(self, requests):
        return self.model.execute(requests)
