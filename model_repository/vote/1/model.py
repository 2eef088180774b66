"""Triton Python model ``vote``: network outputs -> patient verdict, lesion burden, lung volume.

Tensors are declared in this model's ``config.pbtxt``; the numerics live in
:func:`covidct.serving.steps.vote_step` (unit-tested without Triton); settings come
from ``pipeline_config.json`` in this version folder. Request handling (unpack, pack,
per-request errors) is :class:`covidct.serving.step_model.StepModel`.
"""

import os
import sys

# The stub's embedded interpreter ignores PYTHONPATH for sys.path; the launcher
# (covidct/triton_server.py) lists numpy 1.26, the venv and the repository there, in order.
# In NVIDIA's container the bundle is pip-installed and this line changes nothing.
sys.path[:0] = [entry for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep) if entry]

import triton_python_backend_utils as pb_utils  # noqa: E402

from covidct.serving.step_model import StepModel, model_config, parse_model_versions, string_parameter, version_dir  # noqa: E402
from preprocessing.config import PipelineConfig  # noqa: E402
from covidct.serving.steps import vote_step  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        config = PipelineConfig.load(version_dir(args))
        versions = parse_model_versions(string_parameter(model_config(args), "model_versions"))
        self.model = StepModel(args, pb_utils, vote_step, config=config, model_versions=versions)

    def execute(self, requests):
        return self.model.execute(requests)
