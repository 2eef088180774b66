"""The bundle's Triton *Python-based backend* ``covidct``.

Every Python step of the ensemble says ``backend: "covidct"`` in its ``config.pbtxt`` and
names its step in a ``step`` parameter; Triton then runs the one ``TritonPythonModel`` in
:file:`model.py` beside this file through the Python backend's ``libtriton_python.so``.
The file must sit at ``<backend-directory>/covidct/model.py``: the launcher
(:func:`covidct.app.triton_install.prepare_backend`) copies it there, the Docker image bakes it into
``/opt/tritonserver/backends/covidct/``. No model folder carries a ``model.py``.

``model.py`` imports ``triton_python_backend_utils``, which exists only inside Triton's
stub: never import it elsewhere.
"""

from __future__ import annotations

from pathlib import Path

BACKEND_NAME = "covidct"
"""The ``backend`` value of the bundle's Python models."""


def backend_model_file() -> Path:
    """The backend's ``model.py`` (installed into ``<backend-directory>/covidct/``)."""
    return Path(__file__).with_name("model.py")
