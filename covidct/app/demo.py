"""``covidct demo``: the whole bundle end to end on a CPU in a few minutes.

1. synthetic chest CT patients (phantoms with and without COVID-like lesions);
2. the networks: by default the shipped ones trained on public real chest CT
   (:mod:`covidct.training.shipped`); with ``models="demo"`` (``covidct demo --demo-models``) the
   small phantom-trained demo models (:func:`covidct.training.demo_models.train_demo_models`);
3. the ``portable`` model repository (:func:`covidct.export.repository.build_repository`);
4. a local Triton server (:class:`covidct.app.triton_server.TritonServer`);
5. one gRPC request per patient (:func:`covidct.client.submit.submit`), the client's table of
   answers (positive / negative / not assessable, with the model card's warning);
6. ``demo_config.json`` (resolved settings) and ``results.json`` in the output folder.

Synthetic phantoms are labelled as such: the shipped networks never saw a phantom, and
their answer on one tests the plumbing, never the networks (the demo says so and counts
no phantom "correct" for them). With ``COVIDCT_DATA_DIR`` pointing at the COVID-CT-MD
samples, the real series (``real_series``: COVID-19, CAP and normal) are sent as well,
and their answers are compared with the radiologists' diagnosis.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from covidct.errors import ConfigError

log = logging.getLogger(__name__)

DATA_DIR_ENV = "COVIDCT_DATA_DIR"


@dataclass(frozen=True)
class DemoConfig:
    """Demo settings.

    slice_counts: one synthetic patient per entry; even positions carry COVID-like
        lesions, odd positions none. size: slice size in pixels (square).
    models: ``"shipped"`` (networks trained on real chest CT, :mod:`covidct.training.shipped`) or
        ``"demo"`` (phantom-trained demo models, trained here in about a minute).
    quick: train the demo models in their quick mode (tests; lower accuracy).
    include_real: also send ``real_series`` from ``$COVIDCT_DATA_DIR`` when it is set.
    """

    output_dir: str = "demo_output"
    slice_counts: tuple[int, ...] = (35, 60, 120, 150)
    size: int = 512
    seed: int = 0
    models: str = "shipped"
    quick: bool = False
    include_real: bool = True
    real_series: tuple[str, ...] = ("P002", "cap002", "normal002")
    request_timeout_s: float = 600.0
    server_startup_timeout_s: float = 300.0


@dataclass(frozen=True)
class DemoCase:
    """One series to send: a name, the ground truth (``"COVID-19"``/``"normal"``...) and the volume."""

    name: str
    truth: str
    volume: Any  # covidct.preprocessing.volume.CTVolume
    truth_positive: bool | None = None


def synthetic_cases(config: DemoConfig, progress: bool = True) -> list[DemoCase]:
    """Phantom patients for ``config.slice_counts`` (alternating positive / negative)."""
    from covidct.progress import progress as progress_bar

    from covidct.preprocessing.synthetic.phantom import make_phantom

    cases = []
    counts = progress_bar(config.slice_counts, desc="synthetic patients", unit="patient", disable=not progress)
    for i, num_slices in enumerate(counts):
        covid = i % 2 == 0
        phantom = make_phantom(num_slices, size=config.size, covid=covid, seed=config.seed + i)
        label = "synthetic phantom with lesions" if covid else "synthetic phantom without lesions"
        cases.append(DemoCase(f"synthetic-{i + 1:02d}", label, phantom.volume, covid))
    return cases


def real_case(data_dir: Path, series: str) -> DemoCase:
    """The real series ``series`` of the COVID-CT-MD samples, with its diagnosis from labels.csv."""
    from covidct.preprocessing.io.series_reader import read_series
    from covidct.training.file_sources import patient_diagnoses

    truth = patient_diagnoses(data_dir / "labels.csv").get(series) or "unknown"
    volume = read_series(data_dir / series)
    return DemoCase(f"real-{series}", truth, volume, truth == "COVID-19" if truth != "unknown" else None)


def _timed(label: str, timings: dict[str, float], fn: Callable[[], Any]) -> Any:
    start = time.perf_counter()
    value = fn()
    timings[label] = round(time.perf_counter() - start, 3)
    print(f"[demo] {label}: {timings[label]:.1f} s", flush=True)
    return value


def run_demo(config: DemoConfig = DemoConfig(), progress: bool = True) -> dict[str, Any]:
    """Run the demo; returns (and writes to ``results.json``) the per-patient results."""
    from covidct.client.batch import PatientOutcome
    from covidct.client.report import format_table, report_dict
    from covidct.client.submit import submit
    from covidct.app.triton_server import ServerConfig, TritonServer
    from covidct.export.config import RepositoryOptions
    from covidct.export.repository import build_repository
    from covidct.training.demo_models import train_demo_models
    from covidct.training.shipped import shipped_checkpoint

    out = Path(config.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    if config.models not in ("shipped", "demo"):
        raise ConfigError(f"DemoConfig.models={config.models!r}; expected 'shipped' or 'demo'")
    cases = _timed("synthetic patients", timings, lambda: synthetic_cases(config, progress))
    data_dir = os.environ.get(DATA_DIR_ENV, "")
    real_names = [name for name in config.real_series if data_dir and (Path(data_dir) / name).is_dir()]
    if config.include_real and real_names:
        for name in real_names:
            cases.append(_timed(f"read {name}", timings, lambda name=name: real_case(Path(data_dir), name)))
    elif config.include_real:
        print(f"[demo] {DATA_DIR_ENV} not set or without {', '.join(config.real_series)}: synthetic inputs only")

    if config.models == "demo":
        checkpoints = _timed(
            "train demo models", timings,
            lambda: train_demo_models(out / "checkpoints", seed=config.seed, quick=config.quick, progress=progress),
        )
    else:
        checkpoints = {role: shipped_checkpoint(role) for role in ("classifier", "segmenter")}
        print(f"[demo] networks: the shipped checkpoints ({checkpoints['classifier'].parent}), trained on public "
              f"real chest CT; research use only", flush=True)
    repository = _timed(
        "export portable repository", timings,
        lambda: build_repository(
            checkpoints["classifier"],
            checkpoints["segmenter"],
            out / "model_repository",
            profile="portable",
            options=RepositoryOptions(overwrite=True),
        ),
    )
    server_config = ServerConfig(
        model_repository=repository,
        log_path=out / "tritonserver.log",
        startup_timeout_s=config.server_startup_timeout_s,
    )
    outcomes: list[PatientOutcome] = []
    server = TritonServer(server_config)
    _timed("start Triton", timings, server.start)
    try:
        print(f"[demo] Triton ready: gRPC {server.grpc_url}, metrics {server.metrics_url}", flush=True)
        for case in cases:
            result = submit(case.volume, server.grpc_url, timeout_s=config.request_timeout_s)
            outcomes.append(PatientOutcome(f"{case.name} ({case.truth})", result=result))
    finally:
        server.stop()

    print()
    print(format_table(outcomes))
    synthetic = [(c, o) for c, o in zip(cases, outcomes)
                 if c.truth_positive is not None and c.name.startswith("synthetic")]
    real = [(c, o) for c, o in zip(cases, outcomes) if c.name.startswith("real-") and c.truth_positive is not None]
    correct = sum(o.result.assessable and o.result.positive == c.truth_positive for c, o in synthetic)
    real_correct = sum(o.result.assessable and o.result.positive == c.truth_positive for c, o in real)
    if config.models == "demo":
        print(f"\nsynthetic patients correct: {correct}/{len(synthetic)} (demo models trained on the phantom)")
    else:
        print("\nSynthetic inputs are phantoms, not patients: the shipped networks never saw one, so their answers "
              "on them check the plumbing (reading, lung mask, trust checks, DICOM), not the networks.")
    if real:
        print(f"real series answered as their diagnosis (COVID-19 positive, others negative): "
              f"{real_correct}/{len(real)}")
    print(f"results in {out / 'results.json'}")

    resolved = {
        "demo": asdict(config),
        "checkpoints": {k: str(v) for k, v in checkpoints.items()},
        "model_repository": str(repository),
        "server_log": str(server_config.log_path),
        "pipeline_config": json.loads((Path(repository) / "preprocess" / "1" / "pipeline_config.json").read_text()),
    }
    (out / "demo_config.json").write_text(json.dumps(resolved, indent=2) + "\n", encoding="utf-8")
    results = {
        "report": report_dict(outcomes, url=server.grpc_url, model="covid_ct_pipeline"),
        "truth": {c.name: c.truth for c in cases},
        "models": config.models,
        "synthetic_correct": correct if config.models == "demo" else None,
        "synthetic_total": len(synthetic),
        "real_correct": real_correct,
        "real_total": len(real),
        "timings_s": timings,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return results
