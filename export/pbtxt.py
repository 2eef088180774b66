"""Read, edit and write Triton ``config.pbtxt`` files through the real protobuf schema.

Files are parsed with ``google.protobuf.text_format`` into
``tritonclient.grpc.model_config_pb2.ModelConfig`` (the schema Triton itself uses), so a
typo in a field name is an error here, not at server start. Tensor names, dtypes and
shapes are defined once in the source repository's ``config.pbtxt``; everything else
(the exporter, the runners, the validator) reads them through this module.

Shapes follow Triton's convention for ``max_batch_size: 0``: the full tensor shape,
``-1`` for a variable dimension (the slice axis is the first one).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from covidct.errors import ExportError

CONFIG_FILENAME = "config.pbtxt"


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a model: name, Triton dtype name (``"TYPE_FP32"``) and
    dims (``-1`` = variable)."""

    name: str
    dtype: str
    dims: tuple[int, ...]

    def compatible_with(self, other: "TensorSpec") -> bool:
        """Same dtype, same rank, and every dim equal or ``-1`` on either side."""
        if self.dtype != other.dtype or len(self.dims) != len(other.dims):
            return False
        return all(a == b or a == -1 or b == -1 for a, b in zip(self.dims, other.dims))

    def describe(self) -> str:
        return f"{self.name} {self.dtype} {list(self.dims)}"


def read_config(path: str | Path) -> mc.ModelConfig:
    """Parse ``config.pbtxt`` (or a model folder holding one) into a ``ModelConfig``."""
    path = Path(path)
    if path.is_dir():
        path = path / CONFIG_FILENAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ExportError(f"{path}: model configuration not found") from exc
    config = mc.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise ExportError(f"{path}: not a valid Triton model configuration: {exc}") from exc
    return config


def format_config(config: mc.ModelConfig, header: str = "") -> str:
    """Text of a ``config.pbtxt``; ``header`` lines are written as ``#`` comments."""
    comment = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines())
    return comment + text_format.MessageToString(config)


def write_config(config: mc.ModelConfig, path: str | Path, header: str = "") -> Path:
    """Write ``config`` as ``config.pbtxt`` (``path`` may be the model folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / CONFIG_FILENAME
    path.write_text(format_config(config, header), encoding="utf-8")
    return path


def leading_comments(path: str | Path) -> str:
    """The comment block at the top of a ``config.pbtxt`` (without ``#``), to carry it
    into a rewritten file."""
    path = Path(path)
    if path.is_dir():
        path = path / CONFIG_FILENAME
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].removeprefix(" "))
    return "\n".join(lines)


def dtype_name(data_type: int) -> str:
    """``mc.TYPE_FP32`` -> ``"TYPE_FP32"``."""
    return mc.DataType.Name(data_type)


def _spec(tensor: mc.ModelInput | mc.ModelOutput) -> TensorSpec:
    return TensorSpec(tensor.name, dtype_name(tensor.data_type), tuple(int(d) for d in tensor.dims))


def input_specs(config: mc.ModelConfig) -> dict[str, TensorSpec]:
    """Inputs by name, in config order."""
    return {t.name: _spec(t) for t in config.input}


def output_specs(config: mc.ModelConfig) -> dict[str, TensorSpec]:
    """Outputs by name, in config order."""
    return {t.name: _spec(t) for t in config.output}


def single_io(config: mc.ModelConfig) -> tuple[TensorSpec, TensorSpec]:
    """The one input and one output of a runner model (classifier, segmenter)."""
    if len(config.input) != 1 or len(config.output) != 1:
        raise ExportError(
            f"model {config.name!r}: a runner model needs exactly one input and one output; "
            f"config has {len(config.input)} input(s) and {len(config.output)} output(s)"
        )
    return _spec(config.input[0]), _spec(config.output[0])


def set_dims(config: mc.ModelConfig, tensor_name: str, dims: tuple[int, ...]) -> None:
    """Replace the dims of input or output ``tensor_name`` (ranks must agree)."""
    for tensor in list(config.input) + list(config.output):
        if tensor.name == tensor_name:
            if len(tensor.dims) != len(dims):
                raise ExportError(
                    f"model {config.name!r}: tensor {tensor_name} has rank {len(tensor.dims)}; "
                    f"cannot set dims {list(dims)}"
                )
            del tensor.dims[:]
            tensor.dims.extend(int(d) for d in dims)
            return
    raise ExportError(f"model {config.name!r} has no tensor {tensor_name!r}")


def get_parameter(config: mc.ModelConfig, key: str, default: str | None = None) -> str | None:
    """String value of ``parameters { key: ... }`` or ``default``."""
    if key in config.parameters:
        return config.parameters[key].string_value
    return default


def set_parameter(config: mc.ModelConfig, key: str, value: str) -> None:
    """Set ``parameters { key: KEY value { string_value: VALUE } }``."""
    config.parameters[key].string_value = str(value)


def set_instance_kind(config: mc.ModelConfig, kind: str, count: int = 1) -> None:
    """Replace the instance groups by one group of ``count`` instances of ``kind``
    (``"KIND_CPU"`` or ``"KIND_GPU"``)."""
    try:
        kind_value = mc.ModelInstanceGroup.Kind.Value(kind)
    except ValueError as exc:
        raise ExportError(f"unknown instance kind {kind!r}; expected KIND_CPU or KIND_GPU") from exc
    del config.instance_group[:]
    config.instance_group.add(kind=kind_value, count=count)


def version_dirs(model_dir: str | Path) -> list[Path]:
    """The numeric version folders of a Triton model folder, oldest first (``[]`` when none)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    return sorted((p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


def latest_version_dir(model_dir: str | Path) -> Path:
    """The newest numeric version folder (Triton's default policy serves it); ExportError when none."""
    versions = version_dirs(model_dir)
    if not versions:
        raise ExportError(f"{model_dir}: model has no numeric version folder (e.g. {Path(model_dir).name}/1/)")
    return versions[-1]
