"""The one ``TritonPythonModel`` of the bundle (Python-based backend ``covidct``).

Triton runs this file for every model whose ``config.pbtxt`` says ``backend: "covidct"``.
The step is chosen by the model's ``step`` parameter
(:func:`covidct.serving.step_model.build_step_model`); everything else lives in plain,
unit-tested modules of :mod:`covidct.serving`.
"""

import os
import sys

# Triton 2.51's Python-backend stub leaves PYTHONPATH off sys.path; the launcher lists the
# stub's numpy 1.26 site, the venv and the bundle there, in order. Where the bundle is
# pip-installed into the server's interpreter (NVIDIA's container) this changes nothing.
sys.path[:0] = [entry for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep) if entry]

import triton_python_backend_utils as pb_utils  # noqa: E402

from covidct.serving.step_model import build_step_model  # noqa: E402


class TritonPythonModel:
    """Triton's entry points, delegated to the step model built from this model's config."""

    def initialize(self, args):
        self.model = build_step_model(args, pb_utils)

    def execute(self, requests):
        return self.model.execute(requests)

    def finalize(self):
        self.model = None
