"""Checks of request tensors that reach the Triton Python models.

Every check raises :class:`covidct.errors.TensorInputError` whose message names the
tensor, what was received (dtype, shape or value) and what was expected, so a client
sees why its request was refused. The functions return the (possibly made contiguous)
array so that callers can write ``hu = validate_hu_volume(hu)``.

Tensor names and their contract are in ``docs/architecture.md``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from covidct.errors import TensorInputError
from covidct.serving.tensors import HU_VOLUME, SLICE_POSITIONS_MM, SPACING_MM
from covidct.preprocessing.reader_config import ReaderConfig
from covidct.preprocessing.devices import ArrayLike, as_tensor, dtype_name, torch_dtype

#: Smallest in-plane size (pixels) of a slice that the pipeline accepts.
MIN_SLICE_SIZE = 32


def describe(array: object) -> str:
    """``"int16 [3, 512, 512]"`` for arrays and tensors, the type name otherwise."""
    if isinstance(array, np.ndarray):
        return f"{array.dtype} {list(array.shape)}"
    if isinstance(array, torch.Tensor):
        return f"{dtype_name(array)} {list(array.shape)} on {array.device}"
    return type(array).__name__


def check_tensor(array: object, name: str, dtype: np.dtype | type, shape: Sequence[int | None]) -> ArrayLike:
    """Check ``array`` is a numpy array or torch tensor of ``dtype`` whose shape matches ``shape``.

    ``shape`` entries are sizes or ``None``/``-1`` (any size). Returns a C-contiguous
    view/copy of the same kind (a tensor stays on its device).
    """
    expected_dtype = np.dtype(dtype)
    dims = ["-1" if d is None or d == -1 else str(d) for d in shape]
    expected = f"{expected_dtype} [{', '.join(dims)}]"
    if isinstance(array, torch.Tensor) and expected_dtype != np.object_:
        dtype_ok = array.dtype == torch_dtype(expected_dtype)
    elif isinstance(array, np.ndarray):
        dtype_ok = array.dtype == expected_dtype
    else:
        raise TensorInputError(f"{name}: got {describe(array)}; expected an array {expected}")
    if not dtype_ok:
        raise TensorInputError(f"{name}: got dtype {describe(array)}; expected {expected}")
    if array.ndim != len(shape) or any(
        d is not None and d != -1 and size != d for size, d in zip(array.shape, shape)
    ):
        raise TensorInputError(f"{name}: got shape {describe(array)}; expected {expected}")
    if isinstance(array, torch.Tensor):
        return array.contiguous()
    return np.ascontiguousarray(array)


def validate_hu_volume(
    array: object,
    name: str = HU_VOLUME,
    *,
    min_slices: int = 1,
    max_slices: int = ReaderConfig.max_slices,
    min_size: int = MIN_SLICE_SIZE,
    max_size: int = ReaderConfig.matrix_size_px[1],
) -> ArrayLike:
    """An int16 HU volume ``[N, H, W]`` with ``min_slices <= N <= max_slices`` and
    ``min_size <= H, W <= max_size`` (pixels; the matrix sizes CT scanners produce)."""
    hu = check_tensor(array, name, np.int16, (None, None, None))
    n, h, w = hu.shape
    if n < min_slices:
        raise TensorInputError(
            f"{name}: got {describe(hu)} with {n} slices; expected at least {min_slices} slice(s) [N, H, W]"
        )
    if n > max_slices:
        raise TensorInputError(
            f"{name}: got {describe(hu)} with {n} slices; expected at most {max_slices} slices"
        )
    if h < min_size or w < min_size:
        raise TensorInputError(
            f"{name}: got {describe(hu)}, slices {h}x{w} pixels; expected H, W >= {min_size}"
        )
    if h > max_size or w > max_size:
        raise TensorInputError(
            f"{name}: got {describe(hu)}, slices {h}x{w} pixels; expected H, W <= {max_size} "
            "(the largest matrix CT scanners produce)"
        )
    return hu


def validate_spacing(array: object, name: str = SPACING_MM, reader: ReaderConfig | None = None) -> np.ndarray:
    """Voxel spacing float32 ``[3]`` (z, y, x) in mm, finite and > 0; with ``reader``, also
    within what CT scanners produce (``reader.slice_spacing_mm`` for z,
    ``reader.pixel_spacing_mm`` for y and x). Implausible-but-possible spacings are the
    assessment's (``implausible_spacing``), not an error."""
    spacing = check_tensor(array, name, np.float32, (3,))
    shown = f"[{', '.join(f'{v:g}' for v in spacing.tolist())}]"
    if not (np.all(np.isfinite(spacing)) and np.all(spacing > 0)):
        raise TensorInputError(f"{name}: got {shown}; expected three finite spacings > 0 mm (z, y, x)")
    if reader is not None:
        (z_low, z_high), (p_low, p_high) = reader.slice_spacing_mm, reader.pixel_spacing_mm
        z, y, x = (float(v) for v in spacing)
        if not (z_low <= z <= z_high and p_low <= y <= p_high and p_low <= x <= p_high):
            raise TensorInputError(
                f"{name}: got {shown}; expected z in [{z_low:g}, {z_high:g}] mm and y, x in "
                f"[{p_low:g}, {p_high:g}] mm (spacings CT scanners produce)"
            )
    return spacing


