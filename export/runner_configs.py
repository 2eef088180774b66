"""Container-profile configs of the runner models (``classifier``, ``segmenter``).

NVIDIA's Triton container serves the exported networks natively:

- ``onnxruntime_onnx`` with the TensorRT execution accelerator in FP16: ONNX Runtime
  hands the graph to TensorRT, which builds an FP16 engine on first load (cached in
  ``trt_engine_cache_path``) for the optimisation profile min/opt/max slices of
  :class:`covidct.export.config.SliceProfile`;
- ``tensorrt_plan`` when a plan built by :mod:`covidct.export.tensorrt_build` is given.

Both keep the source config's tensor names, dtypes and (concrete) dims; instance groups
are ``KIND_GPU``; ``model_warmup`` sends one request of ``warmup_slices`` random slices
so that engine building/loading and cuDNN/TensorRT tactic selection happen before the
first patient. Dims are ``[slices, C, S, S]`` (NCHW) in and the model's output out.
"""

from __future__ import annotations

from tritonclient.grpc import model_config_pb2 as mc

from covidct.export.config import ONNX_FILENAME, PLAN_FILENAME, RepositoryOptions
from covidct.export.pbtxt import single_io

TRT_CACHE_ROOT = "/tmp/covidct_trt_cache"
"""Where ONNX Runtime's TensorRT accelerator caches engines inside the container; mount
a volume there to keep engines across container restarts."""


def container_note(plan: bool) -> str:
    """Comment written at the top of a container-profile runner config."""
    what = "a TensorRT FP16 plan" if plan else "ONNX Runtime with the TensorRT accelerator (FP16)"
    return (
        f"Container profile: {what} on KIND_GPU. No dynamic_batching: with max_batch_size 0\n"
        "Triton cannot batch requests (one request = one patient series, already a batch of\n"
        "slices); throughput comes from the slice batch and from more instances."
    )


def _shape_list(name: str, dims: tuple[int, ...]) -> str:
    return f"{name}:" + "x".join(str(d) for d in dims)


def container_runner_config(source: mc.ModelConfig, plan: bool, options: RepositoryOptions) -> mc.ModelConfig:
    """New config for the container profile from the (dims-concrete) portable ``source``."""
    inp, out = single_io(source)
    config = mc.ModelConfig(name=source.name, max_batch_size=0)
    config.input.extend(source.input)
    config.output.extend(source.output)
    config.platform = "tensorrt_plan" if plan else "onnxruntime_onnx"
    config.default_model_filename = PLAN_FILENAME if plan else ONNX_FILENAME
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_GPU, count=1)
    rest = tuple(inp.dims[1:])
    if not plan:
        trt = options.tensorrt
        profile = trt.profile
        accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
        params = {
            "precision_mode": "FP16" if trt.fp16 else "FP32",
            "max_workspace_size_bytes": str(trt.workspace_mib << 20),
            "trt_engine_cache_enable": "1",
            "trt_engine_cache_path": f"{TRT_CACHE_ROOT}/{source.name}",
            "trt_timing_cache_enable": "1",
            "trt_timing_cache_path": f"{TRT_CACHE_ROOT}/{source.name}",
            "trt_builder_optimization_level": str(trt.optimization_level),
            "trt_profile_min_shapes": _shape_list(inp.name, (profile.min_slices, *rest)),
            "trt_profile_opt_shapes": _shape_list(inp.name, (profile.opt_slices, *rest)),
            "trt_profile_max_shapes": _shape_list(inp.name, (profile.max_slices, *rest)),
        }
        for key, value in params.items():
            accelerator.parameters[key] = value
    warmup = config.model_warmup.add(name=f"{options.warmup_slices}_random_slices", batch_size=1)
    warm_input = warmup.inputs[inp.name]
    warm_input.data_type = mc.TYPE_FP32
    warm_input.dims.extend([options.warmup_slices, *rest])
    warm_input.random_data = True
    return config
