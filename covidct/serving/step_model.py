"""Request handling shared by the bundle's Triton Python-backend models.

Every ``model_repository/*/1/model.py`` is a thin shell around :class:`StepModel`: it
names one plain, unit-tested function (``covidct.serving.steps.*`` or a network
runner from ``covidct.serving.runners``) and this class does the rest:

* reads the tensor names, dtypes and dims from the model's own ``config.pbtxt``
  (Triton hands it over as JSON in ``args["model_config"]``); nothing is repeated in code;
* unpacks each request's inputs and calls the function with them as keyword arguments
  (tensor names in lower case, e.g. ``SELECTED_HU`` -> ``selected_hu``);
* packs the function's outputs (a dict keyed by tensor name) as the configured dtypes,
  reshaped to the configured dims where those are fixed;
* answers a bad request with its own error response (``INVALID_ARG`` for
  :class:`covidct.errors.InputError`, ``INTERNAL`` for anything else, logged), so one
  bad request never fails the batch or the server.

``triton_python_backend_utils`` exists only inside Triton's stub, so the model passes
that module in; this file imports nothing from Triton and loads anywhere.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from covidct.errors import InputError

Step = Callable[..., Mapping[str, Any]]


def version_dir(args: Mapping[str, str]) -> Path:
    """The folder of the model version being loaded (holds weights and pipeline_config.json)."""
    return Path(args["model_repository"]) / str(args["model_version"])


def model_config(args: Mapping[str, str]) -> dict[str, Any]:
    """The model's ``config.pbtxt`` as the JSON object Triton passes to ``initialize``."""
    return json.loads(args["model_config"])


def string_parameter(config: Mapping[str, Any], key: str, default: str = "") -> str:
    """A ``parameters { key: ... value { string_value: ... } }`` entry of a model config."""
    return str(config.get("parameters", {}).get(key, {}).get("string_value", default)).strip()


def parse_model_versions(text: str) -> tuple[str, ...]:
    """The vote model's ``model_versions`` parameter (written by ``export.repository``).

    Accepts a JSON list or entries separated by commas, semicolons or whitespace, e.g.
    ``"classifier=cnn6:1:sha256:0123abcd4567,segmenter=unet:1:sha256:89ab..."``.
    """
    text = text.strip()
    if text.startswith("["):
        return tuple(str(entry) for entry in json.loads(text))
    return tuple(entry for entry in text.replace(";", ",").replace(" ", ",").split(",") if entry)


def runner_step(runner: Callable[[Any], Any], input_name: str, output_name: str) -> Step:
    """A network runner (one input array -> one output array) as a :class:`StepModel` step."""
    key = input_name.lower()

    def step(**inputs: Any) -> dict[str, Any]:
        return {output_name: runner(inputs[key])}

    return step


class StepModel:
    """Unpack -> ``step(**inputs, **step_kwargs)`` -> pack, for every request of a batch.

    Args:
        args: the ``initialize`` arguments Triton passes to the model.
        pb_utils: the ``triton_python_backend_utils`` module of the running stub.
        step: the function computing the outputs; returns ``{output_name: array}``.
        dlpack_inputs: hand inputs over as DLPack capsules instead of numpy arrays
            (GPU runners consume them without a host copy).
        step_kwargs: fixed keyword arguments of ``step`` (e.g. ``config=PipelineConfig``).
    """

    def __init__(
        self,
        args: Mapping[str, str],
        pb_utils: ModuleType,
        step: Step,
        *,
        dlpack_inputs: bool = False,
        **step_kwargs: Any,
    ) -> None:
        config = model_config(args)
        self.pb_utils = pb_utils
        self.model_name = str(args["model_name"])
        self.step = step
        self.step_kwargs = step_kwargs
        self.dlpack_inputs = dlpack_inputs
        self.input_names = [tensor["name"] for tensor in config["input"]]
        self.outputs = {
            tensor["name"]: (
                pb_utils.triton_string_to_numpy(tensor["data_type"]),
                [int(d) for d in tensor["dims"]],
            )
            for tensor in config["output"]
        }

    def execute(self, requests: list[Any]) -> list[Any]:
        """One response per request, in order; errors stay with their request."""
        return [self._respond(request) for request in requests]

    def _respond(self, request: Any) -> Any:
        pb_utils = self.pb_utils
        try:
            inputs = {name.lower(): self._unpack(request, name) for name in self.input_names}
            result = self.step(**inputs, **self.step_kwargs)
            tensors = [self._pack(name, result[name]) for name in self.outputs]
        except InputError as exc:
            error = pb_utils.TritonError(f"{self.model_name}: {exc}", pb_utils.TritonError.INVALID_ARG)
            return pb_utils.InferenceResponse(error=error)
        except Exception as exc:  # a bug must fail this request only, never the server
            message = f"{self.model_name}: internal error: {type(exc).__name__}: {exc}"
            pb_utils.Logger.log_error(message)
            error = pb_utils.TritonError(message, pb_utils.TritonError.INTERNAL)
            return pb_utils.InferenceResponse(error=error)
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def _unpack(self, request: Any, name: str) -> Any:
        tensor = self.pb_utils.get_input_tensor_by_name(request, name)
        return tensor.to_dlpack() if self.dlpack_inputs else tensor.as_numpy()

    def _pack(self, name: str, value: Any) -> Any:
        """One output as its configured dtype (and fixed shape, where config.pbtxt fixes it)."""
        dtype, dims = self.outputs[name]
        if dtype == np.object_:
            array = np.array(
                [v.encode("utf-8") if isinstance(v, str) else v for v in value], dtype=np.object_
            )
        else:
            array = np.ascontiguousarray(value, dtype=dtype)
        if all(d >= 0 for d in dims):
            array = array.reshape(dims)
        return self.pb_utils.Tensor(name, array)
