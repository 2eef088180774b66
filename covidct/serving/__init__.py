"""Everything Triton's Python-backend stub imports: the ensemble's tensor names
(:mod:`.tensors`), the step functions (:mod:`.steps`), request validation, the network
runners and the one :class:`~covidct.serving.triton_model.TritonPythonModel`.

Nothing here imports the training loop, the data sets or a CLI.
"""

from pathlib import Path


def source_repository() -> Path:
    """The source model repository shipped with the bundle (``config.pbtxt`` per model and
    the ensemble, no weights); ``python -m covidct.export`` fills a copy of it with the networks.

    Installed as the data package ``covidct.model_repository`` (package data of this project), so
    it is found the same way in a checkout and in a ``pip install``.
    """
    from importlib.util import find_spec

    from covidct.errors import ExportError

    spec = find_spec("covidct.model_repository")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ExportError(
            "the source model repository (data package 'covidct.model_repository') is not installed; "
            "reinstall the bundle (pip install .) or pass the source folder explicitly"
        )
    return Path(locations[0])
