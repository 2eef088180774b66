"""The GPU run: paper 002's ``resnet50v2_fpn`` at 512x512 in half precision behind Triton.

With ``--device cuda`` (the default) it needs a CUDA GPU visible to torch (it refuses to
start otherwise); ``--device cpu`` runs the same code path on a machine without one
(``KIND_CPU`` instances, ONNX Runtime FP32; the naive loop in torch FP32 on the CPU), as
the dry run of ``benchmarks/gpu_check.sh``. One command runs:

1. checkpoints: the given ``--classifier-checkpoint`` / ``--segmenter-checkpoint``, or
   networks with seeded random weights (``resnet50v2_fpn``, 512 px, 1 channel, 2 logits;
   light ``unet`` 256 px segmenter) with one shared pipeline config. Random weights give
   valid timings (the arithmetic does not depend on the values) and meaningless
   verdicts; the report says which was used. ``--model-repository`` skips steps 1-2 and
   serves that repository (e.g. the one :mod:`covidct.benchmarks.gpu_parity` checked).
2. the ``portable`` repository with ``KIND_GPU`` instances
   (``RepositoryOptions(gpu=True)``): the torch FP16 runner (channels_last, CUDA graphs).
3. :mod:`covidct.benchmarks.paper_comparison` with the server's GPU support on and the naive
   baseline in torch FP32 on ``cuda:0``, one slice at a time (the paper's setting);
   then :mod:`covidct.benchmarks.throughput` (concurrency 1-16, instances of the heavy steps, GPU
   memory peak from ``nv_gpu_memory_used_bytes``) and, with ``--perf-analyzer``,
   :mod:`covidct.benchmarks.perf_analyzer`.

    python -m covidct.benchmarks.gpu_run --out benchmarks/results/h100            # on the GPU machine
    python -m covidct.benchmarks.gpu_run --out /tmp/gpu_prep --prepare-only      # any machine: steps 1-2
    python -m covidct.benchmarks.gpu_run --out OUT --device cpu --quick          # dry run: 128 px, 8/12 slices

Writes ``gpu_run.json`` and ``gpu_run.md`` (summary) beside the benchmarks' own folders.
Requirements on the GPU machine: torch built with CUDA, onnx, onnxruntime, tritonclient and
the ``nvidia-pytriton`` server (``make setup``, or the bundle of :mod:`covidct.benchmarks.gpu_bundle`).
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from covidct.benchmarks.common import markdown_table, write_json, write_resolved_config
from covidct.errors import BenchmarkToolError, ConfigError

CLASSIFIER = "resnet50v2_fpn"
SEGMENTER = "unet"
DEVICES = ("cuda", "cpu")
QUICK = {"classifier_size": 128, "segmenter_size": 64, "size": 128, "slices": (8, 12), "repeats": 1,
         "naive_repeats": 1, "concurrency": (1, 2), "instances": (1,), "throughput_slices": 8,
         "requests_per_client": 1, "fit_slices": (6, 10), "fit_repeats": 1}
"""``--quick``: everything small enough for a 2-core dry run."""
SUMMARY_ROW_KEYS = ("slices", "selected", "paper_s", "paper_interpolated", "ours_median_s", "ours_p95_s",
                    "naive_median_s", "speedup_vs_naive", "agreement")
"""The paper comparison's row fields ``gpu_run.json`` repeats (the rest: ``paper_comparison.json``)."""


@dataclass(frozen=True)
class GpuRunConfig:
    """The GPU run. Sizes in pixels; slices as in the paper's Table 5 unless given.

    device: ``cuda`` (``KIND_GPU``, torch FP16; naive loop on ``cuda:0``) or ``cpu``
    (``KIND_CPU``, ONNX Runtime FP32; naive loop on the CPU). size: side of the phantom
    series. throughput_slices: slices of the throughput series; fit_slices: the latency fit's.
    """

    out: str = "bench_output/gpu_run"
    classifier_checkpoint: str | None = None
    segmenter_checkpoint: str | None = None
    model_repository: str | None = None
    device: str = "cuda"
    classifier_size: int = 512
    segmenter_size: int = 256
    seed: int = 0
    size: int = 512
    slices: tuple[int, ...] = (35, 52, 56, 65, 130, 198, 355, 406)
    repeats: int = 5
    naive_repeats: int = 3
    concurrency: tuple[int, ...] = (1, 2, 4, 8, 16)
    instances: tuple[int, ...] = (1, 2)
    throughput_slices: int = 65
    requests_per_client: int = 2
    fit_slices: tuple[int, ...] = (35, 65, 130, 406)
    fit_repeats: int = 3
    perf_analyzer: bool = False
    prepare_only: bool = False

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ConfigError(f"GpuRunConfig.device={self.device!r}; expected one of {DEVICES}")

    @property
    def gpu(self) -> bool:
        return self.device == "cuda"


