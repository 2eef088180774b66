"""Parity checks: an exported model must compute what the torch network computes.

Inputs are fresh random slices, uniform in [0, 1) (the range of windowed HU and of the
mask channels), float32 ``[B, C, S, S]`` for each slice count in
``OnnxExportConfig.parity_batch_sizes`` (default 1 and 3: a single slice and a batch,
which catches exports that specialised the slice axis). Outputs are probabilities
(``[B, 1]`` or ``[B, 1, S, S]``); a pair passes when
``|candidate - reference| <= atol + rtol * |reference|`` element-wise
(:class:`covidct.export.config.ParityTolerance`: 1e-4 for FP32 vs FP32, 2e-2 for FP16).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from covidct.errors import ParityError
from covidct.export.config import ParityTolerance


@dataclass(frozen=True)
class ParityReport:
    """Result of one parity check (all slice counts): the largest absolute error."""

    reference: str
    candidate: str
    batch_sizes: tuple[int, ...]
    max_abs_error: float
    tolerance: ParityTolerance

    def describe(self) -> str:
        return (
            f"{self.candidate} vs {self.reference}: max |error| {self.max_abs_error:.2e} "
            f"(atol {self.tolerance.atol:g}, batches {list(self.batch_sizes)})"
        )


def random_inputs(
    chw: tuple[int, int, int], batch_sizes: Sequence[int], seed: int
) -> list[np.ndarray]:
    """float32 ``[B, C, S, S]`` arrays, uniform in [0, 1), one per slice count ``B``."""
    rng = np.random.default_rng(seed)
    return [rng.random((int(b), *chw), dtype=np.float32) for b in batch_sizes]


def compare_outputs(
    reference: np.ndarray,
    candidate: np.ndarray,
    tolerance: ParityTolerance,
    *,
    what: str,
) -> float:
    """Max absolute error of ``candidate`` against ``reference``.

    Raises :class:`ParityError` (naming ``what``, the shapes, the worst element and the
    tolerance) on a shape mismatch, a non-finite value or an error beyond tolerance.
    """
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    if reference.shape != candidate.shape:
        raise ParityError(
            f"{what}: output shape {list(candidate.shape)} differs from the reference "
            f"{list(reference.shape)}"
        )
    for label, values in (("reference", reference), ("candidate", candidate)):
        if not np.all(np.isfinite(values)):
            raise ParityError(f"{what}: the {label} output holds NaN or infinite values")
    if reference.size == 0:
        return 0.0
    error = np.abs(candidate - reference)
    limit = tolerance.atol + tolerance.rtol * np.abs(reference)
    worst = int(np.argmax(error - limit))
    if error.flat[worst] > limit.flat[worst]:
        index = tuple(int(i) for i in np.unravel_index(worst, error.shape))
        raise ParityError(
            f"{what}: |candidate - reference| = {error.flat[worst]:.3e} at index {index} "
            f"(candidate {candidate.flat[worst]:.6f}, reference {reference.flat[worst]:.6f}) "
            f"exceeds atol {tolerance.atol:g} + rtol {tolerance.rtol:g}; "
            f"max error {error.max():.3e} over shape {list(error.shape)}"
        )
    return float(error.max())


def check_parity(
    reference_fn: Callable[[np.ndarray], np.ndarray],
    candidate_fn: Callable[[np.ndarray], np.ndarray],
    chw: tuple[int, int, int],
    *,
    batch_sizes: Sequence[int],
    tolerance: ParityTolerance,
    seed: int,
    reference: str,
    candidate: str,
) -> ParityReport:
    """Run both functions on fresh random inputs of every slice count and compare."""
    worst = 0.0
    for x in random_inputs(chw, batch_sizes, seed):
        what = f"{candidate} vs {reference} (input [{', '.join(map(str, x.shape))}])"
        worst = max(worst, compare_outputs(reference_fn(x), candidate_fn(x), tolerance, what=what))
    return ParityReport(reference, candidate, tuple(int(b) for b in batch_sizes), worst, tolerance)


def torch_function(model) -> Callable[[np.ndarray], np.ndarray]:
    """numpy -> numpy wrapper of an eval-mode float32 torch module (CPU, no grad)."""
    import torch

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).float().numpy()

    return run


def onnxruntime_function(
    onnx_path: str | Path, input_name: str, output_name: str, threads: int = 0
) -> Callable[[np.ndarray], np.ndarray]:
    """numpy -> numpy wrapper of an ONNX Runtime CPU session of ``onnx_path``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])

    def run(x: np.ndarray) -> np.ndarray:
        return session.run([output_name], {input_name: x})[0]

    return run
