"""Request handling of the bundle's Triton Python models.

The one ``TritonPythonModel`` (:mod:`covidct.serving.backend`) calls
:func:`build_step_model`, which reads the model's ``step`` parameter, builds the plain,
unit-tested function it names (a step of :mod:`covidct.serving.steps` or a network runner
of :mod:`covidct.serving.runners`) and wraps it in a :class:`StepModel`, which:

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

from covidct.errors import ConfigError, InputError

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
    """The vote model's ``model_versions`` parameter (written by ``covidct.export.repository``).

    Accepts a JSON list or entries separated by commas, semicolons or whitespace, e.g.
    ``"classifier=cnn6:1:sha256:0123abcd4567,segmenter=unet:1:sha256:89ab..."``.
    """
    text = text.strip()
    if text.startswith("["):
        return tuple(str(entry) for entry in json.loads(text))
    return tuple(entry for entry in text.replace(";", ",").replace(" ", ",").split(",") if entry)


MODEL_CARDS_FILENAME = "model_cards.json"
"""Written by the exporter into the vote model's version folder: ``{"classifier": card, ...}``."""


def read_model_cards(directory: Path) -> str:
    """The ``model_cards.json`` of a version folder as compact JSON text (``"{}"`` when absent)."""
    path = Path(directory) / MODEL_CARDS_FILENAME
    if not path.is_file():
        return "{}"
    try:
        cards = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(cards, dict):
        raise ConfigError(f"{path}: expected a JSON object of model cards, got {type(cards).__name__}")
    return json.dumps(cards, sort_keys=True)


def runner_step(runner: Callable[[Any], Any], input_name: str, output_name: str) -> Step:
    """A network runner (one input array -> one output array) as a :class:`StepModel` step.

    A request with no slices (``[0, C, S, S]``: no lung found) gets an empty output of the
    network's output shape (the network runs once on a zero slice to learn it).
    """
    key = input_name.lower()

    def step(**inputs: Any) -> dict[str, Any]:
        array = inputs[key]
        if isinstance(array, np.ndarray) and array.ndim >= 1 and array.shape[0] == 0:
            probe = np.asarray(runner(np.zeros((1, *array.shape[1:]), dtype=array.dtype)))
            return {output_name: probe[:0]}
        return {output_name: runner(array)}

    return step