def random_checkpoints(out: Path, classifier_size: int = 512, segmenter_size: int = 256,
                       seed: int = 0) -> dict[str, Path]:
    """Seeded random-weight checkpoints of the paper's classifier and a light segmenter
    (``out/checkpoints/{classifier,segmenter}``; input sides in pixels)."""
    import torch

    from covidct.preprocessing.config import ModelInputConfig, PipelineConfig
    from covidct.training.checkpoint import save_checkpoint
    from covidct.training.registry import create_model

    pipeline = PipelineConfig(
        classifier_input=ModelInputConfig(size=classifier_size),
        segmenter_input=ModelInputConfig(size=segmenter_size),
    )
    note = {"weights": f"random (torch.manual_seed({seed})): for timings only, verdicts are meaningless"}
    torch.manual_seed(seed)
    classifier = create_model(CLASSIFIER, input_size=classifier_size)
    segmenter = create_model(SEGMENTER, input_size=segmenter_size)
    return {
        "classifier": save_checkpoint(out / "checkpoints" / "classifier", classifier, pipeline, extra=note),
        "segmenter": save_checkpoint(out / "checkpoints" / "segmenter", segmenter, pipeline, extra=note),
    }


def gpu_repository(out: Path, checkpoints: dict[str, Path], gpu: bool = True) -> Path:
    """The portable repository ``out/model_repository``: ``KIND_GPU`` runners (torch FP16)
    with ``gpu``, else ``KIND_CPU`` (ONNX Runtime FP32)."""
    from covidct.export.config import RepositoryOptions
    from covidct.export.repository import build_repository

    return Path(build_repository(checkpoints["classifier"], checkpoints["segmenter"], out / "model_repository",
                                 profile="portable", options=RepositoryOptions(gpu=gpu, overwrite=True)))


def require_cuda() -> str:
    """The CUDA device name; :class:`BenchmarkToolError` when torch sees no GPU."""
    import torch

    if not torch.cuda.is_available():
        raise BenchmarkToolError(
            "no CUDA GPU visible to torch: the GPU run needs one (use --prepare-only to build the "
            "checkpoints and the KIND_GPU repository on this machine, or --device cpu for a dry run)"
        )
    return torch.cuda.get_device_name(0)


def device_label(cfg: GpuRunConfig) -> str:
    """What ran the networks: the GPU's name, or the CPU's model."""
    if cfg.gpu:
        return require_cuda()
    from covidct.benchmarks.common import cpu_model

    return f"CPU {cpu_model()}"


def repository_for(cfg: GpuRunConfig, out: Path) -> tuple[Path, str]:
    """(served repository, where its weights came from): given, exported from given checkpoints, or random."""
    if cfg.model_repository:
        repository = Path(cfg.model_repository)
        if not (repository / "covid_ct_pipeline").is_dir():
            raise ConfigError(f"{repository}: no covid_ct_pipeline model; expected an exported model repository")
        return repository, "as exported in the served repository"
    if cfg.classifier_checkpoint and cfg.segmenter_checkpoint:
        checkpoints = {"classifier": Path(cfg.classifier_checkpoint), "segmenter": Path(cfg.segmenter_checkpoint)}
        weights = "given checkpoints"
    else:
        checkpoints = random_checkpoints(out, cfg.classifier_size, cfg.segmenter_size, cfg.seed)
        weights = "random"
    return gpu_repository(out, checkpoints, gpu=cfg.gpu), weights


def to_markdown(summary: dict[str, Any]) -> str:
    """The summary as Markdown: paper comparison rows, throughput points, memory peaks."""
    lines = [f"# GPU run ({summary['device_kind']})", "",
             f"Device: {summary['device']}; torch {summary['torch']}; weights: {summary['weights']}; "
             f"repository `{summary['repository']}`.", ""]
    paper = summary.get("paper_comparison")
    if paper:
        lines += ["## Paper 002 Table 5 vs ours (median s per patient)", "", markdown_table(
            ["slices", "selected", "paper P100 (s)", "ours (s)", "naive FP32 loop (s)", "naive / ours", "same verdict"],
            [[r["slices"], r["selected"], f"{r['paper_s']:.2f}" + ("*" if r["paper_interpolated"] else ""),
              f"{r['ours_median_s']:.3f}",
              f"{r['naive_median_s']:.3f}", f"{r['speedup_vs_naive']:.2f}x",
              "yes" if r["agreement"]["same_verdict"] else "NO"] for r in paper["rows"]]), ""]
        fit = paper["fit"]
        lines += ["`*`: slice count not in Table 5, paper time interpolated (clamped at the ends). "
                  f"Fit: {fit['fixed_s'] * 1e3:.1f} ms + {fit['per_slice_s'] * 1e3:.3f} ms/slice.", ""]
    scaling = summary.get("throughput")
    if scaling:
        lines += ["## Throughput (patients/s)", "", markdown_table(
            ["instances", "concurrency", "patients/s", "p50 (ms)", "p95 (ms)"],
            [[p["instances"], p["concurrency"], f"{p['throughput_per_s']:.3f}", f"{p['p50_ms']:.0f}",
              f"{p['p95_ms']:.0f}"] for p in scaling["points"]]), "", markdown_table(
            ["instances", "server RSS peak (MiB)", "GPU memory peak"],
            [[k, f"{v['server_rss_peak_bytes'] / 2**20:.0f}" if v["server_rss_peak_bytes"] else "n/a",
              v["gpu_memory_peak"]] for k, v in scaling["memory"].items()]), ""]
    lines += ["Details: `paper_comparison/paper_comparison.md`, `throughput/throughput.md`.", ""]
    return "\n".join(lines)


