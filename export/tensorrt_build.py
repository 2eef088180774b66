"""TensorRT FP16 engine (``model.plan``) from an exported ONNX file.

Two equivalent ways, both against NVIDIA's real tools:

- :func:`build_engine`: the TensorRT Python API (``trt.Builder`` -> network from
  ``trt.OnnxParser`` -> ``IBuilderConfig`` with ``BuilderFlag.FP16``, a workspace
  memory-pool limit, one optimisation profile over the slice axis, a timing cache file
  -> ``build_serialized_network``);
- :func:`trtexec_argv`: the same build as a ``trtexec`` command line.

TensorRT's PyPI packages are source stubs that download from NVIDIA's own index at
install time, so TensorRT is often absent outside NVIDIA's containers. :func:`require_tensorrt` raises
:class:`TensorRTUnavailableError` then; everything up to the build (profile shapes,
argv, configuration) is plain Python and tested here.

Run the build on the hospital's GPU box, inside NVIDIA's TensorRT or Triton container
whose TensorRT matches the Triton that will serve the plan (an engine only runs on the
TensorRT version and GPU model that built it)::

    docker run --gpus all --rm -v $PWD:/work -w /work nvcr.io/nvidia/tritonserver:<yy.mm>-py3 \\
        /usr/src/tensorrt/bin/trtexec --onnx=classifier.onnx --saveEngine=classifier.plan \\
        --fp16 --minShapes=CLASSIFIER_INPUT:1x1x224x224 --optShapes=CLASSIFIER_INPUT:128x1x224x224 \\
        --maxShapes=CLASSIFIER_INPUT:1024x1x224x224 --memPoolSize=workspace:4096M \\
        --timingCacheFile=trt_timing.cache --builderOptimizationLevel=3 --skipInference

or ``python -m covidct.export.tensorrt_build ONNX PLAN`` there (prints the argv with
``--print-trtexec``). Then ``python -m covidct.export ... --profile container --plan
classifier=classifier.plan`` puts the plan into the repository. Shapes: ``[slices, C,
S, S]`` NCHW float32 in, the ONNX file's output out; only the slice axis is dynamic.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from covidct.errors import ExportError, TensorRTUnavailableError
from covidct.export.config import FP16_TOLERANCE, ParityTolerance, SliceProfile, TensorRTBuildConfig
from covidct.export.pbtxt import TensorSpec

TRTEXEC = "trtexec"


@dataclass(frozen=True)
class ProfileShapes:
    """Optimisation profile of one input: full NCHW shapes ``[slices, C, S, S]``."""

    name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    @staticmethod
    def _fmt(shape: tuple[int, ...]) -> str:
        return "x".join(str(d) for d in shape)

    def trtexec_flags(self) -> list[str]:
        return [
            f"--minShapes={self.name}:{self._fmt(self.min)}",
            f"--optShapes={self.name}:{self._fmt(self.opt)}",
            f"--maxShapes={self.name}:{self._fmt(self.max)}",
        ]


def require_tensorrt():
    """Import and return the ``tensorrt`` module, or raise TensorRTUnavailableError."""
    try:
        import tensorrt  # type: ignore[import-not-found]
    except ImportError as exc:
        raise TensorRTUnavailableError(
            f"TensorRT is not importable here ({exc}); build engines inside NVIDIA's TensorRT "
            "or Triton container on the GPU machine (see export/README.md, 'TensorRT engines'), "
            "or use the trtexec command line from covidct.export.tensorrt_build.trtexec_argv"
        ) from exc
    return tensorrt


def onnx_input_spec(onnx_path: str | Path) -> TensorSpec:
    """Name and dims (``-1`` = dynamic) of the single input of an ONNX file."""
    import onnx

    try:
        proto = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:  # OSError, protobuf DecodeError for a corrupt file
        raise ExportError(f"{onnx_path}: cannot read ONNX file: {exc}") from exc
    initializers = {i.name for i in proto.graph.initializer}
    inputs = [t for t in proto.graph.input if t.name not in initializers]
    if len(inputs) != 1:
        raise ExportError(f"{onnx_path}: expected one graph input; found {[t.name for t in inputs]}")
    dims = inputs[0].type.tensor_type.shape.dim
    return TensorSpec(
        inputs[0].name,
        "TYPE_FP32",
        tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims),
    )


def profile_shapes(spec: TensorSpec, profile: SliceProfile) -> ProfileShapes:
    """Profile of ``spec`` ``[slices, C, S, S]``: the slice axis from ``profile``, the
    other dims fixed (they must be known: a -1 there is an error)."""
    if len(spec.dims) < 2 or any(d < 1 for d in spec.dims[1:]):
        raise ExportError(
            f"input {spec.describe()}: only the slice axis may be dynamic for a TensorRT "
            "profile; export the ONNX with fixed C and S"
        )
    rest = tuple(spec.dims[1:])
    return ProfileShapes(
        spec.name,
        (profile.min_slices, *rest),
        (profile.opt_slices, *rest),
        (profile.max_slices, *rest),
    )


def trtexec_argv(
    onnx_path: str | Path,
    plan_path: str | Path,
    shapes: ProfileShapes,
    config: TensorRTBuildConfig = TensorRTBuildConfig(),
    trtexec: str = TRTEXEC,
) -> list[str]:
    """``trtexec`` command line equivalent to :func:`build_engine` (TensorRT >= 8.6)."""
    argv = [trtexec, f"--onnx={onnx_path}", f"--saveEngine={plan_path}"]
    if config.fp16:
        argv.append("--fp16")
    argv += shapes.trtexec_flags()
    argv.append(f"--memPoolSize=workspace:{config.workspace_mib}M")
    if config.timing_cache:
        argv.append(f"--timingCacheFile={config.timing_cache}")
    argv.append(f"--builderOptimizationLevel={config.optimization_level}")
    argv.append("--skipInference")
    return argv


def _network_flags(trt) -> int:
    # TensorRT 10 networks are always explicit-batch (the flag is deprecated there).
    if int(trt.__version__.split(".")[0]) >= 10:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)


def build_engine(
    onnx_path: str | Path,
    plan_path: str | Path,
    config: TensorRTBuildConfig = TensorRTBuildConfig(),
) -> Path:
    """Build an FP16 engine from ``onnx_path`` into ``plan_path`` (atomic write).

    The timing cache file (``config.timing_cache``, relative to the plan's folder unless
    absolute) is read when present and written back after the build. Raises
    :class:`TensorRTUnavailableError` without TensorRT, :class:`ExportError` when the
    parser or the builder fails (with the parser's messages).
    """
    trt = require_tensorrt()
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    shapes = profile_shapes(onnx_input_spec(onnx_path), config.profile)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"{onnx_path}: TensorRT's ONNX parser failed: {errors}")
    builder_config = builder.create_builder_config()
    builder_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, config.workspace_mib << 20)
    if config.fp16:
        builder_config.set_flag(trt.BuilderFlag.FP16)
    builder_config.builder_optimization_level = config.optimization_level
    profile = builder.create_optimization_profile()
    profile.set_shape(shapes.name, shapes.min, shapes.opt, shapes.max)
    builder_config.add_optimization_profile(profile)
    cache_path = None
    if config.timing_cache:
        cache_path = Path(config.timing_cache)
        if not cache_path.is_absolute():
            cache_path = plan_path.parent / cache_path
        data = cache_path.read_bytes() if cache_path.is_file() else b""
        builder_config.set_timing_cache(builder_config.create_timing_cache(data), ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, builder_config)
    if serialized is None:
        raise ExportError(f"{onnx_path}: TensorRT could not build an engine (see the log above)")
    tmp = plan_path.with_name(plan_path.name + ".tmp")
    tmp.write_bytes(memoryview(serialized))
    tmp.replace(plan_path)
    if cache_path is not None:
        cache_path.write_bytes(memoryview(builder_config.get_timing_cache().serialize()))
    return plan_path


class TensorRTEngineRunner:
    """Run a plan on the GPU: numpy float32 ``[slices, C, S, S]`` -> numpy float32 output
    (torch CUDA tensors as device buffers). Needs TensorRT and a CUDA GPU."""

    def __init__(self, plan_path: str | Path) -> None:
        import torch

        trt = require_tensorrt()
        self._torch = torch
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._engine = trt.Runtime(self._logger).deserialize_cuda_engine(Path(plan_path).read_bytes())
        if self._engine is None:
            raise ExportError(f"{plan_path}: TensorRT cannot deserialize this plan (other TensorRT version or GPU?)")
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.input_name = next(n for n in names if self._engine.get_tensor_mode(n) == mode)
        self.output_name = next(n for n in names if self._engine.get_tensor_mode(n) != mode)

    def __call__(self, x):
        torch = self._torch
        inp = torch.from_numpy(x).cuda().contiguous()
        self._context.set_input_shape(self.input_name, tuple(inp.shape))
        out = torch.empty(tuple(self._context.get_tensor_shape(self.output_name)), device="cuda")
        self._context.set_tensor_address(self.input_name, inp.data_ptr())
        self._context.set_tensor_address(self.output_name, out.data_ptr())
        stream = torch.cuda.current_stream()
        if not self._context.execute_async_v3(stream.cuda_stream):
            raise ExportError("TensorRT execute_async_v3 failed")
        stream.synchronize()
        return out.float().cpu().numpy()


def check_engine_parity(
    plan_path: str | Path,
    onnx_path: str | Path,
    output_name: str,
    *,
    batch_sizes: Sequence[int] = (1, 3),
    tolerance: ParityTolerance = FP16_TOLERANCE,
    seed: int = 1234,
):
    """FP16 engine vs FP32 ONNX Runtime on fresh random inputs (ParityError beyond
    ``tolerance``, default 0.02 in probability). Returns a ParityReport."""
    from covidct.export.parity import check_parity, onnxruntime_function

    spec = onnx_input_spec(onnx_path)
    engine = TensorRTEngineRunner(plan_path)
    return check_parity(
        onnxruntime_function(onnx_path, spec.name, output_name),
        engine,
        tuple(spec.dims[1:]),
        batch_sizes=batch_sizes,
        tolerance=tolerance,
        seed=seed,
        reference=f"onnxruntime {Path(onnx_path).name}",
        candidate=f"tensorrt {Path(plan_path).name}",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m covidct.export.tensorrt_build ONNX PLAN [--min/--opt/--max N] [--print-trtexec]``."""
    parser = argparse.ArgumentParser(prog="python -m covidct.export.tensorrt_build", description=__doc__.split("\n")[0])
    parser.add_argument("onnx", type=Path)
    parser.add_argument("plan", type=Path)
    parser.add_argument("--min", type=int, default=SliceProfile.min_slices, help="min slices")
    parser.add_argument("--opt", type=int, default=SliceProfile.opt_slices, help="opt slices")
    parser.add_argument("--max", type=int, default=SliceProfile.max_slices, help="max slices")
    parser.add_argument("--workspace-mib", type=int, default=TensorRTBuildConfig.workspace_mib)
    parser.add_argument("--timing-cache", default=TensorRTBuildConfig.timing_cache)
    parser.add_argument("--print-trtexec", action="store_true", help="print the trtexec command and exit")
    args = parser.parse_args(argv)
    config = TensorRTBuildConfig(
        profile=SliceProfile(args.min, args.opt, args.max),
        workspace_mib=args.workspace_mib,
        timing_cache=args.timing_cache or None,
    )
    if args.print_trtexec:
        shapes = profile_shapes(onnx_input_spec(args.onnx), config.profile)
        print(" ".join(trtexec_argv(args.onnx, args.plan, shapes, config)))
        return 0
    try:
        build_engine(args.onnx, args.plan, config)
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.plan}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
