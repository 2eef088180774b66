"""Frozen settings of the export stage (ONNX, parity, TensorRT, repository).

Nothing here describes tensors: tensor names, dtypes and shapes are defined once, in the
``config.pbtxt`` files of the source ``model_repository/``, and read from there
(:mod:`covidct.export.pbtxt`). Units: slices for the slice (first) axis, MiB for memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from covidct.errors import ExportError
from covidct.serving import source_repository

DEFAULT_SOURCE_REPOSITORY = source_repository()
"""The source layout of the Triton models (a ``config.pbtxt`` per model, no weights)."""

PROFILES = ("portable", "container")
"""``portable``: pip-installed Triton (Python backend only; ONNX Runtime on CPU or torch
FP16 on a GPU inside Python models). ``container``: NVIDIA's Triton container
(``onnxruntime_onnx`` with the TensorRT accelerator in FP16, or ``tensorrt_plan``)."""

EXPORTERS = ("dynamo", "torchscript")

RUNNER_MODELS = {"classifier": "classification", "segmenter": "segmentation"}
"""Triton model name -> the :class:`covidct.training.registry.ModelConfig` task it serves."""

PIPELINE_CONFIG_MODELS = ("preprocess", "vote", "classifier", "segmenter")
"""Models whose version folder gets a copy of ``pipeline_config.json``."""

ONNX_FILENAME = "model.onnx"
PLAN_FILENAME = "model.plan"
WEIGHTS_FILENAME = "weights.pt"


@dataclass(frozen=True)
class ParityTolerance:
    """Largest accepted difference between two models' probability outputs.

    Outputs are probabilities in [0, 1], so the absolute error is the measure that
    matters: a pair passes when ``|a - b| <= atol + rtol * |b|`` element-wise.
    FP32 ONNX Runtime vs FP32 torch differ by ~1e-6 (summation order), hence the default
    ``atol=1e-4``. FP16 engines vs FP32 ONNX use :data:`FP16_TOLERANCE`.
    """

    atol: float = 1e-4
    rtol: float = 0.0

    def __post_init__(self) -> None:
        if not (self.atol >= 0 and self.rtol >= 0):
            raise ExportError(f"ParityTolerance: atol and rtol must be >= 0; got {self}")


FP16_TOLERANCE = ParityTolerance(atol=2e-2, rtol=0.0)
"""FP16 (TensorRT engine, torch half) vs FP32 ONNX: 0.02 in probability. Half
precision keeps ~3 decimal digits; through ~50-150 layers the logit error stays below
~0.05, i.e. below 0.0125 after the sigmoid (slope <= 0.25)."""


@dataclass(frozen=True)
class OnnxExportConfig:
    """How a checkpoint is turned into an ONNX file.

    opset: ONNX opset (18: current, handled by both torch 2.13 exporters, ONNX Runtime
        >= 1.14 and TensorRT >= 8.6). exporter: ``"dynamo"`` (``torch.export``-based,
        the supported path in torch >= 2.9) or ``"torchscript"`` (legacy, deprecated;
        kept as a fallback for networks the dynamo path cannot trace).
    max_slices: upper bound of the dynamic slice axis declared to the exporter.
    parity_batch_sizes: slice counts of the fresh random inputs of the parity check.
    seed: seed of the parity inputs (uniform [0, 1), the range of windowed HU / masks).
    """

    opset: int = 18
    exporter: str = "dynamo"
    max_slices: int = 4096
    parity_batch_sizes: tuple[int, ...] = (1, 3)
    parity: ParityTolerance = field(default_factory=ParityTolerance)
    seed: int = 1234

    def __post_init__(self) -> None:
        if self.exporter not in EXPORTERS:
            raise ExportError(f"OnnxExportConfig.exporter must be one of {EXPORTERS}; got {self.exporter!r}")
        if not 17 <= self.opset <= 20:
            raise ExportError(f"OnnxExportConfig.opset must be in 17..20; got {self.opset}")
        if not self.parity_batch_sizes or min(self.parity_batch_sizes) < 1:
            raise ExportError(
                f"OnnxExportConfig.parity_batch_sizes must be positive slice counts; "
                f"got {self.parity_batch_sizes}"
            )


@dataclass(frozen=True)
class SliceProfile:
    """Slice counts (first axis) an engine is optimised for: TensorRT optimisation
    profile ``min <= opt <= max``. 1 / 128 / 1024 covers the series we serve (a selected
    open-lung subset of 30-600 slices); lower ``max_slices`` for large inputs (a
    ResNet50-FPN at 512 px needs roughly 20-30 MiB of activations per slice in FP16)."""

    min_slices: int = 1
    opt_slices: int = 128
    max_slices: int = 1024

    def __post_init__(self) -> None:
        if not 1 <= self.min_slices <= self.opt_slices <= self.max_slices:
            raise ExportError(
                "SliceProfile must satisfy 1 <= min_slices <= opt_slices <= max_slices; got "
                f"{self.min_slices} / {self.opt_slices} / {self.max_slices}"
            )


@dataclass(frozen=True)
class TensorRTBuildConfig:
    """TensorRT engine build: FP16, one optimisation profile, workspace pool limit,
    timing cache file (reused across builds on the same GPU), builder optimisation level
    (0-5, TensorRT's default 3)."""

    profile: SliceProfile = field(default_factory=SliceProfile)
    fp16: bool = True
    workspace_mib: int = 4096
    timing_cache: str | None = "trt_timing.cache"
    optimization_level: int = 3

    def __post_init__(self) -> None:
        if self.workspace_mib < 1:
            raise ExportError(f"TensorRTBuildConfig.workspace_mib must be >= 1; got {self.workspace_mib}")
        if not 0 <= self.optimization_level <= 5:
            raise ExportError(
                f"TensorRTBuildConfig.optimization_level must be in 0..5; got {self.optimization_level}"
            )


@dataclass(frozen=True)
class RepositoryOptions:
    """Model repository generation.

    gpu: portable profile only: instance groups ``KIND_GPU`` (torch FP16 runner) instead
        of ``KIND_CPU`` (ONNX Runtime). The container profile is always ``KIND_GPU``.
    warmup_slices: slice count of the container profile's ``model_warmup`` request.
    overwrite: replace an existing non-empty output folder.
    """

    onnx: OnnxExportConfig = field(default_factory=OnnxExportConfig)
    tensorrt: TensorRTBuildConfig = field(default_factory=TensorRTBuildConfig)
    gpu: bool = False
    warmup_slices: int = 128
    overwrite: bool = False
