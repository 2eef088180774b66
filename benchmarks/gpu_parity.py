"""Correctness before speed: every output of the served ensemble against the in-process reference.

The run exports seeded random-weight networks (``resnet50v2_fpn`` 512 px + light ``unet``
256 px; 128/64 px with ``--quick``) into a ``portable`` repository (``--model-repository``
serves an existing one), starts Triton with ``KIND_GPU`` instances (torch FP16; ``--device
cpu``: ``KIND_CPU``, ONNX Runtime FP32), sends phantom series through the client and
compares each answer with :func:`covidct.serving.steps.run_pipeline_reference` on the same
networks (the ``weights.pt`` the served version folders hold, or ``--reference-checkpoints``)
in torch FP32 on the CPU:

- exact: ``SELECTED_INDICES``, ``LUNG_SLICES``, ``LUNG_MASK``, ``VOTE_THRESHOLD``,
  ``MODEL_VERSIONS``, ``MODEL_CARD``, and ``ASSESSMENT``'s verdict, reason codes and messages
  (its float measurements within 1e-5 relative: the stub's numpy 1.26 and the client's
  numpy 2 may round the last bits apart); ``MASK_SPACING_MM`` and ``LUNG_VOLUME_ML`` within
  1e-6 relative (float32 of the same mask);
- ``SLICE_PROBABILITIES`` within ``atol``: :data:`covidct.export.config.FP16_TOLERANCE` (0.02) on
  the GPU, where half precision keeps ~3 decimal digits over ~50 layers, and
  :class:`covidct.export.config.ParityTolerance` (1e-4; FP32 ONNX Runtime vs torch differ ~1e-6 by
  summation order) on the CPU;
- the outputs a threshold makes from probabilities may differ only where the reference
  probability is within ``atol`` of that threshold ("ambiguous"): ``INFECTION_MASK`` only
  on ambiguous voxels, ``LESION_BURDEN_PCT`` by at most their share of the lung,
  ``POSITIVE_FRACTION`` by at most the ambiguous slices' share, and ``VERDICT`` exactly
  unless those slices can move the positive fraction across ``VOTE_THRESHOLD``
  (reported per series as ``verdict_ambiguous``).

    python -m covidct.benchmarks.gpu_parity --out OUT --device cuda                 # on the GPU machine
    python -m covidct.benchmarks.gpu_parity --out OUT --device cpu --quick          # dry run, 2 cores

Writes ``gpu_parity.json`` and ``gpu_parity.md`` into ``--out`` and exits 1 with every
mismatch named (series, tensor, value, expected) when one is found.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from covidct.benchmarks.common import machine_info, markdown_table, write_json, write_resolved_config
from covidct.errors import ConfigError, CovidCTError, ParityError
from covidct.serving import tensors as T

DEVICES = ("cuda", "cpu")
QUICK = {"classifier_size": 128, "segmenter_size": 64, "size": 128, "series": ((24, True), (12, False))}
"""``--quick``: small networks and series for a 2-core dry run (the 12-slice series is not assessable)."""
RUNNER_MODELS = ("classifier", "segmenter")
EXACT = (T.SELECTED_INDICES, T.LUNG_SLICES, T.LUNG_MASK, T.VOTE_THRESHOLD, T.MODEL_VERSIONS, T.MODEL_CARD)


@dataclass(frozen=True)
class ParityConfig:
    """One parity run. Sizes in pixels; series: ``(slices, covid)`` phantoms of ``size`` x ``size``.

    model_repository: serve this exported repository; None: export random-weight networks
        into ``repository_out`` (default ``<out>/model_repository``).
    reference_checkpoints: ``(classifier, segmenter)`` checkpoint folders for the reference
        instead of the served weights (to check a repository against its training checkpoints).
    atol: probability tolerance; None: FP16 tolerance on ``cuda``, FP32 on ``cpu``.
    """

    out: str = "bench_output/gpu_parity"
    device: str = "cuda"
    model_repository: str | None = None
    repository_out: str | None = None
    reference_checkpoints: tuple[str, str] | None = None
    classifier_size: int = 512
    segmenter_size: int = 256
    seed: int = 0
    size: int = 512
    series: tuple[tuple[int, bool], ...] = ((64, True), (40, False), (12, True))
    atol: float | None = None
    startup_timeout_s: float = 300.0
    request_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ConfigError(f"ParityConfig.device={self.device!r}; expected one of {DEVICES}")

    @property
    def tolerance(self) -> float:
        from covidct.export.config import FP16_TOLERANCE, ParityTolerance

        if self.atol is not None:
            return self.atol
        return FP16_TOLERANCE.atol if self.device == "cuda" else ParityTolerance().atol


# ------------------------------------------------------------------------ reference
class TorchNetwork:
    """``x -> probabilities`` of a checkpoint folder's network + probability head, FP32 on the CPU;
    keeps the last output (``INFECTION_PROBABILITY`` tells which mask voxels are ambiguous)."""

    def __init__(self, folder: Path) -> None:
        from covidct.training.checkpoint import load_checkpoint
        from covidct.training.heads import probability_model

        network, model_config, _ = load_checkpoint(folder)
        self.model = probability_model(network, model_config).float()
        self.last: np.ndarray | None = None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            self.last = self.model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).float().numpy()
        return self.last


def served_metadata(repository: Path) -> tuple[tuple[str, ...], str]:
    """(``MODEL_VERSIONS``, ``MODEL_CARD`` text) the vote model of ``repository`` answers."""
    from covidct.serving.step_model import parse_model_versions, read_model_cards
    from covidct.export.pbtxt import get_parameter, latest_version_dir, read_config

    vote = repository / "vote"
    return parse_model_versions(get_parameter(read_config(vote), "model_versions", "")), \
        read_model_cards(latest_version_dir(vote))


# ------------------------------------------------------------------------ comparison
def _text(array: np.ndarray) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in np.asarray(array).reshape(-1)]


def ambiguous_slices(probability: np.ndarray, threshold: float, atol: float) -> np.ndarray:
    """Slices whose reference probability lies within ``atol`` of ``threshold`` (bool ``[K]``)."""
    return np.abs(np.asarray(probability, np.float64) - threshold) <= atol


def compare(served: dict[str, np.ndarray], reference: dict[str, np.ndarray], infection_probability: np.ndarray,
            config, atol: float) -> tuple[list[str], dict[str, Any]]:
    """Mismatches (``"TENSOR: got ...; expected ..."``) of one answer and what was measured.

    infection_probability: the reference segmenter's ``[L, 1, S, S]`` output; config: the served
    :class:`covidct.preprocessing.config.PipelineConfig`.
    """
    from covidct.preprocessing.resize import resize_nearest

    wrong: list[str] = []
    for name in T.ENSEMBLE_OUTPUTS:
        if np.shape(served[name]) != np.shape(reference[name]):
            wrong.append(f"{name}: shape {list(np.shape(served[name]))}; expected {list(np.shape(reference[name]))}")
    if wrong:
        return wrong, {}
    for name in EXACT:
        got, want = served[name], reference[name]
        same = _text(got) == _text(want) if got.dtype == np.object_ else np.array_equal(got, want)
        if not same:
            diff = "" if got.dtype == np.object_ else f" ({int(np.sum(got != want))} elements differ)"
            shown = [_text(a)[:4] if a.dtype == np.object_ else a.ravel()[:8].tolist() for a in (got, want)]
            wrong.append(f"{name}: got {shown[0]}{diff}; expected {shown[1]}")
    got_doc, want_doc = (json.loads(_text(a[T.ASSESSMENT])[0]) for a in (served, reference))
    for key in ("assessable", "reasons"):
        if got_doc.get(key) != want_doc.get(key):
            wrong.append(f"{T.ASSESSMENT}.{key}: got {got_doc.get(key)}; expected {want_doc.get(key)}")
    got_m, want_m = got_doc.get("measurements", {}), want_doc.get("measurements", {})
    if set(got_m) != set(want_m) or not all(np.isclose(got_m[k], want_m[k], rtol=1e-5, atol=1e-9) for k in want_m):
        wrong.append(f"{T.ASSESSMENT}.measurements: got {got_m}; expected {want_m} (1e-5 relative)")
    for name in (T.MASK_SPACING_MM, T.LUNG_VOLUME_ML):
        if not np.allclose(served[name], reference[name], rtol=1e-6, atol=0):
            wrong.append(f"{name}: got {served[name].tolist()}; expected {reference[name].tolist()} (1e-6 relative)")

    p_got, p_ref = served[T.SLICE_PROBABILITIES].astype(np.float64), reference[T.SLICE_PROBABILITIES].astype(np.float64)
    max_dp = float(np.max(np.abs(p_got - p_ref))) if p_ref.size else 0.0
    if max_dp > atol:
        worst = int(np.argmax(np.abs(p_got - p_ref)))
        wrong.append(f"{T.SLICE_PROBABILITIES}: max |difference| {max_dp:.3g} at selected slice {worst} "
                     f"(got {p_got[worst]:.6f}, reference {p_ref[worst]:.6f}); expected <= {atol:g}")
    vote = config.vote
    amb = ambiguous_slices(p_ref, vote.slice_threshold, atol)
    n_ref = int(np.sum(p_ref >= vote.slice_threshold))
    n_low, n_high = n_ref - int(np.sum(amb & (p_ref >= vote.slice_threshold))), n_ref + int(
        np.sum(amb & (p_ref < vote.slice_threshold)))
    k = max(1, p_ref.size)
    fraction = float(served[T.POSITIVE_FRACTION][0])
    if not n_low / k - 1e-6 <= fraction <= n_high / k + 1e-6:
        wrong.append(f"{T.POSITIVE_FRACTION}: got {fraction:.6f}; expected {n_low / k:.6f}..{n_high / k:.6f} "
                     f"(reference {n_ref}/{p_ref.size} slices, {int(amb.sum())} within {atol:g} of the threshold)")

    def positive(n: int) -> bool:
        return n >= vote.positive_fraction * p_ref.size - 1e-9

    verdict_ambiguous = int(reference[T.VERDICT][0]) != T.VERDICT_NOT_ASSESSABLE and p_ref.size > 0 and (
        positive(n_low) != positive(n_high))
    got_v, want_v = int(served[T.VERDICT][0]), int(reference[T.VERDICT][0])
    if got_v != want_v and not verdict_ambiguous:
        wrong.append(f"{T.VERDICT}: got {got_v}; expected {want_v} (positive fraction {fraction:.4f}, "
                     f"threshold {vote.positive_fraction}, no slice near the slice threshold can explain it)")

    lung = served[T.LUNG_MASK] != 0
    if infection_probability.shape[0]:
        near = np.abs(infection_probability[:, 0].astype(np.float64) - vote.infection_threshold) <= atol
        amb_voxels = resize_nearest(near, lung.shape[1:]) & lung
    else:
        amb_voxels = np.zeros(lung.shape, bool)
    flipped = served[T.INFECTION_MASK] != reference[T.INFECTION_MASK]
    unexplained = int(np.sum(flipped & ~amb_voxels))
    if unexplained:
        wrong.append(f"{T.INFECTION_MASK}: {unexplained} voxels differ away from the infection threshold "
                     f"({int(flipped.sum())} differ, {int(amb_voxels.sum())} ambiguous); expected 0")
    burden_slack = 100.0 * int(amb_voxels.sum()) / max(1, int(lung.sum())) + 1e-4
    burden_diff = abs(float(served[T.LESION_BURDEN_PCT][0]) - float(reference[T.LESION_BURDEN_PCT][0]))
    if burden_diff > burden_slack:
        wrong.append(f"{T.LESION_BURDEN_PCT}: got {float(served[T.LESION_BURDEN_PCT][0]):.4f}; expected "
                     f"{float(reference[T.LESION_BURDEN_PCT][0]):.4f} +- {burden_slack:.4f} %")
    measured = {
        "verdict": got_v, "reference_verdict": want_v, "verdict_ambiguous": bool(verdict_ambiguous),
        "selected": int(p_ref.size), "lung_slices": int(lung.shape[0]),
        "max_abs_probability_difference": max_dp, "ambiguous_slices": int(amb.sum()),
        "positive_fraction": fraction, "reference_positive_fraction": float(reference[T.POSITIVE_FRACTION][0]),
        "infection_voxels_differing": int(flipped.sum()), "infection_voxels_ambiguous": int(amb_voxels.sum()),
        "lesion_burden_pct_difference": burden_diff, "lung_volume_ml": float(served[T.LUNG_VOLUME_ML][0]),
    }
    return wrong, measured


# ------------------------------------------------------------------------ run
def prepare_repository(cfg: ParityConfig, out: Path) -> Path:
    """The repository to serve: the given one, or seeded random-weight networks exported for ``cfg.device``."""
    from covidct.benchmarks.gpu_run import gpu_repository, random_checkpoints

    if cfg.model_repository:
        return Path(cfg.model_repository)
    target = Path(cfg.repository_out) if cfg.repository_out else out
    checkpoints = random_checkpoints(target, cfg.classifier_size, cfg.segmenter_size, cfg.seed)
    return gpu_repository(target, checkpoints, gpu=cfg.device == "cuda")


def served_answer(client, volume, timeout_s: float) -> tuple[dict[str, np.ndarray], float]:
    """Every ensemble output of one series through the client library, and the round trip (s)."""
    import tritonclient.grpc as grpcclient

    from covidct.client.result import output_arrays
    from covidct.client.submit import build_inputs

    client.wait_ready()
    outputs = [grpcclient.InferRequestedOutput(name) for name in T.ENSEMBLE_OUTPUTS]
    start = time.perf_counter()
    response = client.grpc.infer(T.ENSEMBLE, build_inputs(volume), outputs=outputs, client_timeout=timeout_s)
    return output_arrays(response, f"{T.ENSEMBLE}, series of {volume.num_slices} slices"), \
        time.perf_counter() - start


def to_markdown(report: dict[str, Any]) -> str:
    rows = [[r["slices"], "yes" if r["covid"] else "no", r.get("verdict", "-"), r.get("reference_verdict", "-"),
             "yes" if r.get("verdict_ambiguous") else "no", f"{r.get('max_abs_probability_difference', 0):.2e}",
             r.get("infection_voxels_differing", "-"), f"{r.get('lesion_burden_pct_difference', 0):.2e}",
             "PASS" if not r["mismatches"] else "FAIL"] for r in report["series"]]
    lines = [
        f"# Served ensemble vs in-process reference ({report['served']})", "",
        f"Reference: `run_pipeline_reference`, torch FP32 on the CPU, weights: {report['reference_weights']}. "
        f"Probability tolerance {report['atol']:g}; repository `{report['repository']}`; "
        f"export {report['export_s']:.1f} s, server start {report['server_start_s']:.1f} s.", "",
        markdown_table(["slices", "covid phantom", "verdict", "reference", "verdict ambiguous", "max abs dp",
                        "infection voxels differing", "burden diff (%)", "result"], rows), "",
        f"Result: {'PASS' if report['passed'] else 'FAIL'}.", "",
    ]
    for r in report["series"]:
        lines += [f"- {r['slices']} slices: {m}" for m in r["mismatches"]]
    return "\n".join(lines) + "\n"


def run(cfg: ParityConfig) -> dict[str, Any]:
    """Export (unless given), serve, compare every series; write the report; raise ParityError on any mismatch."""
    from covidct.client.submit import PipelineClient
    from covidct.serving.steps import run_pipeline_reference
    from covidct.app.triton_server import ServerConfig, TritonServer
    from covidct.export.pbtxt import latest_version_dir
    from covidct.preprocessing.config import PipelineConfig
    from covidct.preprocessing.synthetic.phantom import make_phantom

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_resolved_config(out, cfg, "gpu_parity")
    start = time.perf_counter()
    repository = prepare_repository(cfg, out)
    export_s = time.perf_counter() - start
    config = PipelineConfig.load(latest_version_dir(repository / "preprocess"))
    folders = cfg.reference_checkpoints or tuple(latest_version_dir(repository / m) for m in RUNNER_MODELS)
    classify, segment = TorchNetwork(Path(folders[0])), TorchNetwork(Path(folders[1]))
    versions, card = served_metadata(repository)
    report: dict[str, Any] = {
        "machine": machine_info(), "config": dataclasses.asdict(cfg), "repository": str(repository),
        "served": "KIND_GPU, torch FP16" if cfg.device == "cuda" else "KIND_CPU, ONNX Runtime FP32",
        "reference_weights": "the given checkpoints" if cfg.reference_checkpoints else "the served weights.pt",
        "atol": cfg.tolerance, "export_s": export_s, "series": [],
    }
    server_config = ServerConfig(repository, log_path=out / "tritonserver.log", gpu=cfg.device == "cuda",
                                 startup_timeout_s=cfg.startup_timeout_s)
    start = time.perf_counter()
    with TritonServer(server_config) as server, PipelineClient(server.grpc_url) as client:
        report["server_start_s"] = time.perf_counter() - start
        for index, (slices, covid) in enumerate(cfg.series):
            volume = make_phantom(slices, size=cfg.size, covid=covid, seed=cfg.seed + 100 + index).volume
            served, latency = served_answer(client, volume, cfg.request_timeout_s)
            reference = run_pipeline_reference(volume, classify, segment, config, versions, card)
            infection = segment.last if len(reference[T.LUNG_SLICES]) else np.zeros((0, 1, 1, 1), np.float32)
            mismatches, measured = compare(served, reference, infection, config, cfg.tolerance)
            report["series"].append({"slices": slices, "covid": covid, "size": cfg.size, "latency_s": latency,
                                     **measured, "mismatches": mismatches})
    report["passed"] = not any(r["mismatches"] for r in report["series"])
    write_json(out / "gpu_parity.json", report)
    (out / "gpu_parity.md").write_text(to_markdown(report), encoding="utf-8")
    if not report["passed"]:
        failures = [f"{r['slices']}-slice series: {m}" for r in report["series"] for m in r["mismatches"]]
        raise ParityError(f"served ensemble ({report['served']}) differs from the in-process reference in "
                          f"{len(failures)} place(s) (details in {out / 'gpu_parity.md'}):\n  " + "\n  ".join(failures))
    return report


def parse_args(argv: list[str] | None = None) -> ParityConfig:
    d = ParityConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=d.out)
    p.add_argument("--device", choices=DEVICES, default=d.device)
    p.add_argument("--model-repository", default=None, help="serve this exported repository (no export)")
    p.add_argument("--repository-out", default=None, help="export the random-weight repository here")
    p.add_argument("--reference-checkpoints", nargs=2, default=None, metavar=("CLASSIFIER", "SEGMENTER"))
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--atol", type=float, default=None, help="probability tolerance (default: by device)")
    p.add_argument("--quick", action="store_true", help=f"dry run: {QUICK}")
    a = p.parse_args(argv)
    base = dataclasses.replace(d, **QUICK) if a.quick else d
    return dataclasses.replace(
        base, out=a.out, device=a.device, model_repository=a.model_repository, repository_out=a.repository_out,
        reference_checkpoints=tuple(a.reference_checkpoints) if a.reference_checkpoints else None, seed=a.seed,
        atol=a.atol)


def main(argv: list[str] | None = None) -> int:
    try:
        report = run(parse_args(argv))
    except CovidCTError as exc:
        print(f"gpu_parity: FAILED: {exc}", file=sys.stderr)
        return 1
    print(to_markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
