"""Static validation of a Triton model repository (source layout or generated).

Every ``config.pbtxt`` is parsed with ``google.protobuf.text_format`` into
``tritonclient.grpc.model_config_pb2.ModelConfig``; then:

- each model folder has a config whose ``name`` matches the folder, ``max_batch_size``
  0 (the project's contract: one request = one patient), and a numeric version folder;
- each version folder has what the backend loads: the files the bundle's Python
  models list in their ``required_files`` parameter (backend ``covidct``, the bundle's
  Python-based backend: no ``model.py`` per model),
  ``model.onnx``/``default_model_filename`` (onnxruntime), ``model.plan`` (tensorrt),
  and every file named in a python model's ``required_files`` parameter
  (comma-separated, set by the exporter: weights, configs);
- ONNX files present name exactly the tensors of the config (read from the graph);
- ensembles: every step's member exists; every ``input_map``/``output_map`` key is a
  tensor of the member; every member input is mapped; every ensemble tensor a step
  consumes is produced exactly once (ensemble input or a step output) with the same
  dtype and a compatible shape (``-1`` matches any size); every ensemble output is
  produced likewise.

:func:`validate_repository` returns the problems (strings naming model and tensor);
:func:`check_repository` raises :class:`ExportError` listing them.
"""

from __future__ import annotations

from pathlib import Path

from covidct.errors import ExportError
from covidct.serving.backend import BACKEND_NAME as BUNDLE_BACKEND
from covidct.export.pbtxt import (
    CONFIG_FILENAME,
    TensorSpec,
    get_parameter,
    input_specs,
    output_specs,
    read_config,
    version_dirs,
)

REQUIRED_FILES_PARAMETER = "required_files"


def _backend(config) -> str:
    """Normalised backend: python, onnxruntime, tensorrt, ensemble, or the raw value."""
    platform = config.platform or config.backend
    return {
        "onnxruntime_onnx": "onnxruntime",
        "tensorrt_plan": "tensorrt",
    }.get(platform, platform)


def _onnx_problems(path: Path, model: str, config) -> list[str]:
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf DecodeError, OSError: any unreadable file is a problem
        return [f"model {model!r}: {path.name} is not a readable ONNX file ({exc})"]
    problems = []
    initializers = {i.name for i in proto.graph.initializer}
    graph = {
        "input": [t.name for t in proto.graph.input if t.name not in initializers],
        "output": [t.name for t in proto.graph.output],
    }
    for kind, specs in (("input", input_specs(config)), ("output", output_specs(config))):
        for name in specs:
            if name not in graph[kind]:
                problems.append(
                    f"model {model!r}: config {kind} tensor {name!r} is not an {kind} of "
                    f"{path.name} (graph {kind}s: {graph[kind]})"
                )
    return problems


def _file_problems(model_dir: Path, config) -> list[str]:
    model = model_dir.name
    versions = version_dirs(model_dir)
    if not versions:
        return [f"model {model!r}: no numeric version folder (e.g. {model}/1/)"]
    problems: list[str] = []
    backend = _backend(config)
    for version in versions:
        where = f"{model}/{version.name}"
        needed: list[str] = []
        if backend in ("python", BUNDLE_BACKEND):
            if backend == "python":
                needed.append("model.py")
            listed = get_parameter(config, REQUIRED_FILES_PARAMETER, "") or ""
            needed += [f.strip() for f in listed.split(",") if f.strip()]
        elif backend == "onnxruntime":
            needed.append(config.default_model_filename or "model.onnx")
        elif backend == "tensorrt":
            needed.append(config.default_model_filename or "model.plan")
        elif backend != "ensemble":
            problems.append(f"model {model!r}: unknown backend/platform {backend!r}")
        for name in needed:
            if not (version / name).is_file():
                problems.append(f"model {model!r}: {where}/{name} is missing (weights or code)")
        if backend == "onnxruntime":
            onnx_name = needed[0]
        elif backend in ("python", BUNDLE_BACKEND):
            onnx_name = get_parameter(config, "onnx_file")
        else:
            onnx_name = None
        if onnx_name and (version / onnx_name).is_file():
            problems += _onnx_problems(version / onnx_name, model, config)
    return problems