def run(cfg: GpuRunConfig) -> dict[str, Any]:
    """Steps 1-3 of the module docstring; returns a summary (also ``gpu_run.json`` / ``gpu_run.md``)."""
    import torch

    out = Path(cfg.out)
    device = None if cfg.prepare_only else device_label(cfg)
    out.mkdir(parents=True, exist_ok=True)
    write_resolved_config(out, cfg, "gpu_run")
    repository, weights = repository_for(cfg, out)
    summary: dict[str, Any] = {"device": device, "device_kind": cfg.device, "torch": torch.__version__,
                               "weights": weights, "repository": str(repository)}
    if not cfg.prepare_only:
        from covidct.benchmarks import paper_comparison, perf_analyzer, throughput

        precision = "gpu-fp16" if cfg.gpu else "cpu-fp32"
        paper = paper_comparison.run(paper_comparison.PaperComparisonConfig(
            model_repository=str(repository), out=str(out / "paper_comparison"), slices=cfg.slices, size=cfg.size,
            repeats=cfg.repeats, naive_repeats=cfg.naive_repeats, seed=cfg.seed, profile=f"portable-{precision}",
            gpu_server=cfg.gpu, naive_backend="torch", naive_device="cuda:0" if cfg.gpu else "cpu"))
        summary["paper_comparison"] = {"rows": [{k: r[k] for k in SUMMARY_ROW_KEYS} for r in paper["rows"]],
                                       "fit": paper["fit"]}
        write_json(out / "gpu_run.json", summary)  # the paper comparison survives a later failure
        scaling = throughput.run(throughput.ThroughputConfig(
            model_repository=str(repository), out=str(out / "throughput"), slices=cfg.throughput_slices,
            size=cfg.size, seed=cfg.seed, concurrency=cfg.concurrency, instances=cfg.instances,
            requests_per_client=cfg.requests_per_client, fit_slices=cfg.fit_slices, fit_repeats=cfg.fit_repeats,
            gpu_server=cfg.gpu))
        summary["throughput"] = {"points": scaling["points"], "memory": scaling["memory"],
                                 "latency_vs_slices": scaling["latency_vs_slices"]}
        if cfg.perf_analyzer:
            perf_analyzer.run(perf_analyzer.PerfAnalyzerConfig(
                model_repository=str(repository), out=str(out / "perf_analyzer"), gpu_server=cfg.gpu))
        (out / "gpu_run.md").write_text(to_markdown(summary), encoding="utf-8")
    write_json(out / "gpu_run.json", summary)
    return summary


def parse_args(argv: list[str] | None = None) -> GpuRunConfig:
    d = GpuRunConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=d.out)
    p.add_argument("--classifier-checkpoint", default=None, help="trained resnet50v2_fpn checkpoint (else random)")
    p.add_argument("--segmenter-checkpoint", default=None)
    p.add_argument("--model-repository", default=None, help="serve this exported repository (skips steps 1-2)")
    p.add_argument("--device", choices=DEVICES, default=d.device, help="cpu: the same path without a GPU")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--slices", type=int, nargs="+", default=None, help=f"default {list(d.slices)}")
    p.add_argument("--repeats", type=int, default=None, help=f"default {d.repeats}")
    p.add_argument("--naive-repeats", type=int, default=None, help=f"default {d.naive_repeats}")
    p.add_argument("--concurrency", type=int, nargs="+", default=None, help=f"default {list(d.concurrency)}")
    p.add_argument("--instances", type=int, nargs="+", default=None, help=f"default {list(d.instances)}")
    p.add_argument("--perf-analyzer", action="store_true", help="also sweep every model with perf_analyzer")
    p.add_argument("--prepare-only", action="store_true", help="build checkpoints + KIND_GPU repository, no run")
    p.add_argument("--quick", action="store_true", help=f"dry run: {QUICK}")
    a = p.parse_args(argv)
    base = dataclasses.replace(d, **QUICK) if a.quick else d
    given = {"slices": a.slices and tuple(a.slices), "repeats": a.repeats, "naive_repeats": a.naive_repeats,
             "concurrency": a.concurrency and tuple(a.concurrency), "instances": a.instances and tuple(a.instances)}
    return dataclasses.replace(
        base, out=a.out, classifier_checkpoint=a.classifier_checkpoint, segmenter_checkpoint=a.segmenter_checkpoint,
        model_repository=a.model_repository, device=a.device, seed=a.seed, perf_analyzer=a.perf_analyzer,
        prepare_only=a.prepare_only, **{k: v for k, v in given.items() if v is not None},
    )


def main(argv: list[str] | None = None) -> int:
    summary = run(parse_args(argv))
    print(to_markdown(summary) if "paper_comparison" in summary else summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