class StepModel:
    """Unpack -> ``step(**inputs, **step_kwargs)`` -> pack, for every request of a batch.

    Args:
        args: the ``initialize`` arguments Triton passes to the model.
        pb_utils: the ``triton_python_backend_utils`` module of the running stub.
        step: the function computing the outputs; returns ``{output_name: array}``.
        dlpack_inputs: hand inputs over as torch tensors made from DLPack, where Triton
            put them (GPU instances: no host copy), instead of numpy arrays.
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
        self.string_inputs = {tensor["name"] for tensor in config["input"] if tensor["data_type"] == "TYPE_STRING"}
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
        except Exception as exc:  # noqa: BLE001 - a bug must fail this request only, never the server
            message = f"{self.model_name}: internal error: {type(exc).__name__}: {exc}"
            pb_utils.Logger.log_error(message)
            error = pb_utils.TritonError(message, pb_utils.TritonError.INTERNAL)
            return pb_utils.InferenceResponse(error=error)
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def _unpack(self, request: Any, name: str) -> Any:
        """One input: a torch tensor where it lies (DLPack, no copy) on GPU instances, else numpy.

        Text tensors are always numpy; a tensor in GPU memory reaching a CPU instance is
        copied to the host.
        """
        tensor = self.pb_utils.get_input_tensor_by_name(request, name)
        if name in self.string_inputs:
            return tensor.as_numpy()
        if self.dlpack_inputs or not tensor.is_cpu():
            import torch

            value = torch.from_dlpack(tensor.to_dlpack())
            return value if self.dlpack_inputs else value.cpu().numpy()
        return tensor.as_numpy()

    def _pack(self, name: str, value: Any) -> Any:
        """One output as its configured dtype (and fixed shape, where config.pbtxt fixes it).

        A CUDA tensor leaves by DLPack and stays on the GPU; CPU tensors and arrays as numpy.
        """
        dtype, dims = self.outputs[name]
        fixed = all(d >= 0 for d in dims)
        if dtype != np.object_ and type(value).__module__.startswith("torch"):
            import torch

            from covidct.preprocessing.devices import torch_dtype

            tensor = value.to(torch_dtype(dtype)).contiguous()
            if fixed:
                tensor = tensor.reshape(dims)
            if tensor.device.type == "cuda":
                return self.pb_utils.Tensor.from_dlpack(name, torch.utils.dlpack.to_dlpack(tensor))
            value = tensor.numpy()
        if dtype == np.object_:
            array = np.array(
                [v.encode("utf-8") if isinstance(v, str) else v for v in value], dtype=np.object_
            )
        else:
            array = np.ascontiguousarray(value, dtype=dtype)
        if fixed:
            array = array.reshape(dims)
        return self.pb_utils.Tensor(name, array)


STEP_PARAMETER = "step"
"""``config.pbtxt`` parameter naming the step a Python model runs (default: the model name)."""


def step_name(config: Mapping[str, Any]) -> str:
    """The step a model config asks for: its ``step`` parameter, else its name."""
    return string_parameter(config, STEP_PARAMETER) or str(config.get("name", ""))


def build_step(args: Mapping[str, str]) -> tuple[Step, dict[str, Any], bool]:
    """``(function, fixed keyword arguments, dlpack_inputs)`` for the model being loaded.

    Steps: ``preprocess`` and ``vote`` (:mod:`covidct.serving.steps`, with the
    ``pipeline_config.json`` of the version folder and the instance's torch device: CPU
    with ``intra_op_threads`` torch threads from the model config (0: all cores), or
    ``cuda:<device id>`` with DLPack inputs; the vote also returns the version
    folder's ``model_cards.json`` when the exporter wrote one) and ``network`` (a
    classifier or segmenter runner, :mod:`covidct.serving.runners`). Unknown names raise
    ``ConfigError``.
    """
    from covidct.serving import steps
    from covidct.preprocessing.config import PipelineConfig
    from covidct.preprocessing.devices import instance_device, set_intra_op_threads

    config = model_config(args)
    name = step_name(config)
    if name == "network":
        from covidct.serving.runners import RunnerSettings, create_runner

        settings = RunnerSettings.from_model_config(config)
        runner = create_runner(
            args["model_instance_kind"],
            version_dir(args),
            settings,
            device_id=int(args.get("model_instance_device_id", 0) or 0),
        )
        return runner_step(runner, settings.input_name, settings.output_name), {}, runner.accepts_dlpack
    functions: dict[str, Step] = {
        "preprocess": steps.preprocess_step,
        "vote": steps.vote_step,
    }
    if name not in functions:
        raise ConfigError(
            f"model {config.get('name')!r}: parameter {STEP_PARAMETER!r} is {name!r}; "
            f"expected one of {sorted([*functions, 'network'])}"
        )
    kind = str(args.get("model_instance_kind", "CPU"))
    device = instance_device(kind, int(args.get("model_instance_device_id", 0) or 0))
    if device.type == "cpu":
        set_intra_op_threads(int(string_parameter(config, "intra_op_threads", "0") or 0))
    kwargs: dict[str, Any] = {"config": PipelineConfig.load(version_dir(args)), "device": device}
    if name == "vote":
        kwargs["model_versions"] = parse_model_versions(string_parameter(config, "model_versions"))
        kwargs["model_card"] = read_model_cards(version_dir(args))
    return functions[name], kwargs, device.type == "cuda"


def build_step_model(args: Mapping[str, str], pb_utils: ModuleType) -> StepModel:
    """The :class:`StepModel` of the model being loaded (called by ``TritonPythonModel``)."""
    step, kwargs, dlpack = build_step(args)
    return StepModel(args, pb_utils, step, dlpack_inputs=dlpack, **kwargs)