def _ensemble_problems(name: str, config, configs: dict) -> list[str]:
    problems: list[str] = []
    produced: dict[str, tuple[TensorSpec, str]] = {
        t: (spec, "ensemble input") for t, spec in input_specs(config).items()
    }
    consumed: list[tuple[str, TensorSpec, str]] = []
    for step in config.ensemble_scheduling.step:
        member = configs.get(step.model_name)
        label = f"ensemble {name!r} step {step.model_name!r}"
        if member is None:
            problems.append(f"{label}: model {step.model_name!r} is not in the repository")
            continue
        inputs, outputs = input_specs(member), output_specs(member)
        for key, tensor in step.input_map.items():
            if key not in inputs:
                problems.append(
                    f"{label}: input_map key {key!r} is not an input of model {step.model_name!r} "
                    f"(inputs: {sorted(inputs)})"
                )
                continue
            consumed.append((tensor, inputs[key], f"{label} input {key!r}"))
        for key in inputs:
            if key not in step.input_map:
                problems.append(f"{label}: input {key!r} of model {step.model_name!r} is not mapped")
        for key, tensor in step.output_map.items():
            if key not in outputs:
                problems.append(
                    f"{label}: output_map key {key!r} is not an output of model {step.model_name!r} "
                    f"(outputs: {sorted(outputs)})"
                )
                continue
            if tensor in produced:
                problems.append(
                    f"{label}: ensemble tensor {tensor!r} is produced twice "
                    f"(also by {produced[tensor][1]})"
                )
                continue
            produced[tensor] = (TensorSpec(tensor, outputs[key].dtype, outputs[key].dims), f"{label} output {key!r}")
    for tensor, spec in output_specs(config).items():
        consumed.append((tensor, spec, f"ensemble {name!r} output"))
    for tensor, wanted, who in consumed:
        if tensor not in produced:
            problems.append(f"{who}: ensemble tensor {tensor!r} is produced by no step or ensemble input")
            continue
        have, source = produced[tensor]
        if not have.compatible_with(TensorSpec(have.name, wanted.dtype, wanted.dims)):
            problems.append(
                f"{who}: ensemble tensor {tensor!r} is {have.dtype} {list(have.dims)} from {source}, "
                f"expected {wanted.dtype} {list(wanted.dims)}"
            )
    return problems


def validate_repository(path: str | Path) -> list[str]:
    """All problems found in the model repository at ``path`` (empty list = valid)."""
    root = Path(path)
    if not root.is_dir():
        return [f"{root}: model repository folder not found"]
    problems: list[str] = []
    configs = {}
    model_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))
    if not model_dirs:
        return [f"{root}: model repository holds no model folder"]
    for model_dir in model_dirs:
        if not (model_dir / CONFIG_FILENAME).is_file():
            problems.append(f"model {model_dir.name!r}: {model_dir.name}/{CONFIG_FILENAME} is missing")
            continue
        try:
            config = read_config(model_dir)
        except ExportError as exc:
            problems.append(f"model {model_dir.name!r}: {exc}")
            continue
        if config.name and config.name != model_dir.name:
            problems.append(f"model {model_dir.name!r}: config name {config.name!r} differs from its folder")
        if config.max_batch_size != 0:
            problems.append(
                f"model {model_dir.name!r}: max_batch_size is {config.max_batch_size}; the ensemble "
                "contract needs 0 (the slice axis is the first dim)"
            )
        configs[model_dir.name] = config
        problems += _file_problems(model_dir, config)
    for name, config in configs.items():
        if _backend(config) == "ensemble":
            problems += _ensemble_problems(name, config, configs)
    return problems


def check_repository(path: str | Path) -> None:
    """Raise :class:`ExportError` listing every problem of the repository at ``path``."""
    problems = validate_repository(path)
    if problems:
        listing = "\n  - ".join(problems)
        raise ExportError(f"{path}: model repository is invalid ({len(problems)} problem(s)):\n  - {listing}")
