"""Network runners behind the portable profile's ``classifier`` and ``segmenter`` models.

A runner maps a float32 batch of slices ``[slices, C, S, S]`` (NCHW; windowed HU in
[0, 1], optional mask channels) to float32 probabilities (``[slices, 1]`` for the
classifier, ``[slices, 1, S, S]`` for the segmenter), splitting the slice axis into
chunks so that a series of thousands of slices never needs thousands of slices of
activations at once.

- :class:`OnnxRuntimeRunner` (``KIND_CPU`` instances): ONNX Runtime CPU session of the
  exported ``model.onnx``; intra-op threads configurable.
- :class:`TorchHalfRunner` (``KIND_GPU`` instances): the checkpoint's network
  (``weights.pt`` + ``model_config.json`` copied beside the ONNX by the exporter) with
  the same probability head, in FP16, ``channels_last``, optionally replayed from CUDA
  graphs captured per chunk-size bucket; inputs may arrive via DLPack.

Tensor names, dims and the knobs (``chunk_slices``, ``intra_op_threads``, ``onnx_file``,
``cuda_graphs``) come from the model's ``config.pbtxt`` (the JSON Triton passes to
``initialize``): :meth:`RunnerSettings.from_model_config`. This module imports neither
torch nor onnxruntime at import time (the Python-backend stub loads it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from covidct.errors import ExportError, TensorInputError

DEFAULT_CHUNK_SLICES = 64


@dataclass(frozen=True)
class RunnerSettings:
    """One runner model's interface and knobs (from its ``config.pbtxt``).

    input_dims / output_dims: Triton dims, ``-1`` = variable (first = slice axis).
    chunk_slices: slices per network run. intra_op_threads: ONNX Runtime threads
    (0 = ONNX Runtime's default, all cores). cuda_graphs: GPU runner only.
    """

    input_name: str
    output_name: str
    input_dims: tuple[int, ...]
    output_dims: tuple[int, ...]
    chunk_slices: int = DEFAULT_CHUNK_SLICES
    intra_op_threads: int = 0
    onnx_file: str = "model.onnx"
    cuda_graphs: bool = True

    def __post_init__(self) -> None:
        if self.chunk_slices < 1:
            raise ExportError(f"chunk_slices must be >= 1; got {self.chunk_slices}")
        if self.intra_op_threads < 0:
            raise ExportError(f"intra_op_threads must be >= 0; got {self.intra_op_threads}")

    @classmethod
    def from_model_config(cls, model_config: dict[str, Any]) -> "RunnerSettings":
        """Build from Triton's JSON model config (``json.loads(args["model_config"])``)."""
        name = model_config.get("name", "?")
        inputs, outputs = model_config.get("input", []), model_config.get("output", [])
        if len(inputs) != 1 or len(outputs) != 1:
            raise ExportError(
                f"model {name!r}: a runner model needs one input and one output; config has "
                f"{len(inputs)} and {len(outputs)}"
            )
        params = {k: v.get("string_value", "") for k, v in model_config.get("parameters", {}).items()}

        def integer(key: str, default: int) -> int:
            text = params.get(key, "").strip()
            try:
                return int(text) if text else default
            except ValueError as exc:
                raise ExportError(f"model {name!r}: parameter {key} must be an integer; got {text!r}") from exc

        return cls(
            input_name=inputs[0]["name"],
            output_name=outputs[0]["name"],
            input_dims=tuple(int(d) for d in inputs[0].get("dims", [])),
            output_dims=tuple(int(d) for d in outputs[0].get("dims", [])),
            chunk_slices=integer("chunk_slices", DEFAULT_CHUNK_SLICES),
            intra_op_threads=integer("intra_op_threads", 0),
            onnx_file=params.get("onnx_file", "") or "model.onnx",
            cuda_graphs=params.get("cuda_graphs", "true").strip().lower() in ("1", "true", "yes"),
        )


def chunk_slices(num_slices: int, chunk: int) -> list[slice]:
    """Consecutive ``slice`` objects covering ``range(num_slices)``, each <= ``chunk``."""
    if chunk < 1:
        raise ExportError(f"chunk must be >= 1; got {chunk}")
    return [slice(start, min(start + chunk, num_slices)) for start in range(0, num_slices, chunk)]


def graph_buckets(chunk: int) -> tuple[int, ...]:
    """Batch sizes CUDA graphs are captured for: powers of two below ``chunk``, and
    ``chunk`` itself (a chunk of n slices is padded up to the next bucket)."""
    if chunk < 1:
        raise ExportError(f"chunk must be >= 1; got {chunk}")
    sizes, b = [], 1
    while b < chunk:
        sizes.append(b)
        b *= 2
    return tuple(sizes + [chunk])


def bucket_for(n: int, buckets: tuple[int, ...]) -> int:
    """Smallest bucket >= ``n`` (``n`` <= the largest bucket)."""
    for b in buckets:
        if b >= n:
            return b
    raise ExportError(f"{n} slices exceed the largest CUDA-graph bucket {buckets[-1]}")


def check_input_shape(shape: tuple[int, ...], dtype: Any, name: str, dims: tuple[int, ...]) -> None:
    """Raise :class:`TensorInputError` naming ``name`` unless ``shape``/``dtype`` fit
    float32 ``dims`` (``-1`` = any)."""
    try:
        dtype_text = np.dtype(dtype).name
    except TypeError:  # a torch dtype
        dtype_text = str(dtype).removeprefix("torch.")
    if dtype_text != "float32":
        raise TensorInputError(f"tensor {name}: dtype {dtype_text} is not float32")
    if len(shape) != len(dims):
        raise TensorInputError(
            f"tensor {name}: shape {list(shape)} has rank {len(shape)}; expected dims {list(dims)}"
        )
    for axis, (have, want) in enumerate(zip(shape, dims)):
        if want != -1 and have != want:
            raise TensorInputError(
                f"tensor {name}: shape {list(shape)} has {have} at axis {axis}; expected dims {list(dims)}"
            )


def empty_output_shape(input_shape: tuple[int, ...], output_dims: tuple[int, ...]) -> tuple[int, ...]:
    """Output shape for zero slices: fixed dims as configured, variable ones taken from
    the input's axis of the same index (``[0, 1, S, S]`` for the segmenter)."""
    return (0,) + tuple(
        d if d >= 0 else (input_shape[i] if i < len(input_shape) else 0)
        for i, d in enumerate(output_dims[1:], start=1)
    )


class OnnxRuntimeRunner:
    """ONNX Runtime CPU session; ``runner(x)`` with x float32 numpy ``[slices, C, S, S]``."""

    accepts_dlpack = False

    def __init__(self, onnx_path: str | Path, settings: RunnerSettings) -> None:
        import onnxruntime as ort

        onnx_path = Path(onnx_path)
        if not onnx_path.is_file():
            raise ExportError(f"{onnx_path}: ONNX file not found")
        options = ort.SessionOptions()
        options.intra_op_num_threads = settings.intra_op_threads
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ExportError(f"{onnx_path}: ONNX Runtime cannot load the model: {exc}") from exc
        names_in = [i.name for i in self.session.get_inputs()]
        names_out = [o.name for o in self.session.get_outputs()]
        if names_in != [settings.input_name] or names_out != [settings.output_name]:
            raise ExportError(
                f"{onnx_path}: tensors {names_in} -> {names_out} do not match the model "
                f"configuration {settings.input_name} -> {settings.output_name}"
            )
        self.settings = settings
        self.path = onnx_path

    def __call__(self, x: np.ndarray) -> np.ndarray:
        s = self.settings
        x = np.asarray(x)
        check_input_shape(x.shape, x.dtype, s.input_name, s.input_dims)
        if x.shape[0] == 0:
            return np.zeros(empty_output_shape(x.shape, s.output_dims), np.float32)
        x = np.ascontiguousarray(x)
        parts = [
            self.session.run([s.output_name], {s.input_name: x[part]})[0]
            for part in chunk_slices(x.shape[0], s.chunk_slices)
        ]
        return np.ascontiguousarray(np.concatenate(parts, axis=0), dtype=np.float32)


class TorchHalfRunner:
    """The checkpoint's network + probability head in torch, reduced precision.

    ``device`` ``"cuda:N"`` in serving; ``"cpu"`` (with ``dtype="float32"`` or
    ``"bfloat16"``) for tests. ``runner(x)`` accepts a numpy array, a torch tensor or a
    DLPack capsule/object (e.g. ``pb_utils.Tensor.to_dlpack()``) float32
    ``[slices, C, S, S]`` and returns float32 probabilities: numpy for numpy input, else a
    tensor on the runner's device (GPU instances hand it on without a host copy).
    """

    accepts_dlpack = True

    def __init__(self, model, settings: RunnerSettings, device: str = "cuda:0", dtype: str = "float16") -> None:
        import torch

        self.torch = torch
        self.settings = settings
        self.device = torch.device(device)
        try:
            self.dtype = getattr(torch, dtype)
        except AttributeError as exc:
            raise ExportError(f"unknown torch dtype {dtype!r}") from exc
        self.model = model.eval().to(self.device, self.dtype).to(memory_format=torch.channels_last)
        self.use_graphs = settings.cuda_graphs and self.device.type == "cuda"
        self.buckets = graph_buckets(settings.chunk_slices)
        self._graphs: dict[int, tuple[Any, Any, Any]] = {}

    @classmethod
    def from_version_dir(
        cls, version_dir: str | Path, settings: RunnerSettings, device: str = "cuda:0", dtype: str = "float16"
    ) -> "TorchHalfRunner":
        """Load ``weights.pt`` + ``model_config.json`` + ``pipeline_config.json`` of a
        version folder (a checkpoint layout) and wrap the network in its probability head."""
        from covidct.training.heads import probability_model
        from covidct.training.checkpoint import load_checkpoint

        network, model_config, _ = load_checkpoint(version_dir)
        return cls(probability_model(network, model_config), settings, device, dtype)

    def _as_tensor(self, x: Any):
        torch = self.torch
        if isinstance(x, np.ndarray):
            return torch.from_numpy(np.ascontiguousarray(x))
        if isinstance(x, torch.Tensor):
            return x
        return torch.from_dlpack(x)

    def _graph(self, bucket: int, like):
        """(graph, static input, static output) for ``bucket`` slices, captured once."""
        torch = self.torch
        if bucket not in self._graphs:
            static_in = torch.zeros((bucket, *like.shape[1:]), device=self.device, dtype=self.dtype)
            static_in = static_in.contiguous(memory_format=torch.channels_last)
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side), torch.inference_mode():
                for _ in range(2):  # warm-up (cuDNN autotuning) outside the capture
                    self.model(static_in)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph), torch.inference_mode():
                static_out = self.model(static_in)
            self._graphs[bucket] = (graph, static_in, static_out)
        return self._graphs[bucket]

    def _forward(self, chunk):
        """Probabilities of one chunk (already on the device, model dtype, NHWC memory)."""
        if not self.use_graphs:
            return self.model(chunk)
        n = chunk.shape[0]
        graph, static_in, static_out = self._graph(bucket_for(n, self.buckets), chunk)
        static_in[:n].copy_(chunk)
        graph.replay()
        return static_out[:n]

    def __call__(self, x: Any) -> Any:
        torch, s = self.torch, self.settings
        t = self._as_tensor(x)
        check_input_shape(tuple(t.shape), t.dtype, s.input_name, s.input_dims)
        if t.shape[0] == 0:
            return np.zeros(empty_output_shape(tuple(t.shape), s.output_dims), np.float32)
        parts = []
        with torch.inference_mode():
            for part in chunk_slices(t.shape[0], s.chunk_slices):
                chunk = t[part].to(self.device, non_blocking=True).to(self.dtype)
                chunk = chunk.contiguous(memory_format=torch.channels_last)
                # copy: a replayed graph overwrites its static output with the next chunk
                parts.append(self._forward(chunk).to(torch.float32, copy=True))
            out = torch.cat(parts, dim=0)
        if isinstance(x, np.ndarray):
            return np.ascontiguousarray(out.cpu().numpy(), dtype=np.float32)
        return out  # float32 on the runner's device: it leaves by DLPack and stays there


def create_runner(
    instance_kind: str, version_dir: str | Path, settings: RunnerSettings, device_id: int = 0
):
    """Runner for a Triton instance kind: ``CPU`` -> :class:`OnnxRuntimeRunner` of
    ``version_dir / settings.onnx_file``; ``GPU`` -> :class:`TorchHalfRunner` (FP16) of
    the checkpoint files in ``version_dir``. Accepts ``"CPU"``/``"KIND_CPU"`` spellings."""
    kind = instance_kind.upper().removeprefix("KIND_")
    version_dir = Path(version_dir)
    if kind == "CPU":
        return OnnxRuntimeRunner(version_dir / settings.onnx_file, settings)
    if kind == "GPU":
        return TorchHalfRunner.from_version_dir(version_dir, settings, device=f"cuda:{device_id}")
    raise ExportError(f"unsupported instance kind {instance_kind!r}; expected CPU or GPU")
