"""``python -m covidct.export``: checkpoints in, a deployable Triton model repository out.

Usage::

    python -m covidct.export --out build/model_repository      # the shipped real-data networks
    python -m covidct.export --classifier runs/cnn6/best --segmenter runs/unet/best \\
        --profile portable --out demo_output/model_repository
    python -m covidct.export --classifier C --segmenter S --profile container --out repo \\
        [--plan classifier=classifier.plan --plan segmenter=segmenter.plan]

Shows a progress bar over the steps of :func:`covidct.export.repository.generate_repository`
and ends with a summary table (model, network, format, precision, size, parity error)
and one line per model card (:meth:`covidct.training.model_card.ModelCard.summary`).
Exit status 0 on success, 2 on a checkpoint/export error (message on stderr; no
repository is left behind).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from covidct.errors import CovidCTError
from covidct.export.config import PROFILES, OnnxExportConfig, RepositoryOptions, SliceProfile, TensorRTBuildConfig


def _parse_plans(items: Sequence[str]) -> dict[str, Path]:
    plans = {}
    for item in items:
        model, sep, path = item.partition("=")
        if not sep or not path:
            raise argparse.ArgumentTypeError(f"--plan expects MODEL=PATH (e.g. classifier=c.plan); got {item!r}")
        plans[model] = Path(path)
    return plans


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m covidct.export", description="Checkpoints -> Triton model repository.")
    p.add_argument("--classifier", type=Path, default=None,
                   help="classifier checkpoint folder (default: the shipped one, training/shipped/classifier)")
    p.add_argument("--segmenter", type=Path, default=None,
                   help="segmenter checkpoint folder (default: the shipped one, training/shipped/segmenter)")
    p.add_argument("--profile", choices=PROFILES, default="portable")
    p.add_argument("--out", required=True, type=Path, help="output repository folder")
    p.add_argument("--plan", action="append", default=[], metavar="MODEL=PATH",
                   help="TensorRT plan for a runner model (container profile)")
    p.add_argument("--gpu", action="store_true", help="portable profile: KIND_GPU instances (torch FP16)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --out")
    p.add_argument("--source", type=Path, default=None, help="source model repository (default: the bundle's)")
    p.add_argument("--exporter", choices=("dynamo", "torchscript"), default=OnnxExportConfig.exporter)
    p.add_argument("--opset", type=int, default=OnnxExportConfig.opset)
    p.add_argument("--slices", type=int, nargs=3, metavar=("MIN", "OPT", "MAX"),
                   default=(SliceProfile.min_slices, SliceProfile.opt_slices, SliceProfile.max_slices),
                   help="TensorRT optimisation profile over the slice axis (container profile)")
    p.add_argument("--warmup-slices", type=int, default=RepositoryOptions.warmup_slices)
    return p


def format_size(num_bytes: int) -> str:
    """Human-readable size: ``1.9 MB`` (10^6 bytes)."""
    return f"{num_bytes / 1e6:.1f} MB" if num_bytes >= 1e5 else f"{num_bytes / 1e3:.1f} kB"


def summary_table(report) -> str:
    """Plain-text table of a :class:`covidct.export.repository.RepositoryReport`."""
    header = ("model", "network", "format", "precision", "size", "parity |err|", "note")
    rows = [
        (
            r.model, r.network, r.format, r.precision, format_size(r.size_bytes),
            "n/a" if r.parity_error is None else f"{r.parity_error:.1e}", r.note,
        )
        for r in report.rows
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip() for line in (header, *rows)]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    from covidct.progress import progress as progress_bar

    from covidct.export.repository import STEPS, generate_repository

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        plans = _parse_plans(args.plan)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    try:
        options = RepositoryOptions(
            onnx=OnnxExportConfig(opset=args.opset, exporter=args.exporter),
            tensorrt=TensorRTBuildConfig(profile=SliceProfile(*args.slices)),
            gpu=args.gpu,
            warmup_slices=args.warmup_slices,
            overwrite=args.overwrite,
        )
        from covidct.training.shipped import shipped_checkpoint

        classifier = args.classifier or shipped_checkpoint("classifier")
        segmenter = args.segmenter or shipped_checkpoint("segmenter")
        extra = {} if args.source is None else {"source": args.source}
        with progress_bar(total=len(STEPS), desc="export", unit="step") as bar:
            def progress(step: str) -> None:
                bar.set_postfix_str(step)
                bar.update(1)

            report = generate_repository(
                classifier, segmenter, args.out, args.profile,
                plans=plans, options=options, progress=progress, **extra,
            )
    except CovidCTError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary_table(report))
    print(f"model_versions: {', '.join(report.model_versions)}")
    for line in report.card_summaries:
        print(f"model card {line}")
    print(f"wrote {report.path} (profile {report.profile})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
