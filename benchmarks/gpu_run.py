"""The GPU run: paper 002's ``resnet50v2_fpn`` at 512x512 in half precision behind Triton.

Needs a CUDA GPU visible to torch (it refuses to start otherwise); one command runs:

1. checkpoints: the given ``--classifier-checkpoint`` / ``--segmenter-checkpoint``, or
   networks with seeded random weights (``resnet50v2_fpn``, 512 px, 1 channel, 2 logits;
   light ``unet`` 256 px segmenter) with one shared pipeline config. Random weights give
   valid timings (the arithmetic does not depend on the values) and meaningless
   verdicts; the report says which was used.
2. the ``portable`` repository with ``KIND_GPU`` instances
   (``RepositoryOptions(gpu=True)``): the torch FP16 runner (channels_last, CUDA graphs).
3. :mod:`benchmarks.paper_comparison` with the server's GPU support on and the naive
   baseline in torch FP32 on ``cuda:0``, one slice at a time (the paper's setting);
   then :mod:`benchmarks.throughput` (instances 1 and 2 of the heavy steps, GPU memory
   peak from ``nv_gpu_memory_used_bytes``) and, with ``--perf-analyzer``,
   :mod:`benchmarks.perf_analyzer`.

    python -m benchmarks.gpu_run --out benchmarks/results/h100            # on the GPU machine
    python -m benchmarks.gpu_run --out /tmp/gpu_prep --prepare-only      # any machine: steps 1-2

Requirements on the GPU machine: torch built with CUDA, onnxruntime, tritonclient and the
``nvidia-pytriton`` server (``make setup``), like the CPU setup.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import write_json, write_resolved_config
from covidct.errors import BenchmarkToolError

CLASSIFIER = "resnet50v2_fpn"
SEGMENTER = "unet"


@dataclass(frozen=True)
class GpuRunConfig:
    """The GPU run. Sizes in pixels; slices as in the paper's Table 5 unless given."""

    out: str = "bench_output/gpu_run"
    classifier_checkpoint: str | None = None
    segmenter_checkpoint: str | None = None
    classifier_size: int = 512
    segmenter_size: int = 256
    seed: int = 0
    slices: tuple[int, ...] = (35, 52, 56, 65, 130, 198, 355, 406)
    repeats: int = 5
    concurrency: tuple[int, ...] = (1, 2, 4, 8, 16)
    instances: tuple[int, ...] = (1, 2)
    perf_analyzer: bool = False
    prepare_only: bool = False


def random_checkpoints(out: Path, cfg: GpuRunConfig) -> dict[str, Path]:
    """Seeded random-weight checkpoints of the paper's classifier and a light segmenter."""
    import torch

    from preprocessing.config import ModelInputConfig, PipelineConfig
    from training.checkpoint import save_checkpoint
    from training.registry import create_model

    pipeline = PipelineConfig(
        classifier_input=ModelInputConfig(size=cfg.classifier_size),
        segmenter_input=ModelInputConfig(size=cfg.segmenter_size),
    )
    note = {"weights": f"random (torch.manual_seed({cfg.seed})): for timings only, verdicts are meaningless"}
    torch.manual_seed(cfg.seed)
    classifier = create_model(CLASSIFIER, input_size=cfg.classifier_size)
    segmenter = create_model(SEGMENTER, input_size=cfg.segmenter_size)
    return {
        "classifier": save_checkpoint(out / "checkpoints" / "classifier", classifier, pipeline, extra=note),
        "segmenter": save_checkpoint(out / "checkpoints" / "segmenter", segmenter, pipeline, extra=note),
    }


def gpu_repository(out: Path, checkpoints: dict[str, Path]) -> Path:
    """The portable repository with ``KIND_GPU`` runners (torch FP16)."""
    from export.config import RepositoryOptions
    from export.repository import build_repository

    return Path(build_repository(checkpoints["classifier"], checkpoints["segmenter"], out / "model_repository",
                                 profile="portable", options=RepositoryOptions(gpu=True, overwrite=True)))


def require_cuda() -> str:
    """The CUDA device name; :class:`BenchmarkToolError` when torch sees no GPU."""
    import torch

    if not torch.cuda.is_available():
        raise BenchmarkToolError(
            "no CUDA GPU visible to torch: the GPU run needs one (use --prepare-only to build the "
            "checkpoints and the KIND_GPU repository on this machine)"
        )
    return torch.cuda.get_device_name(0)


def run(cfg: GpuRunConfig) -> dict[str, Any]:
    """Steps 1-3 of the module docstring; returns a summary (also ``gpu_run.json``)."""
    out = Path(cfg.out)
    device = None if cfg.prepare_only else require_cuda()
    out.mkdir(parents=True, exist_ok=True)
    write_resolved_config(out, cfg, "gpu_run")
    if cfg.classifier_checkpoint and cfg.segmenter_checkpoint:
        checkpoints = {"classifier": Path(cfg.classifier_checkpoint), "segmenter": Path(cfg.segmenter_checkpoint)}
        weights = "given checkpoints"
    else:
        checkpoints = random_checkpoints(out, cfg)
        weights = "random"
    repository = gpu_repository(out, checkpoints)
    summary: dict[str, Any] = {"device": device, "weights": weights, "repository": str(repository)}
    if not cfg.prepare_only:
        from benchmarks import paper_comparison, perf_analyzer, throughput

        paper = paper_comparison.run(paper_comparison.PaperComparisonConfig(
            model_repository=str(repository), out=str(out / "paper_comparison"), slices=cfg.slices,
            repeats=cfg.repeats, profile="portable-gpu-fp16", gpu_server=True,
            naive_backend="torch", naive_device="cuda:0"))
        scaling = throughput.run(throughput.ThroughputConfig(
            model_repository=str(repository), out=str(out / "throughput"), concurrency=cfg.concurrency,
            instances=cfg.instances, gpu_server=True))
        summary["paper_comparison_fit"] = paper["fit"]
        summary["memory"] = scaling["memory"]
        if cfg.perf_analyzer:
            perf_analyzer.run(perf_analyzer.PerfAnalyzerConfig(
                model_repository=str(repository), out=str(out / "perf_analyzer"), gpu_server=True))
    write_json(out / "gpu_run.json", summary)
    return summary


def parse_args(argv: list[str] | None = None) -> GpuRunConfig:
    d = GpuRunConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=d.out)
    p.add_argument("--classifier-checkpoint", default=None, help="trained resnet50v2_fpn checkpoint (else random)")
    p.add_argument("--segmenter-checkpoint", default=None)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--slices", type=int, nargs="+", default=list(d.slices))
    p.add_argument("--repeats", type=int, default=d.repeats)
    p.add_argument("--concurrency", type=int, nargs="+", default=list(d.concurrency))
    p.add_argument("--instances", type=int, nargs="+", default=list(d.instances))
    p.add_argument("--perf-analyzer", action="store_true", help="also sweep every model with perf_analyzer")
    p.add_argument("--prepare-only", action="store_true", help="build checkpoints + KIND_GPU repository, no run")
    a = p.parse_args(argv)
    return dataclasses.replace(
        d, out=a.out, classifier_checkpoint=a.classifier_checkpoint, segmenter_checkpoint=a.segmenter_checkpoint,
        seed=a.seed, slices=tuple(a.slices), repeats=a.repeats, concurrency=tuple(a.concurrency),
        instances=tuple(a.instances), perf_analyzer=a.perf_analyzer, prepare_only=a.prepare_only,
    )


def main(argv: list[str] | None = None) -> int:
    print(run(parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