def validate_positions(array: object, num_slices: int, name: str = SLICE_POSITIONS_MM) -> np.ndarray:
    """Slice positions float32 ``[N]`` (mm along the scan axis, one per slice of
    ``HU_VOLUME``): finite and strictly ascending (inferior -> superior, no two slices at
    one position). Returned as float64."""
    positions = check_tensor(array, name, np.float32, (None,))
    if positions.shape[0] != num_slices:
        raise TensorInputError(
            f"{name}: got {describe(positions)}; expected float32 [{num_slices}] (one position per slice of "
            f"{HU_VOLUME})"
        )
    values = np.asarray(positions, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise TensorInputError(f"{name}: got non-finite positions; expected finite mm values")
    steps = np.diff(values)
    if steps.size and not np.all(steps > 0):
        i = int(np.flatnonzero(~(steps > 0))[0])
        raise TensorInputError(
            f"{name}: slices {i} and {i + 1} are at {values[i]:g} and {values[i + 1]:g} mm; expected strictly "
            "ascending positions (sorted inferior -> superior, one slice per position)"
        )
    return values


def validate_slice_counts(tensors: Mapping[str, np.ndarray], expected: int | None = None) -> int:
    """All tensors have the same first dimension K (one entry per slice); returns K (may be 0).

    ``expected``: K required by the caller (e.g. the number of lung-bearing slices).
    """
    if not tensors:
        raise TensorInputError("validate_slice_counts: no tensors given; expected at least one")
    counts = {name: (int(t.shape[0]) if t.ndim else None) for name, t in tensors.items()}
    values = set(counts.values())
    if None in values:
        scalar = [name for name, k in counts.items() if k is None]
        raise TensorInputError(f"{', '.join(scalar)}: got a 0-d tensor; expected a slice axis first")
    k = expected if expected is not None else next(iter(counts.values()))
    if len(values) > 1 or k not in values:
        listing = ", ".join(f"{name} has {c}" for name, c in counts.items())
        raise TensorInputError(
            f"slice counts differ: {listing}; expected {k} (one entry per slice) in every tensor"
        )
    return k


def validate_probabilities(array: ArrayLike, name: str) -> ArrayLike:
    """Probabilities: finite and within [0, 1] (numpy arrays or tensors on any device)."""
    values = as_tensor(array)
    if values.numel() and not bool(((values >= 0.0) & (values <= 1.0)).all()):  # NaN fails both
        finite = values[torch.isfinite(values)]
        lo = f"{float(finite.min()):g}" if finite.numel() else "nan"
        hi = f"{float(finite.max()):g}" if finite.numel() else "nan"
        raise TensorInputError(
            f"{name}: got values {lo}..{hi} (or non-finite); expected probabilities in [0, 1]"
        )
    return array
