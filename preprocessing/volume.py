"""The typed CT volume every reader returns and every stage consumes.

Axis order is (N, H, W): N slices sorted by patient position along the scan axis
(ascending), H rows, W columns. Values are Hounsfield units (HU) in int16.
Spacing is in millimetres, ordered (z, y, x) to match the axes.

The volume carries no patient identifier: no names, IDs, dates or study/series UIDs.
``series_key`` is a one-way hash that lets logs and results refer to a series without
identifying the patient.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import numpy as np

from covidct.errors import VolumeError
from covidct.preprocessing.orientation import IDENTITY, InPlaneTransform

SOURCE_FORMATS = ("dicom", "dicom-zip", "nifti", "tiff", "array")


def make_series_key(*parts: str) -> str:
    """A non-identifying 16-hex-digit key from any identifying strings (e.g. a UID)."""
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()
    return digest[:16]


@dataclass(frozen=True)
class CTVolume:
    """One patient series as HU int16 ``[N, H, W]`` with voxel spacing in mm.

    Attributes:
        hu: int16 array ``[N, H, W]``, Hounsfield units, slices in ascending position.
        spacing_mm: (z, y, x) voxel spacing in millimetres; z is the slice distance.
        positions_mm: float64 ``[N]`` slice positions along the scan axis in mm
            (ascending). For inputs without positions (arrays, TIFF) this is
            ``arange(N) * spacing_z``.
        series_key: non-identifying key of the series (see :func:`make_series_key`).
        source_format: one of ``SOURCE_FORMATS``.
        source_names: per slice, the file name relative to the input root (sorted
            order) where the input was a set of files; empty otherwise.
        source_frames: per slice, its 1-based frame number inside a multi-frame source
            file (Enhanced / Legacy Converted Enhanced CT); empty for single-frame files.
        orientation: how the stored pixels of the source slices were turned into this
            patient-frame layout (:class:`~covidct.preprocessing.orientation.InPlaneTransform`;
            the identity for supine head-first DICOM and for the other formats);
            ``orientation.to_source`` maps masks back to the source frames.
        source_series: which series of the input was read and why, in words (Series
            Number, Series Description, slices, thickness, the rule; no patient
            identifier); empty for single-series formats.
        series_left_out: one such text per series of the input that was not read.
    """

    hu: np.ndarray
    spacing_mm: tuple[float, float, float]
    positions_mm: np.ndarray
    series_key: str
    source_format: str
    source_names: tuple[str, ...] = field(default=())
    source_frames: tuple[int, ...] = field(default=())
    orientation: InPlaneTransform = field(default=IDENTITY)
    source_series: str = ""
    series_left_out: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        hu = self.hu
        if not isinstance(hu, np.ndarray) or hu.dtype != np.int16 or hu.ndim != 3:
            got = f"{getattr(hu, 'dtype', type(hu).__name__)} {getattr(hu, 'shape', '')}"
            raise VolumeError(f"CTVolume.hu must be int16 [N, H, W]; got {got}")
        if len(self.spacing_mm) != 3 or not all(
            math.isfinite(s) and s > 0 for s in self.spacing_mm
        ):
            raise VolumeError(
                f"CTVolume.spacing_mm must be three finite positive mm values (z, y, x); "
                f"got {self.spacing_mm!r}"
            )
        if self.positions_mm.shape != (hu.shape[0],):
            raise VolumeError(
                f"CTVolume.positions_mm must have one value per slice ({hu.shape[0]}); "
                f"got shape {self.positions_mm.shape}"
            )
        if self.source_format not in SOURCE_FORMATS:
            raise VolumeError(
                f"CTVolume.source_format must be one of {SOURCE_FORMATS}; got {self.source_format!r}"
            )
        if self.source_names and len(self.source_names) != hu.shape[0]:
            raise VolumeError(
                f"CTVolume.source_names must name every slice ({hu.shape[0]}); "
                f"got {len(self.source_names)}"
            )

        if self.source_frames and len(self.source_frames) != hu.shape[0]:
            raise VolumeError(
                f"CTVolume.source_frames must give every slice's frame ({hu.shape[0]}); "
                f"got {len(self.source_frames)}"
            )

    @property
    def num_slices(self) -> int:
        return int(self.hu.shape[0])

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in millilitres (mm^3 / 1000)."""
        z, y, x = self.spacing_mm
        return z * y * x / 1000.0
